//! Request parsing and validation for the OpenAI-compatible endpoints, and the OpenAI-style
//! error body. Status codes: 400 when the body is not JSON or a field has the wrong JSON type
//! or a required one is missing; 422 when it parses but a value is unacceptable (out of range,
//! unknown decoder, unknown field, too long for the model's context); 413 for a body over the
//! limit; 404 for an unknown model.

use super::engine::{DecodeSettings, DecoderChoice, JobSpec};
use crate::data::TextTokenizer;
use crate::decode::{CardDecoder, Decoder, Sampling};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

pub const MAX_N: i64 = 16;
pub const MAX_PROMPTS: usize = 32;
pub const MAX_ROWS: usize = 64;
pub const MAX_STOPS: usize = 4;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        let kind = match status.as_u16() {
            404 => "not_found_error",
            429 => "rate_limit_error",
            500..=599 => "server_error",
            _ => "invalid_request_error",
        };
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: Some(code),
            retry_after: None,
        }
    }

    pub fn param(mut self, p: &str) -> Self {
        self.param = Some(p.to_string());
        self
    }

    fn bad_type(p: &str, want: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_type",
            format!("'{p}' must be {want}"),
        )
        .param(p)
    }

    fn bad_value(p: &str, msg: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_value", msg).param(p)
    }

    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from(s));
        }
        resp
    }
}

/// What the parser needs to know about the served model.
pub struct ModelInfo {
    pub id: String,
    pub context: usize,
    pub vocab: usize,
    pub default_decoder: &'static str,
    pub card_fits: bool,
    pub ar_fits: bool,
}

/// A parsed request: the job plus what the response needs.
pub struct Parsed {
    pub job: JobSpec,
    /// Prompts before expansion by n (choices = prompts × n).
    pub n: usize,
    pub include_usage: bool,
}

pub fn parse_json(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the request body is not valid JSON: {e}"),
        )
    })?;
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "the request body must be a JSON object",
        )),
    }
}

const COMMON: &[&str] = &[
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    "ignore_eos",
    "stop",
    "seed",
    "n",
    "stream",
    "stream_options",
    "user",
    "decoder",
    "block_size",
    "step_limit",
    "threshold",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "logit_bias",
];

/// Fields accepted only at values that change nothing.
fn check_inert(m: &Map<String, Value>) -> Result<(), ApiError> {
    for (k, v) in m {
        let inert = match k.as_str() {
            "presence_penalty" | "frequency_penalty" => v.is_null() || v.as_f64() == Some(0.0),
            "logprobs" | "echo" => v.is_null() || v == &Value::Bool(false),
            "logit_bias" | "suffix" | "top_logprobs" => {
                v.is_null() || v.as_object().is_some_and(|o| o.is_empty())
            }
            "best_of" => v.is_null() || v.as_i64() == Some(1) || m.get("n") == Some(v),
            "tools" | "functions" => v.is_null() || v.as_array().is_some_and(|a| a.is_empty()),
            _ => true,
        };
        if !inert {
            return Err(ApiError::bad_value(
                k,
                format!("'{k}' is not supported by this server (only its default value is)"),
            ));
        }
    }
    Ok(())
}

fn check_known(m: &Map<String, Value>, extra: &[&str]) -> Result<(), ApiError> {
    for k in m.keys() {
        if !COMMON.contains(&k.as_str()) && !extra.contains(&k.as_str()) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown_parameter",
                format!("unrecognized request argument supplied: {k}"),
            )
            .param(k));
        }
    }
    check_inert(m)
}

fn get<'a>(m: &'a Map<String, Value>, k: &str) -> Option<&'a Value> {
    m.get(k).filter(|v| !v.is_null())
}

fn int(m: &Map<String, Value>, k: &str) -> Result<Option<i64>, ApiError> {
    match get(m, k) {
        None => Ok(None),
        Some(v) => match (v.as_i64(), v.as_u64(), v.as_f64()) {
            (Some(i), _, _) => Ok(Some(i)),
            (None, Some(_), _) => Ok(Some(i64::MAX)),
            // Whole numbers written as floats (1e30 included) are range-checked, not type errors.
            (None, None, Some(f)) if f.fract() == 0.0 => Ok(Some(f as i64)),
            _ => Err(ApiError::bad_type(k, "an integer")),
        },
    }
}

fn int_in(m: &Map<String, Value>, k: &str, lo: i64, hi: i64) -> Result<Option<usize>, ApiError> {
    match int(m, k)? {
        Some(v) if v < lo || v > hi => Err(ApiError::bad_value(
            k,
            format!("'{k}' must be between {lo} and {hi}, got {v}"),
        )),
        v => Ok(v.map(|v| v as usize)),
    }
}

fn num(m: &Map<String, Value>, k: &str) -> Result<Option<f64>, ApiError> {
    match get(m, k) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| ApiError::bad_type(k, "a number")),
    }
}

fn num_in(
    m: &Map<String, Value>,
    k: &str,
    lo: f64,
    hi: f64,
    lo_open: bool,
) -> Result<Option<f64>, ApiError> {
    match num(m, k)? {
        Some(v) if !(v <= hi && (v > lo || (!lo_open && v == lo))) => {
            let l = if lo_open { "(" } else { "[" };
            Err(ApiError::bad_value(
                k,
                format!("'{k}' must be in {l}{lo}, {hi}], got {v}"),
            ))
        }
        v => Ok(v),
    }
}

fn boolean(m: &Map<String, Value>, k: &str) -> Result<bool, ApiError> {
    match get(m, k) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::bad_type(k, "a boolean")),
    }
}

fn stops(m: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    let list: Vec<String> = match get(m, "stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| ApiError::bad_type("stop", "a string or an array of strings"))?,
        Some(_) => {
            return Err(ApiError::bad_type(
                "stop",
                "a string or an array of strings",
            ))
        }
    };
    if list.len() > MAX_STOPS {
        return Err(ApiError::bad_value(
            "stop",
            format!("at most {MAX_STOPS} stop sequences"),
        ));
    }
    if list.iter().any(|s| s.is_empty() || s.len() > 256) {
        return Err(ApiError::bad_value(
            "stop",
            "stop sequences must have 1 to 256 bytes",
        ));
    }
    Ok(list)
}

/// Decoder, sampling, n, seed, stream flags: shared by completions, chat and the playground.
struct Common {
    settings: DecodeSettings,
    n: usize,
    seed: Option<u64>,
    stream: bool,
    include_usage: bool,
    stops: Vec<String>,
    max_tokens: Option<usize>,
}

fn common(m: &Map<String, Value>, info: &ModelInfo, max_key: &str) -> Result<Common, ApiError> {
    if let Some(model) = get(m, "model") {
        let model = model
            .as_str()
            .ok_or_else(|| ApiError::bad_type("model", "a string"))?;
        if model != info.id {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "model_not_found",
                format!(
                    "the model '{model}' does not exist; this server serves '{}'",
                    info.id
                ),
            )
            .param("model"));
        }
    }
    let ctx = info.context as i64;
    let max_tokens = int_in(m, max_key, 1, ctx - 1)?;
    let sampling = Sampling {
        temperature: num_in(m, "temperature", 0.0, 2.0, false)?.unwrap_or(1.0),
        top_k: int_in(m, "top_k", 0, info.vocab as i64)?.unwrap_or(0),
        top_p: num_in(m, "top_p", 0.0, 1.0, true)?.unwrap_or(1.0),
        repetition_penalty: num_in(m, "repetition_penalty", 0.0, 10.0, true)?.unwrap_or(1.0),
    };
    let decoder = match get(m, "decoder") {
        None => info.default_decoder,
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(ApiError::bad_type("decoder", "a string")),
    };
    let card = CardDecoder {
        block_size: int_in(m, "block_size", 1, ctx)?.unwrap_or(CardDecoder::default().block_size),
        step_limit: int_in(m, "step_limit", 1, 1024)?.unwrap_or(CardDecoder::default().step_limit),
        threshold: num_in(m, "threshold", 0.0, 1.0, false)?
            .unwrap_or(CardDecoder::default().threshold),
        ..CardDecoder::default()
    };
    let decoder = match decoder {
        "ar" if info.ar_fits => DecoderChoice::Ar,
        "card" if info.card_fits => DecoderChoice::Card(card),
        "ar" | "card" => {
            return Err(ApiError::bad_value(
                "decoder",
                format!("this checkpoint cannot be decoded with the '{decoder}' decoder"),
            ))
        }
        other => {
            return Err(ApiError::bad_value(
                "decoder",
                format!("unknown decoder '{other}'; use 'ar' or 'card'"),
            ))
        }
    };
    if let Some(v) = get(m, "stream_options") {
        if !v.is_object() {
            return Err(ApiError::bad_type("stream_options", "an object"));
        }
    }
    let include_usage = match m.get("stream_options").and_then(|o| o.get("include_usage")) {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::bad_type(
                "stream_options.include_usage",
                "a boolean",
            ))
        }
    };
    if let Some(u) = get(m, "user") {
        if !u.is_string() {
            return Err(ApiError::bad_type("user", "a string"));
        }
    }
    Ok(Common {
        settings: DecodeSettings {
            decoder,
            sampling,
            ignore_eos: boolean(m, "ignore_eos")?,
        },
        n: int_in(m, "n", 1, MAX_N)?.unwrap_or(1),
        seed: int(m, "seed")?.map(|s| s as u64),
        stream: boolean(m, "stream")?,
        include_usage,
        stops: stops(m)?,
        max_tokens,
    })
}

fn encode(tok: &TextTokenizer, text: &str) -> Result<Vec<u32>, ApiError> {
    let mut ids = tok.encode(text).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_prompt",
            format!("cannot tokenize the prompt: {e}"),
        )
    })?;
    if ids.is_empty() {
        ids.push(tok.eot_id());
    }
    Ok(ids)
}

fn token_list(v: &[Value], info: &ModelInfo) -> Result<Vec<u32>, ApiError> {
    let ids: Vec<u32> = v
        .iter()
        .map(|t| {
            t.as_u64()
                .filter(|&t| (t as usize) < info.vocab)
                .map(|t| t as u32)
        })
        .collect::<Option<_>>()
        .ok_or_else(|| {
            ApiError::bad_value(
                "prompt",
                format!("token ids must be integers below {}", info.vocab),
            )
        })?;
    if ids.is_empty() {
        return Err(ApiError::bad_value(
            "prompt",
            "a token prompt must not be empty",
        ));
    }
    Ok(ids)
}

fn prompts(
    m: &Map<String, Value>,
    tok: &TextTokenizer,
    info: &ModelInfo,
) -> Result<Vec<Vec<u32>>, ApiError> {
    let bad = || ApiError::bad_type("prompt", "a string, an array of strings, or token ids");
    let out = match get(m, "prompt") {
        None => vec![encode(tok, "")?],
        Some(Value::String(s)) => vec![encode(tok, s)?],
        Some(Value::Array(a)) if a.is_empty() => {
            return Err(ApiError::bad_value("prompt", "the prompt list is empty"))
        }
        Some(Value::Array(a)) => match &a[0] {
            Value::String(_) => a
                .iter()
                .map(|v| v.as_str().ok_or_else(bad).and_then(|s| encode(tok, s)))
                .collect::<Result<_, _>>()?,
            Value::Number(_) => vec![token_list(a, info)?],
            Value::Array(_) => a
                .iter()
                .map(|v| {
                    v.as_array()
                        .ok_or_else(bad)
                        .and_then(|t| token_list(t, info))
                })
                .collect::<Result<_, _>>()?,
            _ => return Err(bad()),
        },
        Some(_) => return Err(bad()),
    };
    if out.len() > MAX_PROMPTS {
        return Err(ApiError::bad_value(
            "prompt",
            format!("at most {MAX_PROMPTS} prompts per request"),
        ));
    }
    Ok(out)
}

fn finish(
    c: Common,
    prompts: Vec<Vec<u32>>,
    default_max: usize,
    info: &ModelInfo,
    trace: bool,
) -> Result<Parsed, ApiError> {
    let rows = prompts.len() * c.n;
    if rows > MAX_ROWS {
        return Err(ApiError::bad_value(
            "n",
            format!("prompts × n is {rows}; at most {MAX_ROWS} completions per request"),
        ));
    }
    let longest = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
    let ctx = info.context;
    let max_tokens = match c.max_tokens {
        Some(m) => m,
        None => default_max.min(ctx.saturating_sub(longest)).max(1),
    };
    if longest + max_tokens > ctx {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "context_length_exceeded",
            format!("this model's context is {ctx} tokens; the prompt has {longest} tokens and max_tokens is {max_tokens}; shorten the prompt or lower max_tokens"),
        )
        .param("prompt"));
    }
    let prompts = prompts
        .into_iter()
        .flat_map(|p| std::iter::repeat_n(p, c.n))
        .collect();
    Ok(Parsed {
        job: JobSpec {
            prompts,
            max_tokens,
            stops: c.stops,
            settings: c.settings,
            seed: c.seed,
            stream: c.stream,
            trace,
        },
        n: c.n,
        include_usage: c.include_usage,
    })
}

pub fn completion(body: &[u8], tok: &TextTokenizer, info: &ModelInfo) -> Result<Parsed, ApiError> {
    let m = parse_json(body)?;
    check_known(&m, &["prompt", "echo", "best_of", "suffix"])?;
    let c = common(&m, info, "max_tokens")?;
    let p = prompts(&m, tok, info)?;
    finish(c, p, 16, info, false)
}

/// The playground: one prompt, one choice, with the decoder trace.
pub fn playground(body: &[u8], tok: &TextTokenizer, info: &ModelInfo) -> Result<Parsed, ApiError> {
    let m = parse_json(body)?;
    check_known(&m, &["prompt"])?;
    let mut c = common(&m, info, "max_tokens")?;
    let p = prompts(&m, tok, info)?;
    if p.len() != 1 || c.n != 1 {
        return Err(ApiError::bad_value(
            "prompt",
            "the playground takes one prompt and n = 1",
        ));
    }
    c.stream = true;
    finish(c, p, 32, info, true)
}

/// The plain-text chat template and the stop that ends the assistant's turn.
pub const CHAT_STOP: &str = "\nUser:";

pub fn chat(body: &[u8], tok: &TextTokenizer, info: &ModelInfo) -> Result<Parsed, ApiError> {
    let m = parse_json(body)?;
    check_known(
        &m,
        &[
            "messages",
            "max_completion_tokens",
            "tools",
            "functions",
            "top_logprobs",
        ],
    )?;
    let key = if get(&m, "max_completion_tokens").is_some() {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    let mut c = common(&m, info, key)?;
    let Some(msgs) = get(&m, "messages") else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing_required_parameter",
            "'messages' is required",
        )
        .param("messages"));
    };
    let msgs = msgs
        .as_array()
        .ok_or_else(|| ApiError::bad_type("messages", "an array"))?;
    if msgs.is_empty() {
        return Err(ApiError::bad_value(
            "messages",
            "'messages' must not be empty",
        ));
    }
    let mut text = String::new();
    for (i, msg) in msgs.iter().enumerate() {
        let p = format!("messages[{i}]");
        let msg = msg
            .as_object()
            .ok_or_else(|| ApiError::bad_type(&p, "an object"))?;
        let role = match msg.get("role").and_then(Value::as_str) {
            Some("system") | Some("developer") => "System",
            Some("user") => "User",
            Some("assistant") => "Assistant",
            Some(r) => {
                return Err(ApiError::bad_value(
                    &format!("{p}.role"),
                    format!("unknown role '{r}'"),
                ))
            }
            None => return Err(ApiError::bad_type(&format!("{p}.role"), "a string")),
        };
        let content = match msg.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None if role == "Assistant" => String::new(),
            Some(Value::Array(parts)) => parts
                .iter()
                .map(|part| {
                    match (
                        part.get("type").and_then(Value::as_str),
                        part.get("text").and_then(Value::as_str),
                    ) {
                        (Some("text"), Some(t)) => Ok(t),
                        _ => Err(ApiError::bad_value(
                            &format!("{p}.content"),
                            "only text content parts are supported",
                        )),
                    }
                })
                .collect::<Result<Vec<_>, _>>()?
                .join(""),
            _ => {
                return Err(ApiError::bad_type(
                    &format!("{p}.content"),
                    "a string or an array of text parts",
                ))
            }
        };
        text.push_str(&format!("{role}: {}\n", content.trim()));
    }
    text.push_str("Assistant:");
    if !c.stops.iter().any(|s| s == CHAT_STOP) {
        c.stops.push(CHAT_STOP.to_string());
    }
    let prompt = encode(tok, &text)?;
    finish(c, vec![prompt], 256, info, false)
}

/// Which decoders fit a checkpoint's objective.
pub fn fits(objective: crate::config::ObjectiveKind) -> (bool, bool) {
    (
        crate::decode::ArDecoder.fits(objective),
        CardDecoder::default().fits(objective),
    )
}
