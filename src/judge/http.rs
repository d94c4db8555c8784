//! Client for any OpenAI-compatible `/v1/completions` endpoint (vLLM, SGLang, llama.cpp
//! server, this crate's `serve`): bounded concurrency, chunks of `prompts_per_request` prompts,
//! and a fleet of servers (`CompletionsFleet`). Called by `WildGuardJudge` (HTTP transport).
//!
//! Transport, retries and their classification are `net::client`'s, shared with the
//! generation fleet: timeouts, connection failures, HTTP 429 and 5xx are retried
//! (`max_retries` times, delays `backoff_initial_ms · 2^(k−1)`, capped at `backoff_max_ms`);
//! other 4xx and malformed replies fail at once. A failure that persists fails the whole
//! batch: the caller never gets (or caches) a partial result. The API key is read from the
//! environment variable NAMED in the config at construction and held only in the client,
//! which is not serialisable; the config (which is) stores the variable's name, never its
//! value.
//!
//! Replies are read with a size cap (`MAX_REPLY_BYTES`) and parsed by the pure
//! `parse_completion_reply`, which turns any body into texts or a typed `ReplyError` (a
//! permanent failure), never a panic. `served_identity` reads `GET /v1/models` once, for the
//! verdict cache key of `WildGuardJudge`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::net::client::{api_key_from_env, HttpClient, Retry};
use crate::net::spread::{spread, JobFailure, SpreadError};

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
    /// Send each prompt as token ids, tokenized by the server's own `POST /tokenize` (vLLM and
    /// SGLang both serve it) with `add_special_tokens` as above: for engines whose completions
    /// request ignores `add_special_tokens` (SGLang adds the BOS a second time).
    #[serde(default)]
    pub token_ids: bool,
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
            token_ids: false,
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
    Exhausted { url: String, attempts: u32, last: String },
    #[error("POST {url} failed permanently (not retried): {detail}")]
    Permanent { url: String, detail: String },
    #[error("POST {url}: reply has {got} choices for {expected} prompts")]
    Choices { url: String, expected: usize, got: usize },
}

/// Largest completions reply read: 16 prompts of 128 tokens are a few KiB; a reply past this
/// is a broken or hostile server, not an answer.
pub const MAX_REPLY_BYTES: u64 = 16 << 20;

/// Why a completions reply body is not an answer to the request (always permanent: the same
/// server would send the same reply again).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("reply is not a completions JSON object: {0}")]
    Json(String),
    #[error("reply has {got} choices for {expected} prompts")]
    Count { expected: usize, got: usize },
    #[error("reply has a duplicate or out-of-range choice index {index}")]
    Index { index: usize },
}

/// The texts of a completions reply body, in prompt order (by `index` when the server gives
/// it: vLLM does, and order is not promised). Total: any bytes give texts or a `ReplyError`.
pub fn parse_completion_reply(body: &[u8], expected: usize) -> Result<Vec<String>, ReplyError> {
    let reply: CompletionReply = serde_json::from_slice(body).map_err(|e| ReplyError::Json(e.to_string()))?;
    if reply.choices.len() != expected {
        return Err(ReplyError::Count { expected, got: reply.choices.len() });
    }
    let mut texts: Vec<Option<String>> = vec![None; expected];
    for (pos, c) in reply.choices.into_iter().enumerate() {
        let i = c.index.unwrap_or(pos);
        match texts.get_mut(i) {
            Some(slot @ None) => *slot = Some(c.text),
            _ => return Err(ReplyError::Index { index: i }),
        }
    }
    // Count checked and duplicates rejected: every slot is filled.
    texts.into_iter().map(|t| t.ok_or(ReplyError::Count { expected, got: 0 })).collect()
}

/// The server and model behind a completions URL, as far as the server tells: the URL
/// without credentials or query, and the `/v1/models` entry serving the configured model
/// (its `id`, `root`, `parent`; never `created`, which vLLM sets at each start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedIdentity(pub String);

/// `url` without user info (`user:pass@`), query or fragment: what identifies the server,
/// never what authenticates to it.
pub fn url_identity(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let end = rest.find(['?', '#']).unwrap_or(rest.len());
    let rest = &rest[..end];
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = authority.rsplit_once('@').map(|(_, h)| h).unwrap_or(authority);
    format!("{}://{}{}", scheme.to_ascii_lowercase(), host.to_ascii_lowercase(), path)
}

/// The entry of a `/v1/models` body that serves `model`: the one whose `id` is `model`, or the
/// only one listed (a server that ignores `model` answers with it whatever is asked).
pub fn pick_served_model(body: &[u8], model: &str) -> Result<String, String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("/v1/models reply is not JSON: {e}"))?;
    let data = v.get("data").and_then(|d| d.as_array()).ok_or("/v1/models reply has no `data` list")?;
    let id_of = |e: &serde_json::Value| e.get("id").and_then(|i| i.as_str()).map(str::to_string);
    let entry = match data.iter().find(|e| id_of(e).as_deref() == Some(model)) {
        Some(e) => e,
        None if data.len() == 1 => &data[0],
        None => return Err(format!("/v1/models lists {} models and none is {model:?}", data.len())),
    };
    let id = id_of(entry).ok_or("/v1/models entry has no string `id`")?;
    let field = |k: &str| entry.get(k).cloned().unwrap_or(serde_json::Value::Null);
    Ok(serde_json::json!({"id": id, "root": field("root"), "parent": field("parent")}).to_string())
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

pub struct CompletionsClient {
    config: CompletionsConfig,
    client: HttpClient,
    identity: OnceLock<Result<ServedIdentity, String>>,
}

impl std::fmt::Debug for CompletionsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("CompletionsClient").field("config", &self.config).field("client", &self.client).finish()
    }
}

impl CompletionsClient {
    /// Validate the config and read the API key from the named environment variable.
    pub fn new(config: CompletionsConfig) -> Result<Self, HttpError> {
        if config.concurrency == 0 || config.prompts_per_request == 0 {
            return Err(HttpError::Config("concurrency and prompts_per_request must be at least 1".into()));
        }
        if !(config.timeout_s > 0.0 && config.timeout_s.is_finite()) {
            return Err(HttpError::Config(format!("timeout_s must be positive, got {}", config.timeout_s)));
        }
        if !(config.url.starts_with("http://") || config.url.starts_with("https://")) {
            return Err(HttpError::Config(format!("url must start with http:// or https://, got {:?}", config.url)));
        }
        let api_key = api_key_from_env(config.api_key_env.as_deref(), "api_key_env")
            .map_err(|_| HttpError::MissingApiKey { var: config.api_key_env.clone().unwrap_or_default() })?;
        let retry = Retry { retries: config.max_retries, backoff_initial_ms: config.backoff_initial_ms, backoff_max_ms: config.backoff_max_ms };
        let client = HttpClient::new(Duration::from_secs_f64(config.timeout_s), api_key, MAX_REPLY_BYTES, retry);
        Ok(Self { config, client, identity: OnceLock::new() })
    }

    /// Who answers at this URL (see `ServedIdentity`), read once from `GET /v1/models` beside
    /// the completions URL; the error says why it cannot be established. Read once and kept,
    /// failures included: a server that could not say who it is at the start of a run is not
    /// trusted to be the same one later in it.
    pub fn served_identity(&self) -> Result<&ServedIdentity, &str> {
        self.identity.get_or_init(|| self.fetch_identity()).as_ref().map_err(String::as_str)
    }

    fn fetch_identity(&self) -> Result<ServedIdentity, String> {
        let base = url_identity(&self.config.url);
        let models_url = match self.config.url.split(['?', '#']).next().and_then(|u| u.strip_suffix("/completions")) {
            Some(prefix) => format!("{prefix}/models"),
            None => return Err(format!("{base} does not end in /completions, so its /models is unknown")),
        };
        // One attempt, its message without credentials: a server that cannot say who it is
        // at the start of a run is not trusted later in it.
        let body = self.client.call(&models_url, None).map_err(|f| f.message().replace(&models_url, &url_identity(&models_url)))?;
        let served = pick_served_model(&body, &self.config.model)?;
        Ok(ServedIdentity(serde_json::json!({"url": base, "model": self.config.model, "served": served}).to_string()))
    }

    pub fn config(&self) -> &CompletionsConfig {
        &self.config
    }

    /// HTTP requests sent so far, retries included (for tests and progress logs).
    pub fn requests_sent(&self) -> usize {
        self.client.requests_sent()
    }

    /// Complete every prompt greedily; outputs in input order. Chunks of
    /// `prompts_per_request` are sent by up to `concurrency` worker threads; the first
    /// chunk that fails for good fails the batch (the other workers stop taking chunks).
    pub fn complete(&self, prompts: &[String], max_tokens: usize) -> Result<Vec<String>, HttpError> {
        let chunks: Vec<&[String]> = prompts.chunks(self.config.prompts_per_request).collect();
        let results: Vec<Mutex<Option<Vec<String>>>> = chunks.iter().map(|_| Mutex::new(None)).collect();
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
            let texts = slot.into_inner().ok().flatten().expect("every chunk either stored its texts or recorded a failure");
            out.extend(texts);
        }
        Ok(out)
    }

    fn complete_chunk(&self, chunk: &[String], max_tokens: usize) -> Result<Vec<String>, HttpError> {
        let url = &self.config.url;
        let prompt = if self.config.token_ids {
            let ids = chunk.iter().map(|p| self.tokenize(p)).collect::<Result<Vec<_>, _>>()?;
            serde_json::json!(ids)
        } else {
            serde_json::json!(chunk)
        };
        let mut body = serde_json::json!({"model": self.config.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "top_p": 1.0});
        if let (Some(add), false) = (self.config.add_special_tokens, self.config.token_ids) {
            body["add_special_tokens"] = serde_json::json!(add);
        }
        match self.client.call_retrying(url, Some(&body)) {
            Ok(reply) => parse_completion_reply(&reply, chunk.len()).map_err(|e| HttpError::Permanent { url: url.clone(), detail: e.to_string() }),
            Err(f) => Err(self.failed(url, f)),
        }
    }

    /// The server's own token ids for `prompt` (`POST /tokenize` beside the completions URL).
    fn tokenize(&self, prompt: &str) -> Result<Vec<u32>, HttpError> {
        let url = match self.config.url.split(['?', '#']).next().and_then(|u| u.strip_suffix("/v1/completions")) {
            Some(base) => format!("{base}/tokenize"),
            None => return Err(HttpError::Config(format!("{} does not end in /v1/completions, so its /tokenize is unknown", url_identity(&self.config.url)))),
        };
        let body = serde_json::json!({"model": self.config.model, "prompt": prompt, "add_special_tokens": self.config.add_special_tokens.unwrap_or(false)});
        let reply = self.client.call_retrying(&url, Some(&body)).map_err(|f| self.failed(&url, f))?;
        #[derive(Deserialize)]
        struct Tokens {
            tokens: Vec<u32>,
        }
        let t: Tokens = serde_json::from_slice(&reply)
            .map_err(|e| HttpError::Permanent { url: url.clone(), detail: format!("not a /tokenize reply ({e}): {}", crate::net::client::excerpt(&reply)) })?;
        Ok(t.tokens)
    }

    fn failed(&self, url: &str, f: JobFailure<String>) -> HttpError {
        match f {
            JobFailure::Permanent(detail) => HttpError::Permanent { url: url.to_string(), detail },
            JobFailure::Transient(last) => HttpError::Exhausted { url: url.to_string(), attempts: self.config.max_retries + 1, last },
        }
    }
}

/// Several completions servers serving one model (`judge.wildguard.urls`): requests of
/// `prompts_per_request` prompts are spread over all of them, `concurrency` in flight per
/// server. A request that fails for good on one server (its retries spent) drops that server
/// for the rest of the batch and goes to another; a permanent failure (4xx, malformed reply)
/// fails the batch at once, and so does the last server going down. One server behaves
/// exactly as a lone `CompletionsClient`.
#[derive(Debug)]
pub struct CompletionsFleet {
    clients: Vec<CompletionsClient>,
}

impl CompletionsFleet {
    pub fn new(clients: Vec<CompletionsClient>) -> Result<Self, HttpError> {
        if clients.is_empty() {
            return Err(HttpError::Config("a judge fleet needs at least one server".into()));
        }
        Ok(Self { clients })
    }

    /// A fleet of one server.
    pub fn one(client: CompletionsClient) -> Self {
        Self { clients: vec![client] }
    }

    pub fn clients(&self) -> &[CompletionsClient] {
        &self.clients
    }

    /// Who answers: one server's identity as is; for several, their URLs and the one served
    /// model entry they must all report (servers that disagree cannot share a verdict cache).
    pub fn served_identity(&self) -> Result<ServedIdentity, String> {
        if let [one] = self.clients.as_slice() {
            return one.served_identity().cloned().map_err(str::to_string);
        }
        let mut urls = Vec::new();
        let mut served: Option<serde_json::Value> = None;
        for c in &self.clients {
            let id = c.served_identity().map_err(str::to_string)?;
            let v: serde_json::Value = serde_json::from_str(&id.0).map_err(|e| format!("identity of {}: {e}", url_identity(&c.config.url)))?;
            match &served {
                None => served = Some(v["served"].clone()),
                Some(s) if *s == v["served"] => {}
                Some(s) => {
                    return Err(format!("the judge servers serve different models: {} reports {} but another {s}", url_identity(&c.config.url), v["served"]))
                }
            }
            urls.push(url_identity(&c.config.url));
        }
        urls.sort();
        let model = &self.clients[0].config.model;
        Ok(ServedIdentity(serde_json::json!({"urls": urls, "model": model, "served": served}).to_string()))
    }

    /// Complete every prompt greedily over the fleet; outputs in input order.
    pub fn complete(&self, prompts: &[String], max_tokens: usize) -> Result<Vec<String>, HttpError> {
        if let [one] = self.clients.as_slice() {
            return one.complete(prompts, max_tokens);
        }
        let per = self.clients.iter().map(|c| c.config.prompts_per_request).min().unwrap_or(1).max(1);
        let chunks: Vec<&[String]> = prompts.chunks(per).collect();
        let workers: Vec<usize> = self.clients.iter().map(|c| c.config.concurrency).collect();
        let mut results: Vec<Option<Vec<String>>> = vec![None; chunks.len()];
        let run = |s: usize, i: usize| match self.clients[s].complete_chunk(chunks[i], max_tokens) {
            Ok(texts) => Ok(texts),
            Err(e @ HttpError::Exhausted { .. }) => {
                tracing::warn!("judge server dropped for this batch: {e}");
                Err(JobFailure::Transient(e))
            }
            Err(e) => Err(JobFailure::Permanent(e)),
        };
        let deliver = |i: usize, _s: usize, texts: Vec<String>| {
            results[i] = Some(texts);
            Ok(())
        };
        match spread(chunks.len(), &workers, None, run, deliver) {
            Ok(_) => {}
            Err(SpreadError::Permanent(e) | SpreadError::AllDown(e) | SpreadError::Delivery(e)) => return Err(e),
            Err(SpreadError::Cancelled) => return Err(HttpError::Config("judge fleet: stopped".into())),
        }
        let mut out = Vec::with_capacity(prompts.len());
        for (i, slot) in results.into_iter().enumerate() {
            match slot {
                Some(texts) => out.extend(texts),
                None => return Err(HttpError::Config(format!("judge fleet: request {i} was not answered by any server"))),
            }
        }
        Ok(out)
    }
}
