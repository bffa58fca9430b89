//! Decoding benchmarks (`bench::DecodePlan`) an experiment measures once per model and keeps
//! (a rerun reuses the rows when they measured the same checkpoint, judge and plan), and their
//! write-up for two models side by side: report tables, the speed-against-quality plot, CSV
//! rows.

use super::plot::{plot, Series};
use super::write_up::Table;
use crate::bench::decode::DecodeBench;
use crate::bench::DecodePlan;
use crate::runtime::fsutil::write_atomic;
use anyhow::Result;
use std::path::Path;

/// What the saved rows must match to be reused.
fn key(plan: &DecodePlan) -> String {
    let lengths: Vec<String> = plan.lengths.tokens.iter().map(|l| l.to_string()).collect();
    format!(
        "sets {:?}, {} tokens, batches {:?}, {:?}, {} rounds, {:?}",
        plan.sets,
        lengths.join(","),
        plan.batches,
        plan.decoders,
        plan.rounds,
        plan.precision
    )
}

/// A benchmark kept between runs, with the checkpoint it measured.
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedBench {
    model: String,
    #[serde(default)]
    plan: String,
    rows: Vec<DecodeBench>,
}

/// The rows of `plan` (its checkpoint, judged by its judge), measured once and kept in `path`.
pub fn bench_once(path: &Path, plan: &DecodePlan) -> Result<Vec<DecodeBench>> {
    let open = plan.open()?;
    let ckpt = &open.ckpt;
    // Reused only if it measured this very checkpoint, with this judge and plan.
    let dir = std::fs::canonicalize(&ckpt.dir).unwrap_or_else(|_| ckpt.dir.clone());
    let judge = plan
        .judge
        .as_ref()
        .map_or("the model itself".into(), |j| j.display().to_string());
    let measured = format!("{} step {}, judge {judge}", dir.display(), ckpt.state.step);
    if let Ok(text) = std::fs::read_to_string(path) {
        if let Ok(saved) = serde_json::from_str::<SavedBench>(&text) {
            // An empty plan: a file from before plans were recorded (parallel-decoding's).
            let same_plan = saved.plan.is_empty() || saved.plan == key(plan);
            if saved.model == measured && same_plan {
                eprintln!("  benchmark of {}: done earlier", plan.checkpoint.display());
                return Ok(saved.rows);
            }
        }
    }
    let ready = open.prepare()?;
    eprintln!("  benchmark of {} ...", plan.checkpoint.display());
    let saved = SavedBench {
        model: measured,
        plan: key(plan),
        rows: ready.measure(|_| {})?.rows,
    };
    write_atomic(path, serde_json::to_string(&saved)?.as_bytes())?;
    Ok(saved.rows)
}

/// The row of `decoder` + `setting` for (set, batch) in `rows`.
pub fn find<'a>(
    rows: &'a [DecodeBench],
    set: &str,
    batch: usize,
    setting: &str,
    decoder: &str,
) -> Option<&'a DecodeBench> {
    rows.iter().find(|r| {
        r.prompt_set == set && r.batch == batch && r.decoder == decoder && r.setting == setting
    })
}

/// Rows of two models tagged by a label ("before"/"after", "base"/"adapted").
pub type Tagged<'a> = Vec<(&'a str, &'a DecodeBench)>;

pub fn tag<'a>(models: [(&'a str, &'a [DecodeBench]); 2]) -> Tagged<'a> {
    models
        .iter()
        .flat_map(|(label, rows)| rows.iter().map(move |r| (*label, r)))
        .collect()
}

fn slots(r: &DecodeBench) -> String {
    r.acceptance_by_slot
        .iter()
        .map(|x| format!("{x:.2}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The report table of one prompt set and batch size, both models.
pub fn table(tagged: &Tagged, set: &str, batch: usize) -> Table {
    let rows = tagged
        .iter()
        .filter(|(_, r)| r.prompt_set == set && r.batch == batch)
        .map(|(model, r)| {
            vec![
                model.to_string(),
                r.decoder.clone(),
                r.setting.clone(),
                format!("{:.1}", r.tokens_per_s),
                format!("{:.2}", r.ratio_to_ar),
                format!("{:.2}", r.tokens_per_forward),
                slots(r),
                format!("{:.2}", r.kept_fraction),
                format!("{:.2}", r.same_as_ar),
                format!("{:.3}", r.judge_nll),
                format!("{:.3}", r.repeated_4gram_rate),
                format!("{:.3}", r.distinct_2),
            ]
        })
        .collect();
    Table {
        caption: format!("{set} prompts, batch {batch}"),
        header: [
            "model",
            "decoder",
            "setting",
            "tokens/s",
            "× AR",
            "tokens/forward",
            "acceptance by slot",
            "kept",
            "= AR",
            "judge NLL ↓",
            "rep. 4-grams",
            "distinct-2",
        ]
        .map(String::from)
        .to_vec(),
        rows,
    }
}

/// Speed against the judge's NLL on one prompt set at batch 1: AR, and each model's
/// threshold and verified rows.
pub fn pareto(path: &Path, set: &str, models: [(&str, &[DecodeBench]); 2]) -> Result<()> {
    let points = |rows: &[DecodeBench], decoder: &str| -> Vec<(f64, f64)> {
        rows.iter()
            .filter(|r| r.prompt_set == set && r.batch == 1 && r.decoder == decoder)
            .map(|r| (r.ratio_to_ar, r.judge_nll))
            .collect()
    };
    let mut series = vec![Series {
        name: "AR".into(),
        points: points(models[0].1, "ar"),
    }];
    for (decoder, words) in [("card", "threshold"), ("verify", "verified")] {
        for (label, rows) in models {
            series.push(Series {
                name: format!("{words}, {label}"),
                points: points(rows, decoder),
            });
        }
    }
    plot(
        path,
        &format!("{set} prompts, batch 1: speed against quality"),
        "tokens/s relative to AR in the same run",
        "NLL of the output under the judge (nats/token)",
        &series,
        false,
        None,
    )
}

pub const CSV_HEADER: [&str; 16] = [
    "model",
    "prompt_set",
    "batch",
    "max_new_tokens",
    "decoder",
    "setting",
    "tokens_per_s",
    "ratio_to_ar",
    "tokens_per_forward",
    "drafts_accepted_per_pass",
    "acceptance_by_slot",
    "kept_fraction",
    "same_as_ar",
    "judge_nll",
    "repeated_4gram_rate",
    "distinct_2",
];

/// One CSV row per benchmark row, in [`CSV_HEADER`]'s order.
pub fn csv_rows(tagged: &Tagged) -> Vec<Vec<String>> {
    tagged
        .iter()
        .map(|(model, r)| {
            vec![
                model.to_string(),
                r.prompt_set.clone(),
                r.batch.to_string(),
                r.max_new_tokens.to_string(),
                r.decoder.clone(),
                r.setting.clone(),
                format!("{:.2}", r.tokens_per_s),
                format!("{:.4}", r.ratio_to_ar),
                format!("{:.4}", r.tokens_per_forward),
                r.drafts_accepted_per_pass
                    .map_or(String::new(), |x| format!("{x:.4}")),
                slots(r),
                format!("{:.4}", r.kept_fraction),
                format!("{:.4}", r.same_as_ar),
                format!("{:.4}", r.judge_nll),
                format!("{:.4}", r.repeated_4gram_rate),
                format!("{:.4}", r.distinct_2),
            ]
        })
        .collect()
}
