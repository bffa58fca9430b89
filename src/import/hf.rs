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

const ARCHS: [&str; 3] = ["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"];

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
    if !c["rope_scaling"].is_null() {
        bail!("RoPE scaling ({}) is not supported", c["rope_scaling"]);
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
        d_ff: n("intermediate_size")?,
        max_seq_len: n("max_position_embeddings")?,
        rope_theta: c["rope_theta"].as_f64().unwrap_or(10_000.0),
        norm_eps: c["rms_norm_eps"].as_f64().unwrap_or(1e-6),
        tie_embeddings: c["tie_word_embeddings"].as_bool().unwrap_or(false),
        ..ModelConfig::default()
    };
    cfg.validate()?;
    Ok((arch, cfg))
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
