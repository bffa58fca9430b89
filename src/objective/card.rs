//! CARD (spec §2): soft-tail-masked input x_t, clean shifted targets x_0[2..L] at every
//! position, each weighted by how ambiguous its (masked) context is.

use super::{context_weights, shift, NoisyBatch, Objective};
use crate::config::{Config, LossNorm, NoiseConfig, ObjectiveKind, WeightsConfig};
use crate::noise::{levels, tail_mask};
use rand::{Rng, RngCore};

pub struct Card {
    pub noise: NoiseConfig,
    pub weights: WeightsConfig,
    pub mask_id: u32,
}

impl Card {
    pub fn new(cfg: &Config, mask_id: u32) -> Self {
        Self {
            noise: cfg.noise.clone(),
            weights: cfg.weights.clone(),
            mask_id,
        }
    }
}

impl Objective for Card {
    fn kind(&self) -> ObjectiveKind {
        ObjectiveKind::Card
    }

    fn corrupt(
        &self,
        x0: &[u32],
        batch: usize,
        seq_len: usize,
        t: Option<&[f64]>,
        mut rng: &mut dyn RngCore,
    ) -> NoisyBatch {
        let t = match t {
            Some(t) => t.to_vec(),
            None => {
                // The first rows of the batch stay clean (t = 0) for the auxiliary AR loss:
                // f·B of them, the fractional row with that probability (so a batch of 1
                // at f = 0.5 is clean half the time, not always).
                let want = self.noise.ar_fraction * batch as f64;
                let extra = want.fract() > 0.0 && rng.random::<f64>() < want.fract();
                let clean = want.floor() as usize + usize::from(extra);
                let mut t = vec![0.0; clean.min(batch)];
                let rest = batch - t.len();
                let (spacing, hi) = (self.noise.t_sampling.into(), self.noise.t_max);
                t.extend(levels(rest, spacing, 0.0, hi, rng));
                t
            }
        };
        let mut xt = x0.to_vec();
        let mut weights = Vec::with_capacity(batch * (seq_len - 1));
        for (b, &tb) in t.iter().enumerate() {
            let n = &self.noise;
            let m = tail_mask(seq_len, tb, n.mode, n.tail_factor, n.count, &mut rng);
            for (i, &masked) in m.iter().enumerate() {
                if masked {
                    xt[b * seq_len + i] = self.mask_id;
                }
            }
            if self.weights.enabled {
                weights.extend(context_weights(&m, self.weights.p, self.weights.beta));
            } else {
                weights.extend(std::iter::repeat_n(1.0f32, seq_len - 1));
            }
        }
        let (input, targets) = shift(x0, &xt, batch, seq_len);
        let denom = match self.weights.normalize {
            LossNorm::Weight => weights.iter().map(|&w| w as f64).sum(),
            LossNorm::Count => weights.len() as f64,
        };
        NoisyBatch {
            batch,
            input,
            input_len: seq_len - 1,
            targets,
            weights,
            denom,
            t,
        }
    }
}
