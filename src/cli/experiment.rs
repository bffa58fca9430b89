//! `card experiment NAME`: one of the paper's experiments, resumable, written to results/NAME/.

use crate::experiment::{check, run, ExpOptions};
use anyhow::{bail, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct ExperimentArgs {
    /// masking-ablation | tail-factor | objectives | decoding-calibration | data-efficiency |
    /// ema | parallel-decoding | adaptation
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
    /// Seeds; the report shows mean ± sd over them.
    #[arg(long, value_delimiter = ',', default_value = "0,1")]
    pub seeds: Vec<u64>,
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// Output folder [default: results/NAME].
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
    let command = std::env::args()
        .map(|x| if x.contains(' ') { format!("'{x}'") } else { x })
        .collect::<Vec<_>>()
        .join(" ");
    let opts = ExpOptions {
        out: a
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("results").join(&a.name)),
        smoke: a.smoke,
        scale: a.scale,
        seeds: a.seeds.clone(),
        preset: a.preset.clone(),
        sets: a.sets.clone(),
        zero_shot_limit: a.zero_shot_limit,
        eval_data: a.eval_data.clone(),
        command,
        from: a.from.clone(),
    };
    check(&a.name, &opts)?;
    eprintln!("experiment {} -> {}", a.name, opts.out.display());
    let report = run(&a.name, opts)?;
    println!("{}", report.display());
    Ok(())
}
