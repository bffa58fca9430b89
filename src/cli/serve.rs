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
    /// Rows (prompts × n) decoded together in one batch, over all requests; also the most
    /// one request may ask for (at most 64).
    #[arg(long, default_value_t = 16)]
    pub max_batch: usize,
    /// Decoding threads; batches with different decoder settings run in parallel.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Largest accepted request body (413 beyond; 1 KiB to 64 MiB).
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Require `Authorization: Bearer KEY` on /v1/ (the playground asks for it). Prefer the
    /// environment variable: a flag shows in the process list.
    #[arg(long, env = "CARD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Also accept requests whose Host header names this (repeatable; "*" for any). By
    /// default only localhost, 127.0.0.1, [::1] and --host are: a DNS-rebinding page
    /// cannot reach the server under a name of its own.
    #[arg(long = "allow-host", value_name = "NAME")]
    pub allow_hosts: Vec<String>,
    /// Let web pages from this origin (e.g. http://localhost:3000; repeatable; "*" for any)
    /// call the API, with CORS headers. Other pages' requests get 403.
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    pub cors_origins: Vec<String>,
    /// Open connections at once; beyond it a new one gets 503 and is closed.
    #[arg(long, default_value_t = 256)]
    pub max_connections: usize,
    /// Seconds for a request's headers to arrive, and for an idle keep-alive connection to
    /// stay open.
    #[arg(long, default_value_t = 30.0)]
    pub header_timeout_s: f64,
    /// Seconds for a request's body to arrive (408 beyond).
    #[arg(long, default_value_t = 30.0)]
    pub body_timeout_s: f64,
    /// Seconds a request may take from admission to its last token (504 beyond, and the
    /// request is cancelled).
    #[arg(long, default_value_t = 600.0)]
    pub request_timeout_s: f64,
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
    /// Round the activations of Q4_0/Q4_1/Q8_0 products to 8 bits per 256 values and take
    /// integer dot products (AVX-512 VNNI or AVX2; faster, not bit-equal to the exact
    /// default: `card bench decode --int8` reports its greedy agreement and NLL).
    #[arg(long, conflicts_with = "f32")]
    pub int8: bool,
}

/// Seconds in [lo, hi] as a duration, or an error naming the flag.
fn seconds(name: &str, v: f64, lo: f64, hi: f64) -> Result<Duration> {
    if !(v.is_finite() && (lo..=hi).contains(&v)) {
        bail!("{name} must be in [{lo}, {hi}], got {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

pub fn run(a: ServeArgs) -> Result<()> {
    let shutdown_grace = seconds("--shutdown-grace-s", a.shutdown_grace_s, 0.0, 3600.0)?;
    let header_timeout = seconds("--header-timeout-s", a.header_timeout_s, 0.1, 3600.0)?;
    let body_timeout = seconds("--body-timeout-s", a.body_timeout_s, 0.1, 3600.0)?;
    let request_timeout = seconds("--request-timeout-s", a.request_timeout_s, 0.1, 86400.0)?;
    for o in &a.cors_origins {
        let ok = o == "*" || o.starts_with("http://") || o.starts_with("https://");
        if !ok || o.ends_with('/') {
            bail!("--cors-origin takes an origin like http://localhost:3000 (scheme, host, port; no path), got '{o}'");
        }
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
        shutdown_grace,
        model_name: a.model_name,
        no_ema: a.no_ema,
        f32: a.f32,
        int8: a.int8,
        allow_hosts: a.allow_hosts,
        cors_origins: a.cors_origins,
        api_key: a.api_key,
        max_connections: a.max_connections,
        header_timeout,
        body_timeout,
        request_timeout,
    })
}
