//! What the experiments share: training every (variant, seed), picking results apart,
//! mean validation curves, the ranking note and the per-run CSV.

use super::plot::{plot, Series};
use super::report::{write, Report};
use super::{fmt_mean_sd, mean_sd, RunResult, RunSpec, Runner};
use anyhow::Result;

pub(super) const CSV_HEADER: &[&str] = &[
    "variant",
    "seed",
    "objective",
    "steps",
    "tokens_seen",
    "val_loss",
    "bits_per_byte",
    "tokens_per_s",
    "zero_shot_avg",
];

pub(super) fn csv_rows(results: &[RunResult]) -> Vec<Vec<String>> {
    results
        .iter()
        .map(|r| {
            vec![
                r.variant.clone(),
                r.seed.to_string(),
                r.objective.clone(),
                r.steps.to_string(),
                r.tokens_seen.to_string(),
                format!("{:.5}", r.val_loss),
                format!("{:.5}", r.bits_per_byte),
                format!("{:.1}", r.tokens_per_s),
                r.zero_shot_avg.map_or(String::new(), |z| format!("{z:.4}")),
            ]
        })
        .collect()
}

/// Train every (variant, seed); results in variant order.
pub(super) fn run_variants(
    runner: &mut Runner,
    variants: &[(String, Vec<String>)],
    base_steps: usize,
) -> Result<Vec<RunResult>> {
    let steps = runner.opts.steps(base_steps);
    let mut out = Vec::new();
    for (variant, sets) in variants {
        for seed in runner.opts.seeds() {
            out.push(runner.run(&RunSpec {
                variant: variant.clone(),
                sets: sets.clone(),
                seed,
                steps,
                init: None,
            })?);
        }
    }
    Ok(out)
}

pub(super) fn of<'a>(results: &'a [RunResult], variant: &str) -> Vec<&'a RunResult> {
    results.iter().filter(|r| r.variant == variant).collect()
}

pub(super) fn col(runs: &[&RunResult], f: impl Fn(&RunResult) -> f64) -> Vec<f64> {
    runs.iter().map(|r| f(r)).collect()
}

/// Mean validation curve over seeds (steps where every seed logged a value).
pub(super) fn mean_curve(
    runs: &[&RunResult],
    x: impl Fn(&RunResult, usize) -> f64,
) -> Vec<(f64, f64)> {
    let Some(first) = runs.first() else {
        return Vec::new();
    };
    first
        .curve
        .iter()
        .filter_map(|&(step, _)| {
            let ys: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.curve.iter().find(|c| c.0 == step).map(|c| c.1))
                .collect();
            (ys.len() == runs.len()).then(|| (x(first, step), mean_sd(&ys).0))
        })
        .collect()
}

pub(super) fn curves_plot(
    runner: &Runner,
    results: &[RunResult],
    variants: &[String],
    file: &str,
    title: &str,
) -> Result<()> {
    let series: Vec<Series> = variants
        .iter()
        .map(|v| Series {
            name: v.clone(),
            points: mean_curve(&of(results, v), |_, s| s as f64),
        })
        .collect();
    plot(
        &runner.opts.out.join(file),
        title,
        "training step",
        "validation loss (nats/token)",
        &series,
        true,
        None,
    )
}

pub(super) fn zs(runs: &[&RunResult]) -> String {
    let z: Vec<f64> = runs.iter().filter_map(|r| r.zero_shot_avg).collect();
    if z.is_empty() {
        "–".into()
    } else {
        fmt_mean_sd(&z, 3)
    }
}

pub(super) fn config_of(results: &[RunResult]) -> String {
    results
        .first()
        .map(|r| r.config.clone())
        .unwrap_or_default()
}

/// States the ranking by bits per byte, for the reader to compare with the paper's.
pub(super) fn ranking_note(results: &[RunResult], names: &[String]) -> String {
    let mut ranked: Vec<(String, f64)> = names
        .iter()
        .map(|v| {
            (
                v.clone(),
                mean_sd(&col(&of(results, v), |r| r.bits_per_byte)).0,
            )
        })
        .collect();
    ranked.sort_by(|a, b| a.1.total_cmp(&b.1));
    let order: Vec<String> = ranked
        .iter()
        .map(|(v, b)| format!("{v} ({b:.4})"))
        .collect();
    format!("Ranking by validation bits per byte, best first: {}. Differences smaller than the seed spread are not evidence either way.", order.join(" < "))
}

/// Write up a comparison of variants the shared way: `report` plus the validation curves of
/// every variant (first among the plots), the ranking by bits per byte (last among the
/// findings), one run's config, and the per-run CSV.
pub(super) fn write_comparison(
    runner: &Runner,
    results: &[RunResult],
    names: &[String],
    curves_title: &str,
    mut report: Report,
) -> Result<()> {
    curves_plot(runner, results, names, "curves.svg", curves_title)?;
    let caption = "Validation loss during training, mean over seeds".to_string();
    report.plots.insert(0, ("curves.svg".into(), caption));
    report.findings.push(ranking_note(results, names));
    report.config = config_of(results);
    write(&runner.opts, &report, CSV_HEADER, &csv_rows(results))
}
