//! Configuration as data: TOML presets deserialised into these structs, any field
//! overridable with `--set section.key=value`, the resolved config saved in every checkpoint.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Vocabulary including `<|endoftext|>` and `<|mask|>`; set from the tokenizer when training.
    pub vocab_size: usize,
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    /// Hidden width of the SwiGLU feed-forward block.
    pub d_ff: usize,
    pub max_seq_len: usize,
    pub rope_theta: f64,
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
            d_ff: 688,
            max_seq_len: 256,
            rope_theta: 10_000.0,
            norm_eps: 1e-5,
            tie_embeddings: true,
            init_std: 0.02,
        }
    }
}

/// Attention geometry: the fused projection holds, per token, the queries of `q` heads, then
/// the keys and the values of `kv` heads, each `dim` wide. (`kv` < `q` would be grouped-query
/// attention: query head h reads key/value head `kv_of(h)`; our presets have `kv` = `q`.)
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

    pub fn heads(&self) -> Heads {
        Heads {
            q: self.n_heads,
            kv: self.n_heads,
            dim: self.head_dim(),
        }
    }

    pub fn qkv_width(&self) -> usize {
        self.heads().qkv_width()
    }

    /// Parameter count from the shapes alone (checked against a built model in the tests).
    pub fn n_params(&self) -> usize {
        let (d, f, v) = (self.d_model, self.d_ff, self.vocab_size);
        let per_layer = 2 * d + d * self.qkv_width() + d * d + 3 * d * f;
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
        if self.vocab_size < 3 {
            bail!("model: vocab_size must be at least 3");
        }
        if self.max_seq_len < 2 {
            bail!("model: max_seq_len must be at least 2");
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// A directory written by `card data prepare`; empty means the embedded default corpus.
    pub path: String,
    /// BPE vocabulary size when the tokenizer is trained here (embedded corpus).
    pub vocab_size: usize,
    pub val_fraction: f64,
    pub seed: u64,
    /// Train on only the first N tokens of the train split (0 = all): the data-efficiency
    /// experiment's small fixed subset.
    pub train_tokens: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            path: String::new(),
            vocab_size: 8192,
            val_fraction: 0.1,
            seed: 0,
            train_tokens: 0,
        }
    }
}

/// Where the [MASK] tokens go (spec §2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum MaskMode {
    /// Soft tail: N masks among the last ceil(λN) positions.
    Soft,
    /// Strict tail: one solid block of N masks at the end (λ = 1).
    Strict,
    /// MDLM-style: N masks anywhere in the sequence.
    Uniform,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum MaskCount {
    /// Exactly floor(tL) masks.
    Exact,
    /// Each position in the window masked independently with probability 1/λ.
    Bernoulli,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TSampling {
    Uniform,
    /// One draw per batch shifted by i/B: lower-variance cover of [0, 1).
    Stratified,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NoiseConfig {
    pub mode: MaskMode,
    /// λ ≥ 1: the masks of one sequence fall in its last ceil(λN) positions.
    pub tail_factor: f64,
    pub count: MaskCount,
    pub t_sampling: TSampling,
}

impl Default for NoiseConfig {
    fn default() -> Self {
        Self {
            mode: MaskMode::Soft,
            tail_factor: 1.5,
            count: MaskCount::Exact,
            t_sampling: TSampling::Uniform,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossNorm {
    /// Σ w·CE / Σ w.
    Weight,
    /// Σ w·CE / #targets.
    Count,
}

/// Context-aware reweighting (spec §2.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WeightsConfig {
    pub enabled: bool,
    /// Decay of a mask's influence per position of distance, in (0, 1].
    pub p: f64,
    /// w = 1 / (β + S); β ≥ 0.
    pub beta: f64,
    pub normalize: LossNorm,
}

impl Default for WeightsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            p: 0.5,
            beta: 1.0,
            normalize: LossNorm::Weight,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ObjectiveKind {
    Arm,
    Card,
    /// Masked diffusion (Sahoo et al., 2024): bidirectional, NELBO-trained.
    Mdlm,
    /// Block diffusion (Arriola et al., 2025): diffusion inside blocks, AR across them.
    Bd3lm,
}

impl ObjectiveKind {
    pub fn name(self) -> &'static str {
        match self {
            ObjectiveKind::Arm => "arm",
            ObjectiveKind::Card => "card",
            ObjectiveKind::Mdlm => "mdlm",
            ObjectiveKind::Bd3lm => "bd3lm",
        }
    }
}

/// Masking schedule of the diffusion baselines: a token is masked with probability
/// 1 − α_t, and the NELBO weights a masked token's cross-entropy by −α'_t / (1 − α_t).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiffusionSchedule {
    /// α_t = 1 − t: mask probability t, weight 1/t.
    Linear,
    /// σ(t) = −log(1 − (1 − ε)t), α_t = e^{−σ(t)}: mask probability (1 − ε)t, weight 1/t
    /// (MDLM's default; α_1 = ε keeps the fully noised state away from certainty).
    LogLinear,
}

/// MDLM (spec §4). Its schedule, floor and antithetic sampling also drive BD3LM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MdlmConfig {
    pub schedule: DiffusionSchedule,
    /// Floor of t: training and the bound draw t from [eps, 1].
    pub eps: f64,
    /// Antithetic (stratified) t across a batch instead of independent draws.
    pub antithetic: bool,
}

impl Default for MdlmConfig {
    fn default() -> Self {
        Self {
            schedule: DiffusionSchedule::Linear,
            eps: 1e-3,
            antithetic: true,
        }
    }
}

/// BD3LM (spec §4): block size and the optional clipped mask rate of training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Bd3lmConfig {
    /// B': tokens per block (the last block of a sequence may be shorter).
    pub block_size: usize,
    /// Training draws each block's t from [max(eps, clip_low), clip_high] (clipped
    /// schedule); evaluation's bound always uses [eps, 1].
    pub clip_low: f64,
    pub clip_high: f64,
}

impl Default for Bd3lmConfig {
    fn default() -> Self {
        Self {
            block_size: 8,
            clip_low: 0.0,
            clip_high: 1.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LrSchedule {
    Cosine,
    Constant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DType {
    F32,
    F64,
    Bf16,
}

impl DType {
    pub fn candle(self) -> candle_core::DType {
        match self {
            DType::F32 => candle_core::DType::F32,
            DType::F64 => candle_core::DType::F64,
            DType::Bf16 => candle_core::DType::BF16,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub objective: ObjectiveKind,
    /// Tokens per training sequence x_0 (the model sees L−1 of them).
    pub seq_len: usize,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub max_steps: usize,
    pub lr: f64,
    /// Cosine schedule decays to lr * min_lr_ratio.
    pub min_lr_ratio: f64,
    pub warmup_steps: usize,
    pub schedule: LrSchedule,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Global-norm gradient clipping; 0 disables it.
    pub grad_clip: f64,
    pub ema: bool,
    pub ema_decay: f64,
    pub eval_every: usize,
    pub eval_batches: usize,
    pub ckpt_every: usize,
    pub log_every: usize,
    pub seed: u64,
    pub dtype: DType,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            objective: ObjectiveKind::Card,
            seq_len: 256,
            batch_size: 8,
            grad_accum: 1,
            max_steps: 1000,
            lr: 3e-4,
            min_lr_ratio: 0.1,
            warmup_steps: 100,
            schedule: LrSchedule::Cosine,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            grad_clip: 1.0,
            ema: true,
            ema_decay: 0.999,
            eval_every: 200,
            eval_batches: 16,
            ckpt_every: 200,
            log_every: 10,
            seed: 0,
            dtype: DType::F32,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub model: ModelConfig,
    pub data: DataConfig,
    pub noise: NoiseConfig,
    pub weights: WeightsConfig,
    pub train: TrainConfig,
    pub mdlm: MdlmConfig,
    pub bd3lm: Bd3lmConfig,
}

pub const PRESETS: &[(&str, &str)] = &[
    ("tiny", include_str!("../configs/tiny.toml")),
    ("small", include_str!("../configs/small.toml")),
    ("base", include_str!("../configs/base.toml")),
    ("bench-5m", include_str!("../configs/bench-5m.toml")),
    ("paper-110m", include_str!("../configs/paper-110m.toml")),
    ("paper-1b", include_str!("../configs/paper-1b.toml")),
];

impl Config {
    /// A named preset, or a path to a TOML file, with `key=value` overrides applied.
    pub fn load(preset: &str, sets: &[String]) -> Result<Self> {
        let text = match PRESETS.iter().find(|(n, _)| *n == preset) {
            Some((_, t)) => t.to_string(),
            None if preset.ends_with(".toml") => std::fs::read_to_string(preset)
                .with_context(|| format!("cannot read config file {preset}"))?,
            None => bail!(
                "unknown preset '{preset}' (known: {}; or pass a path ending in .toml)",
                preset_names().join(", ")
            ),
        };
        Self::from_toml_with_sets(&text, sets).with_context(|| format!("preset {preset}"))
    }

    /// Parse TOML text, apply `key=value` overrides, validate.
    pub fn from_toml_with_sets(text: &str, sets: &[String]) -> Result<Self> {
        let mut value: toml::Table = toml::from_str(text).context("not valid TOML")?;
        for set in sets {
            apply_set(&mut value, set)?;
        }
        let cfg: Config = toml::Value::Table(value)
            .try_into()
            .map_err(|e: toml::de::Error| {
                let one_line = e
                    .to_string()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                anyhow::anyhow!("config: {one_line}")
            })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn from_toml(text: &str) -> Result<Self> {
        let cfg: Config = toml::from_str(text).context("config is not valid")?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }

    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        let n = &self.noise;
        if n.tail_factor.is_nan() || n.tail_factor < 1.0 || !n.tail_factor.is_finite() {
            bail!("noise.tail_factor (λ) must be ≥ 1, got {}", n.tail_factor);
        }
        let w = &self.weights;
        if !(w.p > 0.0 && w.p <= 1.0) {
            bail!("weights.p must be in (0, 1], got {}", w.p);
        }
        if w.beta.is_nan() || w.beta < 0.0 || !w.beta.is_finite() {
            bail!("weights.beta (β) must be ≥ 0, got {}", w.beta);
        }
        if w.beta == 0.0 {
            bail!("weights.beta (β) = 0 gives clean targets infinite weight; use β > 0");
        }
        let t = &self.train;
        if t.seq_len < 2 {
            bail!("train.seq_len must be at least 2");
        }
        if t.seq_len > self.model.max_seq_len {
            bail!(
                "train.seq_len {} exceeds the model's max_seq_len {}",
                t.seq_len,
                self.model.max_seq_len
            );
        }
        if t.batch_size == 0 || t.grad_accum == 0 {
            bail!("train.batch_size and train.grad_accum must be positive");
        }
        if t.lr.is_nan() || t.lr <= 0.0 || !(0.0..=1.0).contains(&t.min_lr_ratio) {
            bail!("train.lr must be positive and train.min_lr_ratio in [0, 1]");
        }
        if !(0.0..1.0).contains(&t.ema_decay) {
            bail!("train.ema_decay must be in [0, 1)");
        }
        if !(0.0..=1.0).contains(&self.data.val_fraction) {
            bail!("data.val_fraction must be in [0, 1]");
        }
        self.validate_diffusion()?;
        Ok(())
    }

    fn validate_diffusion(&self) -> Result<()> {
        let m = &self.mdlm;
        if !(m.eps > 0.0 && m.eps < 1.0) {
            bail!("mdlm.eps must be in (0, 1), got {}", m.eps);
        }
        let b = &self.bd3lm;
        if b.block_size == 0 {
            bail!("bd3lm.block_size must be at least 1");
        }
        if !(0.0 <= b.clip_low && b.clip_low < b.clip_high && b.clip_high <= 1.0) {
            bail!(
                "bd3lm clip range must satisfy 0 ≤ clip_low < clip_high ≤ 1, got [{}, {}]",
                b.clip_low,
                b.clip_high
            );
        }
        if b.clip_high <= m.eps {
            bail!(
                "bd3lm.clip_high {} must exceed the floor mdlm.eps {}",
                b.clip_high,
                m.eps
            );
        }
        Ok(())
    }

    /// Dotted keys (`section.key`) whose values differ from `other`'s.
    pub fn diff(&self, other: &Config) -> Vec<String> {
        let ta = toml::Table::try_from(self).expect("config serialises");
        let tb = toml::Table::try_from(other).expect("config serialises");
        let mut out = Vec::new();
        for (section, va) in &ta {
            let sb = tb.get(section).and_then(|v| v.as_table());
            if let (Some(sa), Some(sb)) = (va.as_table(), sb) {
                for (k, x) in sa {
                    if sb.get(k) != Some(x) {
                        out.push(format!("{section}.{k}"));
                    }
                }
            }
        }
        out
    }

    /// Tokens per optimizer step.
    pub fn tokens_per_step(&self) -> usize {
        self.train.batch_size * self.train.grad_accum * self.train.seq_len
    }
}

pub fn preset_names() -> Vec<&'static str> {
    PRESETS.iter().map(|(n, _)| *n).collect()
}

/// `section.key=value`; the value is parsed as TOML (number, bool, string) with a bare-string fallback.
fn apply_set(root: &mut toml::Table, set: &str) -> Result<()> {
    let (key, raw) = set
        .split_once('=')
        .with_context(|| format!("--set '{set}' must look like section.key=value"))?;
    let parts: Vec<&str> = key.trim().split('.').collect();
    if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
        bail!("--set key '{key}' must be section.key (e.g. train.lr)");
    }
    let defaults = toml::Table::try_from(Config::default()).expect("defaults serialise");
    let known = defaults
        .get(parts[0])
        .and_then(|s| s.as_table())
        .with_context(|| format!("unknown config section '{}'", parts[0]))?;
    if !known.contains_key(parts[1]) {
        bail!(
            "unknown config key '{key}' (keys of [{}]: {})",
            parts[0],
            known.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    let raw = raw.trim();
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let section = root
        .entry(parts[0].to_string())
        .or_insert_with(|| toml::Value::Table(Default::default()))
        .as_table_mut()
        .with_context(|| format!("config section '{}' is not a table", parts[0]))?;
    section.insert(parts[1].to_string(), value);
    Ok(())
}
