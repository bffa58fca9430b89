//! The output head and its cross-entropy as one training op (a fused linear cross-entropy):
//! the logits h·Wᵀ are made a block of rows at a time and turned at once into the rows'
//! weighted NLL and its gradient, whose products with W and with h are the gradients of h
//! and of W. The [N, V] logits and their gradient never exist whole, and the backward only
//! scales what the forward saved. This works because training's loss ends the graph: each
//! row's weight in it (w_i / denom) is known in the forward.

use super::bf16;
use super::core::{gemm_into, par_rows, product_dims, Out, Real};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use std::sync::Mutex;

/// Bytes of logits one block of rows may hold.
const BLOCK_BYTES: usize = 64 << 20;

/// Σ_i (w_i / denom) · (−log softmax(h_i·Wᵀ)[target_i]) as a scalar, differentiable in h
/// [.., d] and W [V, d] (CPU, f32). With `bf16` the three products take bf16 operands with
/// f32 sums, as `train.compute = "bf16"`'s linear layers do.
pub fn head_loss(
    h: &Tensor,
    w: &Tensor,
    targets: &[u32],
    weights: &[f32],
    denom: f64,
    bf16: bool,
) -> Result<Tensor> {
    let scale = weights.iter().map(|&x| (x as f64 / denom) as f32).collect();
    let op = HeadLoss {
        targets: targets.to_vec(),
        scale,
        bf16,
        grads: Mutex::new(None),
    };
    h.contiguous()?.apply_op2(&w.contiguous()?, op)
}

struct HeadLoss {
    targets: Vec<u32>,
    /// w_i / denom per row.
    scale: Vec<f32>,
    bf16: bool,
    /// d h and d W of the loss, from the forward until the backward takes them.
    grads: Mutex<Option<(Vec<f32>, Vec<f32>)>>,
}

impl CustomOp2 for HeadLoss {
    fn name(&self) -> &'static str {
        "fused-head-loss"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, d, v) = product_dims("head loss", l1.dims(), l2.dims())?;
        let (CpuStorage::F32(h), CpuStorage::F32(w)) = (s1, s2) else {
            candle_core::bail!("the fused head loss takes f32 tensors");
        };
        if !l1.is_contiguous() || !l2.is_contiguous() {
            candle_core::bail!("head loss: operands must be contiguous");
        }
        if self.targets.len() != n || self.scale.len() != n {
            candle_core::bail!(
                "head loss: {} targets and {} weights for {n} rows",
                self.targets.len(),
                self.scale.len()
            );
        }
        if let Some(bad) = self.targets.iter().find(|&&t| t as usize >= v) {
            candle_core::bail!("head loss: target {bad} is outside the vocabulary of {v}");
        }
        let h = &h[l1.start_offset()..l1.start_offset() + n * d];
        let w = &w[l2.start_offset()..l2.start_offset() + v * d];
        let (loss, dh, dw) = forward(h, w, &self.targets, &self.scale, (n, d, v), self.bf16);
        *self.grads.lock().expect("head loss lock") = Some((dh, dw));
        Ok((CpuStorage::F32(vec![loss as f32]), Shape::from(())))
    }

    fn bwd(
        &self,
        h: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let Some((dh, dw)) = self.grads.lock().expect("head loss lock").take() else {
            candle_core::bail!("head loss: one backward per forward");
        };
        let g = grad.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        let dev = h.device();
        let (dh, dw) = (
            Tensor::from_vec(dh, h.dims(), dev)?,
            Tensor::from_vec(dw, w.dims(), dev)?,
        );
        if g == 1.0 {
            return Ok((Some(dh), Some(dw)));
        }
        Ok((Some((dh * g)?), Some((dw * g)?)))
    }
}

/// The loss, d h [n·d] and d W [v·d], a block of rows at a time.
fn forward(
    h: &[f32],
    w: &[f32],
    targets: &[u32],
    scale: &[f32],
    (n, d, v): (usize, usize, usize),
    bf16: bool,
) -> (f64, Vec<f32>, Vec<f32>) {
    let block = (BLOCK_BYTES / 4 / v.max(1)).clamp(1, n.max(1));
    let mut dh = vec![0f32; n * d];
    let mut dw = vec![0f32; v * d];
    let mut loss = 0f64;
    for r0 in (0..n).step_by(block) {
        let m = block.min(n - r0);
        let hb = &h[r0 * d..(r0 + m) * d];
        // Logits [m, v] = h_b · Wᵀ (Wᵀ read in place).
        let mut g = product((hb, d, 1), (w, 1, d), (m, d, v), bf16);
        let rows = gradient_rows(&mut g, &targets[r0..r0 + m], &scale[r0..r0 + m], v);
        loss += rows.iter().map(|&x| x as f64).sum::<f64>();
        // d h_b = G · W; d W += Gᵀ · h_b (Gᵀ read in place).
        let dhb = product((&g, v, 1), (w, d, 1), (m, v, d), bf16);
        dh[r0 * d..(r0 + m) * d].copy_from_slice(&dhb);
        if bf16 {
            let part = bf16::matmul((&g, 1, v), (hb, d, 1), (v, m, d));
            let o = Out::new(&mut dw, d);
            par_rows(v, d, |i| {
                // SAFETY: row i is written by this call only.
                let dst = unsafe { o.row(i) };
                for (a, b) in dst.iter_mut().zip(&part[i * d..(i + 1) * d]) {
                    *a += b;
                }
            });
        } else {
            // SAFETY: dense row-major buffers of the stated shapes; dw aliases neither input.
            unsafe {
                gemm_into(
                    (v, d, m),
                    (dw.as_mut_ptr(), d as isize, 1),
                    true,
                    (g.as_ptr(), 1, v as isize),
                    (hb.as_ptr(), d as isize, 1),
                    gemm::Parallelism::Rayon(crate::runtime::threads()),
                )
            };
        }
    }
    (loss, dh, dw)
}

/// C [m×n] = A [m×k] · B [k×n], operands as (slice, row stride, column stride).
fn product(
    a: bf16::Strided,
    b: bf16::Strided,
    (m, k, n): (usize, usize, usize),
    bf16: bool,
) -> Vec<f32> {
    if bf16 {
        return bf16::matmul(a, b, (m, k, n));
    }
    let mut c = vec![0f32; m * n];
    if m * n * k > 0 {
        // SAFETY: the strides address only elements inside a and b; c is dense m×n.
        unsafe {
            gemm_into(
                (m, n, k),
                (c.as_mut_ptr(), n as isize, 1),
                false,
                (a.0.as_ptr(), a.1 as isize, a.2 as isize),
                (b.0.as_ptr(), b.1 as isize, b.2 as isize),
                gemm::Parallelism::Rayon(crate::runtime::threads()),
            )
        };
    }
    c
}

/// Each row of logits becomes s_i · (softmax − onehot(target_i)) in place; returns each
/// row's s_i · NLL_i. A row of weight 0 becomes zeros.
fn gradient_rows(g: &mut [f32], targets: &[u32], scale: &[f32], v: usize) -> Vec<f32> {
    let m = targets.len();
    let mut losses = vec![0f32; m];
    let (rows, out) = (Out::new(g, v), Out::new(&mut losses, 1));
    par_rows(m, v, |i| {
        // SAFETY: rows i of g and of the losses are written by this call only.
        let (row, loss) = unsafe { (rows.row(i), out.row(i)) };
        let (s, t) = (scale[i], targets[i] as usize);
        if s == 0.0 {
            row.fill(0.0);
            return;
        }
        let target = row[t];
        let max = f32::max_of(row);
        let sum = f32::exp_inplace_sum(row, max);
        loss[0] = s * (max + sum.ln() - target);
        let k = s / sum;
        row.iter_mut().for_each(|x| *x *= k);
        row[t] -= s;
    });
    losses
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{linear, linear_bf16, nll_rows};
    use candle_core::{Device, Var};

    /// The plain path: logits through the linear op, the per-row NLL, weighted and summed.
    fn plain(h: &Var, w: &Var, t: &[u32], wt: &[f32], denom: f64, bf16: bool) -> Tensor {
        let logits = match bf16 {
            true => linear_bf16(h.as_tensor(), w.as_tensor()),
            false => linear(h.as_tensor(), w.as_tensor()),
        }
        .unwrap();
        let n = t.len();
        let dev = h.device();
        let nll = nll_rows(&logits, &Tensor::from_slice(t, n, dev).unwrap()).unwrap();
        let wt = Tensor::from_slice(wt, n, dev).unwrap();
        ((nll * wt).unwrap().sum_all().unwrap() / denom).unwrap()
    }

    fn max_abs(a: &Tensor) -> f32 {
        a.abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn the_fused_head_loss_equals_the_linear_then_nll_path_in_value_and_gradients() {
        let dev = Device::Cpu;
        // A vocabulary that spans several blocks is out of reach of a unit test's memory,
        // so the block size is exercised by `blocks_of_rows_add_up` below.
        for bf16 in [false, true] {
            let (b, t, d, v) = (3, 5, 24, 37);
            let n = b * t;
            let h = Var::randn(0f32, 1.0, (b, t, d), &dev).unwrap();
            let w = Var::randn(0f32, 0.5, (v, d), &dev).unwrap();
            let targets: Vec<u32> = (0..n).map(|i| (i * 7 % v) as u32).collect();
            // One row out (weight 0), the others weighted unevenly.
            let weights: Vec<f32> = (0..n)
                .map(|i| if i == 4 { 0.0 } else { 0.5 + (i % 3) as f32 })
                .collect();
            let denom = 9.5;
            let want = plain(&h, &w, &targets, &weights, denom, bf16);
            let got = head_loss(
                h.as_tensor(),
                w.as_tensor(),
                &targets,
                &weights,
                denom,
                bf16,
            )
            .unwrap();
            let (lw, lg) = (
                want.to_scalar::<f32>().unwrap(),
                got.to_scalar::<f32>().unwrap(),
            );
            assert!(
                (lw - lg).abs() < 1e-5 * lw.abs().max(1.0),
                "bf16 {bf16}: loss {lg} vs {lw}"
            );
            // Through a scale after the op, as training's 1 / grad_accum is.
            let (gw, gg) = (
                (want * 0.5).unwrap().backward().unwrap(),
                (got * 0.5).unwrap().backward().unwrap(),
            );
            for (name, var) in [("h", &h), ("W", &w)] {
                let (a, b) = (gw.get(var).unwrap(), gg.get(var).unwrap());
                let scale = max_abs(a);
                // bf16 rounds the logits' gradient before its products in the fused op only.
                let tol = if bf16 { 1e-2 } else { 1e-5 } * scale.max(1e-3);
                let diff = max_abs(&(a - b).unwrap());
                assert!(
                    diff <= tol,
                    "bf16 {bf16}: d{name} differs by {diff} (scale {scale})"
                );
            }
        }
    }

    #[test]
    fn blocks_of_rows_add_up() {
        // The same loss and gradients from one block and from blocks of one row each.
        let (n, d, v) = (6, 8, 11);
        let h: Vec<f32> = (0..n * d)
            .map(|i| ((i * 37 % 17) as f32 - 8.0) / 9.0)
            .collect();
        let w: Vec<f32> = (0..v * d)
            .map(|i| ((i * 23 % 13) as f32 - 6.0) / 7.0)
            .collect();
        let t: Vec<u32> = (0..n).map(|i| (i * 5 % v) as u32).collect();
        let s = vec![0.25f32; n];
        let whole = forward(&h, &w, &t, &s, (n, d, v), false);
        let mut parts = (0f64, vec![0f32; n * d], vec![0f32; v * d]);
        for i in 0..n {
            let one = forward(
                &h[i * d..(i + 1) * d],
                &w,
                &t[i..i + 1],
                &s[i..i + 1],
                (1, d, v),
                false,
            );
            parts.0 += one.0;
            parts.1[i * d..(i + 1) * d].copy_from_slice(&one.1);
            parts.2.iter_mut().zip(&one.2).for_each(|(a, b)| *a += b);
        }
        assert!((whole.0 - parts.0).abs() < 1e-5);
        for (a, b) in whole
            .1
            .iter()
            .zip(&parts.1)
            .chain(whole.2.iter().zip(&parts.2))
        {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn a_second_backward_is_refused_and_bad_targets_are_errors() {
        let dev = Device::Cpu;
        let h = Var::randn(0f32, 1.0, (2, 4), &dev).unwrap();
        let w = Var::randn(0f32, 1.0, (5, 4), &dev).unwrap();
        let err = head_loss(
            h.as_tensor(),
            w.as_tensor(),
            &[1, 9],
            &[1.0, 1.0],
            2.0,
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("outside the vocabulary"), "{err}");
        let loss = head_loss(
            h.as_tensor(),
            w.as_tensor(),
            &[1, 3],
            &[1.0, 1.0],
            2.0,
            false,
        )
        .unwrap();
        loss.backward().unwrap();
        assert!(loss
            .backward()
            .unwrap_err()
            .to_string()
            .contains("one backward per forward"));
    }
}
