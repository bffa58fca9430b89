//! `card export` round trips: import(export(x)) gives x's logits exactly in f32 and with the
//! blocks kept, within the rounding for Q8_0 — for one of our presets (a CARD model, which
//! stays one) and for an imported quantized model. MDLM checkpoints are refused.

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use card::checkpoint::{self, Opened, Precision};
use card::model::Attention;
use common::gguf::{cfg, gguf_tensors, metadata, random_weights, vocab, write_gguf};
use common::{assert_error, assert_success, card, max_abs_diff};
use std::path::Path;

mod common;

fn logits(o: &Opened, ids: &[u32]) -> Tensor {
    let x = Tensor::from_slice(ids, (1, ids.len()), &Device::Cpu).unwrap();
    o.model.forward(&x, Attention::Causal, None).unwrap()
}

fn open(dir: &Path, p: Precision) -> Opened {
    checkpoint::open_as(dir, &Device::Cpu, true, p).unwrap()
}

/// Export `run` in `args`, import it back into `back`.
fn round_trip(cwd: &Path, run: &str, args: &[&str], back: &str) {
    let out = args[args.iter().position(|a| *a == "--out").unwrap() + 1];
    let mut export = vec!["export", run];
    export.extend(args);
    assert_success(&card(&export, cwd));
    assert_success(&card(&["import", out, "--out", back], cwd));
}

#[test]
fn our_preset_survives_hf_and_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    common::train_tiny_for_q8_0(cwd, 3, "run");
    round_trip(cwd, "run", &["--format", "hf", "--out", "hf"], "from-hf");
    round_trip(
        cwd,
        "run",
        &["--format", "gguf", "--out", "m.gguf"],
        "from-gguf",
    );
    round_trip(
        cwd,
        "run",
        &["--format", "gguf", "--out", "q.gguf", "--dtype", "q8_0"],
        "from-q8",
    );
    round_trip(
        cwd,
        "run",
        &["--format", "gguf", "--out", "h.gguf", "--dtype", "f16"],
        "from-f16",
    );
    let x = open(&cwd.join("run"), Precision::Stored);
    let ids = x
        .tokenizer
        .encode("Alice was beginning to get very tired")
        .unwrap();
    let want = logits(&x, &ids);
    for back in ["from-hf", "from-gguf"] {
        let y = open(&cwd.join(back), Precision::Stored);
        assert_eq!(
            max_abs_diff(&logits(&y, &ids), &want),
            0.0,
            "{back}: bit-exact"
        );
        // The same tokenizer in behaviour (a GGUF file holds it as metadata, rebuilt).
        for text in [
            "Alice said: \"Oh!\" 1234 —  café\n\n\tend",
            "<|endoftext|><|mask|>x",
        ] {
            let ids = x.tokenizer.encode(text).unwrap();
            assert_eq!(y.tokenizer.encode(text).unwrap(), ids, "{back}: {text:?}");
            assert_eq!(y.tokenizer.decode(&ids).unwrap(), text);
        }
        assert_eq!(
            (
                y.tokenizer.eot_id(),
                y.tokenizer.mask_id(),
                y.tokenizer.vocab_size()
            ),
            (
                x.tokenizer.eot_id(),
                x.tokenizer.mask_id(),
                x.tokenizer.vocab_size()
            )
        );
        assert_eq!(y.objective(), x.objective(), "{back}: still CARD");
        assert_eq!(y.model.cfg, x.model.cfg);
    }
    assert!(open(&cwd.join("from-q8"), Precision::Stored)
        .model
        .is_quantized());
    let scale = common::max_abs(&want);
    for (back, tol) in [("from-q8", 0.05), ("from-f16", 0.01)] {
        let q = open(&cwd.join(back), Precision::Stored);
        let d = max_abs_diff(&logits(&q, &ids), &want);
        assert!(d < tol * scale, "{back}: {d} of {scale}");
    }
    // For scripts/check_export.py: the exports and card's logits, kept where asked.
    if let Some(keep) = std::env::var_os("CARD_EXPORT_REF") {
        let keep = Path::new(&keep);
        std::fs::create_dir_all(keep.join("hf")).unwrap();
        std::fs::copy(cwd.join("m.gguf"), keep.join("m.gguf")).unwrap();
        for f in std::fs::read_dir(cwd.join("hf")).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, keep.join("hf").join(f.file_name().unwrap())).unwrap();
        }
        let rows: Vec<Vec<f32>> = (0..ids.len())
            .map(|i| want.get(0).unwrap().get(i).unwrap().to_vec1().unwrap())
            .collect();
        let r = serde_json::json!({"ids": [ids], "logits": [rows]});
        std::fs::write(keep.join("ref.json"), r.to_string()).unwrap();
    }
    // The exported directory is what transformers reads.
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cwd.join("hf/config.json")).unwrap())
            .unwrap();
    assert_eq!(config["architectures"][0], "LlamaForCausalLM");
    assert_eq!(config["tie_word_embeddings"], true);
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "model.safetensors",
    ] {
        assert!(cwd.join("hf").join(f).is_file(), "{f}");
    }
    let st =
        candle_core::safetensors::load(cwd.join("hf/model.safetensors"), &Device::Cpu).unwrap();
    assert!(
        st.contains_key("model.layers.0.self_attn.k_proj.weight")
            && !st.contains_key("lm_head.weight")
    );
    assert_error(
        &card(&["export", "run", "--format", "hf", "--out", "hf"], cwd),
        "--force",
    );
}

#[test]
fn an_imported_quantized_model_survives_with_its_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let n = vocab().0.len();
    let c = cfg(n, false);
    let src = cwd.join("src.gguf");
    // <|im_end|> as a user-defined token (type 4), <|endoftext|> a control token (3).
    let mut meta = metadata(&c, "llama", "gpt2");
    let types = meta
        .iter_mut()
        .find(|(k, _)| k == "tokenizer.ggml.token_type");
    if let Some((_, Value::Array(t))) = types {
        t[257] = Value::I32(4);
    }
    write_gguf(
        &src,
        &meta,
        &gguf_tensors(&c, &random_weights(&c), GgmlDType::Q8_0),
    );
    assert_success(&card(&["import", "src.gguf", "--out", "a"], cwd));
    round_trip(cwd, "a", &["--format", "gguf", "--out", "a.gguf"], "b");
    // The export names llama.cpp's pre-tokenizer and keeps each token's type.
    let mut f = std::fs::File::open(cwd.join("a.gguf")).unwrap();
    let exported = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
    let types: Vec<i32> = exported.metadata["tokenizer.ggml.token_type"]
        .to_vec()
        .unwrap()
        .iter()
        .map(|v| v.to_i32().unwrap())
        .collect();
    assert_eq!((types[255], types[256], types[257]), (1, 3, 4));
    let pre = exported.metadata["tokenizer.ggml.pre"].to_string().unwrap();
    assert_eq!(pre, "smollm");
    round_trip(cwd, "a", &["--format", "hf", "--out", "a-hf"], "c");
    let ids = [3u32, 77, 256, 120, 5, 9, 258, 33];
    // Blocks kept: the quantized models agree exactly, on either precision.
    for p in [Precision::Stored, Precision::F32] {
        let (a, b) = (open(&cwd.join("a"), p), open(&cwd.join("b"), p));
        assert_eq!(
            max_abs_diff(&logits(&a, &ids), &logits(&b, &ids)),
            0.0,
            "{p:?}"
        );
    }
    let bytes = |d: &str| {
        let p = cwd.join(d).join("ckpt-00000000/model.gguf");
        checkpoint::gguf::read(&p)
            .unwrap()
            .1
            .iter()
            .map(|(_, t)| t.data().unwrap().len())
            .sum::<usize>()
    };
    assert_eq!(bytes("a"), bytes("b"));
    // Loaded, a quantized checkpoint holds its blocks alone; f32 comes only when asked.
    let loaded = checkpoint::load(&cwd.join("a"), &Device::Cpu).unwrap();
    assert!(loaded.weights.is_empty() && loaded.quantized.is_some());
    let (_, dense) = loaded.pick(false).unwrap();
    assert_eq!(dense.len(), card::model::tensor_specs(&c).len());
    // The HF export is f32: the expanded model, exactly.
    let a = open(&cwd.join("a"), Precision::F32);
    let hf = open(&cwd.join("c"), Precision::Stored);
    assert!(!hf.model.is_quantized());
    assert_eq!(max_abs_diff(&logits(&a, &ids), &logits(&hf, &ids)), 0.0);
    // The chat template and its end of turn travel too.
    let chat = card(
        &[
            "generate",
            "b",
            "--chat",
            "--prompt",
            "hi",
            "--json",
            "--max-new-tokens",
            "2",
        ],
        cwd,
    );
    assert_success(&chat);
    assert_eq!(common::last_json(&chat)["prompt"], "hi<|im_end|>");
}

#[test]
fn bidirectional_checkpoints_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let train = [
        "train",
        "--preset",
        "tiny",
        "--objective",
        "mdlm",
        "--max-steps",
        "1",
        "--out",
        "m",
    ];
    assert_success(&card(&train, cwd));
    let out = card(&["export", "m", "--format", "gguf", "--out", "m.gguf"], cwd);
    assert_error(&out, "only ARM and CARD checkpoints export");
}

#[test]
fn a_model_that_wants_bos_gets_it_before_every_prompt_and_keeps_it_on_export() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let n = vocab().0.len();
    let c = cfg(n, true);
    // A Llama-3-style file: BOS (here <|im_end|>, id 257) added before every text.
    let mut meta = metadata(&c, "llama", "gpt2");
    meta.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(true)));
    meta.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(257)));
    let tensors = gguf_tensors(&c, &random_weights(&c), GgmlDType::F32);
    write_gguf(&cwd.join("bos.gguf"), &meta, &tensors);
    assert_success(&card(&["import", "bos.gguf", "--out", "a"], cwd));
    let a = open(&cwd.join("a"), Precision::Stored);
    assert_eq!(a.tokenizer.bos_id(), Some(257));
    let plain = a.tokenizer.encode("t t").unwrap();
    let prompt = a.tokenizer.encode_prompt("t t").unwrap();
    assert_eq!(prompt, [&[257][..], &plain].concat());
    // A text that already starts with BOS (a chat template wrote it) gets no second one.
    let templated = a.tokenizer.encode_prompt("<|im_end|>t t").unwrap();
    assert_eq!(templated, prompt);
    // Generation counts it.
    let gen = [
        "generate",
        "a",
        "--prompt",
        "t t",
        "--json",
        "--max-new-tokens",
        "1",
    ];
    let out = card(&gen, cwd);
    assert_success(&out);
    assert_eq!(common::last_json(&out)["prompt_tokens"], prompt.len());
    // Both exports carry it, and import reads it back.
    round_trip(cwd, "a", &["--format", "gguf", "--out", "a.gguf"], "b");
    round_trip(cwd, "a", &["--format", "hf", "--out", "a-hf"], "c");
    let mut f = std::fs::File::open(cwd.join("a.gguf")).unwrap();
    let g = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
    assert!(g.metadata["tokenizer.ggml.add_bos_token"]
        .to_bool()
        .unwrap());
    assert_eq!(
        g.metadata["tokenizer.ggml.bos_token_id"].to_u32().unwrap(),
        257
    );
    let tc = std::fs::read_to_string(cwd.join("a-hf/tokenizer_config.json")).unwrap();
    let tc: serde_json::Value = serde_json::from_str(&tc).unwrap();
    assert_eq!(tc["add_bos_token"], true);
    for back in ["b", "c"] {
        let y = open(&cwd.join(back), Precision::Stored);
        assert_eq!(y.tokenizer.bos_id(), Some(257), "{back}");
    }
    // A model without BOS (our own, and the file above without the key) adds none.
    write_gguf(
        &cwd.join("plain.gguf"),
        &metadata(&c, "llama", "gpt2"),
        &tensors,
    );
    assert_success(&card(&["import", "plain.gguf", "--out", "p"], cwd));
    let p = open(&cwd.join("p"), Precision::Stored);
    assert_eq!(p.tokenizer.bos_id(), None);
    assert_eq!(p.tokenizer.encode_prompt("t t").unwrap(), plain);
}
