//! Client for any OpenAI-compatible `/v1/completions` endpoint (vLLM, SGLang, llama.cpp
//! server, this crate's `server`): bounded concurrency, timeouts, retries with exponential
//! backoff. Called by `WildGuardJudge` (HTTP transport).
//!
//! Retry policy: timeouts, connection failures, I/O errors, HTTP 429 and 5xx are transient
//! and retried (`max_retries` times, delays `backoff_initial_ms · 2^attempt`, capped at
//! `backoff_max_ms`); other 4xx and malformed replies are permanent and fail at once. A
//! failure that persists fails the whole batch: the caller never gets (or caches) a
//! partial result. The API key is read from the environment variable NAMED in the config
//! at construction and held only in the client, which is not serialisable; the config
//! (which is) stores the variable's name, never its value.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletionsConfig {
    /// Full endpoint URL, e.g. `http://127.0.0.1:8000/v1/completions`.
    pub url: String,
    /// `model` field of the request (vLLM requires the served model's name).
    pub model: String,
    /// Name of the environment variable holding the bearer token, if the server needs one.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Requests in flight at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Prompts per request (`prompt` is sent as a list).
    #[serde(default = "default_batch")]
    pub prompts_per_request: usize,
    /// Whole-request timeout (the reference client uses 180 s).
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
    /// Retries after the first attempt (the reference client retries 5 times).
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    #[serde(default = "default_backoff_initial")]
    pub backoff_initial_ms: u64,
    #[serde(default = "default_backoff_max")]
    pub backoff_max_ms: u64,
    /// Sent as `add_special_tokens` (a vLLM/SGLang extension; llama.cpp ignores it). The
    /// WildGuard text already starts with `<s>`, so the server must not add a second BOS:
    /// default `Some(false)`. Set `None` for servers that reject unknown fields.
    #[serde(default = "default_add_special_tokens")]
    pub add_special_tokens: Option<bool>,
}

fn default_add_special_tokens() -> Option<bool> {
    Some(false)
}

fn default_concurrency() -> usize {
    8
}
fn default_batch() -> usize {
    16
}
fn default_timeout() -> f64 {
    180.0
}
fn default_retries() -> u32 {
    5
}
fn default_backoff_initial() -> u64 {
    500
}
fn default_backoff_max() -> u64 {
    30_000
}

impl CompletionsConfig {
    pub fn new(url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            model: model.into(),
            api_key_env: None,
            concurrency: default_concurrency(),
            prompts_per_request: default_batch(),
            timeout_s: default_timeout(),
            max_retries: default_retries(),
            backoff_initial_ms: default_backoff_initial(),
            backoff_max_ms: default_backoff_max(),
            add_special_tokens: default_add_special_tokens(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("completions config: {0}")]
    Config(String),
    #[error("environment variable {var} (named by api_key_env) is not set")]
    MissingApiKey { var: String },
    #[error("POST {url} failed after {attempts} attempts; last error: {last}")]
    Exhausted {
        url: String,
        attempts: u32,
        last: String,
    },
    #[error("POST {url} failed permanently (not retried): {detail}")]
    Permanent { url: String, detail: String },
    #[error("POST {url}: reply has {got} choices for {expected} prompts")]
    Choices {
        url: String,
        expected: usize,
        got: usize,
    },
}

#[derive(Serialize)]
struct CompletionRequest<'a> {
    model: &'a str,
    prompt: &'a [String],
    max_tokens: usize,
    temperature: f64,
    top_p: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    add_special_tokens: Option<bool>,
}

#[derive(Deserialize)]
struct CompletionReply {
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    index: Option<usize>,
    text: String,
}

/// Outcome of one attempt: transient errors are retried, permanent ones are not.
enum Attempt {
    Transient(String),
    Permanent(String),
}

pub struct CompletionsClient {
    config: CompletionsConfig,
    api_key: Option<String>,
    agent: ureq::Agent,
    requests_sent: AtomicUsize,
}

impl std::fmt::Debug for CompletionsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("CompletionsClient")
            .field("config", &self.config)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl CompletionsClient {
    /// Validate the config and read the API key from the named environment variable.
    pub fn new(config: CompletionsConfig) -> Result<Self, HttpError> {
        if config.concurrency == 0 || config.prompts_per_request == 0 {
            return Err(HttpError::Config(
                "concurrency and prompts_per_request must be at least 1".into(),
            ));
        }
        if !(config.timeout_s > 0.0 && config.timeout_s.is_finite()) {
            return Err(HttpError::Config(format!(
                "timeout_s must be positive, got {}",
                config.timeout_s
            )));
        }
        if !(config.url.starts_with("http://") || config.url.starts_with("https://")) {
            return Err(HttpError::Config(format!(
                "url must start with http:// or https://, got {:?}",
                config.url
            )));
        }
        let api_key = match &config.api_key_env {
            None => None,
            Some(var) => Some(
                std::env::var(var).map_err(|_| HttpError::MissingApiKey { var: var.clone() })?,
            ),
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs_f64(config.timeout_s)))
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Self {
            config,
            api_key,
            agent,
            requests_sent: AtomicUsize::new(0),
        })
    }

    pub fn config(&self) -> &CompletionsConfig {
        &self.config
    }

    /// HTTP requests sent so far, retries included (for tests and progress logs).
    pub fn requests_sent(&self) -> usize {
        self.requests_sent.load(Ordering::Relaxed)
    }

    /// Complete every prompt greedily; outputs in input order. Chunks of
    /// `prompts_per_request` are sent by up to `concurrency` worker threads; the first
    /// chunk that fails for good fails the batch (the other workers stop taking chunks).
    pub fn complete(
        &self,
        prompts: &[String],
        max_tokens: usize,
    ) -> Result<Vec<String>, HttpError> {
        let chunks: Vec<&[String]> = prompts.chunks(self.config.prompts_per_request).collect();
        let results: Vec<Mutex<Option<Vec<String>>>> =
            chunks.iter().map(|_| Mutex::new(None)).collect();
        let next = AtomicUsize::new(0);
        let failure: Mutex<Option<HttpError>> = Mutex::new(None);
        let workers = self.config.concurrency.min(chunks.len()).max(1);
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| loop {
                    if failure.lock().map(|f| f.is_some()).unwrap_or(true) {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(chunk) = chunks.get(i) else { return };
                    match self.complete_chunk(chunk, max_tokens) {
                        Ok(texts) => {
                            if let Ok(mut slot) = results[i].lock() {
                                *slot = Some(texts);
                            }
                        }
                        Err(e) => {
                            if let Ok(mut f) = failure.lock() {
                                f.get_or_insert(e);
                            }
                            return;
                        }
                    }
                });
            }
        });
        if let Some(e) = failure.into_inner().ok().flatten() {
            return Err(e);
        }
        let mut out = Vec::with_capacity(prompts.len());
        for slot in results {
            let texts = slot
                .into_inner()
                .ok()
                .flatten()
                .expect("every chunk either stored its texts or recorded a failure");
            out.extend(texts);
        }
        Ok(out)
    }

    fn complete_chunk(
        &self,
        chunk: &[String],
        max_tokens: usize,
    ) -> Result<Vec<String>, HttpError> {
        let url = &self.config.url;
        let mut last = String::new();
        let attempts = self.config.max_retries + 1;
        for attempt in 0..attempts {
            if attempt > 0 {
                let factor = 1u64.checked_shl(attempt - 1).unwrap_or(u64::MAX);
                let delay = self
                    .config
                    .backoff_initial_ms
                    .saturating_mul(factor)
                    .min(self.config.backoff_max_ms);
                std::thread::sleep(Duration::from_millis(delay));
            }
            match self.attempt(chunk, max_tokens) {
                Ok(texts) => return Ok(texts),
                Err(Attempt::Permanent(detail)) => {
                    return Err(HttpError::Permanent {
                        url: url.clone(),
                        detail,
                    });
                }
                Err(Attempt::Transient(detail)) => {
                    tracing::warn!(url = %url, attempt = attempt + 1, of = attempts, "transient completions failure: {detail}");
                    last = detail;
                }
            }
        }
        Err(HttpError::Exhausted {
            url: url.clone(),
            attempts,
            last,
        })
    }

    fn attempt(&self, chunk: &[String], max_tokens: usize) -> Result<Vec<String>, Attempt> {
        let body = CompletionRequest {
            model: &self.config.model,
            prompt: chunk,
            max_tokens,
            temperature: 0.0,
            top_p: 1.0,
            add_special_tokens: self.config.add_special_tokens,
        };
        let mut req = self
            .agent
            .post(&self.config.url)
            .header("Content-Type", "application/json");
        if let Some(key) = &self.api_key {
            req = req.header("Authorization", &format!("Bearer {key}"));
        }
        self.requests_sent.fetch_add(1, Ordering::Relaxed);
        let mut resp = match req.send_json(&body) {
            Ok(r) => r,
            Err(e) => return Err(classify_transport_error(e)),
        };
        let status = resp.status().as_u16();
        if status == 429 || status >= 500 {
            let text = resp.body_mut().read_to_string().unwrap_or_default();
            return Err(Attempt::Transient(format!(
                "HTTP {status}: {}",
                truncate(&text, 200)
            )));
        }
        if status != 200 {
            let text = resp.body_mut().read_to_string().unwrap_or_default();
            return Err(Attempt::Permanent(format!(
                "HTTP {status}: {}",
                truncate(&text, 200)
            )));
        }
        let reply: CompletionReply = match resp.body_mut().read_json() {
            Ok(r) => r,
            // A reply cut off by the timeout while reading is transient; bad JSON is not.
            Err(e) => return Err(classify_transport_error(e)),
        };
        if reply.choices.len() != chunk.len() {
            return Err(Attempt::Permanent(format!(
                "reply has {} choices for {} prompts",
                reply.choices.len(),
                chunk.len()
            )));
        }
        // Order by `index` when the server gives it (vLLM does; order is not promised).
        let mut texts: Vec<Option<String>> = vec![None; chunk.len()];
        for (pos, c) in reply.choices.into_iter().enumerate() {
            let i = c.index.unwrap_or(pos);
            match texts.get_mut(i) {
                Some(slot @ None) => *slot = Some(c.text),
                _ => {
                    return Err(Attempt::Permanent(format!(
                        "reply has a duplicate or out-of-range choice index {i}"
                    )))
                }
            }
        }
        Ok(texts
            .into_iter()
            .map(|t| t.expect("indices are a permutation: count checked, duplicates rejected"))
            .collect())
    }
}

fn classify_transport_error(e: ureq::Error) -> Attempt {
    match e {
        ureq::Error::Timeout(_)
        | ureq::Error::Io(_)
        | ureq::Error::ConnectionFailed
        | ureq::Error::HostNotFound
        | ureq::Error::Protocol(_) => Attempt::Transient(e.to_string()),
        ureq::Error::StatusCode(s) if s == 429 || s >= 500 => Attempt::Transient(e.to_string()),
        other => Attempt::Permanent(other.to_string()),
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
