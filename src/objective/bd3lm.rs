//! BD3LM (spec §4): masked diffusion inside blocks of B' tokens, autoregressive across
//! blocks. Training runs x_t ⊕ x_0 (2L tokens) in one forward under the three-part mask
//! below, both halves at positions 0..L−1, and scores the noised half like MDLM.
//!
//! Blocks are cut from position 0; when B' does not divide L the last block is shorter and is
//! treated like any other. Each (sequence, block) draws its own noise level t (antithetic
//! over the batch's blocks), and the loss is Σ_b Σ_{i masked} w(t_{block(i)})·CE / (B·L), the
//! NELBO per token, normalised like MDLM's.

use super::mdlm::{subs_loss, subs_row_nelbo};
use super::{Bound, HeldOut, NoisyBatch, Objective};
use crate::config::{Config, MdlmConfig, ObjectiveKind};
use crate::model::visibility::bd3lm_bias;
use crate::model::{Attention, Transformer};
use crate::noise::{blocks, levels, uniform::mask_rows, Spacing};
use candle_core::{DType, Device, Result, Tensor};
use rand::RngCore;
use std::ops::Range;
use std::sync::Mutex;

pub struct Bd3lm {
    pub cfg: MdlmConfig,
    pub block_size: usize,
    /// Training range of t (evaluation's bound uses [eps, 1]).
    pub clip: (f64, f64),
    pub mask_id: u32,
    /// Biases built so far, one per (L, dtype, device): built once, reused every step.
    biases: Mutex<Vec<(usize, DType, Tensor)>>,
}

impl Bd3lm {
    pub fn new(cfg: &Config, mask_id: u32) -> Self {
        Self {
            cfg: cfg.mdlm.clone(),
            block_size: cfg.bd3lm.block_size,
            clip: (cfg.bd3lm.clip_low, cfg.bd3lm.clip_high),
            mask_id,
            biases: Mutex::new(Vec::new()),
        }
    }

    pub fn n_blocks(&self, seq_len: usize) -> usize {
        blocks::count(seq_len, self.block_size)
    }

    fn bias(&self, len: usize, dtype: DType, device: &Device) -> Result<Tensor> {
        let mut cache = self.biases.lock().expect("bias cache lock");
        if let Some((_, _, b)) = cache
            .iter()
            .find(|(l, d, b)| *l == len && *d == dtype && b.device().same_device(device))
        {
            return Ok(b.clone());
        }
        let b = bd3lm_bias(len, self.block_size, dtype, device)?;
        cache.push((len, dtype, b.clone()));
        Ok(b)
    }

    /// Logits [B·L, V] of the noised half of x_t ⊕ x_0.
    fn logits(&self, model: &Transformer, nb: &NoisyBatch) -> Result<Tensor> {
        let (b, l) = (nb.batch, nb.input_len);
        let mut ids = Vec::with_capacity(2 * b * l);
        for r in 0..b {
            ids.extend_from_slice(&nb.input[r * l..(r + 1) * l]);
            ids.extend_from_slice(&nb.targets[r * l..(r + 1) * l]);
        }
        let dev = model.device();
        let ids = Tensor::from_vec(ids, (b, 2 * l), dev)?;
        let positions: Vec<u32> = (0..2 * l).map(|p| (p % l) as u32).collect();
        let bias = self.bias(l, model.dtype(), dev)?;
        let logits = model.forward_at(&ids, &positions, Attention::Mask(&bias), l)?;
        logits.reshape((b * l, model.cfg.vocab_size))
    }
}

impl Objective for Bd3lm {
    fn kind(&self) -> ObjectiveKind {
        ObjectiveKind::Bd3lm
    }

    fn shifted(&self) -> bool {
        false
    }

    /// `t` fixes the levels: one per sequence (all its blocks) or one per (sequence, block).
    /// The returned `t` holds one level per (sequence, block).
    fn corrupt(
        &self,
        x0: &[u32],
        batch: usize,
        seq_len: usize,
        t: Option<&[f64]>,
        rng: &mut dyn RngCore,
    ) -> NoisyBatch {
        let nb = self.n_blocks(seq_len);
        let t: Vec<f64> = match t {
            Some(t) if t.len() == batch => {
                t.iter().flat_map(|&x| std::iter::repeat_n(x, nb)).collect()
            }
            Some(t) => {
                assert_eq!(t.len(), batch * nb, "one level per sequence or per block");
                t.to_vec()
            }
            None => {
                let lo = self.cfg.eps.max(self.clip.0);
                levels(
                    batch * nb,
                    Spacing::stratified_if(self.cfg.antithetic),
                    lo,
                    self.clip.1,
                    rng,
                )
            }
        };
        let c = &self.cfg;
        let level = |b: usize, i: usize| t[b * nb + blocks::of(i, self.block_size)];
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

impl Bound for Bd3lm {
    /// Every block is a unit (the bound draws no t, so training's clipping does not apply).
    fn units(&self, start: usize, end: usize) -> Vec<Range<usize>> {
        blocks::pieces(start, end, self.block_size)
    }

    fn row_nelbo(&self, model: &Transformer, nb: &NoisyBatch) -> Result<Vec<f64>> {
        subs_row_nelbo(&self.logits(model, nb)?, nb, self.mask_id)
    }

    fn masking(&self) -> (&MdlmConfig, u32) {
        (&self.cfg, self.mask_id)
    }
}
