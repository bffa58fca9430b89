//! A `card serve` process for the server tests: a `tiny` checkpoint trained once per test
//! binary, the server started on a free port, and a minimal HTTP/1.1 client (so the tests
//! see exactly what goes over the wire, SSE framing and dropped connections included).

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub fn checkpoint() -> &'static Path {
    static CKPT: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, p) = CKPT.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_card"))
            .args([
                "train",
                "--preset",
                "tiny",
                "--max-steps",
                "2",
                "--out",
                "run",
                "--quiet",
            ])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let p = dir.path().join("run");
        (dir, p)
    });
    p
}

pub struct Server {
    pub child: Child,
    pub addr: String,
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_card"))
            .arg("serve")
            .arg(checkpoint())
            .args(["--port", "0", "--model-name", "tiny"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_string();
        Server { child, addr }
    }

    pub fn health(&self) -> Value {
        get(&self.addr, "/health").json()
    }

    pub fn terminate(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub fn send(addr: &str, method: &str, path: &str, body: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    s
}

/// Status line and headers; the reader is left at the body.
pub fn read_head(r: &mut impl BufRead) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status = line
        .split_whitespace()
        .nth(1)
        .unwrap_or("0")
        .parse()
        .unwrap();
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    (status, headers)
}

/// A body reader that undoes chunked transfer encoding.
pub struct Chunked<R> {
    inner: R,
    left: usize,
    done: bool,
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        if self.left == 0 {
            let mut line = String::new();
            self.inner.read_line(&mut line)?;
            if line.trim().is_empty() {
                line.clear();
                self.inner.read_line(&mut line)?;
            }
            self.left = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
            if self.left == 0 {
                self.done = true;
                return Ok(0);
            }
        }
        let n = buf.len().min(self.left);
        let n = self.inner.read(&mut buf[..n])?;
        self.left -= n;
        Ok(n)
    }
}

pub fn body_reader(r: BufReader<TcpStream>, headers: &[(String, String)]) -> Box<dyn BufRead> {
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        Box::new(BufReader::new(Chunked {
            inner: r,
            left: 0,
            done: false,
        }))
    } else {
        Box::new(r)
    }
}

pub fn request(addr: &str, method: &str, path: &str, body: &[u8]) -> Resp {
    read_response(send(addr, method, path, body))
}

/// The whole response on a connection whose request has been sent.
pub fn read_response(s: TcpStream) -> Resp {
    let mut r = BufReader::new(s);
    let (status, headers) = read_head(&mut r);
    let mut body = String::new();
    body_reader(r, &headers).read_to_string(&mut body).unwrap();
    Resp {
        status,
        headers,
        body,
    }
}

pub fn get(addr: &str, path: &str) -> Resp {
    request(addr, "GET", path, b"")
}

pub fn post(addr: &str, path: &str, body: &Value) -> Resp {
    request(addr, "POST", path, body.to_string().as_bytes())
}

/// An open SSE response.
pub struct Events {
    pub status: u16,
    pub reader: Box<dyn BufRead>,
}

impl Events {
    pub fn open(addr: &str, path: &str, body: &Value) -> Events {
        let mut r = BufReader::new(send(addr, "POST", path, body.to_string().as_bytes()));
        let (status, headers) = read_head(&mut r);
        if status == 200 {
            let ct = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-type"));
            assert_eq!(ct.map(|c| c.1.as_str()), Some("text/event-stream"));
        }
        Events {
            status,
            reader: body_reader(r, &headers),
        }
    }

    /// The next event's data ("[DONE]" included), or None at the end of the stream.
    pub fn next(&mut self) -> Option<String> {
        let mut data = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let l = line.trim_end_matches(['\r', '\n']);
            if l.is_empty() {
                if !data.is_empty() {
                    return Some(data.join("\n"));
                }
                continue;
            }
            if let Some(d) = l.strip_prefix("data:") {
                data.push(d.trim_start().to_string());
            }
        }
    }

    /// Every event up to [DONE], parsed; panics if the stream ends without it.
    pub fn all(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(d) = self.next() {
            if d == "[DONE]" {
                return out;
            }
            out.push(serde_json::from_str(&d).unwrap());
        }
        panic!("the stream ended without [DONE] after {out:?}");
    }
}

pub fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn assert_api_error(r: &Resp, status: u16, code: &str, case: &str) {
    assert_eq!(r.status, status, "{case}: {}", r.body);
    let e = &r.json()["error"];
    for key in ["message", "type", "param", "code"] {
        assert!(e.get(key).is_some(), "{case}: no {key} in {}", r.body);
    }
    assert!(!e["message"].as_str().unwrap().is_empty(), "{case}");
    assert_eq!(e["code"], code, "{case}: {}", r.body);
}
