//! RMSNorm y = x / sqrt(mean(x²) + eps) ⊙ w with gradients for x and w.

use super::core::{contiguous, dispatch, par_blocks, par_rows, zeros, Out, Real, Rows};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, WithDType};

/// Rows per block of the weight-gradient reduction (fixed, so the sum order is too).
const BLOCK: usize = 64;

/// RMSNorm over the last dimension of x (f32/f64 CPU) with weight [d].
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    x.apply_op2(weight, RmsNorm { eps })
}

#[derive(Clone, Copy)]
struct RmsNorm {
    eps: f64,
}

#[inline]
fn inv_rms<T: Real>(row: &[T], eps: f64) -> T {
    let ms = T::dot(row, row) / T::from_f64(row.len() as f64);
    T::ONE / (ms + T::from_f64(eps)).sqrt()
}

fn weight_of<'a, T: Real>(s: &'a CpuStorage, l: &Layout, d: usize) -> Result<&'a [T]> {
    let w = contiguous::<T>(s, l)?;
    if w.len() != d {
        candle_core::bail!("rms_norm: weight of {} for rows of {d}", w.len());
    }
    Ok(w)
}

fn fwd<T: Real>(eps: f64, x: &[T], rows: &Rows, w: &[T]) -> Vec<T> {
    let mut out = zeros::<T>(rows.n * rows.len);
    let o = Out::new(&mut out, rows.len);
    par_rows(rows.n, rows.len, |i| {
        // SAFETY: row i is written by this call only.
        rms_norm_row(rows.row(x, i), w, eps, unsafe { o.row(i) });
    });
    out
}

/// out = x / sqrt(mean(x²) + eps) ⊙ w for one row.
#[inline]
pub(crate) fn rms_norm_row<T: Real>(x: &[T], w: &[T], eps: f64, out: &mut [T]) {
    let inv = inv_rms(x, eps);
    for ((d, &x), &w) in out.iter_mut().zip(x).zip(w) {
        *d = x * inv * w;
    }
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let rows = Rows::new(l1)?;
        let shape = l1.shape().clone();
        dispatch!(s1, "rms_norm", |T| {
            let x = T::cpu_storage_as_slice(s1)?;
            let w = weight_of::<T>(s2, l2, rows.len)?;
            Ok((
                T::to_cpu_storage_owned(fwd::<T>(self.eps, x, &rows, w)),
                shape,
            ))
        })
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = x.apply_op3_no_bwd(w, grad, &RmsNormBwdX(*self))?;
        let dw = if w.track_op() {
            Some(x.apply_op2_no_bwd(grad, &RmsNormBwdW(*self))?)
        } else {
            None
        };
        Ok((Some(dx), dw))
    }
}

/// dx = inv · (g⊙w − x̂ · mean(g⊙w⊙x̂)), x̂ = x · inv.
struct RmsNormBwdX(RmsNorm);

fn bwd_x<T: Real>(eps: f64, x: &[T], xr: &Rows, w: &[T], g: &[T], gr: &Rows) -> Vec<T> {
    let d = xr.len;
    let mut out = zeros::<T>(xr.n * d);
    let o = Out::new(&mut out, d);
    let inv_d = T::ONE / T::from_f64(d as f64);
    par_rows(xr.n, 3 * d, |i| {
        let (xi, gi) = (xr.row(x, i), gr.row(g, i));
        let inv = inv_rms(xi, eps);
        // SAFETY: row i is written by this call only.
        let dst = unsafe { o.row(i) };
        // dst holds g⊙w first, then the gradient.
        for ((o, &g), &w) in dst.iter_mut().zip(gi).zip(w) {
            *o = g * w;
        }
        let c = T::dot(dst, xi) * inv * inv_d;
        for (o, &x) in dst.iter_mut().zip(xi) {
            *o = inv * (*o - x * inv * c);
        }
    });
    out
}

impl CustomOp3 for RmsNormBwdX {
    fn name(&self) -> &'static str {
        "fused-rms-norm-bwd-x"
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
        let (xr, gr) = (Rows::new(l1)?, Rows::new(l3)?);
        if l1.dims() != l3.dims() {
            candle_core::bail!("rms_norm-bwd: shapes {:?} {:?}", l1.dims(), l3.dims());
        }
        let shape = l1.shape().clone();
        dispatch!(s1, "rms_norm-bwd", |T| {
            let x = T::cpu_storage_as_slice(s1)?;
            let w = weight_of::<T>(s2, l2, xr.len)?;
            let g = T::cpu_storage_as_slice(s3)?;
            let dx = bwd_x::<T>(self.0.eps, x, &xr, w, g, &gr);
            Ok((T::to_cpu_storage_owned(dx), shape))
        })
    }
}

/// dw = Σ_rows g ⊙ x̂, summed in fixed blocks of rows, then the blocks in order.
struct RmsNormBwdW(RmsNorm);

fn bwd_w<T: Real>(eps: f64, x: &[T], xr: &Rows, g: &[T], gr: &Rows) -> Vec<T> {
    let d = xr.len;
    let blocks = par_blocks(xr.n, BLOCK, |range| {
        let mut acc = zeros::<T>(d);
        for i in range {
            let (xi, gi) = (xr.row(x, i), gr.row(g, i));
            let inv = inv_rms(xi, eps);
            for ((a, &x), &g) in acc.iter_mut().zip(xi).zip(gi) {
                *a += g * (x * inv);
            }
        }
        acc
    });
    let mut out = zeros::<T>(d);
    for b in &blocks {
        for (o, &v) in out.iter_mut().zip(b) {
            *o += v;
        }
    }
    out
}

impl CustomOp2 for RmsNormBwdW {
    fn name(&self) -> &'static str {
        "fused-rms-norm-bwd-w"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (xr, gr) = (Rows::new(l1)?, Rows::new(l2)?);
        if l1.dims() != l2.dims() {
            candle_core::bail!("rms_norm-bwd: shapes {:?} {:?}", l1.dims(), l2.dims());
        }
        let shape = Shape::from(xr.len);
        dispatch!(s1, "rms_norm-bwd", |T| {
            let x = T::cpu_storage_as_slice(s1)?;
            let g = T::cpu_storage_as_slice(s2)?;
            let dw = bwd_w::<T>(self.0.eps, x, &xr, g, &gr);
            Ok((T::to_cpu_storage_owned(dw), shape))
        })
    }
}
