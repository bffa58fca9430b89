//! `card serve`: an OpenAI-compatible HTTP API (axum + tokio) over a checkpoint, with SSE
//! streaming, a bounded queue with batching across requests, and the playground page.
//!
//! Decoding never runs on the async runtime: the [`scheduler`] owns worker threads that batch
//! compatible requests into one `generate` call, [`rows`] turns each row's steps into text
//! and events sent back over channels, and [`request`] / [`api`] validate what comes in.
//! [`job`] is the contract between the two sides (the job and its events), [`error`] the
//! error body all of them answer with, and `app` the state the handlers share.

pub mod api;
mod app;
pub mod error;
pub mod guard;
mod http;
pub mod job;
mod net;
pub mod request;
pub mod rows;
pub mod scheduler;

use crate::checkpoint::{self, Precision};
use crate::data::chat::ChatFormat;
use crate::runtime;
use anyhow::{Context, Result};
use api::ModelInfo;
use app::{now_s, App};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use error::ApiError;
use scheduler::{Scheduler, SchedulerConfig};
use serde_json::json;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

pub struct ServeOptions {
    pub checkpoint: PathBuf,
    pub host: String,
    pub port: u16,
    /// Requests admitted at once (waiting or decoding); more get 429.
    pub queue: usize,
    /// Rows (prompts × n) decoded together in one batch.
    pub max_batch: usize,
    pub workers: usize,
    pub max_body_bytes: usize,
    /// Pause after every forward pass (slow motion for demos and tests).
    pub step_delay: Duration,
    /// On SIGTERM/ctrl-c: time in-flight requests get to finish before they are cancelled.
    pub shutdown_grace: Duration,
    pub model_name: Option<String>,
    pub no_ema: bool,
    /// Expand quantized weights to f32.
    pub f32: bool,
    /// Round the activations of packed-block products to 8 bits.
    pub int8: bool,
    /// Host names accepted besides the local ones and `host` ("*": any).
    pub allow_hosts: Vec<String>,
    /// Browser origins allowed to call the API (CORS); "*" any.
    pub cors_origins: Vec<String>,
    /// Required as `Authorization: Bearer <key>` on `/v1/`.
    pub api_key: Option<String>,
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    /// The longest a request may take from admission to its last byte.
    pub request_timeout: Duration,
}

/// Upper bounds of the start-up flags (a typo like `--workers 10000` is refused).
pub const MAX_QUEUE: usize = 65_536;
pub const MAX_WORKERS: usize = 256;
pub const MAX_CONNECTIONS: usize = 65_536;
pub const MAX_BODY_BYTES: usize = 64 << 20;

pub fn run(o: ServeOptions) -> Result<()> {
    let within = |name: &str, v: usize, lo: usize, hi: usize| {
        if (lo..=hi).contains(&v) {
            Ok(())
        } else {
            Err(anyhow::anyhow!("{name} must be in [{lo}, {hi}], got {v}"))
        }
    };
    within("--queue", o.queue, 1, MAX_QUEUE)?;
    within("--max-batch", o.max_batch, 1, api::MAX_ROWS)?;
    within("--workers", o.workers, 1, MAX_WORKERS)?;
    within("--max-connections", o.max_connections, 1, MAX_CONNECTIONS)?;
    within("--max-body-bytes", o.max_body_bytes, 1024, MAX_BODY_BYTES)?;
    if o.api_key.as_ref().is_some_and(|k| k.trim().is_empty()) {
        anyhow::bail!("--api-key (or CARD_API_KEY) is empty");
    }
    // A panic is logged as one line; the scheduler then reports it and stops the server.
    std::panic::set_hook(Box::new(|p| {
        let thread = std::thread::current();
        let at = p.location().map(|l| format!(" at {l}")).unwrap_or_default();
        eprintln!(
            "card serve: panic in thread {}{at}",
            thread.name().unwrap_or("?")
        );
    }));
    let device = runtime::device()?;
    let precision = Precision::from_flags(o.f32, o.int8);
    let ckpt = checkpoint::open_as(&o.checkpoint, &device, !o.no_ema, precision)?;
    let chat = ChatFormat::for_checkpoint(&ckpt.extra)?;
    let objective = ckpt.objective();
    let (tok, model) = (ckpt.tokenizer, ckpt.model);
    let id = o.model_name.clone().unwrap_or_else(|| {
        let run = ckpt
            .dir
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| "model".into());
        format!("card-{}-{run}", objective.name())
    });
    let decoders = ModelInfo::decoders_for(&ckpt.config);
    if decoders.is_empty() {
        anyhow::bail!(
            "the server decodes with {}; a {} checkpoint needs {}",
            api::DECODERS.join(" or "),
            objective.name(),
            crate::decode::DecoderSpec::fitting(objective).join(" or ")
        );
    }
    let info = ModelInfo {
        id,
        context: model.cfg.max_seq_len,
        vocab: tok.vocab_size(),
        config: ckpt.config,
        decoders,
        chat,
        max_rows: o.max_batch,
    };
    let scheduler = Scheduler::new(
        model,
        tok.clone(),
        SchedulerConfig {
            capacity: o.queue,
            max_batch: o.max_batch,
            workers: o.workers,
            step_delay: o.step_delay,
        },
    );
    let app = Arc::new(App {
        scheduler: Arc::clone(&scheduler),
        tok,
        info,
        max_body_bytes: o.max_body_bytes,
        created: now_s(),
        objective: objective.name(),
        max_batch: o.max_batch,
        workers: o.workers,
        body_timeout: o.body_timeout,
        request_timeout: o.request_timeout,
        parsing: tokio::sync::Semaphore::new(o.workers.clamp(2, 16)),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let workers = scheduler.start();
    let served = rt.block_on(serve(app, &o));
    scheduler.cancel_everything();
    for w in workers {
        let _ = w.join();
    }
    rt.shutdown_timeout(Duration::from_secs(1));
    served?;
    if let Some(why) = scheduler.failure() {
        anyhow::bail!("the server stopped because {why} (see above); restart it");
    }
    eprintln!("card serve: stopped");
    Ok(())
}

async fn serve(app: Arc<App>, o: &ServeOptions) -> Result<()> {
    let addr = format!("{}:{}", o.host, o.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    let guard = guard::Guard {
        hosts: guard::Guard::hosts_for(&o.host, &o.allow_hosts),
        port: local.port(),
        cors: o
            .cors_origins
            .iter()
            .map(|c| c.to_ascii_lowercase())
            .collect(),
        api_key: o.api_key.clone(),
    };
    // The first stdout line names the address (tests start the server on port 0 and read it).
    println!(
        "card serve: listening on http://{local} (model {}, context {}, decoder {})",
        app.info.id,
        app.info.context,
        app.info.default_decoder()
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
    if local.ip().is_unspecified() && o.allow_hosts.is_empty() {
        eprintln!("card serve: listening on every interface, but only requests addressed to {} are accepted; add --allow-host NAME for the names clients use", guard.hosts.join(", "));
    }
    let scheduler = Arc::clone(&app.scheduler);
    let grace = o.shutdown_grace;
    let stop = async move {
        while !runtime::stop_requested() && scheduler.failure().is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!(
            "card serve: shutting down; {} request(s) in flight get {:.1}s to finish",
            scheduler.admitted(),
            grace.as_secs_f64()
        );
        scheduler.close();
        let e = Arc::clone(&scheduler);
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            e.cancel_everything();
        });
    };
    let limits = net::NetLimits {
        max_connections: o.max_connections,
        header_timeout: o.header_timeout,
    };
    // Connections close once their requests end; don't wait forever on a stuck client.
    net::serve(
        listener,
        router(app, guard),
        limits,
        stop,
        grace + Duration::from_secs(5),
    )
    .await
}

fn router(app: Arc<App>, guard: guard::Guard) -> Router {
    Router::new()
        .route("/", get(playground_page))
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/completions", post(http::completions))
        .route("/v1/chat/completions", post(http::chat_completions))
        .route("/v1/playground/stream", post(http::playground_stream))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app)
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(guard),
            guard::check,
        ))
}

async fn playground_page() -> Html<&'static str> {
    Html(include_str!("playground.html"))
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {}", uri.path()),
    )
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

async fn health(axum::extract::State(app): axum::extract::State<Arc<App>>) -> Response {
    let e = &app.scheduler;
    let s = &e.stats;
    let closed = e.is_closed();
    let failed = e.failure().is_some();
    let body = json!({
        "status": if failed { "failed" } else if closed { "shutting_down" } else { "ok" },
        "model": app.info.id,
        "objective": app.objective,
        "context": app.info.context,
        "queue": {"admitted": e.admitted(), "capacity": e.capacity(),
                  "max_batch": app.max_batch, "workers": app.workers},
        "forward_passes": s.forward_passes.load(Ordering::SeqCst),
        "batches": s.batches.load(Ordering::SeqCst),
        "active_rows": s.active_rows.load(Ordering::SeqCst),
        "completed": s.completed.load(Ordering::SeqCst),
        "cancelled": s.cancelled.load(Ordering::SeqCst),
        "max_batch_rows": s.max_batch_rows.load(Ordering::SeqCst),
    });
    let status = if closed {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, Json(body)).into_response()
}

use crate::decode::verify::DEFAULT_LOOKUP;

async fn models(
    axum::extract::State(app): axum::extract::State<Arc<App>>,
) -> Json<serde_json::Value> {
    let i = &app.info;
    let d = crate::decode::CardDecoder::default();
    let decoders = &i.decoders;
    // The verifier drafts from [MASK] slots on CARD checkpoints, by lookup alone elsewhere.
    let verify_slots = if decoders.contains(&"card") {
        crate::decode::VerifyDecoder::default().block_size
    } else {
        0
    };
    Json(json!({"object": "list", "data": [{
        "id": i.id,
        "object": "model",
        "created": app.created,
        "owned_by": "card",
        "objective": app.objective,
        "context_length": i.context,
        "decoders": decoders,
        "defaults": {"decoder": i.default_decoder(), "block_size": d.block_size,
                     "step_limit": d.step_limit, "threshold": d.threshold,
                     "verify_block_size": verify_slots, "verify_lookup": DEFAULT_LOOKUP},
    }]}))
}
