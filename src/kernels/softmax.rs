//! Softmax over the last dimension of scale·x, optionally causal: entries a query may not
//! see are skipped (exactly 0 in the output and its gradient) instead of adding a −∞ bias.

use super::core::{dispatch, par_rows, zeros, Out, Real, Rows};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, WithDType};

/// softmax(scale · x) over the last dimension. With `causal = Some(offset)`, x is
/// [.., Tq, Tk] and query q sees keys 0..=offset+q only.
pub fn softmax_last(x: &Tensor, scale: f64, causal: Option<usize>) -> Result<Tensor> {
    if causal.is_some() && x.rank() < 2 {
        candle_core::bail!("causal softmax needs [.., Tq, Tk], got {:?}", x.dims());
    }
    // The query count is filled in from the input's shape.
    let causal = causal.map(|offset| (offset, 1));
    x.apply_op1(Softmax { scale, causal })
}

#[derive(Clone, Copy)]
struct Softmax {
    scale: f64,
    /// (offset, Tq) of a causal mask.
    causal: Option<(usize, usize)>,
}

impl Softmax {
    /// Number of visible entries of row i (rows of length tk).
    #[inline]
    fn visible(&self, i: usize, tk: usize) -> usize {
        match self.causal {
            None => tk,
            Some((offset, tq)) => (offset + i % tq + 1).min(tk),
        }
    }

    fn with_shape(self, dims: &[usize]) -> Self {
        match self.causal {
            Some((offset, _)) if dims.len() >= 2 => Self {
                causal: Some((offset, dims[dims.len() - 2])),
                ..self
            },
            _ => self,
        }
    }
}

fn softmax_fwd<T: Real>(op: &Softmax, x: &[T], rows: &Rows) -> Vec<T> {
    let scale = T::from_f64(op.scale);
    let mut out = zeros::<T>(rows.n * rows.len);
    let o = Out::new(&mut out, rows.len);
    par_rows(rows.n, rows.len, |i| {
        let vis = op.visible(i, rows.len);
        let src = &rows.row(x, i)[..vis];
        // SAFETY: row i is written by this call only.
        let dst = &mut unsafe { o.row(i) }[..vis];
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = s * scale;
        }
        let m = T::max_of(dst);
        let inv = T::ONE / T::exp_inplace_sum(dst, m);
        for d in dst.iter_mut() {
            *d *= inv;
        }
    });
    out
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "fused-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let op = self.with_shape(l.dims());
        let rows = Rows::new(l)?;
        let shape = l.shape().clone();
        dispatch!(s, "softmax", |T| {
            let x = T::cpu_storage_as_slice(s)?;
            Ok((
                T::to_cpu_storage_owned(softmax_fwd::<T>(&op, x, &rows)),
                shape,
            ))
        })
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let op = self.with_shape(res.dims());
        Ok(Some(res.apply_op2_no_bwd(grad, &SoftmaxBwd(op))?))
    }
}

/// dx = scale · y ⊙ (g − Σ y·g) over the visible entries (y = 0 elsewhere).
struct SoftmaxBwd(Softmax);

fn softmax_bwd<T: Real>(op: &Softmax, y: &[T], yr: &Rows, g: &[T], gr: &Rows) -> Vec<T> {
    let scale = T::from_f64(op.scale);
    let mut out = zeros::<T>(yr.n * yr.len);
    let o = Out::new(&mut out, yr.len);
    par_rows(yr.n, yr.len, |i| {
        let vis = op.visible(i, yr.len);
        let yi = &yr.row(y, i)[..vis];
        let gi = &gr.row(g, i)[..vis];
        let d = T::dot(yi, gi);
        // SAFETY: row i is written by this call only.
        let dst = &mut unsafe { o.row(i) }[..vis];
        for ((o, &y), &g) in dst.iter_mut().zip(yi).zip(gi) {
            *o = scale * y * (g - d);
        }
    });
    out
}

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "fused-softmax-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.dims() != l2.dims() {
            candle_core::bail!("softmax-bwd: shapes {:?} {:?}", l1.dims(), l2.dims());
        }
        let (yr, gr) = (Rows::new(l1)?, Rows::new(l2)?);
        let shape = l1.shape().clone();
        dispatch!(s1, "softmax-bwd", |T| {
            let y = T::cpu_storage_as_slice(s1)?;
            let g = T::cpu_storage_as_slice(s2)?;
            Ok((
                T::to_cpu_storage_owned(softmax_bwd::<T>(&self.0, y, &yr, g, &gr)),
                shape,
            ))
        })
    }
}
