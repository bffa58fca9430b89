//! The request bodies of the generation endpoints: read as a JSON object, checked for the
//! fields an endpoint takes (unknown ones first: 422 `unknown_parameter`; OpenAI fields at
//! values that would change something: 422), then typed by serde, with one mapper from a
//! serde error to an OpenAI-style error: 400 `invalid_type` with the field's path. Values
//! are range-checked in `api.rs`.

use super::error::ApiError;
use axum::http::StatusCode;
use serde::de::{self, Deserializer, Unexpected, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

/// The fields every generation endpoint takes.
pub const COMMON: &[&str] = &[
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
    "lookup",
    "tree",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "logit_bias",
];

/// A request's fields once their JSON types are right (fields only an endpoint takes are
/// refused by name before, in [`check_fields`]).
#[derive(Debug, Default, Deserialize)]
pub struct Request {
    pub model: Option<String>,
    pub max_tokens: Option<Int>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<Int>,
    pub repetition_penalty: Option<f64>,
    pub ignore_eos: Option<bool>,
    pub stop: Option<Stop>,
    pub seed: Option<Int>,
    pub n: Option<Int>,
    pub stream: Option<bool>,
    pub stream_options: Option<Map<String, Value>>,
    pub user: Option<String>,
    pub decoder: Option<String>,
    pub block_size: Option<Int>,
    pub step_limit: Option<Int>,
    pub threshold: Option<f64>,
    /// verify: the most prompt-lookup drafts per pass.
    pub lookup: Option<Int>,
    /// verify: the most alternative positions of a draft tree per pass.
    pub tree: Option<Int>,
    /// Completions: text, texts, token ids or lists of them (checked in `api.rs`, where a
    /// bad token id is a value error).
    pub prompt: Option<Prompt>,
    /// Chat: checked message by message in `api.rs`.
    pub messages: Option<Vec<Value>>,
    pub max_completion_tokens: Option<Int>,
}

/// An integer written as any JSON number that is whole (`1e30` included, saturating), so
/// that out-of-range values are range errors (422) and fractions type errors (400).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Int(pub i64);

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Int;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Int, E> {
                Ok(Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Int, E> {
                Ok(Int(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Int, E> {
                if v.fract() == 0.0 {
                    Ok(Int(v as i64))
                } else {
                    Err(E::invalid_type(Unexpected::Float(v), &self))
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    List(Vec<Value>),
}

/// The body as a JSON object (400 `invalid_json` otherwise).
pub fn parse(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let invalid = |msg: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", msg);
    match serde_json::from_slice(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(invalid("the request body must be a JSON object".into())),
        Err(e) => Err(invalid(format!("the request body is not valid JSON: {e}"))),
    }
}

/// Refuse fields neither common nor in `extra` (whatever their value), then OpenAI fields
/// at values that would change something (only their defaults are supported).
pub fn check_fields(m: &Map<String, Value>, extra: &[&str]) -> Result<(), ApiError> {
    if let Some(k) = m
        .keys()
        .find(|k| !COMMON.contains(&k.as_str()) && !extra.contains(&k.as_str()))
    {
        let msg = format!("unrecognized request argument supplied: {k}");
        let e = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "unknown_parameter", msg);
        return Err(e.param(k));
    }
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
            let msg = format!("'{k}' is not supported by this server (only its default value is)");
            let e = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_value", msg);
            return Err(e.param(k));
        }
    }
    Ok(())
}

/// The checked fields, typed.
pub fn typed(m: Map<String, Value>) -> Result<Request, ApiError> {
    serde_path_to_error::deserialize(Value::Object(m)).map_err(type_error)
}

fn type_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let msg = e.into_inner().to_string();
    let msg = match msg.as_str() {
        m if m.starts_with("data did not match any variant") => "not a form it may take",
        m => m,
    };
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_type",
        format!("'{path}' has the wrong type: {msg}"),
    )
    .param(&path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(body: &str, extra: &[&str]) -> (u16, String, Option<String>) {
        let e = parse(body.as_bytes())
            .and_then(|m| check_fields(&m, extra).map(|_| m))
            .and_then(typed)
            .unwrap_err();
        (e.status.as_u16(), e.code.unwrap_or("").to_string(), e.param)
    }

    #[test]
    fn errors_map_to_status_code_and_param() {
        let p = |s: &str| Some(s.to_string());
        assert_eq!(
            error("{\"max_tokens\": \"8\"}", &[]),
            (400, "invalid_type".into(), p("max_tokens"))
        );
        assert_eq!(error("{\"max_tokens\": 2.5}", &[]).1, "invalid_type");
        assert_eq!(error("{\"stop\": [1]}", &[]).2, p("stop"));
        assert_eq!(
            error("{\"block_sise\": 4}", &[]),
            (422, "unknown_parameter".into(), p("block_sise"))
        );
        // An unknown field wins over a type error, and a field of another endpoint is unknown.
        assert_eq!(
            error("{\"max_tokens\": \"x\", \"foo\": 1}", &[]).1,
            "unknown_parameter"
        );
        assert_eq!(
            error("{\"messages\": null}", &["prompt"]).1,
            "unknown_parameter"
        );
        assert_eq!(error("{\"logprobs\": 5}", &[]).1, "invalid_value");
        assert_eq!(error("[1, 2]", &[]).1, "invalid_json");
        assert_eq!(error("{\"prompt\": ", &[]).1, "invalid_json");
        assert_eq!(error("{\"n\": 1} junk", &[]).1, "invalid_json");
        assert_eq!(error("{\"prompt\": {\"text\": \"x\"}}", &["prompt"]).0, 400);
        // Whole numbers however written are integers; range checks come later.
        let m = parse(b"{\"max_tokens\": 1e30, \"n\": 18446744073709551615}").unwrap();
        let r = typed(m).unwrap();
        assert_eq!(
            (r.max_tokens, r.n),
            (Some(Int(i64::MAX)), Some(Int(i64::MAX)))
        );
    }
}
