//! Noise levels t: n draws covering [lo, hi], independently or stratified. CARD's
//! `noise.t_sampling = "stratified"` and MDLM's antithetic sampling are the same estimator.

use crate::config::TSampling;
use rand::{Rng, RngCore};

/// How n levels cover their range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spacing {
    /// Independent uniform draws.
    Independent,
    /// One uniform draw u shifted to (u + i)/n: the n levels cover the range evenly, a
    /// lower-variance estimate of the same expectation (MDLM's "antithetic" sampling).
    Stratified,
}

impl Spacing {
    /// MDLM's `antithetic` switch.
    pub fn stratified_if(on: bool) -> Self {
        if on {
            Spacing::Stratified
        } else {
            Spacing::Independent
        }
    }
}

impl From<TSampling> for Spacing {
    fn from(t: TSampling) -> Self {
        match t {
            TSampling::Uniform => Spacing::Independent,
            TSampling::Stratified => Spacing::Stratified,
        }
    }
}

/// `n` noise levels in [lo, hi).
pub fn levels(n: usize, spacing: Spacing, lo: f64, hi: f64, rng: &mut dyn RngCore) -> Vec<f64> {
    let u: Vec<f64> = match spacing {
        Spacing::Independent => (0..n).map(|_| rng.random::<f64>()).collect(),
        Spacing::Stratified => {
            let u0: f64 = rng.random();
            (0..n).map(|i| (u0 + i as f64) / n as f64).collect()
        }
    };
    u.into_iter().map(|u| lo + (hi - lo) * u).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn stratified_levels_cover_every_stratum_once() {
        let mut rng = rand_pcg::Pcg64::seed_from_u64(4);
        let t = levels(8, Spacing::Stratified, 0.2, 1.0, &mut rng);
        for (i, x) in t.iter().enumerate() {
            let lo = 0.2 + 0.1 * i as f64;
            assert!((lo..lo + 0.1).contains(x), "level {i} = {x}");
        }
        let t = levels(500, Spacing::Independent, 0.0, 1.0, &mut rng);
        let mean = t.iter().sum::<f64>() / 500.0;
        assert!((mean - 0.5).abs() < 0.05 && t.iter().all(|x| (0.0..1.0).contains(x)));
    }
}
