//! How often CARD's `[MASK]` drafts stand, by slot, against training tokens: the lossless
//! verifier run on each CARD model of a sweep with every slot sent every pass (positions
//! priced at nothing, so the budget never withholds a slot and each slot's record is
//! complete). Acceptance is counted, not timed, so it does not depend on what else the
//! machine runs. Results are kept in one file beside the report and reused by run and
//! checkpoint, so a clone without the checkpoints still writes the section.

use super::plot::{plot, Series};
use super::runs::RunResult;
use super::stats::{fmt_mean_sd, Line};
use super::write_up::Table;
use crate::bench::{DecodePlan, Lengths};
use crate::decode::{DecoderSpec, VerifyDecoder};
use crate::runtime::fsutil::write_atomic;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Mask slots per pass: the verifier's drafts for slots past the fourth were never accepted
/// often enough to matter on the models measured.
const SLOTS: usize = 4;
/// The budget's cost of a position before any pass is timed (`decode::budget`): one mask
/// draft pays when slot 1 stands more often than twice this.
const SLOPE: f64 = crate::decode::budget::DEFAULT_SLOPE;

/// One CARD run's acceptance on one prompt set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Measured {
    pub variant: String,
    pub seed: u64,
    pub tokens: u64,
    /// The checkpoint measured (a rerun measures again when the run names another one).
    pub checkpoint: String,
    pub set: String,
    /// For slot i: the share of passes checking its draft that accepted it (every earlier
    /// draft stood).
    pub by_slot: Vec<f64>,
    pub tokens_per_forward: f64,
}

/// The decoding plan each model is measured with: greedy, batch 1, 128 tokens, prose and
/// probes, the verifier with K = 4 and free positions.
fn plan(checkpoint: &Path, smoke: bool) -> DecodePlan {
    let verify = VerifyDecoder {
        cost: Some(0.0),
        ..VerifyDecoder::masks(SLOTS)
    };
    DecodePlan {
        sets: ["prose", "probes"].map(String::from).to_vec(),
        lengths: Lengths {
            tokens: vec![if smoke { 8 } else { 128 }],
            at_most_half_context: true,
            fit: true,
        },
        decoders: vec![DecoderSpec::Verify(verify)],
        ..DecodePlan::new(checkpoint.to_path_buf())
    }
}

/// Acceptance of every CARD run in `runs`, measured where not kept in `path` already; a run
/// whose checkpoint is gone and was never measured, or that fails to decode, is left out
/// (with a warning).
pub fn measure(path: &Path, runs: &[RunResult], smoke: bool) -> Result<Vec<Measured>> {
    let mut kept: Vec<Measured> = std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    for r in runs.iter().filter(|r| r.objective == "card") {
        let ckpt = Path::new(&r.checkpoint);
        let same = |m: &Measured| m.variant == r.variant && m.seed == r.seed;
        let on_disk = ckpt.exists();
        if kept
            .iter()
            .any(|m| same(m) && (m.checkpoint == r.checkpoint || !on_disk))
        {
            continue;
        }
        if !on_disk {
            eprintln!(
                "  acceptance of {} seed {}: checkpoint {} is not on this machine",
                r.variant,
                r.seed,
                ckpt.display()
            );
            continue;
        }
        eprintln!("  acceptance of {} seed {} ...", r.variant, r.seed);
        // A model that cannot be decoded costs its rows in this table, not the sweep's report.
        let report = match plan(ckpt, smoke).run(|_| {}) {
            Ok(report) => report,
            Err(e) => {
                eprintln!("  acceptance of {} seed {}: {e:#}", r.variant, r.seed);
                continue;
            }
        };
        kept.retain(|m| !same(m));
        for row in report.rows.iter().filter(|b| b.decoder == "verify") {
            kept.push(Measured {
                variant: r.variant.clone(),
                seed: r.seed,
                tokens: r.tokens_seen,
                checkpoint: r.checkpoint.clone(),
                set: row.prompt_set.clone(),
                by_slot: row.acceptance_by_slot.clone(),
                tokens_per_forward: row.tokens_per_forward,
            });
        }
        write_atomic(path, serde_json::to_string_pretty(&kept)?.as_bytes())?;
    }
    Ok(kept)
}

/// The variants, each with its tokens, fewest tokens first.
fn variants(rows: &[Measured]) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = Vec::new();
    for m in rows {
        if !out.iter().any(|v| v.0 == m.variant) {
            out.push((m.variant.clone(), m.tokens));
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
    out
}

fn sets(rows: &[Measured]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for m in rows {
        if !out.contains(&m.set) {
            out.push(m.set.clone());
        }
    }
    out
}

/// Mean ± sd over seeds of each slot's acceptance and of tokens per forward, per variant and
/// prompt set.
pub fn table(rows: &[Measured]) -> Table {
    let mut out = Vec::new();
    for (variant, tokens) in variants(rows) {
        for set in sets(rows) {
            let of: Vec<&Measured> = rows
                .iter()
                .filter(|m| m.variant == variant && m.set == set)
                .collect();
            if of.is_empty() {
                continue;
            }
            let mut row = vec![
                variant.clone(),
                format!("{:.2}M", tokens as f64 / 1e6),
                set.clone(),
                of.len().to_string(),
            ];
            for i in 0..SLOTS {
                // A slot no pass checked has no share (and a seed none of whose passes got
                // that far has no entry).
                let v: Vec<f64> = of
                    .iter()
                    .filter_map(|m| m.by_slot.get(i).copied())
                    .filter(|a| a.is_finite())
                    .collect();
                row.push(match v.is_empty() {
                    true => "–".into(),
                    false => fmt_mean_sd(&v, 3),
                });
            }
            let tpf: Vec<f64> = of.iter().map(|m| m.tokens_per_forward).collect();
            row.push(fmt_mean_sd(&tpf, 3));
            out.push(row);
        }
    }
    let mut header: Vec<String> = ["run", "tokens", "prompts", "seeds"]
        .map(String::from)
        .to_vec();
    header.extend((1..=SLOTS).map(|i| format!("slot {i}")));
    header.push("tokens/forward".into());
    Table {
        caption: format!("Acceptance of [MASK] drafts by slot against training tokens: the lossless verifier with K = {SLOTS} slots sent every pass, greedy, batch 1; for slot i the share of passes checking its draft that accepted it (every earlier draft stood), mean ± sd over the seeds whose passes reached that slot (– where none did). A slot is checked only after every earlier draft stood, so slots 3 and 4 rest on a few passes each. Counted, not timed"),
        header,
        rows: out,
    }
}

/// Per-seed (log10 tokens, acceptance of `slot`) points of the soft-tail runs on `set`.
fn points(rows: &[Measured], set: &str, slot: usize) -> Vec<(f64, f64)> {
    rows.iter()
        .filter(|m| m.set == set && m.variant.starts_with("card-") && !m.variant.contains("strict"))
        .filter_map(|m| Some(((m.tokens as f64).log10(), *m.by_slot.get(slot)?)))
        .filter(|p| p.1.is_finite())
        .collect()
}

/// The trend of slot-1 acceptance with tokens on each prompt set, and what it would take to
/// pay.
pub fn findings(rows: &[Measured]) -> Vec<String> {
    let mut out = Vec::new();
    for set in sets(rows) {
        let pts = points(rows, &set, 0);
        let mut budgets: Vec<u64> = pts.iter().map(|p| p.0.to_bits()).collect();
        budgets.sort_unstable();
        budgets.dedup();
        let Some(line) = Line::fit(&pts).filter(|_| budgets.len() >= 2) else {
            continue;
        };
        let verdict = match (line.p < 0.05, line.slope > 0.0) {
            (true, true) => "rises",
            (true, false) => "falls",
            (false, _) => "shows no trend that stands out from the seeds",
        };
        let at = |x: f64| line.intercept + line.slope * x;
        let top = pts.iter().map(|p| p.0).fold(f64::MIN, f64::max);
        out.push(format!(
            "Slot-1 acceptance on {set} {verdict} with training tokens ({:+.3} per tenfold tokens ± {:.3}, p = {:.3}; {:.3} at the largest budget on the fitted line).",
            line.slope, line.slope_se, line.p, at(top)
        ));
    }
    if !out.is_empty() {
        out.push(format!("What it takes to pay: a pass with one mask draft and one new slot feeds two positions more than AR's, so at the budget's default position cost ({SLOPE} of a one-position pass) it beats AR only when slot 1 stands more than {:.0}% of the time.", 200.0 * SLOPE));
    }
    out
}

/// Slot 1 and 2 acceptance against training tokens, per seed, for each prompt set.
pub fn write_plot(path: &Path, rows: &[Measured]) -> Result<()> {
    let series: Vec<Series> = sets(rows)
        .iter()
        .flat_map(|set| {
            (0..2).map(move |slot| Series {
                name: format!("slot {} on {set}", slot + 1),
                points: points(rows, set, slot),
            })
        })
        .collect();
    plot(
        path,
        "Acceptance of [MASK] drafts against training tokens",
        "training tokens (log10)",
        "acceptance",
        &series,
        false,
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(variant: &str, seed: u64, tokens: u64, set: &str, slot1: f64) -> Measured {
        Measured {
            variant: variant.into(),
            seed,
            tokens,
            checkpoint: format!("{variant}/{seed}"),
            set: set.into(),
            by_slot: vec![slot1, slot1 / 2.0],
            tokens_per_forward: 1.0 + slot1,
        }
    }

    #[test]
    fn the_trend_follows_slot_one_by_seed_and_leaves_strict_runs_out() {
        let mut rows = Vec::new();
        for (i, tokens) in [1_000_000u64, 10_000_000].into_iter().enumerate() {
            for seed in 0..3 {
                let a = 0.2 + 0.1 * i as f64 + 0.01 * seed as f64;
                rows.push(row(&format!("card-{tokens}"), seed, tokens, "prose", a));
            }
        }
        // A strict run far off the line would flip the slope if it were counted.
        rows.push(row("card-strict-10000000", 0, 10_000_000, "prose", 0.0));
        let f = findings(&rows);
        assert!(
            f[0].starts_with("Slot-1 acceptance on prose rises"),
            "{f:?}"
        );
        assert!(f[0].contains("+0.100 per tenfold"), "{f:?}");
        // A slot no seed's passes reached has no share to average.
        rows[0].by_slot = vec![0.2];
        rows[1].by_slot = vec![0.2, f64::NAN];
        let t = table(&rows);
        assert_eq!(t.rows.len(), 3, "{:?}", t.rows);
        assert_eq!(t.rows[0][3], "3");
        assert_eq!(t.rows[0][5], "0.110", "{:?}", t.rows[0]);
        assert_eq!(t.rows[0][6], "–", "{:?}", t.rows[0]);
        // One budget alone shows no trend.
        assert!(findings(&rows[..3]).is_empty());
    }
}
