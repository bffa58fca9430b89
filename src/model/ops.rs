//! Numeric building blocks, in three implementations picked per call:
//! - CPU f32/f64 tensors run the kernels of [`crate::kernels`], which have their own backward
//!   (training and inference alike);
//! - elsewhere, tensors that track gradients run [`composite`] ops candle can differentiate;
//! - elsewhere, inference tensors run candle's fused kernels, which have no backward and would
//!   silently cut the graph.

use super::visibility::Visibility;
use crate::config::Heads;
use crate::kernels;
use candle_core::{DType, Result, Tensor};

/// Softmax over the last dimension.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    if kernels::supported(x) {
        return kernels::softmax_last(x, 1.0, None);
    }
    if !x.track_op() && x.dtype() != DType::F64 {
        return candle_nn::ops::softmax_last_dim(x);
    }
    composite::softmax_last(x)
}

/// Attention probabilities softmax(scale·scores + mask) over the keys: scores [.., Tq, Tk]
/// under the pass's visibility (a bias broadcasts over the leading dimensions).
pub fn attention_softmax(scores: &Tensor, scale: f64, vis: &Visibility) -> Result<Tensor> {
    if kernels::supported(scores) {
        return match vis {
            Visibility::Causal { offset } => kernels::softmax_last(scores, scale, Some(*offset)),
            Visibility::Full => kernels::softmax_last(scores, scale, None),
            Visibility::Bias(b) => {
                kernels::softmax_last(&(scores * scale)?.broadcast_add(b)?, 1.0, None)
            }
        };
    }
    softmax_last(&composite::attention_logits(scores, scale, vis)?)
}

/// Multi-head attention from the fused projection qkv [B, T, qkv width] to the heads'
/// outputs [B, T, q width] in one fused kernel (RoPE with cos/sin [T, hd/2], scale, mask,
/// softmax, value sum), or None where the kernel does not apply (off CPU, per-row positions,
/// a causal offset, a per-row mask): the caller then runs the unfused path.
pub fn attention(
    qkv: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    heads: Heads,
    scale: f64,
    vis: &Visibility,
) -> Result<Option<Tensor>> {
    if !kernels::supported(qkv) || cos.rank() != 2 || cos.dtype() != qkv.dtype() {
        return Ok(None);
    }
    let mask = match vis {
        Visibility::Causal { offset: 0 } => kernels::Mask::Causal,
        Visibility::Full => kernels::Mask::Full,
        Visibility::Bias(b) if b.rank() == 2 => kernels::Mask::Bias(b.clone()),
        _ => return Ok(None),
    };
    kernels::attention(qkv, cos, sin, heads, scale, &mask).map(Some)
}

/// Log-softmax over the last dimension (always differentiable).
pub fn log_softmax_last(x: &Tensor) -> Result<Tensor> {
    composite::log_softmax_last(x)
}

/// RMSNorm: x / sqrt(mean(x²) + eps) * weight.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if kernels::supported(x) && weight.dtype() == x.dtype() && weight.device().is_cpu() {
        return kernels::rms_norm(x, weight, eps);
    }
    if !x.track_op() && !weight.track_op() && x.dtype() != DType::F64 {
        return candle_nn::ops::rms_norm(x, weight, eps as f32);
    }
    composite::rms_norm(x, weight, eps)
}

/// Rotary position embedding, non-interleaved halves (the convention of candle's `rope`).
/// x: [B, H, T, hd] (any strides with a unit last stride); cos/sin: [T, hd/2], or
/// [B, T, hd/2] for per-row positions.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if kernels::supported(x) && cos.rank() == 2 && cos.dtype() == x.dtype() && cos.device().is_cpu()
    {
        return kernels::rope(x, cos, sin);
    }
    if !x.track_op() && x.dtype() != DType::F64 {
        return candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin);
    }
    composite::rope(x, cos, sin)
}

/// SiLU(gate) * up, with gate and up the two halves of the last dimension.
pub fn swiglu(gate_up: &Tensor) -> Result<Tensor> {
    if kernels::supported(gate_up) {
        return kernels::swiglu(gate_up);
    }
    composite::swiglu(gate_up)
}

/// x [.., in] times w [out, in]ᵀ, flattening leading dimensions into one matmul.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    linear_in(x, w, crate::config::ComputeDtype::F32)
}

/// [`linear`] computed in `compute` on the training path (tracked f32 CPU tensors; anything
/// else takes the f32 paths).
pub fn linear_in(x: &Tensor, w: &Tensor, compute: crate::config::ComputeDtype) -> Result<Tensor> {
    if (x.track_op() || w.track_op()) && kernels::supported(x) && w.dtype() == x.dtype() {
        if compute == crate::config::ComputeDtype::Bf16 && x.dtype() == DType::F32 {
            return kernels::linear_bf16(x, w);
        }
        return kernels::linear(x, w);
    }
    let dims = x.dims();
    let inner = dims[dims.len() - 1];
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let x2 = x.reshape((rows, inner))?;
    // Decoding steps (a few rows, no gradient): read the weights once instead of packing them.
    let small = (1..=kernels::SMALL_MATMUL_ROWS).contains(&rows)
        && !x.track_op()
        && !w.track_op()
        && x.dtype() == DType::F32
        && w.dtype() == DType::F32
        && x.device().is_cpu();
    let out = if small {
        kernels::small_matmul(&x2, w)?
    } else {
        x2.matmul(&w.t()?)?
    };
    let mut shape = dims.to_vec();
    *shape.last_mut().expect("rank >= 1") = w.dim(0)?;
    out.reshape(shape)
}

/// Per-row weighted negative log-likelihood: Σ_i w_i · (−log softmax(logits_i)[target_i]) / denom.
/// logits [N, V] (or [.., V] with N rows: the fused kernel needs no reshape), targets [N] u32,
/// weights [N] in the logits' dtype.
pub fn weighted_nll(
    logits: &Tensor,
    targets: &Tensor,
    weights: &Tensor,
    denom: f64,
) -> Result<Tensor> {
    if kernels::supported(logits) {
        let nll = kernels::nll_rows(logits, targets)?;
        return (nll * weights)?.sum_all()? * (1.0 / denom);
    }
    let v = logits.dim(candle_core::D::Minus1)?;
    composite::weighted_nll(&logits.reshape(((), v))?, targets, weights, denom)
}

/// Training's loss from the final hidden states: Σ_i w_i · (−log softmax(h_i·Wᵀ)[target_i]) /
/// denom for h [.., d] and the head W [V, d]. On CPU f32 one fused op (`kernels::head_loss`:
/// the logits never exist whole); elsewhere, or with `CARD_PLAIN_HEAD=1` (to measure one
/// against the other), the head's linear, then [`weighted_nll`].
pub fn head_loss(
    h: &Tensor,
    w: &Tensor,
    targets: &[u32],
    weights: &[f32],
    denom: f64,
    compute: crate::config::ComputeDtype,
) -> Result<Tensor> {
    let fused = std::env::var_os("CARD_PLAIN_HEAD").is_none();
    if fused && h.device().is_cpu() && h.dtype() == DType::F32 && w.dtype() == DType::F32 {
        let bf16 = compute == crate::config::ComputeDtype::Bf16;
        return kernels::head_loss(h, w, targets, weights, denom, bf16);
    }
    let logits = linear_in(h, w, compute)?;
    let dev = h.device();
    let n = targets.len();
    let targets = Tensor::from_slice(targets, n, dev)?;
    let weights = Tensor::from_slice(weights, n, dev)?.to_dtype(h.dtype())?;
    weighted_nll(&logits, &targets, &weights, denom)
}

/// Per-row NLL without reduction (evaluation).
pub fn token_nll(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if kernels::supported(logits) {
        return kernels::nll_rows(logits, targets);
    }
    composite::token_nll(logits, targets)
}

/// The differentiable reference implementations, built from candle ops only (the fallback
/// off CPU, and the reference the fused kernels are tested against).
pub mod composite {
    use crate::model::visibility::{causal_bias, Visibility};
    use candle_core::{Result, Tensor, D};

    pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
        // The shift is a constant for the gradient: softmax is invariant to it.
        let max = x.max_keepdim(D::Minus1)?.detach();
        let e = x.broadcast_sub(&max)?.exp()?;
        e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
    }

    /// scale·scores with the visibility's mask added (see `attention_softmax`).
    pub fn attention_logits(scores: &Tensor, scale: f64, vis: &Visibility) -> Result<Tensor> {
        let s = (scores * scale)?;
        match vis {
            Visibility::Causal { offset } => {
                let (tq, tk) = (s.dim(D::Minus2)?, s.dim(D::Minus1)?);
                if tk > offset + 1 {
                    let mask = causal_bias(tq, *offset, s.dtype(), s.device())?;
                    return s.broadcast_add(&mask);
                }
                Ok(s)
            }
            Visibility::Full => Ok(s),
            Visibility::Bias(b) => s.broadcast_add(b),
        }
    }

    pub fn attention_softmax(scores: &Tensor, scale: f64, vis: &Visibility) -> Result<Tensor> {
        softmax_last(&attention_logits(scores, scale, vis)?)
    }

    pub fn log_softmax_last(x: &Tensor) -> Result<Tensor> {
        let max = x.max_keepdim(D::Minus1)?.detach();
        let shifted = x.broadcast_sub(&max)?;
        let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
        shifted.broadcast_sub(&lse)
    }

    pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
        let d = x.dim(D::Minus1)? as f64;
        let ms = (x.sqr()?.sum_keepdim(D::Minus1)? / d)?;
        let inv = (ms + eps)?.sqrt()?.recip()?;
        x.broadcast_mul(&inv)?.broadcast_mul(weight)
    }

    pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
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

    pub fn swiglu(gate_up: &Tensor) -> Result<Tensor> {
        let f = gate_up.dim(D::Minus1)? / 2;
        let gate = gate_up.narrow(D::Minus1, 0, f)?;
        let up = gate_up.narrow(D::Minus1, f, f)?;
        gate.silu()? * up
    }

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

    pub fn token_nll(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let logp = log_softmax_last(logits)?;
        logp.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?.neg()
    }
}
