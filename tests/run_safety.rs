//! A training run cannot be silently corrupted: killed at random moments (SIGKILL, no
//! cleanup) and resumed each time it ends bit for bit where an uninterrupted run ends; a
//! second writer is refused while the first holds the run; other data is refused on resume.
//! A command that has no clean stop of its own (a benchmark) exits on the first SIGTERM.

use candle_core::Device;
use card::config::{Config, ObjectiveKind};
use card::train::Trainer;
use common::{assert_error, assert_success, card};
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

fn spawn(cwd: &Path, run: &str, objective: &str, steps: usize) -> Child {
    let steps = steps.to_string();
    let mut c = Command::new(env!("CARGO_BIN_EXE_card"));
    c.current_dir(cwd)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if cwd.join(run).join("latest").exists() {
        c.args(["train", "--resume", run, "--quiet", "--max-steps", &steps]);
    } else {
        c.args([
            "train",
            "--preset",
            "tiny",
            "--objective",
            objective,
            "--out",
            run,
        ])
        .args(["--quiet", "--max-steps", &steps])
        .args(["--set", "train.ckpt_every=2", "--set", "train.eval_every=0"]);
    }
    c.spawn().unwrap()
}

/// The final checkpoint's weights, optimizer state and step log.
fn outcome(run: &Path) -> (Vec<u8>, Vec<u8>, Vec<(u64, String)>) {
    let latest = std::fs::read_to_string(run.join("latest")).unwrap();
    let dir = run.join(latest.trim());
    let log = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let steps = log
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].to_string())
        })
        .collect();
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    (read("model.safetensors"), read("optim.safetensors"), steps)
}

fn latest_step(run: &Path) -> usize {
    std::fs::read_to_string(run.join("latest"))
        .ok()
        .and_then(|l| l.trim().trim_start_matches("ckpt-").parse().ok())
        .unwrap_or(0)
}

/// Kill `kills` times at seeded random moments, resuming each time, then finish; the result
/// must equal `base` (an uninterrupted run of `steps`). A moment is a random checkpoint to
/// wait for (up to twice a fair share of the remaining steps, so every kill lands before the
/// end on any machine) plus a random delay: at start-up, mid-step, or mid-save.
fn kill_and_resume(cwd: &Path, objective: &str, steps: usize, kills: usize) {
    let mut rng = rand_pcg::Pcg64::seed_from_u64(15);
    let run = cwd.join("run");
    for k in 0..kills {
        let cur = latest_step(&run);
        let share = (steps - cur) / (kills - k + 1);
        let target = (cur + rng.random_range(0..=2 * share)).min(steps - 4);
        let mut child = spawn(cwd, "run", objective, steps);
        let start = Instant::now();
        while latest_step(&run) < target {
            assert!(child.try_wait().unwrap().is_none(), "the run ended early");
            assert!(start.elapsed() < Duration::from_secs(120), "no progress");
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..60)));
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run finished after {k} of {kills} kills"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let status = spawn(cwd, "run", objective, steps).wait().unwrap();
    assert!(status.success(), "the final resume failed");
    let (w, o, log) = outcome(&run);
    let (bw, bo, blog) = outcome(&cwd.join("base"));
    assert!(
        w == bw,
        "{objective}: weights differ from the uninterrupted run's"
    );
    assert!(o == bo, "{objective}: optimizer state differs");
    assert_eq!(
        log, blog,
        "{objective}: the step log differs (each step once, same loss)"
    );
}

fn baseline(cwd: &Path, objective: &str, steps: usize) {
    let s = spawn(cwd, "base", objective, steps).wait().unwrap();
    assert!(s.success());
}

#[test]
fn card_run_killed_at_twenty_random_moments_ends_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    baseline(dir.path(), "card", 120);
    kill_and_resume(dir.path(), "card", 120, 20);
}

#[test]
fn mdlm_and_bd3lm_runs_killed_once_end_bit_identical() {
    for objective in ["mdlm", "bd3lm"] {
        let dir = tempfile::tempdir().unwrap();
        baseline(dir.path(), objective, 30);
        kill_and_resume(dir.path(), objective, 30, 1);
    }
}

#[test]
fn sigterm_saves_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    baseline(cwd, "card", 40);
    let mut child = spawn(cwd, "run", "card", 40);
    while !cwd.join("run/latest").exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    child.wait().unwrap();
    assert!(spawn(cwd, "run", "card", 40).wait().unwrap().success());
    assert!(
        outcome(&cwd.join("run")) == outcome(&cwd.join("base")),
        "SIGTERM + resume differs"
    );
}

#[test]
fn a_second_writer_is_refused_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let mut first = spawn(cwd, "run", "card", 100_000);
    let start = Instant::now();
    while !cwd.join("run/latest").exists() {
        assert!(start.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = first.id().to_string();
    let out = card(&["train", "--resume", "run", "--quiet"], cwd);
    assert_error(&out, &format!("run is being written by card (pid {pid})"));
    first.kill().unwrap();
    first.wait().unwrap();
    // The lock dies with its process: no stale lock after a kill.
    let step = std::fs::read_to_string(cwd.join("run/latest")).unwrap();
    let step: usize = step.trim().trim_start_matches("ckpt-").parse().unwrap();
    let target = (step + 1).to_string();
    assert_success(&card(
        &[
            "train",
            "--resume",
            "run",
            "--quiet",
            "--max-steps",
            &target,
        ],
        cwd,
    ));
}

#[test]
fn resume_on_other_data_is_refused() {
    let mut cfg = Config::load("tiny", &[]).unwrap();
    cfg.train.max_steps = 1;
    cfg.train.objective = ObjectiveKind::Card;
    cfg.train.eval_batches = 1;
    let data = card::data::load_data(&cfg, None).unwrap();
    let mut t = Trainer::new(cfg.clone(), &data, &Device::Cpu).unwrap();
    t.step().unwrap();
    let ckpt = t.checkpoint().unwrap();
    // The same tokenizer, one document fewer: the tokenizer check alone cannot tell.
    let mut docs = card::data::embedded_documents();
    docs.remove(0);
    let m = &data.meta;
    let other = card::data::prepare(
        docs,
        Some(data.tokenizer.clone()),
        m.vocab_size,
        m.val_fraction,
        m.seed,
    )
    .unwrap();
    let e = Trainer::resume(cfg.clone(), ckpt, &other)
        .err()
        .expect("refused");
    assert!(
        format!("{e:#}").contains("the data differs from the data it was trained on"),
        "{e:#}"
    );
    let same = t.checkpoint().unwrap();
    assert!(Trainer::resume(cfg, same, &data).is_ok());
}

#[test]
fn a_benchmark_exits_on_the_first_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_card"))
        .args(["bench", "train", "--preset", "small", "--objective", "arm"])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the benchmark ended before the signal"
    );
    let sent = Instant::now();
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if sent.elapsed() > Duration::from_secs(20) {
            child.kill().unwrap();
            panic!("SIGTERM left the benchmark running");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(130));
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "{:?}",
        sent.elapsed()
    );
}
