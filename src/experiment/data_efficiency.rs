//! Data efficiency: many epochs over a small fixed subset of the training split.

use super::plot::{plot, Series};
use super::runner::Runner;
use super::runs::RunResult;
use super::stats::fmt_mean_sd;
use super::variants::{
    budget, col, config_of, csv_rows, mean_curve, of, paired_header, paired_rows, run_variants,
    CSV_HEADER,
};
use super::write_up::{write, Report, Table};
use anyhow::Result;

pub fn run(runner: &mut Runner) -> Result<()> {
    // Sixteen epochs of the subset over a run: 16,384 tokens at the tiny preset's budget,
    // scaled with the run's token budget elsewhere.
    let subset = match (runner.opts.smoke, runner.opts.steps) {
        (true, _) => 4096,
        (false, None) => 16384,
        (false, Some(_)) => {
            let cfg = crate::config::Config::load(&runner.opts.preset, &runner.opts.sets)?;
            let per_step = cfg.train.batch_size * cfg.train.seq_len;
            (runner.opts.steps(800) * per_step / 16).max(per_step)
        }
    };
    let kinds = ["arm", "card", "mdlm"];
    let variants: Vec<(String, Vec<String>)> = kinds
        .iter()
        .map(|k| {
            (
                k.to_string(),
                vec![
                    format!("train.objective=\"{k}\""),
                    format!("data.train_tokens={subset}"),
                ],
            )
        })
        .collect();
    let results = run_variants(runner, &variants, 800)?;
    let names: Vec<String> = variants.iter().map(|v| v.0.clone()).collect();
    let tokens_per_step = results
        .first()
        .map_or(1.0, |r| r.tokens_seen as f64 / r.steps.max(1) as f64);
    let epochs = |_: &RunResult, step: usize| step as f64 * tokens_per_step / subset as f64;
    let unique = |_: &RunResult, step: usize| (step as f64 * tokens_per_step).min(subset as f64);
    let by = |x: &dyn Fn(&RunResult, usize) -> f64| -> Vec<Series> {
        names
            .iter()
            .map(|v| Series {
                name: v.clone(),
                points: mean_curve(&of(&results, v), x),
            })
            .collect()
    };
    plot(
        &runner.opts.out.join("loss_vs_epochs.svg"),
        "Validation loss over epochs of a fixed subset",
        "epochs",
        "validation loss (nats/token)",
        &by(&epochs),
        true,
        None,
    )?;
    plot(
        &runner.opts.out.join("loss_vs_unique_tokens.svg"),
        "Validation loss against unique training tokens seen",
        "unique tokens seen",
        "validation loss (nats/token)",
        &by(&unique),
        true,
        None,
    )?;
    let best_of = |r: &RunResult| r.curve.iter().map(|c| c.1).fold(f64::INFINITY, f64::min);
    let rows = names
        .iter()
        .map(|v| {
            let runs = of(&results, v);
            let best: Vec<f64> = runs.iter().map(|r| best_of(r)).collect();
            vec![
                v.clone(),
                fmt_mean_sd(&col(&runs, |r| r.val_loss), 4),
                fmt_mean_sd(&best, 4),
                format!("{:.1}", runs[0].tokens_seen as f64 / subset as f64),
            ]
        })
        .collect();
    let (seeds, head) = paired_header(&results, "objective");
    let paired = |which: &str, f: &dyn Fn(&RunResult) -> Option<f64>| {
        Table {
        caption: format!("Per-seed difference from ARM in {which} validation loss (objective − ARM, nats/token; negative = better than ARM; MDLM's is a bound), paired t-test"),
        header: head.clone(),
        rows: paired_rows(&results, "arm", &names, &seeds, f),
    }
    };
    let report = Report {
        title: "Data efficiency: many epochs over a small fixed subset".into(),
        intro: vec![format!("Each objective trains on the first {subset} tokens of the training split for many epochs; validation uses the validation split (exact likelihood at t = 0 for ARM/CARD, the NELBO bound for MDLM). The paper claims CARD keeps ARM-level data efficiency; it gives curves but no numbers."), budget(&results)],
        tables: vec![Table {
            caption: "Final and best validation loss".into(),
            header: ["objective", "final val loss ↓", "best val loss ↓", "epochs"].map(String::from).to_vec(),
            rows,
        }, paired("best", &|r| Some(best_of(r))), paired("final", &|r| Some(r.val_loss))],
        plots: vec![
            ("loss_vs_epochs.svg".into(), "Validation loss against epochs".into()),
            ("loss_vs_unique_tokens.svg".into(), "Validation loss against unique tokens seen".into()),
        ],
        findings: vec!["A rising validation loss after its minimum marks overfitting of the small subset; compare where each objective's minimum lies and how fast it rises.".into()],
        config: config_of(&results),
    };
    write(&runner.opts, &report, CSV_HEADER, &csv_rows(&results))
}
