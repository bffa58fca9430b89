//! A decoder-only transformer that knows nothing about diffusion: token embedding (the
//! vocabulary includes `[MASK]`), RoPE, pre-norm RMSNorm, SwiGLU, final RMSNorm, tied head.
//! Attention is causal, bidirectional or an explicit additive mask, so every objective
//! shares this one backbone.

pub mod engine;
pub mod fused;
pub mod kv_cache;
pub mod ops;
pub mod params;

use crate::config::ModelConfig;
use candle_core::{DType, Device, Result, Tensor};
pub use kv_cache::KvCache;
pub use params::Params;

/// Which keys each query may see.
#[derive(Debug, Clone, Copy)]
pub enum Attention<'a> {
    /// Query i sees keys ≤ i (offset by any cached prefix).
    Causal,
    /// Every query sees every key.
    Bidirectional,
    /// An additive bias [Tq, Tk] (0 = visible, −∞ = hidden) in the model's dtype.
    Mask(&'a Tensor),
}

#[derive(Clone)]
struct Layer {
    attn_norm: Tensor,
    /// [3d, d]: query, key and value projections fused into one matmul.
    wqkv: Tensor,
    wo: Tensor,
    ffn_norm: Tensor,
    /// [2f, d]: SwiGLU gate and up projections fused.
    w_gate_up: Tensor,
    w_down: Tensor,
}

#[derive(Clone)]
pub struct Transformer {
    pub cfg: ModelConfig,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    head: Option<Tensor>,
    cos: Tensor,
    sin: Tensor,
}

/// Parameter names and shapes in a fixed order (the order of checkpoints and optimizer state).
pub fn param_shapes(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (d, f, v) = (cfg.d_model, cfg.d_ff, cfg.vocab_size);
    let mut out = vec![("embed.weight".to_string(), vec![v, d])];
    for i in 0..cfg.n_layers {
        let p = format!("layers.{i}");
        out.push((format!("{p}.attn_norm.weight"), vec![d]));
        out.push((format!("{p}.attn.wqkv.weight"), vec![3 * d, d]));
        out.push((format!("{p}.attn.wo.weight"), vec![d, d]));
        out.push((format!("{p}.ffn_norm.weight"), vec![d]));
        out.push((format!("{p}.ffn.w_gate_up.weight"), vec![2 * f, d]));
        out.push((format!("{p}.ffn.w_down.weight"), vec![d, f]));
    }
    out.push(("norm.weight".to_string(), vec![d]));
    if !cfg.tie_embeddings {
        out.push(("head.weight".to_string(), vec![v, d]));
    }
    out
}

impl Transformer {
    /// Build from named tensors (plain tensors for inference, `Var`s for training).
    pub fn from_tensors(cfg: &ModelConfig, get: impl Fn(&str) -> Result<Tensor>) -> Result<Self> {
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let p = format!("layers.{i}");
            layers.push(Layer {
                attn_norm: get(&format!("{p}.attn_norm.weight"))?,
                wqkv: get(&format!("{p}.attn.wqkv.weight"))?,
                wo: get(&format!("{p}.attn.wo.weight"))?,
                ffn_norm: get(&format!("{p}.ffn_norm.weight"))?,
                w_gate_up: get(&format!("{p}.ffn.w_gate_up.weight"))?,
                w_down: get(&format!("{p}.ffn.w_down.weight"))?,
            });
        }
        let embed = get("embed.weight")?;
        let head = if cfg.tie_embeddings {
            None
        } else {
            Some(get("head.weight")?)
        };
        let (cos, sin) = rope_tables(cfg, embed.dtype(), embed.device())?;
        Ok(Self {
            cfg: cfg.clone(),
            embed,
            layers,
            norm: get("norm.weight")?,
            head,
            cos,
            sin,
        })
    }

    pub fn from_params(cfg: &ModelConfig, params: &Params) -> Result<Self> {
        Self::from_tensors(cfg, |n| params.tensor(n))
    }

    pub fn dtype(&self) -> DType {
        self.embed.dtype()
    }

    pub fn device(&self) -> &Device {
        self.embed.device()
    }

    /// Logits [B, T, V] for token ids [B, T]. With a cache, row r continues its cached
    /// prefix (positions start at the row's length) and its keys/values are appended.
    pub fn forward(
        &self,
        ids: &Tensor,
        attn: Attention,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        self.forward_ragged(ids, attn, cache, None)
    }

    /// Like `forward`, but row r holds only `valid[r]` real tokens followed by padding: the
    /// padding's outputs are meaningless and the cache keeps only the real tokens.
    pub fn forward_ragged(
        &self,
        ids: &Tensor,
        attn: Attention,
        mut cache: Option<&mut KvCache>,
        valid: Option<&[usize]>,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let lens: Vec<usize> = cache.as_ref().map_or(vec![0; b], |c| c.lens().to_vec());
        let valid_of = |r: usize| valid.map_or(t, |v| v[r]);
        for (r, &len) in lens.iter().enumerate() {
            if len + valid_of(r) > self.cfg.max_seq_len {
                candle_core::bail!(
                    "sequence of {} tokens exceeds the model's context of {}",
                    len + valid_of(r),
                    self.cfg.max_seq_len
                );
            }
        }
        let uniform = valid.is_none() && lens.iter().all(|&l| l == lens[0]);
        let mut x =
            self.embed
                .index_select(&ids.flatten_all()?, 0)?
                .reshape((b, t, self.cfg.d_model))?;
        // Per-row positions and masks only when rows differ; otherwise the fused causal path.
        let ragged: Option<Tensor>;
        let (cos, sin, mask) = if uniform {
            let offset = lens[0];
            let mask = match attn {
                Attention::Causal => (Some(offset), None),
                Attention::Bidirectional => (None, None),
                Attention::Mask(m) => (None, Some(m)),
            };
            (
                self.cos.narrow(0, offset, t)?,
                self.sin.narrow(0, offset, t)?,
                mask,
            )
        } else {
            // Padding positions are clamped to the table; the mask is [B, 1, T, Tk].
            let last = self.cfg.max_seq_len - 1;
            let pos: Vec<u32> = lens
                .iter()
                .flat_map(|&l| (0..t).map(move |i| (l + i).min(last) as u32))
                .collect();
            let pos = Tensor::from_vec(pos, b * t, x.device())?;
            let half = self.cfg.head_dim() / 2;
            let cos = self.cos.index_select(&pos, 0)?.reshape((b, t, half))?;
            let sin = self.sin.index_select(&pos, 0)?.reshape((b, t, half))?;
            ragged = match attn {
                Attention::Mask(m) => Some(m.clone()),
                _ => {
                    let causal = matches!(attn, Attention::Causal);
                    let valid: Vec<usize> = (0..b).map(valid_of).collect();
                    Some(ragged_bias(
                        &lens,
                        &valid,
                        t,
                        causal,
                        x.dtype(),
                        x.device(),
                    )?)
                }
            };
            (cos, sin, (None, ragged.as_ref()))
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let h = ops::rms_norm(&x, &layer.attn_norm, self.cfg.norm_eps)?;
            let a = self.attention(layer, &h, &cos, &sin, mask, i, cache.as_deref_mut())?;
            x = (x + a)?;
            let h = ops::rms_norm(&x, &layer.ffn_norm, self.cfg.norm_eps)?;
            let f = ops::linear(
                &ops::swiglu(&ops::linear(&h, &layer.w_gate_up)?)?,
                &layer.w_down,
            )?;
            x = (x + f)?;
        }
        if let Some(c) = cache {
            c.advance(t, valid);
        }
        let x = ops::rms_norm(&x, &self.norm, self.cfg.norm_eps)?;
        ops::linear(&x, self.head.as_ref().unwrap_or(&self.embed))
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        layer: &Layer,
        h: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: (Option<usize>, Option<&Tensor>),
        index: usize,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let (b, t, d) = h.dims3()?;
        let (nh, hd) = (self.cfg.n_heads, self.cfg.head_dim());
        let scale = 1.0 / (hd as f64).sqrt();
        let qkv = ops::linear(h, &layer.wqkv)?;
        if cache.is_none() {
            if let Some(out) = ops::attention(&qkv, cos, sin, nh, scale, mask)? {
                return ops::linear(&out, &layer.wo);
            }
        }
        let qkv = qkv.reshape((b, t, 3, nh, hd))?;
        // Views [b, nh, t, hd] into qkv; rope reads them strided and returns them contiguous.
        let split =
            |i: usize| -> Result<Tensor> { qkv.narrow(2, i, 1)?.squeeze(2)?.transpose(1, 2) };
        let q = ops::rope(&split(0)?, cos, sin)?.contiguous()?;
        let k = ops::rope(&split(1)?, cos, sin)?.contiguous()?;
        let v = split(2)?.contiguous()?;
        let (k, v) = match cache {
            Some(c) => c.append(index, &k, &v)?,
            None => (k, v),
        };
        let probs = ops::attention_softmax(&q.matmul(&k.t()?)?, scale, mask.0, mask.1)?;
        let out = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, d))?;
        ops::linear(&out, &layer.wo)
    }
}

/// Additive causal bias [t, offset + t] for queries at positions offset..offset+t.
pub fn causal_bias(t: usize, offset: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let tk = offset + t;
    let data: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..tk).map(move |j| {
                if j <= offset + i {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Tensor::from_vec(data, (t, tk), device)?.to_dtype(dtype)
}

/// Additive bias [B, 1, t, max_len + t] for rows with their own cached lengths. Row r's query
/// i sits at position lens[r] + i; causally it sees keys up to itself, bidirectionally every
/// real key of the row (padding queries see up to themselves, so no row is all −∞).
pub fn ragged_bias(
    lens: &[usize],
    valid: &[usize],
    t: usize,
    causal: bool,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let tk = lens.iter().max().copied().unwrap_or(0) + t;
    let mut data = Vec::with_capacity(lens.len() * t * tk);
    for (r, &len) in lens.iter().enumerate() {
        for i in 0..t {
            let visible = if causal {
                len + i + 1
            } else {
                len + valid[r].max(i + 1)
            };
            data.extend((0..tk).map(|j| if j < visible { 0f32 } else { f32::NEG_INFINITY }));
        }
    }
    Tensor::from_vec(data, (lens.len(), 1, t, tk), device)?.to_dtype(dtype)
}

fn rope_tables(cfg: &ModelConfig, dtype: DType, device: &Device) -> Result<(Tensor, Tensor)> {
    let half = cfg.head_dim() / 2;
    let inv: Vec<f64> = (0..half)
        .map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / cfg.head_dim() as f64))
        .collect();
    let mut cos = Vec::with_capacity(cfg.max_seq_len * half);
    let mut sin = Vec::with_capacity(cfg.max_seq_len * half);
    for p in 0..cfg.max_seq_len {
        for f in &inv {
            let a = p as f64 * f;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    let shape = (cfg.max_seq_len, half);
    Ok((
        Tensor::from_vec(cos, shape, device)?.to_dtype(dtype)?,
        Tensor::from_vec(sin, shape, device)?.to_dtype(dtype)?,
    ))
}

/// Explicit positions, kept apart from the cached decoding path above.
impl Transformer {
    /// Logits for ids [B, T] whose RoPE positions are given explicitly (one position per
    /// column, shared by the rows), without a cache. BD3LM trains on x_t ⊕ x_0 with both
    /// halves at positions 0..L−1. Only the first `head_len` columns get logits
    /// ([B, head_len, V]); the others serve as keys and values only.
    pub fn forward_at(
        &self,
        ids: &Tensor,
        positions: &[u32],
        attn: Attention,
        head_len: usize,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        if positions.len() != t || head_len > t {
            candle_core::bail!(
                "forward_at: {} positions and {head_len} logit columns for {t} tokens",
                positions.len()
            );
        }
        if let Some(&p) = positions
            .iter()
            .find(|&&p| p as usize >= self.cfg.max_seq_len)
        {
            candle_core::bail!(
                "position {p} exceeds the model's context of {}",
                self.cfg.max_seq_len
            );
        }
        let mut x =
            self.embed
                .index_select(&ids.flatten_all()?, 0)?
                .reshape((b, t, self.cfg.d_model))?;
        let pos = Tensor::from_slice(positions, t, x.device())?;
        let cos = self.cos.index_select(&pos, 0)?;
        let sin = self.sin.index_select(&pos, 0)?;
        let mask = match attn {
            Attention::Causal => (Some(0), None),
            Attention::Bidirectional => (None, None),
            Attention::Mask(m) => (None, Some(m)),
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let h = ops::rms_norm(&x, &layer.attn_norm, self.cfg.norm_eps)?;
            x = (&x + self.attention(layer, &h, &cos, &sin, mask, i, None)?)?;
            let h = ops::rms_norm(&x, &layer.ffn_norm, self.cfg.norm_eps)?;
            let f = ops::linear(
                &ops::swiglu(&ops::linear(&h, &layer.w_gate_up)?)?,
                &layer.w_down,
            )?;
            x = (x + f)?;
        }
        let x = if head_len < t {
            x.narrow(1, 0, head_len)?.contiguous()?
        } else {
            x
        };
        let x = ops::rms_norm(&x, &self.norm, self.cfg.norm_eps)?;
        ops::linear(&x, self.head.as_ref().unwrap_or(&self.embed))
    }
}
