//! x [m, k] · wᵀ for w [n, k] with few rows m (decoding): one pass over the weights, each
//! weight row dotted with every input row while it is in cache. candle's gemm packs weight
//! panels on every call when m ≥ 2, which made a K-slot CARD step cost about K AR steps;
//! here a step of up to `MAX_ROWS` tokens reads the weights once, like an AR step.
//! Inference only (no backward): `ops::linear` uses it for untracked f32 CPU tensors.

use super::core::{contiguous, par_rows};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

/// Row counts up to this take the small-m path.
pub const MAX_ROWS: usize = 16;

struct SmallMatmul;

impl CustomOp2 for SmallMatmul {
    fn name(&self) -> &'static str {
        "small-m-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (m, k) = l1.shape().dims2()?;
        let (n, k2) = l2.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("small-m-matmul: inner dimensions {k} and {k2} differ");
        }
        let x = contiguous::<f32>(s1, l1)?;
        let w = contiguous::<f32>(s2, l2)?;
        let (mut out_t, mut out) = (vec![0f32; n * m], vec![0f32; m * n]);
        matmul_into(x, m, k, w, n, &mut out_t, &mut out);
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

/// out [m, n] = x [m, k] · w [n, k]ᵀ on host slices, m ≤ `MAX_ROWS`, through `out_t`
/// [n, m] scratch (unit j owns weight row j, then one cheap transpose). Allocates nothing.
pub(crate) fn matmul_into(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    out_t: &mut [f32],
    out: &mut [f32],
) {
    assert!(
        m <= MAX_ROWS && x.len() >= m * k && w.len() >= n * k,
        "small matmul: m {m} k {k} n {n}, x {} w {}",
        x.len(),
        w.len()
    );
    let x = &x[..m * k];
    by_weight_rows(n, m, k, out_t, out, |j, o| {
        dots(x, &w[j * k..(j + 1) * k], k, o)
    });
}

/// `dot(j, o)` for every weight row j < n, o being row j of `out_t` [n, m] (the m inputs'
/// dot products with weight row j), spread over the pool in blocks of rows costing
/// `row_cost` each; then `out` [m, n] = out_tᵀ. Shared by the f32 and the packed kernels.
pub(crate) fn by_weight_rows(
    n: usize,
    m: usize,
    row_cost: usize,
    out_t: &mut [f32],
    out: &mut [f32],
    dot: impl Fn(usize, &mut [f32]) + Sync,
) {
    assert!(out_t.len() >= n * m && out.len() >= m * n);
    // candle's barrier pool, like the other per-token ops: its workers spin briefly
    // between ops, whereas rayon's fall asleep and are woken by a syscall for each of
    // the dozens of matmuls in a decoding step (~15% of a batch-1 step went there).
    let block = n.div_ceil(8 * crate::runtime::threads()).max(16);
    let units = n.div_ceil(block);
    let o = OutRows {
        ptr: out_t.as_mut_ptr() as usize,
        m,
    };
    par_rows(units, block * row_cost, |b| {
        for j in b * block..n.min((b + 1) * block) {
            // SAFETY: unit b alone writes output rows j of its block, all below n.
            dot(j, unsafe { o.row(j) });
        }
    });
    for j in 0..n {
        for i in 0..m {
            out[i * n + j] = out_t[j * m + i];
        }
    }
}

/// Rows of m floats in a buffer written from several threads.
struct OutRows {
    ptr: usize,
    m: usize,
}

impl OutRows {
    /// # Safety
    /// Row j must lie in the buffer and be handed to one caller at a time.
    #[allow(clippy::mut_from_ref)]
    unsafe fn row(&self, j: usize) -> &mut [f32] {
        std::slice::from_raw_parts_mut((self.ptr as *mut f32).add(j * self.m), self.m)
    }
}

/// x [m, k] · w [n, k]ᵀ for contiguous f32 CPU tensors.
pub fn small_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2_no_bwd(&w.contiguous()?, &SmallMatmul)
}

/// o[i] = x[i·k..(i+1)·k] · wrow for every input row i: the weight row is read once, each
/// 8-wide chunk feeding the accumulators of every input row. (Several weight rows per pass, to
/// reuse the input chunks, measured slower: the extra weight streams cost more bandwidth
/// than they save.)
fn dots(x: &[f32], wrow: &[f32], k: usize, o: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // Constant counts keep the accumulators in registers. U chunks in flight per row so
        // that M·U ≥ 8 independent FMA chains can hide the FMA latency where registers allow
        // (within noise on its own on an Emerald Rapids guest, where the prefetch is what
        // paid). (An AVX-512 variant measured slower on an AMD Zen 4 machine.)
        macro_rules! by_rows {
            ($($m:literal => $u:literal),*) => {
                match o.len() {
                    // SAFETY (every arm): the CPU supports AVX2 and FMA (checked above).
                    $($m => unsafe { avx2::dots::<$m, $u>(x, wrow, k, o) },)*
                    _ => unreachable!("at most MAX_ROWS input rows"),
                }
            };
        }
        return by_rows!(1 => 8, 2 => 4, 3 => 3, 4 => 2, 5 => 2, 6 => 2, 7 => 2, 8 => 1,
            9 => 1, 10 => 1, 11 => 1, 12 => 1, 13 => 1, 14 => 1, 15 => 1, 16 => 1);
    }
    for (i, oi) in o.iter_mut().enumerate() {
        *oi = x[i * k..(i + 1) * k]
            .iter()
            .zip(wrow)
            .map(|(a, b)| a * b)
            .sum();
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// How far ahead of the FMAs the weight stream is prefetched, in floats (4 KiB): on a
    /// 2-core Emerald Rapids guest a one-position pass of SmolLM2 went from 27 to 19–20 ms
    /// with it (the hardware prefetcher alone left the loads waiting); 1–2 KiB or 16–32 KiB
    /// ahead measured slower.
    const PREFETCH: usize = 1024;

    /// M input rows against one weight row, 8 lanes at a time, U chunks in flight per row,
    /// each with its own accumulator (summed at the end).
    ///
    /// # Safety
    /// AVX2 and FMA must be available.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dots<const M: usize, const U: usize>(
        x: &[f32],
        wrow: &[f32],
        k: usize,
        o: &mut [f32],
    ) {
        assert!(x.len() >= M * k && wrow.len() >= k && o.len() >= M);
        let mut acc = [[_mm256_setzero_ps(); U]; M];
        let (xp, wp) = (x.as_ptr(), wrow.as_ptr());
        let (wide, full) = (k / (8 * U) * (8 * U), k / 8 * 8);
        let mut c = 0;
        while c < wide {
            for u in 0..U {
                if u % 2 == 0 {
                    // One prefetch per 64-byte line; past the row's end it reads the next
                    // rows, and a prefetch never faults.
                    let ahead = wp.wrapping_add(c + 8 * u + PREFETCH);
                    _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
                }
                // SAFETY: c + 8U ≤ wide ≤ k, so every load stays within x and wrow (asserted).
                let wv = _mm256_loadu_ps(wp.add(c + 8 * u));
                for (i, a) in acc.iter_mut().enumerate() {
                    a[u] = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(i * k + c + 8 * u)), wv, a[u]);
                }
            }
            c += 8 * U;
        }
        while c < full {
            // SAFETY: c + 8 ≤ full ≤ k, as above.
            let wv = _mm256_loadu_ps(wp.add(c));
            for (i, a) in acc.iter_mut().enumerate() {
                a[0] = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(i * k + c)), wv, a[0]);
            }
            c += 8;
        }
        for (i, a) in acc.iter().enumerate() {
            let mut sum = a[0];
            for v in &a[1..] {
                sum = _mm256_add_ps(sum, *v);
            }
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
            let mut s: f32 = lanes.iter().sum();
            for c in full..k {
                s += x[i * k + c] * wrow[c];
            }
            o[i] = s;
        }
    }
}
