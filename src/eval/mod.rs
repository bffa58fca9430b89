//! Held-out evaluation: exact autoregressive likelihood (t = 0, valid for ARM and CARD),
//! perplexity, bits per byte, and CARD's loss as a function of the noise level t.

pub mod quality;
pub mod report;
pub mod zero_shot;

use crate::model::{ops, Attention, Transformer};
use crate::objective::Objective;
use crate::train::batches::derived_rng;
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

#[derive(Debug, Clone, Serialize)]
pub struct NoisePoint {
    pub t: f64,
    /// The training loss (weighted, normalised as configured) at this noise level.
    pub loss: f64,
    /// Plain mean cross-entropy over all targets.
    pub mean_ce: f64,
}

/// The objective's loss at fixed noise levels over the given windows (fixed seed).
pub fn loss_vs_t(
    model: &Transformer,
    objective: &dyn Objective,
    windows: &[&[u32]],
    ts: &[f64],
    batch: usize,
    seed: u64,
) -> Result<Vec<NoisePoint>> {
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
            let mut rng = derived_rng(seed, 7 + ti as u64, bi as u64);
            let nb = objective.corrupt(&x0, group.len(), l, Some(&vec![t; group.len()]), &mut rng);
            loss += objective
                .loss(model, &nb)?
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
            let input = Tensor::from_slice(&nb.input, (nb.batch, nb.input_len), dev)?;
            let logits = model.forward(&input, Attention::Causal, None)?;
            let logits = logits.reshape((nb.batch * nb.input_len, model.cfg.vocab_size))?;
            let targets = Tensor::from_slice(&nb.targets, nb.targets.len(), dev)?;
            ce += ops::token_nll(&logits, &targets)?
                .to_dtype(candle_core::DType::F64)?
                .mean_all()?
                .to_scalar::<f64>()?;
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

/// Greedy continuation of `prompt` (KV-cached), stopping at `<|endoftext|>` — a quick look
/// at what a model learned.
pub fn greedy_sample(
    model: &Transformer,
    tokenizer: &crate::data::TextTokenizer,
    prompt: &str,
    max_new: usize,
) -> anyhow::Result<String> {
    let mut ids = tokenizer.encode(prompt)?;
    if ids.is_empty() {
        ids.push(tokenizer.eot_id());
    }
    let cfg = &model.cfg;
    let budget = max_new.min(cfg.max_seq_len.saturating_sub(ids.len()));
    let mut cache = crate::model::KvCache::new(
        cfg.n_layers,
        1,
        cfg.n_heads,
        cfg.head_dim(),
        cfg.max_seq_len,
        model.dtype(),
        model.device(),
    )?;
    let mut input = ids.clone();
    let mut out = Vec::new();
    for _ in 0..budget {
        let x = Tensor::from_slice(&input, (1, input.len()), model.device())?;
        let logits = model.forward(&x, Attention::Causal, Some(&mut cache))?;
        let last = logits.squeeze(0)?.get(input.len() - 1)?;
        let next = last.argmax(0)?.to_scalar::<u32>()?;
        if next == tokenizer.eot_id() {
            break;
        }
        out.push(next);
        input = vec![next];
    }
    tokenizer.decode(&out)
}
