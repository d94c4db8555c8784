//! One HTTP client for every server this project talks to (the generation fleet and the HTTP
//! judge), so the rules below are written once:
//! - **Authentication**: an optional bearer token, read from an environment variable named in
//!   the config (never the value in a file) and never printed (`Debug` shows `<set>`).
//! - **Limits**: a whole-request timeout, and a cap on the reply body (a reply past it is a
//!   broken or hostile server, not an answer).
//! - **Classification** of one attempt ([`Failure`]): HTTP 200 is the answer; a connection
//!   error, timeout, I/O error, HTTP 429 or 5xx is `Transient` (the server may answer later, or
//!   another server may); any other status and a reply over the cap are `Permanent` (the same
//!   request would fail the same way again).
//! - **Retries** ([`HttpClient::call_retrying`]): transient failures are retried with
//!   exponential backoff (`backoff_initial · 2^(k−1)` before retry k, capped); a permanent one
//!   is returned at once. Calls that change a server's state (a weight load) use
//!   [`HttpClient::call`], one attempt, since repeating them is not safe.
//! - **Messages** name the method, the URL and the status and quote the start of the reply
//!   ([`excerpt`]), so an engine's own error text reaches the user.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::spread::JobFailure;

/// How one attempt failed (see the module header for which is which).
pub type Failure = JobFailure<String>;

impl JobFailure<String> {
    /// The failure's message, whichever kind it is.
    pub fn message(&self) -> &str {
        match self {
            JobFailure::Transient(m) | JobFailure::Permanent(m) => m,
        }
    }
}

/// Retries after the first attempt and the backoff between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    pub retries: u32,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
}

impl Retry {
    /// Delay before retry `k` (k ≥ 1).
    pub fn delay(&self, k: u32) -> Duration {
        let factor = 1u64.checked_shl(k.saturating_sub(1).min(40)).unwrap_or(u64::MAX);
        Duration::from_millis(self.backoff_initial_ms.saturating_mul(factor).min(self.backoff_max_ms))
    }
}

/// The bearer token named by `var` (`None` = no token): an error names the setting `field`
/// and the variable when it is unset or empty.
pub fn api_key_from_env(var: Option<&str>, field: &str) -> Result<Option<String>, String> {
    match var {
        None => Ok(None),
        Some(v) => match std::env::var(v) {
            Ok(k) if !k.is_empty() => Ok(Some(k)),
            _ => Err(format!("{field}: the environment variable {v} is unset or empty")),
        },
    }
}

/// A configured client; cheap to share between threads (`ureq::Agent` pools connections).
#[derive(Clone)]
pub struct HttpClient {
    agent: ureq::Agent,
    api_key: Option<String>,
    max_reply_bytes: u64,
    retry: Retry,
    /// Attempts made (retries included), shared by clones.
    sent: Arc<AtomicUsize>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .field("max_reply_bytes", &self.max_reply_bytes)
            .field("retry", &self.retry)
            .finish()
    }
}

impl HttpClient {
    /// `timeout` bounds each request from connect to the last reply byte.
    pub fn new(timeout: Duration, api_key: Option<String>, max_reply_bytes: u64, retry: Retry) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(timeout)).http_status_as_error(false).build().into();
        HttpClient { agent, api_key, max_reply_bytes, retry, sent: Arc::new(AtomicUsize::new(0)) }
    }

    /// HTTP requests sent so far, retries included.
    pub fn requests_sent(&self) -> usize {
        self.sent.load(Ordering::Relaxed)
    }

    pub fn retry(&self) -> Retry {
        self.retry
    }

    /// One attempt: `GET url` without a body, `POST url` with the JSON `body`; the reply body
    /// of an HTTP 200, or why not.
    pub fn call(&self, url: &str, body: Option<&Value>) -> Result<Vec<u8>, Failure> {
        let method = if body.is_some() { "POST" } else { "GET" };
        self.sent.fetch_add(1, Ordering::Relaxed);
        let result = match body {
            Some(b) => {
                let mut req = self.agent.post(url).header("Content-Type", "application/json");
                if let Some(k) = &self.api_key {
                    req = req.header("Authorization", &format!("Bearer {k}"));
                }
                req.send(b.to_string())
            }
            None => {
                let mut req = self.agent.get(url);
                if let Some(k) = &self.api_key {
                    req = req.header("Authorization", &format!("Bearer {k}"));
                }
                req.call()
            }
        };
        let mut resp = result.map_err(|e| transport_failure(method, url, e))?;
        let status = resp.status().as_u16();
        let bytes = resp.body_mut().with_config().limit(self.max_reply_bytes).read_to_vec().map_err(|e| transport_failure(method, url, e))?;
        match status {
            200 => Ok(bytes),
            429 | 500..=599 => Err(Failure::Transient(format!("{method} {url}: HTTP {status}: {}", excerpt(&bytes)))),
            _ => Err(Failure::Permanent(format!("{method} {url}: HTTP {status}: {}", excerpt(&bytes)))),
        }
    }

    /// [`call`](Self::call) with the retries of [`Retry`] on transient failures; when they are
    /// spent, the last failure (still `Transient`, so a fleet may hand the work to another
    /// server) with the number of attempts.
    pub fn call_retrying(&self, url: &str, body: Option<&Value>) -> Result<Vec<u8>, Failure> {
        let mut last = String::new();
        for attempt in 0..=self.retry.retries {
            if attempt > 0 {
                std::thread::sleep(self.retry.delay(attempt));
            }
            match self.call(url, body) {
                Ok(b) => return Ok(b),
                Err(Failure::Permanent(m)) => return Err(Failure::Permanent(m)),
                Err(Failure::Transient(m)) => {
                    tracing::warn!(url = %url, attempt = attempt + 1, of = self.retry.retries + 1, "transient failure: {m}");
                    last = m;
                }
            }
        }
        Err(Failure::Transient(format!("{last} (after {} attempts)", self.retry.retries + 1)))
    }
}

/// The start of a reply body, for messages (300 characters, `…` when cut).
pub fn excerpt(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let cut: String = s.chars().take(300).collect();
    if cut.len() < s.len() {
        format!("{cut}…")
    } else {
        cut
    }
}

fn transport_failure(method: &str, url: &str, e: ureq::Error) -> Failure {
    match e {
        ureq::Error::BodyExceedsLimit(n) => Failure::Permanent(format!("{method} {url}: reply over {n} bytes")),
        other => Failure::Transient(format!("{method} {url}: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let r = Retry { retries: 5, backoff_initial_ms: 500, backoff_max_ms: 3_000 };
        let d: Vec<u128> = (1..=5).map(|k| r.delay(k).as_millis()).collect();
        assert_eq!(d, vec![500, 1000, 2000, 3000, 3000]);
        assert_eq!(Retry { retries: 1, backoff_initial_ms: u64::MAX, backoff_max_ms: 7 }.delay(64).as_millis(), 7);
    }

    #[test]
    fn excerpts_cut_long_replies_on_a_char_boundary() {
        assert_eq!(excerpt(b"short"), "short");
        let long = "é".repeat(400);
        let e = excerpt(long.as_bytes());
        assert!(e.ends_with('…') && e.chars().count() == 301, "{e}");
    }

    #[test]
    fn the_api_key_names_its_setting_when_missing() {
        assert_eq!(api_key_from_env(None, "x"), Ok(None));
        let err = api_key_from_env(Some("SELF_REDTEAM_TEST_SURELY_UNSET_VAR"), "generation.api_key_env").expect_err("unset");
        assert!(err.contains("generation.api_key_env") && err.contains("SELF_REDTEAM_TEST_SURELY_UNSET_VAR"), "{err}");
    }

    #[test]
    fn statuses_are_classified_against_a_real_socket() {
        // A one-shot HTTP server on loopback answering each status once.
        for (status, transient) in [(200u16, None), (429, Some(true)), (503, Some(true)), (400, Some(false)), (404, Some(false))] {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let url = format!("http://{}/x", listener.local_addr().expect("addr"));
            let server = std::thread::spawn(move || {
                use std::io::{Read, Write};
                let (mut s, _) = listener.accept().expect("accept");
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let body = "{\"error\": \"nope\"}";
                let _ = write!(s, "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            });
            let c = HttpClient::new(Duration::from_secs(5), None, 1 << 20, Retry { retries: 0, backoff_initial_ms: 1, backoff_max_ms: 1 });
            let got = c.call(&url, None);
            server.join().expect("server");
            match (got, transient) {
                (Ok(b), None) => assert_eq!(b, b"{\"error\": \"nope\"}"),
                (Err(Failure::Transient(m)), Some(true)) | (Err(Failure::Permanent(m)), Some(false)) => {
                    assert!(m.contains(&format!("HTTP {status}")) && m.contains("nope") && m.contains("GET "), "{m}")
                }
                (other, _) => panic!("status {status}: {:?}", other.map_err(|f| f.message().to_string())),
            }
        }
    }
}
