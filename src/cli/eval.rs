//! `card eval`: validation loss, perplexity and bits per byte at t = 0 (exact likelihood),
//! and for CARD checkpoints the loss as a function of the noise level t. MDLM and BD3LM
//! checkpoints have no exact likelihood: they report the NELBO, an upper bound on the loss
//! (so a bound on perplexity), with its Monte Carlo standard error.

use crate::config::ObjectiveKind;
use crate::data::TextTokenizer;
use crate::eval::{ar_nll, bits_per_byte, loss_vs_t, nelbo, BoundBudget, NoisePoint};
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
    /// MDLM/BD3LM: most noise draws per window for the bound.
    #[arg(long, default_value_t = BoundBudget::default().max_samples)]
    pub t_samples: usize,
    /// MDLM/BD3LM: stop drawing once the bound's standard error (nats/token) is this small.
    #[arg(long, default_value_t = BoundBudget::default().target_se)]
    pub bound_se: f64,
    /// Seed of the bound's noise draws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
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
    /// "exact" (AR likelihood) or "nelbo" (diffusion bound).
    estimator: &'static str,
    /// True when val_loss, perplexity and bits_per_byte are upper bounds.
    bound: bool,
    val_loss: f64,
    perplexity: f64,
    bits_per_byte: f64,
    /// Standard errors of the bound's Monte Carlo estimate.
    #[serde(skip_serializing_if = "Option::is_none")]
    val_loss_se: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    perplexity_se: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    t_samples: Option<usize>,
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
    if ckpt.state.objective.is_diffusion() {
        return bound_report(&args, &ckpt, &cfg, &model, &windows, &data, which);
    }
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
        estimator: "exact",
        bound: false,
        val_loss: mean,
        perplexity: mean.exp(),
        bits_per_byte: bpb,
        val_loss_se: None,
        perplexity_se: None,
        t_samples: None,
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

/// Decimals that keep a figure with standard error `se` stable: the most (up to 4) whose
/// last digit is at least twice the error.
fn stable_decimals(se: f64) -> usize {
    (0..=4)
        .rev()
        .find(|&d| 10f64.powi(-(d as i32)) >= 2.0 * se)
        .unwrap_or(0)
}

fn bound_report(
    args: &EvalArgs,
    ckpt: &checkpoint::Checkpoint,
    cfg: &crate::config::Config,
    model: &crate::model::Transformer,
    windows: &[&[u32]],
    data: &crate::data::Prepared,
    which: &'static str,
) -> Result<()> {
    if args.t_samples == 0 {
        bail!("--t-samples must be at least 1");
    }
    let budget = BoundBudget {
        max_samples: args.t_samples,
        target_se: args.bound_se,
        ..BoundBudget::default()
    };
    let obj = objective::build_for_bound(cfg, data.tokenizer.mask_id());
    let b = nelbo(
        model,
        obj.as_ref(),
        windows,
        cfg.train.batch_size,
        budget,
        args.seed,
    )?;
    let ppl = b.nats_per_token.exp();
    let report = Report {
        checkpoint: ckpt.dir.display().to_string(),
        objective: ckpt.state.objective.name(),
        step: ckpt.state.step,
        weights: which,
        tokens: b.tokens,
        estimator: "nelbo",
        bound: true,
        val_loss: b.nats_per_token,
        perplexity: ppl,
        bits_per_byte: bits_per_byte(b.nats_per_token, data.val.len() as u64, data.val_bytes),
        val_loss_se: Some(b.se),
        perplexity_se: Some(ppl * b.se),
        t_samples: Some(b.t_samples),
        loss_vs_t: Vec::new(),
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
    let se = b.se;
    let d = stable_decimals(se);
    let e = d + 1;
    println!(
        "val loss     ≤ {:.d$} ± {se:.e$} nats/token (NELBO bound, {} noise draws per window)",
        b.nats_per_token, b.t_samples
    );
    let dp = stable_decimals(ppl * se);
    let ep = dp + 1;
    println!("perplexity   ≤ {ppl:.dp$} ± {:.ep$}", ppl * se);
    let bpb_se = report.bits_per_byte * se / b.nats_per_token.max(1e-12);
    let db = stable_decimals(bpb_se);
    println!("bits per byte ≤ {:.db$}", report.bits_per_byte);
    Ok(())
}
