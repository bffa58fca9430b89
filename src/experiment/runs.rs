//! Run summaries on disk: reading a finished run's result.json and metrics log, whether it
//! answers for a run another command asks for, and committing summaries so that they outlive
//! the machine.

use crate::config::Config;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunResult {
    pub variant: String,
    pub seed: u64,
    pub objective: String,
    pub steps: usize,
    pub tokens_seen: u64,
    pub val_loss: f64,
    pub bits_per_byte: f64,
    /// Median training tokens/s over the logged steps.
    pub tokens_per_s: f64,
    /// (step, validation loss) from the run's metrics log.
    pub curve: Vec<(usize, f64)>,
    /// (step, validation bits per byte), with step 0 for a run from a checkpoint.
    #[serde(default)]
    pub bpb_curve: Vec<(usize, f64)>,
    /// Training time (s), evaluations included.
    #[serde(default)]
    pub elapsed_s: f64,
    pub zero_shot_avg: Option<f64>,
    /// (task, length-normalised accuracy, chance) of each zero-shot task.
    #[serde(default)]
    pub zero_shot_tasks: Vec<(String, f64, f64)>,
    /// LAMBADA last-word accuracy (exact scorers only) and target bits per byte.
    #[serde(default)]
    pub lambada_acc: Option<f64>,
    #[serde(default)]
    pub lambada_bpb: Option<f64>,
    /// Bits per byte on each held-out source group.
    #[serde(default)]
    pub heldout: Vec<crate::eval::report::HeldoutScore>,
    /// Which weights the numbers above score ("ema" when the run kept an average), and the
    /// validation bits per byte of the last step's raw weights beside them.
    #[serde(default)]
    pub weights: String,
    #[serde(default)]
    pub raw_bits_per_byte: Option<f64>,
    /// Evaluation time (s) and `ExpOptions::eval_settings`.
    #[serde(default)]
    pub eval_s: f64,
    #[serde(default)]
    pub eval_settings: String,
    /// `git describe` of the code and the machine that trained the run.
    #[serde(default)]
    pub code_version: String,
    #[serde(default)]
    pub machine: String,
    pub checkpoint: String,
    pub config: String,
    /// [`RESULTS_VERSION`] of the code that produced it (files from before it was recorded
    /// read as 1).
    #[serde(default = "first_results_version")]
    pub results_version: u32,
}

/// Bumped by any change that alters what a run trains or measures (training numerics,
/// evaluation, the result's fields), so that results from older code are rerun, not
/// reused: a finished run is reused only at this version, with its recorded settings.
pub const RESULTS_VERSION: u32 = 2;

fn first_results_version() -> u32 {
    1
}

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

/// With `--commit`, commit the report, CSV, plots and JSON of experiment `name`.
pub(super) fn commit_report(opts: &super::options::ExpOptions, name: &str) {
    if !opts.commit || opts.smoke {
        return;
    }
    let Ok(entries) = std::fs::read_dir(&opts.out) else {
        return;
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .is_some_and(|x| ["md", "csv", "svg", "json"].contains(&&*x.to_string_lossy()))
        })
        .collect();
    files.sort();
    git_commit(&files, &format!("results/{name}: report"));
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
