//! llama.cpp as a consumer of `card export` (node-llama-cpp 3.21.1, its prebuilt CPU binary,
//! driven by `scripts/peer/consumer.mjs`): it loads every GGUF we write — a `tiny` CARD model
//! with this project's own tokenizer, SmolLM2 as imported and SmolLM2 adapted to CARD, each in
//! f32, f16 and q8_0 (and the import in its own blocks) — tokenizes like card (prose, digits, whitespace runs,
//! non-ASCII, special tokens), and greedy-decodes card's tokens from the same prompt on the
//! f32 exports, or parts from them only where card's two best logits are a near-tie.
//!
//! Needs node and `scripts/peer/node_modules` (the README's test command installs them);
//! without them the test says so and passes, except under CI, where a missing one fails.

use candle_core::{Device, Tensor};
use card::checkpoint::{self, Opened, Precision};
use card::decode::{ArDecoder, Decoder, GenOptions};
use card::model::Attention;
use common::{assert_success, card};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

const TEXTS: &[&str] = &[
    "Alice said: \"Oh!\" and walked on, quite tired of it all.",
    "3.14159 and 2718281828, 42 + 7 = 49",
    "a  b   c\t\t d\n\n\n e    ",
    "naïve café — 東京 ✓ 🙂",
    "<|endoftext|>Hello<|endoftext|>",
];

/// Logits within this of each other are a near-tie: f32 kernels that sum in another order
/// may pick either.
const NEAR_TIE: f32 = 1e-3;

fn consumer() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("scripts/peer/consumer.mjs");
    let node = Command::new("node").arg("--version").output();
    let installed = root
        .join("scripts/peer/node_modules/node-llama-cpp")
        .is_dir();
    if node.is_ok_and(|o| o.status.success()) && installed {
        return Some(script);
    }
    let why = "needs node and scripts/peer/node_modules (the README's test command installs them)";
    common::skip_unless_ci("the llama.cpp consumer test", why);
    None
}

/// llama.cpp's tokens for each of TEXTS and its greedy continuation of `prompt`.
fn llama(script: &Path, gguf: &Path, prompt: &[u32], n: usize) -> (Vec<Vec<u32>>, Vec<u32>) {
    let ids: Vec<String> = prompt.iter().map(u32::to_string).collect();
    let out = Command::new("node")
        .arg(script)
        .arg("--model")
        .arg(gguf)
        .args(["--texts", &serde_json::to_string(TEXTS).unwrap()])
        .args(["--prompt-ids", &ids.join(",")])
        .args(["--new-tokens", &n.to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "llama.cpp on {}: {stdout}{}",
        gguf.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.trim()).unwrap();
    let list = |v: &Value| -> Vec<u32> {
        let ids = v.as_array().unwrap().iter();
        ids.map(|x| x.as_u64().unwrap() as u32).collect()
    };
    let tokens = v["tokens"].as_array().unwrap().iter().map(list).collect();
    (tokens, list(&v["greedy"]))
}

/// card's greedy continuation of `prompt` (no end of text).
fn greedy(o: &Opened, prompt: &[u32], n: usize) -> Vec<u32> {
    let opts = GenOptions {
        eos_id: u32::MAX,
        ..GenOptions::new(n, &o.tokenizer)
    };
    let g = ArDecoder
        .generate(&o.model, &[prompt.to_vec()], &opts, &mut |_| {})
        .unwrap();
    g.rows[0].tokens.clone()
}

/// Check llama.cpp against card on `gguf`, exported from the checkpoint `o`; greedy texts
/// compared when `exact` (an f32 export).
fn agree(script: &Path, gguf: &Path, o: &Opened, prompt_text: &str, exact: bool) {
    let what = gguf.file_name().unwrap().to_string_lossy().to_string();
    let prompt = o.tokenizer.encode(prompt_text).unwrap();
    let n = 12;
    let (tokens, theirs) = llama(script, gguf, &prompt, n);
    for (text, t) in TEXTS.iter().zip(&tokens) {
        assert_eq!(t, &o.tokenizer.encode(text).unwrap(), "{what}: {text:?}");
    }
    assert_eq!(theirs.len(), n, "{what}");
    if !exact {
        return;
    }
    let ours = greedy(o, &prompt, n);
    let Some(i) = ours.iter().zip(&theirs).position(|(a, b)| a != b) else {
        return;
    };
    // A divergence: only where card's own choice was a near-tie with llama.cpp's.
    let mut ids = prompt.clone();
    ids.extend(&ours[..i]);
    let x = Tensor::from_slice(&ids, (1, ids.len()), &Device::Cpu).unwrap();
    let logits = o.model.forward(&x, Attention::Causal, None).unwrap();
    let last: Vec<f32> = logits
        .get(0)
        .unwrap()
        .get(ids.len() - 1)
        .unwrap()
        .to_vec1()
        .unwrap();
    let gap = last[ours[i] as usize] - last[theirs[i] as usize];
    assert!(
        gap < NEAR_TIE,
        "{what}: llama.cpp parts from card at token {i} ({} vs {}) with a logit gap of {gap}",
        theirs[i],
        ours[i]
    );
    eprintln!("{what}: llama.cpp parts from card at token {i}, a near-tie ({gap:.2e})");
}

fn open(dir: &Path) -> Opened {
    checkpoint::open_as(dir, &Device::Cpu, true, Precision::Stored).unwrap()
}

#[test]
fn llama_cpp_loads_tokenizes_and_decodes_our_own_exports() {
    let Some(script) = consumer() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    common::train_tiny_for_q8_0(cwd, 60, "run");
    let o = open(&cwd.join("run"));
    for (dtype, exact) in [("f32", true), ("f16", false), ("q8_0", false)] {
        let out = format!("run-{dtype}.gguf");
        let export = [
            "export", "run", "--format", "gguf", "--dtype", dtype, "--out", &out,
        ];
        assert_success(&card(&export, cwd));
        agree(
            &script,
            &cwd.join(&out),
            &o,
            "Alice was beginning to",
            exact,
        );
    }
}

#[test]
fn llama_cpp_loads_tokenizes_and_decodes_smollm2_imported_and_adapted() {
    let Some(script) = consumer() else { return };
    let gguf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !gguf.is_file() {
        let why = format!(
            "{} is missing (card data fetch --model smollm2)",
            gguf.display()
        );
        common::skip_unless_ci("the llama.cpp SmolLM2 consumer test", &why);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let import = ["import", gguf.to_str().unwrap(), "--out", "smol"];
    assert_success(&card(&import, cwd));
    // Adapted to CARD: one step of the CARD objective from it (its [MASK] row and objective
    // travel in the export as they would after a long adaptation).
    common::one_step_from(cwd, &cwd.join("smol"), &["--objective", "card"], "adapted");
    let prompt = "The capital of France is";
    for (run, dtypes) in [
        ("smol", &["stored", "f32", "f16", "q8_0"][..]),
        ("adapted", &["f32", "f16", "q8_0"][..]),
    ] {
        // Greedy decoding compared on the f32 export, against card's f32 model.
        let f32 = checkpoint::open_as(&cwd.join(run), &Device::Cpu, true, Precision::F32).unwrap();
        for &dtype in dtypes {
            let out = format!("{run}-{dtype}.gguf");
            let export = [
                "export", run, "--format", "gguf", "--dtype", dtype, "--out", &out,
            ];
            assert_success(&card(&export, cwd));
            agree(&script, &cwd.join(&out), &f32, prompt, dtype == "f32");
            // The files are large: one at a time on disk.
            std::fs::remove_file(cwd.join(&out)).unwrap();
        }
    }
}
