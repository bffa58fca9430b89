//! Matrix products in bf16 with f32 accumulation, for training's linear layers under
//! `train.compute = "bf16"` (the weights, optimizer state, norms, softmax and loss stay f32).
//! Operands are f32 in memory and rounded to bf16 (nearest even) while they are packed; the
//! products run on AMX tiles (`amx.rs`) where the CPU and kernel offer them, else on
//! AVX512_BF16's `vdpbf16ps` (two bf16 products per f32 lane per instruction), else on gemm
//! over the same rounded values: every path computes the same products and differs only in
//! summation order.

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod dot_product;
#[cfg(target_arch = "x86_64")]
mod pack;

mod round;

use super::core::gemm_into;
pub use round::{bf16_bits, round_bf16, Strided};

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
            Path::Amx => amx::available(),
            #[cfg(target_arch = "x86_64")]
            Path::DotProduct => pack::available(),
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

/// Whether this CPU's bf16 products run faster than its f32 ones (`train.compute = "auto"`):
/// a 512³ product timed both ways (median of 5 after a warm-up, about 20 ms), once per
/// process. The answer differs by CPU family, not by instruction set alone: on Zen 4 the
/// `vdpbf16ps` path trains at 1.7× f32, on Sapphire and Emerald Rapids without AMX at
/// 0.74–0.84× (docs/results.md). False without a bf16 hardware path.
pub fn pays_over_f32() -> bool {
    static PAYS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if Path::best() == Path::Portable {
        return false;
    }
    *PAYS.get_or_init(|| {
        let n = 512;
        let a: Vec<f32> = (0..n * n).map(|i| (i % 97) as f32 / 97.0 - 0.5).collect();
        let median_s = |product: &dyn Fn()| {
            product();
            let mut t: Vec<f64> = (0..5)
                .map(|_| {
                    let start = std::time::Instant::now();
                    product();
                    start.elapsed().as_secs_f64()
                })
                .collect();
            t.sort_by(f64::total_cmp);
            t[2]
        };
        let bf16 = median_s(&|| drop(matmul((&a, n, 1), (&a, n, 1), (n, n, n))));
        let dev = candle_core::Device::Cpu;
        let x = candle_core::Tensor::from_slice(&a, (n, n), &dev).expect("host tensor");
        let f32 = median_s(&|| drop(x.matmul(&x).expect("f32 product")));
        bf16 < f32
    })
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
        Path::Amx => amx::matmul(a, b, dims),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u64) -> Vec<f32> {
        let v = crate::runtime::rng::test_values(n, seed);
        v.into_iter().map(|x| x as f32).collect()
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

    #[test]
    fn the_machine_takes_the_best_path_its_cpu_has() {
        let flags = crate::kernels::core::cpuinfo_flags();
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
