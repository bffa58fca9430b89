//! Tail factor λ sweep: how wide the window of soft tail masking is.

use super::plot::{plot, Series};
use super::runner::Runner;
use super::stats::{fmt_mean_sd, mean_sd};
use super::variants::{
    col, header, heldout_cells, heldout_patterns, of, run_variants, write_comparison,
};
use super::write_up::{Report, Table};
use anyhow::Result;

pub fn run(runner: &mut Runner) -> Result<()> {
    let lambdas = [1.0, 1.25, 1.5, 2.0];
    let variants: Vec<(String, Vec<String>)> = lambdas
        .iter()
        .map(|l| {
            (
                format!("lambda-{l}"),
                vec![
                    "train.objective=\"card\"".into(),
                    "noise.mode=\"soft\"".into(),
                    format!("noise.tail_factor={l}"),
                ],
            )
        })
        .collect();
    let results = run_variants(runner, &variants, 600)?;
    let names: Vec<String> = variants.iter().map(|v| v.0.clone()).collect();
    let patterns = heldout_patterns(&results);
    let rows = lambdas
        .iter()
        .zip(&names)
        .map(|(l, v)| {
            let runs = of(&results, v);
            let mut row = vec![
                format!("{l}"),
                fmt_mean_sd(&col(&runs, |r| r.bits_per_byte), 4),
            ];
            row.extend(heldout_cells(&runs, &patterns));
            row.push(fmt_mean_sd(&col(&runs, |r| r.val_loss), 4));
            row
        })
        .collect();
    let final_pts: Vec<(f64, f64)> = lambdas
        .iter()
        .zip(&names)
        .map(|(l, v)| (*l, mean_sd(&col(&of(&results, v), |r| r.bits_per_byte)).0))
        .collect();
    plot(
        &runner.opts.out.join("bpb_vs_lambda.svg"),
        "Final validation bits per byte vs tail factor λ",
        "λ",
        "bits per byte",
        &[Series {
            name: "CARD".into(),
            points: final_pts,
        }],
        true,
        None,
    )?;
    let report = Report {
        title: "Tail factor λ sweep".into(),
        intro: vec!["Soft tail masking puts ⌊tL⌋ masks among the last ⌈λ⌊tL⌋⌉ positions; λ = 1 is strict tail masking. The paper does not state its λ (our default is 1.5).".into()],
        tables: vec![Table {
            caption: "Final validation bits per byte by λ".into(),
            header: header("λ", &patterns, &["val loss ↓"]),
            rows,
        }],
        plots: vec![("bpb_vs_lambda.svg".into(), "Final bits per byte against λ".into())],
        findings: Vec::new(),
        config: String::new(),
    };
    let curves = "Tail factor λ: validation loss";
    write_comparison(runner, &results, &names, "lambda-1.5", curves, report)
}
