//! Numeric building blocks with two paths: composite ops that candle can differentiate
//! (used whenever a tensor tracks gradients) and candle's fused kernels, which have no
//! backward and would silently cut the graph, used only for inference tensors.

use candle_core::{DType, Result, Tensor, D};

/// Softmax over the last dimension.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    if !x.track_op() && x.dtype() != DType::F64 {
        return candle_nn::ops::softmax_last_dim(x);
    }
    // The shift is a constant for the gradient: softmax is invariant to it.
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// Log-softmax over the last dimension (always differentiable; used by the losses).
pub fn log_softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// RMSNorm: x / sqrt(mean(x²) + eps) * weight.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if !x.track_op() && !weight.track_op() && x.dtype() != DType::F64 {
        return candle_nn::ops::rms_norm(x, weight, eps as f32);
    }
    let d = x.dim(D::Minus1)? as f64;
    let ms = (x.sqr()?.sum_keepdim(D::Minus1)? / d)?;
    let inv = (ms + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&inv)?.broadcast_mul(weight)
}

/// Rotary position embedding, non-interleaved halves (the convention of candle's `rope`).
/// x: [B, H, T, hd]; cos/sin: [T, hd/2], or [B, T, hd/2] for per-row positions.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if !x.track_op() && x.dtype() != DType::F64 {
        return candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin);
    }
    let (cos, sin) = if cos.rank() == 3 {
        (&cos.unsqueeze(1)?, &sin.unsqueeze(1)?)
    } else {
        (cos, sin)
    };
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let a = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
    let b = (x2.broadcast_mul(cos)? + x1.broadcast_mul(sin)?)?;
    Tensor::cat(&[a, b], D::Minus1)
}

/// SiLU(gate) * up, with gate and up the two halves of the last dimension.
pub fn swiglu(gate_up: &Tensor) -> Result<Tensor> {
    let f = gate_up.dim(D::Minus1)? / 2;
    let gate = gate_up.narrow(D::Minus1, 0, f)?;
    let up = gate_up.narrow(D::Minus1, f, f)?;
    gate.silu()? * up
}

/// x [.., in] times w [out, in]ᵀ, flattening leading dimensions into one matmul.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dims = x.dims();
    let inner = dims[dims.len() - 1];
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let out = x.reshape((rows, inner))?.matmul(&w.t()?)?;
    let mut shape = dims.to_vec();
    *shape.last_mut().expect("rank >= 1") = w.dim(0)?;
    out.reshape(shape)
}

/// Per-row weighted negative log-likelihood: Σ_i w_i · (−log softmax(logits_i)[target_i]) / denom.
/// logits [N, V], targets [N] u32, weights [N] in the logits' dtype.
pub fn weighted_nll(
    logits: &Tensor,
    targets: &Tensor,
    weights: &Tensor,
    denom: f64,
) -> Result<Tensor> {
    let logp = log_softmax_last(logits)?;
    let picked = logp.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?;
    (picked * weights)?.sum_all()? * (-1.0 / denom)
}

/// Per-row NLL without reduction (evaluation).
pub fn token_nll(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logp = log_softmax_last(logits)?;
    logp.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?.neg()
}
