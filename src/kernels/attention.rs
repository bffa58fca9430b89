//! Multi-head attention as one graph node, from the fused qkv projection to the heads'
//! concatenated outputs: RoPE, scaled scores, mask, softmax and the value sum.
//!
//! Why: the unfused path is ~15 graph nodes per layer (views, copies, two batched matmuls,
//! the softmax), and candle's backward allocates and adds a full gradient for each. Here the
//! work is split by (batch row, head) pairs, each on one thread with single-threaded gemm
//! calls, and within a pair by blocks of queries: only one block of scores [QB, T] exists at
//! a time and the forward keeps only the log-sum-exp per query, recomputing the
//! probabilities in the backward (flash-attention style), so memory is O(T) per head rather
//! than O(T²). Causal blocks skip the keys they cannot see.

use super::core::{dispatch, gemm_into, par_rows, zeros, Real};
use super::pointwise::rotate;
use crate::config::Heads;
use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor, WithDType};
use gemm::Parallelism;
use std::sync::Mutex;

/// Queries per block: scores [QB, T] are the only quadratic buffer.
const QB: usize = 64;

/// What the queries of a pass see. Queries and keys are the same T positions (no cached
/// prefix), so this is the kernel's own, smaller description of a pass's visibility.
#[derive(Clone, Debug)]
pub enum Mask {
    /// Query i sees keys 0..=i.
    Causal,
    /// Every query sees every key.
    Full,
    /// An additive bias [T, T] shared by rows and heads.
    Bias(Tensor),
}

/// softmax(scale · rope(q)·rope(k)ᵀ + mask) · v for qkv [B, T, qkv width] (per token: the
/// queries of every head, then keys, then values, as `heads` lays them out) with cos/sin
/// [T, hd/2]; returns [B, T, q heads · hd]. Queries and keys are the same T positions, so the
/// visibility is causal without offset, full, or a bias [T, T] shared by rows and heads.
/// Differentiable in qkv (CPU, f32/f64).
pub fn attention(
    qkv: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    heads: Heads,
    scale: f64,
    mask: &Mask,
) -> Result<Tensor> {
    if let Mask::Bias(b) = mask {
        if b.rank() != 2 {
            candle_core::bail!("fused attention: a per-row mask");
        }
    }
    qkv.contiguous()?.apply_op1(Attn {
        cos: cos.clone(),
        sin: sin.clone(),
        heads,
        scale,
        mask: mask.clone(),
        lse: Mutex::new(Vec::new()),
    })
}

struct Attn {
    cos: Tensor,
    sin: Tensor,
    heads: Heads,
    scale: f64,
    mask: Mask,
    /// Log-sum-exp of each (row, head, query), saved by the forward for the backward.
    lse: Mutex<Vec<f64>>,
}

/// Shapes and the constant inputs as host slices of the compute type.
struct Geometry<T> {
    b: usize,
    t: usize,
    h: usize,
    hd: usize,
    heads: Heads,
    cos: Vec<T>,
    sin: Vec<T>,
    bias: Option<Vec<T>>,
    causal: bool,
    scale: T,
}

impl Attn {
    fn geometry<T: Real>(&self, dims: &[usize]) -> Result<Geometry<T>> {
        let &[b, t, d3] = dims else {
            candle_core::bail!("attention: qkv must be [B, T, qkv width], got {dims:?}");
        };
        let heads = self.heads;
        let (h, hd) = (heads.q, heads.dim);
        if h == 0 || d3 != heads.qkv_width() || !hd.is_multiple_of(2) {
            candle_core::bail!("attention: {d3} columns do not fit the heads {heads:?}");
        }
        let host = |x: &Tensor, shape: (usize, usize)| -> Result<Vec<T>> {
            if x.dims() != [shape.0, shape.1] {
                candle_core::bail!("attention: table {:?}, expected {shape:?}", x.dims());
            }
            x.to_dtype(T::DTYPE)?.flatten_all()?.to_vec1::<T>()
        };
        let bias = match &self.mask {
            Mask::Bias(m) => Some(host(m, (t, t))?),
            _ => None,
        };
        Ok(Geometry {
            b,
            t,
            h,
            hd,
            heads,
            cos: host(&self.cos, (t, hd / 2))?,
            sin: host(&self.sin, (t, hd / 2))?,
            bias,
            causal: matches!(self.mask, Mask::Causal),
            scale: T::from_f64(self.scale),
        })
    }
}

impl<T: Real> Geometry<T> {
    /// Width of the output (the query heads').
    fn d(&self) -> usize {
        self.heads.q_width()
    }

    /// Column of part `which` (0 q, 1 k, 2 v) for query head `hh` in a token's qkv row.
    fn column(&self, hh: usize, which: usize) -> usize {
        let hs = self.heads;
        match which {
            0 => hh * hs.dim,
            1 => hs.k_offset() + hs.kv_of(hh) * hs.dim,
            _ => hs.v_offset() + hs.kv_of(hh) * hs.dim,
        }
    }

    /// Keys visible to the queries q0..q1.
    fn key_end(&self, q1: usize) -> usize {
        if self.causal {
            q1
        } else {
            self.t
        }
    }

    /// Rows [T, hd] of part `which` (0 q, 1 k, 2 v) of head `hh` in batch row `bi`, rotated
    /// for q and k, times `mul`.
    fn load(&self, qkv: &[T], bi: usize, hh: usize, which: usize, mul: T, dst: &mut [T]) {
        let (t, hd, half) = (self.t, self.hd, self.hd / 2);
        let (d3, col) = (self.heads.qkv_width(), self.column(hh, which));
        for i in 0..t {
            let at = (bi * t + i) * d3 + col;
            let row = &mut dst[i * hd..(i + 1) * hd];
            row.copy_from_slice(&qkv[at..at + hd]);
            if which != 2 {
                let (c, s) = (
                    &self.cos[i * half..(i + 1) * half],
                    &self.sin[i * half..(i + 1) * half],
                );
                rotate(row, c, s, false, mul);
            }
        }
    }

    /// scores[r, j] = Q[q0 + r]·K[j] (+ bias) for j < kend, then each row's probabilities
    /// exp(s − lse); a hidden key gets probability 0.
    fn probs(&self, qs: &[T], k: &[T], q0: usize, q1: usize, buf: &mut [T], lse: &[f64]) {
        let kend = self.key_end(q1);
        self.scores(qs, k, q0, q1, buf);
        for r in 0..q1 - q0 {
            let i = q0 + r;
            let row = &mut buf[r * kend..(r + 1) * kend];
            let visible = self.visible(i, kend);
            if lse[i] == f64::NEG_INFINITY {
                row.fill(T::ZERO);
                continue;
            }
            T::exp_inplace_sum(&mut row[..visible], T::from_f64(lse[i]));
            row[visible..].fill(T::ZERO);
        }
    }

    fn visible(&self, i: usize, kend: usize) -> usize {
        if self.causal {
            i + 1
        } else {
            kend
        }
    }

    /// Raw scores (with the bias added) of queries q0..q1 against keys 0..kend.
    fn scores(&self, qs: &[T], k: &[T], q0: usize, q1: usize, buf: &mut [T]) {
        let (hd, kend, rows) = (self.hd, self.key_end(q1), q1 - q0);
        // SAFETY: the operands lie within the slices: Q rows q0..q1, K rows 0..kend.
        unsafe {
            gemm_into(
                (rows, kend, hd),
                (buf.as_mut_ptr(), kend as isize, 1),
                false,
                (qs[q0 * hd..].as_ptr(), hd as isize, 1),
                (k.as_ptr(), 1, hd as isize),
                Parallelism::None,
            );
        }
        if let Some(bias) = &self.bias {
            for r in 0..rows {
                let brow = &bias[(q0 + r) * self.t..(q0 + r) * self.t + kend];
                for (s, &b) in buf[r * kend..(r + 1) * kend].iter_mut().zip(brow) {
                    *s += b;
                }
            }
        }
    }
}

/// Raw pointer to a buffer written by several threads at disjoint places.
#[derive(Clone, Copy)]
struct Shared<T>(*mut T);
unsafe impl<T> Send for Shared<T> {}
unsafe impl<T> Sync for Shared<T> {}

impl<T> Shared<T> {
    /// A method, so closures capture the Send + Sync wrapper and not the bare pointer.
    fn at(self, offset: usize) -> *mut T {
        self.0.wrapping_add(offset)
    }
}

fn forward<T: Real>(g: &Geometry<T>, qkv: &[T]) -> (Vec<T>, Vec<f64>) {
    let (b, t, h, hd, d) = (g.b, g.t, g.h, g.hd, g.d());
    let mut out = zeros::<T>(b * t * d);
    let mut lse = vec![0f64; b * h * t];
    let (o, l) = (Shared(out.as_mut_ptr()), Shared(lse.as_mut_ptr()));
    par_rows(b * h, t * t * hd, |pair| {
        let (bi, hh) = (pair / h, pair % h);
        let mut q = zeros::<T>(t * hd);
        let mut k = zeros::<T>(t * hd);
        let mut v = zeros::<T>(t * hd);
        g.load(qkv, bi, hh, 0, g.scale, &mut q);
        g.load(qkv, bi, hh, 1, T::ONE, &mut k);
        g.load(qkv, bi, hh, 2, T::ONE, &mut v);
        let mut buf = zeros::<T>(QB * t);
        // SAFETY: pair (bi, hh) alone writes lse[pair·t..] and out's columns of head hh.
        let lse_pair = unsafe { std::slice::from_raw_parts_mut(l.at(pair * t), t) };
        for q0 in (0..t).step_by(QB) {
            let q1 = (q0 + QB).min(t);
            let kend = g.key_end(q1);
            g.scores(&q, &k, q0, q1, &mut buf);
            for r in 0..q1 - q0 {
                let i = q0 + r;
                let row = &mut buf[r * kend..(r + 1) * kend];
                let visible = g.visible(i, kend);
                let m = T::max_of(&row[..visible]);
                if m == T::NEG_INF {
                    lse_pair[i] = f64::NEG_INFINITY; // nothing visible: the output stays 0
                    row.fill(T::ZERO);
                    continue;
                }
                let sum = T::exp_inplace_sum(&mut row[..visible], m);
                lse_pair[i] = m.to_f64() + sum.to_f64().ln();
                let inv = T::ONE / sum;
                row[..visible].iter_mut().for_each(|p| *p *= inv);
                row[visible..].fill(T::ZERO);
            }
            // SAFETY: out rows q0..q1 of batch row bi, columns hh·hd.., owned by this pair.
            unsafe {
                gemm_into(
                    (q1 - q0, hd, kend),
                    (o.at((bi * t + q0) * d + hh * hd), d as isize, 1),
                    false,
                    (buf.as_ptr(), kend as isize, 1),
                    (v.as_ptr(), hd as isize, 1),
                    Parallelism::None,
                );
            }
        }
    });
    (out, lse)
}

/// The backward, one unit per (batch row, key/value head): the query heads that share a
/// key/value head add into its dK and dV, so one unit owns all of them.
fn backward<T: Real>(g: &Geometry<T>, qkv: &[T], out: &[T], grad: &[T], lse: &[f64]) -> Vec<T> {
    let (b, t, h, hd, d) = (g.b, g.t, g.h, g.hd, g.d());
    let (kv, group) = (g.heads.kv, g.heads.q / g.heads.kv);
    let d3 = g.heads.qkv_width();
    let mut dqkv = zeros::<T>(b * t * d3);
    let dst = Shared(dqkv.as_mut_ptr());
    let half = hd / 2;
    // Writes rows [T, hd] of part `which` of head `hh` (batch row `bi`) back through the
    // scale and the rotations (a rotation's transpose is its inverse).
    let write = |bi: usize, hh: usize, which: usize, rows: &[T], mul: T| {
        let col = g.column(hh, which);
        for i in 0..t {
            // SAFETY: unit (bi, kv head of hh) alone writes these columns of row bi.
            let at = (bi * t + i) * d3 + col;
            let row = unsafe { std::slice::from_raw_parts_mut(dst.at(at), hd) };
            row.copy_from_slice(&rows[i * hd..(i + 1) * hd]);
            if which != 2 {
                let (c, s) = (
                    &g.cos[i * half..(i + 1) * half],
                    &g.sin[i * half..(i + 1) * half],
                );
                rotate(row, c, s, true, mul);
            }
        }
    };
    par_rows(b * kv, group * t * t * hd, |unit| {
        let (bi, kh) = (unit / kv, unit % kv);
        let mut q = zeros::<T>(t * hd);
        let mut k = zeros::<T>(t * hd);
        let mut v = zeros::<T>(t * hd);
        g.load(qkv, bi, kh * group, 1, T::ONE, &mut k);
        g.load(qkv, bi, kh * group, 2, T::ONE, &mut v);
        let (mut dk, mut dv) = (zeros::<T>(t * hd), zeros::<T>(t * hd));
        let mut d_o = zeros::<T>(t * hd);
        let mut drow = zeros::<T>(t);
        let mut p = zeros::<T>(QB * t);
        let mut dp = zeros::<T>(QB * t);
        for hh in kh * group..(kh + 1) * group {
            let lse = &lse[(bi * h + hh) * t..(bi * h + hh + 1) * t];
            g.load(qkv, bi, hh, 0, g.scale, &mut q);
            // dO and D_i = dO_i · O_i (the softmax backward's row term).
            for i in 0..t {
                let at = (bi * t + i) * d + hh * hd;
                d_o[i * hd..(i + 1) * hd].copy_from_slice(&grad[at..at + hd]);
                drow[i] = T::dot(&grad[at..at + hd], &out[at..at + hd]);
            }
            let mut dq = zeros::<T>(t * hd);
            for q0 in (0..t).step_by(QB) {
                let q1 = (q0 + QB).min(t);
                let (rows, kend) = (q1 - q0, g.key_end(q1));
                g.probs(&q, &k, q0, q1, &mut p, lse);
                // SAFETY (all four products): operands are the unit's buffers above, in range.
                unsafe {
                    // dV[0..kend] += Pᵀ · dO_blk
                    gemm_into(
                        (kend, hd, rows),
                        (dv.as_mut_ptr(), hd as isize, 1),
                        true,
                        (p.as_ptr(), 1, kend as isize),
                        (d_o[q0 * hd..].as_ptr(), hd as isize, 1),
                        Parallelism::None,
                    );
                    // dP = dO_blk · V[0..kend]ᵀ
                    gemm_into(
                        (rows, kend, hd),
                        (dp.as_mut_ptr(), kend as isize, 1),
                        false,
                        (d_o[q0 * hd..].as_ptr(), hd as isize, 1),
                        (v.as_ptr(), 1, hd as isize),
                        Parallelism::None,
                    );
                }
                // dS = P ⊙ (dP − D_i), in place in P.
                for r in 0..rows {
                    let di = drow[q0 + r];
                    let (pr, dpr) = (
                        &mut p[r * kend..(r + 1) * kend],
                        &dp[r * kend..(r + 1) * kend],
                    );
                    for (x, &y) in pr.iter_mut().zip(dpr) {
                        *x *= y - di;
                    }
                }
                unsafe {
                    // dQs_blk = dS · K[0..kend]
                    gemm_into(
                        (rows, hd, kend),
                        (dq[q0 * hd..].as_mut_ptr(), hd as isize, 1),
                        false,
                        (p.as_ptr(), kend as isize, 1),
                        (k.as_ptr(), hd as isize, 1),
                        Parallelism::None,
                    );
                    // dK[0..kend] += dSᵀ · Qs_blk
                    gemm_into(
                        (kend, hd, rows),
                        (dk.as_mut_ptr(), hd as isize, 1),
                        true,
                        (p.as_ptr(), 1, kend as isize),
                        (q[q0 * hd..].as_ptr(), hd as isize, 1),
                        Parallelism::None,
                    );
                }
            }
            write(bi, hh, 0, &dq, g.scale);
        }
        write(bi, kh * group, 1, &dk, T::ONE);
        write(bi, kh * group, 2, &dv, T::ONE);
    });
    dqkv
}

impl CustomOp1 for Attn {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some((a, z)) = l.contiguous_offsets() else {
            candle_core::bail!("attention: qkv must be contiguous");
        };
        dispatch!(s, "attention", |T| {
            let g = self.geometry::<T>(l.dims())?;
            let qkv = &T::cpu_storage_as_slice(s)?[a..z];
            let (out, lse) = forward::<T>(&g, qkv);
            *self.lse.lock().expect("attention lse lock") = lse;
            Ok((T::to_cpu_storage_owned(out), Shape::from((g.b, g.t, g.d()))))
        })
    }

    fn bwd(&self, qkv: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = qkv.apply_op3_no_bwd(res, &grad.contiguous()?, &AttnBwd(self))?;
        Ok(Some(g))
    }
}

/// The backward as an op over (qkv, output, output gradient), borrowing the forward's state.
struct AttnBwd<'a>(&'a Attn);

impl CustomOp3 for AttnBwd<'_> {
    fn name(&self) -> &'static str {
        "fused-attention-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let slice = |l: &Layout| {
            l.contiguous_offsets().ok_or_else(|| {
                candle_core::Error::Msg("attention bwd: operands must be contiguous".into())
            })
        };
        let ((a1, z1), (a2, z2), (a3, z3)) = (slice(l1)?, slice(l2)?, slice(l3)?);
        dispatch!(s1, "attention-bwd", |T| {
            let g = self.0.geometry::<T>(l1.dims())?;
            let lse = self.0.lse.lock().expect("attention lse lock");
            if lse.len() != g.b * g.h * g.t {
                candle_core::bail!("attention bwd: run the forward first");
            }
            let qkv = &T::cpu_storage_as_slice(s1)?[a1..z1];
            let out = &T::cpu_storage_as_slice(s2)?[a2..z2];
            let grad = &T::cpu_storage_as_slice(s3)?[a3..z3];
            let dqkv = backward::<T>(&g, qkv, out, grad, &lse);
            Ok((T::to_cpu_storage_owned(dqkv), l1.shape().clone()))
        })
    }
}
