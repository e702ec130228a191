//! A small HTTP client over ureq (real HTTP/1.1), plus a raw-socket sender
//! for requests no well-behaved client would make.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The one Set-Cookie line (panics if several).
    pub fn set_cookie(&self) -> Option<&str> {
        let all = self.headers_named("set-cookie");
        assert!(all.len() <= 1, "several Set-Cookie headers: {all:?}");
        all.first().copied()
    }

    /// `NAME=VALUE` from the Set-Cookie line, as a Cookie header would carry it.
    pub fn cookie_pair(&self) -> String {
        let line = self
            .set_cookie()
            .unwrap_or_else(|| panic!("no Set-Cookie in {self:?}"));
        line.split(';').next().unwrap().trim().to_string()
    }

    /// `KEY=value` lines of a CGI that prints its environment.
    pub fn env(&self, key: &str) -> Option<String> {
        let prefix = format!("{key}=");
        self.body
            .lines()
            .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// GET with optional extra headers.
pub fn get(url: &str, headers: &[(&str, &str)]) -> Response {
    send("GET", url, headers, None)
}

pub fn get_with_cookie(url: &str, cookie: &str) -> Response {
    get(url, &[("Cookie", cookie)])
}

pub fn send(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&str>) -> Response {
    try_send(method, url, headers, body).unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

/// Like `send`, but a transport failure is returned, not a panic.
pub fn try_send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<Response, String> {
    let agent = agent();
    let mut req = ureq::http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let result = match body {
        Some(b) => agent.run(req.body(b.to_string()).unwrap()),
        None => agent.run(req.body(()).unwrap()),
    };
    let mut resp = result.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = resp.body_mut().read_to_string().unwrap_or_default();
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// Sends raw bytes and returns the raw response (status line, headers, body).
pub fn raw(port: u16, request: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Status code of a raw response.
pub fn raw_status(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}
