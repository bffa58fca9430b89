//! Context-aware reweighting (spec §2.2): targets whose recent history is heavily masked get
//! smaller weights, w_n = 1 / (β + S_n), with S the decayed sum of mask costs before n.

/// Weights of targets 2..L (L−1 values, in order) for a mask pattern over x_t's L positions.
/// O(L) by the recurrence S_{n+1} = C_n + (1 − p)·S_n, C_i = m_i·(1 + m_{i−1}), S_1 = 0.
pub fn context_weights(mask: &[bool], p: f64, beta: f64) -> Vec<f32> {
    let len = mask.len();
    let mut out = Vec::with_capacity(len.saturating_sub(1));
    let mut s = 0.0f64;
    let mut prev = false;
    for &m in &mask[..len.saturating_sub(1)] {
        let cost = if m { 1.0 + prev as u8 as f64 } else { 0.0 };
        s = cost + (1.0 - p) * s;
        out.push((1.0 / (beta + s)) as f32);
        prev = m;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The spec's explicit double sum, S_n = Σ_{i<n} C_i (1 − p)^{n−1−i}, 1-indexed.
    fn explicit(mask: &[bool], p: f64, beta: f64) -> Vec<f64> {
        let m = |i: usize| {
            if i == 0 {
                0.0
            } else {
                mask[i - 1] as u8 as f64
            }
        };
        let c = |i: usize| m(i) * (1.0 + m(i - 1));
        (2..=mask.len())
            .map(|n| {
                let s: f64 = (1..n)
                    .map(|i| c(i) * (1.0 - p).powi((n - 1 - i) as i32))
                    .sum();
                1.0 / (beta + s)
            })
            .collect()
    }

    #[test]
    fn recurrence_equals_double_sum() {
        let mut rng = rand_pcg::Pcg64::seed_from_u64(3);
        for _ in 0..100 {
            let len = rng.random_range(1..80);
            let density: f64 = rng.random();
            let mask: Vec<bool> = (0..len).map(|_| rng.random::<f64>() < density).collect();
            let p = rng.random_range(0.05..=1.0);
            let beta = rng.random_range(0.1..3.0);
            let fast = context_weights(&mask, p, beta);
            let slow = explicit(&mask, p, beta);
            assert_eq!(fast.len(), slow.len());
            for (a, b) in fast.iter().zip(&slow) {
                assert!((*a as f64 - b).abs() < 1e-6, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn known_values() {
        // Clean context → 1/β; an isolated mask right before the target → 1/(β+1).
        assert_eq!(context_weights(&[false; 5], 0.5, 2.0), vec![0.5; 4]);
        let w = context_weights(&[false, true, false, false], 0.5, 1.0);
        assert_eq!(w, vec![1.0, 0.5, 1.0 / 1.5]);
        // A long run of masks → S → 2/p = 4, w → 0.2.
        let w = context_weights(&[true; 60], 0.5, 1.0);
        assert!((w.last().unwrap() - 0.2).abs() < 1e-6);
    }
}
