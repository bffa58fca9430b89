//! A linear layer x·wᵀ as one graph node. Candle's backward allocates a zero gradient and
//! adds into it for every node, so the reshape → transpose → matmul → reshape chain of a
//! plain `linear` costs four full passes over the activations in every backward; this op
//! is one node whose backward is two matmuls.

use super::bf16;
use super::core::{product_dims, with_f32};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

/// x [.., in] · w [out, in]ᵀ → [.., out], differentiable in both (CPU, f32/f64).
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&w.contiguous()?, Linear { bf16: false })
}

/// The same product with bf16 operands and f32 sums, forward and backward (CPU, f32):
/// `train.compute = "bf16"` (see `bf16.rs`).
pub fn linear_bf16(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&w.contiguous()?, Linear { bf16: true })
}

struct Linear {
    bf16: bool,
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "fused-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (m, k, n) = product_dims("linear", l1.dims(), l2.dims())?;
        if !l1.is_contiguous() || !l2.is_contiguous() {
            candle_core::bail!("linear: operands must be contiguous");
        }
        let mut shape = l1.dims().to_vec();
        *shape.last_mut().expect("rank >= 1") = n;
        if self.bf16 {
            let (CpuStorage::F32(x), CpuStorage::F32(w)) = (s1, s2) else {
                candle_core::bail!("the bf16 linear takes f32 tensors");
            };
            let x = &x[l1.start_offset()..l1.start_offset() + m * k];
            let w = &w[l2.start_offset()..l2.start_offset() + n * k];
            // B = wᵀ: element (kk, j) is w[j·k + kk].
            let c = bf16::matmul((x, k, 1), (w, 1, k), (m, k, n));
            return Ok((CpuStorage::F32(c), Shape::from(shape)));
        }
        let lhs = Layout::contiguous_with_offset((m, k), l1.start_offset());
        let rhs = l2.transpose(0, 1)?;
        let out = s1.matmul(s2, (1, m, n, k), &lhs, &rhs)?;
        Ok((out, Shape::from(shape)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (m, k, n) = product_dims("linear", x.dims(), w.dims())?;
        let (x, w) = (x.detach(), w.detach());
        if self.bf16 {
            let g = grad.contiguous()?;
            let dev = x.device();
            // dx = g · w; dw = gᵀ · x (gᵀ read in place: element (i, kk) is g[kk·n + i]).
            let dx = with_f32(&g, |g| {
                with_f32(&w, |w| Ok(bf16::matmul((g, n, 1), (w, k, 1), (m, n, k))))
            })?;
            let dw = with_f32(&g, |g| {
                with_f32(&x, |x| Ok(bf16::matmul((g, 1, n), (x, k, 1), (n, m, k))))
            })?;
            let dx = Tensor::from_vec(dx, x.dims(), dev)?;
            let dw = Tensor::from_vec(dw, (n, k), dev)?;
            return Ok((Some(dx), Some(dw)));
        }
        let g = grad.reshape((m, n))?;
        let dx = g.matmul(&w)?.reshape(x.dims())?;
        let dw = g.t()?.matmul(&x.reshape((m, k))?)?;
        Ok((Some(dx), Some(dw)))
    }
}
