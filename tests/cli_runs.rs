//! The `card` binary on whole runs and the machine around them: every experiment's smoke run,
//! the adaptation recipe, a killed run resumed, memory over hundreds of steps, thread counts,
//! `bench train`, launchers it refuses, and a busy machine.

use common::{assert_error, assert_success, card, last_json, train_tiny};
use std::process::Command;

mod common;

#[test]
fn every_experiment_smoke_run_writes_report_csv_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    for name in [
        "masking-ablation",
        "tail-factor",
        "objectives",
        "decoding-calibration",
        "data-efficiency",
        "ema",
        "parallel-decoding",
        "scaling",
    ] {
        let out = card(&["experiment", name, "--smoke"], cwd);
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {log}");
        // λ = 1.5 is the default soft tail: the masking ablation's run answers for it.
        if name == "tail-factor" {
            assert!(
                log.contains("lambda-1.5 seed 0: the same run finished in")
                    && log.contains("masking-ablation/runs/soft-tail-s0"),
                "{log}"
            );
        }
        // The sweep's smallest budget is the objectives experiment's run length: its runs
        // answer for it.
        if name == "scaling" {
            assert!(
                log.contains("arm-10 seed 0: the same run finished in")
                    && log.contains("objectives/runs/arm-s0"),
                "{log}"
            );
        }
        let folder = cwd.join("results/tiny").join(name);
        let report = std::fs::read_to_string(folder.join("report.md")).unwrap();
        if name == "scaling" {
            for part in [
                "gap on validation",
                "Trend of the gap",
                "Strict vs soft tail",
                "Acceptance of [MASK] drafts by slot",
            ] {
                assert!(report.contains(part), "scaling report lacks {part}");
            }
        }
        assert!(
            report.contains("Machine:") && report.contains("| "),
            "{name}: report lacks its table"
        );
        let csv = std::fs::read_to_string(folder.join("results.csv")).unwrap();
        assert!(csv.lines().count() >= 2, "{name}: empty CSV");
        let svgs = std::fs::read_dir(&folder).unwrap().filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "svg")
        });
        assert!(svgs.count() >= 1, "{name}: no plot");
    }
    // A second call reuses the finished runs instead of training again, and the scaling
    // sweep's acceptance counts instead of decoding again.
    let out = card(&["experiment", "ema", "--smoke"], cwd);
    assert!(String::from_utf8_lossy(&out.stderr).contains("done earlier"));
    let out = card(&["experiment", "scaling", "--smoke"], cwd);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !log.contains("acceptance of"),
        "{log}"
    );
    // ... but never a smoke run as the real one.
    let out = card(&["experiment", "ema"], cwd);
    assert!(!out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("trained with other settings") && log.contains("train.max_steps"),
        "{log}"
    );
    // ... nor a run that older code produced.
    let runs = cwd.join("results/tiny/ema/runs");
    let first = std::fs::read_dir(&runs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let result = first.join("result.json");
    let saved = std::fs::read_to_string(&result).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&saved).unwrap();
    assert_eq!(v["results_version"], card::experiment::RESULTS_VERSION);
    v["results_version"] = serde_json::json!(0);
    std::fs::write(&result, v.to_string()).unwrap();
    let out = card(&["experiment", "ema", "--smoke"], cwd);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains("was produced by other code (results version 0"),
        "{log}"
    );
    std::fs::write(&result, saved).unwrap();
    // parallel-decoding reuses its training run, distillation and both benchmarks.
    let out = card(&["experiment", "parallel-decoding", "--smoke"], cwd);
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(log.matches("done earlier").count(), 3, "{log}");
    let report =
        std::fs::read_to_string(cwd.join("results/tiny/parallel-decoding/report.md")).unwrap();
    assert!(report.contains("Lossless mode") && report.contains("identical to AR"));
    let from = cwd.join("results/tiny/parallel-decoding/runs/card-s0");
    let args = [
        "experiment",
        "ema",
        "--smoke",
        "--from",
        from.to_str().unwrap(),
    ];
    assert_error(
        &card(&args, cwd),
        "--from applies to parallel-decoding and adaptation only",
    );
    assert_error(&card(&["experiment", "nope"], cwd), "unknown experiment");
}

/// The adaptation recipe from a small ARM model: it measures the base before training (the
/// run's step-0 line equals an independent evaluation of it), trains with CARD, benchmarks
/// both models, writes its report, and reuses every stage when rerun.
#[test]
fn adaptation_recipe_measures_the_base_then_the_adapted_model() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    // No --from and no fetched SmolLM2: the way to get one is named.
    assert_error(
        &card(&["experiment", "adaptation", "--smoke"], cwd),
        "card data fetch --model smollm2",
    );
    train_tiny(cwd, "arm", 10, "base");
    let run = ["experiment", "adaptation", "--smoke", "--from", "base"];
    assert_success(&card(&run, cwd));
    let folder = cwd.join("results/adaptation");
    let report = std::fs::read_to_string(folder.join("report.md")).unwrap();
    for needle in [
        "AR scoring",
        "| adapted | verify |",
        "Lossless mode",
        "Threshold mode",
    ] {
        assert!(
            report.contains(needle),
            "report lacks {needle:?}:\n{report}"
        );
    }
    assert!(folder.join("adaptation.svg").is_file() && folder.join("pareto.svg").is_file());
    let csv = std::fs::read_to_string(folder.join("results.csv")).unwrap();
    assert!(
        csv.lines().any(|l| l.starts_with("base,"))
            && csv.lines().any(|l| l.starts_with("adapted,"))
    );
    // The run's first metrics line is the base model, before any step.
    let metrics = std::fs::read_to_string(folder.join("runs/card-s0/metrics.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    assert_eq!(first["step"], 0);
    let base: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("base-eval.json")).unwrap())
            .unwrap();
    let (a, b) = (
        first["val_bits_per_byte"].as_f64().unwrap(),
        base["bits_per_byte"].as_f64().unwrap(),
    );
    assert!(
        (a / b - 1.0).abs() < 1e-4,
        "step 0 {a} against the base's {b}"
    );
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(folder.join("runs/card-s0/result.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["objective"], "card");
    // Rerun: the base evaluation, the run and both benchmarks are reused.
    let out = card(&run, cwd);
    assert_success(&out);
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(log.matches("done earlier").count(), 4, "{log}");
    // A run whose result was lost resumes from its checkpoint (no step left) and scores the
    // same model again.
    let result = folder.join("runs/card-s0/result.json");
    std::fs::remove_file(&result).unwrap();
    assert_success(&card(&run, cwd));
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&result).unwrap()).unwrap();
    assert_eq!(again["bits_per_byte"], state["bits_per_byte"]);
    assert_eq!(again["steps"], state["steps"]);
    // A bidirectional model is not a causal LM to adapt.
    train_tiny(cwd, "mdlm", 2, "mdlm");
    let args = [
        "experiment",
        "adaptation",
        "--smoke",
        "--from",
        "mdlm",
        "--out",
        "x",
    ];
    assert_error(&card(&args, cwd), "adaptation starts from a causal LM");
}

#[test]
fn a_killed_run_leaves_a_loadable_checkpoint_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let mut child = Command::new(env!("CARGO_BIN_EXE_card"))
        .args([
            "train",
            "--preset",
            "tiny",
            "--out",
            "run",
            "--quiet",
            "--max-steps",
            "100000",
        ])
        .args(["--set", "train.ckpt_every=3", "--set", "train.eval_every=0"])
        .current_dir(cwd)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the first checkpoint, then kill at an arbitrary moment (SIGKILL: no cleanup).
    let start = std::time::Instant::now();
    while !cwd.join("run/latest").exists() && start.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(700));
    child.kill().unwrap();
    child.wait().unwrap();
    let out = card(&["eval", "run", "--json", "--max-windows", "2"], cwd);
    assert_success(&out);
    let step = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["step"]
        .as_u64()
        .unwrap();
    assert!(step >= 3 && step.is_multiple_of(3), "step {step}");
    let target = (step + 2).to_string();
    let out = card(
        &[
            "train",
            "--resume",
            "run",
            "--max-steps",
            &target,
            "--quiet",
            "--json",
        ],
        cwd,
    );
    assert_success(&out);
}

#[test]
fn training_memory_does_not_grow_over_hundreds_of_steps() {
    // The benchmark's own probe: a fresh process, 10 warm-up steps and 150 steps, then 150
    // more while it watches the resident set. A graph, batch or metric kept alive per step
    // would add megabytes every step, in both halves of the watch.
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "bench",
        "train",
        "--memory-probe",
        "--preset",
        "tiny",
        "--objective",
        "card",
        "--warmup",
        "10",
        "--steps",
        "150",
    ];
    let out = card(&args, dir.path());
    assert_success(&out);
    let probe = last_json(&out);
    assert_eq!(probe["steps"], 150);
    let growth = probe["rss_growth_mb"].as_f64().unwrap();
    let peak = probe["peak_rss_mb"].as_f64().unwrap();
    assert!(peak > 0.0, "peak RSS is measured: {probe}");
    assert_eq!(probe["rss_growth_halves_mb"].as_array().unwrap().len(), 2);
    assert!(
        growth.abs() < 8.0,
        "resident memory grew {growth} MiB over 150 steps: {probe}"
    );
}

#[test]
fn threads_flag_is_validated_and_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let out = card(
        &["--threads", "0", "inspect", "params", "--preset", "tiny"],
        dir.path(),
    );
    assert_error(&out, "--threads must be in [1, 1024], got 0");
    let out = card(
        &[
            "--threads",
            "100000",
            "inspect",
            "params",
            "--preset",
            "tiny",
        ],
        dir.path(),
    );
    assert_error(&out, "--threads must be in [1, 1024], got 100000");
    let out = card(
        &["inspect", "params", "--preset", "tiny", "--threads", "1"],
        dir.path(),
    );
    assert_success(&out);
    // The count is the one training reports for the same preset.
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    let args = [
        "train",
        "--preset",
        "tiny",
        "--max-steps",
        "1",
        "--out",
        "run",
        "--quiet",
    ];
    let train = card(&args, dir.path());
    assert_success(&train);
    let log = String::from_utf8_lossy(&train.stderr);
    let trained = log
        .split("training ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .unwrap();
    assert!(
        printed.starts_with(&format!("tiny: {trained} parameters")),
        "{printed} against {trained}"
    );
}

#[test]
fn bench_train_measures_f32_and_bf16_compute_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "bench",
        "train",
        "--preset",
        "tiny",
        "--objective",
        "card",
        "--compute",
        "f32,bf16",
        "--steps",
        "1",
        "--warmup",
        "1",
        "--json",
    ];
    let out = card(&args, dir.path());
    assert_success(&out);
    let rows = last_json(&out);
    let computes: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["compute"].as_str().unwrap())
        .collect();
    assert_eq!(computes, ["f32", "bf16"]);
    assert!(rows[1]["ratio_to_card"].as_f64().unwrap() > 0.0);
    let bad = [
        "bench",
        "train",
        "--preset",
        "tiny",
        "--compute",
        "f16",
        "--steps",
        "1",
    ];
    assert_error(
        &card(&bad, dir.path()),
        "--compute: unknown 'f16' (known: f32, bf16, auto)",
    );
    // --from: the checkpoint's shape (tiny's), not the default preset's (small's).
    train_tiny(dir.path(), "card", 3, "base");
    let from = [
        "bench",
        "train",
        "--from",
        "base",
        "--objective",
        "card",
        "--steps",
        "1",
        "--warmup",
        "1",
        "--json",
    ];
    let out = card(&from, dir.path());
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("bench train: from base ("));
    let ckpt = std::fs::read_to_string(dir.path().join("base/latest")).unwrap();
    let config = format!("base/{}/config.toml", ckpt.trim());
    let counted = card(&["inspect", "params", "--preset", &config], dir.path());
    let want = format!("{} parameters", last_json(&out)["params"]);
    assert!(
        String::from_utf8_lossy(&counted.stdout).contains(&want),
        "{want}"
    );
    let missing = ["bench", "train", "--from", "nowhere", "--steps", "1"];
    assert_error(
        &card(&missing, dir.path()),
        "checkpoint nowhere does not exist",
    );
}

#[test]
fn a_torchrun_style_launch_of_cpu_processes_is_refused() {
    // RANK/WORLD_SIZE > 1 without a GPU: NCCL is for GPU ranks, CPU ranks go through mpirun.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_card"))
        .args([
            "train",
            "--preset",
            "tiny",
            "--max-steps",
            "1",
            "--out",
            "run",
            "--quiet",
        ])
        .current_dir(dir.path())
        .env("RANK", "0")
        .env("WORLD_SIZE", "2")
        .output()
        .unwrap();
    assert_error(&out, "launch CPU processes with mpirun");
    assert!(!dir.path().join("run").exists());
}

/// Issue 17: work that starts on a busy machine takes the cores other processes leave free
/// (two spinning pools on the same cores stall each other); `--threads` keeps its count.
#[test]
#[cfg(target_os = "linux")]
fn training_on_a_busy_machine_takes_only_the_free_cores() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        cores >= 2,
        "this test needs at least 2 cores to show a back-off"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut spinners: Vec<_> = (0..cores)
        .map(|_| {
            Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let run = |extra: &[&str], out: &str| {
        let mut args = extra.to_vec();
        args.extend([
            "train",
            "--preset",
            "tiny",
            "--max-steps",
            "2",
            "--quiet",
            "--out",
            out,
        ]);
        card(&args, dir.path())
    };
    let auto = run(&[], "auto");
    let pinned = run(&["--threads", "2"], "pinned");
    for s in &mut spinners {
        s.kill().unwrap();
        let _ = s.wait();
    }
    assert_success(&auto);
    assert_success(&pinned);
    let note = String::from_utf8_lossy(&auto.stderr);
    assert!(
        note.contains("cores busy: using 1 compute thread instead of"),
        "{note}"
    );
    assert!(!String::from_utf8_lossy(&pinned.stderr).contains("compute thread"));
}
