//! The server's lossless verifier: its draft sources (`[MASK]` slots and prompt lookup) on a
//! CARD checkpoint give AR's text, and the playground stream names the source of every
//! draft it committed or rejected.

use serde_json::{json, Value};

mod common;
use common::http::*;

#[test]
fn verified_decoding_with_lookup_streams_its_sources_and_gives_ar_text() {
    let s = Server::start(&[]);
    let m = get(&s.addr, "/v1/models").json();
    let defaults = &m["data"][0]["defaults"];
    assert_eq!(defaults["verify_block_size"], 2, "{m}");
    assert_eq!(defaults["verify_lookup"], 8, "{m}");
    let prompt = "a b c a b c a b c a b";
    // The prompt's request with a decoder's fields.
    let body = |decoder: &Value| {
        let mut body =
            json!({"prompt": prompt, "max_tokens": 24, "ignore_eos": true, "temperature": 0});
        body.as_object_mut()
            .unwrap()
            .extend(decoder.as_object().unwrap().clone());
        body
    };
    let steps = |decoder: &Value| {
        let events = Events::open(&s.addr, "/v1/playground/stream", &body(decoder)).all();
        let steps: Vec<Value> = events.into_iter().filter(|e| e["type"] == "step").collect();
        assert!(!steps.is_empty());
        steps
    };
    let text = |decoder: Value| {
        let r = post(&s.addr, "/v1/completions", &body(&decoder));
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["choices"][0]["text"].as_str().unwrap().to_string()
    };
    let ar = text(json!({"decoder": "ar"}));
    for (k, l) in [(0, 8), (1, 8), (2, 0)] {
        let v = json!({"decoder": "verify", "block_size": k, "lookup": l});
        assert_eq!(text(v.clone()), ar, "K={k} L={l}");
        for step in steps(&v) {
            let committed = step["committed"].as_array().unwrap();
            let rejected = step["rejected"].as_array().unwrap();
            // Every committed slot but the last is a draft that stood; the last is AR's own
            // token unless the pass ended on the length limit.
            let (_, drafts) = committed.split_last().unwrap();
            for c in drafts.iter().chain(rejected) {
                let src = c["source"].as_str().unwrap_or("none");
                let allowed: &[&str] = match (k, l) {
                    (0, _) => &["lookup"],
                    (_, 0) => &["mask"],
                    _ => &["mask", "lookup"],
                };
                assert!(allowed.contains(&src), "K={k} L={l}: {c}");
            }
            // A chain has no branches: the field is absent.
            for c in committed.iter().chain(rejected) {
                assert!(c.get("branch").is_none(), "K={k} L={l}: {c}");
            }
        }
    }
    // A draft tree gives AR's text too; its size is bounded. A branch mark, where the budget
    // sent alternatives and one stood, sits only on a committed draft, named by its source.
    let tree = json!({"decoder": "verify", "block_size": 2, "lookup": 8, "tree": 4});
    assert_eq!(text(tree.clone()), ar, "tree");
    for step in steps(&tree) {
        for c in step["committed"].as_array().unwrap() {
            if let Some(b) = c.get("branch") {
                assert_eq!(b, &json!(true), "{c}");
                assert!(
                    c["source"].is_string(),
                    "a branch mark on AR's own token: {c}"
                );
            }
        }
        for c in step["rejected"].as_array().unwrap() {
            assert!(
                c.get("branch").is_none(),
                "rejected drafts carry no mark: {c}"
            );
        }
    }
    let r = post(
        &s.addr,
        "/v1/completions",
        &json!({"prompt": "x", "decoder": "verify", "tree": 99}),
    );
    assert_api_error(&r, 422, "invalid_value", "tree 99");
    // K = 0 on a CARD checkpoint is the verifier's lookup alone; CARD itself needs K ≥ 1.
    let r = post(
        &s.addr,
        "/v1/completions",
        &json!({"prompt": "x", "decoder": "card", "block_size": 0}),
    );
    assert_eq!(r.status, 422, "{}", r.body);
    s.terminate();
}
