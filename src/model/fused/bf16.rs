//! Matrix products in bf16 with f32 accumulation, for training's linear layers under
//! `train.compute = "bf16"` (the weights, optimizer state, norms, softmax and loss stay f32).
//! Operands are f32 in memory and rounded to bf16 (nearest even) while they are packed; the
//! products run on AMX tiles (`amx.rs`) where the CPU and kernel offer them, else on
//! AVX512_BF16's `vdpbf16ps` (two bf16 products per f32 lane per instruction), else on gemm
//! over the same rounded values: every path computes the same products and differs only in
//! summation order.

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

/// The kernels a bf16 product can run on, fastest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// AMX-BF16 tiles (Intel Sapphire Rapids and later; `CARD_NO_AMX=1` turns them off).
    Amx,
    /// AVX512_BF16 `vdpbf16ps`.
    DotProduct,
    /// bf16-rounded operands through the f32 gemm.
    Portable,
}

impl Path {
    pub const ALL: [Path; 3] = [Path::Amx, Path::DotProduct, Path::Portable];

    /// Whether this CPU (and kernel) can run the path.
    pub fn available(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Path::Amx => super::amx::available(),
            #[cfg(target_arch = "x86_64")]
            Path::DotProduct => {
                std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bf16")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Path::Amx | Path::DotProduct => false,
            Path::Portable => true,
        }
    }

    /// The path [`matmul`] takes on this machine.
    pub fn best() -> Path {
        *Path::ALL.iter().find(|p| p.available()).expect("portable")
    }

    pub fn name(self) -> &'static str {
        match self {
            Path::Amx => "amx-bf16",
            Path::DotProduct => "avx512-bf16",
            Path::Portable => "portable",
        }
    }
}

/// C [m×n] = A [m×k] · B [k×n] with bf16-rounded operands and f32 sums.
pub fn matmul(a: Strided, b: Strided, dims: (usize, usize, usize)) -> Vec<f32> {
    matmul_on(Path::best(), a, b, dims)
}

/// [`matmul`] on one path; panics if the CPU lacks it (check [`Path::available`]).
pub fn matmul_on(path: Path, a: Strided, b: Strided, dims: (usize, usize, usize)) -> Vec<f32> {
    assert!(
        path.available(),
        "bf16 path {} is not available",
        path.name()
    );
    match path {
        #[cfg(target_arch = "x86_64")]
        Path::Amx => super::amx::matmul(a, b, dims),
        #[cfg(target_arch = "x86_64")]
        Path::DotProduct => dot_product::matmul(a, b, dims),
        _ => matmul_portable(a, b, dims),
    }
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
    fn every_path_equals_the_rounded_reference_for_any_shape_and_strides() {
        // Odd k (a padded pair), partial tiles and panels, and transposed operands.
        for &(m, k, n) in &[
            (1, 1, 1),
            (7, 3, 5),
            (9, 17, 33),
            (20, 64, 70),
            (3, 255, 40),
            (64, 32, 64),  // whole AMX blocks only
            (70, 100, 65), // whole and partial blocks, k not a tile multiple
        ] {
            let (ad, bd) = (data(2 * m * k, 1), data(2 * k * n, 2));
            let cases: [(Strided, Strided); 3] = [
                ((&ad, k, 1), (&bd, n, 1)),
                ((&ad, 1, m), (&bd, 1, k)), // A and B stored transposed
                ((&ad, 2, 2 * m), (&bd, 2, 2 * k)), // neither stride 1
            ];
            for (a, b) in cases {
                let want = reference(a, b, (m, k, n));
                for path in Path::ALL.into_iter().filter(|p| p.available()) {
                    let (name, got) = (path.name(), matmul_on(path, a, b, (m, k, n)));
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
    fn every_path_this_cpu_lacks_is_named() {
        for path in Path::ALL.into_iter().filter(|p| !p.available()) {
            eprintln!(
                "bf16 path {} not available here: its parity is untested",
                path.name()
            );
        }
    }

    /// CPU flags as Linux reports them, independent of the detection code under test.
    fn cpuinfo_flags() -> Vec<String> {
        let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let line = info.lines().find(|l| l.starts_with("flags")).unwrap_or("");
        line.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn the_machine_takes_the_best_path_its_cpu_has() {
        let flags = cpuinfo_flags();
        if flags.is_empty() {
            eprintln!("no /proc/cpuinfo: only the dispatched result is checked");
        } else {
            let has = |f: &str| flags.iter().any(|x| x == f);
            let want = if has("amx_bf16") && std::env::var_os("CARD_NO_AMX").is_none() {
                Path::Amx
            } else if has("avx512_bf16") {
                Path::DotProduct
            } else {
                Path::Portable
            };
            assert_eq!(Path::best(), want, "flags say {want:?}");
        }
        let (m, k, n) = (40, 96, 50);
        let (ad, bd) = (data(m * k, 3), data(k * n, 4));
        let (a, b) = ((&ad[..], k, 1), (&bd[..], n, 1));
        eprintln!("bf16 products on this CPU: {}", Path::best().name());
        assert_eq!(
            matmul(a, b, (m, k, n)),
            matmul_on(Path::best(), a, b, (m, k, n))
        );
    }
}
