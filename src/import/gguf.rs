//! Reading a llama.cpp GGUF file (architectures `llama` and `qwen2`) into the recipe's layout,
//! blocks untouched: q/k/v and gate/up rows are stacked into the fused projections, and the
//! query and key rows of `llama` files are put back in the half-split RoPE order (llama.cpp's
//! converter interleaves them for its pairwise rotation; our RoPE rotates halves).

use super::rows;
use super::source::{objective_named, Source};
use super::tokenizer::{meta, meta_u32};
use crate::checkpoint::gguf::{self as ckpt_gguf, QTensors};
use crate::config::ModelConfig;
use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::QTensor;
use std::collections::HashMap;
use std::path::Path;

/// The architectures read, and whether their query/key rows are interleaved for RoPE.
const ARCHS: [(&str, bool); 3] = [("llama", true), ("qwen2", false), ("qwen3", false)];

/// A float value; an f32 goes through its shortest decimal form, so 1e-5 stored as f32 reads
/// back as 1e-5 and not 9.99999974e-6.
fn get_f64(c: &Content, key: &str) -> Option<f64> {
    let v = meta(c, key)?;
    match v.to_f32() {
        Ok(x) => x.to_string().parse().ok(),
        Err(_) => v.to_f64().ok(),
    }
}

fn need_u32(c: &Content, key: &str) -> Result<usize> {
    meta_u32(c, key)
        .map(|x| x as usize)
        .with_context(|| format!("the GGUF file has no {key}"))
}

/// The model config from the metadata and the embedding's shape.
fn config(c: &Content, arch: &str, vocab: usize) -> Result<ModelConfig> {
    let key = |k: &str| format!("{arch}.{k}");
    if let Some(kind) = meta(c, &key("rope.scaling.type")).and_then(|v| v.to_string().ok()) {
        if kind != "none" {
            bail!("RoPE scaling `{kind}` is not supported");
        }
    }
    let n_heads = need_u32(c, &key("attention.head_count"))?;
    let d_model = need_u32(c, &key("embedding_length"))?;
    let head_dim = d_model / n_heads.max(1);
    for k in [
        "rope.dimension_count",
        "attention.key_length",
        "attention.value_length",
    ] {
        if let Some(v) = meta_u32(c, &key(k)) {
            if v as usize != head_dim {
                bail!("{arch}.{k} = {v} differs from the head width {head_dim}: not supported");
            }
        }
    }
    let cfg = ModelConfig {
        vocab_size: vocab,
        d_model,
        n_layers: need_u32(c, &key("block_count"))?,
        n_heads,
        n_kv_heads: meta_u32(c, &key("attention.head_count_kv")).map(|x| x as usize),
        qkv_bias: arch == "qwen2",
        qk_norm: arch == "qwen3",
        d_ff: need_u32(c, &key("feed_forward_length"))?,
        max_seq_len: need_u32(c, &key("context_length"))?,
        rope_theta: get_f64(c, &key("rope.freq_base")).unwrap_or(10_000.0),
        norm_eps: get_f64(c, &key("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5),
        tie_embeddings: !c.tensor_infos.contains_key("output.weight"),
        ..ModelConfig::default()
    };
    cfg.validate()?;
    Ok(cfg)
}

/// A GGUF file as an import source.
pub fn read(path: &Path) -> Result<Source> {
    let (content, tensors) = ckpt_gguf::read(path)?;
    let arch = meta(&content, "general.architecture")
        .and_then(|v| v.to_string().ok())
        .context("the GGUF file has no general.architecture")?
        .clone();
    let Some(&(_, interleaved)) = ARCHS.iter().find(|(a, _)| *a == arch) else {
        let names: Vec<&str> = ARCHS.iter().map(|a| a.0).collect();
        bail!(
            "GGUF architecture `{arch}` is not supported (supported: {})",
            names.join(", ")
        );
    };
    let mut by_name: HashMap<String, QTensor> = tensors.into_iter().collect();
    let embed = by_name
        .get("token_embd.weight")
        .context("the GGUF file lacks tensor token_embd.weight")?;
    let vocab = embed.shape().dims2()?.0;
    let mut cfg = config(&content, &arch, vocab)?;
    // Llama 3.x's long-context RoPE: one divisor per frequency.
    if let Some(f) = by_name.remove("rope_freqs.weight") {
        let f = f.dequantize(&candle_core::Device::Cpu)?.flatten_all()?;
        cfg.rope_freq_factors = f.to_vec1::<f32>()?.iter().map(|&x| x as f64).collect();
        cfg.validate()
            .context("the GGUF file's rope_freqs.weight does not fit the model")?;
    }
    let mut take = |name: &str| {
        by_name
            .remove(name)
            .with_context(|| format!("the GGUF file lacks tensor {name}"))
    };
    let heads = cfg.heads();
    let mut out: QTensors = Vec::new();
    out.push(("embed.weight".into(), take("token_embd.weight")?));
    for i in 0..cfg.n_layers {
        let b = |n: &str| format!("blk.{i}.{n}");
        let ours = |n: &str| format!("layers.{i}.{n}");
        out.push((ours("attn_norm.weight"), take(&b("attn_norm.weight"))?));
        let (mut q, mut k) = (take(&b("attn_q.weight"))?, take(&b("attn_k.weight"))?);
        if interleaved {
            q = rows::permute_rope(&q, heads.q, false)?;
            k = rows::permute_rope(&k, heads.kv, false)?;
        }
        let v = take(&b("attn_v.weight"))?;
        rows::push_stacked(&mut out, ours("attn.wqkv.weight"), vec![q, k, v])?;
        out.push((ours("attn.wo.weight"), take(&b("attn_output.weight"))?));
        out.push((ours("ffn_norm.weight"), take(&b("ffn_norm.weight"))?));
        let gate_up = vec![take(&b("ffn_gate.weight"))?, take(&b("ffn_up.weight"))?];
        rows::push_stacked(&mut out, ours("ffn.w_gate_up.weight"), gate_up)?;
        out.push((ours("ffn.w_down.weight"), take(&b("ffn_down.weight"))?));
        if cfg.qkv_bias {
            let parts = ["attn_q.bias", "attn_k.bias", "attn_v.bias"]
                .iter()
                .map(|n| take(&b(n)))
                .collect::<Result<Vec<_>>>()?;
            out.push((ours("attn.wqkv.bias"), rows::concat_vectors(&parts)?));
        }
        if cfg.qk_norm {
            out.push((ours("attn.q_norm.weight"), take(&b("attn_q_norm.weight"))?));
            out.push((ours("attn.k_norm.weight"), take(&b("attn_k_norm.weight"))?));
        }
    }
    out.push(("norm.weight".into(), take("output_norm.weight")?));
    if !cfg.tie_embeddings {
        out.push(("head.weight".into(), take("output.weight")?));
    }
    // Everything the file holds must have found its place (an extra tensor is a feature we
    // would silently drop).
    if let Some(name) = by_name.keys().min() {
        bail!("the GGUF file has tensor {name}, which a {arch} model does not use");
    }
    let tokenizer_json = super::tokenizer::from_gguf(&content)?;
    let token = |key: &str| -> Option<String> {
        let id = meta_u32(&content, key)? as usize;
        let tokens = meta(&content, "tokenizer.ggml.tokens")?.to_vec().ok()?;
        tokens.get(id)?.to_string().ok().cloned()
    };
    let chat = meta(&content, "tokenizer.chat_template")
        .and_then(|v| v.to_string().ok())
        .map(|template| super::ChatInfo {
            template: template.clone(),
            bos_token: token("tokenizer.ggml.bos_token_id"),
            eos_token: token("tokenizer.ggml.eos_token_id"),
        });
    let name = meta(&content, "general.name")
        .and_then(|v| v.to_string().ok())
        .cloned();
    let license = meta(&content, "general.license")
        .and_then(|v| v.to_string().ok())
        .cloned();
    let objective = objective_named(
        meta(&content, "card.objective")
            .and_then(|v| v.to_string().ok())
            .map(|s| s.as_str()),
    )?;
    Ok(Source {
        objective,
        format: "gguf",
        architecture: arch,
        name,
        license,
        config: cfg,
        tensors: out,
        tokenizer_json,
        chat,
        eos_token: token("tokenizer.ggml.eos_token_id"),
    })
}
