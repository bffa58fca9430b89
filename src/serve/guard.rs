//! What every request passes before a handler sees it: the Host header against an
//! allow-list (DNS rebinding), the Origin header against this server's own origins and the
//! `--cors-origin` list (a web page the user visits cannot make the server generate), an
//! optional API key on `/v1/` (Bearer, as OpenAI clients send it), and a JSON Content-Type
//! on every POST (a cross-site form or `text/plain` body is refused before it is read).
//! CORS headers are sent only to the origins listed with `--cors-origin`.

use super::error::ApiError;
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// Host names a server bound to loopback answers to by default.
pub const LOCAL_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

#[derive(Debug, Clone)]
pub struct Guard {
    /// Lower-case host names without port; "*" accepts any Host.
    pub hosts: Vec<String>,
    /// The port the server listens on (its own pages' origin).
    pub port: u16,
    /// Origins (`scheme://host[:port]`) that may call the API from a browser; "*" any.
    pub cors: Vec<String>,
    pub api_key: Option<String>,
}

/// How a request passed: `cors` is the origin to echo in CORS headers, if any.
#[derive(Debug, PartialEq)]
pub struct Admitted {
    pub cors: Option<String>,
}

impl Guard {
    /// The host names a server at `bind` (the `--host` value) answers to besides `extra`.
    pub fn hosts_for(bind: &str, extra: &[String]) -> Vec<String> {
        let mut hosts: Vec<String> = LOCAL_HOSTS.iter().map(|h| h.to_string()).collect();
        let bind = bind.to_ascii_lowercase();
        let unspecified = matches!(bind.as_str(), "0.0.0.0" | "::" | "[::]");
        if !unspecified && !hosts.contains(&bind) {
            hosts.push(if bind.contains(':') && !bind.starts_with('[') {
                format!("[{bind}]")
            } else {
                bind
            });
        }
        hosts.extend(extra.iter().map(|h| h.to_ascii_lowercase()));
        hosts
    }

    fn host_allowed(&self, host: &str) -> bool {
        self.hosts.iter().any(|h| h == "*" || h == host)
    }

    /// Whether a browser origin is this server's own page (an allowed host on our port).
    fn own_origin(&self, origin: &str) -> bool {
        let Some(rest) = origin.strip_prefix("http://") else {
            return false;
        };
        let (host, port) = split_host(rest);
        port.unwrap_or(80) == self.port && self.host_allowed(&host)
    }

    fn cors_listed(&self, origin: &str) -> bool {
        self.cors.iter().any(|o| o == "*" || o == origin)
    }

    /// Check a request's method, path and headers.
    pub fn admit(&self, method: &Method, path: &str, h: &HeaderMap) -> Result<Admitted, ApiError> {
        let text = |name| h.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
        let Some(host) = text(header::HOST) else {
            return Err(forbidden(
                "host_not_allowed",
                "the request has no Host header".into(),
            ));
        };
        let (host, _) = split_host(&host.to_ascii_lowercase());
        if !self.host_allowed(&host) {
            let msg = format!("the Host '{host}' is not allowed; start the server with --allow-host {host} to accept it");
            return Err(forbidden("host_not_allowed", msg));
        }
        let mut cors = None;
        if let Some(origin) = text(header::ORIGIN) {
            let origin = origin.to_ascii_lowercase();
            if self.cors_listed(&origin) {
                cors = Some(origin);
            } else if !self.own_origin(&origin) {
                let msg = format!("requests from the origin '{origin}' are not allowed; start the server with --cors-origin {origin} to accept them");
                return Err(forbidden("origin_not_allowed", msg));
            }
        }
        // A CORS preflight carries no credentials; the request that follows does.
        if method == Method::OPTIONS {
            return Ok(Admitted { cors });
        }
        if let Some(key) = &self.api_key {
            let given = text(header::AUTHORIZATION).and_then(|a| a.strip_prefix("Bearer "));
            if path.starts_with("/v1/") && !given.is_some_and(|g| same(g.trim(), key)) {
                let mut e = ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid_api_key",
                    "a valid API key is required: send 'Authorization: Bearer <key>'",
                );
                e.kind = "authentication_error";
                return Err(e);
            }
        }
        if method == Method::POST {
            let json = text(header::CONTENT_TYPE).is_some_and(|c| {
                let essence = c.split(';').next().unwrap_or("").trim();
                essence.eq_ignore_ascii_case("application/json")
            });
            if !json {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "the request body must be JSON, sent with 'Content-Type: application/json'",
                ));
            }
        }
        Ok(Admitted { cors })
    }
}

fn forbidden(code: &'static str, msg: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, code, msg)
}

/// "host:port", "[v6]:port" or a bare host, as (host, port).
fn split_host(s: &str) -> (String, Option<u16>) {
    let (host, port) = match s.rfind(':') {
        Some(i) if !s[i..].contains(']') => (&s[..i], s[i + 1..].parse().ok()),
        _ => (s, None),
    };
    (host.to_string(), port)
}

/// Constant-time equality (the time taken does not tell how much of a guess was right).
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// The axum middleware around every route.
pub(crate) async fn check(State(g): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let admitted = match g.admit(req.method(), req.uri().path(), req.headers()) {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let preflight = req.method() == Method::OPTIONS;
    let mut resp = if preflight {
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(req).await
    };
    if let Some(origin) = admitted.cors {
        let h = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&origin) {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        }
        h.insert(header::VARY, HeaderValue::from_static("origin"));
        if preflight {
            let allow = |s| HeaderValue::from_static(s);
            h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, allow("GET, POST"));
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                allow("authorization, content-type"),
            );
            h.insert(header::ACCESS_CONTROL_MAX_AGE, allow("600"));
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(key: Option<&str>, cors: &[&str]) -> Guard {
        Guard {
            hosts: Guard::hosts_for("127.0.0.1", &[]),
            port: 8080,
            cors: cors.iter().map(|s| s.to_string()).collect(),
            api_key: key.map(str::to_string),
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn code(g: &Guard, m: Method, path: &str, pairs: &[(&'static str, &str)]) -> &'static str {
        match g.admit(&m, path, &headers(pairs)) {
            Ok(_) => "ok",
            Err(e) => e.code.unwrap(),
        }
    }

    #[test]
    fn host_origin_key_and_content_type() {
        let g = guard(None, &[]);
        let json = ("content-type", "application/json; charset=utf-8");
        let post =
            |pairs: &[(&'static str, &str)]| code(&g, Method::POST, "/v1/completions", pairs);
        assert_eq!(post(&[("host", "127.0.0.1:8080"), json]), "ok");
        assert_eq!(post(&[("host", "LOCALHOST"), json]), "ok");
        assert_eq!(post(&[("host", "[::1]:8080"), json]), "ok");
        // DNS rebinding: the attacker's name resolves to 127.0.0.1.
        assert_eq!(
            post(&[("host", "evil.example:8080"), json]),
            "host_not_allowed"
        );
        assert_eq!(post(&[json]), "host_not_allowed");
        // A page elsewhere, or on another local port, or sandboxed ("null"), is refused.
        let host = ("host", "127.0.0.1:8080");
        assert_eq!(
            post(&[host, json, ("origin", "http://evil.example")]),
            "origin_not_allowed"
        );
        assert_eq!(
            post(&[host, json, ("origin", "http://localhost:3000")]),
            "origin_not_allowed"
        );
        assert_eq!(
            post(&[host, json, ("origin", "null")]),
            "origin_not_allowed"
        );
        assert_eq!(
            post(&[host, json, ("origin", "http://localhost:8080")]),
            "ok"
        );
        // The CSRF form of CVE-2021-32677: text/plain needs no preflight.
        assert_eq!(
            post(&[host, ("content-type", "text/plain")]),
            "unsupported_media_type"
        );
        assert_eq!(post(&[host]), "unsupported_media_type");
        assert_eq!(code(&g, Method::GET, "/health", &[host]), "ok");
    }

    #[test]
    fn api_key_guards_v1_and_cors_lists_origins() {
        let g = guard(Some("s3cret"), &["http://app.example:3000"]);
        let (host, json) = (
            ("host", "localhost:8080"),
            ("content-type", "application/json"),
        );
        let post =
            |pairs: &[(&'static str, &str)]| code(&g, Method::POST, "/v1/completions", pairs);
        assert_eq!(post(&[host, json]), "invalid_api_key");
        assert_eq!(
            post(&[host, json, ("authorization", "Bearer s3cre")]),
            "invalid_api_key"
        );
        assert_eq!(
            post(&[host, json, ("authorization", "s3cret")]),
            "invalid_api_key"
        );
        assert_eq!(
            post(&[host, json, ("authorization", "Bearer s3cret")]),
            "ok"
        );
        assert_eq!(
            code(&g, Method::GET, "/v1/models", &[host]),
            "invalid_api_key"
        );
        assert_eq!(code(&g, Method::GET, "/health", &[host]), "ok");
        let o = ("origin", "http://app.example:3000");
        let a = g.admit(&Method::OPTIONS, "/v1/completions", &headers(&[host, o]));
        assert_eq!(a.unwrap().cors.as_deref(), Some("http://app.example:3000"));
        let own = g.admit(
            &Method::GET,
            "/",
            &headers(&[host, ("origin", "http://localhost:8080")]),
        );
        assert_eq!(
            own.unwrap().cors,
            None,
            "the server's own page gets no CORS headers"
        );
    }

    #[test]
    fn host_lists_and_parsing() {
        assert_eq!(Guard::hosts_for("0.0.0.0", &[]), LOCAL_HOSTS);
        assert!(Guard::hosts_for("10.0.0.5", &[]).contains(&"10.0.0.5".to_string()));
        assert!(Guard::hosts_for("::", &["Box.Lan".into()]).contains(&"box.lan".to_string()));
        assert_eq!(split_host("[::1]:80"), ("[::1]".into(), Some(80)));
        assert_eq!(split_host("[::1]"), ("[::1]".into(), None));
        assert_eq!(split_host("a.b"), ("a.b".into(), None));
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("ab", "abc"));
    }
}
