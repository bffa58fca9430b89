//! `card distill` and `card train --init` end to end on the embedded corpus: the prepared
//! corpus holds the model's continuations with the checkpoint's tokenizer, the run starts
//! from the checkpoint at step 0, a rerun reuses every stage, other settings are refused.

use card::checkpoint;
use card::data::Prepared;
use common::{assert_error, assert_success, card, last_json, train_tiny};
use std::fs;

mod common;

#[test]
fn distill_prepares_continuations_with_the_checkpoints_tokenizer_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    train_tiny(cwd, "card", 3, "base");
    let args = [
        "distill",
        "base",
        "--out",
        "d",
        "--prefixes",
        "6",
        "--batch",
        "4",
        "--prefix-len",
        "8",
        "--new-tokens",
        "12",
        "--max-steps",
        "2",
        "--eval-windows",
        "2",
        "--quiet",
        "--json",
    ];
    let out = card(&args, cwd);
    assert_success(&out);
    let report = last_json(&out);
    assert_eq!(report["rows"], 6);
    assert_eq!(report["steps"], 2);
    assert!(report["bpb_before"].as_f64().unwrap() > 0.0);
    assert!(report["bpb_after"].as_f64().unwrap() > 0.0);
    let base = checkpoint::load(&cwd.join("base"), &candle_core::Device::Cpu).unwrap();
    let data = Prepared::load(&cwd.join("d/data")).unwrap();
    assert_eq!(data.tokenizer.hash(), base.state.tokenizer_hash);
    // The corpus starts with the continuations, each its 8-token prefix plus up to 12 more.
    let lines = fs::read_to_string(cwd.join("d/continuations.jsonl")).unwrap();
    let chunks: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(chunks.len(), 2, "6 rows in chunks of 4");
    let first: Vec<u32> = serde_json::from_value(chunks[0]["rows"][0].clone()).unwrap();
    assert!(first.len() > 8 && first.len() <= 8 + 12 + 1);
    assert_eq!(&data.train[..first.len()], first.as_slice());
    let run = checkpoint::load(&cwd.join("d/run"), &candle_core::Device::Cpu).unwrap();
    assert_eq!(run.state.step, 2);
    assert!(run.state.init_from.is_some());
    // Rerun: every stage reused, the same report.
    let again = card(&args, cwd);
    assert_success(&again);
    assert_eq!(last_json(&again), report);
    // A run killed while writing continuations: a torn last line and no report. The rerun
    // cuts the torn line, regenerates that chunk and ends with the same report.
    let path = cwd.join("d/continuations.jsonl");
    let full = fs::read_to_string(&path).unwrap();
    let cut = full.trim_end().rfind('\n').unwrap() + 1;
    fs::write(&path, format!("{}{{\"chunk\": 1, \"ro", &full[..cut])).unwrap();
    fs::remove_file(cwd.join("d/report.json")).unwrap();
    let dotted = args.map(|a| if a == "d" { "./d" } else { a });
    let resumed = card(&dotted, cwd);
    assert_success(&resumed);
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        full,
        "the same continuations"
    );
    assert_eq!(last_json(&resumed), report);
    // Other settings into the same directory are refused.
    let mut other = args.to_vec();
    other[5] = "7";
    assert_error(&card(&other, cwd), "other settings");
    // --init on its own: a fresh run from the checkpoint's weights.
    let init = [
        "train",
        "--init",
        "base",
        "--max-steps",
        "2",
        "--out",
        "fine",
        "--quiet",
        "--json",
    ];
    assert_success(&card(&init, cwd));
    let fine = checkpoint::load(&cwd.join("fine"), &candle_core::Device::Cpu).unwrap();
    assert_eq!(fine.state.step, 2);
    assert_eq!(fine.config.model, base.config.model);
    // The fine-tuning defaults, unless --set says otherwise.
    assert_eq!(
        (fine.config.train.lr, fine.config.train.warmup_steps),
        (3e-4, 50)
    );
    let mut lr = init.to_vec();
    lr[6] = "fine-lr";
    lr.extend(["--set", "train.lr=1e-5"]);
    assert_success(&card(&lr, cwd));
    let fine_lr = checkpoint::load(&cwd.join("fine-lr"), &candle_core::Device::Cpu).unwrap();
    assert_eq!(fine_lr.config.train.lr, 1e-5);
    let both = ["train", "--init", "base", "--resume", "fine", "--quiet"];
    let o = card(&both, cwd);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot be used with"));
}
