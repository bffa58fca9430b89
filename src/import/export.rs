//! `card export`: the inverse of the import. Every `card` model is a Llama (RMSNorm, half-split
//! RoPE, SwiGLU, optional tied head, grouped-query attention; Qwen2 with a q/k/v bias), so a
//! checkpoint leaves as a Hugging Face directory `transformers` loads, or as a llama.cpp GGUF
//! file with its tokenizer in the metadata. `[MASK]` stays an ordinary extra token, so CARD
//! decoding works again after a round trip.

use super::rows;
use super::tokenizer::to_gguf;
use crate::checkpoint::gguf::{copy_of, quantize, QTensors};
use crate::checkpoint::{self, Checkpoint};
use crate::config::ModelConfig;
use crate::data::chat::ChatInfo;
use crate::data::TextTokenizer;
use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;

/// The checkpoint's tensors under our names, as stored (blocks kept; dense ones as f32).
fn stored(ckpt: &Checkpoint) -> Result<QTensors> {
    if let Some(q) = &ckpt.quantized {
        return q
            .iter()
            .map(|(n, t)| Ok((n.clone(), copy_of(t)?)))
            .collect();
    }
    let (_, weights) = ckpt.pick(true)?;
    let mut names: Vec<&String> = weights.keys().collect();
    names.sort();
    names
        .into_iter()
        .map(|n| Ok((n.clone(), quantize(&weights[n], GgmlDType::F32)?)))
        .collect()
}

/// Tensor `name` split into row blocks of `sizes` (a stored stack, or its `#i` parts).
fn split(by_name: &HashMap<&str, &QTensor>, name: &str, sizes: &[usize]) -> Result<Vec<QTensor>> {
    if let Some(t) = by_name.get(name) {
        return rows::split_rows(t, sizes);
    }
    (0..sizes.len())
        .map(|i| {
            let t = by_name
                .get(format!("{name}#{i}").as_str())
                .with_context(|| format!("the checkpoint lacks {name}"))?;
            copy_of(t)
        })
        .collect()
}

/// (our name, parts) → the source names of each layer and the stack, in llama.cpp's or
/// Hugging Face's naming.
struct Names {
    embed: &'static str,
    norm: &'static str,
    head: &'static str,
    layer: fn(usize, &str) -> String,
}

const HF: Names = Names {
    embed: "model.embed_tokens.weight",
    norm: "model.norm.weight",
    head: "lm_head.weight",
    layer: |i, n| format!("model.layers.{i}.{n}"),
};

const GGUF: Names = Names {
    embed: "token_embd.weight",
    norm: "output_norm.weight",
    head: "output.weight",
    layer: |i, n| format!("blk.{i}.{n}"),
};

/// The per-layer names: attn_norm, q, k, v, o, ffn_norm, gate, up, down, the q/k/v biases,
/// and the q/k head norms.
fn layer_names(hf: bool) -> [&'static str; 14] {
    if hf {
        [
            "input_layernorm.weight",
            "self_attn.q_proj.weight",
            "self_attn.k_proj.weight",
            "self_attn.v_proj.weight",
            "self_attn.o_proj.weight",
            "post_attention_layernorm.weight",
            "mlp.gate_proj.weight",
            "mlp.up_proj.weight",
            "mlp.down_proj.weight",
            "self_attn.q_proj.bias",
            "self_attn.k_proj.bias",
            "self_attn.v_proj.bias",
            "self_attn.q_norm.weight",
            "self_attn.k_norm.weight",
        ]
    } else {
        [
            "attn_norm.weight",
            "attn_q.weight",
            "attn_k.weight",
            "attn_v.weight",
            "attn_output.weight",
            "ffn_norm.weight",
            "ffn_gate.weight",
            "ffn_up.weight",
            "ffn_down.weight",
            "attn_q.bias",
            "attn_k.bias",
            "attn_v.bias",
            "attn_q_norm.weight",
            "attn_k_norm.weight",
        ]
    }
}

/// Our tensors renamed and split for a target; `interleave`: llama.cpp's RoPE row order
/// for q and k.
fn renamed(cfg: &ModelConfig, tensors: &QTensors, hf: bool, interleave: bool) -> Result<QTensors> {
    let by_name: HashMap<&str, &QTensor> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let get = |n: &str| -> Result<QTensor> {
        copy_of(
            by_name
                .get(n)
                .with_context(|| format!("the checkpoint lacks {n}"))?,
        )
    };
    let names = if hf { HF } else { GGUF };
    let ln = layer_names(hf);
    let h = cfg.heads();
    let (nq, nkv) = (h.q * h.dim, h.kv * h.dim);
    let mut out: QTensors = vec![(names.embed.into(), get("embed.weight")?)];
    for i in 0..cfg.n_layers {
        let ours = |n: &str| format!("layers.{i}.{n}");
        let theirs = |k: usize| (names.layer)(i, ln[k]);
        out.push((theirs(0), get(&ours("attn_norm.weight"))?));
        let mut qkv = split(&by_name, &ours("attn.wqkv.weight"), &[nq, nkv, nkv])?;
        if interleave {
            qkv[0] = rows::permute_rope(&qkv[0], h.q, true)?;
            qkv[1] = rows::permute_rope(&qkv[1], h.kv, true)?;
        }
        for (k, t) in (1..4).zip(qkv) {
            out.push((theirs(k), t));
        }
        out.push((theirs(4), get(&ours("attn.wo.weight"))?));
        out.push((theirs(5), get(&ours("ffn_norm.weight"))?));
        let gu = split(
            &by_name,
            &ours("ffn.w_gate_up.weight"),
            &[cfg.d_ff, cfg.d_ff],
        )?;
        for (k, t) in (6..8).zip(gu) {
            out.push((theirs(k), t));
        }
        out.push((theirs(8), get(&ours("ffn.w_down.weight"))?));
        if cfg.qkv_bias {
            let b = get(&ours("attn.wqkv.bias"))?.dequantize(&Device::Cpu)?;
            for (k, (at, n)) in (9..12).zip([(0, nq), (nq, nkv), (nq + nkv, nkv)]) {
                out.push((theirs(k), quantize(&b.narrow(0, at, n)?, GgmlDType::F32)?));
            }
        }
        if cfg.qk_norm {
            out.push((theirs(12), get(&ours("attn.q_norm.weight"))?));
            out.push((theirs(13), get(&ours("attn.k_norm.weight"))?));
        }
    }
    out.push((names.norm.into(), get("norm.weight")?));
    if !cfg.tie_embeddings {
        out.push((names.head.into(), get("head.weight")?));
    }
    Ok(out)
}

/// The architecture a model exports as, (GGUF, Hugging Face): Llama, Qwen2 (a q/k/v bias) or
/// Qwen3 (q/k head norms).
fn family(cfg: &ModelConfig) -> Result<(&'static str, &'static str)> {
    Ok(match (cfg.qkv_bias, cfg.qk_norm) {
        (false, false) => ("llama", "LlamaForCausalLM"),
        (true, false) => ("qwen2", "Qwen2ForCausalLM"),
        (false, true) => ("qwen3", "Qwen3ForCausalLM"),
        (true, true) => bail!(
            "a q/k/v bias with q/k head norms is no architecture llama.cpp or transformers reads"
        ),
    })
}

/// Block types `--dtype` takes for GGUF: as stored, or every matrix in one type.
pub fn parse_gguf_dtype(s: &str) -> Result<Option<GgmlDType>> {
    Ok(Some(match s {
        "stored" => return Ok(None),
        "f32" => GgmlDType::F32,
        "f16" => GgmlDType::F16,
        "q8_0" => GgmlDType::Q8_0,
        other => bail!("unknown --dtype `{other}` for GGUF (stored, f32, f16, q8_0)"),
    }))
}

/// A causal checkpoint (what every AR runtime runs): MDLM and BD3LM attend both ways.
fn load_causal(path: &Path) -> Result<Checkpoint> {
    let ckpt = checkpoint::load(path, &Device::Cpu)?;
    let objective = ckpt.objective();
    if !objective.is_causal() {
        bail!(
            "a {} checkpoint is not a causal language model; only ARM and CARD checkpoints export",
            objective.name()
        );
    }
    Ok(ckpt)
}

fn chat_of(ckpt: &Checkpoint) -> Result<Option<ChatInfo>> {
    ckpt.extra
        .get("chat.json")
        .map(|t| serde_json::from_str(t).context("the checkpoint's chat.json is invalid"))
        .transpose()
}

/// The id a turn or a document ends with: the chat template's end-of-sequence token, else
/// `<|endoftext|>`.
fn eos_id(tok: &TextTokenizer, chat: Option<&ChatInfo>) -> u32 {
    chat.and_then(|c| c.eos_token.as_deref())
        .and_then(|s| tok.inner().token_to_id(s))
        .unwrap_or(tok.eot_id())
}

/// Write a Hugging Face directory (f32 safetensors).
pub fn export_hf(ckpt_path: &Path, out: &Path) -> Result<()> {
    let ckpt = load_causal(ckpt_path)?;
    let cfg = &ckpt.config.model;
    if !cfg.rope_freq_factors.is_empty() {
        // transformers takes Llama 3's scaling as its parameters, which the divisors a GGUF
        // file carries do not name.
        bail!("this model's per-frequency RoPE factors have no Hugging Face config form; export it as GGUF");
    }
    let tok = TextTokenizer::from_json(&ckpt.tokenizer_json)?;
    let chat = chat_of(&ckpt)?;
    let tensors = renamed(cfg, &stored(&ckpt)?, true, false)?;
    let dense: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.dequantize(&Device::Cpu)?)))
        .collect::<Result<_>>()?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let arch = family(cfg)?.1;
    let eos = eos_id(&tok, chat.as_ref());
    let config = json!({
        "architectures": [arch],
        "model_type": if cfg.qkv_bias { "qwen2" } else { "llama" },
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads(),
        "head_dim": cfg.head_dim(),
        "max_position_embeddings": cfg.max_seq_len,
        "rope_theta": cfg.rope_theta,
        "rms_norm_eps": cfg.norm_eps,
        "vocab_size": cfg.vocab_size,
        "tie_word_embeddings": cfg.tie_embeddings,
        "hidden_act": "silu",
        "attention_bias": cfg.qkv_bias,
        "mlp_bias": false,
        "rope_scaling": null,
        "bos_token_id": tok.bos_id().unwrap_or(eos),
        "eos_token_id": eos,
        "torch_dtype": "float32",
        // Read back by `card import`: a CARD model stays one after a round trip.
        "card_objective": ckpt.objective().name(),
    });
    let name = |t: u32| tok.decode(&[t]).unwrap_or_default();
    let mut tc = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": null,
        "eos_token": name(eos),
        "pad_token": name(tok.eot_id()),
        "mask_token": name(tok.mask_id()),
        "model_max_length": cfg.max_seq_len,
        "clean_up_tokenization_spaces": false,
    });
    if let Some(c) = &chat {
        tc["chat_template"] = json!(c.template);
        if let Some(b) = &c.bos_token {
            tc["bos_token"] = json!(b);
        }
    }
    // The tokenizer's post-processor adds BOS (tokenizer.json carries it); say so here too.
    if let Some(b) = tok.bos_id() {
        tc["bos_token"] = json!(name(b));
        tc["add_bos_token"] = json!(true);
    }
    let generation = json!({"eos_token_id": eos, "pad_token_id": tok.eot_id()});
    for (file, v) in [
        ("config.json", config),
        ("tokenizer_config.json", tc),
        ("generation_config.json", generation),
    ] {
        std::fs::write(out.join(file), serde_json::to_string_pretty(&v)?)?;
    }
    tok.save(&out.join("tokenizer.json"))?;
    candle_core::safetensors::save(&dense, out.join("model.safetensors"))
        .with_context(|| format!("cannot write {}", out.join("model.safetensors").display()))?;
    Ok(())
}

/// Write a llama.cpp GGUF file: matrices as stored (`dtype` None) or in one block type.
pub fn export_gguf(ckpt_path: &Path, out: &Path, dtype: Option<GgmlDType>) -> Result<()> {
    let ckpt = load_causal(ckpt_path)?;
    let cfg = &ckpt.config.model;
    let tok = TextTokenizer::from_json(&ckpt.tokenizer_json)?;
    let chat = chat_of(&ckpt)?;
    let arch = family(cfg)?.0;
    let mut tensors = renamed(cfg, &stored(&ckpt)?, false, arch == "llama")?;
    if let Some(dtype) = dtype {
        tensors = rows::requantize(&tensors, dtype)?;
    }
    if !cfg.rope_freq_factors.is_empty() {
        // llama.cpp reads Llama 3's RoPE scaling as this f32 vector, whatever the blocks.
        let f: Vec<f32> = cfg.rope_freq_factors.iter().map(|&x| x as f32).collect();
        let t = Tensor::from_vec(f, cfg.head_dim() / 2, &Device::Cpu)?;
        tensors.push(("rope_freqs.weight".into(), quantize(&t, GgmlDType::F32)?));
    }
    let v = to_gguf(tok.inner(), cfg.vocab_size)?;
    let key = |k: &str| format!("{arch}.{k}");
    let u = |x: usize| Value::U32(x as u32);
    let s = |x: &str| Value::String(x.into());
    let eos = eos_id(&tok, chat.as_ref());
    // The imported model's own name where there is one, else the run's.
    let provenance: Option<serde_json::Value> = ckpt
        .extra
        .get("provenance.json")
        .and_then(|t| serde_json::from_str(t).ok());
    let name = provenance
        .and_then(|p| p["name"].as_str().map(String::from))
        .or_else(|| {
            let p = ckpt_path.canonicalize().ok()?;
            Some(p.file_name()?.to_string_lossy().to_string())
        })
        .unwrap_or_else(|| "card".into());
    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), s(arch)),
        ("general.name".into(), s(&name)),
        (key("context_length"), u(cfg.max_seq_len)),
        (key("embedding_length"), u(cfg.d_model)),
        (key("block_count"), u(cfg.n_layers)),
        (key("feed_forward_length"), u(cfg.d_ff)),
        (key("attention.head_count"), u(cfg.n_heads)),
        (key("attention.head_count_kv"), u(cfg.kv_heads())),
        (key("rope.dimension_count"), u(cfg.head_dim())),
        (key("rope.freq_base"), Value::F32(cfg.rope_theta as f32)),
        (
            key("attention.layer_norm_rms_epsilon"),
            Value::F32(cfg.norm_eps as f32),
        ),
        ("tokenizer.ggml.model".into(), s("gpt2")),
        ("tokenizer.ggml.pre".into(), s(v.pre)),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(v.tokens.iter().map(|t| s(t)).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(v.types.iter().map(|&t| Value::I32(t)).collect()),
        ),
        (
            "tokenizer.ggml.merges".into(),
            Value::Array(v.merges.iter().map(|m| s(m)).collect()),
        ),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(eos)),
        (
            "tokenizer.ggml.padding_token_id".into(),
            Value::U32(tok.eot_id()),
        ),
        (
            "tokenizer.ggml.add_bos_token".into(),
            Value::Bool(tok.bos_id().is_some()),
        ),
        ("card.objective".into(), s(ckpt.objective().name())),
    ];
    if let Some(c) = &chat {
        meta.push(("tokenizer.chat_template".into(), s(&c.template)));
    }
    // The BOS prompts start with, else the one the chat template names.
    let chat_bos = chat.as_ref().and_then(|c| c.bos_token.as_deref());
    let bos = tok
        .bos_id()
        .or_else(|| chat_bos.and_then(|b| tok.inner().token_to_id(b)));
    if let Some(id) = bos {
        meta.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(id)));
    }
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = out.with_extension("gguf.tmp");
    {
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(&tmp)
                .with_context(|| format!("cannot create {}", tmp.display()))?,
        );
        let meta: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let list: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        gguf_file::write(&mut f, &meta, &list)?;
        f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    std::fs::rename(&tmp, out)?;
    Ok(())
}
