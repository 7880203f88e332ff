//! The admin HTTP API of a Strait broker (`--admin-listen`, default 127.0.0.1:9644): JSON
//! endpoints to create, inspect, pause, resume and delete links and to inspect mirror topics,
//! plus `/metrics` (Prometheus) and `/health`. The `strait link` and `strait mirror` commands
//! are its clients.
//!
//! A deliberately small HTTP/1.1 server written on tokio (no HTTP framework, for build time):
//! keep-alive and pipelining, request bodies framed by `Content-Length` only, a 16 KiB header
//! block, a 1 MiB body and a 10 s limit to read a request (which is also the idle timeout of a
//! kept-alive connection). A request it cannot frame gets a JSON error and the connection is
//! closed; nothing a client sends can panic it.
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | `/v1/links` | `[LinkStatus]` |
//! | POST | `/v1/links` (body `LinkSpec`) | 201 `LinkStatus` |
//! | GET | `/v1/links/{name}` | `LinkStatus` |
//! | POST | `/v1/links/{name}/pause`, `/resume` | `{"ok":true}` |
//! | DELETE | `/v1/links/{name}` | `{"ok":true}` |
//! | GET | `/v1/mirrors` | `[MirrorStatus]` |
//! | GET | `/v1/mirrors/{topic}` | `MirrorStatus` (404 if not a mirror topic) |
//! | GET | `/metrics` | Prometheus text format 0.0.4 |
//! | GET | `/health` | `{"ok":true}` |
//!
//! Errors are `{"error": "<message>"}` with 404 (no such link or route), 405 (wrong method),
//! 409 (link exists), 400 (invalid definition or JSON, malformed request), 413/431 (body or
//! headers too large), 408 (request not received in time) or 500.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::model::{ControlError, LinkControl, LinkSpec};

/// Largest request header block (request line and headers) accepted.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Time allowed to receive one whole request; also how long an idle connection is kept.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; further clients wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 64;
/// Headers accepted per request.
const MAX_HEADERS: usize = 100;

/// Renders the Prometheus exposition served at `/metrics`.
pub type MetricsRenderer = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves the admin API on `listener` until `shutdown` resolves; connections still open then
/// are closed. An error accepting one connection is logged, not fatal.
pub async fn serve(
    listener: TcpListener,
    control: Arc<dyn LinkControl>,
    metrics: MetricsRenderer,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let local = listener
        .local_addr()
        .context("admin listener has no local address")?;
    tracing::info!(%local, "admin API listening");
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            slot = slots.clone().acquire_owned() => {
                let Ok(slot) = slot else { break };
                tokio::select! {
                    () = &mut shutdown => break,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, peer)) => {
                            let control = control.clone();
                            let metrics = metrics.clone();
                            connections.spawn(async move {
                                if let Err(error) = serve_connection(stream, control, metrics).await {
                                    tracing::debug!(%peer, %error, "admin connection ended");
                                }
                                drop(slot);
                            });
                        }
                        Err(error) => {
                            // E.g. out of file descriptors: back off instead of spinning.
                            tracing::warn!(%error, "admin API accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    },
                }
            }
        }
    }
    connections.shutdown().await;
    tracing::info!(%local, "admin API stopped");
    Ok(())
}

/// A parsed request line and the headers the server acts on.
#[derive(Debug, PartialEq)]
struct RequestHead {
    method: String,
    /// The path without its query string, not yet percent-decoded.
    path: String,
    content_length: usize,
    /// Whether the connection stays open after the answer.
    keep_alive: bool,
    expect_continue: bool,
}

/// Why a request could not be framed; each maps to a status and closes the connection.
#[derive(Debug, thiserror::Error, PartialEq)]
enum RequestError {
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("request header block larger than {MAX_HEADER_BYTES} bytes")]
    HeadersTooLarge,
    #[error("request body larger than {MAX_BODY_BYTES} bytes")]
    BodyTooLarge,
    #[error("request bodies must be framed by Content-Length")]
    LengthRequired,
    #[error("request not received within {} s", READ_TIMEOUT.as_secs())]
    Timeout,
}

impl RequestError {
    fn status(&self) -> u16 {
        match self {
            RequestError::Malformed(_) => 400,
            RequestError::HeadersTooLarge => 431,
            RequestError::BodyTooLarge => 413,
            RequestError::LengthRequired => 411,
            RequestError::Timeout => 408,
        }
    }
}

/// Finds the end of the header block (the index just past `\r\n\r\n`).
fn header_block_end(buffer: &[u8]) -> Option<usize> {
    buffer
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .map(|start| start + 4)
}

/// Parses a complete header block (up to and including the blank line).
fn parse_head(block: &[u8]) -> Result<RequestHead, RequestError> {
    let malformed = |what: &str| RequestError::Malformed(what.to_string());
    let text = std::str::from_utf8(block).map_err(|_| malformed("header block is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("request line is not `METHOD target HTTP/1.x`"));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(malformed("bad method"));
    }
    if !target.starts_with('/') {
        return Err(malformed("request target must be an absolute path"));
    }
    let http_1_1 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return Err(malformed("only HTTP/1.0 and HTTP/1.1 are supported")),
    };
    let path = target.split(['?', '#']).next().unwrap_or_default();

    let mut content_length: Option<usize> = None;
    let mut keep_alive = http_1_1;
    let mut expect_continue = false;
    let mut header_count = 0;
    for line in lines {
        if line.is_empty() {
            continue; // the blank line(s) ending the block
        }
        header_count += 1;
        if header_count > MAX_HEADERS {
            return Err(RequestError::HeadersTooLarge);
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| malformed("header line without a colon"))?;
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace()) {
            return Err(malformed("bad header name"));
        }
        let value = value.trim_matches([' ', '\t']);
        if name.eq_ignore_ascii_case("content-length") {
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(malformed("bad Content-Length"));
            }
            // Too many digits to fit: certainly too large.
            let length: usize = value.parse().map_err(|_| RequestError::BodyTooLarge)?;
            if content_length.is_some_and(|previous| previous != length) {
                return Err(malformed("conflicting Content-Length headers"));
            }
            content_length = Some(length);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(RequestError::LengthRequired);
        } else if name.eq_ignore_ascii_case("connection") {
            for option in value.split(',').map(str::trim) {
                if option.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if option.eq_ignore_ascii_case("keep-alive") && !http_1_1 {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("expect") && value.eq_ignore_ascii_case("100-continue")
        {
            expect_continue = true;
        }
    }
    let content_length = content_length.unwrap_or(0);
    if content_length > MAX_BODY_BYTES {
        return Err(RequestError::BodyTooLarge);
    }
    Ok(RequestHead {
        method: method.to_string(),
        path: path.to_string(),
        content_length,
        keep_alive,
        expect_continue,
    })
}

/// An answer: status, content type, body, and extra headers.
struct Response {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    allow: Option<&'static str>,
}

impl Response {
    fn json(status: u16, value: &impl Serialize) -> Response {
        match serde_json::to_vec(value) {
            Ok(body) => Response {
                status,
                content_type: "application/json",
                body,
                allow: None,
            },
            Err(error) => Response::error(500, &format!("cannot encode the answer: {error}")),
        }
    }

    fn ok() -> Response {
        Response::json(200, &serde_json::json!({ "ok": true }))
    }

    fn error(status: u16, message: &str) -> Response {
        let body = serde_json::json!({ "error": message })
            .to_string()
            .into_bytes();
        Response {
            status,
            content_type: "application/json",
            body,
            allow: None,
        }
    }

    fn method_not_allowed(method: &str, allow: &'static str) -> Response {
        let mut response = Response::error(405, &format!("method {method} not allowed here"));
        response.allow = Some(allow);
        response
    }

    fn control_error(error: ControlError) -> Response {
        let status = match error {
            ControlError::NotFound(_) => 404,
            ControlError::AlreadyExists(_) => 409,
            ControlError::Invalid(_) => 400,
            ControlError::Internal(_) => 500,
            ControlError::Unavailable(_) => 503,
            ControlError::Conflict(_) => 409,
            ControlError::BadRequest(_) => 400,
        };
        Response::error(status, &error.to_string())
    }

    /// The bytes on the wire: status line, headers and body.
    fn encode(&self, keep_alive: bool) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {}\r\n",
            self.status,
            reason_phrase(self.status),
            self.content_type,
            self.body.len(),
            if keep_alive { "keep-alive" } else { "close" },
        );
        if let Some(allow) = self.allow {
            head.push_str("Allow: ");
            head.push_str(allow);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Reads one request from `stream` into `buffer` (which may already hold pipelined bytes).
/// Returns `Ok(None)` on a clean end of stream between requests; on success the request's
/// bytes are removed from `buffer`, leaving any pipelined successor.
async fn read_request(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
) -> Result<Option<(RequestHead, Vec<u8>)>, RequestError> {
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(end) = header_block_end(buffer) {
            break end;
        }
        if buffer.len() >= MAX_HEADER_BYTES {
            return Err(RequestError::HeadersTooLarge);
        }
        let read = stream
            .read(&mut chunk)
            .await
            .map_err(|e| RequestError::Malformed(format!("read failed: {e}")))?;
        if read == 0 {
            if buffer.iter().all(|b| b.is_ascii_whitespace()) {
                return Ok(None);
            }
            return Err(RequestError::Malformed(
                "connection closed mid-request".into(),
            ));
        }
        buffer.extend_from_slice(chunk.get(..read).unwrap_or_default());
    };
    if head_end > MAX_HEADER_BYTES {
        return Err(RequestError::HeadersTooLarge);
    }
    let head_block = buffer.get(..head_end).unwrap_or_default();
    // Tolerate blank lines before a request line (RFC 9112 §2.2).
    let start = head_block
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(head_end);
    let head = parse_head(head_block.get(start..).unwrap_or_default())?;

    if head.expect_continue && head.content_length > 0 && buffer.len() < head_end + 1 {
        stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .map_err(|e| RequestError::Malformed(format!("write failed: {e}")))?;
    }
    let request_end = head_end + head.content_length;
    while buffer.len() < request_end {
        let read = stream
            .read(&mut chunk)
            .await
            .map_err(|e| RequestError::Malformed(format!("read failed: {e}")))?;
        if read == 0 {
            return Err(RequestError::Malformed("connection closed mid-body".into()));
        }
        // Bytes past this request belong to a pipelined successor: they stay in `buffer`.
        buffer.extend_from_slice(chunk.get(..read).unwrap_or_default());
    }
    let body = buffer
        .get(head_end..request_end)
        .unwrap_or_default()
        .to_vec();
    buffer.drain(..request_end);
    Ok(Some((head, body)))
}

/// Serves requests on one connection until the client closes it, asks to close it, idles past
/// the timeout, or sends something unframeable.
async fn serve_connection(
    mut stream: TcpStream,
    control: Arc<dyn LinkControl>,
    metrics: MetricsRenderer,
) -> std::io::Result<()> {
    let mut buffer = Vec::with_capacity(4096);
    loop {
        let idle = buffer.is_empty();
        let request = match tokio::time::timeout(
            READ_TIMEOUT,
            read_request(&mut stream, &mut buffer),
        )
        .await
        {
            Ok(result) => result,
            // An idle kept-alive connection just goes away; a half-sent request hears why.
            Err(_) if idle && buffer.is_empty() => return Ok(()),
            Err(_) => Err(RequestError::Timeout),
        };
        let (head, body) = match request {
            Ok(Some(request)) => request,
            Ok(None) => return Ok(()),
            Err(error) => {
                let response = Response::error(error.status(), &error.to_string());
                stream.write_all(&response.encode(false)).await?;
                stream.shutdown().await?;
                return Ok(());
            }
        };
        let response = route(&head, body, &control, &metrics).await;
        stream.write_all(&response.encode(head.keep_alive)).await?;
        if !head.keep_alive {
            stream.shutdown().await?;
            return Ok(());
        }
    }
}

/// Decodes `%XX` escapes of one path segment.
fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while let Some(&byte) = bytes.get(index) {
        if byte == b'%' {
            let hex = bytes.get(index + 1..index + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            decoded.push(u8::from_str_radix(hex, 16).ok()?);
            index += 3;
        } else {
            decoded.push(byte);
            index += 1;
        }
    }
    String::from_utf8(decoded).ok()
}

/// Runs a (possibly blocking: the link store fsyncs) control call off the async workers.
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Response> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|error| Response::error(500, &format!("control call failed: {error}")))
}

/// Answers one request.
async fn route(
    head: &RequestHead,
    body: Vec<u8>,
    control: &Arc<dyn LinkControl>,
    metrics: &MetricsRenderer,
) -> Response {
    let Some(segments) = head
        .path
        .split('/')
        .filter(|segment| !segment.is_empty())
        .map(percent_decode)
        .collect::<Option<Vec<String>>>()
    else {
        return Response::error(400, "malformed percent-encoding in the path");
    };
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = head.method.as_str();
    let control = control.clone();
    let answer = match (segments.as_slice(), method) {
        (["health"], "GET") => Ok(Response::ok()),
        (["health"], _) => Ok(Response::method_not_allowed(method, "GET")),

        (["metrics"], "GET") => {
            let metrics = metrics.clone();
            blocking(move || metrics()).await.map(|text| Response {
                status: 200,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: text.into_bytes(),
                allow: None,
            })
        }
        (["metrics"], _) => Ok(Response::method_not_allowed(method, "GET")),

        (["v1", "links"], "GET") => blocking(move || control.list_links())
            .await
            .map(|links| Response::json(200, &links)),
        (["v1", "links"], "POST") => {
            match serde_json::from_slice::<LinkSpec>(&body) {
                Err(error) => Ok(Response::error(
                    400,
                    &format!("invalid link definition JSON: {error}"),
                )),
                Ok(spec) => blocking(move || control.create_link(spec))
                    .await
                    .map(|result| match result {
                        Ok(status) => Response::json(201, &status),
                        Err(error) => Response::control_error(error),
                    }),
            }
        }
        (["v1", "links"], _) => Ok(Response::method_not_allowed(method, "GET, POST")),

        (["v1", "links", name], "GET") => {
            let name = name.to_string();
            blocking(move || control.link_status(&name))
                .await
                .map(|result| match result {
                    Ok(status) => Response::json(200, &status),
                    Err(error) => Response::control_error(error),
                })
        }
        (["v1", "links", name], "DELETE") => {
            let name = name.to_string();
            blocking(move || control.delete_link(&name))
                .await
                .map(ok_or_error)
        }
        (["v1", "links", _], _) => Ok(Response::method_not_allowed(method, "GET, DELETE")),

        (["v1", "links", name, action @ ("pause" | "resume")], "POST") => {
            let name = name.to_string();
            let pause = *action == "pause";
            blocking(move || {
                if pause {
                    control.pause_link(&name)
                } else {
                    control.resume_link(&name)
                }
            })
            .await
            .map(ok_or_error)
        }
        (["v1", "links", _, "pause" | "resume"], _) => {
            Ok(Response::method_not_allowed(method, "POST"))
        }

        (["v1", "mirrors"], "GET") => blocking(move || control.mirrors())
            .await
            .map(|mirrors| Response::json(200, &mirrors)),
        (["v1", "mirrors"], _) => Ok(Response::method_not_allowed(method, "GET")),

        (["v1", "mirrors", topic], "GET") => {
            let topic = topic.to_string();
            blocking(move || control.mirrors()).await.map(|mirrors| {
                match mirrors.into_iter().find(|mirror| mirror.topic == topic) {
                    Some(mirror) => Response::json(200, &mirror),
                    None => Response::error(404, &format!("{topic:?} is not a mirror topic")),
                }
            })
        }
        (["v1", "mirrors", _], _) => Ok(Response::method_not_allowed(method, "GET")),

        (["v1", "mirrors", topic, "partitions", partition, "resolve"], "POST") => {
            let Ok(partition) = partition.parse::<i32>() else {
                return Response::error(400, &format!("partition {partition:?} is not a number"));
            };
            match serde_json::from_slice::<ResolveBody>(&body) {
                Err(error) => Ok(Response::error(
                    400,
                    &format!("the body must be {{\"choice\": \"reseed\" | \"truncate\"}}: {error}"),
                )),
                Ok(request) => {
                    let topic = topic.to_string();
                    blocking(move || control.resolve_mirror(&topic, partition, request.choice))
                        .await
                        .map(|result| match result {
                            Ok(outcome) => Response::json(200, &outcome),
                            Err(error) => Response::control_error(error),
                        })
                }
            }
        }
        (["v1", "mirrors", _, "partitions", _, "resolve"], _) => {
            Ok(Response::method_not_allowed(method, "POST"))
        }

        (["v1", "mirrors", topic, "verify"], "POST") => {
            match serde_json::from_slice::<VerifyBody>(&body) {
                Err(error) => Ok(Response::error(
                    400,
                    &format!(
                        "the body must be {{\"partition\": P?, \"from\": O?, \"to\": O?}}: {error}"
                    ),
                )),
                Ok(request) => {
                    let topic = topic.to_string();
                    blocking(move || {
                        control.verify_mirror(
                            &topic,
                            request.partition,
                            request.from.unwrap_or(0),
                            request.to.unwrap_or(i64::MAX),
                        )
                    })
                    .await
                    .map(|result| match result {
                        Ok(report) => Response::json(200, &report),
                        Err(error) => Response::control_error(error),
                    })
                }
            }
        }
        (["v1", "mirrors", _, "verify"], _) => Ok(Response::method_not_allowed(method, "POST")),

        _ => Ok(Response::error(
            404,
            &format!("no route for {method} {}", head.path),
        )),
    };
    answer.unwrap_or_else(|response| response)
}

/// Body of `POST /v1/mirrors/{topic}/partitions/{p}/resolve`.
#[derive(serde::Deserialize)]
struct ResolveBody {
    choice: crate::model::ResolveChoice,
}

/// Body of `POST /v1/mirrors/{topic}/verify`: everything optional (all partitions, whole log).
#[derive(serde::Deserialize)]
struct VerifyBody {
    #[serde(default)]
    partition: Option<i32>,
    #[serde(default)]
    from: Option<i64>,
    #[serde(default)]
    to: Option<i64>,
}

fn ok_or_error(result: Result<(), ControlError>) -> Response {
    match result {
        Ok(()) => Response::ok(),
        Err(error) => Response::control_error(error),
    }
}

/// A fake link manager for tests of the HTTP layer and of the CLI that talks to it.
#[cfg(test)]
pub(crate) mod fake {
    use std::sync::Mutex;

    use crate::model::{
        ControlError, LinkControl, LinkSpec, LinkState, LinkStatus, MirrorStatus, PartitionStatus,
    };

    /// Keeps links in memory; every link mirrors its named topics with two partitions each.
    #[derive(Default)]
    pub(crate) struct FakeControl {
        links: Mutex<Vec<LinkStatus>>,
    }

    fn lock(control: &FakeControl) -> std::sync::MutexGuard<'_, Vec<LinkStatus>> {
        control
            .links
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    impl LinkControl for FakeControl {
        fn list_links(&self) -> Vec<LinkStatus> {
            lock(self).clone()
        }

        fn link_status(&self, name: &str) -> Result<LinkStatus, ControlError> {
            lock(self)
                .iter()
                .find(|l| l.spec.name == name)
                .cloned()
                .ok_or_else(|| ControlError::NotFound(name.to_string()))
        }

        fn create_link(&self, spec: LinkSpec) -> Result<LinkStatus, ControlError> {
            if spec.name.is_empty() {
                return Err(ControlError::Invalid("empty name".to_string()));
            }
            if spec.name == "explode" {
                return Err(ControlError::Internal("disk on fire".to_string()));
            }
            let mut links = lock(self);
            if links.iter().any(|l| l.spec.name == spec.name) {
                return Err(ControlError::AlreadyExists(spec.name));
            }
            let partitions = spec
                .topics
                .names
                .iter()
                .flat_map(|topic| {
                    (0..2).map(move |partition| PartitionStatus {
                        topic: topic.clone(),
                        partition,
                        source_end_offset: 100,
                        destination_end_offset: 90 + i64::from(partition),
                        lag_records: 10 - i64::from(partition),
                        lag_bytes: 1000,
                        lag_ms: 42,
                        state: "active".to_string(),
                        bytes_per_sec: 2_500_000.0,
                        records_per_sec: 100.0,
                        divergence: None,
                        gap_offsets: 0,
                    })
                })
                .collect();
            let status = LinkStatus {
                state: LinkState::Active,
                source_cluster_id: Some("source-cluster".to_string()),
                last_error: Some("earlier hiccup".to_string()),
                connects: 2,
                source_bytes: 4000,
                wire_bytes: 1000,
                records: 180,
                bytes_per_sec: 5_000_000.0,
                mirror_topics: spec.topics.names.clone(),
                partitions,
                spec,
            };
            links.push(status.clone());
            Ok(status)
        }

        fn pause_link(&self, name: &str) -> Result<(), ControlError> {
            let mut links = lock(self);
            let link = links
                .iter_mut()
                .find(|l| l.spec.name == name)
                .ok_or_else(|| ControlError::NotFound(name.to_string()))?;
            link.state = LinkState::Paused;
            link.spec.paused = true;
            Ok(())
        }

        fn resume_link(&self, name: &str) -> Result<(), ControlError> {
            let mut links = lock(self);
            let link = links
                .iter_mut()
                .find(|l| l.spec.name == name)
                .ok_or_else(|| ControlError::NotFound(name.to_string()))?;
            link.state = LinkState::Connecting(None);
            link.spec.paused = false;
            Ok(())
        }

        fn delete_link(&self, name: &str) -> Result<(), ControlError> {
            let mut links = lock(self);
            let before = links.len();
            links.retain(|l| l.spec.name != name);
            if links.len() == before {
                return Err(ControlError::NotFound(name.to_string()));
            }
            Ok(())
        }

        fn mirrors(&self) -> Vec<MirrorStatus> {
            lock(self)
                .iter()
                .flat_map(|link| {
                    link.mirror_topics.iter().map(|topic| {
                        let partitions: Vec<PartitionStatus> = link
                            .partitions
                            .iter()
                            .filter(|p| &p.topic == topic)
                            .cloned()
                            .collect();
                        MirrorStatus {
                            topic: topic.clone(),
                            link: link.spec.name.clone(),
                            lag_records: partitions.iter().map(|p| p.lag_records).sum(),
                            partitions,
                        }
                    })
                })
                .collect()
        }

        fn resolve_mirror(
            &self,
            topic: &str,
            partition: i32,
            _choice: crate::model::ResolveChoice,
        ) -> Result<crate::model::ResolveOutcome, ControlError> {
            Err(ControlError::Conflict(format!(
                "{topic}-{partition} is not diverged: there is nothing to resolve"
            )))
        }

        fn verify_mirror(
            &self,
            topic: &str,
            _partition: Option<i32>,
            _from: i64,
            _to: i64,
        ) -> Result<crate::model::VerifyReport, ControlError> {
            Err(ControlError::Unavailable(format!(
                "the link of {topic} is not connected"
            )))
        }
    }

    /// Starts an admin server with a fresh fake on an ephemeral 127.0.0.1 port; the server
    /// stops when the returned sender is dropped or fired.
    pub(crate) async fn start() -> (String, tokio::sync::oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let control = std::sync::Arc::new(FakeControl::default());
        let metrics_control = control.clone();
        let metrics: super::MetricsRenderer = std::sync::Arc::new(move || {
            let mut out = String::new();
            crate::metrics::render_links(&metrics_control.list_links(), &mut out);
            out
        });
        tokio::spawn(super::serve(listener, control, metrics, async move {
            let _ = stopped.await;
        }));
        (addr, stop)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    /// Reads one response (status, headers, body) framed by its Content-Length.
    async fn read_response(stream: &mut TcpStream, pending: &mut Vec<u8>) -> (u16, String, String) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = header_block_end(pending) {
                let head = String::from_utf8(pending[..end].to_vec()).unwrap();
                let status: u16 = head[9..12].parse().unwrap();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap();
                if pending.len() >= end + length {
                    let body = String::from_utf8(pending[end..end + length].to_vec()).unwrap();
                    pending.drain(..end + length);
                    return (status, head, body);
                }
            }
            assert!(Instant::now() < deadline, "no complete response in time");
            let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
                .await
                .unwrap()
                .unwrap();
            assert!(read > 0, "server closed early; got {pending:?}");
            pending.extend_from_slice(&chunk[..read]);
        }
    }

    /// Sends raw bytes on a new connection and returns the first response.
    async fn raw(addr: &str, request: &[u8]) -> (u16, String, String) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        read_response(&mut stream, &mut Vec::new()).await
    }

    async fn request(addr: &str, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
        let text = format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let (status, _, body) = raw(addr, text.as_bytes()).await;
        (status, serde_json::from_str(&body).unwrap())
    }

    const SPEC: &str =
        r#"{"name":"east","source_addr":"127.0.0.1:9700","topics":{"names":["orders"]}}"#;

    #[tokio::test]
    async fn link_lifecycle_over_http() {
        let (addr, _stop) = fake::start().await;
        let (status, body) = request(&addr, "GET", "/v1/links", "").await;
        assert_eq!((status, body), (200, serde_json::json!([])));

        let (status, body) = request(&addr, "POST", "/v1/links", SPEC).await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["spec"]["name"], "east");
        assert_eq!(body["spec"]["streams"], 8, "model defaults applied");
        assert_eq!(body["state"], "active");

        let (status, body) = request(&addr, "POST", "/v1/links", SPEC).await;
        assert_eq!(status, 409);
        assert!(body["error"].as_str().unwrap().contains("already exists"));

        let (status, body) = request(&addr, "GET", "/v1/links/east", "").await;
        assert_eq!(status, 200);
        assert_eq!(body["partitions"].as_array().unwrap().len(), 2);

        let (status, body) = request(&addr, "POST", "/v1/links/east/pause", "").await;
        assert_eq!((status, body), (200, serde_json::json!({"ok": true})));
        let (_, body) = request(&addr, "GET", "/v1/links/east", "").await;
        assert_eq!(body["state"], "paused");
        let (status, _) = request(&addr, "POST", "/v1/links/east/resume", "").await;
        assert_eq!(status, 200);

        let (status, body) = request(&addr, "GET", "/v1/mirrors", "").await;
        assert_eq!(status, 200);
        assert_eq!(body[0]["topic"], "orders");
        let (status, body) = request(&addr, "GET", "/v1/mirrors/orders", "").await;
        assert_eq!(
            (status, body["link"].clone()),
            (200, serde_json::json!("east"))
        );
        let (status, _) = request(&addr, "GET", "/v1/mirrors/nope", "").await;
        assert_eq!(status, 404);

        let (status, _) = request(&addr, "DELETE", "/v1/links/east", "").await;
        assert_eq!(status, 200);
        let (status, body) = request(&addr, "GET", "/v1/links/east", "").await;
        assert_eq!(status, 404);
        assert!(body["error"].as_str().unwrap().contains("no link named"));
        let (status, _) = request(&addr, "POST", "/v1/links/east/pause", "").await;
        assert_eq!(status, 404);
    }

    #[tokio::test]
    async fn error_statuses() {
        let (addr, _stop) = fake::start().await;
        let (status, body) = request(&addr, "POST", "/v1/links", "{not json").await;
        assert_eq!(status, 400);
        assert!(body["error"].as_str().unwrap().contains("JSON"));
        let (status, _) = request(&addr, "POST", "/v1/links", r#"{"name":""}"#).await;
        assert_eq!(status, 400, "missing fields");
        let empty_name = r#"{"name":"","source_addr":"a:1","topics":{}}"#;
        let (status, _) = request(&addr, "POST", "/v1/links", empty_name).await;
        assert_eq!(status, 400, "ControlError::Invalid");
        let explode = r#"{"name":"explode","source_addr":"a:1","topics":{}}"#;
        let (status, body) = request(&addr, "POST", "/v1/links", explode).await;
        assert_eq!(
            (status, body["error"].clone()),
            (500, serde_json::json!("disk on fire"))
        );
        let (status, _) = request(&addr, "GET", "/v2/nothing", "").await;
        assert_eq!(status, 404);
        let (status, _, _) = raw(
            &addr,
            b"PUT /v1/links HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status, 405);
        let (status, head, _) = raw(&addr, b"PATCH /v1/links/x/pause HTTP/1.1\r\n\r\n").await;
        assert_eq!(status, 405);
        assert!(head.contains("Allow: POST\r\n"));
        let (status, body) = request(&addr, "GET", "/health", "").await;
        assert_eq!((status, body), (200, serde_json::json!({"ok": true})));
    }

    #[tokio::test]
    async fn malformed_requests_get_json_errors() {
        let (addr, _stop) = fake::start().await;
        let cases: [(&[u8], u16); 8] = [
            (b"GARBAGE\r\n\r\n", 400),
            (b"get /health HTTP/1.1\r\n\r\n", 400),
            (b"GET /health HTTP/2.0\r\n\r\n", 400),
            (b"GET /health HTTP/1.1\r\nNoColon\r\n\r\n", 400),
            (
                b"POST /v1/links HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
                400,
            ),
            (
                b"POST /v1/links HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
                400,
            ),
            (
                b"POST /v1/links HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                411,
            ),
            (
                b"POST /v1/links HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                413,
            ),
        ];
        for (request, expected) in cases {
            let (status, head, body) = raw(&addr, request).await;
            assert_eq!(status, expected, "{}", String::from_utf8_lossy(request));
            assert!(head.contains("Connection: close"));
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert!(json["error"].is_string());
        }
        let too_big_body = format!(
            "POST /v1/links HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY_BYTES + 1
        );
        assert_eq!(raw(&addr, too_big_body.as_bytes()).await.0, 413);
        let mut huge_header = b"GET /health HTTP/1.1\r\nX-Filler: ".to_vec();
        huge_header.extend(std::iter::repeat_n(b'a', MAX_HEADER_BYTES));
        assert_eq!(raw(&addr, &huge_header).await.0, 431);
        let (status, _, _) = raw(&addr, b"GET /v1/links/%zz HTTP/1.1\r\n\r\n").await;
        assert_eq!(status, 400);
        // The server is still fine.
        assert_eq!(request(&addr, "GET", "/health", "").await.0, 200);
    }

    #[tokio::test]
    async fn keep_alive_pipelining_and_metrics() {
        let (addr, _stop) = fake::start().await;
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        let create = format!(
            "POST /v1/links HTTP/1.1\r\nContent-Length: {}\r\n\r\n{SPEC}",
            SPEC.len()
        );
        // Three requests in one write: the server must answer each, in order.
        let pipelined = format!(
            "{create}GET /v1/links/east?verbose=1 HTTP/1.1\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n"
        );
        stream.write_all(pipelined.as_bytes()).await.unwrap();
        let mut pending = Vec::new();
        let (status, head, _) = read_response(&mut stream, &mut pending).await;
        assert_eq!(status, 201);
        assert!(head.contains("Connection: keep-alive"));
        let (status, _, body) = read_response(&mut stream, &mut pending).await;
        assert_eq!(status, 200);
        assert!(body.contains("\"name\":\"east\""));
        let (status, head, body) = read_response(&mut stream, &mut pending).await;
        assert_eq!(status, 200);
        assert!(head.contains("Content-Type: text/plain; version=0.0.4"));
        assert!(body.contains("strait_link_up{link=\"east\"} 1\n"), "{body}");

        // A body split across writes, with Expect: 100-continue.
        let head = format!(
            "POST /v1/links HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            SPEC.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut interim = [0u8; 25];
        stream.read_exact(&mut interim).await.unwrap();
        assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
        stream.write_all(&SPEC.as_bytes()[..10]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        stream.write_all(&SPEC.as_bytes()[10..]).await.unwrap();
        let (status, _, _) = read_response(&mut stream, &mut pending).await;
        assert_eq!(status, 409);
    }

    #[tokio::test]
    async fn shutdown_stops_the_server() {
        let (addr, stop) = fake::start().await;
        let mut idle = TcpStream::connect(&addr).await.unwrap();
        assert_eq!(request(&addr, "GET", "/health", "").await.0, 200);
        stop.send(()).unwrap();
        // The open connection is closed and new ones are refused, within bounded time.
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut byte))
            .await
            .unwrap();
        assert!(matches!(read, Ok(0) | Err(_)));
        let mut refused = false;
        for _ in 0..50 {
            if TcpStream::connect(&addr).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(refused, "listener still accepting after shutdown");
    }

    #[test]
    fn head_parsing() {
        let head = parse_head(
            b"GET /a?b=c HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            head,
            RequestHead {
                method: "GET".into(),
                path: "/a".into(),
                content_length: 3,
                keep_alive: true,
                expect_continue: false,
            }
        );
        let head = parse_head(b"GET / HTTP/1.1\r\nconnection: Close\r\n\r\n").unwrap();
        assert!(!head.keep_alive);
        assert!(parse_head(b"GET  / HTTP/1.1\r\n\r\n").is_err());
        assert_eq!(percent_decode("a%20b").as_deref(), Some("a b"));
        assert_eq!(percent_decode("a%2"), None);
        assert_eq!(percent_decode("%ff"), None, "not UTF-8");
    }
}
