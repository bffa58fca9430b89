//! x [m, k] · wᵀ for w [n, k] with few rows m (decoding): one pass over the weights, each
//! weight row dotted with every input row while it is in cache. candle's gemm packs weight
//! panels on every call when m ≥ 2, which made a K-slot CARD step cost about K AR steps;
//! here a step of up to `MAX_ROWS` tokens reads the weights once, like an AR step.
//! Inference only (no backward): `ops::linear` uses it for untracked f32 CPU tensors.

use super::contiguous;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

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
        // Transposed output [n, m]: unit j owns row j, then one cheap transpose.
        let mut out_t = vec![0f32; n * m];
        // rayon, not the spinning barrier pool: the caller works through the blocks itself
        // when the other threads are busy, instead of waiting for them.
        let block = n.div_ceil(4 * rayon::current_num_threads().max(1)).max(16);
        out_t
            .par_chunks_mut(block * m)
            .enumerate()
            .for_each(|(b, chunk)| {
                for (jj, o) in chunk.chunks_mut(m).enumerate() {
                    let j = b * block + jj;
                    dots(x, &w[j * k..(j + 1) * k], k, o);
                }
            });
        let mut out = vec![0f32; m * n];
        for j in 0..n {
            for i in 0..m {
                out[i * n + j] = out_t[j * m + i];
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

/// x [m, k] · w [n, k]ᵀ for contiguous f32 CPU tensors.
pub fn small_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2_no_bwd(&w.contiguous()?, &SmallMatmul)
}

/// o[i] = x[i·k..(i+1)·k] · wrow for every input row i: the weight row is read once, each
/// 8-wide chunk feeding one accumulator per input row.
fn dots(x: &[f32], wrow: &[f32], k: usize, o: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
        return unsafe { dots_avx2(x, wrow, k, o) };
    }
    dots_impl(x, wrow, k, o)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dots_avx2(x: &[f32], wrow: &[f32], k: usize, o: &mut [f32]) {
    dots_impl(x, wrow, k, o)
}

#[inline(always)]
fn dots_impl(x: &[f32], wrow: &[f32], k: usize, o: &mut [f32]) {
    // A constant row count keeps the accumulators in registers.
    macro_rules! by_rows {
        ($($m:literal)*) => {
            match o.len() {
                $($m => dots_fixed::<$m>(x, wrow, k, o),)*
                _ => unreachable!("at most MAX_ROWS rows"),
            }
        };
    }
    by_rows!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16)
}

#[inline(always)]
fn dots_fixed<const M: usize>(x: &[f32], wrow: &[f32], k: usize, o: &mut [f32]) {
    let mut acc = [[0f32; 8]; M];
    let full = k / 8 * 8;
    let mut c = 0;
    while c < full {
        let wv: [f32; 8] = wrow[c..c + 8].try_into().expect("8 lanes");
        for (i, a) in acc.iter_mut().enumerate() {
            let xv: [f32; 8] = x[i * k + c..i * k + c + 8].try_into().expect("8 lanes");
            for l in 0..8 {
                a[l] = xv[l].mul_add(wv[l], a[l]);
            }
        }
        c += 8;
    }
    for (i, oi) in o.iter_mut().enumerate() {
        let mut s: f32 = acc[i].iter().sum();
        for c in full..k {
            s += x[i * k + c] * wrow[c];
        }
        *oi = s;
    }
}
