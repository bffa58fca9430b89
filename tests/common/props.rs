//! The property tests' shared pieces: a deterministic proptest runner and the corpus the
//! tokenizer and prepared-data properties draw on.

use card::data::{embedded_documents, prepare, Prepared};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunConfig, RngAlgorithm, TestRng, TestRunner};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// A deterministic runner of `cases` cases.
pub fn runner(cases: u32) -> TestRunner {
    let seed: u64 = std::env::var("CARD_PROPTEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let scale: u32 = std::env::var("CARD_PROPTEST_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let cfg = RunConfig {
        cases: cases * scale,
        failure_persistence: None,
        ..RunConfig::default()
    };
    TestRunner::new_with_rng(cfg, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes))
}

pub fn check<S: Strategy>(cases: u32, s: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    if let Err(e) = runner(cases).run(&s, test) {
        panic!("{e}");
    }
}

/// The embedded corpus, prepared with a 512-token vocabulary.
pub fn data() -> &'static Prepared {
    static D: OnceLock<Prepared> = OnceLock::new();
    D.get_or_init(|| prepare(embedded_documents(), None, 512, 0.1, 0).unwrap())
}

pub const WORDS: &[&str] = &[
    "",
    "tiny",
    "ar",
    "card",
    "verify",
    "mdlm",
    "user",
    "assistant",
    "system",
    "developer",
    "text",
    "image_url",
    "Alice",
    "\nUser:",
    "\u{FFFD}",
    "<|mask|>",
    "<|endoftext|>",
    "é",
];

pub fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        (-3i64..80).prop_map(|i| json!(i)),
        any::<i64>().prop_map(|i| json!(i)),
        any::<u64>().prop_map(|i| json!(i)),
        prop::sample::select(&[0.0, -0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 1e-300, 1e300, -1e300][..])
            .prop_map(|f| json!(f)),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
    ]
}

pub fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        3 => number(),
        2 => prop::sample::select(WORDS).prop_map(|s| json!(s)),
        1 => any::<String>().prop_map(Value::String),
    ]
}

/// How many cases took each way, so that a property that never reaches its interesting
/// branch fails instead of passing vacuously.
#[derive(Default)]
pub struct Seen {
    ok: AtomicUsize,
    err: AtomicUsize,
}

impl Seen {
    pub fn count(&self, ok: bool) {
        let c = if ok { &self.ok } else { &self.err };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn at_least(&self, what: &str, ok: usize, err: usize) {
        let (o, e) = (
            self.ok.load(Ordering::Relaxed),
            self.err.load(Ordering::Relaxed),
        );
        eprintln!("{what}: {o} accepted, {e} refused");
        assert!(
            o >= ok && e >= err,
            "{what}: {o} accepted (want ≥ {ok}), {e} refused (want ≥ {err})"
        );
    }
}
