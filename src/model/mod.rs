//! A decoder-only transformer that knows nothing about diffusion: token embedding (the
//! vocabulary includes `[MASK]`), RoPE, pre-norm RMSNorm, SwiGLU, final RMSNorm, tied head.
//! Attention is causal, bidirectional or an explicit additive mask, so every objective
//! shares this one backbone.
//!
//! The recipe is written once (`layer.rs`) and run by two backends: candle tensors
//! (`candle.rs`: training, any device, cached decoding with [`KvCache`]) and host slices
//! (`host.rs`: allocation-free decoding of f32 CPU models). [`Session`] is a cached model for
//! the causal decoders, on the [`Backend`] chosen for it.

mod candle;
pub mod host;
pub mod kv_cache;
pub mod layer;
pub mod ops;
pub mod params;
pub mod session;
pub mod visibility;
pub mod weight;

use self::candle::CandleCompute;
use crate::config::{ComputeDtype, ModelConfig};
use candle_core::{DType, Device, Result, Tensor};
pub use kv_cache::{KvCache, RowLens};
pub use layer::{tensor_specs, Init, TensorSpec, Weights};
pub use params::Params;
pub use session::{padded, Backend, Session};
pub use visibility::{Attention, Tree, Visibility};
pub use weight::{QMatrix, Weight};

#[derive(Clone)]
pub struct Transformer {
    pub cfg: ModelConfig,
    pub(crate) weights: Weights<Weight>,
    /// RoPE tables [max_seq_len, hd/2].
    pub(crate) cos: Tensor,
    pub(crate) sin: Tensor,
    /// What the training path's linear layers compute in (`train.compute`); inference and
    /// cached decoding always run their own f32 paths.
    pub compute: ComputeDtype,
    /// What the host backend's products of packed blocks take as input rows.
    pub activations: Activations,
}

/// The activations a decoding pass multiplies packed weight blocks with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activations {
    /// f32, as computed: the product of the expanded weights (the reference).
    #[default]
    Exact,
    /// Rounded to 8 bits per group of 256 values, for integer dot products
    /// (`kernels/int8.rs`; Q4_0, Q4_1 and Q8_0 blocks, others stay exact).
    Int8,
}

impl Transformer {
    /// Build from named tensors (plain tensors for inference, `Var`s for training); every
    /// tensor must have the shape the config gives it.
    pub fn from_tensors(cfg: &ModelConfig, get: impl Fn(&str) -> Result<Tensor>) -> Result<Self> {
        let specs = tensor_specs(cfg);
        let mut tensors = Vec::with_capacity(specs.len());
        for s in &specs {
            let t = get(&s.name)?;
            if t.dims() != s.shape.as_slice() {
                candle_core::bail!(
                    "tensor {} has shape {:?}, the config expects {:?}",
                    s.name,
                    t.dims(),
                    s.shape
                );
            }
            tensors.push(t);
        }
        let weights = Weights::from_ordered(cfg, tensors).expect("one tensor per spec");
        Self::from_weights(
            cfg,
            weights
                .map(|t| Some(Weight::Dense(t.clone())))
                .expect("dense"),
        )
    }

    /// Build from weights in the recipe's layout (dense or quantized), checking every shape.
    pub fn from_weights(cfg: &ModelConfig, weights: Weights<Weight>) -> Result<Self> {
        let specs = tensor_specs(cfg);
        let mut given = Vec::with_capacity(specs.len());
        weights.map(|w| {
            given.push(w.dims());
            Some(())
        });
        for (s, dims) in specs.iter().zip(&given) {
            if dims != &s.shape {
                candle_core::bail!(
                    "tensor {} has shape {dims:?}, the config expects {:?}",
                    s.name,
                    s.shape
                );
            }
        }
        let (dtype, device) = match &weights.norm {
            Weight::Dense(t) => (t.dtype(), t.device().clone()),
            Weight::Quant(_) => candle_core::bail!("norm weights must be dense"),
        };
        let (cos, sin) = rope_tables(cfg, dtype, &device)?;
        Ok(Self {
            cfg: cfg.clone(),
            weights,
            cos,
            sin,
            compute: ComputeDtype::F32,
            activations: Activations::Exact,
        })
    }

    /// Bytes of every weight as held (quantized blocks at their size).
    pub fn weight_bytes(&self) -> usize {
        let mut n = 0;
        self.weights.map(|w| {
            n += match w {
                Weight::Dense(t) => t.elem_count() * t.dtype().size_in_bytes(),
                Weight::Quant(q) => q.size_in_bytes(),
            };
            Some(())
        });
        n
    }

    /// How the matrices are held: "f32", or their block types, e.g. "q4_1+q8_0".
    pub fn weights_label(&self) -> String {
        let mut names: Vec<String> = Vec::new();
        self.weights.map(|w| {
            let name = match w {
                Weight::Dense(t) if t.rank() == 2 => format!("{:?}", t.dtype()).to_lowercase(),
                Weight::Dense(_) => return Some(()),
                Weight::Quant(q) => q.dtype_name(),
            };
            if !names.contains(&name) {
                names.push(name);
            }
            Some(())
        });
        let int8 = self.activations == Activations::Int8 && self.has_int8_blocks();
        names.join("+") + if int8 { " int8" } else { "" }
    }

    /// Whether some matrix is held in blocks the int8 path multiplies.
    fn has_int8_blocks(&self) -> bool {
        let mut any = false;
        self.weights.map(|w| {
            if let Weight::Quant(q) = w {
                let parts = q.host_parts().unwrap_or_default();
                any |= parts.iter().any(|p| crate::kernels::int8::takes(p.0));
            }
            Some(())
        });
        any
    }

    /// The same model decoding with its activations rounded to 8 bits for the packed blocks
    /// that have an integer path.
    pub fn with_int8(&self) -> Self {
        Self {
            activations: Activations::Int8,
            ..self.clone()
        }
    }

    /// Whether any matrix is held quantized.
    pub fn is_quantized(&self) -> bool {
        let mut quant = false;
        self.weights.map(|w| {
            quant |= matches!(w, Weight::Quant(_));
            Some(())
        });
        quant
    }

    /// The same model with every weight expanded to dense f32 (the reference of a quantized one).
    pub fn dequantized(&self) -> Result<Self> {
        let mut err = None;
        let weights = self.weights.map(|w| match w.to_dense() {
            Ok(t) => Some(Weight::Dense(t)),
            Err(e) => {
                err = Some(e);
                None
            }
        });
        match weights {
            Some(w) => Self::from_weights(&self.cfg, w),
            None => Err(err.expect("an error")),
        }
    }

    /// The same model with every matrix rounded to bf16 blocks (norms and biases stay f32):
    /// for decoding on the host backend, which reads half the bytes of f32 per token.
    pub fn to_bf16(&self) -> Result<Self> {
        self.to_blocks(candle_core::quantized::GgmlDType::BF16)
    }

    /// The same model with every dense matrix in `dtype` blocks (norms and biases stay f32;
    /// each matrix's rows must hold whole blocks).
    pub fn to_blocks(&self, dtype: candle_core::quantized::GgmlDType) -> Result<Self> {
        let mut err = None;
        let weights = self.weights.map(|w| {
            let done = match w {
                Weight::Dense(t) if t.rank() == 2 => {
                    { candle_core::quantized::QTensor::quantize(t, dtype) }
                        .and_then(|q| QMatrix::new(vec![q]))
                        .map(|q| Weight::Quant(std::sync::Arc::new(q)))
                }
                other => Ok(other.clone()),
            };
            done.map_err(|e| err = Some(e)).ok()
        });
        match weights {
            Some(w) => Self::from_weights(&self.cfg, w),
            None => Err(err.expect("an error")),
        }
    }

    /// Every weight by its checkpoint name, expanded to dense f32.
    pub fn dense_tensors(&self) -> Result<std::collections::HashMap<String, Tensor>> {
        let mut list = Vec::new();
        self.weights.map(|w| {
            list.push(w.clone());
            Some(())
        });
        tensor_specs(&self.cfg)
            .into_iter()
            .zip(list)
            .map(|(s, w)| Ok((s.name, w.to_dense()?)))
            .collect()
    }

    pub fn from_params(cfg: &ModelConfig, params: &Params) -> Result<Self> {
        Self::from_tensors(cfg, |n| params.tensor(n))
    }

    /// A key/value cache for `batch` rows of this model with room for `capacity` positions each.
    pub fn kv_cache(&self, batch: usize, capacity: usize) -> Result<KvCache> {
        let c = &self.cfg;
        let (dtype, device) = (self.dtype(), self.device());
        KvCache::new(
            c.n_layers,
            batch,
            c.heads().kv,
            c.head_dim(),
            capacity,
            dtype,
            device,
        )
    }

    /// The activations' dtype (f32 for a quantized model).
    pub fn dtype(&self) -> DType {
        self.cos.dtype()
    }

    pub fn device(&self) -> &Device {
        self.cos.device()
    }

    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        self.weights.embed.embed(ids)
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
        cache: Option<&mut KvCache>,
        valid: Option<&[usize]>,
    ) -> Result<Tensor> {
        self.pass(ids, attn, cache, valid, None, true)
    }

    /// Training's loss Σ_i w_i · (−log p(targets_i)) / denom over the positions of ids [B, T]
    /// (B·T targets and weights, no cache). The final hidden states meet the head inside the
    /// loss (`ops::head_loss`), so the logits need never exist whole.
    pub fn loss(
        &self,
        ids: &Tensor,
        attn: Attention,
        targets: &[u32],
        weights: &[f32],
        denom: f64,
    ) -> Result<Tensor> {
        let h = self.pass(ids, attn, None, None, None, false)?;
        match self.weights.head() {
            Weight::Dense(w) => ops::head_loss(&h, w, targets, weights, denom, self.compute),
            head => {
                let logits = head.linear_in(&h, self.compute)?;
                let (dev, n) = (h.device(), targets.len());
                let targets = Tensor::from_slice(targets, n, dev)?;
                let weights = Tensor::from_slice(weights, n, dev)?.to_dtype(logits.dtype())?;
                ops::weighted_nll(&logits, &targets, &weights, denom)
            }
        }
    }

    /// The stack over ids: logits, or with `logits = false` the final hidden states.
    /// `positions`: each (row, column)'s RoPE position, when not its cached length plus column.
    fn pass(
        &self,
        ids: &Tensor,
        attn: Attention,
        cache: Option<&mut KvCache>,
        valid: Option<&[usize]>,
        positions: Option<&[u32]>,
        logits: bool,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let lens: Vec<usize> = cache.as_ref().map_or(vec![0; b], |c| c.lens().to_vec());
        let valid_of = |r: usize| valid.map_or(t, |v| v[r]);
        // Explicit positions (a tree) are checked by the caller; the cache checks its slots.
        for (r, &len) in lens.iter().enumerate().filter(|_| positions.is_none()) {
            if len + valid_of(r) > self.cfg.max_seq_len {
                candle_core::bail!(
                    "sequence of {} tokens exceeds the model's context of {}",
                    len + valid_of(r),
                    self.cfg.max_seq_len
                );
            }
        }
        let x = self.embed(ids)?;
        let uniform = valid.is_none() && positions.is_none() && lens.iter().all(|&l| l == lens[0]);
        // Per-row positions and masks only when rows differ; otherwise the fused causal path.
        let (cos, sin, vis) = if uniform {
            let offset = lens[0];
            (
                self.cos.narrow(0, offset, t)?,
                self.sin.narrow(0, offset, t)?,
                Visibility::uniform(attn, offset),
            )
        } else {
            // Padding positions are clamped to the table.
            let last = self.cfg.max_seq_len - 1;
            let pos: Vec<u32> = match positions {
                Some(p) => p.iter().map(|&p| p.min(last as u32)).collect(),
                None => lens
                    .iter()
                    .flat_map(|&l| (0..t).map(move |i| (l + i).min(last) as u32))
                    .collect(),
            };
            let pos = Tensor::from_vec(pos, b * t, x.device())?;
            let half = self.cfg.head_dim() / 2;
            let cos = self.cos.index_select(&pos, 0)?.reshape((b, t, half))?;
            let sin = self.sin.index_select(&pos, 0)?.reshape((b, t, half))?;
            let bias = match attn {
                Attention::Mask(m) => m.clone(),
                _ => {
                    let causal = matches!(attn, Attention::Causal);
                    let valid: Vec<usize> = (0..b).map(valid_of).collect();
                    let (dtype, dev) = (x.dtype(), x.device());
                    visibility::ragged_bias(&lens, &valid, t, causal, dtype, dev)?
                }
            };
            (cos, sin, Visibility::Bias(bias))
        };
        let mut pass = CandleCompute {
            cfg: &self.cfg,
            cos,
            sin,
            vis,
            cache,
            head_len: None,
            compute: self.compute,
        };
        let out = match logits {
            true => self.weights.run(&mut pass, x)?,
            false => self.weights.hidden(&mut pass, x)?,
        };
        if let Some(c) = pass.cache {
            c.advance(valid_of);
        }
        Ok(out)
    }

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
        let t = ids.dim(1)?;
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
        let x = self.embed(ids)?;
        let pos = Tensor::from_slice(positions, t, x.device())?;
        let mut pass = CandleCompute {
            cfg: &self.cfg,
            cos: self.cos.index_select(&pos, 0)?,
            sin: self.sin.index_select(&pos, 0)?,
            vis: Visibility::uniform(attn, 0),
            cache: None,
            head_len: Some(head_len),
            compute: self.compute,
        };
        self.weights.run(&mut pass, x)
    }

    /// One forward over rows of different lengths padded into `ids` (see [`padded`]),
    /// returning f32 logits [B, T, V].
    pub fn forward_padded(
        &self,
        ids: &Tensor,
        valid: &[usize],
        attn: Attention,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let t = ids.dim(1)?;
        let ragged = valid.iter().any(|&v| v != t);
        let logits = self.forward_ragged(ids, attn, cache, ragged.then_some(valid))?;
        logits.to_dtype(DType::F32)
    }
}

impl Transformer {
    /// One cached pass where row r feeds `valid[r]` tokens of ids [B, T] (padded) as the
    /// tree `trees[r]` (None: a chain): each token at its depth after the row's cached
    /// length, seeing the cached prefix, its ancestors and itself. Every fed token's
    /// keys/values join the cache after the row's length, in feeding order. f32 logits
    /// [B, T, V].
    pub fn forward_tree(
        &self,
        ids: &Tensor,
        valid: &[usize],
        trees: &[Option<&visibility::Tree>],
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let lens = cache.lens().to_vec();
        let positions: Vec<u32> = (0..b)
            .flat_map(|r| {
                let (len, tree) = (lens[r], trees[r]);
                (0..t).map(move |i| {
                    let depth = tree.and_then(|tr| tr.depth.get(i).copied()).unwrap_or(i);
                    (len + depth) as u32
                })
            })
            .collect();
        let real = |(k, &p): (usize, &u32)| (k % t < valid[k / t]).then_some(p);
        let mut real = positions.iter().enumerate().filter_map(real);
        if let Some(p) = real.find(|&p| p as usize >= self.cfg.max_seq_len) {
            candle_core::bail!(
                "sequence of {} tokens exceeds the model's context of {}",
                p + 1,
                self.cfg.max_seq_len
            );
        }
        let bias = visibility::tree_bias(&lens, trees, t, self.dtype(), ids.device())?;
        let logits = self.pass(
            ids,
            Attention::Mask(&bias),
            Some(cache),
            Some(valid),
            Some(&positions),
            true,
        )?;
        logits.to_dtype(DType::F32)
    }
}

fn rope_tables(cfg: &ModelConfig, dtype: DType, device: &Device) -> Result<(Tensor, Tensor)> {
    let half = cfg.head_dim() / 2;
    let factor = |i: usize| cfg.rope_freq_factors.get(i).copied().unwrap_or(1.0);
    let inv: Vec<f64> = (0..half)
        .map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / cfg.head_dim() as f64) / factor(i))
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
