//! The count form of the diffusion NELBO. Integrating the linear schedule's bound over t given
//! that k of a unit's n tokens are masked gives weight C(n,k)·B(k, n−k+1) = 1/k, so
//! NELBO = Σ_{k=1..n} E_{|m|=k}[Σ_{i∈m} CE_i / k]. Drawing k uniformly from 1..=n and masking
//! a uniform k-subset with weight n/k estimates the same bound over all t ∈ (0, 1] (no ε
//! floor) with far less variance than 1/t weights.

use super::levels::{levels, Spacing};
use rand::RngCore;
use std::ops::Range;

/// Mask a flat batch in count form: each unit (a range of its positions) masks a uniform
/// k-subset of its n positions, k uniform on 1..=n (stratified over the units when asked),
/// each masked token weighted n/k. Positions outside every unit stay clean with weight 0.
/// Returns x_t, the weights and k/n of each unit.
pub fn mask_counts(
    x0: &[u32],
    units: &[Range<usize>],
    spacing: Spacing,
    mask_id: u32,
    rng: &mut dyn RngCore,
) -> (Vec<u32>, Vec<f32>, Vec<f64>) {
    let u = levels(units.len(), spacing, 0.0, 1.0, rng);
    let counts: Vec<usize> = units
        .iter()
        .zip(u)
        .map(|(unit, u)| ((u * unit.len() as f64) as usize + 1).min(unit.len()))
        .collect();
    let mut xt = x0.to_vec();
    let mut weights = vec![0f32; x0.len()];
    for (unit, &k) in units.iter().zip(&counts) {
        let n = unit.len();
        let w = n as f32 / k as f32;
        for i in rand::seq::index::sample(rng, n, k) {
            xt[unit.start + i] = mask_id;
            weights[unit.start + i] = w;
        }
    }
    let ratios = units
        .iter()
        .zip(&counts)
        .map(|(unit, &k)| k as f64 / unit.len() as f64)
        .collect();
    (xt, weights, ratios)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn every_unit_masks_between_one_and_all_with_weight_n_over_k() {
        let x0: Vec<u32> = (10..40).collect();
        let units = [0..8, 8..11, 20..30];
        let mut rng = rand_pcg::Pcg64::seed_from_u64(1);
        for _ in 0..50 {
            let (xt, w, ratio) = mask_counts(&x0, &units, Spacing::Stratified, 1, &mut rng);
            for (unit, r) in units.iter().zip(&ratio) {
                let k = unit.clone().filter(|&i| xt[i] == 1).count();
                assert!(k >= 1 && k <= unit.len());
                assert!((r - k as f64 / unit.len() as f64).abs() < 1e-12);
                for i in unit.clone() {
                    let want = if xt[i] == 1 {
                        unit.len() as f32 / k as f32
                    } else {
                        0.0
                    };
                    assert_eq!(w[i], want);
                }
            }
            // Outside the units nothing changes.
            assert!((11..20).all(|i| xt[i] == x0[i] && w[i] == 0.0));
        }
    }
}
