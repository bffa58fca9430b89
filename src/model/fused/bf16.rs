//! Matrix products in bf16 with f32 accumulation, for training's linear layers under
//! `train.compute = "bf16"` (the weights, optimizer state, norms, softmax and loss stay f32).
//! Operands are f32 in memory and rounded to bf16 (nearest even) while they are packed; the
//! products run on AVX512_BF16's `vdpbf16ps` (two bf16 products per f32 lane per
//! instruction) where the CPU has it, and otherwise on gemm over the same rounded values, so
//! both paths compute the same products and differ only in summation order.

use super::{gemm_into, par_rows, Out};

/// Rows of one micro-tile and columns of one packed panel (two 16-lane registers).
const MR: usize = 8;
const NR: usize = 32;
/// Row blocks one task runs each B panel over (64 rows).
const GROUP: usize = 8;

/// An operand as (data, row stride, column stride): element (i, j) is `data[i*rs + j*cs]`.
pub type Strided<'a> = (&'a [f32], usize, usize);

/// f32 → bf16 bits, rounding to nearest even (NaN stays NaN).
pub fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// `x` rounded to the nearest bf16 value, as f32.
pub fn round_bf16(x: f32) -> f32 {
    f32::from_bits((bf16_bits(x) as u32) << 16)
}

/// Whether this CPU runs the bf16 dot-product path.
pub fn has_dot_product() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// C [m×n] = A [m×k] · B [k×n] with bf16-rounded operands and f32 sums.
pub fn matmul(a: Strided, b: Strided, (m, k, n): (usize, usize, usize)) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    if has_dot_product() {
        return dot_product::matmul(a, b, (m, k, n));
    }
    matmul_portable(a, b, (m, k, n))
}

/// The reference path: round both operands, then an f32 gemm.
pub fn matmul_portable(a: Strided, b: Strided, (m, k, n): (usize, usize, usize)) -> Vec<f32> {
    let round = |(d, rs, cs): Strided, rows: usize, cols: usize| -> Vec<f32> {
        let mut out = Vec::with_capacity(rows * cols);
        for i in 0..rows {
            out.extend((0..cols).map(|j| round_bf16(d[i * rs + j * cs])));
        }
        out
    };
    let (ra, rb) = (round(a, m, k), round(b, k, n));
    let mut c = vec![0f32; m * n];
    if m * n * k == 0 {
        return c;
    }
    // SAFETY: every operand is a dense row-major buffer of the stated shape.
    unsafe {
        gemm_into(
            (m, n, k),
            (c.as_mut_ptr(), n as isize, 1),
            false,
            (ra.as_ptr(), k as isize, 1),
            (rb.as_ptr(), n as isize, 1),
            gemm::Parallelism::Rayon(crate::runtime::threads()),
        )
    };
    c
}

#[cfg(target_arch = "x86_64")]
mod dot_product {
    use super::*;
    use std::arch::x86_64::*;

    /// Two bf16 values (even k low, odd k high) in one u32.
    fn pair(lo: f32, hi: f32) -> u32 {
        bf16_bits(lo) as u32 | ((bf16_bits(hi) as u32) << 16)
    }

    /// B as panels of NR columns: [panel][k pair][NR] (zero-padded).
    fn pack_b((d, rs, cs): Strided, k: usize, n: usize) -> Vec<u32> {
        let kp = k.div_ceil(2);
        let panels = n.div_ceil(NR);
        let mut out = vec![0u32; panels * kp * NR];
        let slots = Out::new(&mut out, kp * NR);
        par_rows(panels, kp * NR, |p| {
            // SAFETY: panel p writes only its own slice.
            let dst = unsafe { slots.row(p) };
            for q in 0..kp {
                for j in 0..NR.min(n - p * NR) {
                    let col = p * NR + j;
                    let lo = d[2 * q * rs + col * cs];
                    let hi = if 2 * q + 1 < k {
                        d[(2 * q + 1) * rs + col * cs]
                    } else {
                        0.0
                    };
                    dst[q * NR + j] = pair(lo, hi);
                }
            }
        });
        out
    }

    /// A as blocks of MR rows: [block][k pair][MR] (zero-padded).
    fn pack_a((d, rs, cs): Strided, m: usize, k: usize) -> Vec<u32> {
        let kp = k.div_ceil(2);
        let blocks = m.div_ceil(MR);
        let mut out = vec![0u32; blocks * kp * MR];
        let slots = Out::new(&mut out, kp * MR);
        par_rows(blocks, kp * MR, |bi| {
            // SAFETY: block bi writes only its own slice.
            let dst = unsafe { slots.row(bi) };
            for i in 0..MR.min(m - bi * MR) {
                let row = bi * MR + i;
                for q in 0..kp {
                    let lo = d[row * rs + 2 * q * cs];
                    let hi = if 2 * q + 1 < k {
                        d[row * rs + (2 * q + 1) * cs]
                    } else {
                        0.0
                    };
                    dst[q * MR + i] = pair(lo, hi);
                }
            }
        });
        out
    }

    pub fn matmul(a: Strided, b: Strided, (m, k, n): (usize, usize, usize)) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        if m * n == 0 {
            return c;
        }
        let (pa, pb) = (pack_a(a, m, k), pack_b(b, k, n));
        let kp = k.div_ceil(2);
        let panels = n.div_ceil(NR);
        let blocks = m.div_ceil(MR);
        // A task takes GROUP row blocks and runs each B panel over all of them while the
        // panel is in L1: a wide B (the vocabulary head) is then read once per GROUP blocks
        // instead of once per block.
        let groups = Out::new(&mut c, GROUP * MR * n);
        par_rows(blocks.div_ceil(GROUP), GROUP * MR * n * k.max(1), |g| {
            let first = g * GROUP;
            let rows = (m - first * MR).min(GROUP * MR);
            // SAFETY: group g writes only its rows of C (the last group is shorter).
            let dst = unsafe { groups.row_prefix(g, rows * n) };
            for p in 0..panels {
                let cols = (n - p * NR).min(NR);
                for bi in first..blocks.min(first + GROUP) {
                    let r0 = (bi - first) * MR;
                    // SAFETY: the CPU has AVX512_BF16 (checked by the caller); the packed
                    // buffers hold kp pairs for this block and panel.
                    unsafe {
                        tile(
                            &pa[bi * kp * MR..(bi + 1) * kp * MR],
                            &pb[p * kp * NR..(p + 1) * kp * NR],
                            kp,
                            &mut dst[r0 * n + p * NR..],
                            n,
                            ((m - bi * MR).min(MR), cols),
                        )
                    };
                }
            }
        });
        c
    }

    /// One MR×NR tile of C from packed A and B.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn tile(
        a: &[u32],
        b: &[u32],
        kp: usize,
        c: &mut [f32],
        ldc: usize,
        (rows, cols): (usize, usize),
    ) {
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        for q in 0..kp {
            let bp = b.as_ptr().add(q * NR);
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp as *const _));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(16) as *const _));
            let ap = a.as_ptr().add(q * MR);
            for (i, acc) in acc.iter_mut().enumerate() {
                let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ap.add(i) as i32));
                acc[0] = _mm512_dpbf16_ps(acc[0], x, b0);
                acc[1] = _mm512_dpbf16_ps(acc[1], x, b1);
            }
        }
        let mut row = [0f32; NR];
        for (i, acc) in acc.iter().enumerate().take(rows) {
            _mm512_storeu_ps(row.as_mut_ptr(), acc[0]);
            _mm512_storeu_ps(row.as_mut_ptr().add(16), acc[1]);
            c[i * ldc..i * ldc + cols].copy_from_slice(&row[..cols]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s % 20_001) as f32 / 10_000.0 - 1.0
            })
            .collect()
    }

    /// The products of the bf16-rounded operands, summed in f64.
    fn reference(a: Strided, b: Strided, (m, k, n): (usize, usize, usize)) -> Vec<f64> {
        let mut c = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k)
                    .map(|kk| {
                        round_bf16(a.0[i * a.1 + kk * a.2]) as f64
                            * round_bf16(b.0[kk * b.1 + j * b.2]) as f64
                    })
                    .sum();
            }
        }
        c
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(round_bf16(1.0), 1.0);
        // 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: ties go to even (1).
        assert_eq!(round_bf16(1.0 + 1.0 / 256.0), 1.0);
        assert_eq!(round_bf16(1.0 + 3.0 / 256.0), 1.0 + 2.0 / 128.0);
        assert!(round_bf16(f32::NAN).is_nan());
        assert_eq!(round_bf16(f32::INFINITY), f32::INFINITY);
    }

    #[test]
    fn both_paths_equal_the_rounded_reference_for_any_shape_and_strides() {
        // Odd k (a padded pair), partial tiles and panels, and transposed operands.
        for &(m, k, n) in &[
            (1, 1, 1),
            (7, 3, 5),
            (9, 17, 33),
            (20, 64, 70),
            (3, 255, 40),
        ] {
            let (ad, bd) = (data(m * k, 1), data(k * n, 2));
            let cases: [(Strided, Strided); 2] = [
                ((&ad, k, 1), (&bd, n, 1)),
                ((&ad, 1, m), (&bd, 1, k)), // A and B stored transposed
            ];
            for (a, b) in cases {
                let want = reference(a, b, (m, k, n));
                for (name, got) in [
                    ("dispatched", matmul(a, b, (m, k, n))),
                    ("portable", matmul_portable(a, b, (m, k, n))),
                ] {
                    for (g, w) in got.iter().zip(&want) {
                        // Only the f32 summation order differs from the f64 reference.
                        let tol = 1e-5 * (k as f64).sqrt() * (1.0 + w.abs());
                        assert!(
                            (*g as f64 - w).abs() <= tol,
                            "{name} {m}x{k}x{n}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_machine_takes_the_path_it_reports() {
        // On a CPU with AVX512_BF16 the dispatched path is the dot-product kernel, whose
        // rounding of a product sum differs from gemm's somewhere in a large product.
        let (m, k, n) = (16, 512, 64);
        let (ad, bd) = (data(m * k, 3), data(k * n, 4));
        let (a, b) = ((&ad[..], k, 1), (&bd[..], n, 1));
        let same = matmul(a, b, (m, k, n)) == matmul_portable(a, b, (m, k, n));
        eprintln!("bf16 dot product on this CPU: {}", has_dot_product());
        assert_eq!(same, !has_dot_product(), "the dispatch took the other path");
    }
}
