//! MDLM (spec §4): masked diffusion with bidirectional attention, trained on the
//! continuous-time NELBO. Unlike ARM and CARD it is not shifted: the model reads x_t at
//! positions 0..L−1 and predicts x_0 at the same positions.
//!
//! Normalisation: the loss of a batch of B sequences of L tokens is
//! Σ_b Σ_{i masked in b} w(t_b)·CE_{b,i} / (B·L), an unbiased estimate of the NELBO per
//! token (unmasked positions cost nothing under SUBS but still count in B·L). Its exponential
//! bounds the perplexity of all L tokens of a window from above.
//!
//! Held-out text is scored by the same bound in its count form (`noise::counts`), one unit
//! per sequence.

use super::{Bound, HeldOut, NoisyBatch, Objective};
use crate::config::{Config, MdlmConfig, ObjectiveKind};
use crate::model::{ops, Attention, Transformer};
use crate::noise::{levels, uniform::mask_rows, Spacing};
use candle_core::{DType, Result, Tensor};
use rand::RngCore;
use std::ops::Range;

pub struct Mdlm {
    pub cfg: MdlmConfig,
    pub mask_id: u32,
}

impl Mdlm {
    pub fn new(cfg: &Config, mask_id: u32) -> Self {
        Self {
            cfg: cfg.mdlm.clone(),
            mask_id,
        }
    }

    /// Logits [B·L, V] of x_t under bidirectional attention.
    fn logits(&self, model: &Transformer, nb: &NoisyBatch) -> Result<Tensor> {
        let input = Tensor::from_slice(&nb.input, (nb.batch, nb.input_len), model.device())?;
        let logits = model.forward(&input, Attention::Bidirectional, None)?;
        logits.reshape((nb.batch * nb.input_len, model.cfg.vocab_size))
    }
}

impl Objective for Mdlm {
    fn kind(&self) -> ObjectiveKind {
        ObjectiveKind::Mdlm
    }

    fn shifted(&self) -> bool {
        false
    }

    /// One level per sequence: `t`, or drawn from [eps, 1); tokens masked independently.
    fn corrupt(
        &self,
        x0: &[u32],
        batch: usize,
        seq_len: usize,
        t: Option<&[f64]>,
        rng: &mut dyn RngCore,
    ) -> NoisyBatch {
        let t = match t {
            Some(t) => t.to_vec(),
            None => levels(
                batch,
                Spacing::stratified_if(self.cfg.antithetic),
                self.cfg.eps,
                1.0,
                rng,
            ),
        };
        assert_eq!(t.len(), batch, "one noise level per sequence");
        let c = &self.cfg;
        let level = |b: usize, _| t[b];
        let masked = mask_rows(x0, seq_len, level, c.schedule, c.eps, self.mask_id, rng);
        NoisyBatch::unshifted(x0, seq_len, masked, t)
    }

    fn loss(&self, model: &Transformer, nb: &NoisyBatch) -> Result<Tensor> {
        subs_loss(&self.logits(model, nb)?, nb, self.mask_id)
    }

    fn held_out(&self) -> HeldOut<'_> {
        HeldOut::Bound(self)
    }
}

impl Bound for Mdlm {
    /// The whole sequence is one unit.
    fn units(&self, start: usize, end: usize) -> Vec<Range<usize>> {
        std::iter::once(start..end).collect()
    }

    fn row_nelbo(&self, model: &Transformer, nb: &NoisyBatch) -> Result<Vec<f64>> {
        subs_row_nelbo(&self.logits(model, nb)?, nb, self.mask_id)
    }

    fn masking(&self) -> (&MdlmConfig, u32) {
        (&self.cfg, self.mask_id)
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
