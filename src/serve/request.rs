//! The request bodies of the generation endpoints as typed serde structs, and the one mapper
//! from a deserialisation error to an OpenAI-style error: 400 `invalid_json` for a body that
//! is not a JSON object, 400 `invalid_type` (with the field's path) for a wrong JSON type,
//! 422 `unknown_parameter` for an unknown field. Values are range-checked in `api.rs`.

use super::api::ApiError;
use axum::http::StatusCode;
use serde::de::{self, Deserializer, Unexpected, Visitor};
use serde::Deserialize;
use serde_json::Value;

/// Every field any generation endpoint takes; `api.rs` refuses those an endpoint does not
/// (serde cannot combine `flatten` with `deny_unknown_fields`, so the union is one struct).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
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
    pub stream_options: Option<StreamOptions>,
    pub user: Option<String>,
    pub decoder: Option<String>,
    pub block_size: Option<Int>,
    pub step_limit: Option<Int>,
    pub threshold: Option<f64>,
    // OpenAI fields accepted only at values that change nothing (checked in `api.rs`).
    pub presence_penalty: Option<Value>,
    pub frequency_penalty: Option<Value>,
    pub logprobs: Option<Value>,
    pub logit_bias: Option<Value>,
    // Completions only.
    pub prompt: Option<Prompt>,
    pub echo: Option<Value>,
    pub best_of: Option<Value>,
    pub suffix: Option<Value>,
    // Chat only.
    pub messages: Option<Vec<Message>>,
    pub max_completion_tokens: Option<Int>,
    pub tools: Option<Value>,
    pub functions: Option<Value>,
    pub top_logprobs: Option<Value>,
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
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

/// A completion prompt: text, texts, token ids, or lists of token ids.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u64>),
    TokenLists(Vec<Vec<u64>>),
}

#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: Option<Content>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

/// Parse a body; every failure becomes one OpenAI-style error.
pub fn parse(body: &[u8]) -> Result<Request, ApiError> {
    // serde would read a struct from a JSON array too.
    if body.trim_ascii_start().first() != Some(&b'{') {
        let msg = "the request body must be a JSON object";
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", msg));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(error)
}

fn error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    let invalid_json = |msg: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", msg);
    if !inner.is_data() {
        return invalid_json(format!("the request body is not valid JSON: {inner}"));
    }
    // serde_json appends the position; the field's path says more.
    let msg = inner.to_string();
    let msg = msg
        .rsplit_once(" at line ")
        .map_or(msg.as_str(), |(m, _)| m);
    if let Some(field) = msg
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
    {
        return ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_parameter",
            format!("unrecognized request argument supplied: {field}"),
        )
        .param(field);
    }
    if path == "." || path.is_empty() {
        return invalid_json("the request body must be a JSON object".into());
    }
    let msg = match msg {
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

    fn code(body: &str) -> (u16, String, Option<String>) {
        let e = parse(body.as_bytes()).unwrap_err();
        (e.status.as_u16(), e.code.unwrap_or("").to_string(), e.param)
    }

    #[test]
    fn errors_map_to_status_code_and_param() {
        assert_eq!(
            code("{\"max_tokens\": \"8\"}"),
            (400, "invalid_type".into(), Some("max_tokens".into()))
        );
        assert_eq!(code("{\"max_tokens\": 2.5}").1, "invalid_type");
        assert_eq!(code("{\"stop\": [1]}").2.as_deref(), Some("stop"));
        assert_eq!(
            code("{\"block_sise\": 4}"),
            (422, "unknown_parameter".into(), Some("block_sise".into()))
        );
        assert_eq!(code("[1, 2]").1, "invalid_json");
        assert_eq!(code("{\"prompt\": ").1, "invalid_json");
        let c = code("{\"messages\": [{\"role\": \"user\", \"content\": 3}]}");
        assert_eq!((c.0, c.2.as_deref()), (400, Some("messages[0].content")));
        // Whole numbers however written are integers; range checks come later.
        let r = parse(b"{\"max_tokens\": 1e30, \"n\": 18446744073709551615}").unwrap();
        assert_eq!(
            (r.max_tokens, r.n),
            (Some(Int(i64::MAX)), Some(Int(i64::MAX)))
        );
    }
}
