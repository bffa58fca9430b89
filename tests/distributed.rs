//! Data-parallel training over MPI: `mpirun -n 2 card train` follows one process's loss
//! trajectory with the same global batch, a signalled 2-rank run saves on every rank and
//! resumes bit for bit, and a dead rank or an error on one rank ends the whole job at once.
//! Needs a binary built with `--features mpi` and OpenMPI's `mpirun` (`.ci/run` installs both).

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

/// Why these tests cannot run here, if they cannot.
fn missing() -> Option<&'static str> {
    if !cfg!(feature = "mpi") {
        return Some(
            "the binary was built without --features mpi (the README's test command has it)",
        );
    }
    let ok = Command::new("mpirun")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    (!ok).then_some("mpirun is not installed (Debian: openmpi-bin libopenmpi-dev libclang-dev)")
}

macro_rules! need_mpi {
    ($test:expr) => {
        if let Some(why) = missing() {
            common::skip_unless_ci($test, why);
            return;
        }
    };
}

/// `card ARGS` on `n` ranks (as root where CI runs as root; more ranks than cores allowed).
fn mpirun(n: usize, cwd: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("mpirun");
    c.current_dir(cwd)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .args(["-n", &n.to_string(), "--oversubscribe"])
        .arg(env!("CARGO_BIN_EXE_card"))
        .args(args);
    c
}

fn one(cwd: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_card"));
    c.current_dir(cwd).args(args);
    c
}

fn train_args<'a>(out: &'a str, steps: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "train",
        "--preset",
        "tiny",
        "--out",
        out,
        "--max-steps",
        steps,
    ];
    a.extend_from_slice(&["--quiet", "--set", "train.log_every=1"]);
    for s in extra {
        a.extend_from_slice(&["--set", s]);
    }
    a
}

fn run_ok(mut c: Command) -> Output {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// (step, loss) of every logged step, and the final validation loss.
fn curve(run: &Path) -> (Vec<(u64, f64)>, f64) {
    let log = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let mut steps = Vec::new();
    let mut val = f64::NAN;
    for l in log.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        steps.push((v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()));
        if let Some(x) = v["val_loss"].as_f64() {
            val = x;
        }
    }
    (steps, val)
}

fn final_bytes(run: &Path) -> (Vec<u8>, Vec<u8>) {
    let latest = std::fs::read_to_string(run.join("latest")).unwrap();
    let dir = run.join(latest.trim());
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    (read("model.safetensors"), read("optim.safetensors"))
}

#[test]
fn two_ranks_follow_the_one_process_loss_trajectory() {
    need_mpi!("the MPI trajectory test");
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    // Plain CARD, and MDLM with two micro-batches per step (accumulation over ranks).
    for (name, extra) in [
        ("card", vec![]),
        (
            "mdlm",
            vec!["train.objective=\"mdlm\"", "train.grad_accum=2"],
        ),
    ] {
        let (a, b) = (format!("{name}-1"), format!("{name}-2"));
        run_ok(one(cwd, &train_args(&a, "30", &extra)));
        let out = run_ok(mpirun(2, cwd, &train_args(&b, "30", &extra)));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("2 ranks, each 8 of every 16 sequences"),
            "{err}"
        );
        let ((one_rank, v1), (two_ranks, v2)) = (curve(&cwd.join(&a)), curve(&cwd.join(&b)));
        assert_eq!(one_rank.len(), 30);
        assert_eq!(
            one_rank.iter().map(|s| s.0).collect::<Vec<_>>(),
            two_ranks.iter().map(|s| s.0).collect::<Vec<_>>()
        );
        // The two differ only in summation order (half-batch gradients summed over ranks):
        // the losses agree to float rounding, drifting slowly over 30 steps.
        let worst = one_rank
            .iter()
            .zip(&two_ranks)
            .map(|(x, y)| ((x.1 - y.1) / x.1).abs())
            .fold(0.0, f64::max);
        eprintln!(
            "{name}: worst relative loss difference over 30 steps {worst:.2e}; val {v1} vs {v2}"
        );
        assert!(worst < 1e-4, "{name}: {one_rank:?} vs {two_ranks:?}");
        assert!(((v1 - v2) / v1).abs() < 1e-4, "{name}: val {v1} vs {v2}");
        // The training itself moved (so agreement is not two untrained models agreeing).
        assert!(one_rank[29].1 < one_rank[0].1 - 0.3, "{one_rank:?}");
        // Rank 0 alone wrote the run: one metrics line per step, one checkpoint.
        assert!(cwd.join(&b).join("ckpt-00000030").exists());
    }
}

fn rank_pid(launcher: &Child, rank: usize) -> Option<u32> {
    let want = format!("OMPI_COMM_WORLD_RANK={rank}");
    let bin = env!("CARGO_BIN_EXE_card");
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == launcher.id() {
            continue;
        }
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let env = String::from_utf8_lossy(&env);
        let ppid_ok = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit(')')
                    .next()?
                    .split_whitespace()
                    .nth(1)?
                    .parse::<u32>()
                    .ok()
            })
            .is_some_and(|pp| pp == launcher.id());
        if ppid_ok && exe.is_some_and(|p| p == Path::new(bin)) && env.split('\0').any(|v| v == want)
        {
            return Some(pid);
        }
    }
    None
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn latest_step(run: &Path) -> usize {
    std::fs::read_to_string(run.join("latest"))
        .ok()
        .and_then(|l| l.trim().trim_start_matches("ckpt-").parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_signalled_two_rank_run_saves_and_resumes_bit_for_bit() {
    need_mpi!("the MPI resume test");
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let extra = ["train.ckpt_every=50", "train.eval_every=0"];
    run_ok(mpirun(2, cwd, &train_args("base", "400", &extra)));
    let mut job = mpirun(2, cwd, &train_args("run", "400", &extra))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the first checkpoint", Duration::from_secs(60), || {
        latest_step(&cwd.join("run")) >= 50
    });
    // SIGTERM to the launcher: it forwards the signal, the ranks agree to stop after the
    // same step, and rank 0 saves there.
    let ok = Command::new("kill")
        .args(["-TERM", &job.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    job.wait().unwrap();
    let stopped = latest_step(&cwd.join("run"));
    assert!((50..400).contains(&stopped), "stopped at {stopped}");
    let (log, _) = curve(&cwd.join("run"));
    assert_eq!(
        log.last().unwrap().0 as usize,
        stopped,
        "steps after the save were logged"
    );
    let resume = ["train", "--resume", "run", "--quiet"];
    run_ok(mpirun(2, cwd, &resume));
    assert!(
        final_bytes(&cwd.join("run")) == final_bytes(&cwd.join("base")),
        "a 2-rank run stopped at step {stopped} and resumed differs from an uninterrupted one"
    );
    let (a, b) = (curve(&cwd.join("run")).0, curve(&cwd.join("base")).0);
    assert_eq!(a, b, "the step log differs");
    // One process can continue a 2-rank run too (same global batch, same data position).
    run_ok(one(
        cwd,
        &["train", "--resume", "run", "--quiet", "--max-steps", "410"],
    ));
    assert_eq!(latest_step(&cwd.join("run")), 410);
}

#[test]
fn a_killed_rank_ends_the_job_within_seconds() {
    need_mpi!("the MPI dead-rank test");
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let mut job = mpirun(2, cwd, &train_args("run", "100000", &[]))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pid = None;
    wait_for("rank 1 to start", Duration::from_secs(30), || {
        pid = rank_pid(&job, 1);
        pid.is_some()
    });
    wait_for("training to start", Duration::from_secs(30), || {
        std::fs::metadata(cwd.join("run/metrics.jsonl")).is_ok_and(|m| m.len() > 0)
    });
    let killed = Instant::now();
    Command::new("kill")
        .args(["-KILL", &pid.unwrap().to_string()])
        .status()
        .unwrap();
    let mut status = None;
    wait_for("the job to end", Duration::from_secs(20), || {
        status = job.try_wait().unwrap();
        status.is_some()
    });
    let took = killed.elapsed();
    let mut err = String::new();
    std::io::Read::read_to_string(job.stderr.as_mut().unwrap(), &mut err).unwrap();
    eprintln!("the job ended {took:?} after rank 1 was killed");
    assert!(!status.unwrap().success());
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(err.contains("rank 1") && err.contains("signal 9"), "{err}");
    assert!(rank_pid(&job, 0).is_none(), "rank 0 outlived the job");
}

#[test]
fn an_error_on_the_ranks_ends_the_job_naming_it() {
    need_mpi!("the MPI error test");
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let out = mpirun(
        2,
        dir.path(),
        &train_args("run", "10", &["train.batch_size=3"]),
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("error: train.batch_size (3) must be a multiple of the number of ranks (2)"),
        "{err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{err}"
    );
    assert!(t.elapsed() < Duration::from_secs(20));
    assert!(!dir.path().join("run/latest").exists());
}
