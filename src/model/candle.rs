//! The candle backend of the recipe: tensors on any device, differentiable (training), with
//! an optional [`KvCache`] (decoding off the host backend). Each step goes through `ops`,
//! which picks the fused CPU kernel or the composite candle path.

use super::layer::Compute;
use super::visibility::Visibility;
use super::{ops, KvCache, Weight};
use crate::config::{ComputeDtype, ModelConfig};
use candle_core::{Result, Tensor};

/// One pass's context: RoPE tables of its positions, its visibility and cache.
pub(crate) struct CandleCompute<'a> {
    pub cfg: &'a ModelConfig,
    /// [T, hd/2] shared by the rows, or [B, T, hd/2] per row.
    pub cos: Tensor,
    pub sin: Tensor,
    pub vis: Visibility,
    pub cache: Option<&'a mut KvCache>,
    /// Only the first `head_len` positions get logits.
    pub head_len: Option<usize>,
    pub compute: ComputeDtype,
}

impl Compute for CandleCompute<'_> {
    type W = Weight;
    type Act = Tensor;

    fn norm(&mut self, x: &Tensor, w: &Weight) -> Result<Tensor> {
        ops::rms_norm(x, w.dense()?, self.cfg.norm_eps)
    }

    fn linear(&mut self, x: Tensor, w: &Weight) -> Result<Tensor> {
        w.linear_in(&x, self.compute)
    }

    fn bias(&mut self, x: Tensor, b: &Weight) -> Result<Tensor> {
        x.broadcast_add(b.dense()?)
    }

    fn head_norm(&mut self, qkv: Tensor, q_norm: &Weight, k_norm: &Weight) -> Result<Tensor> {
        let heads = self.cfg.heads();
        let dims = qkv.dims().to_vec();
        let rows = qkv.elem_count() / heads.qkv_width();
        let split = qkv.reshape((rows, heads.q + 2 * heads.kv, heads.dim))?;
        let part = |first: usize, n: usize| split.narrow(1, first, n)?.contiguous();
        let eps = self.cfg.norm_eps;
        let q = ops::rms_norm(&part(0, heads.q)?, q_norm.dense()?, eps)?;
        let k = ops::rms_norm(&part(heads.q, heads.kv)?, k_norm.dense()?, eps)?;
        let v = part(heads.q + heads.kv, heads.kv)?;
        Tensor::cat(&[q, k, v], 1)?.reshape(dims)
    }

    fn attention(&mut self, qkv: Tensor, layer: usize) -> Result<Tensor> {
        let heads = self.cfg.heads();
        let scale = 1.0 / (heads.dim as f64).sqrt();
        if self.cache.is_none() {
            if let Some(out) = ops::attention(&qkv, &self.cos, &self.sin, heads, scale, &self.vis)?
            {
                return Ok(out);
            }
        }
        let (b, t, _) = qkv.dims3()?;
        let qkv = qkv.reshape((b, t, heads.q + 2 * heads.kv, heads.dim))?;
        // Views [b, heads, t, hd] into qkv; rope reads them strided and returns them contiguous.
        let split = |first: usize, n: usize| qkv.narrow(2, first, n)?.transpose(1, 2);
        let q = ops::rope(&split(0, heads.q)?, &self.cos, &self.sin)?.contiguous()?;
        let k = ops::rope(&split(heads.q, heads.kv)?, &self.cos, &self.sin)?.contiguous()?;
        let v = split(heads.q + heads.kv, heads.kv)?.contiguous()?;
        let (k, v) = match self.cache.as_deref_mut() {
            Some(c) => c.append(layer, &k, &v)?,
            None => (k, v),
        };
        let (k, v) = (
            repeat_kv(k, heads.q / heads.kv)?,
            repeat_kv(v, heads.q / heads.kv)?,
        );
        let probs = ops::attention_softmax(&q.matmul(&k.t()?)?, scale, &self.vis)?;
        probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, t, heads.q_width()))
    }

    fn swiglu(&mut self, gate_up: Tensor) -> Result<Tensor> {
        ops::swiglu(&gate_up)
    }

    fn add(&mut self, x: Tensor, y: Tensor) -> Result<Tensor> {
        x + y
    }

    fn head_rows(&mut self, x: Tensor) -> Result<Tensor> {
        match self.head_len {
            Some(n) if n < x.dim(1)? => x.narrow(1, 0, n)?.contiguous(),
            _ => Ok(x),
        }
    }
}

/// Key/value heads [B, kv, T, hd] repeated for the `group` query heads that read each.
fn repeat_kv(x: Tensor, group: usize) -> Result<Tensor> {
    if group == 1 {
        return Ok(x);
    }
    let (b, kv, t, hd) = x.dims4()?;
    x.unsqueeze(2)?
        .expand((b, kv, group, t, hd))?
        .reshape((b, kv * group, t, hd))
}
