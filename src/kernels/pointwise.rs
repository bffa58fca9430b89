//! Row-local element-wise ops: SwiGLU and rotary position embedding.

use super::core::{contiguous, dispatch, par_rows, zeros, Out, Real, Rows};
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, WithDType,
};

/// SiLU(gate) ⊙ up with gate and up the two halves of the last dimension.
pub fn swiglu(gate_up: &Tensor) -> Result<Tensor> {
    gate_up.apply_op1(Swiglu)
}

/// Rotary embedding (non-interleaved halves) of x [.., T, hd] with cos/sin [T, hd/2]; reads
/// a strided x directly (a view into the fused qkv projection) and returns it contiguous.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    x.apply_op3(cos, sin, Rope { inverse: false })
}

struct Swiglu;

#[inline]
fn sigmoid<T: Real>(x: T) -> T {
    T::ONE / (T::ONE + (-x).exp())
}

fn swiglu_fwd<T: Real>(x: &[T], rows: &Rows) -> Vec<T> {
    let f = rows.len / 2;
    let mut out = zeros::<T>(rows.n * f);
    let o = Out::new(&mut out, f);
    par_rows(rows.n, rows.len, |i| {
        // SAFETY: row i is written by this call only.
        swiglu_row(rows.row(x, i), unsafe { o.row(i) });
    });
    out
}

/// out = SiLU(gate) ⊙ up for one row gate_up = [gate | up].
#[inline]
pub(crate) fn swiglu_row<T: Real>(gate_up: &[T], out: &mut [T]) {
    let (gate, up) = gate_up.split_at(out.len());
    for ((d, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *d = g / (T::ONE + (-g).exp()) * u;
    }
}

/// Rotate one head vector in place (non-interleaved halves) by the angles whose cos/sin are
/// given, or with `inverse` by their transpose (the rotation's backward), times `mul`.
#[inline]
pub(crate) fn rotate<T: Real>(x: &mut [T], cos: &[T], sin: &[T], inverse: bool, mul: T) {
    let half = cos.len();
    let (x1, x2) = x.split_at_mut(half);
    for j in 0..half {
        let (a, b, c, s) = (x1[j], x2[j], cos[j], sin[j]);
        if inverse {
            x1[j] = (a * c + b * s) * mul;
            x2[j] = (b * c - a * s) * mul;
        } else {
            x1[j] = (a * c - b * s) * mul;
            x2[j] = (b * c + a * s) * mul;
        }
    }
}

fn check_even(l: &Layout, what: &str) -> Result<()> {
    match l.dims().last() {
        Some(&n) if n % 2 == 0 => Ok(()),
        _ => candle_core::bail!("{what}: last dimension must be even, got {:?}", l.dims()),
    }
}

impl CustomOp1 for Swiglu {
    fn name(&self) -> &'static str {
        "fused-swiglu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        check_even(l, "swiglu")?;
        let rows = Rows::new(l)?;
        let mut dims = l.dims().to_vec();
        *dims.last_mut().expect("rank >= 1") /= 2;
        dispatch!(s, "swiglu", |T| {
            let x = T::cpu_storage_as_slice(s)?;
            Ok((
                T::to_cpu_storage_owned(swiglu_fwd::<T>(x, &rows)),
                Shape::from(dims),
            ))
        })
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(grad, &SwigluBwd)?))
    }
}

/// d gate = dy·up·σ(g)(1 + g(1 − σ(g))), d up = dy·silu(g).
struct SwigluBwd;

fn swiglu_bwd<T: Real>(x: &[T], xr: &Rows, dy: &[T], dr: &Rows) -> Vec<T> {
    let f = xr.len / 2;
    let mut out = zeros::<T>(xr.n * xr.len);
    let o = Out::new(&mut out, xr.len);
    par_rows(xr.n, xr.len, |i| {
        let (gate, up) = xr.row(x, i).split_at(f);
        let dyi = dr.row(dy, i);
        // SAFETY: row i is written by this call only.
        let (dg, du) = unsafe { o.row(i) }.split_at_mut(f);
        for j in 0..f {
            let (g, u, d) = (gate[j], up[j], dyi[j]);
            let s = sigmoid(g);
            dg[j] = d * u * s * (T::ONE + g * (T::ONE - s));
            du[j] = d * g * s;
        }
    });
    out
}

impl CustomOp2 for SwigluBwd {
    fn name(&self) -> &'static str {
        "fused-swiglu-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        check_even(l1, "swiglu-bwd")?;
        let (xr, dr) = (Rows::new(l1)?, Rows::new(l2)?);
        if xr.n != dr.n || dr.len * 2 != xr.len {
            candle_core::bail!("swiglu-bwd: shapes {:?} {:?}", l1.dims(), l2.dims());
        }
        let shape = l1.shape().clone();
        dispatch!(s1, "swiglu-bwd", |T| {
            let x = T::cpu_storage_as_slice(s1)?;
            let dy = T::cpu_storage_as_slice(s2)?;
            Ok((
                T::to_cpu_storage_owned(swiglu_bwd::<T>(x, &xr, dy, &dr)),
                shape,
            ))
        })
    }
}

/// The rotation, or with `inverse` its transpose (the backward of the rotation).
#[derive(Clone, Copy)]
struct Rope {
    inverse: bool,
}

fn rope_rows<T: Real>(inverse: bool, x: &[T], rows: &Rows, t: usize, c: &[T], s: &[T]) -> Vec<T> {
    let half = rows.len / 2;
    let mut out = zeros::<T>(rows.n * rows.len);
    let o = Out::new(&mut out, rows.len);
    par_rows(rows.n, rows.len, |i| {
        let p = i % t;
        let (c, s) = (&c[p * half..(p + 1) * half], &s[p * half..(p + 1) * half]);
        // SAFETY: row i is written by this call only.
        let dst = unsafe { o.row(i) };
        dst.copy_from_slice(rows.row(x, i));
        rotate(dst, c, s, inverse, T::ONE);
    });
    out
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "fused-rope"
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
        check_even(l1, "rope")?;
        let dims = l1.dims();
        if dims.len() < 2 {
            candle_core::bail!("rope: x must be [.., T, hd], got {dims:?}");
        }
        let (t, hd) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        if l2.dims() != [t, hd / 2] || l3.dims() != [t, hd / 2] {
            candle_core::bail!("rope: cos/sin {:?} for x {dims:?}", l2.dims());
        }
        let rows = Rows::new(l1)?;
        let shape = l1.shape().clone();
        dispatch!(s1, "rope", |T| {
            let x = T::cpu_storage_as_slice(s1)?;
            let (c, sn) = (contiguous::<T>(s2, l2)?, contiguous::<T>(s3, l3)?);
            Ok((
                T::to_cpu_storage_owned(rope_rows::<T>(self.inverse, x, &rows, t, c, sn)),
                shape,
            ))
        })
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let inv = Rope {
            inverse: !self.inverse,
        };
        Ok((Some(grad.apply_op3_no_bwd(cos, sin, &inv)?), None, None))
    }
}
