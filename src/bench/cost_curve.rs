//! What one cached decoding pass costs against the positions it feeds. After a context of
//! `context` tokens per row, a pass of n positions per row is timed and rolled back, for each
//! weight format the checkpoint offers. AR pays the n = 1 pass per token; a decoder that
//! verifies drafts pays the n-position pass for however many of them stand, so the ratio to
//! n = 1 says how many drafts a pass can carry before it costs more than it saves.

use crate::checkpoint::Opened;
use crate::model::{Backend, Session, Transformer};
use anyhow::{bail, Result};
use serde::Serialize;
use std::fmt;
use std::time::Instant;

/// Positions per pass measured by default: AR's one, the verifier's few, a block's many.
pub const DEFAULT_POSITIONS: [usize; 8] = [1, 2, 3, 4, 6, 8, 12, 16];

/// Untimed passes per number of positions before the timed ones.
const WARMUP: usize = 2;

pub struct CostPlan {
    pub batches: Vec<usize>,
    /// Positions per row in one pass.
    pub positions: Vec<usize>,
    /// Cached tokens per row before the pass.
    pub context: usize,
    /// Timed passes per point (the median is reported).
    pub reps: usize,
}

/// One point of the curve: the median time of a pass of `positions` positions per row.
#[derive(Debug, Clone, Serialize)]
pub struct CostPoint {
    pub precision: String,
    pub batch: usize,
    pub positions: usize,
    pub ms: f64,
    /// `ms` over the n = 1 pass of the same precision and batch.
    pub ratio: f64,
}

/// The curves of every weight format, printed as a table by `Display`.
pub struct CostCurve {
    pub points: Vec<CostPoint>,
    pub context: usize,
    pub reps: usize,
}

impl CostPlan {
    /// Checks the plan against the model: one line naming what does not fit.
    pub fn check(&self, model: &Transformer) -> Result<()> {
        let ctx = model.cfg.max_seq_len;
        if self.positions.is_empty() || self.positions.contains(&0) {
            bail!("--positions: give positive numbers of positions per pass");
        }
        if self.batches.is_empty() || self.batches.contains(&0) {
            bail!("--batch: give positive batch sizes");
        }
        if self.context == 0 || self.reps == 0 {
            bail!("--context and --reps must be positive");
        }
        let longest = self.positions.iter().max().copied().unwrap_or(1);
        if self.context + longest > ctx {
            bail!(
                "--context {} plus a pass of {longest} positions exceeds the model's context of {ctx}",
                self.context
            );
        }
        Ok(())
    }
}

/// The weight formats a checkpoint offers, each as a model: its stored matrices (GGUF blocks
/// or f32; quantized ones also with int8 activations), f32 (expanded where it is quantized)
/// and bf16 (rounded from f32).
pub fn formats(ckpt: &Opened) -> Result<Vec<(String, Transformer)>> {
    let stored = ckpt.model.clone();
    let f32 = if stored.is_quantized() {
        stored.dequantized()?
    } else {
        stored.clone()
    };
    let bf16 = f32.to_bf16()?;
    let mut out = vec![("f32".to_string(), f32), ("bf16".to_string(), bf16)];
    if stored.is_quantized() {
        let int8 = stored.with_int8();
        out.insert(0, (stored.weights_label(), stored));
        out.insert(1, (int8.weights_label(), int8));
    }
    Ok(out)
}

/// Every point of `plan` for every format; `progress` hears which one is being measured.
pub fn measure(
    formats: &[(String, Transformer)],
    plan: &CostPlan,
    progress: &dyn Fn(&str),
) -> Result<CostCurve> {
    let mut points = Vec::new();
    for (name, model) in formats {
        plan.check(model)?;
        for &batch in &plan.batches {
            progress(&format!("cost curve: {name} batch {batch}"));
            let (ms, one) = medians(model, batch, plan)?;
            points.extend(plan.positions.iter().zip(ms).map(|(&n, ms)| CostPoint {
                precision: name.clone(),
                batch,
                positions: n,
                ms,
                ratio: ms / one,
            }));
        }
    }
    Ok(CostCurve {
        points,
        context: plan.context,
        reps: plan.reps,
    })
}

/// Median milliseconds of a pass of each of `plan.positions` for `batch` rows, and of the
/// n = 1 pass (measured whether asked for or not: the ratios' base). The numbers of positions
/// take turns within each repetition, so a drift in the machine's speed spreads over all of
/// them alike.
fn medians(model: &Transformer, batch: usize, plan: &CostPlan) -> Result<(Vec<f64>, f64)> {
    let mut positions = plan.positions.clone();
    positions.sort_unstable();
    positions.dedup();
    if positions[0] != 1 {
        positions.insert(0, 1);
    }
    let longest = *positions.last().expect("one at least");
    let room = plan.context + longest;
    let mut session = Session::new(model, Backend::for_model(model), batch, room, longest, 0)?;
    let vocab = model.cfg.vocab_size;
    let context: Vec<Vec<u32>> = (0..batch).map(|r| ids(r, plan.context, vocab)).collect();
    session.forward(&context)?;
    let cached = session.lens().to_vec();
    let passes: Vec<Vec<Vec<u32>>> = positions
        .iter()
        .map(|&n| (0..batch).map(|r| ids(batch + r, n, vocab)).collect())
        .collect();
    let mut times = vec![Vec::with_capacity(plan.reps); positions.len()];
    for rep in 0..WARMUP + plan.reps {
        for (inputs, t) in passes.iter().zip(times.iter_mut()) {
            let start = Instant::now();
            session.forward(inputs)?;
            let ms = start.elapsed().as_secs_f64() * 1e3;
            for (r, &len) in cached.iter().enumerate() {
                session.truncate_row(r, len);
            }
            if rep >= WARMUP {
                t.push(ms);
            }
        }
    }
    let medians: Vec<f64> = times.iter_mut().map(|t| median(t)).collect();
    let median_of = |n: usize| medians[positions.iter().position(|&p| p == n).expect("measured")];
    let asked = plan.positions.iter().map(|&n| median_of(n)).collect();
    Ok((asked, median_of(1)))
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// `n` fixed token ids below `vocab` for row stream `seed` (the cost does not depend on them).
fn ids(seed: usize, n: usize, vocab: usize) -> Vec<u32> {
    (0..n)
        .map(|i| ((seed * 7919 + i * 104_729 + 17) % vocab.max(1)) as u32)
        .collect()
}

impl CostCurve {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({ "cost_curve": self.points })
    }
}

impl fmt::Display for CostCurve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "one cached pass of n positions per row after {} tokens, median of {} passes",
            self.context, self.reps
        )?;
        writeln!(
            f,
            "{:<12} {:>5} {:>9} {:>10} {:>8} {:>12}",
            "precision", "batch", "positions", "ms", "xn=1", "ms/position"
        )?;
        for p in &self.points {
            writeln!(
                f,
                "{:<12} {:>5} {:>9} {:>10.3} {:>8.2} {:>12.3}",
                p.precision,
                p.batch,
                p.positions,
                p.ms,
                p.ratio,
                p.ms / p.positions as f64
            )?;
        }
        Ok(())
    }
}
