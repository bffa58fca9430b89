//! The optimizer's per-element updates (AdamW, the EMA of weights) as one in-place pass over
//! each parameter. Written with candle ops, an AdamW step is a dozen passes, each allocating
//! a tensor the size of the parameter; here the weight, both moments and the EMA copy are
//! updated where they lie. The arithmetic is the composite path's, operation for operation in
//! f32, so both give the same bits (`train::optim` keeps that path for other devices/dtypes).

use super::core::{par_blocks, with_f32};
use candle_core::{CpuStorage, InplaceOp1, Layout, Result, Tensor};
use std::cell::RefCell;

/// Elements per parallel unit (a fixed split: results do not depend on the thread count).
const CHUNK: usize = 16 * 1024;

/// AdamW's scalars for one step, as the composite path rounds them to f32.
#[derive(Clone, Copy, Debug)]
pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    /// 1 − β₁ᵗ and 1 − β₂ᵗ.
    pub bias1: f64,
    pub bias2: f64,
    pub eps: f64,
    pub lr: f64,
    /// Decoupled weight decay, 0 for parameters that take none.
    pub weight_decay: f64,
    /// Factor on the gradient (global-norm clipping's, 1 when the norm is within bounds):
    /// applied as the update reads each element, instead of a pass rewriting the gradient.
    pub grad_scale: f64,
}

/// Whether [`adamw`] and [`ema`] run on these tensors (CPU f32, contiguous).
pub fn supported(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && t.dtype() == candle_core::DType::F32 && t.is_contiguous())
}

/// Runs `f` once on a tensor's f32 elements, mutably (candle's in-place op holds its lock).
struct WithMut<F>(RefCell<Option<F>>);

impl<F: FnOnce(&mut [f32]) -> Result<()>> InplaceOp1 for WithMut<F> {
    fn name(&self) -> &'static str {
        "fused-optimizer-update"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let CpuStorage::F32(v) = storage else {
            candle_core::bail!("the fused optimizer update takes f32 tensors");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("the fused optimizer update takes contiguous tensors");
        };
        let f = self
            .0
            .borrow_mut()
            .take()
            .expect("an in-place op runs once");
        f(&mut v[start..end])
    }
}

fn with_mut(t: &Tensor, f: impl FnOnce(&mut [f32]) -> Result<()>) -> Result<()> {
    t.inplace_op1(&WithMut(RefCell::new(Some(f))))
}

/// Elements `lo..lo + len` of the f32 buffer at `ptr`.
///
/// # Safety
/// The range must lie in the buffer and no one else may use it meanwhile.
#[allow(clippy::mut_from_ref)]
unsafe fn part<'a>(ptr: usize, r: &std::ops::Range<usize>) -> &'a mut [f32] {
    std::slice::from_raw_parts_mut((ptr as *mut f32).add(r.start), r.len())
}

/// One AdamW step on `w` with gradient `g`, moments `m` and `v` updated in place. The caller
/// checks [`supported`]; the four tensors must have the same number of elements.
pub fn adamw(w: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, s: AdamW) -> Result<()> {
    let f = |x: f64| x as f32;
    let (b1, c1, b2, c2) = (f(s.beta1), f(1.0 - s.beta1), f(s.beta2), f(1.0 - s.beta2));
    let (inv1, inv2, eps, lr) = (f(1.0 / s.bias1), f(1.0 / s.bias2), f(s.eps), f(s.lr));
    let keep = (s.weight_decay > 0.0).then(|| f(1.0 - s.lr * s.weight_decay));
    let scale = f(s.grad_scale);
    with_f32(g, |g| {
        with_mut(m, |m| {
            with_mut(v, |v| {
                with_mut(w, |w| {
                    if [m.len(), v.len(), w.len()] != [g.len(); 3] {
                        candle_core::bail!("adamw: parameter, gradient and moments differ in size");
                    }
                    let ptrs = [w.as_mut_ptr(), m.as_mut_ptr(), v.as_mut_ptr()].map(|p| p as usize);
                    par_blocks(g.len(), CHUNK, |r| {
                        // SAFETY: block r is the only user of these elements of w, m and v.
                        let [w, m, v] = ptrs.map(|p| unsafe { part(p, &r) });
                        let g = &g[r];
                        for j in 0..g.len() {
                            let gj = g[j] * scale;
                            m[j] = m[j] * b1 + gj * c1;
                            v[j] = v[j] * b2 + gj * gj * c2;
                            let update = (m[j] * inv1) / ((v[j] * inv2).sqrt() + eps);
                            let wj = keep.map_or(w[j], |k| w[j] * k);
                            w[j] = wj - update * lr;
                        }
                    });
                    Ok(())
                })
            })
        })
    })
}

/// Σ g² over the elements of `g` in f64: one read pass (per-block sums, added in block order,
/// so the result does not depend on the thread count). The caller checks [`supported`].
pub fn sum_squares(g: &Tensor) -> Result<f64> {
    with_f32(g, |g| {
        let blocks = par_blocks(g.len(), CHUNK, |r| {
            g[r].iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>()
        });
        Ok(blocks.iter().sum())
    })
}

/// e ← e·d + w·(1 − d) in place. The caller checks [`supported`].
pub fn ema(e: &Tensor, w: &Tensor, d: f64) -> Result<()> {
    let (d, c) = (d as f32, (1.0 - d) as f32);
    with_f32(w, |w| {
        with_mut(e, |e| {
            if e.len() != w.len() {
                candle_core::bail!("ema: weights and average differ in size");
            }
            let ptr = e.as_mut_ptr() as usize;
            par_blocks(e.len(), CHUNK, |r| {
                // SAFETY: block r is the only user of these elements.
                let e = unsafe { part(ptr, &r) };
                for (e, &w) in e.iter_mut().zip(&w[r]) {
                    *e = *e * d + w * c;
                }
            });
            Ok(())
        })
    })
}
