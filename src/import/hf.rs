//! Reading a Hugging Face model directory (`config.json`, `model.safetensors` or its sharded
//! index, `tokenizer.json`, optionally `tokenizer_config.json` for the chat template) of a
//! Llama, Mistral or Qwen2 model. Its RoPE already rotates halves, as ours does.

use super::rows;
use super::source::{objective_named, Source};
use crate::checkpoint::gguf::QTensors;
use crate::config::ModelConfig;
use crate::data::chat::ChatInfo;
use anyhow::{bail, Context, Result};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

const ARCHS: [&str; 4] = [
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
];

fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

fn config(c: &Value) -> Result<(String, ModelConfig)> {
    let arch = c["architectures"][0].as_str().unwrap_or("").to_string();
    if !ARCHS.contains(&arch.as_str()) {
        bail!(
            "Hugging Face architecture `{arch}` is not supported (supported: {})",
            ARCHS.join(", ")
        );
    }

    let n = |k: &str| -> Result<usize> {
        c[k].as_u64()
            .map(|x| x as usize)
            .with_context(|| format!("config.json has no {k}"))
    };
    let (d_model, n_heads) = (n("hidden_size")?, n("num_attention_heads")?);
    if n_heads == 0 {
        bail!("config.json has num_attention_heads 0");
    }
    // Sliding-window attention (Mistral v0.1, some Qwen2) differs from ours past the window.
    let window = c["sliding_window"].as_u64();
    let uses_window = c["use_sliding_window"]
        .as_bool()
        .unwrap_or(arch != "Qwen2ForCausalLM");
    if let Some(w) = window.filter(|_| uses_window) {
        if (w as usize) < n("max_position_embeddings")? {
            bail!("sliding-window attention (window {w}) is not supported");
        }
    }
    if let Some(hd) = c["head_dim"].as_u64() {
        if hd as usize != d_model / n_heads {
            bail!("head_dim {hd} differs from hidden_size / num_attention_heads: not supported");
        }
    }
    let qwen = arch == "Qwen2ForCausalLM";
    let cfg = ModelConfig {
        vocab_size: n("vocab_size")?,
        d_model,
        n_layers: n("num_hidden_layers")?,
        n_heads,
        n_kv_heads: c["num_key_value_heads"].as_u64().map(|x| x as usize),
        qkv_bias: qwen || c["attention_bias"].as_bool().unwrap_or(false),
        qk_norm: arch == "Qwen3ForCausalLM",
        d_ff: n("intermediate_size")?,
        max_seq_len: n("max_position_embeddings")?,
        rope_theta: c["rope_theta"].as_f64().unwrap_or(10_000.0),
        rope_freq_factors: rope_scaling(c, d_model / n_heads)?,
        norm_eps: c["rms_norm_eps"].as_f64().unwrap_or(1e-6),
        tie_embeddings: c["tie_word_embeddings"].as_bool().unwrap_or(false),
        ..ModelConfig::default()
    };
    cfg.validate()?;
    Ok((arch, cfg))
}

/// Per-frequency RoPE divisors for a config's `rope_scaling`: none for no scaling, Llama 3's
/// (`rope_type` "llama3", `transformers`' `_compute_llama3_parameters`): wavelengths shorter
/// than original_context / high_freq_factor keep their frequency, longer than
/// original_context / low_freq_factor are slowed by `factor`, and those between blend the two.
fn rope_scaling(c: &Value, head_dim: usize) -> Result<Vec<f64>> {
    let s = &c["rope_scaling"];
    let kind = s["rope_type"].as_str().or(s["type"].as_str());
    match kind {
        _ if s.is_null() => return Ok(Vec::new()),
        Some("default") => return Ok(Vec::new()),
        Some("llama3") => {}
        _ => bail!("RoPE scaling ({s}) is not supported (only Llama 3's, rope_type llama3)"),
    }
    let num = |k: &str| -> Result<f64> {
        s[k].as_f64()
            .with_context(|| format!("rope_scaling has no number {k}"))
    };
    let (factor, low, high) = (
        num("factor")?,
        num("low_freq_factor")?,
        num("high_freq_factor")?,
    );
    let old = num("original_max_position_embeddings")?;
    if !(factor > 0.0 && low > 0.0 && high > low && old > 0.0) {
        bail!("rope_scaling {s}: needs factor > 0 and high_freq_factor > low_freq_factor > 0");
    }
    let theta = c["rope_theta"].as_f64().unwrap_or(10_000.0);
    let (low_wavelen, high_wavelen) = (old / low, old / high);
    Ok((0..head_dim / 2)
        .map(|i| {
            let inv = 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / inv;
            let scaled = if wavelen < high_wavelen {
                inv
            } else if wavelen > low_wavelen {
                inv / factor
            } else {
                let smooth = (old / wavelen - low) / (high - low);
                (1.0 - smooth) * inv / factor + smooth * inv
            };
            inv / scaled
        })
        .collect())
}

/// Every tensor of the directory's safetensors files, as f32.
fn tensors(dir: &Path) -> Result<HashMap<String, Tensor>> {
    let single = dir.join("model.safetensors");
    let files: Vec<std::path::PathBuf> = if single.is_file() {
        vec![single]
    } else {
        let index = dir.join("model.safetensors.index.json");
        if !index.is_file() {
            bail!(
                "{} has neither model.safetensors nor model.safetensors.index.json",
                dir.display()
            );
        }
        let map = read_json(&index)?;
        let mut files: Vec<String> = map["weight_map"]
            .as_object()
            .context("the safetensors index has no weight_map")?
            .values()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        files.sort();
        files.dedup();
        files.into_iter().map(|f| dir.join(f)).collect()
    };
    let mut out = HashMap::new();
    for f in files {
        let map = candle_core::safetensors::load(&f, &Device::Cpu)
            .with_context(|| format!("cannot read {}", f.display()))?;
        for (k, v) in map {
            out.insert(k, v.to_dtype(DType::F32)?);
        }
    }
    Ok(out)
}

pub fn read(dir: &Path) -> Result<Source> {
    let config_json = read_json(&dir.join("config.json"))?;
    let (arch, cfg) = config(&config_json)?;
    let objective = objective_named(config_json["card_objective"].as_str())?;
    let mut all = tensors(dir)?;
    let mut take = |name: &str| -> Result<QTensor> {
        let t = all
            .remove(name)
            .with_context(|| format!("the model lacks tensor {name}"))?;
        crate::checkpoint::gguf::quantize(&t, GgmlDType::F32)
    };
    let mut out: QTensors = vec![("embed.weight".into(), take("model.embed_tokens.weight")?)];
    for i in 0..cfg.n_layers {
        let p = |n: &str| format!("model.layers.{i}.{n}");
        let ours = |n: &str| format!("layers.{i}.{n}");
        out.push((
            ours("attn_norm.weight"),
            take(&p("input_layernorm.weight"))?,
        ));
        let qkv = ["q", "k", "v"]
            .iter()
            .map(|x| take(&p(&format!("self_attn.{x}_proj.weight"))))
            .collect::<Result<Vec<_>>>()?;
        rows::push_stacked(&mut out, ours("attn.wqkv.weight"), qkv)?;
        out.push((ours("attn.wo.weight"), take(&p("self_attn.o_proj.weight"))?));
        out.push((
            ours("ffn_norm.weight"),
            take(&p("post_attention_layernorm.weight"))?,
        ));
        let gate_up = vec![
            take(&p("mlp.gate_proj.weight"))?,
            take(&p("mlp.up_proj.weight"))?,
        ];
        rows::push_stacked(&mut out, ours("ffn.w_gate_up.weight"), gate_up)?;
        out.push((ours("ffn.w_down.weight"), take(&p("mlp.down_proj.weight"))?));
        if cfg.qkv_bias {
            let parts = ["q", "k", "v"]
                .iter()
                .map(|x| take(&p(&format!("self_attn.{x}_proj.bias"))))
                .collect::<Result<Vec<_>>>()?;
            out.push((ours("attn.wqkv.bias"), rows::concat_vectors(&parts)?));
        }
        if cfg.qk_norm {
            for x in ["q", "k"] {
                let norm = take(&p(&format!("self_attn.{x}_norm.weight")))?;
                out.push((ours(&format!("attn.{x}_norm.weight")), norm));
            }
        }
    }
    out.push(("norm.weight".into(), take("model.norm.weight")?));
    if !cfg.tie_embeddings {
        out.push(("head.weight".into(), take("lm_head.weight")?));
    }
    // Some tied checkpoints still carry a copy of the head; rotary caches are buffers.
    all.retain(|k, _| k != "lm_head.weight" && !k.ends_with("rotary_emb.inv_freq"));
    if let Some(name) = all.keys().min() {
        bail!("the model has tensor {name}, which a {arch} model does not use");
    }
    let tok_path = dir.join("tokenizer.json");
    let tokenizer_json = std::fs::read_to_string(&tok_path)
        .with_context(|| format!("cannot read {}", tok_path.display()))?;
    let tc = dir.join("tokenizer_config.json");
    let tc = if tc.is_file() {
        read_json(&tc)?
    } else {
        Value::Null
    };
    let special = |k: &str| match &tc[k] {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    };
    let chat = tc["chat_template"].as_str().map(|t| ChatInfo {
        template: t.to_string(),
        bos_token: special("bos_token"),
        eos_token: special("eos_token"),
    });
    Ok(Source {
        objective,
        format: "hf",
        architecture: arch,
        name: dir.file_name().map(|n| n.to_string_lossy().to_string()),
        license: None,
        config: cfg,
        tensors: out,
        tokenizer_json,
        chat,
        eos_token: special("eos_token"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn llama3_rope_scaling_slows_the_long_wavelengths_and_keeps_the_short() {
        // Llama 3.2 1B's settings.
        let c = json!({"rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3",
            "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}});
        let f = rope_scaling(&c, 64).unwrap();
        assert_eq!(f.len(), 32);
        // transformers' formula by hand, for each frequency.
        for (i, &got) in f.iter().enumerate() {
            let inv = 1.0 / 500000f64.powf(2.0 * i as f64 / 64.0);
            let wavelen = 2.0 * std::f64::consts::PI / inv;
            let want = if wavelen < 8192.0 / 4.0 {
                1.0
            } else if wavelen > 8192.0 {
                32.0
            } else {
                let smooth = (8192.0 / wavelen - 1.0) / 3.0;
                1.0 / ((1.0 - smooth) / 32.0 + smooth)
            };
            assert!(
                (got - want).abs() < 1e-9 * want,
                "frequency {i}: {got} vs {want}"
            );
        }
        assert_eq!(f[0], 1.0);
        assert_eq!(f[31], 32.0);
        assert!(f.iter().any(|&x| x > 1.0 && x < 32.0), "a blended band");
        // No scaling, the default, and what we do not read.
        assert!(rope_scaling(&json!({}), 64).unwrap().is_empty());
        let default = json!({"rope_scaling": {"rope_type": "default"}});
        assert!(rope_scaling(&default, 64).unwrap().is_empty());
        let yarn = json!({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}});
        let err = rope_scaling(&yarn, 64).unwrap_err().to_string();
        assert!(err.contains("not supported"), "{err}");
    }
}
