//! The control endpoint: a deliberately tiny HTTP/1.1 server (one request per connection,
//! `Connection: close`, JSON bodies) and a matching client, so that tests, fault injectors
//! and humans (`curl`) can change a running emulator.
//!
//! | Request | Effect / answer |
//! |---|---|
//! | `GET /settings` | current [`Settings`](super::Settings) as JSON |
//! | `PUT` or `POST /settings` + partial JSON | merge-patched settings (see [`super::Settings::patched`]) |
//! | `POST /partition` | partition both directions |
//! | `POST /heal` | heal both directions |
//! | `GET /stats` | [`StatsSnapshot`] as JSON |
//!
//! Errors answer `400` (bad JSON / invalid settings), `404`, `405`, `413` (head over 16 KiB or
//! body over 64 KiB) with `{"error": "..."}`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use super::{StatsSnapshot, WanControl, WanError};

/// Largest request head accepted.
const MAX_HEAD_BYTES: usize = 16 << 10;
/// Largest request body accepted.
const MAX_BODY_BYTES: usize = 64 << 10;
/// Most control connections served at once.
const MAX_CONNECTIONS: usize = 64;
/// Time a client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A running control endpoint. Dropping it stops it.
#[derive(Debug)]
pub struct ControlServer {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl ControlServer {
    /// Listens on `listen` (port 0: any) and serves `control`.
    pub async fn start(
        listen: SocketAddr,
        control: Arc<WanControl>,
    ) -> Result<ControlServer, WanError> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| WanError::io(format!("bind control {listen}"), e))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| WanError::io("local_addr", e))?;
        let task = tokio::spawn(serve(listener, control));
        Ok(ControlServer { local_addr, task })
    }

    /// The address to send requests to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, control: Arc<WanControl>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                if connections.len() >= MAX_CONNECTIONS {
                    continue;
                }
                let control = Arc::clone(&control);
                connections.spawn(async move {
                    let _ = tokio::time::timeout(REQUEST_TIMEOUT, handle(stream, &control)).await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// A parsed request.
struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
}

/// Why a request could not be read.
enum ReadError {
    Io,
    TooLarge,
    Malformed(&'static str),
}

async fn read_request(stream: &mut TcpStream) -> Result<Request, ReadError> {
    let mut data = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(pos) = find(&data, b"\r\n\r\n") {
            break pos;
        }
        if data.len() > MAX_HEAD_BYTES {
            return Err(ReadError::TooLarge);
        }
        let n = stream.read(&mut buf).await.map_err(|_| ReadError::Io)?;
        if n == 0 {
            return Err(ReadError::Malformed(
                "connection closed inside the request head",
            ));
        }
        data.extend_from_slice(buf.get(..n).unwrap_or_default());
    };
    let head = std::str::from_utf8(data.get(..head_end).unwrap_or_default())
        .map_err(|_| ReadError::Malformed("request head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split_whitespace();
    let method = request_line.next().unwrap_or_default().to_ascii_uppercase();
    let path = request_line.next().unwrap_or_default().to_string();
    if method.is_empty() || path.is_empty() {
        return Err(ReadError::Malformed("bad request line"));
    }
    let mut content_length = 0usize;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                content_length = value
                    .trim()
                    .parse()
                    .map_err(|_| ReadError::Malformed("bad Content-Length"))?;
            }
        }
    }
    if content_length > MAX_BODY_BYTES {
        return Err(ReadError::TooLarge);
    }
    let mut body = data.get(head_end + 4..).unwrap_or_default().to_vec();
    while body.len() < content_length {
        let n = stream.read(&mut buf).await.map_err(|_| ReadError::Io)?;
        if n == 0 {
            return Err(ReadError::Malformed("connection closed inside the body"));
        }
        body.extend_from_slice(buf.get(..n).unwrap_or_default());
    }
    body.truncate(content_length);
    Ok(Request { method, path, body })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn error_body(message: &str) -> String {
    serde_json::json!({ "error": message }).to_string()
}

fn to_json<T: serde::Serialize>(value: &T) -> (u16, String) {
    match serde_json::to_string_pretty(value) {
        Ok(body) => (200, body),
        Err(e) => (500, error_body(&e.to_string())),
    }
}

/// Answers one request against `control`: (status, JSON body).
pub fn respond(control: &WanControl, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let path = path.split('?').next().unwrap_or_default();
    match (method, path) {
        ("GET", "/settings") => to_json(&*control.settings()),
        ("PUT" | "POST" | "PATCH", "/settings") => {
            let patch: serde_json::Value = match serde_json::from_slice(body) {
                Ok(patch) => patch,
                Err(e) => return (400, error_body(&format!("bad JSON: {e}"))),
            };
            match control.patch(&patch) {
                Ok(settings) => to_json(&*settings),
                Err(e) => (400, error_body(&e.to_string())),
            }
        }
        ("POST", "/partition") => {
            control.partition();
            to_json(&*control.settings())
        }
        ("POST", "/heal") => {
            control.heal();
            to_json(&*control.settings())
        }
        ("GET", "/stats") => to_json(&control.stats().snapshot()),
        (_, "/settings" | "/partition" | "/heal" | "/stats") => {
            (405, error_body("method not allowed"))
        }
        _ => (404, error_body("no such path")),
    }
}

async fn handle(mut stream: TcpStream, control: &WanControl) {
    let (status, body) = match read_request(&mut stream).await {
        Ok(request) => respond(control, &request.method, &request.path, &request.body),
        Err(ReadError::Io) => return,
        Err(ReadError::TooLarge) => (413, error_body("request too large")),
        Err(ReadError::Malformed(why)) => (400, error_body(why)),
    };
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        _ => "Internal Server Error",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// A client of a [`ControlServer`] (blocking std I/O, so fault injectors in plain threads can
/// use it too).
#[derive(Debug, Clone)]
pub struct ControlClient {
    addr: SocketAddr,
}

/// Largest response a client reads.
const MAX_RESPONSE_BYTES: u64 = 1 << 20;

impl ControlClient {
    pub fn new(addr: SocketAddr) -> ControlClient {
        ControlClient { addr }
    }

    /// Sends one request; returns the status and body. Non-200 answers are errors.
    pub fn request(&self, method: &str, path: &str, body: &str) -> Result<String, WanError> {
        use std::io::{Read, Write};
        let fail = |what: &str, e: std::io::Error| WanError::Control(format!("{what}: {e}"));
        let mut stream = std::net::TcpStream::connect_timeout(&self.addr, REQUEST_TIMEOUT)
            .map_err(|e| fail("connect", e))?;
        stream
            .set_read_timeout(Some(REQUEST_TIMEOUT))
            .map_err(|e| fail("set timeout", e))?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        stream
            .write_all(request.as_bytes())
            .map_err(|e| fail("send", e))?;
        let mut response = Vec::new();
        stream
            .take(MAX_RESPONSE_BYTES)
            .read_to_end(&mut response)
            .map_err(|e| fail("receive", e))?;
        let text = String::from_utf8_lossy(&response);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| WanError::Control("response without a head".to_string()))?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| WanError::Control(format!("bad status line in {head:?}")))?;
        if status != 200 {
            return Err(WanError::Control(format!(
                "{method} {path}: {status} {body}"
            )));
        }
        Ok(body.to_string())
    }

    /// Applies a partial settings update.
    pub fn patch(&self, patch: &serde_json::Value) -> Result<(), WanError> {
        self.request("PUT", "/settings", &patch.to_string())
            .map(|_| ())
    }

    pub fn partition(&self) -> Result<(), WanError> {
        self.request("POST", "/partition", "").map(|_| ())
    }

    pub fn heal(&self) -> Result<(), WanError> {
        self.request("POST", "/heal", "").map(|_| ())
    }

    pub fn stats(&self) -> Result<StatsSnapshot, WanError> {
        let body = self.request("GET", "/stats", "")?;
        serde_json::from_str(&body).map_err(|e| WanError::Control(format!("bad stats JSON: {e}")))
    }
}
