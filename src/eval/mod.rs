//! Held-out evaluation: the score each objective names (the exact autoregressive likelihood
//! at t = 0 for ARM and CARD, the NELBO bound for MDLM and BD3LM), bits per byte, and CARD's
//! loss as a function of the noise level t.

pub mod quality;
pub mod report;
pub mod zero_shot;

use crate::model::{ops, Attention, Transformer};
use crate::objective::{Bound, HeldOut, Objective};
use crate::runtime::rng::{rng, Stream};
use candle_core::{Result, Tensor};
use serde::Serialize;

/// Summed negative log-likelihood (nats) over predicted tokens.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct NllSum {
    pub nll: f64,
    pub tokens: u64,
}

impl NllSum {
    pub fn mean(&self) -> f64 {
        self.nll / self.tokens.max(1) as f64
    }
}

/// −Σ log p(x_n | x_<n) over n = 2..len of each window, batching windows of equal length.
pub fn ar_nll(model: &Transformer, windows: &[&[u32]], batch: usize) -> Result<NllSum> {
    let mut sum = NllSum::default();
    let dev = model.device();
    for same_len in windows.chunk_by(|a, b| a.len() == b.len()) {
        for sub in same_len.chunks(batch.max(1)) {
            let (b, l) = (sub.len(), sub[0].len());
            let input: Vec<u32> = sub
                .iter()
                .flat_map(|w| w[..l - 1].iter().copied())
                .collect();
            let targets: Vec<u32> = sub.iter().flat_map(|w| w[1..].iter().copied()).collect();
            let input = Tensor::from_vec(input, (b, l - 1), dev)?;
            let logits = model.forward(&input, Attention::Causal, None)?;
            let logits = logits.reshape((b * (l - 1), model.cfg.vocab_size))?;
            let targets = Tensor::from_vec(targets, b * (l - 1), dev)?;
            let nll = ops::token_nll(&logits, &targets)?;
            sum.nll += nll
                .to_dtype(candle_core::DType::F64)?
                .sum_all()?
                .to_scalar::<f64>()?;
            sum.tokens += (b * (l - 1)) as u64;
        }
    }
    Ok(sum)
}

/// Bits per byte from a mean NLL per token and the split's tokens-per-byte ratio.
pub fn bits_per_byte(mean_nll: f64, tokens: u64, bytes: u64) -> f64 {
    mean_nll / std::f64::consts::LN_2 * tokens as f64 / bytes.max(1) as f64
}

/// Bits per byte on a corpus's validation split from a mean NLL per token, at the split's
/// own tokens-per-byte ratio.
pub fn val_bits_per_byte(mean_nll: f64, data: &crate::data::Prepared) -> f64 {
    bits_per_byte(mean_nll, data.val.len() as u64, data.val_bytes)
}

#[derive(Debug, Clone, Serialize)]
pub struct NoisePoint {
    pub t: f64,
    /// The training loss (weighted, normalised as configured) at this noise level.
    pub loss: f64,
    /// Plain mean cross-entropy over all targets.
    pub mean_ce: f64,
}

/// The loss of a shifted objective (ARM, CARD) at fixed noise levels over the given windows
/// (fixed seed).
pub fn loss_vs_t(
    model: &Transformer,
    objective: &dyn Objective,
    windows: &[&[u32]],
    ts: &[f64],
    batch: usize,
    seed: u64,
) -> Result<Vec<NoisePoint>> {
    if !objective.shifted() {
        candle_core::bail!("loss_vs_t scores shifted objectives (ARM, CARD) only");
    }
    let dev = model.device();
    let mut out = Vec::new();
    for (ti, &t) in ts.iter().enumerate() {
        let (mut loss, mut ce, mut n) = (0.0, 0.0, 0usize);
        for (bi, group) in windows.chunks(batch.max(1)).enumerate() {
            let l = group[0].len();
            if group.iter().any(|w| w.len() != l) || l < 2 {
                continue;
            }
            let x0: Vec<u32> = group.iter().flat_map(|w| w.iter().copied()).collect();
            let mut rng = rng(seed, Stream::LossVsT, (ti as u64) << 32 | bi as u64);
            let nb = objective.corrupt(&x0, group.len(), l, Some(&vec![t; group.len()]), &mut rng);
            // One forward gives both: the shifted objectives' loss is Σ w·NLL / denom.
            let input = Tensor::from_slice(&nb.input, (nb.batch, nb.input_len), dev)?;
            let logits = model.forward(&input, Attention::Causal, None)?;
            let logits = logits.reshape((nb.batch * nb.input_len, model.cfg.vocab_size))?;
            let targets = Tensor::from_slice(&nb.targets, nb.targets.len(), dev)?;
            let nll = ops::token_nll(&logits, &targets)?
                .to_dtype(candle_core::DType::F64)?
                .to_vec1::<f64>()?;
            let weighted: f64 = nll
                .iter()
                .zip(&nb.weights)
                .map(|(x, &w)| x * w as f64)
                .sum();
            loss += weighted / nb.denom;
            ce += nll.iter().sum::<f64>() / nll.len().max(1) as f64;
            n += 1;
        }
        out.push(NoisePoint {
            t,
            loss: loss / n.max(1) as f64,
            mean_ce: ce / n.max(1) as f64,
        });
    }
    Ok(out)
}

/// The diffusion baselines' likelihood bound on a set of windows: the NELBO per token,
/// averaged over `t_samples` independent noise draws per window, with its Monte Carlo
/// standard error (from the spread of each window's draws; the windows are fixed).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct NelboBound {
    /// Upper bound on the NLL, nats per token (all L tokens of each window).
    pub nats_per_token: f64,
    pub se: f64,
    pub tokens: u64,
    pub t_samples: usize,
}

/// How many noise draws per window `nelbo` takes.
#[derive(Debug, Clone, Copy)]
pub struct BoundBudget {
    pub min_samples: usize,
    pub max_samples: usize,
    /// Stop once the standard error of the nats per token is at most this.
    pub target_se: f64,
}

impl Default for BoundBudget {
    fn default() -> Self {
        Self {
            min_samples: 2,
            max_samples: 64,
            target_se: 0.002,
        }
    }
}

/// Held-out text scored as its objective says: the exact mean NLL per predicted token, or the
/// NELBO bound per token (with its Monte Carlo error) within `budget`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct HeldOutScore {
    pub nats_per_token: f64,
    pub tokens: u64,
    /// Set when the score is a bound.
    pub bound: Option<NelboBound>,
}

pub fn held_out(
    model: &Transformer,
    objective: &dyn Objective,
    windows: &[&[u32]],
    batch: usize,
    budget: BoundBudget,
    seed: u64,
) -> Result<HeldOutScore> {
    Ok(match objective.held_out() {
        HeldOut::Exact => {
            let sum = ar_nll(model, windows, batch)?;
            HeldOutScore {
                nats_per_token: sum.mean(),
                tokens: sum.tokens,
                bound: None,
            }
        }
        HeldOut::Bound(b) => {
            let nb = nelbo(model, b, windows, batch, budget, seed)?;
            HeldOutScore {
                nats_per_token: nb.nats_per_token,
                tokens: nb.tokens,
                bound: Some(nb),
            }
        }
    })
}

/// Estimate a NELBO bound on `windows`: pass s draws fresh noise for every window from a
/// seeded stream, until the standard error reaches the target or the budget is spent.
/// Deterministic for a seed.
pub fn nelbo(
    model: &Transformer,
    bound: &dyn Bound,
    windows: &[&[u32]],
    batch: usize,
    budget: BoundBudget,
    seed: u64,
) -> Result<NelboBound> {
    let n = windows.len();
    let total: usize = windows.iter().map(|w| w.len()).sum();
    // Per window: Σ and Σ² of its per-token NELBO over the passes.
    let (mut sum, mut sumsq) = (vec![0.0; n], vec![0.0; n]);
    let mut samples = 0;
    let estimate = |sum: &[f64], sumsq: &[f64], s: usize| -> (f64, f64) {
        let mut mean = 0.0;
        let mut var = 0.0;
        for (i, w) in windows.iter().enumerate() {
            let share = w.len() as f64 / total.max(1) as f64;
            let m = sum[i] / s as f64;
            mean += share * m;
            if s > 1 {
                let v = (sumsq[i] - s as f64 * m * m).max(0.0) / (s - 1) as f64;
                var += share * share * v / s as f64;
            }
        }
        (mean, if s > 1 { var.sqrt() } else { f64::INFINITY })
    };
    let max = budget.max_samples.max(budget.min_samples).max(1);
    loop {
        let mut start = 0;
        for (ci, group) in windows.chunk_by(|a, b| a.len() == b.len()).enumerate() {
            for (bi, sub) in group.chunks(batch.max(1)).enumerate() {
                let l = sub[0].len();
                let x0: Vec<u32> = sub.iter().flat_map(|w| w.iter().copied()).collect();
                let index = ((samples as u64) << 32) | ((ci as u64) << 20) | bi as u64;
                let mut rng = rng(seed, Stream::HeldOutBound, index);
                let nb = bound.draw(&x0, sub.len(), l, &mut rng);
                let rows = bound.row_nelbo(model, &nb)?;
                for (r, v) in rows.iter().enumerate() {
                    let per_token = v / l as f64;
                    sum[start + r] += per_token;
                    sumsq[start + r] += per_token * per_token;
                }
                start += sub.len();
            }
        }
        samples += 1;
        let (_, se) = estimate(&sum, &sumsq, samples);
        if samples >= max || (samples >= budget.min_samples && se <= budget.target_se) {
            break;
        }
    }
    let (mean, se) = estimate(&sum, &sumsq, samples);
    Ok(NelboBound {
        nats_per_token: mean,
        se: if se.is_finite() { se } else { f64::NAN },
        tokens: total as u64,
        t_samples: samples,
    })
}
