//! Cross-entropy over the vocabulary without materialising log-softmax: the forward pass
//! keeps one number per row (its NLL); the backward pass writes g·(softmax − onehot) directly.

use super::core::{contiguous, dispatch, par_rows, zeros, Out, Real, Rows};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, WithDType};

/// Per-row negative log-likelihood −log softmax(logits_i)[target_i]: logits [N, V] or
/// [.., V] with N rows in all (f32/f64 CPU, unit stride in V), targets [N] u32; returns [N].
/// Differentiable in the logits.
pub fn nll_rows(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    logits.apply_op2(targets, Nll)
}

fn targets_of<'a>(s: &'a CpuStorage, l: &Layout, n: usize, v: usize) -> Result<&'a [u32]> {
    let t = contiguous::<u32>(s, l)?;
    if t.len() != n {
        candle_core::bail!("nll: {} targets for {n} rows", t.len());
    }
    if let Some(bad) = t.iter().find(|&&x| x as usize >= v) {
        candle_core::bail!("nll: target {bad} is outside the vocabulary of {v}");
    }
    Ok(t)
}

/// Logits of any rank ≥ 2: the leading dimensions are the rows (so callers need no reshape
/// node, which would cost a full extra pass over the logits in the backward).
fn check_rank2(l: &Layout) -> Result<()> {
    if l.dims().len() < 2 {
        candle_core::bail!("nll: logits must be [.., V], got {:?}", l.dims());
    }
    Ok(())
}

struct Nll;

fn nll_fwd<T: Real>(x: &[T], rows: &Rows, t: &[u32]) -> Vec<T> {
    let mut out = zeros::<T>(rows.n);
    let o = Out::new(&mut out, 1);
    par_rows(rows.n, rows.len, |i| {
        let row = rows.row(x, i);
        let m = T::max_of(row);
        let lse = m + T::exp_sum(row, m).ln();
        // SAFETY: row i is written by this call only.
        unsafe { o.row(i)[0] = lse - row[t[i] as usize] };
    });
    out
}

impl CustomOp2 for Nll {
    fn name(&self) -> &'static str {
        "fused-nll"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        check_rank2(l1)?;
        let rows = Rows::new(l1)?;
        let t = targets_of(s2, l2, rows.n, rows.len)?;
        let shape = Shape::from(rows.n);
        dispatch!(s1, "nll", |T| {
            let x = T::cpu_storage_as_slice(s1)?;
            Ok((T::to_cpu_storage_owned(nll_fwd::<T>(x, &rows, t)), shape))
        })
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let aux = Tensor::stack(&[res, grad], 1)?;
        let g = logits.apply_op3_no_bwd(targets, &aux, &NllBwd)?;
        Ok((Some(g), None))
    }
}

/// d logits = g_i · (softmax(logits_i) − onehot(target_i)), with aux [N, 2] = (nll_i, g_i).
struct NllBwd;

fn nll_bwd<T: Real>(x: &[T], rows: &Rows, t: &[u32], aux: &[T]) -> Vec<T> {
    let mut out = zeros::<T>(rows.n * rows.len);
    let o = Out::new(&mut out, rows.len);
    par_rows(rows.n, rows.len, |i| {
        let g = aux[2 * i + 1];
        if g == T::ZERO {
            return; // weight 0: the row's gradient stays zero
        }
        let row = rows.row(x, i);
        let ti = t[i] as usize;
        // log-sum-exp recovered from the forward's NLL: lse = nll + logit[target].
        let lse = aux[2 * i] + row[ti];
        // SAFETY: row i is written by this call only.
        let dst = unsafe { o.row(i) };
        T::exp_shift_scale(row, lse, g, dst);
        dst[ti] -= g;
    });
    out
}

impl CustomOp3 for NllBwd {
    fn name(&self) -> &'static str {
        "fused-nll-bwd"
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
        check_rank2(l1)?;
        let rows = Rows::new(l1)?;
        let t = targets_of(s2, l2, rows.n, rows.len)?;
        let shape = l1.shape().clone();
        dispatch!(s1, "nll-bwd", |T| {
            let x = T::cpu_storage_as_slice(s1)?;
            let aux = contiguous::<T>(s3, l3)?;
            Ok((
                T::to_cpu_storage_owned(nll_bwd::<T>(x, &rows, t, aux)),
                shape,
            ))
        })
    }
}
