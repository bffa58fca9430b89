//! Decoding calibration: block size K × step limit T_max × threshold τ on one CARD model,
//! speed against the quality of what it generates, and the Pareto frontier.

use super::plot::{plot, Series};
use super::runner::Runner;
use super::variants::{config_of, run_variants};
use super::write_up::{write, Report, Table};
use crate::bench::decode::DecodeBench;
use crate::bench::{DecodePlan, Lengths};
use crate::decode::{CardDecoder, DecoderSpec};
use anyhow::Result;

pub fn run(runner: &mut Runner) -> Result<()> {
    let results = run_variants(
        runner,
        &[("card".into(), vec!["train.objective=\"card\"".into()])],
        1200,
    )?;
    let smoke = runner.opts.smoke;
    let batch = if smoke { 2 } else { 8 };
    let plan = DecodePlan {
        // Judged by SmolLM2 when fetched, else by the model itself.
        judge: super::runner::external_judge(),
        sets: vec!["builtin".into()],
        lengths: Lengths {
            tokens: vec![if smoke { 16 } else { 128 }],
            at_most_half_context: true,
            fit: false,
        },
        batches: vec![batch],
        decoders: grid(smoke),
        rounds: 1,
        ..DecodePlan::new(results[0].checkpoint.clone().into())
    };
    let measured = plan.run(|_| {})?;
    let rows = &measured.rows;
    let len = rows.first().map_or(0, |r| r.max_new_tokens);
    let points: Vec<(f64, f64)> = rows
        .iter()
        .map(|r| (r.tokens_per_forward, r.judge_nll))
        .collect();
    let frontier: Vec<(f64, f64)> = pareto(&points).into_iter().map(|i| points[i]).collect();
    let table_rows = table_rows(rows, &frontier);
    plots(&runner.opts.out, rows, frontier)?;
    let csv = csv_rows(rows);
    let report = Report {
        title: "Decoding calibration: block size K × step limit T_max × threshold τ".into(),
        intro: vec![format!(
            "One CARD model ({} steps) decodes the fixed prompt set (batch {}, {} new tokens, greedy, EOS ignored) with every setting. Quality proxy: the NLL of what it generated under {} (lower = more probable text; watch the repeated 4-gram rate, since loops are also probable). The paper: ~1.7× speed-up at little quality loss, up to ~4× with repetition.",
            results[0].steps, batch, len,
            measured.judge.as_ref().map_or("the model itself".to_string(), |j| j.display().to_string())
        )],
        tables: vec![Table {
            caption: "Every setting (✓ = on the Pareto frontier of tokens/forward vs NLL)".into(),
            header: ["setting", "tokens/forward ↑", "tokens/s", "× AR tokens/s", "NLL ↓", "repeated 4-grams", "unigram entropy", "frontier"].map(String::from).to_vec(),
            rows: table_rows,
        }],
        plots: vec![
            ("pareto.svg".into(), "Tokens per forward against generation NLL, Pareto frontier in black".into()),
            ("tokens_per_s.svg".into(), "Wall-clock tokens/s against generation NLL".into()),
        ],
        findings: vec!["On a CPU a small model is compute-bound: K slots cost about K times one token, so tokens/s can fall even when tokens per forward rises; tokens per forward is the hardware-independent measure.".into()],
        config: config_of(&results),
    };
    write(
        &runner.opts,
        &report,
        &[
            "decoder",
            "block_size",
            "step_limit",
            "threshold",
            "tokens_per_forward",
            "tokens_per_s",
            "self_nll",
            "repeated_4gram_rate",
            "unigram_entropy",
        ],
        &csv,
    )
}

/// The report's table: one row per setting, ✓ on the frontier.
fn table_rows(rows: &[DecodeBench], frontier: &[(f64, f64)]) -> Vec<Vec<String>> {
    let label = |r: &DecodeBench| match r.decoder.as_str() {
        "ar" => "AR".to_string(),
        _ => r.setting.clone(),
    };
    let on_frontier = |r: &DecodeBench| frontier.contains(&(r.tokens_per_forward, r.judge_nll));
    rows.iter()
        .map(|r| {
            vec![
                label(r),
                format!("{:.2}", r.tokens_per_forward),
                format!("{:.1}", r.tokens_per_s),
                format!("{:.2}", r.ratio_to_ar),
                format!("{:.3}", r.judge_nll),
                format!("{:.3}", r.repeated_4gram_rate),
                format!("{:.2}", r.unigram_entropy),
                if on_frontier(r) {
                    "✓".into()
                } else {
                    String::new()
                },
            ]
        })
        .collect()
}

/// Tokens per forward against the judge's NLL (with the frontier), and tokens/s against it.
fn plots(out: &std::path::Path, rows: &[DecodeBench], frontier: Vec<(f64, f64)>) -> Result<()> {
    let ar: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r.block_size.is_none())
        .map(|r| (r.tokens_per_forward, r.judge_nll))
        .collect();
    let card: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r.block_size.is_some())
        .map(|r| (r.tokens_per_forward, r.judge_nll))
        .collect();
    plot(
        &out.join("pareto.svg"),
        "Decoding calibration: speed vs quality",
        "tokens per forward pass",
        "NLL of the generated text under the judge (nats/token)",
        &[
            Series {
                name: "CARD (K, T, τ)".into(),
                points: card,
            },
            Series {
                name: "AR".into(),
                points: ar,
            },
        ],
        false,
        Some(&Series {
            name: "Pareto frontier".into(),
            points: frontier,
        }),
    )?;
    let tps: Vec<(f64, f64)> = rows.iter().map(|r| (r.tokens_per_s, r.judge_nll)).collect();
    plot(
        &out.join("tokens_per_s.svg"),
        "Decoding calibration: wall-clock speed vs quality",
        "generated tokens per second",
        "NLL of the generated text (nats/token)",
        &[Series {
            name: "settings".into(),
            points: tps,
        }],
        false,
        None,
    )
}

/// One CSV row per setting.
fn csv_rows(rows: &[DecodeBench]) -> Vec<Vec<String>> {
    rows.iter()
        .map(|r| {
            vec![
                r.decoder.clone(),
                r.block_size.map_or(String::new(), |x| x.to_string()),
                r.step_limit.map_or(String::new(), |x| x.to_string()),
                r.threshold.map_or(String::new(), |x| x.to_string()),
                format!("{:.4}", r.tokens_per_forward),
                format!("{:.2}", r.tokens_per_s),
                format!("{:.4}", r.judge_nll),
                format!("{:.4}", r.repeated_4gram_rate),
                format!("{:.4}", r.unigram_entropy),
            ]
        })
        .collect()
}

/// The CARD settings measured: K × T_max × τ.
fn grid(smoke: bool) -> Vec<DecoderSpec> {
    let mut grid = Vec::new();
    for k in if smoke { vec![2, 4] } else { vec![2, 4, 8, 16] } {
        for t in if smoke {
            vec![k]
        } else {
            vec![(k / 2).max(1), k]
        } {
            for tau in if smoke {
                vec![0.7]
            } else {
                vec![0.5, 0.7, 0.9, 1.0]
            } {
                grid.push(DecoderSpec::Card(CardDecoder {
                    block_size: k,
                    step_limit: t,
                    threshold: tau,
                    ..CardDecoder::default()
                }));
            }
        }
    }
    grid
}

/// Indices of the points (tokens/forward ↑, NLL ↓) that no other point dominates: at least
/// as good on both and better on one by more than rounding (identical decodes measured in
/// different batches differ in the last bits).
pub fn pareto(points: &[(f64, f64)]) -> Vec<usize> {
    const EPS: f64 = 1e-6;
    let dominates = |b: (f64, f64), a: (f64, f64)| {
        b.0 >= a.0 - EPS && b.1 <= a.1 + EPS && (b.0 > a.0 + EPS || b.1 < a.1 - EPS)
    };
    (0..points.len())
        .filter(|&i| !points.iter().any(|&b| dominates(b, points[i])))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn pareto_keeps_only_undominated_points() {
        let pts = [
            (1.0, 2.0),
            (2.0, 3.4),
            (2.0, 3.7),
            (1.0, 2.5),
            (3.0, 3.4),
            (1.0, 2.0 + 1e-12),
        ];
        // (2.0, 3.4) is dominated by (3.0, 3.4); (2.0, 3.7) and (1.0, 2.5) too; equal points stay.
        assert_eq!(super::pareto(&pts), vec![0, 4, 5]);
    }
}
