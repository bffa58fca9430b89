//! Run summaries on disk: reading a finished run's result.json and metrics log, whether it
//! answers for a run another command asks for, and committing summaries so that they outlive
//! the machine.

use super::{RunResult, RESULTS_VERSION};
use crate::config::Config;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

pub(super) fn read_result(path: &Path) -> Result<RunResult> {
    serde_json::from_str(&std::fs::read_to_string(path)?)
        .with_context(|| format!("{} is corrupted; delete it to rerun", path.display()))
}

/// Whether a finished run answers for `cfg` evaluated with `settings`: the same results
/// version, settings (the vocabulary comes from the tokenizer once training starts) and
/// evaluation. Err says why not.
pub(super) fn reusable(
    r: &RunResult,
    cfg: &Config,
    settings: &str,
) -> std::result::Result<(), String> {
    if r.results_version != RESULTS_VERSION {
        return Err(format!(
            "produced by other code (results version {}, this build writes {RESULTS_VERSION})",
            r.results_version
        ));
    }
    let saved = Config::from_toml_with_sets(&r.config, &[]).map_err(|e| e.to_string())?;
    let differ: Vec<String> = cfg
        .diff(&saved)
        .into_iter()
        .filter(|k| k != "model.vocab_size")
        .collect();
    if !differ.is_empty() {
        return Err(format!(
            "trained with other settings ({})",
            differ.join(", ")
        ));
    }
    let scoring = |s: &str| s.split(" zero_shot=").next().unwrap_or("").to_string();
    let wants_zero_shot = !settings.contains("zero_shot=None");
    let answers = r.eval_settings == settings
        || (!wants_zero_shot && scoring(&r.eval_settings) == scoring(settings));
    if !answers {
        return Err(format!(
            "evaluated otherwise ({}; this command: {settings})",
            r.eval_settings
        ));
    }
    Ok(())
}

/// What this binary was built from: `git describe --always --dirty` at build time (build.rs),
/// or "unknown" outside a git checkout.
pub fn code_version() -> String {
    env!("CARD_GIT_VERSION").to_string()
}

/// Commit exactly `files` (nothing else that is staged); a failure is a warning, not an error,
/// since the files stay on disk.
pub fn git_commit(files: &[PathBuf], msg: &str) {
    let files: Vec<&PathBuf> = files.iter().filter(|f| f.is_file()).collect();
    let git = |args: &[&str]| -> std::result::Result<(), String> {
        let out = std::process::Command::new("git")
            .args(args)
            .args(files.iter().map(|f| f.as_os_str()))
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            Err(err.lines().next().unwrap_or("git failed").to_string())
        }
    };
    let done = git(&["add", "--"]).and_then(|_| git(&["commit", "-q", "-m", msg, "--"]));
    if let Err(e) = done {
        eprintln!("    warning: could not commit the run's summary ({e}); it stays on disk");
    }
}

/// (step, value) points of a logged validation score.
type Curve = Vec<(usize, f64)>;

/// Validation curves (nats/token, bits/byte) and median logged tokens/s of a run.
pub(super) fn read_metrics(path: &Path) -> Result<(Curve, Curve, f64)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let (mut curve, mut bpb) = (Vec::new(), Vec::new());
    let mut tps = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(_) => continue,
        };
        let step = v["step"].as_u64().unwrap_or(0) as usize;
        if let Some(l) = v["val_loss"].as_f64() {
            curve.push((step, l));
        }
        if let Some(b) = v["val_bits_per_byte"].as_f64() {
            bpb.push((step, b));
        }
        if let Some(t) = v["tokens_per_s"].as_f64() {
            tps.push(t);
        }
    }
    Ok((curve, bpb, crate::bench::median(&mut tps)))
}
