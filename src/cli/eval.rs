//! `card eval`: validation loss, perplexity and bits per byte at t = 0 (exact likelihood),
//! and for CARD checkpoints the loss as a function of the noise level t.

use crate::config::ObjectiveKind;
use crate::data::TextTokenizer;
use crate::eval::{ar_nll, bits_per_byte, loss_vs_t, NoisePoint};
use crate::objective;
use crate::train::{batches::eval_windows, checkpoint, default_device, load_data};
use anyhow::{bail, Result};
use serde::Serialize;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// A run directory (its latest checkpoint) or a checkpoint directory.
    pub checkpoint: PathBuf,
    /// Prepared data directory [default: the data the checkpoint was trained on].
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Evaluate at most this many validation windows [default: all].
    #[arg(long)]
    pub max_windows: Option<usize>,
    /// Use the raw weights even when the checkpoint has an EMA.
    #[arg(long)]
    pub no_ema: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Report {
    checkpoint: String,
    objective: &'static str,
    step: usize,
    weights: &'static str,
    tokens: u64,
    val_loss: f64,
    perplexity: f64,
    bits_per_byte: f64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    loss_vs_t: Vec<NoisePoint>,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let device = default_device()?;
    let ckpt = checkpoint::load(&args.checkpoint, &device)?;
    let mut cfg = ckpt.config.clone();
    if let Some(d) = &args.data {
        cfg.data.path = d.display().to_string();
    }
    let tokenizer = TextTokenizer::from_json(&ckpt.tokenizer_json)?;
    let data = load_data(&cfg, Some(tokenizer))?;
    let which = if ckpt.ema.is_some() && !args.no_ema {
        "ema"
    } else {
        "raw"
    };
    let model = ckpt.model(!args.no_ema)?;
    let windows = eval_windows(&data.val, cfg.train.seq_len, args.max_windows);
    if windows.is_empty() {
        bail!("the validation split is empty");
    }
    let batch = cfg.train.batch_size;
    let sum = ar_nll(&model, &windows, batch)?;
    let mean = sum.mean();
    // Bits per byte over the evaluated windows, by the split's tokens-per-byte ratio.
    let bpb = bits_per_byte(mean, data.val.len() as u64, data.val_bytes);
    let curve = if ckpt.state.objective == ObjectiveKind::Card {
        let obj = objective::build(&cfg, data.tokenizer.mask_id());
        let ts = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9];
        let subset = &windows[..windows.len().min(4 * batch)];
        loss_vs_t(&model, obj.as_ref(), subset, &ts, batch, 0)?
    } else {
        Vec::new()
    };
    let report = Report {
        checkpoint: ckpt.dir.display().to_string(),
        objective: ckpt.state.objective.name(),
        step: ckpt.state.step,
        weights: which,
        tokens: sum.tokens,
        val_loss: mean,
        perplexity: mean.exp(),
        bits_per_byte: bpb,
        loss_vs_t: curve,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!(
        "checkpoint     {} (step {}, {} objective, {} weights)",
        report.checkpoint, report.step, report.objective, which
    );
    println!("val tokens     {}", report.tokens);
    println!(
        "val loss       {:.4} nats/token (exact, t = 0)",
        report.val_loss
    );
    println!("perplexity     {:.2}", report.perplexity);
    println!("bits per byte  {:.4}", report.bits_per_byte);
    if !report.loss_vs_t.is_empty() {
        println!("\n   t   CARD loss   mean CE (all targets)");
        for p in &report.loss_vs_t {
            println!("{:>4.1}   {:>9.4}   {:>9.4}", p.t, p.loss, p.mean_ce);
        }
    }
    Ok(())
}
