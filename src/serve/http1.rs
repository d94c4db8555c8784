//! The HTTP/1.1 transport of `serve`: a listener that owns every socket it accepts, so that no
//! client can hold the server's resources for longer than the limits below say.
//!
//! Why not a crate: tiny_http 0.12 (used before) gives no access to its sockets. Its
//! connection threads read headers with no timeout and keep a connection forever, so a few
//! clients that open connections and send nothing (slow-loris) pinned its threads for good,
//! and the only way to refuse a body that claimed 10^18 bytes without its drain allocating
//! them was to leak the connection on purpose. Here every limit is enforced on the socket:
//! - at most `max_connections` open connections; one more is answered 503 and closed at once;
//! - a request's head (request line and headers, at most `max_header_bytes`, at most
//!   `MAX_HEADERS` lines) must arrive within `header_timeout` of its first byte, else 408 and
//!   close; an idle keep-alive connection is closed after `idle_timeout`;
//! - a `Content-Length` above `max_body_bytes` is answered 413 before a byte of the body is
//!   read, and the connection closed (dropping the socket discards the rest); the body must
//!   arrive within `body_timeout` of the head, else 408;
//! - a response must be taken by the client within `write_timeout` (the whole response, not
//!   each write), else the connection is dropped;
//! - after a refusal the socket is closed gently: writes shut down, then up to 64 MiB / 2 s of
//!   what the client still sends is read and discarded, so it gets the answer, not a reset;
//! - a `HEAD` request gets the head of the response only;
//! - a malformed head is answered 400 (505 for an HTTP version other than 1.0 / 1.1, 501 for a
//!   `Transfer-Encoding`: every client of `serve` sends `Content-Length`) and the connection
//!   closed. Nothing a client sends can make this module panic (`parse_head` is fuzzed) or
//!   keep a socket open past the limits: a socket is closed when its connection thread ends,
//!   by ownership, whatever path it ends on.
//!
//! The handler runs on the connection's thread with the whole body in hand, so it never waits
//! on a socket. Keep-alive follows HTTP/1.1 (`Connection: close` ends it; HTTP/1.0 needs
//! `Connection: keep-alive`), and pipelined requests are read from what is left in the buffer.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Most header lines in one request head (431 beyond).
pub const MAX_HEADERS: usize = 100;

/// How often a blocked read wakes up to check the server's stop flag.
const POLL: Duration = Duration::from_millis(200);

/// After a refusal, how long and how much of the client's unread input is read and
/// discarded before the socket is closed: closing with unread input makes the kernel send a
/// reset, and a client still writing its body would see that instead of the answer.
/// The time is the bound that matters; the byte cap is far above a refused body (a cap of
/// 1 MiB left a 3 MB body's tail unread, and the client got a broken pipe under load).
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 64 << 20;

/// `now + d`, saturating: a limit too large to add means "practically never".
fn after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d).or_else(|| now.checked_add(Duration::from_secs(1 << 32))).unwrap_or(now)
}

/// What the transport lets one client take.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
}

impl Default for Limits {
    /// `max_connections` far above what a generation fleet's `concurrency` or the HTTP
    /// judge's parallel requests open; a head is a few hundred bytes, so 10 s is generous for
    /// a real client and short for one that stalls on purpose.
    fn default() -> Self {
        Limits {
            max_connections: 64,
            max_header_bytes: 16 << 10,
            max_body_bytes: 1 << 20,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
        }
    }
}

/// One request, body included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The request target as sent: path and query (`/v1/completions?x=1`).
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first header of this name (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One response: status, `Content-Type` (none for an empty body) and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: Option<&'static str>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: u16, body: &serde_json::Value) -> Response {
        Response { status, content_type: Some("application/json"), body: body.to_string().into_bytes() }
    }
    pub fn text(status: u16, body: &str) -> Response {
        Response { status, content_type: Some("text/plain; charset=utf-8"), body: body.as_bytes().to_vec() }
    }
    fn error(status: u16, message: &str) -> Response {
        let kind = match status {
            413 => "request_too_large",
            408 => "timeout",
            503 => "unavailable",
            500 => "server_error",
            _ => "invalid_request_error",
        };
        Response::json(status, &error_body(message, kind))
    }
}

/// The OpenAI-style error object of every error answer `serve` gives, the transport's own
/// and the handlers' alike.
pub fn error_body(message: &str, kind: &str) -> serde_json::Value {
    serde_json::json!({"error": {"message": message, "type": kind, "param": null, "code": null}})
}

/// The request head as parsed: what `parse_head` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    pub target: String,
    pub http10: bool,
    pub headers: Vec<(String, String)>,
    pub content_length: u64,
    pub keep_alive: bool,
    pub expect_continue: bool,
}

/// Why a head is refused: the status and a sentence for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadError {
    pub status: u16,
    pub message: String,
}

fn head_error(status: u16, message: impl Into<String>) -> HeadError {
    HeadError { status, message: message.into() }
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parse a request head: the bytes up to and excluding the blank line that ends it. Pure and
/// total: any input gives a `Head` or a `HeadError`, never a panic.
pub fn parse_head(bytes: &[u8]) -> Result<Head, HeadError> {
    let text = std::str::from_utf8(bytes).map_err(|_| head_error(400, "the request head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(head_error(400, "malformed request line (expected METHOD TARGET HTTP/1.1)"));
    };
    if method.is_empty() || !method.bytes().all(is_token_char) {
        return Err(head_error(400, "malformed method in the request line"));
    }
    if !target.starts_with('/') || target.bytes().any(|b| b.is_ascii_control()) {
        return Err(head_error(400, "the request target must be an absolute path (/...)"));
    }
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err(head_error(505, format!("HTTP version {version:?} is not supported (HTTP/1.1 or HTTP/1.0)"))),
    };
    let mut headers = Vec::new();
    let mut content_length: Option<u64> = None;
    let mut connection = String::new();
    let mut expect_continue = false;
    for line in lines {
        if headers.len() >= MAX_HEADERS {
            return Err(head_error(431, format!("more than {MAX_HEADERS} header lines")));
        }
        if line.starts_with([' ', '\t']) {
            return Err(head_error(400, "folded header lines are not accepted"));
        }
        let Some((name, value)) = line.split_once(':') else { return Err(head_error(400, format!("header line without ':' ({} bytes)", line.len()))) };
        if name.is_empty() || !name.bytes().all(is_token_char) {
            return Err(head_error(400, "malformed header name"));
        }
        let value = value.trim_matches([' ', '\t']);
        if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            return Err(head_error(400, format!("control character in header {name}")));
        }
        if name.eq_ignore_ascii_case("content-length") {
            let n: u64 = match value.bytes().all(|b| b.is_ascii_digit()) && !value.is_empty() {
                true => value.parse().map_err(|_| head_error(400, "Content-Length out of range"))?,
                false => return Err(head_error(400, "Content-Length is not a decimal number")),
            };
            if content_length.is_some_and(|c| c != n) {
                return Err(head_error(400, "conflicting Content-Length headers"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(head_error(501, "Transfer-Encoding is not supported: send Content-Length"));
        } else if name.eq_ignore_ascii_case("connection") {
            connection.push_str(&value.to_ascii_lowercase());
            connection.push(',');
        } else if name.eq_ignore_ascii_case("expect") {
            if !value.eq_ignore_ascii_case("100-continue") {
                return Err(head_error(417, format!("unsupported Expect: {value}")));
            }
            expect_continue = true;
        }
        headers.push((name.to_string(), value.to_string()));
    }
    let has = |token: &str| connection.split(',').any(|t| t.trim() == token);
    let keep_alive = if http10 { has("keep-alive") } else { !has("close") };
    Ok(Head { method: method.into(), target: target.into(), http10, headers, content_length: content_length.unwrap_or(0), keep_alive, expect_continue })
}

/// Where the head ends: the index just past the blank line, and the head's length.
fn find_head_end(buf: &[u8]) -> Option<(usize, usize)> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i + 4, i))
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Status",
    }
}

/// Write all of `bytes` before `deadline` (the socket's own timeout bounds one `send`, not
/// a whole response a client takes a few bytes at a time).
fn write_all_by(stream: &mut TcpStream, mut bytes: &[u8], deadline: Instant) -> io::Result<()> {
    while !bytes.is_empty() {
        let now = Instant::now();
        if now >= deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "the response was not taken within the write timeout"));
        }
        stream.set_write_timeout(Some((deadline - now).max(Duration::from_millis(1))))?;
        match stream.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Write a response; for `HEAD` the head only (its `Content-Length` still the body's).
fn write_response(stream: &mut TcpStream, response: &Response, keep_alive: bool, head_only: bool, timeout: Duration) -> io::Result<()> {
    let mut out = format!("HTTP/1.1 {} {}\r\nContent-Length: {}\r\n", response.status, reason(response.status), response.body.len());
    if let Some(t) = response.content_type {
        out.push_str(&format!("Content-Type: {t}\r\n"));
    }
    out.push_str(if keep_alive { "Connection: keep-alive\r\n\r\n" } else { "Connection: close\r\n\r\n" });
    let mut bytes = out.into_bytes();
    if !head_only {
        bytes.extend_from_slice(&response.body);
    }
    write_all_by(stream, &bytes, after(timeout))
}

/// Close after a refusal: stop sending, then read and discard what the client still sends
/// for at most `LINGER` / `LINGER_BYTES`, so the answer reaches it instead of a reset.
fn close_gently(stream: &mut TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = after(LINGER);
    let mut sink = [0u8; 16 << 10];
    let mut left = LINGER_BYTES;
    while left > 0 {
        let now = Instant::now();
        if now >= deadline || stream.set_read_timeout(Some((deadline - now).max(Duration::from_millis(1)))).is_err() {
            return;
        }
        match stream.read(&mut sink) {
            Ok(0) => return,
            Ok(n) => left = left.saturating_sub(n),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted) => {}
            Err(_) => return,
        }
    }
}

/// How a read for a connection ended.
enum Got {
    /// Some bytes were appended.
    Data,
    /// The client closed its side.
    Closed,
    /// The deadline passed (or the server is stopping).
    Deadline,
}

/// Read more bytes into `buf` before `deadline`, waking every `POLL` to check `stop`.
fn read_some(stream: &mut TcpStream, buf: &mut Vec<u8>, deadline: Instant, stop: &AtomicBool) -> io::Result<Got> {
    let mut chunk = [0u8; 16 << 10];
    loop {
        let now = Instant::now();
        if now >= deadline || stop.load(Ordering::SeqCst) {
            return Ok(Got::Deadline);
        }
        stream.set_read_timeout(Some((deadline - now).min(POLL).max(Duration::from_millis(1))))?;
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(Got::Closed),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(Got::Data);
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Drop the empty lines a client may send before a request line (RFC 9112 §2.2).
fn strip_leading_crlf(buf: &mut Vec<u8>) -> bool {
    let n = buf.chunks(2).take_while(|c| *c == b"\r\n").count() * 2;
    buf.drain(..n);
    n > 0
}

/// Serve one connection until it closes, errs, breaks a limit or the server stops.
fn connection(mut stream: TcpStream, limits: &Limits, handler: &Handler, stop: &AtomicBool) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let write_timeout = limits.write_timeout;
    let refuse = |stream: &mut TcpStream, status: u16, message: &str| {
        let sent = write_response(stream, &Response::error(status, message), false, false, write_timeout);
        close_gently(stream);
        sent
    };
    let mut buf: Vec<u8> = Vec::new();
    let mut first = true;
    loop {
        // Wait for the next request's first byte: the header timeout for a new connection
        // (its head is due that long after the accept), the idle timeout between keep-alive
        // requests (the head is due `header_timeout` after its first byte).
        let accepted = Instant::now();
        let idle_deadline = after(if first { limits.header_timeout } else { limits.idle_timeout });
        strip_leading_crlf(&mut buf);
        while buf.is_empty() {
            match read_some(&mut stream, &mut buf, idle_deadline, stop)? {
                Got::Data => {
                    strip_leading_crlf(&mut buf);
                }
                Got::Closed | Got::Deadline => return Ok(()),
            }
        }
        let head_deadline =
            if first { accepted.checked_add(limits.header_timeout).unwrap_or_else(|| after(limits.header_timeout)) } else { after(limits.header_timeout) };
        first = false;
        // Where the search for the blank line resumes (each byte is scanned about once).
        let mut scanned: usize = 0;
        let (body_start, head_len) = loop {
            if strip_leading_crlf(&mut buf) {
                scanned = 0;
            }
            let from = scanned.saturating_sub(3);
            if let Some((end, len)) = find_head_end(&buf[from..]) {
                break (from + end, from + len);
            }
            scanned = buf.len();
            if buf.len() > limits.max_header_bytes {
                return refuse(&mut stream, 431, &format!("request head over {} bytes", limits.max_header_bytes));
            }
            match read_some(&mut stream, &mut buf, head_deadline, stop)? {
                Got::Data => {}
                Got::Closed => return Ok(()),
                Got::Deadline => return refuse(&mut stream, 408, &format!("request head not received within {:.0} s", limits.header_timeout.as_secs_f64())),
            }
        };
        if head_len > limits.max_header_bytes {
            return refuse(&mut stream, 431, &format!("request head over {} bytes", limits.max_header_bytes));
        }
        let head = match parse_head(&buf[..head_len]) {
            Ok(h) => h,
            Err(e) => return refuse(&mut stream, e.status, &e.message),
        };
        buf.drain(..body_start);
        if head.content_length > limits.max_body_bytes as u64 {
            // Answered from the head alone; the body is discarded unread.
            return refuse(&mut stream, 413, &format!("request body over {} bytes", limits.max_body_bytes));
        }
        let length = head.content_length as usize;
        if head.expect_continue && !head.http10 && buf.len() < length {
            write_all_by(&mut stream, b"HTTP/1.1 100 Continue\r\n\r\n", after(write_timeout))?;
        }
        let body_deadline = after(limits.body_timeout);
        while buf.len() < length {
            match read_some(&mut stream, &mut buf, body_deadline, stop)? {
                Got::Data => {}
                Got::Closed => return Ok(()),
                Got::Deadline => {
                    let message = format!("request body not received within {:.0} s ({} of {length} bytes)", limits.body_timeout.as_secs_f64(), buf.len());
                    return refuse(&mut stream, 408, &message);
                }
            }
        }
        let body: Vec<u8> = buf.drain(..length).collect();
        let keep_alive = head.keep_alive && !stop.load(Ordering::SeqCst);
        let head_only = head.method == "HEAD";
        let request = Request { method: head.method, target: head.target, headers: head.headers, body };
        let response = catch_unwind(AssertUnwindSafe(|| handler(request)))
            .unwrap_or_else(|_| Response::error(500, "the request handler panicked; the server keeps serving"));
        write_response(&mut stream, &response, keep_alive, head_only, write_timeout)?;
        if !keep_alive {
            if !buf.is_empty() {
                close_gently(&mut stream);
            }
            return Ok(());
        }
    }
}

/// What answers requests: called on the connection's thread, with the whole body.
pub type Handler = Arc<dyn Fn(Request) -> Response + Send + Sync>;

/// Decrements the open-connection count however the connection's thread ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A listening server; stops accepting (and tells open connections to finish) when dropped.
/// Connection threads are not joined: each ends within its limits (`POLL` once idle, the
/// write timeout at worst).
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    open: Arc<AtomicUsize>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    pub fn bind(bind: &str, limits: Limits, handler: Handler) -> io::Result<Server> {
        let listener = TcpListener::bind(bind)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(AtomicUsize::new(0));
        let accept = {
            let (stop, open) = (Arc::clone(&stop), Arc::clone(&open));
            std::thread::Builder::new().name("serve-accept".into()).spawn(move || accept_loop(listener, limits, handler, stop, open))?
        };
        Ok(Server { addr, stop, open, accept: Some(accept) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections open now (each holds one socket and one thread).
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

fn accept_loop(listener: TcpListener, limits: Limits, handler: Handler, stop: Arc<AtomicBool>, open: Arc<AtomicUsize>) {
    let limits = Arc::new(limits);
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let mut stream = match stream {
            Ok(s) => s,
            Err(_) => {
                // Out of descriptors or a connection reset before accept: wait a little
                // rather than spin, and keep listening.
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        if open.fetch_add(1, Ordering::SeqCst) >= limits.max_connections {
            let slot = Slot(Arc::clone(&open));
            // Answered on the accept thread, so nothing here may wait: what the client already
            // sent is discarded without blocking (to avoid a reset), then the socket closes.
            let message = format!("the server has {} connections open; retry later", limits.max_connections);
            let _ = write_response(&mut stream, &Response::error(503, &message), false, false, Duration::from_millis(200));
            let _ = stream.shutdown(Shutdown::Write);
            if stream.set_nonblocking(true).is_ok() {
                let mut sink = [0u8; 16 << 10];
                for _ in 0..4 {
                    if !matches!(stream.read(&mut sink), Ok(n) if n > 0) {
                        break;
                    }
                }
            }
            drop(slot);
            continue;
        }
        let slot = Slot(Arc::clone(&open));
        let (limits, handler, stop) = (Arc::clone(&limits), Arc::clone(&handler), Arc::clone(&stop));
        // If the thread cannot be spawned, the closure (stream and slot) is dropped: the
        // socket closes and the count goes back.
        let _ = std::thread::Builder::new().name("serve-conn".into()).spawn(move || {
            let _slot = slot;
            let _ = connection(stream, &limits, &handler, &stop);
        });
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept with a connection of our own.
        let wake = match self.addr {
            SocketAddr::V4(a) if a.ip().is_unspecified() => SocketAddr::from(([127, 0, 0, 1], a.port())),
            SocketAddr::V6(a) if a.ip().is_unspecified() => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port())),
            a => a,
        };
        // If that connection cannot be made (out of descriptors), the accept thread is left to
        // end at its next accept rather than joined for ever.
        if TcpStream::connect_timeout(&wake, Duration::from_secs(1)).is_ok() {
            if let Some(h) = self.accept.take() {
                let _ = h.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_parses_with_its_length_and_keep_alive() {
        let h = parse_head(b"POST /v1/completions?x=1 HTTP/1.1\r\nHost: a\r\ncontent-length: 12\r\nConnection: Close").expect("parses");
        assert_eq!((h.method.as_str(), h.target.as_str(), h.content_length, h.keep_alive, h.http10), ("POST", "/v1/completions?x=1", 12, false, false));
        let h = parse_head(b"GET /health HTTP/1.0\r\nConnection: keep-alive").expect("parses");
        assert!(h.keep_alive && h.http10 && h.content_length == 0);
        assert!(parse_head(b"GET /health HTTP/1.1").expect("parses").keep_alive);
    }

    #[test]
    fn a_bad_head_gets_the_status_that_says_why() {
        let cases: [(&[u8], u16); 9] = [
            (b"GET /a HTTP/2.0", 505),
            (b"GET a HTTP/1.1", 400),
            (b"GET /a  HTTP/1.1", 400),
            (b"POST /a HTTP/1.1\r\nContent-Length: -1", 400),
            (b"POST /a HTTP/1.1\r\nContent-Length: 99999999999999999999999", 400),
            (b"POST /a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2", 400),
            (b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked", 501),
            (b"POST /a HTTP/1.1\r\nExpect: 200-ok", 417),
            (b"POST /a HTTP/1.1\r\n folded", 400),
        ];
        for (bytes, status) in cases {
            assert_eq!(parse_head(bytes).map_err(|e| e.status), Err(status), "{}", String::from_utf8_lossy(bytes));
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("\r\nX-{i}: y")).collect();
        assert_eq!(parse_head(format!("GET /a HTTP/1.1{many}").as_bytes()).map_err(|e| e.status), Err(431));
    }
}
