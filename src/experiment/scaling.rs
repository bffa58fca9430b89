//! Scaling: does CARD's gap to ARM close as the token budget grows? ARM and CARD (soft tail,
//! the default) train the same model on the same data at several budgets, and strict-tail CARD
//! joins them at the largest. The report is rewritten after every budget, so a sweep stopped
//! part-way still reports the budgets it finished. It also counts how often each CARD
//! model's `[MASK]` drafts stand in the lossless verifier (`acceptance.rs`): does training
//! longer raise acceptance?

use super::acceptance;
use super::plot::{plot, Series};
use super::runner::{RunSpec, Runner};
use super::runs::{commit_report, RunResult};
use super::stats::{fmt_mean_sd, Line, Paired};
use super::variants::{
    budget, config_of, csv_rows, curves_plot, heldout_patterns, paired_table, CSV_HEADER,
};
use super::write_up::{write, Report, Table};
use anyhow::Result;

/// The budgets as multiples of the base run (the `cpu` preset's 400 steps: 0.82M, 3.3M and
/// 10.2M tokens).
const MULTIPLES: [f64; 3] = [1.0, 4.0, 12.5];

/// The paper's perplexity ratio of CARD to ARM (1B parameters, 300B tokens: 21.54 / 21.12).
const PAPER_RATIO: f64 = 21.54 / 21.12;

fn variant(kind: &str, steps: usize) -> String {
    format!("{kind}-{steps}")
}

fn sets(kind: &str) -> Vec<String> {
    match kind {
        "arm" => vec!["train.objective=\"arm\"".into()],
        "card" => vec!["train.objective=\"card\"".into()],
        _ => vec![
            "train.objective=\"card\"".into(),
            "noise.mode=\"strict\"".into(),
        ],
    }
}

pub fn run(runner: &mut Runner) -> Result<()> {
    let base = runner.opts.steps(400);
    let budgets: Vec<usize> = MULTIPLES
        .iter()
        .map(|m| (base as f64 * m).round() as usize)
        .collect();
    let largest = budgets[budgets.len() - 1];
    let spec = |kind: &str, steps: usize, seed: u64| RunSpec {
        variant: variant(kind, steps),
        sets: sets(kind),
        seed,
        steps,
        init: None,
        zero_shot: false,
    };
    let train_tokens = runner.train_tokens(&spec("arm", base, 0))?;
    let mut results = Vec::new();
    for &steps in &budgets {
        let kinds: &[&str] = match steps == largest {
            true => &["arm", "card", "card-strict"],
            false => &["arm", "card"],
        };
        // Seed by seed, so that a stopped sweep has whole seeds to compare.
        for seed in runner.opts.seeds() {
            for kind in kinds {
                results.push(runner.run(&spec(kind, steps, seed))?);
            }
        }
        let accepted = acceptance::measure(
            &runner.opts.out.join("acceptance.json"),
            &results,
            runner.opts.smoke,
        )?;
        write_report(runner, &results, &accepted, &budgets, train_tokens)?;
        if steps != largest {
            commit_report(&runner.opts, "scaling");
        }
    }
    Ok(())
}

/// Per-seed gaps CARD − ARM at `steps`: (seed, gap) of `metric` (lower is better).
fn gaps(
    results: &[RunResult],
    steps: usize,
    metric: &dyn Fn(&RunResult) -> Option<f64>,
) -> Vec<(u64, f64)> {
    let pick = |kind: &str, seed: u64| {
        results
            .iter()
            .find(|r| r.variant == variant(kind, steps) && r.seed == seed)
            .and_then(metric)
    };
    let mut seeds: Vec<u64> = results.iter().map(|r| r.seed).collect();
    seeds.sort_unstable();
    seeds.dedup();
    seeds
        .into_iter()
        .filter_map(|s| Some((s, pick("card", s)? - pick("arm", s)?)))
        .collect()
}

/// The splits scored: validation, then each held-out source, with how to read each.
type Metric = Box<dyn Fn(&RunResult) -> Option<f64>>;
fn splits(results: &[RunResult]) -> Vec<(String, Metric)> {
    let mut out: Vec<(String, Metric)> =
        vec![("validation".into(), Box::new(|r| Some(r.bits_per_byte)))];
    for p in heldout_patterns(results) {
        let name = format!("held-out `{p}`");
        out.push((
            name,
            Box::new(move |r| {
                r.heldout
                    .iter()
                    .find(|h| h.pattern == p)
                    .map(|h| h.bits_per_byte)
            }),
        ));
    }
    out
}

fn write_report(
    runner: &Runner,
    results: &[RunResult],
    accepted: &[acceptance::Measured],
    budgets: &[usize],
    train_tokens: usize,
) -> Result<()> {
    let done: Vec<usize> = budgets
        .iter()
        .copied()
        .filter(|&b| !gaps(results, b, &|r| Some(r.bits_per_byte)).is_empty())
        .collect();
    let tokens_at = |steps: usize| {
        results
            .iter()
            .find(|r| r.steps == steps)
            .map_or(0.0, |r| r.tokens_seen as f64)
    };
    let splits = splits(results);
    let by_budget = budget_table(results, &done, &splits, train_tokens, &tokens_at);
    let (trend, findings) = trend_table(results, &done, &splits, &tokens_at);
    let largest = budgets[budgets.len() - 1];
    let at_largest: Vec<RunResult> = results
        .iter()
        .filter(|r| r.steps == largest)
        .cloned()
        .collect();
    let mut tables = vec![by_budget, trend];
    let mut plots = vec![(
        "gap.svg".to_string(),
        "CARD − ARM in bits per byte against training tokens, one point per seed; the line is the validation trend".to_string(),
    )];
    let mut findings = findings;
    if !at_largest.is_empty() {
        let names = ["card", "card-strict", "arm"].map(|k| variant(k, largest));
        let card = variant("card", largest);
        let mut soft_strict = paired_table(&at_largest, &card, &names[..2]);
        for t in &mut soft_strict {
            t.caption = format!("Strict vs soft tail at {largest} steps: {}", t.caption);
        }
        let strict = Paired::new(
            gaps_between(&at_largest, &names[1], &card)
                .into_iter()
                .map(|g| g.1)
                .collect(),
        );
        findings.push(format!(
            "Strict tail against soft tail at the largest budget ({largest} steps), validation bits per byte: {:+.4} ± {:.4}, {}. At 819K tokens strict tail was the better by likelihood (results/masking-ablation, results/tail-factor).",
            strict.mean,
            strict.sd,
            strict.verdict("strict better", "strict worse")
        ));
        tables.extend(soft_strict);
        curves_plot(
            runner,
            &at_largest,
            &names,
            "curves.svg",
            &format!("Validation loss at {largest} steps, mean over seeds"),
        )?;
        plots.push((
            "curves.svg".into(),
            format!("Validation loss during the {largest}-step runs, mean over seeds"),
        ));
    }
    gap_plot(runner, results, &done, &splits, &tokens_at)?;
    if !accepted.is_empty() {
        tables.push(acceptance::table(accepted));
        findings.extend(acceptance::findings(accepted));
        acceptance::write_plot(&runner.opts.out.join("acceptance.svg"), accepted)?;
        plots.push((
            "acceptance.svg".into(),
            "Acceptance of the first two [MASK] drafts against training tokens, one point per seed (soft tail)".into(),
        ));
    }
    let report = Report {
        title: "Does CARD's gap to ARM close as training grows? A budget sweep".into(),
        intro: vec![
            format!("ARM and CARD (soft tail, λ = 1.5) train the same model on the same data with the same schedule (warm-up, then cosine decay over the run) at {} steps, {} seed(s) each; strict-tail CARD joins them at the largest budget. Scores are of the weight average on the validation split and both held-out sources, each the exact likelihood. The paper trained 1B parameters on 300B tokens and reports CARD within ~2% of ARM in perplexity (21.54 vs 21.12).", budgets.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(", "), runner.opts.seeds().len()),
            format!("The training split holds {train_tokens} tokens, so the larger budgets repeat it (epochs in the first table), each epoch in a new window order. A repeat shows ARM the same targets again, while CARD draws new masks for the same text: repetition should cost ARM sooner than CARD. At a few epochs both objectives are expected to behave close to fresh data, so the repetition here should be small next to the gap; it still means the largest budget is not {}× the fresh text of the smallest.", MULTIPLES[MULTIPLES.len() - 1]),
            budget(results),
        ],
        tables,
        plots,
        findings,
        config: config_of(results),
    };
    write(&runner.opts, &report, CSV_HEADER, &csv_rows(results))
}

fn gaps_between(results: &[RunResult], a: &str, b: &str) -> Vec<(u64, f64)> {
    let mut out = Vec::new();
    for r in results.iter().filter(|r| r.variant == a) {
        if let Some(o) = results.iter().find(|o| o.variant == b && o.seed == r.seed) {
            out.push((r.seed, r.bits_per_byte - o.bits_per_byte));
        }
    }
    out
}

fn budget_table(
    results: &[RunResult],
    done: &[usize],
    splits: &[(String, Metric)],
    train_tokens: usize,
    tokens_at: &dyn Fn(usize) -> f64,
) -> Table {
    let mean_of = |kind: &str, steps: usize| -> String {
        let v: Vec<f64> = results
            .iter()
            .filter(|r| r.variant == variant(kind, steps))
            .map(|r| r.bits_per_byte)
            .collect();
        fmt_mean_sd(&v, 4)
    };
    let rows = done
        .iter()
        .map(|&steps| {
            let tokens = tokens_at(steps);
            let mut row = vec![
                steps.to_string(),
                format!("{:.2}M", tokens / 1e6),
                format!("{:.2}", tokens / train_tokens as f64),
                mean_of("arm", steps),
                mean_of("card", steps),
            ];
            for (_, metric) in splits {
                let g: Vec<f64> = gaps(results, steps, metric).iter().map(|g| g.1).collect();
                let p = Paired::new(g.clone());
                row.push(format!("{} ({})", fmt_mean_sd(&g, 4), short(&p)));
            }
            let ratio: Vec<f64> = gaps(results, steps, &|r| Some(r.val_loss))
                .iter()
                .map(|g| g.1.exp())
                .collect();
            row.push(fmt_mean_sd(&ratio, 3));
            row
        })
        .collect();
    let mut header: Vec<String> = [
        "steps",
        "tokens",
        "epochs",
        "ARM val bits/byte",
        "CARD val bits/byte",
    ]
    .map(String::from)
    .to_vec();
    header.extend(
        splits
            .iter()
            .map(|(n, _)| format!("gap on {n} (CARD − ARM, p)")),
    );
    header.push("val perplexity ratio CARD / ARM".into());
    Table {
        caption: "The ARM–CARD gap by budget: bits per byte, mean ± sd over seeds of the per-seed differences, paired t-test".into(),
        header,
        rows,
    }
}

fn short(p: &Paired) -> String {
    if p.p.is_nan() {
        "p –".into()
    } else {
        format!("p = {:.3}", p.p)
    }
}

/// Per-seed (log10 tokens, gap) points of one split.
fn points(
    results: &[RunResult],
    done: &[usize],
    metric: &dyn Fn(&RunResult) -> Option<f64>,
    tokens_at: &dyn Fn(usize) -> f64,
) -> Vec<(f64, f64)> {
    done.iter()
        .flat_map(|&steps| {
            let x = tokens_at(steps).log10();
            gaps(results, steps, metric)
                .into_iter()
                .map(move |g| (x, g.1))
        })
        .collect()
}

/// The trend of the gap against log10 tokens per split, and the findings it supports: the
/// verdict (narrows, widens, cannot be told) and, on validation, where a power law through the
/// gaps would reach the paper's ratio.
fn trend_table(
    results: &[RunResult],
    done: &[usize],
    splits: &[(String, Metric)],
    tokens_at: &dyn Fn(usize) -> f64,
) -> (Table, Vec<String>) {
    let mut rows = Vec::new();
    let mut findings = Vec::new();
    for (name, metric) in splits {
        let pts = points(results, done, metric.as_ref(), tokens_at);
        let Some(line) = Line::fit(&pts).filter(|_| done.len() >= 2) else {
            rows.push(vec![
                name.clone(),
                "–".into(),
                "–".into(),
                "too few budgets finished: cannot be told".into(),
            ]);
            continue;
        };
        let verdict = trend_verdict(&line);
        rows.push(vec![
            name.clone(),
            format!("{:+.4} ± {:.4}", line.slope, line.slope_se),
            format!("{:.3}", line.p),
            verdict.clone(),
        ]);
        if name == "validation" {
            findings.push(format!("On validation the gap {verdict} ({:+.4} bits/byte per tenfold tokens, p = {:.3}, {} per-seed points over {} budgets).", line.slope, line.p, line.n, done.len()));
            findings.push(extrapolation(results, done, tokens_at));
        }
    }
    let table = Table {
        caption: "Trend of the gap against training tokens: least-squares slope of the per-seed gaps against log10 tokens (bits per byte per tenfold tokens ± its standard error), t-test on the slope".into(),
        header: ["split", "slope per decade", "p", "verdict"].map(String::from).to_vec(),
        rows,
    };
    (table, findings)
}

fn trend_verdict(line: &Line) -> String {
    match (line.p < 0.05, line.slope < 0.0) {
        (true, true) => "narrows".into(),
        (true, false) => "widens".into(),
        (false, _) => "cannot be told at this scale (slope not significant)".into(),
    }
}

/// Where a power law through the validation gaps (log gap against log tokens) reaches the
/// paper's perplexity ratio, with the range the slope's 95% interval allows.
fn extrapolation(
    results: &[RunResult],
    done: &[usize],
    tokens_at: &dyn Fn(usize) -> f64,
) -> String {
    let pts = points(results, done, &|r| Some(r.val_loss), tokens_at);
    let target = PAPER_RATIO.ln().log10();
    if pts.iter().any(|p| p.1 <= 0.0) {
        return "No power-law extrapolation: CARD matched or beat ARM on some seed, so the gap has no logarithm.".into();
    }
    let logs: Vec<(f64, f64)> = pts.iter().map(|p| (p.0, p.1.log10())).collect();
    let Some(line) = Line::fit(&logs).filter(|_| done.len() >= 2) else {
        return String::new();
    };
    let at = |slope: f64| -> String {
        match line.reaches(target, slope) {
            Some(x) if slope < 0.0 => format!("{:.1e} tokens", 10f64.powf(x)),
            _ => "never (a gap that grows)".into(),
        }
    };
    let (lo, hi) = line.slope_interval();
    format!(
        "Extrapolation, not a finding: a power law through the per-seed validation gaps (loss per token, CARD − ARM ∝ tokens^{:.3}) reaches the paper's ratio ({PAPER_RATIO:.4}, a gap of {:.4} nats per token) at: {}; over the exponent's 95% interval ({lo:.3} to {hi:.3}): {} to {}. It assumes the power law holds far beyond {} budgets, the same small model (whose capacity bounds both objectives long before the paper's 300B tokens), and fresh data, which the larger budgets here are not.",
        line.slope,
        PAPER_RATIO.ln(),
        at(line.slope),
        at(lo),
        at(hi),
        done.len(),
    )
}

fn gap_plot(
    runner: &Runner,
    results: &[RunResult],
    done: &[usize],
    splits: &[(String, Metric)],
    tokens_at: &dyn Fn(usize) -> f64,
) -> Result<()> {
    let series: Vec<Series> = splits
        .iter()
        .map(|(name, metric)| Series {
            name: name.replace('`', ""),
            points: points(results, done, metric.as_ref(), tokens_at),
        })
        .collect();
    let fit = Line::fit(&series[0].points).map(|l| Series {
        name: "validation trend".into(),
        points: done
            .iter()
            .map(|&s| {
                let x = tokens_at(s).log10();
                (x, l.intercept + l.slope * x)
            })
            .collect(),
    });
    plot(
        &runner.opts.out.join("gap.svg"),
        "CARD − ARM against training tokens",
        "training tokens (log10)",
        "gap (bits/byte)",
        &series,
        false,
        fit.as_ref(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One seed per budget of 400, 1,600 and 6,400 steps (2,048 tokens each), ARM at 5 nats
    /// and CARD `gap(tokens)` above it.
    fn sweep(gap: impl Fn(f64) -> f64) -> (Vec<RunResult>, Vec<usize>) {
        let budgets = vec![400, 1600, 6400];
        let mut out = Vec::new();
        for &steps in &budgets {
            let tokens = steps as u64 * 2048;
            for (kind, loss) in [("arm", 5.0), ("card", 5.0 + gap(tokens as f64))] {
                out.push(RunResult {
                    variant: variant(kind, steps),
                    steps,
                    tokens_seen: tokens,
                    val_loss: loss,
                    bits_per_byte: 0.4 * loss,
                    ..RunResult::default()
                });
            }
        }
        (out, budgets)
    }

    fn tokens_of(steps: usize) -> f64 {
        steps as f64 * 2048.0
    }

    #[test]
    fn a_power_law_gap_extrapolates_to_where_the_power_law_says() {
        // gap = 0.2 · (N / N0)^(−1/2): the paper's ln(21.54 / 21.12) is reached at
        // N0 · (0.2 / 0.019691)² = 819,200 · 103.17 = 8.45e7 tokens.
        let n0 = tokens_of(400);
        let (runs, budgets) = sweep(|n| 0.2 * (n / n0).powf(-0.5));
        let (_, findings) = trend_table(&runs, &budgets, &splits(&runs), &tokens_of);
        assert!(findings[1].contains("tokens^-0.500"), "{}", findings[1]);
        assert!(findings[1].contains("at: 8.5e7 tokens"), "{}", findings[1]);
    }

    #[test]
    fn the_verdict_follows_the_slope_against_log_tokens() {
        let n0 = tokens_of(400);
        let (runs, budgets) = sweep(|n| 0.1 - 0.03 * (n / n0).log10());
        let (table, findings) = trend_table(&runs, &budgets, &splits(&runs), &tokens_of);
        assert_eq!(table.rows[0][3], "narrows", "{:?}", table.rows);
        assert!(
            findings[0].starts_with("On validation the gap narrows"),
            "{findings:?}"
        );
        let (runs, _) = sweep(|n| 0.1 + 0.03 * (n / n0).log10());
        let (table, findings) = trend_table(&runs, &budgets, &splits(&runs), &tokens_of);
        assert_eq!(table.rows[0][3], "widens");
        assert!(findings[1].contains("at: never"), "{}", findings[1]);
        // Noise the slope does not stand out from cannot be told.
        let wobble = [0.10, 0.06, 0.11];
        let (mut runs, _) = sweep(|_| 0.0);
        for (r, g) in runs
            .iter_mut()
            .filter(|r| r.variant.starts_with("card"))
            .zip(wobble)
        {
            r.bits_per_byte += g;
        }
        let (table, _) = trend_table(&runs, &budgets, &splits(&runs), &tokens_of);
        assert!(
            table.rows[0][3].starts_with("cannot be told"),
            "{:?}",
            table.rows
        );
        // One budget alone cannot show a trend.
        let (table, _) = trend_table(&runs, &budgets[..1], &splits(&runs), &tokens_of);
        assert!(table.rows[0][3].contains("too few budgets"));
    }
}
