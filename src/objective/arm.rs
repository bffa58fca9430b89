//! Autoregressive baseline: clean input, next-token cross-entropy on every position.

use super::{shift, NoisyBatch, Objective};
use crate::config::ObjectiveKind;
use rand::RngCore;

pub struct Arm;

impl Objective for Arm {
    fn kind(&self) -> ObjectiveKind {
        ObjectiveKind::Arm
    }

    fn corrupt(
        &self,
        x0: &[u32],
        batch: usize,
        seq_len: usize,
        _t: Option<&[f64]>,
        _rng: &mut dyn RngCore,
    ) -> NoisyBatch {
        let (input, targets) = shift(x0, x0, batch, seq_len);
        let n = targets.len();
        NoisyBatch {
            batch,
            input,
            input_len: seq_len - 1,
            targets,
            weights: vec![1.0; n],
            denom: n as f64,
            t: vec![0.0; batch],
        }
    }
}
