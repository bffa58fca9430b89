//! Property tests: whatever a client or a user throws at the parsers, the answer is a value
//! or an error, never a panic (damaged files: `properties_files.rs`). Each property runs a
//! fixed number of cases from a fixed seed (set `CARD_PROPTEST_SEED` to explore others,
//! `CARD_PROPTEST_SCALE` to run that many times the cases); a failure prints the shrunk input.

mod common;

use card::config::{Config, ObjectiveKind};
use card::data::chat::{ChatFormat, ChatInfo};
use card::data::TextTokenizer;
use card::decode::text::Detok;
use card::serve::api::{self, ModelInfo, Parsed};
use card::serve::error::ApiError;
use card::serve::request;
use common::props::{check, data, leaf, number, Seen, WORDS};
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use std::sync::OnceLock;

// ---------------------------------------------------------------------------------------
// The JSON API: completions, chat and playground bodies.

/// Fields the endpoints add to the common ones, and names from inside nested objects.
const MORE_KEYS: &[&str] = &[
    "prompt",
    "messages",
    "max_completion_tokens",
    "echo",
    "best_of",
    "suffix",
    "tools",
    "role",
    "content",
    "type",
    "text",
    "include_usage",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select([request::COMMON, MORE_KEYS].concat()).prop_map(str::to_string),
        1 => any::<String>(),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A chat message, well formed or nearly.
fn message() -> impl Strategy<Value = Value> {
    let part = prop_oneof![
        any::<String>().prop_map(|t| json!({"type": "text", "text": t})),
        value(),
    ];
    let content = prop_oneof![
        3 => any::<String>().prop_map(Value::String),
        1 => prop::collection::vec(part, 0..3).prop_map(Value::Array),
        1 => value(),
    ];
    let role = prop_oneof![
        3 => prop::sample::select(&["system", "user", "assistant", "developer"][..]),
        1 => prop::sample::select(WORDS),
    ];
    let keep = prop::bool::weighted(0.9);
    (role, content, keep).prop_map(|(role, content, keep)| {
        let mut m = Map::new();
        m.insert("role".into(), json!(role));
        if keep {
            m.insert("content".into(), content);
        }
        Value::Object(m)
    })
}

/// A prompt in any of its forms, token ids around the vocabulary's edge included.
fn prompt(vocab: i64) -> impl Strategy<Value = Value> {
    let id = prop_oneof![
        4 => (0..vocab).prop_map(|i| json!(i)),
        1 => (vocab - 2..vocab + 3).prop_map(|i| json!(i)),
        1 => number(),
    ];
    let ids = prop::collection::vec(id, 0..70).prop_map(Value::Array);
    prop_oneof![
        3 => any::<String>().prop_map(Value::String),
        1 => "[ -~]{0,400}".prop_map(Value::String),
        2 => ids.clone(),
        1 => prop::collection::vec(any::<String>().prop_map(Value::String), 0..4).prop_map(Value::Array),
        1 => prop::collection::vec(ids, 0..4).prop_map(Value::Array),
        1 => value(),
    ]
}

/// Request bodies: mostly objects over the real fields with values near their ranges, some
/// arbitrary JSON, some not JSON at all.
fn body(vocab: i64) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => object_body(vocab),
        1 => value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        1 => (object_body(vocab), any::<prop::sample::Index>()).prop_map(|(b, i)| b[..i.index(b.len() + 1)].to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

fn object_body(vocab: i64) -> impl Strategy<Value = Vec<u8>> {
    let fields = prop::collection::btree_map(key(), value(), 0..4);
    let messages = || prop::collection::vec(message(), 0..4);
    // A completion-shaped body, a chat-shaped one, or both at once.
    let input = prop_oneof![
        (prompt(vocab), Just(None)).prop_map(|(p, m)| (Some(p), m)),
        (Just(None), messages()).prop_map(|(p, m)| (p, Some(m))),
        (prompt(vocab), messages()).prop_map(|(p, m)| (Some(p), Some(m))),
    ];
    (
        fields,
        input,
        prop::option::of((-2i64..70).prop_map(|i| json!(i))),
        prop::option::of(prop::sample::select(&[0.0, 0.7, 1.0, 2.0, 3.0][..])),
    )
        .prop_map(|(fields, (prompt, messages), max, temp)| {
            let mut m: Map<String, Value> = fields.into_iter().collect();
            if let Some(p) = prompt {
                m.insert("prompt".into(), p);
            }
            if let Some(ms) = messages {
                m.insert("messages".into(), Value::Array(ms));
            }
            if let Some(x) = max {
                m.insert("max_tokens".into(), x);
            }
            if let Some(t) = temp {
                m.insert("temperature".into(), json!(t));
            }
            serde_json::to_vec(&Value::Object(m)).unwrap()
        })
}

struct Served {
    tok: TextTokenizer,
    plain: ModelInfo,
    template: ModelInfo,
}

fn served() -> &'static Served {
    static S: OnceLock<Served> = OnceLock::new();
    S.get_or_init(|| {
        let mut config = Config::load("tiny", &[]).unwrap();
        config.train.objective = ObjectiveKind::Card;
        let tok = data().tokenizer.clone();
        let info = |chat| ModelInfo {
            id: "tiny".into(),
            context: config.model.max_seq_len,
            vocab: tok.vocab_size(),
            config: config.clone(),
            decoders: ModelInfo::decoders_for(&config),
            chat,
            max_rows: 8,
        };
        // A template that refuses what real ones refuse (a role out of order).
        let template = ChatFormat::Template(ChatInfo {
            template: "{% for m in messages %}{% if loop.index0 > 0 and m.role == 'system' %}{{ raise_exception('system first') }}{% endif %}<{{ m.role }}>{{ m.content | trim }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}".into(),
            bos_token: None,
            eos_token: Some("<|endoftext|>".into()),
        });
        Served {
            plain: info(ChatFormat::Plain),
            template: info(template),
            tok,
        }
    })
}

/// What every accepted request promises the scheduler, and every refusal the client.
fn accepted_or_refused(
    r: Result<Parsed, ApiError>,
    info: &ModelInfo,
    seen: &Seen,
) -> Result<(), TestCaseError> {
    seen.count(r.is_ok());
    match r {
        Ok(p) => {
            let job = &p.job;
            prop_assert!(!job.prompts.is_empty());
            prop_assert!(
                job.prompts.len() <= info.max_rows,
                "{} rows",
                job.prompts.len()
            );
            prop_assert!(p.n >= 1 && job.prompts.len() % p.n == 0);
            prop_assert!(job.max_tokens >= 1);
            for ids in &job.prompts {
                prop_assert!(!ids.is_empty());
                prop_assert!(ids.iter().all(|&t| (t as usize) < info.vocab), "{ids:?}");
                prop_assert!(ids.len() + job.max_tokens <= info.context);
            }
            prop_assert!(job.stops.iter().all(|s| !s.is_empty() && s.len() <= 256));
            let s = &job.settings.sampling;
            prop_assert!((0.0..=2.0).contains(&s.temperature));
            prop_assert!(s.top_p > 0.0 && s.top_p <= 1.0);
        }
        Err(e) => {
            prop_assert!(e.status.is_client_error(), "{} {}", e.status, e.message);
            prop_assert!(!e.message.is_empty());
            let b = e.body();
            prop_assert!(b["error"]["message"].is_string());
        }
    }
    Ok(())
}

#[test]
fn any_request_body_is_a_valid_job_or_a_client_error() {
    let s = served();
    let (comp, chat, play) = (Seen::default(), Seen::default(), Seen::default());
    check(6000, body(s.tok.vocab_size() as i64), |b| {
        for info in [&s.plain, &s.template] {
            accepted_or_refused(api::completion(&b, &s.tok, info), info, &comp)?;
            accepted_or_refused(api::chat(&b, &s.tok, info), info, &chat)?;
            accepted_or_refused(api::playground(&b, &s.tok, info), info, &play)?;
        }
        Ok(())
    });
    comp.at_least("completions", 100, 1000);
    chat.at_least("chat", 20, 1000);
    play.at_least("playground", 50, 1000);
}

#[test]
fn token_id_prompts_are_taken_exactly_when_every_id_is_in_the_vocabulary() {
    let s = served();
    let vocab = s.tok.vocab_size() as i64;
    let ids = prop::collection::vec(-3..vocab + 3, 1..40);
    check(1000, ids, |ids| {
        let b = json!({"prompt": ids, "max_tokens": 4, "temperature": 0});
        let r = api::completion(b.to_string().as_bytes(), &s.tok, &s.plain);
        let valid = ids.iter().all(|&t| (0..vocab).contains(&t));
        match r {
            Ok(p) => {
                prop_assert!(valid);
                let want: Vec<u32> = ids.iter().map(|&t| t as u32).collect();
                prop_assert_eq!(&p.job.prompts, &vec![want]);
            }
            Err(e) => {
                prop_assert!(!valid, "{}", e.message);
                prop_assert_eq!(e.status.as_u16(), 422);
            }
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------
// The tokenizer: any text round-trips, any ids decode or fail cleanly.

#[test]
fn any_text_round_trips_through_the_tokenizer() {
    let tok = &data().tokenizer;
    let text = prop_oneof![
        any::<String>(),
        prop::collection::vec(any::<u8>(), 0..200)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        "(<\\|endoftext\\|>|<\\|mask\\|>|Alice| |\n|\t|é|\u{0}){0,20}",
    ];
    check(500, text, |s| {
        let ids = tok
            .encode(&s)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(ids.iter().all(|&t| (t as usize) < tok.vocab_size()));
        prop_assert_eq!(tok.decode(&ids).unwrap(), s);
        Ok(())
    });
}

#[test]
fn any_token_ids_decode_or_fail_without_panicking() {
    let tok = &data().tokenizer;
    let v = tok.vocab_size() as u32;
    let id = prop_oneof![8 => 0..v, 1 => any::<u32>()];
    check(500, prop::collection::vec(id, 0..60), |ids| {
        let whole = tok.decode(&ids);
        let in_vocab = ids.iter().all(|&t| t < v);
        if in_vocab {
            let whole = whole.map_err(|e| TestCaseError::fail(e.to_string()))?;
            // The incremental decoder agrees with a whole decode, one token at a time.
            let mut d = Detok::default();
            for n in 1..=ids.len() {
                d.update(tok, &ids[..n]);
            }
            let held = whole.trim_end_matches('\u{FFFD}');
            let got = d.update(tok, &ids).to_string();
            prop_assert!(whole.starts_with(&got) && got.len() >= held.len().min(got.len()));
        } else {
            let mut d = Detok::default();
            d.update(tok, &ids);
        }
        Ok(())
    });
}
