//! The paper's experiments as commands. Each experiment is a set of training runs (variants ×
//! seeds) on one preset and one corpus, evaluated the same way, written up as
//! `results/NAME/{report.md, results.csv, *.svg}`. Runs live in `results/NAME/runs/`: a
//! finished run keeps its `result.json` and is skipped on the next call, an interrupted one
//! resumes from its last checkpoint.

mod acceptance;
pub mod adaptation;
mod bench_cache;
pub mod data_efficiency;
pub mod decoding_calibration;
pub mod ema;
pub mod masking_ablation;
pub mod objectives;
mod options;
pub mod parallel_decoding;
pub mod plot;
mod runner;
mod runs;
pub mod scaling;
mod stats;
pub mod tail_factor;
mod variants;
pub mod write_up;

use anyhow::{Context, Result};
pub use options::ExpOptions;
pub use runner::{external_judge, RunSpec, Runner};
pub use runs::{code_version, git_commit, RunResult, RESULTS_VERSION};
pub use stats::{fmt_mean_sd, mean_sd};
use std::path::PathBuf;

pub const NAMES: &[&str] = &[
    "masking-ablation",
    "tail-factor",
    "objectives",
    "decoding-calibration",
    "data-efficiency",
    "ema",
    "parallel-decoding",
    "adaptation",
    "scaling",
];

/// Refuse an unknown experiment or options it does not take.
pub fn check(name: &str, opts: &ExpOptions) -> Result<()> {
    if !NAMES.contains(&name) {
        anyhow::bail!("unknown experiment '{name}' (known: {})", NAMES.join(", "));
    }
    if opts.from.is_some() && !["parallel-decoding", "adaptation"].contains(&name) {
        anyhow::bail!(
            "--from applies to parallel-decoding and adaptation only; {name} trains its own runs"
        );
    }
    if name == "adaptation" {
        adaptation::base(opts)?;
    }
    Ok(())
}

pub fn run(name: &str, opts: ExpOptions) -> Result<PathBuf> {
    check(name, &opts)?;
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("cannot create {}", opts.out.display()))?;
    let mut runner = Runner::new(opts);
    match name {
        "masking-ablation" => masking_ablation::run(&mut runner),
        "tail-factor" => tail_factor::run(&mut runner),
        "objectives" => objectives::run(&mut runner),
        "decoding-calibration" => decoding_calibration::run(&mut runner),
        "data-efficiency" => data_efficiency::run(&mut runner),
        "ema" => ema::run(&mut runner),
        "parallel-decoding" => parallel_decoding::run(&mut runner),
        "adaptation" => adaptation::run(&mut runner),
        "scaling" => scaling::run(&mut runner),
        other => anyhow::bail!("unknown experiment '{other}' (known: {})", NAMES.join(", ")),
    }?;
    runs::commit_report(&runner.opts, name);
    let out = &runner.opts.out;
    Ok(out.join("report.md"))
}
