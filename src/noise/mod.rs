//! The forward noise process q(x_t | x_0): noise levels t and where the [MASK] tokens go.

pub mod tail_mask;

use crate::config::TSampling;
use rand::Rng;

pub use tail_mask::tail_mask;

/// One noise level per sequence in [0, 1).
pub fn sample_t(batch: usize, sampling: TSampling, rng: &mut impl Rng) -> Vec<f64> {
    match sampling {
        TSampling::Uniform => (0..batch).map(|_| rng.random::<f64>()).collect(),
        TSampling::Stratified => {
            let u: f64 = rng.random();
            (0..batch).map(|i| (u + i as f64) / batch as f64).collect()
        }
    }
}
