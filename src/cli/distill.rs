//! `card distill`: continue a checkpoint's training on its own continuations of corpus
//! prefixes (self-distillation), reporting held-out bits per byte on real text before and
//! after.

use super::values::choice;
use crate::config::ObjectiveKind;
use crate::decode::Sampling;
use crate::runtime::device as default_device;
use crate::train::distill::{distill, DistillConfig, DistillPlan};
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct DistillArgs {
    /// The checkpoint to distill (a run directory or a checkpoint directory).
    pub checkpoint: PathBuf,
    /// Output directory: continuations.jsonl, the mixed corpus (data/), the run (run/) and
    /// report.json. Rerunning with the same settings resumes and reuses finished stages.
    #[arg(long)]
    pub out: PathBuf,
    /// Corpus prefixes to continue.
    #[arg(long, default_value_t = 512)]
    pub prefixes: usize,
    /// Tokens of real text in each prefix.
    #[arg(long, default_value_t = 32)]
    pub prefix_len: usize,
    /// Tokens generated after each prefix.
    #[arg(long, default_value_t = 96)]
    pub new_tokens: usize,
    /// Rows decoded together.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// 0 = greedy (the trajectories greedy and lossless decoding meet).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Share of the training stream taken by the continuation rows (each a real prefix and
    /// the model's tokens); the rest is further real text from the checkpoint's corpus.
    #[arg(long, default_value_t = 0.5)]
    pub mix: f64,
    /// Objective of the continued training.
    #[arg(long, value_parser = choice::<ObjectiveKind>(), default_value = "card")]
    pub objective: ObjectiveKind,
    /// Optimizer steps of the continued training (a fresh optimizer and schedule).
    #[arg(long, default_value_t = 300)]
    pub max_steps: usize,
    /// Config overrides for the continued training, applied after the fine-tuning defaults
    /// (train.lr=3e-4, train.warmup_steps=50).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Prepared corpus to cut prefixes from and mix in [default: the checkpoint's].
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Validation windows scored before and after.
    #[arg(long, default_value_t = 64)]
    pub eval_windows: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Use the raw weights even where the checkpoint kept an EMA.
    #[arg(long)]
    pub no_ema: bool,
    /// Print the report as one JSON line.
    #[arg(long)]
    pub json: bool,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(a: DistillArgs) -> Result<()> {
    let device = default_device()?;
    let plan = DistillPlan {
        out: a.out.clone(),
        gen: DistillConfig {
            prefixes: a.prefixes,
            prefix_len: a.prefix_len,
            new_tokens: a.new_tokens,
            batch: a.batch,
            sampling: Sampling {
                temperature: a.temperature,
                top_k: a.top_k,
                ..Sampling::default()
            },
            mix: a.mix,
            seed: a.seed,
        },
        objective: a.objective,
        max_steps: a.max_steps,
        sets: a.sets.clone(),
        use_ema: !a.no_ema,
        data: a.data.clone(),
        eval_windows: a.eval_windows,
        progress: !a.quiet,
    };
    let r = distill(&a.checkpoint, &plan, &device)?;
    eprintln!(
        "{} continuation rows ({} tokens with their prefixes, {:.0}% of the training stream), {} steps of {} -> {}",
        r.rows,
        r.self_tokens,
        100.0 * r.self_share,
        r.steps,
        r.objective,
        r.run
    );
    eprintln!(
        "held-out bits/byte on real text: {:.4} before, {:.4} after ({:+.2}%)",
        r.bpb_before,
        r.bpb_after,
        100.0 * r.bpb_change()
    );
    if r.bpb_change() > 0.01 {
        eprintln!(
            "warning: distillation made the model worse on real text by {:.1}%; lower --mix or --max-steps",
            100.0 * r.bpb_change()
        );
    }
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    }
    Ok(())
}
