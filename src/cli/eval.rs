//! `card eval`: validation loss, perplexity and bits per byte at t = 0 (exact likelihood),
//! CARD's loss as a function of t, zero-shot tasks, LAMBADA and generation quality.

use super::generate::{decoder_names, DecoderArgs};
use crate::checkpoint::{self, Precision};
use crate::data::eval_files::TASKS;
use crate::decode::Sampling;
use crate::eval::report::{evaluate, EvalOptions, EvalReport, GenerationEval};
use crate::eval::BoundBudget;
use crate::runtime::device as default_device;
use anyhow::{bail, Result};
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
    /// Expand quantized weights to f32 (the reference) instead of decoding in their blocks.
    #[arg(long)]
    pub f32: bool,
    /// Zero-shot multiple-choice tasks, comma-separated, or `all` (needs `card data fetch --eval`).
    #[arg(long, value_delimiter = ',')]
    pub tasks: Vec<String>,
    /// LAMBADA (OpenAI test): last-word accuracy, target perplexity, bits per byte.
    #[arg(long)]
    pub lambada: bool,
    /// At most this many documents per task.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Data directory holding eval/ from `card data fetch --eval`.
    #[arg(long, default_value = "data")]
    pub eval_data: PathBuf,
    /// Sample from the fixed prompt set and report generation quality.
    #[arg(long)]
    pub generation: bool,
    /// Decoder for --generation (settings as for `card generate`) [default: the
    /// checkpoint's own].
    #[arg(long, value_parser = decoder_names())]
    pub gen_decoder: Option<String>,
    #[arg(long, default_value_t = 8)]
    pub gen_samples: usize,
    #[arg(long, default_value_t = 64)]
    pub gen_length: usize,
    #[command(flatten)]
    pub settings: DecoderArgs,
    /// Sampling temperature for --generation (0 = greedy).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Reference (ARM) checkpoint scoring the samples' generative perplexity [default: itself].
    #[arg(long)]
    pub judge: Option<PathBuf>,
    /// MDLM/BD3LM: most noise draws per window for the NELBO bound.
    #[arg(long, default_value_t = BoundBudget::default().max_samples)]
    pub t_samples: usize,
    /// MDLM/BD3LM: stop drawing once the bound's standard error (nats/token) is this small.
    #[arg(long, default_value_t = BoundBudget::default().target_se)]
    pub bound_se: f64,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: EvalArgs) -> Result<()> {
    let device = default_device()?;
    let precision = if a.f32 {
        Precision::F32
    } else {
        Precision::Stored
    };
    let ckpt = checkpoint::open_as(&a.checkpoint, &device, !a.no_ema, precision)?;
    let tasks: Vec<String> = if a.tasks.iter().any(|t| t == "all") {
        TASKS
            .iter()
            .map(|t| t.0)
            .filter(|&t| t != "lambada")
            .map(String::from)
            .collect()
    } else {
        a.tasks.clone()
    };
    if a.limit == Some(0) {
        bail!("--limit must be at least 1");
    }
    let generation = if a.generation {
        let decoder = a.settings.spec(a.gen_decoder.as_deref(), &ckpt.config)?;
        let sampling = Sampling {
            temperature: a.temperature,
            ..Sampling::default()
        };
        sampling.validate()?;
        Some(GenerationEval {
            decoder,
            samples: a.gen_samples.max(1),
            length: a.gen_length.max(1),
            sampling,
            seed: a.seed,
            judge: a.judge.clone(),
        })
    } else {
        None
    };
    let opts = EvalOptions {
        data: a.data.clone(),
        max_windows: a.max_windows,
        tasks,
        lambada: a.lambada,
        limit: a.limit,
        data_dir: a.eval_data.clone(),
        generation,
        bound_budget: BoundBudget {
            max_samples: a.t_samples,
            target_se: a.bound_se,
            ..BoundBudget::default()
        },
        seed: a.seed,
        ..EvalOptions::default()
    };
    let r = evaluate(&ckpt, &opts)?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        print_report(&r);
    }
    Ok(())
}

fn print_report(r: &EvalReport) {
    println!(
        "checkpoint     {} (step {}, {} objective, {} weights)",
        r.checkpoint, r.step, r.objective, r.weights
    );
    println!("val tokens     {}", r.tokens);
    if let (Some(se), Some(draws)) = (r.val_loss_se, r.t_samples) {
        // A bound: print only the digits its Monte Carlo error supports.
        let (d, e) = (stable_decimals(se), stable_decimals(se) + 1);
        println!("val loss     ≤ {:.d$} ± {se:.e$} nats/token (NELBO bound, {draws} noise draws per window)", r.val_loss);
        let pse = r.perplexity_se.unwrap_or(0.0);
        let (dp, ep) = (stable_decimals(pse), stable_decimals(pse) + 1);
        println!("perplexity   ≤ {:.dp$} ± {pse:.ep$}", r.perplexity);
        let db = stable_decimals(r.bits_per_byte * se / r.val_loss.max(1e-12));
        println!("bits per byte ≤ {:.db$}", r.bits_per_byte);
    } else {
        println!("val loss       {:.4} nats/token (exact, t = 0)", r.val_loss);
        println!("perplexity     {:.2}", r.perplexity);
        println!("bits per byte  {:.4}", r.bits_per_byte);
    }
    for h in &r.heldout {
        let le = if r.bound { "≤" } else { "" };
        println!(
            "held-out source {:?}: {le}{:.4} bits/byte over {} tokens",
            h.pattern, h.bits_per_byte, h.tokens
        );
    }
    if !r.loss_vs_t.is_empty() {
        println!("\n   t   CARD loss   mean CE (all targets)");
        for p in &r.loss_vs_t {
            println!("{:>4.1}   {:>9.4}   {:>9.4}", p.t, p.loss, p.mean_ce);
        }
    }
    if let Some(z) = &r.zero_shot {
        println!("\ntask            n      acc (± se)        acc_norm (± se)   chance");
        for t in &z.tasks {
            println!(
                "{:<13} {:>5}   {:.3} (± {:.3})   {:.3} (± {:.3})   {:.3}",
                t.task, t.n, t.acc, t.acc_se, t.acc_norm, t.acc_norm_se, t.chance
            );
        }
        println!(
            "{:<13} {:>5}   {:.3}             {:.3}             {:.3}",
            "average", "", z.average_acc, z.average_acc_norm, z.average_chance
        );
    }
    if let Some(l) = &r.lambada {
        let acc = match (l.accuracy, l.accuracy_se) {
            (Some(a), Some(se)) => format!("last-word accuracy {a:.3} (± {se:.3})"),
            _ => "last-word accuracy n/a (a bound has no greedy check)".to_string(),
        };
        let le = if r.bound { "≤ " } else { "" };
        println!(
            "\nLAMBADA ({} passages): {acc}, target perplexity {le}{:.1}, {le}{:.3} bits/byte",
            l.n, l.target_perplexity, l.bits_per_byte
        );
    }
    if let Some(g) = &r.generation {
        println!(
            "\ngeneration ({} decoder, {} samples): gen. perplexity {:.2} (judge {}), unigram entropy {:.2} bits, repeated 4-grams {:.3}, distinct-1 {:.3}, distinct-2 {:.3}, mean length {:.1}, {:.2} tokens/forward",
            g.decoder, g.samples, g.generative_perplexity, g.judge, g.unigram_entropy, g.repeated_4gram_rate,
            g.distinct_1, g.distinct_2, g.mean_length, g.tokens_per_forward
        );
    }
}

/// Decimals that keep a figure with standard error `se` stable: the most (up to 4) whose
/// last digit is at least twice the error.
fn stable_decimals(se: f64) -> usize {
    (0..=4)
        .rev()
        .find(|&d| 10f64.powi(-(d as i32)) >= 2.0 * se)
        .unwrap_or(0)
}
