//! The `card` binary end to end: bad input gets a one-line error and a non-zero exit and
//! changes nothing; the happy paths print what they promise.

use common::{assert_error, assert_success, card, last_json, train_tiny};
use std::path::Path;

mod common;

fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n != ".lock") {
                // `.lock` names the last process that held the run (a refused resume too).
                out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn config_errors_are_one_line_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let cases: &[(&[&str], &str)] = &[
        (&["--preset", "nope"], "unknown preset"),
        (&["--set", "train.nonsense=1"], "unknown config key"),
        (&["--set", "nosuch.key=1"], "unknown config section"),
        (
            &["--set", "train.seq_len=1000"],
            "exceeds the model's max_seq_len",
        ),
        (&["--set", "noise.tail_factor=0.5"], "λ"),
        (&["--set", "weights.p=1.5"], "weights.p"),
        (&["--set", "weights.p=0"], "weights.p"),
        (&["--set", "weights.beta=-1"], "β"),
        (&["--set", "train.lr=abc"], "train"),
        (&["--data", "missing-dir"], "missing-dir"),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["train", "--preset", "tiny", "--out", "run", "--quiet"];
        args.extend_from_slice(extra);
        // `--preset nope` must win over the default preset.
        if extra.first() == Some(&"--preset") {
            args.drain(1..3);
        }
        let out = card(&args, cwd);
        assert_error(&out, needle);
        assert!(
            !cwd.join("run").exists(),
            "{extra:?} created the run directory"
        );
    }
}

/// Every numeric config field refuses NaN, infinities, zero, negatives and out-of-range
/// values where they are wrong: one `error:` line naming the field, nothing created.
#[test]
fn every_numeric_field_refuses_bad_values_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let cases: &[(&str, &[&str])] = &[
        ("model.init_std", &["nan", "inf", "0", "-0.02"]),
        ("model.rope_theta", &["nan", "-inf", "0", "-1"]),
        ("model.norm_eps", &["nan", "inf", "0", "-1e-5"]),
        ("model.max_seq_len", &["1", "1000000000"]),
        ("model.d_model", &["0"]),
        ("model.n_heads", &["0", "7"]),
        ("model.vocab_size", &["2"]),
        ("train.lr", &["nan", "inf", "0", "-1"]),
        ("train.min_lr_ratio", &["-0.1", "1.5", "nan"]),
        ("train.beta1", &["1", "-0.1", "nan"]),
        ("train.beta2", &["1", "1.5", "nan"]),
        ("train.eps", &["0", "-1", "nan", "inf"]),
        ("train.weight_decay", &["-0.1", "nan", "inf"]),
        ("train.grad_clip", &["-1", "nan", "inf"]),
        ("train.eval_batches", &["0"]),
        ("train.ema_decay", &["1", "-0.1", "nan"]),
        ("train.batch_size", &["0"]),
        ("train.seq_len", &["1"]),
        ("train.freeze_layers", &["99"]),
        ("noise.tail_factor", &["0.5", "nan", "inf"]),
        ("noise.ar_fraction", &["-0.1", "1.5", "nan"]),
        ("weights.p", &["0", "1.5", "nan"]),
        ("weights.beta", &["-1", "nan", "inf", "0"]),
        ("data.val_fraction", &["-0.1", "1.5", "nan"]),
        ("mdlm.eps", &["0", "1", "nan"]),
        ("bd3lm.block_size", &["0"]),
        ("bd3lm.clip_high", &["0", "1.5", "nan"]),
    ];
    for (key, values) in cases {
        let field = key.split('.').nth(1).unwrap();
        for v in *values {
            let set = format!("{key}={v}");
            let args = [
                "train", "--preset", "tiny", "--out", "run", "--quiet", "--set", &set,
            ];
            assert_error(&card(&args, cwd), field);
            assert!(!cwd.join("run").exists(), "{set} created the run directory");
        }
    }
}

/// A checkpoint of another format version is named as such, even when its config (from a
/// newer card) would not parse as ours.
#[test]
fn a_newer_checkpoint_format_is_named_before_its_config_is_read() {
    use sha2::{Digest, Sha256};
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    train_tiny(cwd, "card", 1, "run");
    let ckpt = checkpoint_dir(&cwd.join("run"));
    let edit = |file: &str, f: &dyn Fn(String) -> String| {
        let p = ckpt.join(file);
        std::fs::write(&p, f(std::fs::read_to_string(&p).unwrap())).unwrap();
    };
    edit("state.json", &|t| {
        t.replace("\"format_version\": 1,", "\"format_version\": 2,")
    });
    edit("config.toml", &|t| {
        t.replace("[train]", "[train]\nfuture_knob = 1")
    });
    // Re-seal the manifest: the files are intact, just from another version.
    let manifest = ckpt.join("manifest.json");
    let mut m: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    for f in ["state.json", "config.toml"] {
        let sum = format!("{:x}", Sha256::digest(std::fs::read(ckpt.join(f)).unwrap()));
        m.insert(f.into(), sum.into());
    }
    std::fs::write(&manifest, serde_json::to_string(&m).unwrap()).unwrap();
    assert_error(
        &card(&["eval", "run"], cwd),
        "has format 2 (this card reads format 1)",
    );
}

fn checkpoint_dir(run: &Path) -> std::path::PathBuf {
    let latest = std::fs::read_to_string(run.join("latest")).unwrap();
    run.join(latest.trim())
}

#[test]
fn device_choice_is_checked_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let args = ["--device", "tpu", "inspect", "config", "--preset", "tiny"];
    assert_error(&card(&args, cwd), "unknown --device 'tpu'");
    let cpu = ["--device", "cpu", "inspect", "config", "--preset", "tiny"];
    assert_success(&card(&cpu, cwd));
    if !cfg!(feature = "cuda") {
        let args = [
            "train", "--preset", "tiny", "--out", "run", "--device", "cuda",
        ];
        assert_error(&card(&args, cwd), "built without CUDA");
        assert!(!cwd.join("run").exists());
    }
}

/// `inspect logits` writes what scripts/check_export.py compares against: one row of logits
/// per prompt position, and a causal model's rows for a shared prefix agree.
#[test]
fn inspect_logits_writes_causal_rows_per_position() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    train_tiny(cwd, "card", 2, "run");
    let args = [
        "inspect",
        "logits",
        "run",
        "--prompt",
        "Alice was",
        "--prompt",
        "Alice was beginning",
        "--out",
        "ref.json",
    ];
    assert_success(&card(&args, cwd));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cwd.join("ref.json")).unwrap()).unwrap();
    let ids = |i: usize| -> Vec<u64> {
        v["ids"][i]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect()
    };
    let (short, long) = (ids(0), ids(1));
    assert!(
        long.len() > short.len() && long.starts_with(&short),
        "{short:?} {long:?}"
    );
    assert_eq!(v["prompts"][1], "Alice was beginning");
    let row = |p: usize, i: usize| -> Vec<f64> {
        v["logits"][p][i]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    assert_eq!(v["logits"][1].as_array().unwrap().len(), long.len());
    for i in 0..short.len() {
        let (a, b) = (row(0, i), row(1, i));
        assert!(a.len() > 100 && a.len() == b.len());
        let d = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        assert!(d < 1e-4, "position {i}: {d}");
    }
    let empty = ["inspect", "logits", "run", "--prompt", ""];
    assert_error(&card(&empty, cwd), "is 0 tokens");
}

#[test]
fn inspect_noise_validates_and_prints_the_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    assert_error(&card(&["inspect", "noise", "--lambda", "0.9"], cwd), "λ");
    assert_error(&card(&["inspect", "noise", "--p", "0"], cwd), "weights.p");
    assert_error(&card(&["inspect", "noise", "--beta=-0.5"], cwd), "β");
    assert_error(&card(&["inspect", "noise", "--t", "1.5"], cwd), "--t");
    let out = card(
        &[
            "inspect", "noise", "--len", "40", "--t", "0.5", "--lambda", "1", "--json",
        ],
        cwd,
    );
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mask: Vec<u64> = v["mask"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    let weights = v["weights"].as_array().unwrap();
    assert_eq!(mask.len(), 40);
    assert_eq!(weights.len(), 39);
    // λ = 1: the 20 masks are the last 20 positions.
    assert_eq!(mask, [vec![0; 20], vec![1; 20]].concat());
    // Clean prefix → weight 1; first target after the first mask → 0.5.
    assert_eq!(weights[19].as_f64().unwrap(), 1.0);
    assert_eq!(weights[20].as_f64().unwrap(), 0.5);
}

#[test]
fn data_prepare_rejects_bad_corpora() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    std::fs::write(cwd.join("empty.txt"), "").unwrap();
    std::fs::write(
        cwd.join("blob.txt"),
        [0u8, 159, 146, 150, 0, 0, 1, 2, 3, 0, 0, 0],
    )
    .unwrap();
    std::fs::create_dir(cwd.join("nothing")).unwrap();
    let out = card(&["data", "prepare", "missing.txt", "--out", "p"], cwd);
    assert_error(&out, "missing.txt");
    assert_error(
        &card(&["data", "prepare", "empty.txt", "--out", "p"], cwd),
        "empty",
    );
    assert_error(
        &card(&["data", "prepare", "blob.txt", "--out", "p"], cwd),
        "binary",
    );
    assert_error(
        &card(&["data", "prepare", "nothing", "--out", "p"], cwd),
        "nothing",
    );
    assert!(!cwd.join("p").exists());
}

#[test]
fn train_eval_resume_and_checkpoint_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let out = card(
        &[
            "train",
            "--preset",
            "tiny",
            "--max-steps",
            "3",
            "--out",
            "run",
            "--quiet",
            "--json",
        ],
        cwd,
    );
    assert_success(&out);
    let summary = last_json(&out);
    assert_eq!(summary["steps"], 3);

    // Training into an existing run without --resume is refused.
    let before = snapshot(&cwd.join("run"));
    let out = card(
        &["train", "--preset", "tiny", "--out", "run", "--quiet"],
        cwd,
    );
    assert_error(&out, "--resume");
    // A resume with a different config is refused and changes nothing.
    let out = card(
        &[
            "train",
            "--resume",
            "run",
            "--set",
            "train.lr=0.5",
            "--quiet",
        ],
        cwd,
    );
    assert_error(&out, "train.lr");
    assert_eq!(snapshot(&cwd.join("run")), before);

    let out = card(&["eval", "run", "--json"], cwd);
    assert_success(&out);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["bits_per_byte"].as_f64().unwrap() > 0.0);
    assert_eq!(report["loss_vs_t"].as_array().unwrap().len(), 10);

    // Corrupt the weights: eval and resume both refuse with a clear message.
    let ckpt = cwd
        .join("run")
        .join(std::fs::read_to_string(cwd.join("run/latest")).unwrap());
    let file = ckpt.join("model.safetensors");
    let mut bytes = std::fs::read(&file).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    assert_error(&card(&["eval", "run"], cwd), "corrupted");
    assert_error(
        &card(&["train", "--resume", "run", "--quiet"], cwd),
        "corrupted",
    );
    std::fs::write(&file, &bytes[..n / 3]).unwrap();
    assert_error(&card(&["eval", "run"], cwd), "corrupted");
    assert_error(&card(&["eval", "no-such-run"], cwd), "does not exist");
}

#[test]
fn generate_prints_json_and_rejects_bad_options() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    for (obj, out) in [("card", "card-run"), ("arm", "arm-run")] {
        let o = card(
            &[
                "train",
                "--preset",
                "tiny",
                "--objective",
                obj,
                "--max-steps",
                "2",
                "--out",
                out,
                "--quiet",
            ],
            cwd,
        );
        assert_success(&o);
    }
    for decoder in ["ar", "card", "verify"] {
        let out = card(
            &[
                "generate",
                "card-run",
                "--prompt",
                "Alice",
                "--max-new-tokens",
                "8",
                "--decoder",
                decoder,
                "--json",
                "--trace",
                "trace.jsonl",
            ],
            cwd,
        );
        assert_success(&out);
        let last = last_json(&out);
        for key in [
            "text",
            "tokens",
            "forward_passes",
            "tokens_per_forward",
            "tokens_per_s",
        ] {
            assert!(!last[key].is_null(), "{decoder}: missing {key} in {last}");
        }
        let trace = std::fs::read_to_string(cwd.join("trace.jsonl")).unwrap();
        assert_eq!(
            trace.lines().count() as u64,
            last["forward_passes"].as_u64().unwrap()
        );
    }
    // An empty prompt starts from <|endoftext|>.
    let out = card(
        &[
            "generate",
            "card-run",
            "--prompt",
            "",
            "--max-new-tokens",
            "4",
        ],
        cwd,
    );
    assert_success(&out);

    let base = [
        "generate",
        "card-run",
        "--prompt",
        "Alice",
        "--decoder",
        "card",
    ];
    let bad: &[(&[&str], &str)] = &[
        (&["--block-size", "0"], "block size"),
        (&["--step-limit", "0"], "step limit"),
        (&["--threshold", "1.5"], "threshold"),
        (&["--threshold=-0.1"], "threshold"),
        (&["--max-new-tokens", "10000"], "context"),
        (&["--top-p", "0"], "top-p"),
        (&["--stop", ""], "--stop needs a non-empty string"),
    ];
    for (extra, needle) in bad {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        assert_error(&card(&args, cwd), needle);
    }
    let long = "Alice ".repeat(200);
    let args = [
        "generate",
        "card-run",
        "--prompt",
        &long,
        "--max-new-tokens",
        "8",
    ];
    assert_error(&card(&args, cwd), "--truncate-prompt");
    let mut args = args.to_vec();
    args.extend(["--truncate-prompt", "left"]);
    assert!(card(&args, cwd).status.success());
    // An ARM checkpoint is refused by the CARD decoder, naming the decoders that fit.
    let out = card(
        &[
            "generate",
            "arm-run",
            "--prompt",
            "Alice",
            "--decoder",
            "card",
        ],
        cwd,
    );
    assert_error(&out, "decoders that fit: ar");
    // Unknown decoder: clap's own error, non-zero exit.
    let out = card(
        &[
            "generate",
            "card-run",
            "--prompt",
            "Alice",
            "--decoder",
            "magic",
        ],
        cwd,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("magic"));
    // The decoding benchmark: AR first, the verifier's output is AR's, per-slot acceptance.
    let args = [
        "bench",
        "decode",
        "card-run",
        "--lengths",
        "6",
        "--batch",
        "1,2",
        "--rounds",
        "1",
        "--grid",
        "4:4:0.5",
        "--verify",
        "3",
        "--sets",
        "prose,probes",
        "--json",
    ];
    let out = card(&args, cwd);
    assert_success(&out);
    let rows = last_json(&out);
    assert!(
        rows["precision"].is_null(),
        "an f32 model has no quantized twin"
    );
    let rows = rows["rows"].as_array().unwrap();
    assert_eq!(
        rows.len(),
        2 * 2 * 3,
        "2 sets x 2 batches x (AR, CARD, verify)"
    );
    for r in rows {
        match r["decoder"].as_str().unwrap() {
            "ar" => assert_eq!(r["ratio_to_ar"], 1.0),
            "verify" => {
                assert_eq!(r["same_as_ar"], 1.0, "{r}");
                assert!(!r["acceptance_by_slot"].as_array().unwrap().is_empty());
            }
            _ => assert!(r["drafts_accepted_per_pass"].is_null()),
        }
    }
    let bad = ["bench", "decode", "card-run", "--sets", "poetry"];
    assert_error(&card(&bad, cwd), "unknown prompt set");
    // The cost curve: every format the f32 checkpoint offers (f32, bf16) x batch x positions,
    // each point's ratio to its own n = 1 pass.
    let curve = [
        "bench",
        "decode",
        "card-run",
        "--cost-curve",
        "--positions",
        "1,3,2",
        "--batch",
        "1,2",
        "--context",
        "8",
        "--reps",
        "2",
        "--json",
    ];
    let out = card(&curve, cwd);
    assert_success(&out);
    let points = last_json(&out)["cost_curve"].as_array().unwrap().clone();
    assert_eq!(
        points.len(),
        2 * 2 * 3,
        "2 formats x 2 batches x 3 positions"
    );
    for p in &points {
        assert!(p["ms"].as_f64().unwrap() > 0.0, "{p}");
        let one = points
            .iter()
            .find(|q| {
                q["precision"] == p["precision"] && q["batch"] == p["batch"] && q["positions"] == 1
            })
            .unwrap();
        let ratio = p["ms"].as_f64().unwrap() / one["ms"].as_f64().unwrap();
        assert!((p["ratio"].as_f64().unwrap() - ratio).abs() < 1e-9, "{p}");
    }
    let formats: Vec<_> = points
        .iter()
        .map(|p| p["precision"].as_str().unwrap())
        .collect();
    assert!(
        formats.contains(&"f32") && formats.contains(&"bf16"),
        "{formats:?}"
    );
    let long = [
        "bench",
        "decode",
        "card-run",
        "--cost-curve",
        "--context",
        "60",
    ];
    assert_error(&card(&long, cwd), "exceeds the model's context of 64");
}
