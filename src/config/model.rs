//! The model section: the backbone's shape, and the attention geometry derived from it.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// The longest context a model may declare: its RoPE tables are allocated whole (at 2^18
/// positions, 64 MiB for 128-wide heads), and no Llama-family model we read goes beyond.
pub const MAX_SEQ_LEN: usize = 1 << 18;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Vocabulary including `<|endoftext|>` and `<|mask|>`; set from the tokenizer when training.
    pub vocab_size: usize,
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    /// Key/value heads (grouped-query attention); absent: one per query head.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n_kv_heads: Option<usize>,
    /// A bias on the fused q/k/v projection (Qwen2); our presets have none.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub qkv_bias: bool,
    /// RMSNorm of each query and key head before RoPE, one weight over the head width shared
    /// by the heads (Qwen3); our presets have none.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub qk_norm: bool,
    /// Hidden width of the SwiGLU feed-forward block.
    pub d_ff: usize,
    pub max_seq_len: usize,
    pub rope_theta: f64,
    /// Per-frequency RoPE divisors (head_dim / 2 of them): frequency i turns at
    /// theta^(−2i/head_dim) / factor[i]. Llama 3.x's long-context scaling (llama.cpp's
    /// `rope_freqs`); empty: none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rope_freq_factors: Vec<f64>,
    pub norm_eps: f64,
    pub tie_embeddings: bool,
    pub init_std: f64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            vocab_size: 8192,
            d_model: 256,
            n_layers: 4,
            n_heads: 4,
            n_kv_heads: None,
            qkv_bias: false,
            qk_norm: false,
            d_ff: 688,
            max_seq_len: 256,
            rope_theta: 10_000.0,
            rope_freq_factors: Vec::new(),
            norm_eps: 1e-5,
            tie_embeddings: true,
            init_std: 0.02,
        }
    }
}

/// Attention geometry: the fused projection holds, per token, the queries of `q` heads, then
/// the keys and the values of `kv` heads, each `dim` wide. With `kv` < `q` (grouped-query
/// attention) query head h reads key/value head `kv_of(h)`; our presets have `kv` = `q`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heads {
    pub q: usize,
    pub kv: usize,
    pub dim: usize,
}

impl Heads {
    /// Columns of the fused q/k/v projection.
    pub fn qkv_width(&self) -> usize {
        (self.q + 2 * self.kv) * self.dim
    }

    /// Width of the heads' concatenated outputs.
    pub fn q_width(&self) -> usize {
        self.q * self.dim
    }

    /// Column of key head 0 (value head 0 is `kv * dim` further).
    pub fn k_offset(&self) -> usize {
        self.q * self.dim
    }

    pub fn v_offset(&self) -> usize {
        (self.q + self.kv) * self.dim
    }

    /// The key/value head query head `h` reads.
    pub fn kv_of(&self, h: usize) -> usize {
        h / (self.q / self.kv)
    }
}

impl ModelConfig {
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads
    }

    pub fn kv_heads(&self) -> usize {
        self.n_kv_heads.unwrap_or(self.n_heads)
    }

    pub fn heads(&self) -> Heads {
        Heads {
            q: self.n_heads,
            kv: self.kv_heads(),
            dim: self.head_dim(),
        }
    }

    pub fn qkv_width(&self) -> usize {
        self.heads().qkv_width()
    }

    /// Parameter count from the shapes alone (checked against a built model in the tests).
    pub fn n_params(&self) -> usize {
        let (d, f, v) = (self.d_model, self.d_ff, self.vocab_size);
        let bias = if self.qkv_bias { self.qkv_width() } else { 0 };
        let qk_norm = if self.qk_norm { 2 * self.head_dim() } else { 0 };
        let per_layer = 2 * d + d * self.qkv_width() + bias + qk_norm + d * d + 3 * d * f;
        let head = if self.tie_embeddings { 0 } else { v * d };
        v * d + self.n_layers * per_layer + d + head
    }

    /// Matmul FLOPs of one training token (forward + backward = 3x forward), attention included.
    pub fn train_flops_per_token(&self, seq_len: usize) -> f64 {
        let (d, f, v, l) = (
            self.d_model as f64,
            self.d_ff as f64,
            self.vocab_size as f64,
            self.n_layers as f64,
        );
        let t = seq_len as f64;
        let qkv = self.qkv_width() as f64;
        let matmul_params = l * (d * qkv + d * d + 3.0 * d * f) + v * d;
        // QK^T and AV: 2 * T * d multiply-adds per token per layer (full, unmasked matrix).
        let attn = l * 2.0 * t * d;
        6.0 * (matmul_params + attn)
    }

    pub fn validate(&self) -> Result<()> {
        if self.d_model == 0 || self.n_layers == 0 || self.n_heads == 0 || self.d_ff == 0 {
            bail!("model: d_model, n_layers, n_heads and d_ff must be positive");
        }
        if !self.d_model.is_multiple_of(self.n_heads) || !self.head_dim().is_multiple_of(2) {
            bail!(
                "model: d_model ({}) must split into n_heads ({}) heads of even width",
                self.d_model,
                self.n_heads
            );
        }
        let kv = self.kv_heads();
        if kv == 0 || !self.n_heads.is_multiple_of(kv) {
            bail!(
                "model: n_heads ({}) must be a multiple of n_kv_heads ({kv})",
                self.n_heads
            );
        }
        if self.vocab_size < 3 {
            bail!("model: vocab_size must be at least 3");
        }
        if !(2..=MAX_SEQ_LEN).contains(&self.max_seq_len) {
            bail!(
                "model.max_seq_len must be in 2..={MAX_SEQ_LEN}, got {}",
                self.max_seq_len
            );
        }
        let factors = self
            .rope_freq_factors
            .iter()
            .map(|&f| ("rope_freq_factors", f));
        for (name, v) in [
            ("rope_theta", self.rope_theta),
            ("norm_eps", self.norm_eps),
            ("init_std", self.init_std),
        ]
        .into_iter()
        .chain(factors)
        {
            if !(v.is_finite() && v > 0.0) {
                bail!("model.{name} must be a positive finite number, got {v}");
            }
        }
        let half = self.head_dim() / 2;
        if !self.rope_freq_factors.is_empty() && self.rope_freq_factors.len() != half {
            bail!(
                "model.rope_freq_factors has {} values; heads of width {} need {half}",
                self.rope_freq_factors.len(),
                self.head_dim()
            );
        }
        Ok(())
    }
}
