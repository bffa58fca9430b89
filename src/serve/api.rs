//! Validation of the OpenAI-compatible requests (typed in `request.rs`) into jobs, answered
//! with an `ApiError` (`error.rs`) when refused. Status codes: 400 when the body is not JSON or a field has the
//! wrong JSON type or a required one is missing; 422 when it parses but a value is
//! unacceptable (out of range, unknown decoder, unknown field, too long for the model's
//! context); 413 for a body over the limit; 404 for an unknown model.

use super::error::ApiError;
use super::job::{DecodeSettings, JobSpec};
use super::request::{self, Int, Prompt, Request, Stop};
use crate::config::Config;
use crate::data::chat::{ChatFormat, Message, Role};
use crate::data::TextTokenizer;
use crate::decode::{Decoder, DecoderSpec, Knobs, Sampling};
use axum::http::StatusCode;
use serde_json::Value;

pub const MAX_N: i64 = 16;
pub const MAX_PROMPTS: usize = 32;
pub const MAX_ROWS: usize = 64;
pub const MAX_STOPS: usize = 4;
/// The decoders the server runs (the causal ones: they share the batched KV cache).
pub const DECODERS: [&str; 3] = ["ar", "card", "verify"];

/// What the parser needs to know about the served model.
pub struct ModelInfo {
    pub id: String,
    pub context: usize,
    pub vocab: usize,
    /// The checkpoint's config (its objective decides which decoders fit).
    pub config: Config,
    /// The server's decoders that fit the checkpoint (at least one).
    pub decoders: Vec<&'static str>,
    /// How chat messages become a prompt.
    pub chat: ChatFormat,
    /// Rows (prompts × n) one request may ask for: `card serve --max-batch`, at most
    /// [`MAX_ROWS`].
    pub max_rows: usize,
}

impl ModelInfo {
    /// The server's decoders that fit a checkpoint.
    pub fn decoders_for(cfg: &Config) -> Vec<&'static str> {
        DecoderSpec::fitting(cfg.train.objective)
            .into_iter()
            .filter(|d| DECODERS.contains(d))
            .collect()
    }

    /// CARD's parallel decoding where it fits, else the first that fits.
    pub fn default_decoder(&self) -> &'static str {
        if self.decoders.contains(&"card") {
            "card"
        } else {
            self.decoders[0]
        }
    }
}

/// A parsed request: the job plus what the response needs.
pub struct Parsed {
    pub job: JobSpec,
    /// Prompts before expansion by n (choices = prompts × n).
    pub n: usize,
    pub include_usage: bool,
}

fn int_in(v: Option<Int>, k: &str, lo: i64, hi: i64) -> Result<Option<usize>, ApiError> {
    match v {
        Some(Int(v)) if v < lo || v > hi => Err(ApiError::bad_value(
            k,
            format!("'{k}' must be between {lo} and {hi}, got {v}"),
        )),
        v => Ok(v.map(|Int(v)| v as usize)),
    }
}

fn num_in(
    v: Option<f64>,
    k: &str,
    lo: f64,
    hi: f64,
    lo_open: bool,
) -> Result<Option<f64>, ApiError> {
    match v {
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

fn stops(stop: Option<Stop>) -> Result<Vec<String>, ApiError> {
    let list = match stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
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

fn common(r: &mut Request, info: &ModelInfo, max_key: &str) -> Result<Common, ApiError> {
    if let Some(model) = &r.model {
        if model != &info.id {
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
    let max = if max_key == "max_tokens" {
        r.max_tokens
    } else {
        r.max_completion_tokens
    };
    let max_tokens = int_in(max, max_key, 1, ctx - 1)?;
    let sampling = Sampling {
        temperature: num_in(r.temperature, "temperature", 0.0, 2.0, false)?.unwrap_or(1.0),
        top_k: int_in(r.top_k, "top_k", 0, info.vocab as i64)?.unwrap_or(0),
        top_p: num_in(r.top_p, "top_p", 0.0, 1.0, true)?.unwrap_or(1.0),
        repetition_penalty: num_in(r.repetition_penalty, "repetition_penalty", 0.0, 10.0, true)?
            .unwrap_or(1.0),
    };
    let knobs = Knobs {
        // 0 is the verifier's lookup alone; CARD refuses it.
        block_size: int_in(r.block_size, "block_size", 0, ctx)?,
        step_limit: int_in(r.step_limit, "step_limit", 1, 1024)?,
        threshold: num_in(r.threshold, "threshold", 0.0, 1.0, false)?,
        lookup: int_in(r.lookup, "lookup", 0, ctx)?,
        tree: int_in(r.tree, "tree", 0, 32)?,
        ..Knobs::default()
    };
    let name = r.decoder.as_deref().unwrap_or(info.default_decoder());
    if !DECODERS.contains(&name) {
        let msg = format!("unknown decoder '{name}'; use 'ar', 'card' or 'verify'");
        return Err(ApiError::bad_value("decoder", msg));
    }
    let decoder = DecoderSpec::parse(name, &knobs, &info.config)
        .map_err(|e| ApiError::bad_value("decoder", e.to_string()))?;
    if !decoder.fits(info.config.train.objective) {
        let msg = format!("this checkpoint cannot be decoded with the '{name}' decoder");
        return Err(ApiError::bad_value("decoder", msg));
    }
    let stream = r.stream.unwrap_or(false);
    if r.stream_options.is_some() && !stream {
        let msg = "'stream_options' is only allowed when 'stream' is true";
        return Err(ApiError::bad_value("stream_options", msg));
    }
    let n = int_in(r.n, "n", 1, MAX_N)?.unwrap_or(1);
    if n > 1 && sampling.is_greedy() {
        let msg = format!("n = {n} with greedy decoding (temperature 0) gives {n} identical choices; set a temperature above 0 or n = 1");
        return Err(ApiError::bad_value("n", msg));
    }
    let include_usage = match r
        .stream_options
        .as_ref()
        .and_then(|o| o.get("include_usage"))
    {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::bad_type(
                "stream_options.include_usage",
                "a boolean",
            ))
        }
    };
    Ok(Common {
        settings: DecodeSettings {
            decoder,
            sampling,
            ignore_eos: r.ignore_eos.unwrap_or(false),
        },
        n,
        seed: r.seed.map(|Int(s)| s as u64),
        stream,
        include_usage,
        stops: stops(r.stop.take())?,
        max_tokens,
    })
}

fn encode(tok: &TextTokenizer, text: &str) -> Result<Vec<u32>, ApiError> {
    tok.encode_prompt(text).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_prompt",
            format!("cannot tokenize the prompt: {e}"),
        )
    })
}

fn token_list(v: &[Value], info: &ModelInfo) -> Result<Vec<u32>, ApiError> {
    let ids: Option<Vec<u32>> = v
        .iter()
        .map(|t| {
            t.as_u64()
                .filter(|&t| (t as usize) < info.vocab)
                .map(|t| t as u32)
        })
        .collect();
    let Some(ids) = ids else {
        let msg = format!("token ids must be integers below {}", info.vocab);
        return Err(ApiError::bad_value("prompt", msg));
    };
    if ids.is_empty() {
        return Err(ApiError::bad_value(
            "prompt",
            "a token prompt must not be empty",
        ));
    }
    Ok(ids)
}

fn prompts(
    p: Option<Prompt>,
    tok: &TextTokenizer,
    info: &ModelInfo,
) -> Result<Vec<Vec<u32>>, ApiError> {
    let bad = || ApiError::bad_type("prompt", "a string, an array of strings, or token ids");
    let out = match p {
        None => vec![encode(tok, "")?],
        Some(Prompt::Text(s)) => vec![encode(tok, &s)?],
        Some(Prompt::List(a)) if a.is_empty() => {
            return Err(ApiError::bad_value("prompt", "the prompt list is empty"))
        }
        // The first element says which form the list takes.
        Some(Prompt::List(a)) => match &a[0] {
            Value::String(_) => a
                .iter()
                .map(|v| v.as_str().ok_or_else(bad).and_then(|s| encode(tok, s)))
                .collect::<Result<_, _>>()?,
            Value::Number(_) => vec![token_list(&a, info)?],
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
    };
    if out.len() > MAX_PROMPTS {
        let msg = format!("at most {MAX_PROMPTS} prompts per request");
        return Err(ApiError::bad_value("prompt", msg));
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
    let most = info.max_rows.min(MAX_ROWS);
    if rows > most {
        return Err(ApiError::bad_value(
            "n",
            format!("prompts × n is {rows}; this server decodes at most {most} completions per request (card serve --max-batch)"),
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

/// The body's checked and typed fields (`takes`: what this endpoint adds to the common ones).
fn read(body: &[u8], takes: &[&str]) -> Result<Request, ApiError> {
    let m = request::parse(body)?;
    request::check_fields(&m, takes)?;
    request::typed(m)
}

pub fn completion(body: &[u8], tok: &TextTokenizer, info: &ModelInfo) -> Result<Parsed, ApiError> {
    let mut r = read(body, &["prompt", "echo", "best_of", "suffix"])?;
    let c = common(&mut r, info, "max_tokens")?;
    let p = prompts(r.prompt, tok, info)?;
    finish(c, p, 16, info, false)
}

/// The playground: one prompt, one choice, with the decoder trace.
pub fn playground(body: &[u8], tok: &TextTokenizer, info: &ModelInfo) -> Result<Parsed, ApiError> {
    let mut r = read(body, &["prompt"])?;
    let mut c = common(&mut r, info, "max_tokens")?;
    let p = prompts(r.prompt, tok, info)?;
    if p.len() != 1 || c.n != 1 {
        return Err(ApiError::bad_value(
            "prompt",
            "the playground takes one prompt and n = 1",
        ));
    }
    c.stream = true;
    finish(c, p, 32, info, true)
}

pub fn chat(body: &[u8], tok: &TextTokenizer, info: &ModelInfo) -> Result<Parsed, ApiError> {
    let mut m = request::parse(body)?;
    let takes = [
        "messages",
        "max_completion_tokens",
        "tools",
        "functions",
        "top_logprobs",
    ];
    request::check_fields(&m, &takes)?;
    // The newer name wins; the older one is then not read at all.
    let key = if m.get("max_completion_tokens").is_some_and(|v| !v.is_null()) {
        m.remove("max_tokens");
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    let mut r = request::typed(m)?;
    let mut c = common(&mut r, info, key)?;
    let Some(msgs) = r.messages else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing_required_parameter",
            "'messages' is required",
        )
        .param("messages"));
    };
    if msgs.is_empty() {
        return Err(ApiError::bad_value(
            "messages",
            "'messages' must not be empty",
        ));
    }
    let messages = msgs
        .iter()
        .enumerate()
        .map(|(i, msg)| message(msg, &format!("messages[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let text = info
        .chat
        .render(&messages)
        .map_err(|e| ApiError::bad_value("messages", format!("{e:#}")))?;
    if let Some(stop) = info.chat.stop() {
        if !c.stops.contains(&stop) {
            c.stops.push(stop);
        }
    }
    let prompt = encode(tok, &text)?;
    finish(c, vec![prompt], 256, info, false)
}

/// One chat message: an object with a known role and text content (a string, or text
/// parts; an assistant's may be empty).
fn message(msg: &Value, p: &str) -> Result<Message, ApiError> {
    let msg = msg
        .as_object()
        .ok_or_else(|| ApiError::bad_type(p, "an object"))?;
    let role = match msg.get("role").and_then(Value::as_str) {
        Some(r) => Role::parse(r).ok_or_else(|| {
            ApiError::bad_value(&format!("{p}.role"), format!("unknown role '{r}'"))
        })?,
        None => return Err(ApiError::bad_type(&format!("{p}.role"), "a string")),
    };
    let content = match msg.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None if role == Role::Assistant => String::new(),
        Some(Value::Array(parts)) => {
            let mut s = String::new();
            for part in parts {
                match (
                    part.get("type").and_then(Value::as_str),
                    part.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => s.push_str(t),
                    _ => {
                        let msg = "only text content parts are supported";
                        return Err(ApiError::bad_value(&format!("{p}.content"), msg));
                    }
                }
            }
            s
        }
        _ => {
            let want = "a string or an array of text parts";
            return Err(ApiError::bad_type(&format!("{p}.content"), want));
        }
    };
    Ok(Message { role, content })
}
