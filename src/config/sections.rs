//! The data, noise, reweighting, objective, diffusion-baseline and training sections.

use super::Choice;
use serde::{Deserialize, Serialize};

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MaskMode {
    /// Soft tail: N masks among the last ceil(λN) positions.
    Soft,
    /// Strict tail: one solid block of N masks at the end (λ = 1).
    Strict,
    /// MDLM-style: N masks anywhere in the sequence.
    Uniform,
}

impl Choice for MaskMode {
    const ALL: &'static [(Self, &'static str, &'static str)] = &[
        (
            Self::Soft,
            "soft",
            "N masks among the last ceil(λN) positions",
        ),
        (
            Self::Strict,
            "strict",
            "one solid block of N masks at the end",
        ),
        (Self::Uniform, "uniform", "N masks anywhere in the sequence"),
    ];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MaskCount {
    /// Exactly floor(tL) masks.
    Exact,
    /// Each position in the window masked independently with probability 1/λ.
    Bernoulli,
}

impl Choice for MaskCount {
    const ALL: &'static [(Self, &'static str, &'static str)] = &[
        (Self::Exact, "exact", "exactly floor(tL) masks"),
        (
            Self::Bernoulli,
            "bernoulli",
            "each window position masked with probability N/W",
        ),
    ];
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
    /// Share of each training batch's rows kept clean (t = 0: plain next-token prediction),
    /// WeDLM's auxiliary AR loss for adapting an AR model; CARD only.
    #[serde(skip_serializing_if = "is_zero")]
    pub ar_fraction: f64,
    /// The highest noise level drawn: t ∈ [0, t_max] (1: the whole range). With
    /// `mode = "uniform"` and a small t_max, few masks scattered through the text, most of
    /// them alone after a clean prefix: the context a verifier's first `[MASK]` slot sees.
    #[serde(skip_serializing_if = "is_one")]
    pub t_max: f64,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

fn is_one(x: &f64) -> bool {
    *x == 1.0
}

fn is_zero_usize(x: &usize) -> bool {
    *x == 0
}

impl Default for NoiseConfig {
    fn default() -> Self {
        Self {
            mode: MaskMode::Soft,
            tail_factor: 1.5,
            count: MaskCount::Exact,
            t_sampling: TSampling::Uniform,
            ar_fraction: 0.0,
            t_max: 1.0,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ObjectiveKind {
    Arm,
    Card,
    /// Masked diffusion (Sahoo et al., 2024): bidirectional, NELBO-trained.
    Mdlm,
    /// Block diffusion (Arriola et al., 2025): diffusion inside blocks, AR across them.
    Bd3lm,
}

impl Choice for ObjectiveKind {
    const ALL: &'static [(Self, &'static str, &'static str)] = &[
        (Self::Arm, "arm", "autoregressive next-token training"),
        (
            Self::Card,
            "card",
            "causal autoregressive diffusion (soft tail masking, reweighting)",
        ),
        (
            Self::Mdlm,
            "mdlm",
            "masked diffusion, bidirectional (baseline)",
        ),
        (Self::Bd3lm, "bd3lm", "block diffusion (baseline)"),
    ];
}

impl ObjectiveKind {
    pub fn name(self) -> &'static str {
        Choice::name(self)
    }

    /// A causal language model (ARM and CARD): left-to-right attention, exact AR decoding
    /// and likelihood; MDLM and BD3LM attend both ways.
    pub fn is_causal(self) -> bool {
        matches!(self, Self::Arm | Self::Card)
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

/// What training's matrix products compute in (`train.compute`): `f32`, or `bf16` operands
/// with f32 sums (CPU, with AVX512_BF16 dot products where the CPU has them), the weights,
/// optimizer state, norms, softmax and loss staying f32; or `auto`, whichever of the two this
/// machine's products run faster, measured when a run starts and written into its config so
/// that a resumed run keeps it (`ComputeDtype::resolved`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ComputeDtype {
    #[default]
    F32,
    Bf16,
    Auto,
}

impl ComputeDtype {
    /// The name `train.compute` takes.
    pub fn name(self) -> &'static str {
        match self {
            ComputeDtype::F32 => "f32",
            ComputeDtype::Bf16 => "bf16",
            ComputeDtype::Auto => "auto",
        }
    }

    /// `Auto` made concrete: bf16 where `bf16_pays` (this CPU's bf16 products measured faster
    /// than its f32 ones) and the weights are f32, else f32. The others stay as they are.
    pub fn resolved(self, weights_f32: bool, bf16_pays: impl FnOnce() -> bool) -> ComputeDtype {
        match self {
            ComputeDtype::Auto if weights_f32 && bf16_pays() => ComputeDtype::Bf16,
            ComputeDtype::Auto => ComputeDtype::F32,
            other => other,
        }
    }
}

fn is_f32_compute(c: &ComputeDtype) -> bool {
    *c == ComputeDtype::F32
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
    #[serde(skip_serializing_if = "is_f32_compute")]
    pub compute: ComputeDtype,
    /// Keep the token embedding (and a tied head) fixed.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub freeze_embeddings: bool,
    /// Keep the first N layers fixed.
    #[serde(skip_serializing_if = "is_zero_usize")]
    pub freeze_layers: usize,
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
            compute: ComputeDtype::F32,
            freeze_embeddings: false,
            freeze_layers: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ComputeDtype;

    #[test]
    fn auto_compute_resolves_to_bf16_only_where_it_pays_over_f32_weights() {
        let never = || -> bool { panic!("measured although the answer was known") };
        assert_eq!(
            ComputeDtype::Auto.resolved(true, || true),
            ComputeDtype::Bf16
        );
        assert_eq!(
            ComputeDtype::Auto.resolved(true, || false),
            ComputeDtype::F32
        );
        assert_eq!(ComputeDtype::Auto.resolved(false, never), ComputeDtype::F32);
        assert_eq!(ComputeDtype::Bf16.resolved(true, never), ComputeDtype::Bf16);
        assert_eq!(ComputeDtype::F32.resolved(true, never), ComputeDtype::F32);
        let parsed: ComputeDtype = toml::from_str::<toml::Value>("c = \"auto\"").unwrap()["c"]
            .clone()
            .try_into()
            .unwrap();
        assert_eq!(parsed, ComputeDtype::Auto);
    }
}
