//! What `card import` reads beyond SmolLM2, against an outside reference on crafted files
//! (the registries hold no such model), read by `scripts/gguf_reference.py` (the `gguf`
//! package and a NumPy float64 forward written from llama.cpp's conventions):
//! - Llama 3.x's RoPE scaling, a GGUF with `rope_freqs.weight` (each frequency divided by its
//!   factor). The factors survive a GGUF export; a Hugging Face export, which has no form for
//!   them, is refused.
//! - Qwen3's q/k head norms (an RMSNorm of each query and key head before RoPE, which
//!   rotates halves). They survive both exports.
//!
//! Needs python3 with numpy and gguf; without them the test says so and passes, except under
//! CI, where a missing one fails.

use candle_core::quantized::GgmlDType;
use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};
use card::checkpoint::{self, Precision};
use card::model::Attention;
use common::gguf::{cfg, gguf_tensors, metadata, random_weights, rows, vocab, write_gguf};
use common::{assert_error, assert_success, card};
use std::path::Path;
use std::process::Command;

mod common;

fn python() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import numpy, gguf"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        common::skip_unless_ci(
            "the RoPE scaling reference test",
            "python3 with numpy and gguf is missing",
        );
    }
    ok
}

/// The reference's logits [positions × vocab] for `ids` on `gguf`.
fn reference(gguf: &Path, ids: &[u32], dir: &Path) -> Vec<f32> {
    let ids_file = dir.join("ids.json");
    std::fs::write(&ids_file, serde_json::to_string(&[ids]).unwrap()).unwrap();
    let out = dir.join("fwd");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/gguf_reference.py");
    let run = Command::new("python3")
        .arg(script)
        .arg("forward")
        .arg(gguf)
        .arg("--ids")
        .arg(&ids_file)
        .args(["--greedy", "1", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let raw = std::fs::read(out.join("logits.f32")).unwrap();
    raw.chunks(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// card's logits for `ids`, over the file's `vocab` (import adds `<|mask|>` after it).
fn card_logits(dir: &Path, ids: &[u32], vocab: usize) -> Vec<f32> {
    let o = checkpoint::open_as(dir, &Device::Cpu, true, Precision::F32).unwrap();
    let x = Tensor::from_slice(ids, (1, ids.len()), &Device::Cpu).unwrap();
    let l = o.model.forward(&x, Attention::Causal, None).unwrap();
    let l = l.narrow(2, 0, vocab).unwrap();
    l.flatten_all().unwrap().to_vec1().unwrap()
}

/// The largest difference relative to the reference's largest magnitude.
fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn llama3_rope_factors_import_like_the_reference_and_survive_export() {
    if !python() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let n = vocab().0.len();
    let c = cfg(n, false);
    let half = c.head_dim() / 2;
    // Crafted divisors, far from 1, so the scaling shows within a few positions.
    let factors: Vec<f32> = (0..half).map(|i| 1.0 + 0.7 * i as f32).collect();
    let mut tensors = gguf_tensors(&c, &random_weights(&c), GgmlDType::F32);
    let plain = cwd.join("plain.gguf");
    write_gguf(&plain, &metadata(&c, "llama", "gpt2"), &tensors);
    let f = Tensor::from_vec(factors.clone(), half, &Device::Cpu).unwrap();
    let f = checkpoint::gguf::quantize(&f, GgmlDType::F32).unwrap();
    tensors.push(("rope_freqs.weight".into(), f));
    let scaled = cwd.join("scaled.gguf");
    write_gguf(&scaled, &metadata(&c, "llama", "gpt2"), &tensors);

    assert_success(&card(&["import", "scaled.gguf", "--out", "a"], cwd));
    let o = checkpoint::open(&cwd.join("a"), &Device::Cpu, true).unwrap();
    let want: Vec<f64> = factors.iter().map(|&x| x as f64).collect();
    assert_eq!(o.config.model.rope_freq_factors, want);

    let ids: Vec<u32> = (0..14).map(|i| (i * 37 + 5) % n as u32).collect();
    let ours = card_logits(&cwd.join("a"), &ids, n);
    let theirs = reference(&scaled, &ids, cwd);
    let err = rel_diff(&ours, &theirs);
    assert!(err < 1e-4, "card vs the reference: {err}");
    // The factors matter: the same weights without them are far from it.
    let unscaled = reference(&plain, &ids, cwd);
    assert!(rel_diff(&unscaled, &theirs) > 100.0 * err.max(1e-6));

    // A GGUF export carries them (and imports to the same model); HF has no form for them.
    let export = ["export", "a", "--format", "gguf", "--out", "a.gguf"];
    assert_success(&card(&export, cwd));
    assert_success(&card(&["import", "a.gguf", "--out", "b"], cwd));
    assert_eq!(card_logits(&cwd.join("b"), &ids, n), ours);
    let hf = card(&["export", "a", "--format", "hf", "--out", "a-hf"], cwd);
    assert_error(&hf, "RoPE factors");
}

/// Qwen3's GGUF tensors for `c` (q/k norms on): llama.cpp's names, q and k rows in the
/// model's own order (NeoX RoPE, no interleave), and head norms that are not all ones.
fn qwen3_tensors(c: &card::config::ModelConfig) -> Vec<(String, QTensor)> {
    let mut w = random_weights(c);
    for (name, t) in w.iter_mut() {
        if name.ends_with("q_norm.weight") || name.ends_with("k_norm.weight") {
            let n = t.dim(0).unwrap();
            let v: Vec<f32> = (0..n).map(|i| 0.4 + 0.1 * (i % 13) as f32).collect();
            *t = Tensor::from_vec(v, n, &Device::Cpu).unwrap();
        }
    }
    let f32 = |t: &Tensor| checkpoint::gguf::quantize(t, GgmlDType::F32).unwrap();
    let mut out = gguf_tensors(c, &w, GgmlDType::F32);
    let h = c.heads();
    let (nq, nk) = (h.q * h.dim, h.kv * h.dim);
    for i in 0..c.n_layers {
        let qkv = &w[&format!("layers.{i}.attn.wqkv.weight")];
        for (name, t) in out.iter_mut() {
            if *name == format!("blk.{i}.attn_q.weight") {
                *t = f32(&rows(qkv, 0, nq));
            } else if *name == format!("blk.{i}.attn_k.weight") {
                *t = f32(&rows(qkv, nq, nk));
            }
        }
        for x in ["q", "k"] {
            let norm = &w[&format!("layers.{i}.attn.{x}_norm.weight")];
            out.push((format!("blk.{i}.attn_{x}_norm.weight"), f32(norm)));
        }
    }
    out
}

#[test]
fn qwen3_head_norms_import_like_the_reference_and_survive_export() {
    if !python() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let n = vocab().0.len();
    let mut c = cfg(n, false);
    c.qk_norm = true;
    let file = cwd.join("qwen3.gguf");
    write_gguf(&file, &metadata(&c, "qwen3", "gpt2"), &qwen3_tensors(&c));
    assert_success(&card(&["import", "qwen3.gguf", "--out", "a"], cwd));
    let o = checkpoint::open(&cwd.join("a"), &Device::Cpu, true).unwrap();
    assert!(o.config.model.qk_norm && !o.config.model.qkv_bias);

    let ids: Vec<u32> = (0..14).map(|i| (i * 41 + 3) % n as u32).collect();
    let ours = card_logits(&cwd.join("a"), &ids, n);
    let theirs = reference(&file, &ids, cwd);
    let err = rel_diff(&ours, &theirs);
    assert!(err < 1e-4, "card vs the reference: {err}");
    // The host backend (decoding) agrees with the candle forward on the norms too.
    let opened = checkpoint::open_as(&cwd.join("a"), &Device::Cpu, true, Precision::F32).unwrap();
    use card::decode::Decoder;
    let greedy = |backend| {
        let o = card::decode::GenOptions {
            eos_id: u32::MAX,
            backend: Some(backend),
            ..card::decode::GenOptions::new(6, &opened.tokenizer)
        };
        let g = card::decode::ArDecoder
            .generate(&opened.model, std::slice::from_ref(&ids), &o, &mut |_| {})
            .unwrap();
        g.rows[0].tokens.clone()
    };
    let host = greedy(card::model::Backend::Host);
    assert_eq!(host, greedy(card::model::Backend::Candle));

    // Both exports name it Qwen3 and import back to the same model.
    for (format, out, back) in [("gguf", "b.gguf", "b"), ("hf", "c-hf", "c")] {
        let export = ["export", "a", "--format", format, "--out", out];
        assert_success(&card(&export, cwd));
        assert_success(&card(&["import", out, "--out", back], cwd));
        let again = card_logits(&cwd.join(back), &ids, n);
        assert!(rel_diff(&again, &ours) < 1e-6, "{format}");
    }
    let hf = std::fs::read_to_string(cwd.join("c-hf/config.json")).unwrap();
    assert!(hf.contains("Qwen3ForCausalLM"), "{hf}");
}
