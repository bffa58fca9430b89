//! Soft tail masking (spec §2.1): N = ⌊tL⌋ masks placed among the last W = min(L, ⌈λN⌉)
//! positions, so the prefix stays clean and the noise sits at the tail.

use crate::config::{MaskCount, MaskMode};
use rand::Rng;

/// Mask pattern (true = [MASK]) for one sequence of `len` tokens at noise level `t`.
pub fn tail_mask(
    len: usize,
    t: f64,
    mode: MaskMode,
    tail_factor: f64,
    count: MaskCount,
    rng: &mut impl Rng,
) -> Vec<bool> {
    let n = ((t.clamp(0.0, 1.0) * len as f64).floor() as usize).min(len);
    let window = match mode {
        MaskMode::Strict => n,
        MaskMode::Soft => ((tail_factor * n as f64).ceil() as usize).min(len),
        MaskMode::Uniform => len,
    };
    let mut mask = vec![false; len];
    if n == 0 {
        return mask;
    }
    let start = len - window;
    match count {
        MaskCount::Exact => {
            // Partial Fisher–Yates: the first n entries of a shuffled window.
            let mut slots: Vec<usize> = (start..len).collect();
            for i in 0..n {
                let j = rng.random_range(i..slots.len());
                slots.swap(i, j);
                mask[slots[i]] = true;
            }
        }
        MaskCount::Bernoulli => {
            let p = n as f64 / window as f64;
            for m in &mut mask[start..] {
                *m = rng.random::<f64>() < p;
            }
        }
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng() -> rand_pcg::Pcg64 {
        rand_pcg::Pcg64::seed_from_u64(7)
    }

    #[test]
    fn strict_is_one_block_at_the_end() {
        for t in [0.1, 0.37, 0.5, 0.99] {
            let m = tail_mask(64, t, MaskMode::Strict, 1.0, MaskCount::Exact, &mut rng());
            let n = (t * 64.0f64).floor() as usize;
            assert!(m[..64 - n].iter().all(|&x| !x));
            assert!(m[64 - n..].iter().all(|&x| x));
        }
    }

    #[test]
    fn soft_stays_in_window_with_exact_count() {
        let mut r = rng();
        for _ in 0..200 {
            let t: f64 = r.random();
            let m = tail_mask(100, t, MaskMode::Soft, 1.5, MaskCount::Exact, &mut r);
            let n = (t * 100.0).floor() as usize;
            let w = ((1.5 * n as f64).ceil() as usize).min(100);
            assert_eq!(m.iter().filter(|&&x| x).count(), n);
            assert!(m[..100 - w].iter().all(|&x| !x), "mask outside the window");
        }
    }

    #[test]
    fn bernoulli_masks_only_inside_the_window() {
        let mut r = rng();
        let mut total = 0;
        for _ in 0..500 {
            let m = tail_mask(100, 0.2, MaskMode::Soft, 2.0, MaskCount::Bernoulli, &mut r);
            assert!(m[..60].iter().all(|&x| !x));
            total += m.iter().filter(|&&x| x).count();
        }
        let mean = total as f64 / 500.0;
        assert!((mean - 20.0).abs() < 1.0, "mean mask count {mean}");
    }
}
