//! What the experiments share: training every (variant, seed), picking results apart,
//! mean validation curves, the ranking note and the per-run CSV.

use super::plot::{plot, Series};
use super::runner::{RunSpec, Runner};
use super::runs::RunResult;
use super::stats::Paired;
use super::stats::{fmt_mean_sd, mean_sd};
use super::write_up::{write, Report, Table};
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
    "lambada_acc",
    "lambada_bpb",
    "raw_bits_per_byte",
    "heldout_bits_per_byte",
    "elapsed_s",
    "code_version",
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
                r.lambada_acc.map_or(String::new(), |z| format!("{z:.4}")),
                r.lambada_bpb.map_or(String::new(), |z| format!("{z:.4}")),
                r.raw_bits_per_byte
                    .map_or(String::new(), |z| format!("{z:.5}")),
                r.heldout
                    .iter()
                    .map(|h| format!("{}={:.5}", h.pattern, h.bits_per_byte))
                    .collect::<Vec<_>>()
                    .join(";"),
                format!("{:.0}", r.elapsed_s),
                r.code_version.clone(),
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
                zero_shot: true,
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

/// Mean ± sd of `f` over `runs` ("–" unless every run has a value).
fn mean_of_all(runs: &[&RunResult], f: impl Fn(&RunResult) -> Option<f64>) -> String {
    let z: Vec<f64> = runs.iter().filter_map(|r| f(r)).collect();
    if z.is_empty() || z.len() < runs.len() {
        "–".into()
    } else {
        fmt_mean_sd(&z, 3)
    }
}

/// Mean zero-shot average ("–" unless every run was scored).
pub(super) fn zs(runs: &[&RunResult]) -> String {
    mean_of_all(runs, |r| r.zero_shot_avg)
}

/// The held-out source groups the runs were scored on (those of the first run).
pub(super) fn heldout_patterns(results: &[RunResult]) -> Vec<String> {
    results.first().map_or(Vec::new(), |r| {
        r.heldout.iter().map(|h| h.pattern.clone()).collect()
    })
}

/// Mean ± sd bits per byte of `runs` on each held-out source group.
pub(super) fn heldout_cells(runs: &[&RunResult], patterns: &[String]) -> Vec<String> {
    patterns
        .iter()
        .map(|p| {
            let v: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.heldout.iter().find(|h| &h.pattern == p))
                .map(|h| h.bits_per_byte)
                .collect();
            if v.is_empty() {
                "–".into()
            } else {
                fmt_mean_sd(&v, 4)
            }
        })
        .collect()
}

/// `first`, "val bits/byte ↓", one column per held-out source, then `rest`.
pub(super) fn header(first: &str, patterns: &[String], rest: &[&str]) -> Vec<String> {
    let mut h = vec![first.to_string(), "val bits/byte ↓".to_string()];
    h.extend(
        patterns
            .iter()
            .map(|p| format!("held-out `{p}` bits/byte ↓")),
    );
    h.extend(rest.iter().map(|s| s.to_string()));
    h
}

/// Mean LAMBADA accuracy ("–" unless every run was scored exactly).
pub(super) fn lambada(runs: &[&RunResult]) -> String {
    mean_of_all(runs, |r| r.lambada_acc)
}

/// Mean LAMBADA target bits per byte (an upper bound for diffusion models; "–" unless every run
/// was scored).
pub(super) fn lambada_bpb(runs: &[&RunResult]) -> String {
    mean_of_all(runs, |r| r.lambada_bpb)
}

/// Per-seed differences `variant − reference` of `metric` (lower is better), one table row
/// each: the variant, one cell per seed, mean ± sd, and the verdict of [`Paired`].
pub(super) fn paired_rows(
    results: &[RunResult],
    reference: &str,
    names: &[String],
    seeds: &[u64],
    metric: impl Fn(&RunResult) -> Option<f64>,
) -> Vec<Vec<String>> {
    names
        .iter()
        .filter(|v| v.as_str() != reference)
        .map(|v| {
            let mut row = vec![v.clone()];
            let mut diffs = Vec::new();
            for &s in seeds {
                let pick = |name: &str| {
                    results
                        .iter()
                        .find(|r| r.variant == name && r.seed == s)
                        .and_then(&metric)
                };
                match (pick(v), pick(reference)) {
                    (Some(x), Some(y)) => {
                        diffs.push(x - y);
                        row.push(format!("{:+.4}", x - y));
                    }
                    _ => row.push("–".into()),
                }
            }
            let p = Paired::new(diffs);
            row.push(format!("{:+.4} ± {:.4}", p.mean, p.sd));
            row.push(p.verdict("better", "worse"));
            row
        })
        .collect()
}

/// The seeds of `results` in order, and the header of a [`paired_rows`] table: `first`, one
/// column per seed, mean ± sd, verdict.
pub(super) fn paired_header(results: &[RunResult], first: &str) -> (Vec<u64>, Vec<String>) {
    let mut seeds: Vec<u64> = results.iter().map(|r| r.seed).collect();
    seeds.sort_unstable();
    seeds.dedup();
    let mut header = vec![first.to_string()];
    header.extend(seeds.iter().map(|s| format!("seed {s}")));
    header.extend(["mean ± sd".to_string(), "verdict".to_string()]);
    (seeds, header)
}

/// The table of [`paired_rows`] for validation and every held-out source.
pub(super) fn paired_table(results: &[RunResult], reference: &str, names: &[String]) -> Vec<Table> {
    let (seeds, header) = paired_header(results, "variant");
    let mut tables = vec![Table {
        caption: format!(
            "Per-seed difference from {reference} in validation bits/byte (variant − {reference}; negative = variant better), paired t-test over seeds"
        ),
        header: header.clone(),
        rows: paired_rows(results, reference, names, &seeds, |r| Some(r.bits_per_byte)),
    }];
    for p in heldout_patterns(results) {
        tables.push(Table {
            caption: format!("The same on the held-out source `{p}`"),
            header: header.clone(),
            rows: paired_rows(results, reference, names, &seeds, |r| {
                r.heldout
                    .iter()
                    .find(|h| h.pattern == p)
                    .map(|h| h.bits_per_byte)
            }),
        });
    }
    tables
}

/// What the runs cost: steps, tokens, wall time, machines and code versions.
pub(super) fn budget(results: &[RunResult]) -> String {
    if results.is_empty() {
        return String::new();
    }
    let mut steps: Vec<usize> = results.iter().map(|r| r.steps).collect();
    steps.sort_unstable();
    steps.dedup();
    let mut tokens: Vec<u64> = results.iter().map(|r| r.tokens_seen).collect();
    tokens.sort_unstable();
    tokens.dedup();
    let train_h: f64 = results.iter().map(|r| r.elapsed_s).sum::<f64>() / 3600.0;
    let eval_h: f64 = results.iter().map(|r| r.eval_s).sum::<f64>() / 3600.0;
    let mut machines: Vec<String> = results.iter().map(|r| r.machine.clone()).collect();
    machines.sort();
    machines.dedup();
    let mut versions: Vec<String> = results.iter().map(|r| r.code_version.clone()).collect();
    versions.sort();
    versions.dedup();
    let list = |v: &[String]| {
        v.iter()
            .map(|x| format!("`{x}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "Budget: {} runs of {} steps ({} training tokens each); {train_h:.2} h of training and {eval_h:.2} h of evaluation in all. Trained on {}; code {}.",
        results.len(),
        steps.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(" / "),
        tokens.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(" / "),
        list(&machines),
        list(&versions),
    )
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
    format!("Ranking by validation bits per byte, best first: {}. Only the verdicts of the per-seed table count as evidence.", order.join(" < "))
}

/// Write up a comparison of variants the shared way: `report` plus the budget (last in the
/// intro), the per-seed differences from `reference` (after the tables), the validation curves
/// of every variant (first among the plots), the ranking by bits per byte (last among the
/// findings), one run's config, and the per-run CSV.
pub(super) fn write_comparison(
    runner: &Runner,
    results: &[RunResult],
    names: &[String],
    reference: &str,
    curves_title: &str,
    mut report: Report,
) -> Result<()> {
    curves_plot(runner, results, names, "curves.svg", curves_title)?;
    let caption = "Validation loss during training, mean over seeds".to_string();
    report.plots.insert(0, ("curves.svg".into(), caption));
    report.intro.push(budget(results));
    report
        .tables
        .extend(paired_table(results, reference, names));
    report.findings.push(ranking_note(results, names));
    report.config = config_of(results);
    write(&runner.opts, &report, CSV_HEADER, &csv_rows(results))
}
