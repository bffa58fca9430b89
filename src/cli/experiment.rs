//! `card experiment NAME`: one of the paper's experiments, resumable, written to results/NAME/.

use crate::config::Config;
use crate::experiment::{check, run, ExpOptions};
use anyhow::{bail, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct ExperimentArgs {
    /// masking-ablation | tail-factor | objectives | decoding-calibration | data-efficiency |
    /// ema | parallel-decoding | adaptation | scaling (ARM vs CARD at 1×, 4× and 12.5× the
    /// base run's tokens, strict vs soft tail at the largest)
    pub name: String,
    /// parallel-decoding: start from this CARD checkpoint instead of training one.
    /// adaptation: adapt this ARM/CARD checkpoint instead of the fetched SmolLM2
    /// (`card data fetch --model smollm2`).
    #[arg(long)]
    pub from: Option<PathBuf>,
    /// End-to-end check in seconds (10 steps, one seed, tiny evaluation).
    #[arg(long)]
    pub smoke: bool,
    /// Multiply the default training steps (bigger machines).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Seeds; the report shows mean ± sd over them and per-seed differences.
    #[arg(long, value_delimiter = ',', default_value = "0,1,2")]
    pub seeds: Vec<u64>,
    /// `tiny` (seconds per run, 64-token sequences, the embedded book: a smoke version) or
    /// `cpu` (the experiments at the largest scale two cores allow: the `small` model on
    /// 256-token sequences of the fetched corpus with held-out sources; see README), or any
    /// other preset or .toml file.
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// Training steps of every run [default: each experiment's own for `tiny`, the preset's
    /// train.max_steps otherwise].
    #[arg(long)]
    pub steps: Option<usize>,
    /// Evaluation windows per split (validation and each held-out source) [default: all for
    /// `tiny`, 256 otherwise].
    #[arg(long)]
    pub eval_windows: Option<usize>,
    /// Also score LAMBADA (`--zero-shot-limit` passages) wherever the zero-shot suite is scored.
    #[arg(long)]
    pub lambada: bool,
    /// `git commit` each finished run's summary (results/NAME/runs/*/result.json and
    /// metrics.jsonl) and the report as they are written, so that an experiment survives a
    /// change of machine: a later call reuses every committed run and trains the rest.
    #[arg(long)]
    pub commit: bool,
    /// Output folder [default: results/NAME; results/tiny/NAME for the tiny preset].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Config overrides for every run.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Also score the zero-shot tasks (this many documents each) when installed.
    #[arg(long)]
    pub zero_shot_limit: Option<usize>,
    /// Data directory holding eval/ from `card data fetch --eval`.
    #[arg(long, default_value = "data")]
    pub eval_data: PathBuf,
}

pub fn run_cli(a: ExperimentArgs) -> Result<()> {
    if !(a.scale > 0.0 && a.scale.is_finite()) {
        bail!("--scale must be positive");
    }
    if a.seeds.is_empty() {
        bail!("give at least one seed");
    }
    if a.steps == Some(0) || a.eval_windows == Some(0) {
        bail!("--steps and --eval-windows must be positive");
    }
    let tiny = a.preset == "tiny";
    let steps = match a.steps {
        Some(s) => Some(s),
        None if tiny => None,
        None => Some(Config::load(&a.preset, &a.sets)?.train.max_steps),
    };
    let command = std::env::args()
        .map(|x| if x.contains(' ') { format!("'{x}'") } else { x })
        .collect::<Vec<_>>()
        .join(" ");
    let opts = ExpOptions {
        // The tiny smoke versions keep out of the way of the real experiments' results.
        out: a
            .out
            .clone()
            .unwrap_or_else(|| match tiny && a.name != "adaptation" {
                true => PathBuf::from("results/tiny").join(&a.name),
                false => PathBuf::from("results").join(&a.name),
            }),
        smoke: a.smoke,
        scale: a.scale,
        seeds: a.seeds.clone(),
        preset: a.preset.clone(),
        sets: a.sets.clone(),
        zero_shot_limit: a.zero_shot_limit,
        eval_data: a.eval_data.clone(),
        command,
        from: a.from.clone(),
        steps,
        eval_windows: a.eval_windows.or((!tiny).then_some(256)),
        lambada: a.lambada,
        commit: a.commit,
    };
    check(&a.name, &opts)?;
    eprintln!("experiment {} -> {}", a.name, opts.out.display());
    let report = run(&a.name, opts)?;
    println!("{}", report.display());
    Ok(())
}
