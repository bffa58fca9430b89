//! `card serve` end to end over loopback: a real `card serve` process on a free port with a
//! `tiny` checkpoint trained here, spoken to with a minimal HTTP/1.1 client (so the tests see
//! exactly what goes over the wire, including SSE framing and dropped connections).

use serde_json::{json, Value};
use std::time::{Duration, Instant};

mod common;
use common::http::*;

#[test]
fn completions_chat_models_health_and_streaming() {
    let s = Server::start(&[]);
    let h = s.health();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["context"], 64);
    let m = get(&s.addr, "/v1/models").json();
    assert_eq!(m["object"], "list");
    assert_eq!(m["data"][0]["id"], "tiny");
    assert_eq!(m["data"][0]["decoders"], json!(["ar", "card", "verify"]));
    let page = get(&s.addr, "/");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("card playground") && !page.body.contains("http://"));

    let mut texts = std::collections::HashMap::new();
    for decoder in ["ar", "card", "verify"] {
        let body = json!({"model": "tiny", "prompt": "Alice", "max_tokens": 8,
            "temperature": 0, "decoder": decoder});
        let r = post(&s.addr, "/v1/completions", &body);
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        assert_eq!(v["object"], "text_completion");
        let choice = &v["choices"][0];
        assert!(["stop", "length"].contains(&choice["finish_reason"].as_str().unwrap()));
        let u = &v["usage"];
        let n = u["completion_tokens"].as_u64().unwrap();
        // All 8 tokens unless the model ended its text first.
        match choice["finish_reason"].as_str().unwrap() {
            "length" => assert_eq!(n, 8, "{v}"),
            _ => assert!((1..8).contains(&n), "{v}"),
        }
        assert_eq!(u["total_tokens"], u["prompt_tokens"].as_u64().unwrap() + n);
        assert!(u["forward_passes"].as_u64().unwrap() >= 1);
        assert!(u["tokens_per_forward"].as_f64().unwrap() > 0.0);
        assert_eq!(u["decoder"], decoder);
        let text = choice["text"].as_str().unwrap().to_string();
        texts.insert(decoder, text.clone());

        // Streaming gives the same greedy text, in pieces, then a finish chunk and usage.
        let mut stream_body = body.clone();
        stream_body["stream"] = json!(true);
        stream_body["stream_options"] = json!({"include_usage": true});
        let mut ev = Events::open(&s.addr, "/v1/completions", &stream_body);
        assert_eq!(ev.status, 200);
        let events = ev.all();
        let streamed: String = events
            .iter()
            .filter_map(|e| e["choices"].get(0).and_then(|c| c["text"].as_str()))
            .collect();
        assert_eq!(streamed, text, "{decoder}: {events:?}");
        let last_choice = events
            .iter()
            .rev()
            .find(|e| e["choices"].get(0).is_some())
            .unwrap();
        assert_eq!(
            last_choice["choices"][0]["finish_reason"],
            choice["finish_reason"]
        );
        assert_eq!(events.last().unwrap()["usage"]["completion_tokens"], n);

        // A stop string taken from the text cuts it there.
        let chars: Vec<char> = text.chars().collect();
        if let Some(i) =
            (2..chars.len()).find(|&i| chars[i] != '\u{FFFD}' && !chars[..i].contains(&chars[i]))
        {
            let stop: String = chars[i..i + 1].iter().collect();
            let mut b = body.clone();
            b["stop"] = json!([stop]);
            let v = post(&s.addr, "/v1/completions", &b).json();
            let cut = &text[..text.find(&stop).unwrap()];
            assert_eq!(v["choices"][0]["text"], cut, "stop {stop:?} in {text:?}");
            assert_eq!(v["choices"][0]["finish_reason"], "stop");
        }
    }
    assert_eq!(
        texts["verify"], texts["ar"],
        "the verifier serves AR's greedy text"
    );

    // Several prompts × n choices, and a token-id prompt.
    let v = post(
        &s.addr,
        "/v1/completions",
        &json!({"prompt": ["Alice", "The"], "n": 2, "max_tokens": 4}),
    )
    .json();
    let idx: Vec<u64> = v["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["index"].as_u64().unwrap())
        .collect();
    assert_eq!(idx, [0, 1, 2, 3]);
    let v = post(
        &s.addr,
        "/v1/completions",
        &json!({"prompt": [5, 6, 7], "max_tokens": 3}),
    )
    .json();
    assert_eq!(v["usage"]["prompt_tokens"], 3);

    // Chat, whole and streamed.
    let chat = json!({"model": "tiny", "messages": [{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"}], "max_tokens": 6, "temperature": 0});
    let v = post(&s.addr, "/v1/chat/completions", &chat).json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let content = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let mut sc = chat.clone();
    sc["stream"] = json!(true);
    let events = Events::open(&s.addr, "/v1/chat/completions", &sc).all();
    assert_eq!(events[0]["object"], "chat.completion.chunk");
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, content);
    assert!(events.last().unwrap()["choices"][0]["finish_reason"].is_string());

    // The playground stream forwards the decoder trace.
    let events = Events::open(
        &s.addr,
        "/v1/playground/stream",
        &json!({"prompt": "Alice", "max_tokens": 8, "decoder": "card", "threshold": 0.0}),
    )
    .all();
    let steps: Vec<&Value> = events.iter().filter(|e| e["type"] == "step").collect();
    assert!(!steps.is_empty());
    assert!(
        steps[0]["slots"].as_array().unwrap().len() > 1,
        "CARD decodes a window"
    );
    assert!(steps
        .iter()
        .all(|s| s["committed"].as_array().is_some_and(|c| !c.is_empty())));
    let done = events.last().unwrap();
    assert_eq!(done["type"], "done");
    // τ = 0 commits a whole block per pass.
    assert!(
        done["usage"]["tokens_per_forward"].as_f64().unwrap() > 1.0,
        "{done}"
    );
}

#[test]
fn bad_input_gets_openai_style_errors() {
    let s = Server::start(&["--max-body-bytes", "4096"]);
    let c = "/v1/completions";
    let chat = "/v1/chat/completions";
    let long_prompt = "Alice was beginning to get very tired. ".repeat(20);
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            c,
            json!({"prompt": "x", "max_tokens": -3}),
            422,
            "invalid_value",
        ),
        (
            c,
            json!({"prompt": "x", "max_tokens": 0}),
            422,
            "invalid_value",
        ),
        (
            c,
            json!({"prompt": "x", "max_tokens": 64}),
            422,
            "invalid_value",
        ),
        (
            c,
            json!({"prompt": "x", "max_tokens": 1e30}),
            422,
            "invalid_value",
        ),
        (
            c,
            json!({"prompt": "x", "max_tokens": "8"}),
            400,
            "invalid_type",
        ),
        (
            c,
            json!({"prompt": "x", "max_tokens": 2.5}),
            400,
            "invalid_type",
        ),
        (
            c,
            json!({"prompt": long_prompt, "max_tokens": 8}),
            422,
            "context_length_exceeded",
        ),
        (
            c,
            json!({"prompt": "x", "temperature": -1}),
            422,
            "invalid_value",
        ),
        (
            c,
            json!({"prompt": "x", "temperature": 1e9}),
            422,
            "invalid_value",
        ),
        (
            c,
            json!({"prompt": "x", "temperature": "hot"}),
            400,
            "invalid_type",
        ),
        (c, json!({"prompt": "x", "top_p": 0}), 422, "invalid_value"),
        (c, json!({"prompt": "x", "n": 0}), 422, "invalid_value"),
        (c, json!({"prompt": "x", "n": 1000}), 422, "invalid_value"),
        (
            c,
            json!({"prompt": "x", "stream": "yes"}),
            400,
            "invalid_type",
        ),
        (c, json!({"prompt": "x", "seed": 1.5}), 400, "invalid_type"),
        (
            c,
            json!({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}),
            422,
            "invalid_value",
        ),
        (c, json!({"prompt": "x", "stop": [1]}), 400, "invalid_type"),
        (
            c,
            json!({"prompt": "x", "decoder": "zz"}),
            422,
            "invalid_value",
        ),
        (c, json!({"prompt": "x", "decoder": 5}), 400, "invalid_type"),
        (
            c,
            json!({"prompt": "x", "block_size": 0}),
            422,
            "invalid_value",
        ),
        (
            c,
            json!({"prompt": "x", "step_limit": -1}),
            422,
            "invalid_value",
        ),
        (
            c,
            json!({"prompt": "x", "threshold": 2}),
            422,
            "invalid_value",
        ),
        (
            c,
            json!({"prompt": "x", "block_sise": 4}),
            422,
            "unknown_parameter",
        ),
        (
            c,
            json!({"prompt": "x", "logprobs": 5}),
            422,
            "invalid_value",
        ),
        (
            c,
            json!({"prompt": "x", "model": "gpt-4"}),
            404,
            "model_not_found",
        ),
        (c, json!({"prompt": []}), 422, "invalid_value"),
        (c, json!({"prompt": [99999]}), 422, "invalid_value"),
        (c, json!({"prompt": {"text": "x"}}), 400, "invalid_type"),
        (
            chat,
            json!({"max_tokens": 4}),
            400,
            "missing_required_parameter",
        ),
        (chat, json!({"messages": []}), 422, "invalid_value"),
        (chat, json!({"messages": "hi"}), 400, "invalid_type"),
        (
            chat,
            json!({"messages": [{"role": "robot", "content": "x"}]}),
            422,
            "invalid_value",
        ),
        (
            chat,
            json!({"messages": [{"role": "user", "content": 3}]}),
            400,
            "invalid_type",
        ),
        (
            "/v1/playground/stream",
            json!({"prompt": ["a", "b"]}),
            422,
            "invalid_value",
        ),
    ];
    for (path, body, status, code) in &cases {
        let r = post(&s.addr, path, body);
        assert_api_error(&r, *status, code, &format!("{path} {body}"));
    }
    let raw: &[(&[u8], u16, &str)] = &[
        (b"{\"prompt\": ", 400, "invalid_json"),
        (b"", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_json"),
        (b"\xff\xfe", 400, "invalid_json"),
    ];
    for (body, status, code) in raw {
        let r = request(&s.addr, "POST", c, body);
        assert_api_error(&r, *status, code, &String::from_utf8_lossy(body));
    }
    let big = json!({"prompt": "a".repeat(5000)});
    assert_api_error(&post(&s.addr, c, &big), 413, "body_too_large", "big body");
    assert_api_error(&get(&s.addr, "/v1/nope"), 404, "not_found", "unknown route");
    assert_api_error(
        &get(&s.addr, c),
        405,
        "method_not_allowed",
        "GET completions",
    );
    // Errors in a stream request come back before the stream starts, as JSON.
    let ev = Events::open(
        &s.addr,
        c,
        &json!({"prompt": "x", "stream": true, "top_p": 7}),
    );
    assert_eq!(ev.status, 422);
    // Still serving after all that.
    assert_eq!(
        post(&s.addr, c, &json!({"prompt": "x", "max_tokens": 2})).status,
        200
    );
}

#[test]
fn a_seeded_sampled_request_is_reproducible() {
    let s = Server::start(&[]);
    let text = |seed: u64| {
        let body = json!({"prompt": "Alice", "max_tokens": 16, "temperature": 1.0,
            "seed": seed, "ignore_eos": true, "decoder": "card"});
        let r = post(&s.addr, "/v1/completions", &body);
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["choices"][0]["text"].as_str().unwrap().to_string()
    };
    let first: Vec<String> = (1..=4).map(text).collect();
    let again: Vec<String> = (1..=4).map(text).collect();
    assert_eq!(first, again, "the same seed gave another text");
    let distinct: std::collections::HashSet<&String> = first.iter().collect();
    assert!(distinct.len() > 1, "four seeds gave one text: {first:?}");
}

#[test]
fn queue_overflow_gets_429_and_frees_up() {
    let s = Server::start(&["--queue", "2", "--workers", "1", "--step-delay-ms", "40"]);
    let slow = json!({"prompt": "Alice was", "temperature": 0, "max_tokens": 50, "decoder": "ar", "stream": true, "ignore_eos": true});
    let mut a = Events::open(&s.addr, "/v1/completions", &slow);
    let b = Events::open(&s.addr, "/v1/completions", &slow);
    // `a` decodes (50 tokens with EOS ignored: 2 s) while `b` waits for the one worker;
    // both hold a queue place.
    assert!(a.next().is_some());
    wait_until("both requests admitted", Duration::from_secs(5), || {
        s.health()["queue"]["admitted"] == 2
    });
    let start = Instant::now();
    let r = post(
        &s.addr,
        "/v1/completions",
        &json!({"prompt": "x", "max_tokens": 2}),
    );
    let waited = start.elapsed();
    eprintln!("429 answered in {waited:?}");
    assert!(
        waited < Duration::from_secs(5),
        "429 must not wait ({waited:?})"
    );
    assert_api_error(&r, 429, "queue_full", "third request");
    assert_eq!(r.header("retry-after"), Some("1"));
    drop((a, b));
    wait_until("the queue to drain", Duration::from_secs(10), || {
        s.health()["queue"]["admitted"] == 0
    });
    assert_eq!(
        post(
            &s.addr,
            "/v1/completions",
            &json!({"prompt": "x", "max_tokens": 2})
        )
        .status,
        200
    );
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn load_test_concurrent_streaming_clients() {
    const CLIENTS: usize = 16;
    const PER_CLIENT: usize = 4;
    const LIMIT: Duration = Duration::from_secs(120);
    const PROMPTS: [&str; 4] = ["Alice was", "The Queen said", "It was", "Down the"];
    // A 1 ms pause per forward pass keeps each request alive long enough (≥ 24 ms) for a
    // mid-stream disconnect to reach the server while its rows still decode.
    let s = Server::start(&["--step-delay-ms", "1"]);
    let body = |prompt: &str, decoder: &str, stream: bool| {
        json!({"prompt": prompt, "max_tokens": 24, "temperature": 0, "decoder": decoder,
            "stream": stream, "stream_options": if stream { json!({"include_usage": true}) } else { Value::Null }})
    };
    // Each (prompt, decoder) decoded alone first: under load every full response must carry
    // exactly its own request's text, so a row handed to the wrong client shows up here.
    let mut expected = std::collections::HashMap::new();
    for p in PROMPTS {
        for d in ["ar", "card"] {
            let mut b = body(p, d, false);
            b.as_object_mut().unwrap().remove("stream_options");
            let r = post(&s.addr, "/v1/completions", &b);
            assert_eq!(r.status, 200, "{}", r.body);
            let text = r.json()["choices"][0]["text"].as_str().unwrap().to_string();
            expected.insert((p, d), text);
        }
    }
    let alone = s.health()["completed"].as_u64().unwrap();
    let distinct: std::collections::HashSet<_> = expected.values().collect();
    assert!(
        distinct.len() > 2,
        "the prompts give too few distinct texts: {expected:?}"
    );

    // Seeded choice of which requests hang up, and after how many events (1–3).
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let plan: Vec<Vec<Option<usize>>> = (0..CLIENTS)
        .map(|c| {
            (0..PER_CLIENT)
                .map(|i| (next() % 4 == 0 && (c + i) % 4 != 3).then(|| 1 + (next() % 3) as usize))
                .collect()
        })
        .collect();
    let dropped = plan.iter().flatten().filter(|d| d.is_some()).count();
    assert!(dropped >= 4, "the seed plans only {dropped} disconnects");

    let start = Instant::now();
    let results: Vec<(f64, f64, u64)> = std::thread::scope(|scope| {
        let handles: Vec<_> = plan
            .iter()
            .enumerate()
            .map(|(c, plan)| {
                let (addr, expected, body) = (s.addr.clone(), &expected, &body);
                scope.spawn(move || {
                    let mut done = Vec::new();
                    for (i, hang_up) in plan.iter().enumerate() {
                        let decoder = if (c + i) % 2 == 0 { "card" } else { "ar" };
                        let prompt = PROMPTS[(c * PER_CLIENT + i) % PROMPTS.len()];
                        let t0 = Instant::now();
                        if (c + i) % 4 == 3 {
                            // One request in four waits for the whole answer instead.
                            let mut b = body(prompt, decoder, false);
                            b.as_object_mut().unwrap().remove("stream_options");
                            let v = post(&addr, "/v1/completions", &b).json();
                            assert_eq!(
                                v["choices"][0]["text"], expected[&(prompt, decoder)],
                                "client {c} request {i} ({decoder}, {prompt:?}) got another row's text"
                            );
                            let tokens = v["usage"]["completion_tokens"].as_u64().unwrap();
                            let t = t0.elapsed().as_secs_f64();
                            done.push((t, t, tokens));
                            continue;
                        }
                        let mut ev = Events::open(&addr, "/v1/completions", &body(prompt, decoder, true));
                        assert_eq!(ev.status, 200);
                        if let Some(k) = hang_up {
                            for _ in 0..*k {
                                ev.next();
                            }
                            continue; // dropping `ev` closes the connection mid-stream
                        }
                        let mut first = None;
                        let mut events = Vec::new();
                        while let Some(d) = ev.next() {
                            first.get_or_insert(t0.elapsed().as_secs_f64());
                            if d == "[DONE]" {
                                break;
                            }
                            events.push(serde_json::from_str::<Value>(&d).unwrap());
                        }
                        let text: String = events
                            .iter()
                            .filter_map(|e| e["choices"].get(0).and_then(|c| c["text"].as_str()))
                            .collect();
                        assert_eq!(
                            text, expected[&(prompt, decoder)],
                            "client {c} request {i} ({decoder}, {prompt:?}) got another row's text"
                        );
                        let u = &events.last().expect("events")["usage"];
                        let tokens = u["completion_tokens"].as_u64().expect("usage at the end");
                        done.push((t0.elapsed().as_secs_f64(), first.unwrap_or(0.0), tokens));
                    }
                    done
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let wall = start.elapsed();
    assert!(wall < LIMIT, "load test took {wall:?}");
    assert_eq!(
        results.len(),
        CLIENTS * PER_CLIENT - dropped,
        "lost responses"
    );
    // A job's queue place is freed after it is counted as completed or cancelled (and
    // `active_rows` falls before that), so "nothing admitted" is the moment all are counted.
    wait_until(
        "every request to be counted",
        Duration::from_secs(10),
        || {
            let h = s.health();
            h["active_rows"] == 0 && h["queue"]["admitted"] == 0
        },
    );
    let mut lat: Vec<f64> = results.iter().map(|r| r.0).collect();
    let mut ttft: Vec<f64> = results.iter().map(|r| r.1).collect();
    lat.sort_by(f64::total_cmp);
    ttft.sort_by(f64::total_cmp);
    let tokens: u64 = results.iter().map(|r| r.2).sum();
    let h = s.health();
    let (completed, cancelled) = (
        h["completed"].as_u64().unwrap() - alone,
        h["cancelled"].as_u64().unwrap(),
    );
    eprintln!(
        "load test: {CLIENTS} concurrent streaming clients × {PER_CLIENT} requests (AR and CARD mixed, a quarter not streamed, 24 tokens, 1 ms per pass) in {:.2}s, {dropped} hung up mid-stream ({cancelled} cancelled before finishing): latency p50 {:.0} ms, p95 {:.0} ms; first event p50 {:.0} ms, p95 {:.0} ms; {:.1} requests/s, {:.0} tokens/s; {} batches, largest {} rows",
        wall.as_secs_f64(),
        percentile(&lat, 0.5) * 1e3,
        percentile(&lat, 0.95) * 1e3,
        percentile(&ttft, 0.5) * 1e3,
        percentile(&ttft, 0.95) * 1e3,
        results.len() as f64 / wall.as_secs_f64(),
        tokens as f64 / wall.as_secs_f64(),
        h["batches"],
        h["max_batch_rows"],
    );
    // Every request is accounted for exactly once: finished, or cancelled by its hang-up (a
    // client that hangs up after its last row committed counts as finished).
    assert_eq!(completed + cancelled, (CLIENTS * PER_CLIENT) as u64, "{h}");
    assert!(cancelled >= 1, "no disconnect cancelled its rows: {h}");
    assert!(
        h["max_batch_rows"].as_u64().unwrap() > 1,
        "concurrent requests were never batched"
    );
    // And the server is healthy afterwards.
    assert_eq!(h["status"], "ok");
    let r = post(
        &s.addr,
        "/v1/completions",
        &json!({"prompt": "Alice was", "max_tokens": 4}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
}
