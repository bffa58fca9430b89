//! SmolLM2-135M-Instruct (Q4_1 GGUF) through `card import` against an outside reference:
//! `scripts/gguf_reference.py` reads and dequantizes the file with the `gguf` package and runs
//! a plain NumPy float64 Llama forward (llama.cpp's interleaved RoPE on the file's own rows)
//! and its own byte-level BPE with llama.cpp's pre-tokenizer rules.
//!
//! Needs the file (`card data fetch --model smollm2`, or CARD_SMOLLM2_GGUF) and python3 with
//! numpy and gguf. Without them the test says so and passes, except under CI (`CI` set),
//! where `.ci/run` provides both and a missing one fails.

use candle_core::{Device, Tensor};
use card::checkpoint::{self, Precision};
use card::decode::{ArDecoder, Decoder, GenOptions, Sampling};
use card::import::{import, ImportOptions};
use card::model::Attention;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

fn fixture() -> Option<PathBuf> {
    let path = std::env::var_os("CARD_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("data/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    let python = Command::new("python3")
        .args(["-c", "import numpy, gguf"])
        .output()
        .is_ok_and(|o| o.status.success());
    let missing = match (path.is_file(), python) {
        (true, true) => return Some(path),
        (false, _) => format!(
            "{} is missing (card data fetch --model smollm2)",
            path.display()
        ),
        (true, false) => "python3 with numpy and gguf is missing".to_string(),
    };
    common::skip_unless_ci("the SmolLM2 parity test", &missing);
    None
}

fn reference(args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/gguf_reference.py");
    let out = Command::new("python3")
        .arg(script)
        .args(args)
        .env("OMP_NUM_THREADS", "1")
        .env("OPENBLAS_NUM_THREADS", "1")
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const TEXTS: &[&str] = &[
    "The capital of France is",
    "Hello world",
    "In 2024, 1234 apples cost $56.78 (about 9%).",
    "def f(x):\n    return x  *  2\n\n\n\tindented\r\n",
    "café naïve — 東京 🚀 Ünïcödé ½ ٣",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "   leading spaces and trailing   ",
    "I'm sure they'll say it's 'quoted' — isn't it?",
    "<|endoftext|>Once upon a time",
];

#[test]
fn smollm2_matches_the_numpy_reference() {
    let Some(gguf) = fixture() else { return };
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    import(&ImportOptions {
        source: gguf.clone(),
        out: run.clone(),
        quantize: None,
    })
    .unwrap();
    let dense = checkpoint::open_as(&run, &Device::Cpu, true, Precision::F32).unwrap();
    let tok = &dense.tokenizer;
    let g = gguf.to_str().unwrap();

    // Tokenizer: ids equal the reference's, and decoding gives the text back.
    let texts = dir.path().join("texts.json");
    // The hand-picked cases, then 300 paragraphs of the embedded corpus (punctuation, quotes,
    // dashes, numbers, line breaks as a book has them).
    let mut sample: Vec<String> = TEXTS.iter().map(|t| t.to_string()).collect();
    let book: String = card::data::embedded_documents()
        .iter()
        .map(|d| d.text.clone())
        .collect();
    sample.extend(
        book.split("\n\n")
            .filter(|p| !p.trim().is_empty())
            .take(300)
            .map(String::from),
    );
    std::fs::write(&texts, serde_json::to_string(&sample).unwrap()).unwrap();
    let tok_out = dir.path().join("tok.json");
    reference(&[
        "tokenize",
        g,
        "--texts",
        texts.to_str().unwrap(),
        "--out",
        tok_out.to_str().unwrap(),
    ]);
    let want: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&tok_out).unwrap()).unwrap();
    assert_eq!(want.as_array().unwrap().len(), sample.len());
    for (text, w) in sample.iter().zip(want.as_array().unwrap()) {
        let ids: Vec<u32> = serde_json::from_value(w["ids"].clone()).unwrap();
        assert_eq!(tok.encode(text).unwrap(), ids, "{text:?}");
        assert_eq!(&tok.decode(&ids).unwrap(), text);
    }

    // Logits of every prompt position, and 32 greedy tokens.
    let prompts: Vec<Vec<u32>> = [0, 2, 5]
        .iter()
        .map(|&i| tok.encode(TEXTS[i]).unwrap())
        .collect();
    let ids = dir.path().join("ids.json");
    std::fs::write(&ids, serde_json::to_string(&prompts).unwrap()).unwrap();
    let fwd = dir.path().join("fwd");
    reference(&[
        "forward",
        g,
        "--ids",
        ids.to_str().unwrap(),
        "--greedy",
        "32",
        "--out",
        fwd.to_str().unwrap(),
    ]);
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fwd.join("reference.json")).unwrap()).unwrap();
    let raw = std::fs::read(fwd.join("logits.f32")).unwrap();
    let all: Vec<f32> = raw
        .chunks(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let v = meta["vocab"].as_u64().unwrap() as usize;
    let stored = checkpoint::open(&run, &Device::Cpu, true).unwrap();
    assert!(stored.model.is_quantized());
    let (mut worst, mut agree, mut total) = (0f32, 0, 0);
    for (p, m) in prompts.iter().zip(meta["prompts"].as_array().unwrap()) {
        let offset = m["offset"].as_u64().unwrap() as usize;
        let t = p.len();
        let want = &all[offset..offset + t * v];
        let x = Tensor::from_slice(p, (1, t), &Device::Cpu).unwrap();
        let logits = |model: &card::model::Transformer| -> Vec<f32> {
            let out = model.forward(&x, Attention::Causal, None).unwrap();
            out.narrow(2, 0, v)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let got = logits(&dense.model);
        for i in 0..t {
            let (a, b) = (&got[i * v..(i + 1) * v], &want[i * v..(i + 1) * v]);
            let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
            let err = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale;
            worst = worst.max(err);
        }
        // candle's quantized matmuls (the forward without a cache; activations rounded to 8
        // bits) pick the same top token almost everywhere.
        let q = logits(&stored.model);
        let argmax = |s: &[f32]| {
            (0..s.len())
                .max_by(|&i, &j| s[i].total_cmp(&s[j]).then(j.cmp(&i)))
                .unwrap()
        };
        for i in 0..t {
            total += 1;
            agree +=
                usize::from(argmax(&q[i * v..(i + 1) * v]) == argmax(&want[i * v..(i + 1) * v]));
        }
        // Greedy AR decoding of the f32 model continues exactly as the reference.
        let greedy: Vec<u32> = serde_json::from_value(m["greedy"].clone()).unwrap();
        let o = GenOptions {
            max_new_tokens: 32,
            eos_id: u32::MAX,
            mask_id: tok.mask_id(),
            sampling: Sampling::default(),
            seed: 0,
            stop: None,
            backend: None,
        };
        let g = ArDecoder
            .generate(&dense.model, std::slice::from_ref(p), &o, &mut |_| {})
            .unwrap();
        assert_eq!(g.rows[0].tokens, greedy, "greedy continuation of {p:?}");
        // So does the quantized model on the host backend (its blocks, f32 activations).
        let q = ArDecoder
            .generate(&stored.model, std::slice::from_ref(p), &o, &mut |_| {})
            .unwrap();
        assert_eq!(q.rows[0].tokens, greedy, "quantized greedy of {p:?}");
    }
    eprintln!("SmolLM2 f32 vs NumPy float64: max relative logit error {worst:.2e}; candle's quantized forward: top-1 agreement {agree}/{total}");
    assert!(worst < 1e-3, "max relative error {worst}");
    assert!(
        agree * 10 >= total * 9,
        "quantized top-1 agreement {agree}/{total}"
    );
}

/// SmolLM2 leaves as GGUF (its blocks) and as a Hugging Face directory (f32) and comes back
/// with the same logits.
#[test]
fn smollm2_survives_export_and_import() {
    let Some(gguf) = fixture() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n);
    let import_to = |src: &Path, out: &Path| {
        import(&ImportOptions {
            source: src.to_path_buf(),
            out: out.to_path_buf(),
            quantize: None,
        })
        .unwrap()
    };
    import_to(&gguf, &d("a"));
    card::import::export::export_gguf(&d("a"), &d("a.gguf"), None).unwrap();
    card::import::export::export_hf(&d("a"), &d("hf")).unwrap();
    import_to(&d("a.gguf"), &d("b"));
    import_to(&d("hf"), &d("c"));
    let ids = [504u32, 3575, 282, 4649, 314, 1, 4093, 198];
    let x = Tensor::from_slice(&ids, (1, ids.len()), &Device::Cpu).unwrap();
    let logits = |run: &str, p: Precision| {
        let o = checkpoint::open_as(&d(run), &Device::Cpu, true, p).unwrap();
        o.model.forward(&x, Attention::Causal, None).unwrap()
    };
    let diff = common::max_abs_diff;
    let dense = logits("a", Precision::F32);
    assert_eq!(diff(&logits("b", Precision::F32), &dense), 0.0, "GGUF, f32");
    assert_eq!(
        diff(
            &logits("b", Precision::Stored),
            &logits("a", Precision::Stored)
        ),
        0.0
    );
    assert_eq!(diff(&logits("c", Precision::Stored), &dense), 0.0, "HF");
}
