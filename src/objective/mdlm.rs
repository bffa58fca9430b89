//! MDLM (spec §4): masked diffusion with bidirectional attention, trained on the
//! continuous-time NELBO. Unlike ARM and CARD it is not shifted: the model reads x_t at
//! positions 0..L−1 and predicts x_0 at the same positions.
//!
//! Normalisation: the loss of a batch of B sequences of L tokens is
//! Σ_b Σ_{i masked in b} w(t_b)·CE_{b,i} / (B·L), an unbiased estimate of the NELBO per
//! token (unmasked positions cost nothing under SUBS but still count in B·L). Its exponential
//! bounds the perplexity of all L tokens of a window from above.
//!
//! The bound is estimated in its equivalent count form (`Mdlm::count_form`): integrating the
//! linear schedule's NELBO over t given that k of n tokens are masked gives weight
//! C(n,k)·B(k, n−k+1) = 1/k, so NELBO = Σ_{k=1..n} E_{|m|=k}[Σ_{i∈m} CE_i / k]. Drawing k
//! uniformly from 1..n and masking a uniform k-subset with weight n/k estimates the same bound
//! over all t ∈ (0, 1] (no ε floor) with far less variance than 1/t weights.

use super::{NoisyBatch, Objective};
use crate::config::{Config, DiffusionSchedule, MdlmConfig, ObjectiveKind};
use crate::model::{ops, Attention, Transformer};
use candle_core::{DType, Result, Tensor};
use rand::{Rng, RngCore};

/// Probability 1 − α_t that a token is masked at noise level t.
pub fn mask_prob(schedule: DiffusionSchedule, eps: f64, t: f64) -> f64 {
    match schedule {
        DiffusionSchedule::Linear => t,
        DiffusionSchedule::LogLinear => (1.0 - eps) * t,
    }
}

/// NELBO weight −α'_t / (1 − α_t) of a masked token's cross-entropy at noise level t.
/// Both schedules give 1/t: for the log-linear one, (1 − ε) / ((1 − ε)t).
pub fn nelbo_weight(_schedule: DiffusionSchedule, t: f64) -> f64 {
    1.0 / t
}

/// `n` noise levels in [lo, hi]: independent uniforms, or antithetic ones — a single draw u
/// shifted to (u + i)/n, so the n levels cover [lo, hi] evenly (MDLM's low-variance sampler).
pub fn sample_levels(
    n: usize,
    antithetic: bool,
    lo: f64,
    hi: f64,
    rng: &mut dyn RngCore,
) -> Vec<f64> {
    let u: Vec<f64> = if antithetic {
        let u0: f64 = rng.random();
        (0..n).map(|i| (u0 + i as f64) / n as f64).collect()
    } else {
        (0..n).map(|_| rng.random::<f64>()).collect()
    };
    u.into_iter().map(|u| lo + (hi - lo) * u).collect()
}

pub struct Mdlm {
    pub cfg: MdlmConfig,
    pub mask_id: u32,
    /// Draw mask counts instead of levels t (the bound's estimator; see the module docs).
    pub count_form: bool,
}

impl Mdlm {
    pub fn new(cfg: &Config, mask_id: u32) -> Self {
        Self {
            cfg: cfg.mdlm.clone(),
            mask_id,
            count_form: false,
        }
    }
}

/// Mask counts for units of the given lengths: k uniform on 1..=n (antithetic over the
/// units when `antithetic`).
pub(crate) fn sample_counts(lens: &[usize], antithetic: bool, rng: &mut dyn RngCore) -> Vec<usize> {
    let u = sample_levels(lens.len(), antithetic, 0.0, 1.0, rng);
    lens.iter()
        .zip(u)
        .map(|(&n, u)| ((u * n as f64) as usize + 1).min(n))
        .collect()
}

/// Mask a uniform k-subset of a unit, each masked token weighted n/k.
pub(crate) fn mask_count(
    x0: &[u32],
    k: usize,
    mask_id: u32,
    rng: &mut dyn RngCore,
) -> (Vec<u32>, Vec<f32>, Vec<bool>) {
    let n = x0.len();
    let mut mask = vec![false; n];
    for i in rand::seq::index::sample(rng, n, k) {
        mask[i] = true;
    }
    let w = n as f32 / k as f32;
    let xt = x0
        .iter()
        .zip(&mask)
        .map(|(&x, &m)| if m { mask_id } else { x })
        .collect();
    let weights = mask.iter().map(|&m| if m { w } else { 0.0 }).collect();
    (xt, weights, mask)
}

/// Mask each token of a row independently with the probability of its level: `level(i)`
/// gives the noise level of position i. Returns the row's x_t and NELBO weights.
pub(crate) fn mask_row(
    x0: &[u32],
    level: impl Fn(usize) -> f64,
    cfg: &MdlmConfig,
    mask_id: u32,
    rng: &mut dyn RngCore,
) -> (Vec<u32>, Vec<f32>, Vec<bool>) {
    let mut xt = Vec::with_capacity(x0.len());
    let mut w = Vec::with_capacity(x0.len());
    let mut mask = Vec::with_capacity(x0.len());
    for (i, &tok) in x0.iter().enumerate() {
        let t = level(i);
        let masked = rng.random::<f64>() < mask_prob(cfg.schedule, cfg.eps, t);
        xt.push(if masked { mask_id } else { tok });
        w.push(if masked {
            nelbo_weight(cfg.schedule, t) as f32
        } else {
            0.0
        });
        mask.push(masked);
    }
    (xt, w, mask)
}

impl Objective for Mdlm {
    fn kind(&self) -> ObjectiveKind {
        ObjectiveKind::Mdlm
    }

    fn shifted(&self) -> bool {
        false
    }

    fn corrupt(
        &self,
        x0: &[u32],
        batch: usize,
        seq_len: usize,
        t: Option<&[f64]>,
        rng: &mut dyn RngCore,
    ) -> NoisyBatch {
        let n = batch * seq_len;
        let (mut input, mut weights, mut mask) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let t = if self.count_form && t.is_none() {
            let counts = sample_counts(&vec![seq_len; batch], self.cfg.antithetic, rng);
            for (b, &k) in counts.iter().enumerate() {
                let row = &x0[b * seq_len..(b + 1) * seq_len];
                let (xt, w, m) = mask_count(row, k, self.mask_id, rng);
                input.extend(xt);
                weights.extend(w);
                mask.extend(m);
            }
            counts.iter().map(|&k| k as f64 / seq_len as f64).collect()
        } else {
            let t = match t {
                Some(t) => t.to_vec(),
                None => sample_levels(batch, self.cfg.antithetic, self.cfg.eps, 1.0, rng),
            };
            assert_eq!(t.len(), batch, "one noise level per sequence");
            for (b, &tb) in t.iter().enumerate() {
                let row = &x0[b * seq_len..(b + 1) * seq_len];
                let (xt, w, m) = mask_row(row, |_| tb, &self.cfg, self.mask_id, rng);
                input.extend(xt);
                weights.extend(w);
                mask.extend(m);
            }
            t
        };
        NoisyBatch {
            batch,
            input,
            input_len: seq_len,
            targets: x0.to_vec(),
            weights,
            denom: n as f64,
            t,
            mask,
        }
    }

    fn loss(&self, model: &Transformer, nb: &NoisyBatch) -> Result<Tensor> {
        let logits = self.logits(model, nb)?;
        subs_loss(&logits, nb, self.mask_id)
    }

    fn row_nelbo(&self, model: &Transformer, nb: &NoisyBatch) -> Result<Option<Vec<f64>>> {
        let logits = self.logits(model, nb)?;
        subs_row_nelbo(&logits, nb, self.mask_id).map(Some)
    }
}

impl Mdlm {
    /// Logits [B·L, V] of x_t under bidirectional attention.
    fn logits(&self, model: &Transformer, nb: &NoisyBatch) -> Result<Tensor> {
        let input = Tensor::from_slice(&nb.input, (nb.batch, nb.input_len), model.device())?;
        let logits = model.forward(&input, Attention::Bidirectional, None)?;
        logits.reshape((nb.batch * nb.input_len, model.cfg.vocab_size))
    }
}

/// The masked positions of an unshifted batch under SUBS: their logits [M, V] with the
/// [MASK] logit at −∞, targets [M], weights [M], and each one's index in the batch.
struct Subs {
    logits: Tensor,
    targets: Tensor,
    weights: Tensor,
    index: Vec<usize>,
}

fn subs_rows(logits: &Tensor, nb: &NoisyBatch, mask_id: u32) -> Result<Option<Subs>> {
    let index: Vec<usize> = (0..nb.input.len())
        .filter(|&i| nb.input[i] == mask_id)
        .collect();
    if index.is_empty() {
        return Ok(None);
    }
    let dev = logits.device();
    let v = logits.dim(1)?;
    let rows: Vec<u32> = index.iter().map(|&i| i as u32).collect();
    let rows = Tensor::from_vec(rows, index.len(), dev)?;
    let mut forbid = vec![0f32; v];
    forbid[mask_id as usize] = f32::NEG_INFINITY;
    let forbid = Tensor::from_vec(forbid, v, dev)?.to_dtype(logits.dtype())?;
    let picked = logits.index_select(&rows, 0)?.broadcast_add(&forbid)?;
    let targets: Vec<u32> = index.iter().map(|&i| nb.targets[i]).collect();
    let weights: Vec<f32> = index.iter().map(|&i| nb.weights[i]).collect();
    Ok(Some(Subs {
        logits: picked,
        targets: Tensor::from_vec(targets, index.len(), dev)?,
        weights: Tensor::from_vec(weights, index.len(), dev)?.to_dtype(logits.dtype())?,
        index,
    }))
}

/// Σ_masked w·CE / denom for logits [B·L, V] of an unshifted batch. Unmasked positions copy
/// their input under SUBS and contribute exactly zero.
pub(crate) fn subs_loss(logits: &Tensor, nb: &NoisyBatch, mask_id: u32) -> Result<Tensor> {
    match subs_rows(logits, nb, mask_id)? {
        Some(s) => ops::weighted_nll(&s.logits, &s.targets, &s.weights, nb.denom),
        // Nothing masked: a zero that still reaches every parameter.
        None => logits.sum_all()? * 0.0,
    }
}

/// Per-sequence Σ_masked w·CE in nats (the NELBO of one t draw) for logits [B·L, V].
pub(crate) fn subs_row_nelbo(logits: &Tensor, nb: &NoisyBatch, mask_id: u32) -> Result<Vec<f64>> {
    let mut rows = vec![0.0; nb.batch];
    if let Some(s) = subs_rows(logits, nb, mask_id)? {
        let nll = ops::token_nll(&s.logits, &s.targets)?
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?;
        for (k, &i) in s.index.iter().enumerate() {
            rows[i / nb.input_len] += nb.weights[i] as f64 * nll[k];
        }
    }
    Ok(rows)
}
