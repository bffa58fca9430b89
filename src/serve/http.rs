//! The generation endpoints: read and validate the body, queue the job, then answer with one
//! JSON object or an SSE stream in OpenAI's format (`data: {...}` … `data: [DONE]`).
//! Dropping the response (client gone) drops the ticket, which cancels the job.

use super::api::{self, Parsed};
use super::app::{now_s, App};
use super::error::ApiError;
use super::job::{Event, JobResult};
use super::scheduler::{SubmitError, Ticket};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Completion,
    Chat,
    Playground,
}

type Parser = fn(&[u8], &crate::data::TextTokenizer, &api::ModelInfo) -> Result<Parsed, ApiError>;

pub(crate) async fn completions(State(app): State<Arc<App>>, req: Request) -> Response {
    handle(app, req, Kind::Completion, api::completion).await
}

pub(crate) async fn chat_completions(State(app): State<Arc<App>>, req: Request) -> Response {
    handle(app, req, Kind::Chat, api::chat).await
}

pub(crate) async fn playground_stream(State(app): State<Arc<App>>, req: Request) -> Response {
    handle(app, req, Kind::Playground, api::playground).await
}

async fn read_body(
    req: Request,
    limit: usize,
    deadline: Duration,
) -> Result<axum::body::Bytes, ApiError> {
    let too_big = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body exceeds the limit of {limit} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_big());
    }
    match tokio::time::timeout(deadline, axum::body::to_bytes(req.into_body(), limit)).await {
        Ok(read) => read.map_err(|_| too_big()),
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request body did not arrive within {:.0}s",
                deadline.as_secs_f64()
            ),
        )),
    }
}

async fn handle(app: Arc<App>, req: Request, kind: Kind, parse: Parser) -> Response {
    match start(app.clone(), req, parse).await {
        Err(e) => e.into_response(),
        Ok((parsed, ticket)) => {
            let id = new_id(kind);
            if parsed.job.stream {
                stream(app, ticket, parsed, kind, id)
            } else {
                whole(app, ticket, parsed, kind, id).await
            }
        }
    }
}

async fn start(app: Arc<App>, req: Request, parse: Parser) -> Result<(Parsed, Ticket), ApiError> {
    let body = read_body(req, app.max_body_bytes, app.body_timeout).await?;
    // A queue place first, so that only admitted requests are tokenized, a few at a time.
    let permit = app.scheduler.reserve().map_err(|e| refused(&app, e))?;
    let _parsing = app
        .parsing
        .acquire()
        .await
        .map_err(|_| internal("the request parser is closed"))?;
    // Tokenizing is CPU work: keep it off the runtime's threads.
    let a = Arc::clone(&app);
    let parsed = tokio::task::spawn_blocking(move || parse(&body, &a.tok, &a.info))
        .await
        .map_err(|_| internal("the request parser failed"))??;
    let ticket = app
        .scheduler
        .submit(parsed.job.clone(), permit)
        .map_err(|e| refused(&app, e))?;
    Ok((parsed, ticket))
}

fn refused(app: &App, e: SubmitError) -> ApiError {
    let mut err = match e {
        SubmitError::QueueFull => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "queue_full",
            format!(
                "the server is busy ({} requests queued or running); retry shortly",
                app.scheduler.capacity()
            ),
        ),
        SubmitError::ShuttingDown => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down",
        ),
    };
    err.retry_after = Some(1);
    err
}

fn timed_out(limit: Duration) -> ApiError {
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "timeout",
        format!(
            "the request did not finish within {:.0}s (card serve --request-timeout-s)",
            limit.as_secs_f64()
        ),
    )
}

fn internal(msg: &str) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", msg)
}

fn failed(message: String, cancelled: bool) -> ApiError {
    if cancelled {
        let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "cancelled", message);
        e.retry_after = Some(1);
        e
    } else {
        internal(&message)
    }
}

fn new_id(kind: Kind) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let prefix = if kind == Kind::Chat {
        "chatcmpl"
    } else {
        "cmpl"
    };
    format!("{prefix}-{:x}{n:06}", now_s())
}

fn usage(r: &JobResult) -> Value {
    json!({
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "total_tokens": r.prompt_tokens + r.completion_tokens,
        "forward_passes": r.forward_passes,
        "tokens_per_forward": r.tokens_per_forward,
        "decoder": r.decoder,
        "batch_rows": r.batch_rows,
        "elapsed_s": r.elapsed_s,
    })
}

fn chat_text(kind: Kind, text: &str) -> &str {
    if kind == Kind::Chat {
        text.trim_start()
    } else {
        text
    }
}

async fn whole(app: Arc<App>, mut ticket: Ticket, _p: Parsed, kind: Kind, id: String) -> Response {
    let deadline = tokio::time::Instant::now() + app.request_timeout;
    loop {
        let Ok(event) = tokio::time::timeout_at(deadline, ticket.events.recv()).await else {
            // Dropping the ticket cancels the job.
            return timed_out(app.request_timeout).into_response();
        };
        match event {
            Some(Event::Done(r)) => {
                let choices: Vec<Value> = r
                    .rows
                    .iter()
                    .enumerate()
                    .map(|(i, row)| match kind {
                        Kind::Chat => json!({"index": i, "finish_reason": row.finish, "logprobs": null,
                            "message": {"role": "assistant", "content": chat_text(kind, &row.text)}}),
                        _ => json!({"index": i, "text": row.text, "logprobs": null,
                            "finish_reason": row.finish}),
                    })
                    .collect();
                let object = if kind == Kind::Chat {
                    "chat.completion"
                } else {
                    "text_completion"
                };
                return Json(json!({
                    "id": id, "object": object, "created": now_s(), "model": app.info.id,
                    "system_fingerprint": null, "choices": choices, "usage": usage(&r),
                }))
                .into_response();
            }
            Some(Event::Failed { message, cancelled }) => {
                return failed(message, cancelled).into_response()
            }
            Some(_) => {}
            None => return internal("the decoder stopped without an answer").into_response(),
        }
    }
}

/// State of one SSE response.
struct Streaming {
    app: Arc<App>,
    ticket: Ticket,
    kind: Kind,
    id: String,
    created: u64,
    include_usage: bool,
    /// Raw text received per choice, and whether a chat choice has shown non-space text.
    raw: Vec<String>,
    started: Vec<bool>,
    out: VecDeque<Sse>,
    ended: bool,
    deadline: tokio::time::Instant,
}

impl Streaming {
    fn chunk(&self, choices: Value, usage: Option<Value>) -> Sse {
        let object = match self.kind {
            Kind::Chat => "chat.completion.chunk",
            _ => "text_completion",
        };
        let mut v = json!({"id": self.id, "object": object, "created": self.created,
            "model": self.app.info.id, "system_fingerprint": null, "choices": choices});
        if let Some(u) = usage {
            v["usage"] = u;
        }
        Sse::default().data(v.to_string())
    }

    fn choice(&self, i: usize, text: &str, finish: Option<&str>) -> Value {
        match self.kind {
            Kind::Chat if finish.is_some() => {
                json!({"index": i, "delta": {}, "logprobs": null, "finish_reason": finish})
            }
            Kind::Chat => {
                json!({"index": i, "delta": {"content": text}, "logprobs": null, "finish_reason": null})
            }
            _ => json!({"index": i, "text": text, "logprobs": null, "finish_reason": finish}),
        }
    }

    fn delta(&mut self, row: usize, text: &str) {
        if row >= self.raw.len() {
            return;
        }
        self.raw[row].push_str(text);
        let text = if self.kind == Kind::Chat && !self.started[row] {
            text.trim_start()
        } else {
            text
        };
        if text.is_empty() {
            return;
        }
        self.started[row] = true;
        let c = self.chunk(json!([self.choice(row, text, None)]), None);
        self.out.push_back(c);
    }

    fn on_event(&mut self, ev: Option<Event>) {
        match ev {
            Some(Event::Delta { row, text }) if self.kind != Kind::Playground => {
                self.delta(row, &text)
            }
            Some(Event::Delta { .. }) => {}
            Some(Event::Step(s)) => {
                let mut v = serde_json::to_value(&*s).unwrap_or(Value::Null);
                v["type"] = json!("step");
                self.out.push_back(Sse::default().data(v.to_string()));
            }
            Some(Event::Done(r)) => {
                if self.kind == Kind::Playground {
                    let row = r.rows.first();
                    let v = json!({"type": "done", "text": row.map(|r| r.text.as_str()),
                        "finish_reason": row.map(|r| r.finish), "usage": usage(&r),
                        "tokens_per_s": r.completion_tokens as f64 / r.elapsed_s.max(1e-9)});
                    self.out.push_back(Sse::default().data(v.to_string()));
                } else {
                    for (i, row) in r.rows.iter().enumerate() {
                        // Whatever the final decode adds beyond what was streamed.
                        if let Some(rest) = row.text.strip_prefix(self.raw[i].as_str()) {
                            if !rest.is_empty() {
                                let rest = rest.to_string();
                                self.delta(i, &rest);
                            }
                        }
                        let c = self.chunk(json!([self.choice(i, "", Some(row.finish))]), None);
                        self.out.push_back(c);
                    }
                    if self.include_usage {
                        let c = self.chunk(json!([]), Some(usage(&r)));
                        self.out.push_back(c);
                    }
                }
                self.finish();
            }
            Some(Event::Failed { message, cancelled }) => {
                let e = failed(message, cancelled);
                self.out
                    .push_back(Sse::default().data(e.body().to_string()));
                self.finish();
            }
            None => {
                let e = internal("the decoder stopped without an answer");
                self.out
                    .push_back(Sse::default().data(e.body().to_string()));
                self.finish();
            }
        }
    }

    fn finish(&mut self) {
        self.out.push_back(Sse::default().data("[DONE]"));
        self.ended = true;
    }
}

fn stream(app: Arc<App>, ticket: Ticket, p: Parsed, kind: Kind, id: String) -> Response {
    let rows = p.job.prompts.len();
    let app_timeout = app.request_timeout;
    let mut st = Streaming {
        app,
        ticket,
        kind,
        id,
        created: now_s(),
        include_usage: p.include_usage,
        raw: vec![String::new(); rows],
        started: vec![false; rows],
        out: VecDeque::new(),
        ended: false,
        deadline: tokio::time::Instant::now() + app_timeout,
    };
    if kind == Kind::Chat {
        let first: Vec<Value> = (0..rows)
            .map(|i| json!({"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}))
            .collect();
        let c = st.chunk(Value::Array(first), None);
        st.out.push_back(c);
    }
    let events = futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(e) = st.out.pop_front() {
                return Some((Ok::<_, Infallible>(e), st));
            }
            if st.ended {
                return None;
            }
            match tokio::time::timeout_at(st.deadline, st.ticket.events.recv()).await {
                Ok(ev) => st.on_event(ev),
                Err(_) => {
                    let e = timed_out(st.app.request_timeout);
                    st.out.push_back(Sse::default().data(e.body().to_string()));
                    st.finish();
                }
            }
        }
    });
    axum::response::sse::Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
        .into_response()
}
