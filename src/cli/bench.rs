//! `card bench`: throughput benchmarks that print ratios against a baseline run in the same process.

use crate::bench::bench_train;
use crate::config::{Config, ObjectiveKind};
use crate::train::{default_device, load_data};
use anyhow::{bail, Result};
use clap::ValueEnum;
use std::io::IsTerminal;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchWhat,
}

#[derive(clap::Subcommand, Debug)]
pub enum BenchWhat {
    /// Training step time, tokens/s, peak memory and MFU of objectives side by side.
    Train(TrainBenchArgs),
}

#[derive(clap::Args, Debug)]
pub struct TrainBenchArgs {
    #[arg(long, default_value = "small")]
    pub preset: String,
    /// Comma-separated objectives, or `all`.
    #[arg(long, default_value = "arm,card")]
    pub objective: String,
    /// Timed steps per objective (the median is reported).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Untimed warm-up steps per objective.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Print JSON as the last line: one object for one objective, else a list.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: BenchArgs) -> Result<()> {
    match args.what {
        BenchWhat::Train(a) => train(a),
    }
}

fn parse_objectives(s: &str) -> Result<Vec<ObjectiveKind>> {
    if s == "all" {
        return Ok(ObjectiveKind::value_variants().to_vec());
    }
    s.split(',')
        .map(|o| {
            ObjectiveKind::from_str(o.trim(), true).map_err(|_| {
                anyhow::anyhow!(
                    "unknown objective '{o}' (known: {}, all)",
                    ObjectiveKind::value_variants()
                        .iter()
                        .map(|v| v.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
        })
        .collect()
}

fn train(a: TrainBenchArgs) -> Result<()> {
    if a.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let objectives = parse_objectives(&a.objective)?;
    let cfg = Config::load(&a.preset, &a.sets)?;
    let device = default_device()?;
    eprintln!("preparing data (embedded corpus unless data.path is set)");
    let data = load_data(&cfg, None)?;
    let tty = std::io::stderr().is_terminal();
    let results = bench_train(&cfg, &data, &objectives, a.warmup, a.steps, &device, |m| {
        if tty {
            eprint!("\r\x1b[2K{m}")
        }
    })?;
    if tty {
        eprint!("\r\x1b[2K");
    }
    let c = &cfg;
    println!(
        "bench train: preset {} ({} params), batch {} x seq {} = {} tokens/step, {} threads, matmul peak {:.1} GFLOP/s",
        a.preset,
        results[0].params,
        c.train.batch_size,
        c.train.seq_len,
        results[0].tokens_per_step,
        candle_core::utils::get_num_threads(),
        results[0].matmul_peak_gflops
    );
    println!("objective  step_time_s(median)  tokens/s  peak_rss_mb   MFU   ratio_to_card");
    for r in &results {
        println!(
            "{:<9}  {:>19.4}  {:>8.0}  {:>11.0}  {:>4.1}%  {}",
            r.objective,
            r.step_time_s,
            r.tokens_per_s,
            r.peak_rss_mb,
            100.0 * r.mfu,
            r.ratio_to_card.map_or("-".into(), |x| format!("{x:.3}"))
        );
    }
    if a.json {
        if results.len() == 1 {
            println!("{}", serde_json::to_string(&results[0])?);
        } else {
            println!("{}", serde_json::to_string(&results)?);
        }
    }
    Ok(())
}
