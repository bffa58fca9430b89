//! `card serve`: an OpenAI-compatible HTTP API and the decoding playground over a checkpoint.

use crate::serve::{run as serve, ServeOptions};
use anyhow::{bail, Result};
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// A run directory (its latest checkpoint) or a checkpoint directory.
    pub checkpoint: PathBuf,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// 0 picks a free port (the first stdout line names the address).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Requests admitted at once (waiting or decoding); beyond it: 429 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Rows (prompts × n, over all requests) decoded together in one batch.
    #[arg(long, default_value_t = 16)]
    pub max_batch: usize,
    /// Decoding threads; batches with different decoder settings run in parallel.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Largest accepted request body (413 beyond).
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Pause after every forward pass, in milliseconds (slow motion for demos and tests).
    #[arg(long, default_value_t = 0)]
    pub step_delay_ms: u64,
    /// Seconds in-flight requests get to finish after SIGTERM/ctrl-c before being cancelled.
    #[arg(long, default_value_t = 10.0)]
    pub shutdown_grace_s: f64,
    /// The model id clients pass (default: card-<objective>-<run directory name>).
    #[arg(long)]
    pub model_name: Option<String>,
    /// Use the raw weights even when the checkpoint has an EMA.
    #[arg(long)]
    pub no_ema: bool,
    /// Expand quantized weights to f32 (the reference) instead of decoding in their blocks.
    #[arg(long)]
    pub f32: bool,
}

pub fn run(a: ServeArgs) -> Result<()> {
    if !(a.shutdown_grace_s.is_finite() && (0.0..=3600.0).contains(&a.shutdown_grace_s)) {
        bail!(
            "--shutdown-grace-s must be in [0, 3600], got {}",
            a.shutdown_grace_s
        );
    }
    if a.step_delay_ms > 10_000 {
        bail!(
            "--step-delay-ms must be at most 10000, got {}",
            a.step_delay_ms
        );
    }
    serve(ServeOptions {
        checkpoint: a.checkpoint,
        host: a.host,
        port: a.port,
        queue: a.queue,
        max_batch: a.max_batch,
        workers: a.workers,
        max_body_bytes: a.max_body_bytes,
        step_delay: Duration::from_millis(a.step_delay_ms),
        shutdown_grace: Duration::from_secs_f64(a.shutdown_grace_s),
        model_name: a.model_name,
        no_ema: a.no_ema,
        f32: a.f32,
    })
}
