//! Configuration as data: TOML presets deserialised into these structs, any field
//! overridable with `--set section.key=value`, the resolved config saved in every checkpoint.

mod choice;
mod model;
mod sections;

pub use choice::Choice;
pub use model::{Heads, ModelConfig};
pub use sections::*;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

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
    ("tiny", include_str!("../../configs/tiny.toml")),
    ("demo", include_str!("../../configs/demo.toml")),
    ("small", include_str!("../../configs/small.toml")),
    ("cpu", include_str!("../../configs/cpu.toml")),
    ("base", include_str!("../../configs/base.toml")),
    ("bench-5m", include_str!("../../configs/bench-5m.toml")),
    ("paper-110m", include_str!("../../configs/paper-110m.toml")),
    ("paper-1b", include_str!("../../configs/paper-1b.toml")),
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
        if self.train.compute == ComputeDtype::Bf16 && self.train.dtype != DType::F32 {
            bail!("train.compute = \"bf16\" keeps f32 weights: it needs train.dtype = \"f32\"");
        }
        let n = &self.noise;
        if n.tail_factor.is_nan() || n.tail_factor < 1.0 || !n.tail_factor.is_finite() {
            bail!("noise.tail_factor (λ) must be ≥ 1, got {}", n.tail_factor);
        }
        if !(0.0..=1.0).contains(&n.ar_fraction) {
            bail!("noise.ar_fraction must be in [0, 1], got {}", n.ar_fraction);
        }
        if !(n.t_max > 0.0 && n.t_max <= 1.0) {
            bail!("noise.t_max must be in (0, 1], got {}", n.t_max);
        }
        if self.train.freeze_layers > self.model.n_layers {
            bail!(
                "train.freeze_layers ({}) exceeds the model's {} layers",
                self.train.freeze_layers,
                self.model.n_layers
            );
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
        if !(t.lr.is_finite() && t.lr > 0.0) {
            bail!("train.lr must be a positive finite number, got {}", t.lr);
        }
        if !(0.0..=1.0).contains(&t.min_lr_ratio) {
            bail!(
                "train.min_lr_ratio must be in [0, 1], got {}",
                t.min_lr_ratio
            );
        }
        // AdamW's bias correction divides by 1 − β^step.
        for (name, b) in [("beta1", t.beta1), ("beta2", t.beta2)] {
            if !(0.0..1.0).contains(&b) {
                bail!("train.{name} must be in [0, 1), got {b}");
            }
        }
        if !(t.eps.is_finite() && t.eps > 0.0) {
            bail!("train.eps must be a positive finite number, got {}", t.eps);
        }
        for (name, v) in [("weight_decay", t.weight_decay), ("grad_clip", t.grad_clip)] {
            if !(v.is_finite() && v >= 0.0) {
                bail!("train.{name} must be a finite number ≥ 0 (0: off), got {v}");
            }
        }
        // The last step always validates before its checkpoint is written.
        if t.eval_batches == 0 {
            bail!("train.eval_batches must be at least 1 (the final validation uses it)");
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
    // Fields left out of a saved config at their defaults are keys too: list them from a
    // config that sets them all.
    let mut every = Config::default();
    every.model.n_kv_heads = Some(1);
    every.model.qkv_bias = true;
    every.noise.ar_fraction = 0.5;
    every.noise.t_max = 0.5;
    every.train.freeze_embeddings = true;
    every.train.freeze_layers = 1;
    every.train.compute = ComputeDtype::Bf16;
    let defaults = toml::Table::try_from(every).expect("defaults serialise");
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
