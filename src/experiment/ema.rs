//! EMA: the same CARD runs evaluated with and without the average of the weights.

use super::plot::{plot, Series};
use super::runner::Runner;
use super::stats::fmt_mean_sd;
use super::stats::Paired;
use super::variants::{budget, config_of, run_variants};
use super::write_up::{write, Report, Table};
use anyhow::Result;

pub fn run(runner: &mut Runner) -> Result<()> {
    let results = run_variants(
        runner,
        &[(
            "card".into(),
            vec!["train.objective=\"card\"".into(), "train.ema=true".into()],
        )],
        600,
    )?;
    // Each run scored both weights when it finished (so nothing here needs its checkpoint).
    let mut with = Vec::new();
    let mut without = Vec::new();
    for r in &results {
        match (r.weights.as_str(), r.raw_bits_per_byte) {
            ("ema", Some(raw)) => {
                with.push(r.bits_per_byte);
                without.push(raw);
            }
            _ => anyhow::bail!(
                "run {} seed {} kept no weight average (train.ema = false?)",
                r.variant,
                r.seed
            ),
        }
    }
    let per_seed = |v: &[f64]| -> Vec<(f64, f64)> {
        results
            .iter()
            .zip(v)
            .map(|(r, &b)| (r.seed as f64, b))
            .collect()
    };
    plot(
        &runner.opts.out.join("ema.svg"),
        "Validation bits per byte with and without EMA",
        "seed",
        "bits per byte",
        &[
            Series {
                name: "EMA".into(),
                points: per_seed(&with),
            },
            Series {
                name: "raw (last step)".into(),
                points: per_seed(&without),
            },
        ],
        false,
        None,
    )?;
    let decay = results
        .first()
        .and_then(|r| crate::config::Config::from_toml(&r.config).ok())
        .map_or(0.0, |c| c.train.ema_decay);
    let diff = Paired::new(with.iter().zip(&without).map(|(w, r)| w - r).collect());
    let report = Report {
        title: "EMA: the same CARD runs evaluated with and without the weight average".into(),
        intro: vec![format!("The paper evaluates with an EMA of the weights; whether it is needed is its open question. EMA decay {decay} (ramped as min(decay, (1+n)/(10+n))). Each run is scored with both weights when it finishes."), budget(&results)],
        tables: vec![Table {
            caption: "Validation bits per byte".into(),
            header: ["weights", "val bits/byte ↓"].map(String::from).to_vec(),
            rows: vec![vec!["EMA".into(), fmt_mean_sd(&with, 4)], vec!["raw (last step)".into(), fmt_mean_sd(&without, 4)]],
        }],
        plots: vec![("ema.svg".into(), "Per seed: EMA and raw weights".into())],
        findings: vec![format!(
            "EMA minus raw, per seed: {} bits/byte (negative = EMA better); mean {:+.4}: {}.",
            diff.diffs.iter().map(|d| format!("{d:+.4}")).collect::<Vec<_>>().join(", "),
            diff.mean,
            diff.verdict("EMA better", "EMA worse")
        )],
        config: config_of(&results),
    };
    let csv: Vec<Vec<String>> = results
        .iter()
        .zip(with.iter().zip(&without))
        .map(|(r, (w, wo))| vec![r.seed.to_string(), format!("{w:.5}"), format!("{wo:.5}")])
        .collect();
    write(&runner.opts, &report, &["seed", "bpb_ema", "bpb_raw"], &csv)
}
