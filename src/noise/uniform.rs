//! Uniform masking (MDLM, BD3LM): every token masked independently with the schedule's
//! probability at its level, a masked token's cross-entropy weighted by the NELBO weight.

use crate::config::DiffusionSchedule;
use rand::{Rng, RngCore};

/// Probability 1 − α_t that a token is masked at noise level t.
pub fn mask_prob(schedule: DiffusionSchedule, eps: f64, t: f64) -> f64 {
    match schedule {
        DiffusionSchedule::Linear => t,
        DiffusionSchedule::LogLinear => (1.0 - eps) * t,
    }
}

/// NELBO weight −α'_t / (1 − α_t) of a masked token's cross-entropy at noise level t. Both
/// schedules give 1/t: for the log-linear one, (1 − ε) / ((1 − ε)t).
pub fn nelbo_weight(t: f64) -> f64 {
    1.0 / t
}

/// Mask each token of rows x0 [rows, len] independently with the probability of its level
/// (`level(row, i)` for position i of a row). Returns x_t and the NELBO weights (0 where
/// unmasked).
pub fn mask_rows(
    x0: &[u32],
    len: usize,
    level: impl Fn(usize, usize) -> f64,
    schedule: DiffusionSchedule,
    eps: f64,
    mask_id: u32,
    rng: &mut dyn RngCore,
) -> (Vec<u32>, Vec<f32>) {
    let mut xt = Vec::with_capacity(x0.len());
    let mut w = Vec::with_capacity(x0.len());
    for (j, &tok) in x0.iter().enumerate() {
        let t = level(j / len, j % len);
        let masked = rng.random::<f64>() < mask_prob(schedule, eps, t);
        xt.push(if masked { mask_id } else { tok });
        w.push(if masked { nelbo_weight(t) as f32 } else { 0.0 });
    }
    (xt, w)
}
