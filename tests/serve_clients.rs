//! `card serve` seen from the client's side of a connection that ends: a client that hangs
//! up mid-generation, a server told to stop (SIGTERM) with requests in flight, and real
//! outside clients (the OpenAI Python client, the playground in headless Chromium).

use serde_json::json;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::http::*;

#[test]
fn client_disconnect_stops_generation() {
    let s = Server::start(&["--step-delay-ms", "30"]);
    for (i, decoder) in ["ar", "card", "verify"].iter().enumerate() {
        let body = json!({"prompt": "Alice was", "temperature": 0, "max_tokens": 60, "ignore_eos": true, "decoder": decoder,
            "stream": true, "threshold": 1.0, "block_size": 4, "step_limit": 4});
        let before = s.health()["forward_passes"].as_u64().unwrap();
        let mut ev = Events::open(&s.addr, "/v1/completions", &body);
        for _ in 0..3 {
            ev.next().unwrap();
        }
        drop(ev);
        // Its queue place is freed only after the job is counted as cancelled.
        wait_until("the generation to stop", Duration::from_secs(5), || {
            s.health()["queue"]["admitted"] == 0
        });
        let h = s.health();
        let used = h["forward_passes"].as_u64().unwrap() - before;
        std::thread::sleep(Duration::from_millis(300));
        let h2 = s.health();
        assert_eq!(
            h2["forward_passes"], h["forward_passes"],
            "work continued after the disconnect"
        );
        // A full generation takes 60 passes; a dropped one stops within a few.
        assert!(
            used < 20,
            "{decoder}: {used} forward passes after disconnecting"
        );
        assert_eq!(h2["cancelled"], (i + 1) as u64);
        eprintln!("{decoder}: disconnected after 3 events; {used} forward passes in all");
    }
    // A non-streaming client that gives up is cancelled too.
    let before = s.health()["forward_passes"].as_u64().unwrap();
    let conn = send(
        &s.addr,
        "POST",
        "/v1/completions",
        json!({"prompt": "Alice was", "temperature": 0, "max_tokens": 60, "decoder": "ar", "ignore_eos": true})
            .to_string()
            .as_bytes(),
    );
    wait_until("decoding to start", Duration::from_secs(5), || {
        s.health()["active_rows"] == 1
    });
    drop(conn);
    wait_until("the generation to stop", Duration::from_secs(5), || {
        s.health()["active_rows"] == 0
    });
    let used = s.health()["forward_passes"].as_u64().unwrap() - before;
    assert!(used < 40, "{used} forward passes");
}

#[test]
fn sigterm_finishes_in_flight_requests_then_exits() {
    // Within the grace period an in-flight stream completes normally.
    let mut s = Server::start(&["--step-delay-ms", "20", "--shutdown-grace-s", "10"]);
    let body = json!({"prompt": "Alice was", "temperature": 0, "max_tokens": 40, "decoder": "ar", "stream": true});
    let mut ev = Events::open(&s.addr, "/v1/completions", &body);
    ev.next().unwrap();
    s.terminate();
    let events = ev.all();
    assert_eq!(
        events.last().unwrap()["choices"][0]["finish_reason"],
        "length"
    );
    let status = wait_exit(&mut s.child);
    assert!(status.success(), "{status:?}");
    assert!(
        TcpStream::connect(&s.addr).is_err(),
        "still accepting after shutdown"
    );

    // Past the grace period it is cancelled with an error event, and the stream still ends.
    let mut s = Server::start(&["--step-delay-ms", "50", "--shutdown-grace-s", "0.2"]);
    let body = json!({"prompt": "Alice was", "temperature": 0, "max_tokens": 60, "decoder": "ar", "stream": true, "ignore_eos": true});
    let mut ev = Events::open(&s.addr, "/v1/completions", &body);
    ev.next().unwrap();
    s.terminate();
    let events = ev.all();
    assert_eq!(
        events.last().unwrap()["error"]["code"],
        "cancelled",
        "{events:?}"
    );
    assert!(wait_exit(&mut s.child).success());
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the server did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn have(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn openai_python_client_completes_and_streams() {
    if !have("python3", &["-c", "import openai"]) {
        let why = "the openai Python package is not installed (.ci/run installs it)";
        common::skip_unless_ci("the openai client test", why);
        return;
    }
    let s = Server::start(&[]);
    let out = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/openai_client_check.py"))
        .args([
            "--base-url",
            &format!("http://{}/v1", s.addr),
            "--model",
            "tiny",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success());
    assert!(stdout.contains("openai client check: ok"));
}

#[test]
fn playground_in_headless_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let browser = root.join("scripts/browser");
    if !Path::new("/usr/bin/chromium").exists()
        || !browser.join("node_modules/playwright-core").exists()
        || !have("node", &["--version"])
    {
        let why = "needs /usr/bin/chromium, node and scripts/browser/node_modules (.ci/run installs them)";
        common::skip_unless_ci("the headless-Chromium playground test", why);
        return;
    }
    let shots = root.join("target/artifacts");
    std::fs::create_dir_all(&shots).unwrap();
    // Once open, once behind --api-key: the page must ask for the key, refuse a wrong one and
    // then decode with the right one.
    for key in [None, Some("playground-key-7")] {
        let s = match key {
            Some(k) => Server::start(&["--api-key", k]),
            None => Server::start(&[]),
        };
        let _ = std::fs::remove_file(shots.join("playground.png"));
        let out = Command::new("node")
            .arg(browser.join("playground_check.mjs"))
            .args(["--url", &format!("http://{}/", s.addr)])
            .args(["--out".as_ref(), shots.as_os_str()])
            .args(key.map(|k| ["--api-key", k]).iter().flatten())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "key {key:?}");
        assert!(stdout.contains("playground check: ok"));
        if key.is_some() {
            assert!(stdout.contains("refused a missing and a wrong key"));
        }
        assert!(shots.join("playground.png").exists());
    }
}
