//! `card serve` against a hostile or careless client: cross-site and foreign-host requests,
//! the API key, slow and idle connections, the connection cap, per-request limits, request
//! deadlines, a panicking decoder, and start-up flags out of range.

use serde_json::{json, Value};
use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::http::*;

/// A request with exactly the headers given (plus Content-Length and Connection: close).
fn raw(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    ));
    s.write_all(head.as_bytes()).unwrap();
    read_response(s)
}

#[test]
fn cross_site_requests_foreign_hosts_and_missing_keys_are_refused() {
    let s = Server::start(&[
        "--api-key",
        "s3cret",
        "--cors-origin",
        "http://app.example:3000",
    ]);
    let host = s.addr.clone();
    let body = r#"{"prompt": "Alice", "max_tokens": 2}"#;
    let c = "/v1/completions";
    let json = ("content-type", "application/json");
    let key = ("authorization", "Bearer s3cret");
    let h = ("host", host.as_str());
    let ok = raw(&s.addr, "POST", c, &[h, json, key], body);
    assert_eq!(ok.status, 200, "{}", ok.body);
    // A page's form or fetch with a simple content type needs no preflight: refused unread.
    let plain = ("content-type", "text/plain");
    assert_api_error(
        &raw(&s.addr, "POST", c, &[h, plain, key], body),
        415,
        "unsupported_media_type",
        "text/plain",
    );
    assert_api_error(
        &raw(&s.addr, "POST", c, &[h, key], body),
        415,
        "unsupported_media_type",
        "no type",
    );
    // DNS rebinding: a name the attacker controls resolving to 127.0.0.1.
    let evil_host = ("host", "rebind.evil.example:8080");
    assert_api_error(
        &raw(&s.addr, "POST", c, &[evil_host, json, key], body),
        403,
        "host_not_allowed",
        "host",
    );
    let evil = ("origin", "http://evil.example");
    assert_api_error(
        &raw(&s.addr, "POST", c, &[h, json, key, evil], body),
        403,
        "origin_not_allowed",
        "origin",
    );
    // The key: missing, wrong, right; /health and the page stay open.
    let r = raw(&s.addr, "POST", c, &[h, json], body);
    assert_api_error(&r, 401, "invalid_api_key", "no key");
    let wrong = ("authorization", "Bearer s3creT");
    assert_api_error(
        &raw(&s.addr, "POST", c, &[h, json, wrong], body),
        401,
        "invalid_api_key",
        "wrong key",
    );
    assert_api_error(
        &raw(&s.addr, "GET", "/v1/models", &[h], ""),
        401,
        "invalid_api_key",
        "models",
    );
    assert_eq!(raw(&s.addr, "GET", "/health", &[h], "").status, 200);
    assert_eq!(raw(&s.addr, "GET", "/", &[h], "").status, 200);
    // The listed origin gets CORS headers, on the preflight and on the request.
    let app = ("origin", "http://app.example:3000");
    let pre = raw(
        &s.addr,
        "OPTIONS",
        c,
        &[h, app, ("access-control-request-method", "POST")],
        "",
    );
    assert_eq!(pre.status, 204);
    assert_eq!(
        pre.header("access-control-allow-origin"),
        Some("http://app.example:3000")
    );
    assert!(pre
        .header("access-control-allow-headers")
        .unwrap()
        .contains("authorization"));
    let r = raw(&s.addr, "POST", c, &[h, json, key, app], body);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://app.example:3000")
    );
    // The server's own page (same origin) works without CORS headers.
    let own_origin = format!("http://{host}");
    let own = ("origin", own_origin.as_str());
    let r = raw(&s.addr, "POST", c, &[h, json, key, own], body);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("access-control-allow-origin"), None);
}

/// Read until the server closes the connection (or answers); how long that took.
fn time_to_close(s: &mut TcpStream) -> (Duration, String) {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    (start.elapsed(), String::from_utf8_lossy(&got).to_string())
}

#[test]
fn slow_and_idle_clients_time_out_and_connections_are_capped() {
    let s = Server::start(&[
        "--header-timeout-s",
        "1",
        "--body-timeout-s",
        "1",
        "--max-connections",
        "3",
    ]);
    // Slowloris: headers that never finish.
    let mut slow = TcpStream::connect(&s.addr).unwrap();
    slow.write_all(b"POST /v1/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n")
        .unwrap();
    let (t, _) = time_to_close(&mut slow);
    assert!(
        t < Duration::from_secs(4),
        "a half-sent header held a connection {t:?}"
    );
    // A body that stops halfway gets a 408.
    let mut half = TcpStream::connect(&s.addr).unwrap();
    let head = format!("POST /v1/completions HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"prompt\"", s.addr);
    half.write_all(head.as_bytes()).unwrap();
    let (t, answer) = time_to_close(&mut half);
    assert!(
        t < Duration::from_secs(4),
        "a stalled body held a connection {t:?}"
    );
    assert!(
        answer.starts_with("HTTP/1.1 408") && answer.contains("request_timeout"),
        "{answer}"
    );
    // Three idle connections fill the cap; the fourth is answered 503 and closed at once.
    let idle: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(&s.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut fourth = TcpStream::connect(&s.addr).unwrap();
    let (t, answer) = time_to_close(&mut fourth);
    // The answer tells a refusal from the header timeout (which closes without one); the
    // time bound leaves room for a loaded machine.
    assert!(
        answer.starts_with("HTTP/1.1 503") && answer.contains("too_many_connections"),
        "after {t:?}: {answer}"
    );
    assert!(t < Duration::from_secs(2), "{t:?}");
    // The idle ones are closed by the header timeout, which frees their places.
    for mut c in idle {
        let (t, _) = time_to_close(&mut c);
        assert!(
            t < Duration::from_secs(4),
            "an idle connection stayed {t:?}"
        );
    }
    let r = post(
        &s.addr,
        "/v1/completions",
        &json!({"prompt": "x", "max_tokens": 2}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn per_request_limits_and_deadlines() {
    let s = Server::start(&[
        "--max-batch",
        "2",
        "--request-timeout-s",
        "1",
        "--step-delay-ms",
        "100",
    ]);
    let c = "/v1/completions";
    let cases = [
        (
            json!({"prompt": "x", "n": 3, "max_tokens": 2}),
            "n",
            "--max-batch",
        ),
        (
            json!({"prompt": ["a", "b", "c"], "max_tokens": 2}),
            "n",
            "--max-batch",
        ),
        (
            json!({"prompt": "x", "n": 2, "temperature": 0, "max_tokens": 2}),
            "n",
            "identical",
        ),
        (
            json!({"prompt": "x", "stream_options": {"include_usage": true}}),
            "stream_options",
            "stream",
        ),
    ];
    for (body, param, needle) in cases {
        let r = post(&s.addr, c, &body);
        assert_api_error(&r, 422, "invalid_value", &body.to_string());
        assert_eq!(r.json()["error"]["param"], param, "{}", r.body);
        assert!(r.body.contains(needle), "{}", r.body);
    }
    assert_eq!(
        post(&s.addr, c, &json!({"prompt": "x", "n": 2, "max_tokens": 1})).status,
        200
    );
    // 40 steps at 100 ms each cannot finish within the 1 s deadline: 504, and the job is
    // cancelled (its queue place comes back).
    let long = json!({"prompt": "Alice was", "temperature": 0, "max_tokens": 40, "decoder": "ar", "ignore_eos": true});
    let start = Instant::now();
    let r = post(&s.addr, c, &long);
    assert_api_error(&r, 504, "timeout", "non-streaming deadline");
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    let mut streaming = long.clone();
    streaming["stream"] = json!(true);
    let mut ev = Events::open(&s.addr, c, &streaming);
    assert_eq!(ev.status, 200);
    let mut last = Value::Null;
    while let Some(d) = ev.next() {
        if d == "[DONE]" {
            break;
        }
        last = serde_json::from_str(&d).unwrap();
    }
    assert_eq!(last["error"]["code"], "timeout", "{last}");
    wait_until(
        "the timed-out jobs to be cancelled",
        Duration::from_secs(10),
        || s.health()["queue"]["admitted"] == 0,
    );
}

#[test]
fn a_panicking_decoder_is_reported_and_the_server_exits_non_zero() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_card"))
        .arg("serve")
        .arg(checkpoint())
        .args(["--port", "0", "--shutdown-grace-s", "1"])
        .env("CARD_SERVE_PANIC_AT_FORWARD", "3")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut BufReader::new(child.stdout.take().unwrap()), &mut line)
        .unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let r = post(
        &addr,
        "/v1/completions",
        &json!({"prompt": "Alice", "max_tokens": 8, "ignore_eos": true}),
    );
    assert_api_error(&r, 500, "internal_error", "the panicking request");
    assert!(
        !r.body.contains("fault injected"),
        "internal detail leaked: {}",
        r.body
    );
    // Until it exits (after --shutdown-grace-s), the server says it failed and admits nothing.
    let h = get(&addr, "/health");
    assert_eq!(h.status, 503, "{}", h.body);
    assert_eq!(h.json()["status"], "failed", "{}", h.body);
    let again = post(
        &addr,
        "/v1/completions",
        &json!({"prompt": "Alice", "max_tokens": 2}),
    );
    assert_eq!(again.status, 503, "{}", again.body);
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the server kept running after a panic"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!status.success(), "exit status {status}");
    assert!(
        err.contains("fault injected") && err.contains("restart it"),
        "{err}"
    );
    assert!(!err.contains("stack backtrace"), "{err}");
}

#[test]
fn start_up_flags_out_of_range_are_refused() {
    let ckpt = checkpoint().to_str().unwrap().to_string();
    let cases: [(&[&str], &str); 8] = [
        (&["--workers", "100000"], "--workers must be in [1, 256]"),
        (&["--queue", "0"], "--queue must be in [1, 65536]"),
        (&["--max-batch", "65"], "--max-batch must be in [1, 64]"),
        (&["--max-connections", "0"], "--max-connections must be in"),
        (&["--max-body-bytes", "10"], "--max-body-bytes must be in"),
        (
            &["--header-timeout-s", "0"],
            "--header-timeout-s must be in",
        ),
        (
            &["--request-timeout-s", "nan"],
            "--request-timeout-s must be in",
        ),
        (
            &["--cors-origin", "app.example"],
            "--cors-origin takes an origin",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (flags, needle) in cases {
        let mut args = vec!["serve", ckpt.as_str(), "--port", "0"];
        args.extend_from_slice(flags);
        common::assert_error(&common::card(&args, dir.path()), needle);
    }
    let out = Command::new(env!("CARGO_BIN_EXE_card"))
        .args(["serve", &ckpt, "--port", "0"])
        .env("CARD_API_KEY", " ")
        .output()
        .unwrap();
    common::assert_error(&out, "--api-key (or CARD_API_KEY) is empty");
}

#[test]
fn a_seeded_sampled_request_is_reproducible_beside_other_traffic() {
    let s = Server::start(&[]);
    let c = "/v1/completions";
    let body = |seed: u64| json!({"prompt": "Alice was", "temperature": 0.9, "top_p": 0.95, "max_tokens": 16, "seed": seed, "ignore_eos": true, "decoder": "card"});
    let text = |r: &Resp| r.json()["choices"][0]["text"].as_str().unwrap().to_string();
    let first = text(&post(&s.addr, c, &body(5)));
    // The same request again while unseeded requests decode next to it.
    let noise: Vec<_> = (0..3)
        .map(|_| {
            let addr = s.addr.clone();
            std::thread::spawn(move || {
                post(
                    &addr,
                    c,
                    &json!({"prompt": "The", "max_tokens": 16, "temperature": 0.9}),
                )
                .status
            })
        })
        .collect();
    let again = text(&post(&s.addr, c, &body(5)));
    for n in noise {
        assert_eq!(n.join().unwrap(), 200);
    }
    assert_eq!(first, again, "the same seed gave different text");
    let other = text(&post(&s.addr, c, &body(6)));
    assert_ne!(first, other, "another seed gave the same 16 sampled tokens");
}
