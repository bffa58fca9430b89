//! Property tests: whatever a client, a file or a user throws at the parsers, the answer is a
//! value or an error, never a panic. Each property runs a fixed number of cases from a
//! fixed seed (set `CARD_PROPTEST_SEED` to explore others, `CARD_PROPTEST_SCALE` to run
//! that many times the cases); a failure prints the shrunk input.

mod common;

use candle_core::Device;
use card::checkpoint;
use card::config::{Config, ObjectiveKind};
use card::data::chat::{ChatFormat, ChatInfo};
use card::data::{embedded_documents, prepare, Prepared, TextTokenizer};
use card::decode::text::Detok;
use card::serve::api::{self, ModelInfo, Parsed};
use card::serve::error::ApiError;
use card::serve::request;
use proptest::prelude::*;
use proptest::test_runner::{Config as RunConfig, RngAlgorithm, TestRng, TestRunner};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// A deterministic runner of `cases` cases.
fn runner(cases: u32) -> TestRunner {
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

fn check<S: Strategy>(cases: u32, s: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    if let Err(e) = runner(cases).run(&s, test) {
        panic!("{e}");
    }
}

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

const WORDS: &[&str] = &[
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

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select([request::COMMON, MORE_KEYS].concat()).prop_map(str::to_string),
        1 => any::<String>(),
    ]
}

fn number() -> impl Strategy<Value = Value> {
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

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        3 => number(),
        2 => prop::sample::select(WORDS).prop_map(|s| json!(s)),
        1 => any::<String>().prop_map(Value::String),
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

/// How many cases took each way, so that a property that never reaches its interesting
/// branch fails instead of passing vacuously.
#[derive(Default)]
struct Seen {
    ok: AtomicUsize,
    err: AtomicUsize,
}

impl Seen {
    fn count(&self, ok: bool) {
        let c = if ok { &self.ok } else { &self.err };
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn at_least(&self, what: &str, ok: usize, err: usize) {
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

fn data() -> &'static Prepared {
    static D: OnceLock<Prepared> = OnceLock::new();
    D.get_or_init(|| prepare(embedded_documents(), None, 512, 0.1, 0).unwrap())
}

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

// ---------------------------------------------------------------------------------------
// Files: a damaged checkpoint or prepared corpus is an error, never a panic, and damage the
// checksums can see is never loaded.

#[derive(Debug, Clone)]
enum Damage {
    Truncate(prop::sample::Index),
    Flip(prop::sample::Index, u8),
    Overwrite(prop::sample::Index, Vec<u8>),
    Append(Vec<u8>),
    Replace(Vec<u8>),
    Delete,
    /// A field of a JSON or TOML file set to another value.
    Field(prop::sample::Index, Value),
}

fn damage() -> impl Strategy<Value = Damage> {
    let bytes = prop::collection::vec(any::<u8>(), 1..16);
    prop_oneof![
        1 => any::<prop::sample::Index>().prop_map(Damage::Truncate),
        1 => (any::<prop::sample::Index>(), 0u8..8).prop_map(|(i, b)| Damage::Flip(i, b)),
        1 => (any::<prop::sample::Index>(), bytes.clone()).prop_map(|(i, b)| Damage::Overwrite(i, b)),
        1 => bytes.clone().prop_map(Damage::Append),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Damage::Replace),
        1 => Just(Damage::Delete),
        3 => (any::<prop::sample::Index>(), leaf()).prop_map(|(i, v)| Damage::Field(i, v)),
    ]
}

/// The leaves of a JSON value, as mutable references.
fn leaves(v: &mut Value) -> Vec<&mut Value> {
    match v {
        Value::Array(a) => a.iter_mut().flat_map(leaves).collect(),
        Value::Object(m) => m.values_mut().flat_map(leaves).collect(),
        _ => vec![v],
    }
}

fn toml_leaves(v: &mut toml::Value) -> Vec<&mut toml::Value> {
    match v {
        toml::Value::Array(a) => a.iter_mut().flat_map(toml_leaves).collect(),
        toml::Value::Table(t) => t.iter_mut().flat_map(|(_, v)| toml_leaves(v)).collect(),
        _ => vec![v],
    }
}

fn to_toml(v: &Value) -> Option<toml::Value> {
    Some(match v {
        Value::Bool(b) => toml::Value::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(n.as_f64()?),
        },
        Value::String(s) => toml::Value::String(s.clone()),
        _ => return None,
    })
}

/// Apply `d` to `path`; false when it leaves the file as it was.
fn apply(path: &Path, d: &Damage) -> bool {
    let before = std::fs::read(path).unwrap();
    let at = |i: &prop::sample::Index| i.index(before.len().max(1));
    let after = match d {
        Damage::Delete => {
            std::fs::remove_file(path).unwrap();
            return true;
        }
        Damage::Truncate(i) => before[..at(i)].to_vec(),
        Damage::Flip(i, bit) if !before.is_empty() => {
            let mut b = before.clone();
            b[at(i)] ^= 1 << bit;
            b
        }
        Damage::Overwrite(i, bytes) => {
            let mut b = before.clone();
            let start = at(i).min(b.len());
            for (k, x) in bytes.iter().enumerate() {
                match b.get_mut(start + k) {
                    Some(y) => *y = *x,
                    None => b.push(*x),
                }
            }
            b
        }
        Damage::Append(bytes) => [before.as_slice(), bytes].concat(),
        Damage::Replace(bytes) => bytes.clone(),
        Damage::Field(i, v) => field(path, &before, i, v).unwrap_or_else(|| before.clone()),
        Damage::Flip(..) => before.clone(),
    };
    std::fs::write(path, &after).unwrap();
    after != before
}

fn field(path: &Path, before: &[u8], i: &prop::sample::Index, v: &Value) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(before).ok()?;
    if path.extension()? == "toml" {
        let mut t: toml::Value = toml::from_str(text).ok()?;
        let mut ls = toml_leaves(&mut t);
        let n = ls.len();
        **ls.get_mut(i.index(n.max(1)))? = to_toml(v)?;
        return Some(toml::to_string(&t).ok()?.into_bytes());
    }
    let mut j: Value = serde_json::from_str(text).ok()?;
    let mut ls = leaves(&mut j);
    let n = ls.len();
    **ls.get_mut(i.index(n.max(1)))? = v.clone();
    serde_json::to_vec(&j).ok()
}

fn sha256(path: &Path) -> String {
    let d = Sha256::digest(std::fs::read(path).unwrap());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Which file of `dir` to damage.
fn pick(dir: &Path, i: &prop::sample::Index) -> PathBuf {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files[i.index(files.len())].clone()
}

/// A copy of `good` under a temporary directory with one file (picked by `file`) damaged.
struct Damaged {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    target: PathBuf,
    name: String,
    changed: bool,
}

fn damaged_copy(good: &Path, file: &prop::sample::Index, d: &Damage) -> Damaged {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(good.file_name().unwrap());
    copy_dir(good, &dir);
    let target = pick(&dir, file);
    let name = target.file_name().unwrap().to_str().unwrap().to_string();
    let changed = apply(&target, d);
    Damaged {
        _tmp: tmp,
        dir,
        target,
        name,
        changed,
    }
}

impl Damaged {
    /// Record the damaged file's checksum in the manifest, so the parsers behind it are
    /// reached; false when there is nothing to reseal.
    fn reseal_checkpoint(&self) -> bool {
        if self.name == "manifest.json" || !self.target.exists() {
            return false;
        }
        let m = self.dir.join("manifest.json");
        let mut manifest: Value = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
        manifest[&self.name] = json!(sha256(&self.target));
        std::fs::write(&m, serde_json::to_vec(&manifest).unwrap()).unwrap();
        true
    }
}

/// A `tiny` CARD checkpoint (two training steps), saved once.
fn trained_checkpoint() -> &'static Path {
    static C: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, p) = C.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        common::train_tiny(dir.path(), "card", 2, "run");
        let ckpt = checkpoint::resolve(&dir.path().join("run")).unwrap();
        (dir, ckpt)
    });
    p
}

#[test]
fn a_damaged_checkpoint_is_refused_or_decodes_never_panics() {
    let good = trained_checkpoint();
    let strategy = (any::<prop::sample::Index>(), damage(), any::<bool>());
    let (sealed_seen, plain_seen) = (Seen::default(), Seen::default());
    check(120, strategy, |(file, d, reseal)| {
        let c = damaged_copy(good, &file, &d);
        let sealed = reseal && c.reseal_checkpoint();
        let (name, changed) = (&c.name, c.changed);
        let r = checkpoint::load(&c.dir, &Device::Cpu).and_then(|c| c.open(false));
        if changed {
            if sealed { &sealed_seen } else { &plain_seen }.count(r.is_ok());
        }
        match r {
            Ok(o) => {
                prop_assert!(
                    !changed || sealed,
                    "unsealed damage to {name} loaded: {d:?}"
                );
                // What loads must run: logits come out or the forward fails cleanly.
                let ids: Vec<u32> = (0..4u32).collect();
                let t = candle_core::Tensor::from_slice(&ids, (1, 4), &Device::Cpu).unwrap();
                let _ = o.model.forward(&t, card::model::Attention::Causal, None);
            }
            Err(e) => {
                let msg = format!("{e:#}");
                prop_assert!(!msg.is_empty());
            }
        }
        Ok(())
    });
    // Resealed damage reaches the parsers: some of it still loads (a changed value that is
    // valid), most does not.
    sealed_seen.at_least("resealed damaged checkpoints", 1, 8);
    plain_seen.at_least("damaged checkpoints", 0, 15);
}

fn prepared_dir() -> &'static Path {
    static P: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, p) = P.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("data");
        data().save(&p).unwrap();
        (dir, p)
    });
    p
}

#[test]
fn a_damaged_prepared_corpus_is_refused_or_valid_never_panics() {
    let good = prepared_dir();
    let strategy = (any::<prop::sample::Index>(), damage(), any::<bool>());
    let (sealed_seen, plain_seen) = (Seen::default(), Seen::default());
    check(200, strategy, |(file, d, reseal)| {
        let c = damaged_copy(good, &file, &d);
        let (dir, target, name, changed) = (&c.dir, &c.target, c.name.as_str(), c.changed);
        let mut sealed = false;
        if reseal && target.exists() && name != "meta.json" {
            let m = dir.join("meta.json");
            let mut meta: Value = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
            let len = std::fs::metadata(target).unwrap().len();
            let width = if meta["token_dtype"] == "u16" { 2 } else { 4 };
            let split = name.trim_end_matches(".bin");
            if name.ends_with(".bin") && len.is_multiple_of(width) {
                meta[format!("{split}_sha256")] = json!(sha256(target));
                meta[format!("{split}_tokens")] = json!(len / width);
                sealed = true;
            } else if let Ok(t) = TextTokenizer::from_file(target) {
                meta["tokenizer_hash"] = json!(t.hash());
                meta["vocab_size"] = json!(t.vocab_size());
                sealed = true;
            }
            std::fs::write(&m, serde_json::to_vec(&meta).unwrap()).unwrap();
        }
        let r = Prepared::load(dir);
        if changed {
            if sealed { &sealed_seen } else { &plain_seen }.count(r.is_ok());
        }
        match r {
            Ok(p) => {
                // meta.json holds fields nothing checks; a tokenizer is checked by the hash of
                // what it parses to, so damage that parses to the same tokenizer is harmless.
                let unchecked = name == "meta.json" || name == "tokenizer.json";
                prop_assert!(
                    !changed || sealed || unchecked,
                    "unsealed damage to {name} loaded: {d:?}"
                );
                let v = p.tokenizer.vocab_size();
                prop_assert!(p.train.iter().chain(&p.val).all(|&t| (t as usize) < v));
            }
            Err(e) => {
                let msg = format!("{e:#}");
                prop_assert!(!msg.is_empty());
            }
        }
        Ok(())
    });
    sealed_seen.at_least("resealed damaged corpora", 1, 4);
    plain_seen.at_least("damaged corpora", 0, 15);
}

#[test]
fn the_binary_turns_a_damaged_checkpoint_into_one_error_line() {
    // The same damage through `card generate`: one `error:` line and a non-zero exit, or a
    // generation, never a panic or backtrace (the library property above covers more cases;
    // this one checks what a user sees).
    let good = trained_checkpoint();
    let strategy = (any::<prop::sample::Index>(), damage(), any::<bool>());
    let seen = Seen::default();
    check(16, strategy, |(file, d, reseal)| {
        let c = damaged_copy(good, &file, &d);
        if reseal {
            c.reseal_checkpoint();
        }
        let name = &c.name;
        let args = [
            "generate",
            c.dir.to_str().unwrap(),
            "--prompt",
            "Alice",
            "--max-new-tokens",
            "4",
            "--threads",
            "1",
        ];
        let out = common::card(&args, c.dir.parent().unwrap());
        let stderr = String::from_utf8_lossy(&out.stderr);
        seen.count(out.status.success());
        prop_assert!(
            !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
            "{d:?} on {name}: {stderr}"
        );
        prop_assert_ne!(out.status.code(), Some(101), "{}", stderr);
        if !out.status.success() {
            let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
            prop_assert_eq!(lines.len(), 1, "{:?} on {}: {}", d, name, stderr);
            prop_assert!(lines[0].starts_with("error:"), "{}", stderr);
        }
        Ok(())
    });
    seen.at_least("damaged checkpoints through card generate", 0, 8);
}
