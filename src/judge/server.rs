//! A small OpenAI-compatible completions server (`POST /v1/completions`, `GET /v1/models`)
//! over any `TextGenerator`: lets a local checkpoint serve as a judge for other machines, and
//! gives the HTTP judge path a real server to be tested against. Called by the CLI (`serve`)
//! and by tests. Greedy only: a request with `temperature` other than 0 is refused (400),
//! since the generator cannot sample.
//!
//! Prompts are passed to the generator as complete strings: no special tokens are added
//! (`add_special_tokens: true` is refused).
//!
//! Hardening (every request gets an answer and none can take the server down):
//! - limits, checked by the pure `parse_request` before any generation: body bytes (413),
//!   prompts per request, `max_tokens`, and prompt tokens + `max_tokens` within the model's
//!   context (400, with the offending field in `error.param`, as OpenAI does);
//! - a whole-request deadline: reading the body runs on a helper thread the worker waits on
//!   (408 when it does not arrive), and generation is split into batches with the deadline
//!   checked between them (504), so one slow client never holds the worker for good;
//! - a generator panic is caught and answered 500, and the worker keeps serving (the policy
//!   lock is never poisoned: see `build::PolicyGenerator`);
//! - an optional bearer token (401 without it), compared in constant time.
//!
//! `fail_first` makes the first N completions requests answer HTTP 503 (to exercise client
//! retries).

use std::io::Read;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::json;

use super::TextGenerator;

/// A bearer token, held only as its blake3 hash: `blake3::Hash` compares in constant time,
/// and hashing first also hides the token's length from timing. Debug never prints it.
#[derive(Clone)]
pub struct BearerToken(blake3::Hash);

impl BearerToken {
    pub fn new(token: &str) -> Self {
        BearerToken(blake3::hash(token.as_bytes()))
    }
    /// Whether an `Authorization` header value carries this token.
    pub fn accepts(&self, authorization: Option<&str>) -> bool {
        let presented = authorization.and_then(|h| h.strip_prefix("Bearer ")).unwrap_or("");
        // Always hash and compare, so a missing header takes the same path as a wrong one.
        blake3::hash(presented.as_bytes()) == self.0 && authorization.is_some()
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Address to bind, e.g. `127.0.0.1:0` (0 = any free port).
    pub bind: String,
    /// Name reported in replies (`model`) and as the `id` of `GET /v1/models`.
    pub model_name: String,
    /// Reported as `root` by `GET /v1/models` (vLLM puts the model path there; `serve`
    /// puts the weights digest, so a client can tell two checkpoints behind one name apart).
    pub model_root: Option<String>,
    /// Answer the first N completions requests with HTTP 503 (`usize::MAX` = always).
    pub fail_first: usize,
    /// Threads taking requests.
    pub workers: usize,
    /// Largest `max_tokens` accepted.
    pub max_tokens_limit: usize,
    /// Largest request body read; a larger one is answered 413 without being parsed.
    pub max_body_bytes: usize,
    /// Most prompts in one request.
    pub max_prompts: usize,
    /// Deadline for the whole request: receiving the body and generating.
    pub request_timeout: Duration,
    /// Prompts per generator call; the deadline is checked between calls.
    pub batch: usize,
    /// When set, every request must carry `Authorization: Bearer TOKEN` (else 401).
    pub auth_token: Option<BearerToken>,
}

/// Default `max_body_bytes`: 64 prompts of WildGuard's format around 8 KiB answers fit
/// several times over; anything larger is not a judge request.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;
/// Default `max_prompts`: four of the HTTP judge's default requests (16 prompts).
pub const DEFAULT_MAX_PROMPTS: usize = 64;
/// Default `request_timeout`: above the HTTP judge's own 180 s client timeout, so a slow CPU
/// server answers what the client still waits for.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:0".into(),
            model_name: "local".into(),
            model_root: None,
            fail_first: 0,
            workers: 2,
            max_tokens_limit: 4096,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_prompts: DEFAULT_MAX_PROMPTS,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            batch: 16,
            auth_token: None,
        }
    }
}

/// A declared `Content-Length` above this is never answered normally. tiny_http 0.12 drains
/// an unread body when the request is dropped by allocating the whole remaining length at
/// once (`vec![0; remaining]`), so a request that merely claims 10^18 bytes would abort the
/// process. Such a request is answered 413 through `upgrade` and its connection leaked on
/// purpose (one socket and one tiny_http thread), which is the only way to dispose of it
/// without that drop. Below this bound the drain allocation is harmless.
const DRAIN_LIMIT_BYTES: usize = 64 << 20;

/// Bodies being received at once; beyond this a request is answered 503 at once, so slow
/// clients cannot pile up helper threads.
const MAX_PENDING_READS: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot bind completions server to {bind}: {detail}")]
    Bind { bind: String, detail: String },
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PromptField {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct Request {
    prompt: PromptField,
    #[serde(default = "default_max_tokens")]
    max_tokens: usize,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    model: Option<String>,
    /// vLLM extension. `TextGenerator` prompts are complete strings and never get special
    /// tokens added, so `true` is refused rather than silently ignored.
    #[serde(default)]
    add_special_tokens: Option<bool>,
}

fn default_max_tokens() -> usize {
    // OpenAI's documented default for /v1/completions.
    16
}

/// A request that passed every check of `parse_request`.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidRequest {
    pub prompts: Vec<String>,
    pub max_tokens: usize,
    pub model: Option<String>,
}

/// Why a request is refused: the HTTP status, the request field at fault (OpenAI's
/// `error.param`) and a sentence for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub field: Option<&'static str>,
    pub message: String,
}

impl Rejection {
    fn bad(field: &'static str, message: String) -> Self {
        Rejection { status: 400, field: Some(field), message }
    }
    fn body(&self) -> serde_json::Value {
        let kind = if self.status == 413 { "request_too_large" } else { "invalid_request_error" };
        json!({"error": {"message": self.message, "type": kind, "param": self.field, "code": null}})
    }
}

/// Parse and validate one completions request body, without a socket: what the server does
/// before it touches the generator. Pure apart from the generator's tokenizer (for the
/// context check); never panics on any input.
pub fn parse_request(body: &[u8], options: &ServerOptions, generator: &dyn TextGenerator) -> Result<ValidRequest, Rejection> {
    if body.len() > options.max_body_bytes {
        return Err(Rejection { status: 413, field: None, message: format!("request body over {} bytes", options.max_body_bytes) });
    }
    let parsed: Request = serde_json::from_slice(body).map_err(|e| Rejection { status: 400, field: None, message: format!("bad request JSON: {e}") })?;
    if parsed.temperature.is_some_and(|t| t != 0.0) {
        return Err(Rejection::bad("temperature", "this server decodes greedily: temperature must be 0".into()));
    }
    if parsed.add_special_tokens == Some(true) {
        return Err(Rejection::bad("add_special_tokens", "this server never adds special tokens: send add_special_tokens=false or omit it".into()));
    }
    if parsed.max_tokens > options.max_tokens_limit {
        return Err(Rejection::bad("max_tokens", format!("max_tokens {} is over this server's limit of {}", parsed.max_tokens, options.max_tokens_limit)));
    }
    let prompts = match parsed.prompt {
        PromptField::One(p) => vec![p],
        PromptField::Many(ps) => ps,
    };
    if prompts.is_empty() {
        return Err(Rejection::bad("prompt", "prompt is an empty list".into()));
    }
    if prompts.len() > options.max_prompts {
        return Err(Rejection::bad("prompt", format!("{} prompts in one request; this server takes at most {}", prompts.len(), options.max_prompts)));
    }
    if let Some(context) = generator.context_tokens() {
        for (i, p) in prompts.iter().enumerate() {
            let n = match generator.count_tokens(p) {
                Some(Ok(n)) => n,
                Some(Err(e)) => return Err(Rejection::bad("prompt", format!("prompt {i} cannot be tokenised: {e:#}"))),
                None => continue,
            };
            if n == 0 {
                return Err(Rejection::bad("prompt", format!("prompt {i} is empty (no tokens)")));
            }
            if n.saturating_add(parsed.max_tokens) > context {
                return Err(Rejection::bad(
                    "max_tokens",
                    format!("prompt {i} has {n} tokens; with max_tokens {} that is over the model's context of {context} tokens", parsed.max_tokens),
                ));
            }
        }
    }
    Ok(ValidRequest { prompts, max_tokens: parsed.max_tokens, model: parsed.model })
}

/// A running server; stops (and joins its threads) when dropped.
pub struct CompletionsServer {
    server: Arc<tiny_http::Server>,
    addr: SocketAddr,
    workers: Vec<JoinHandle<()>>,
    requests_seen: Arc<AtomicUsize>,
}

/// What the workers share.
struct Shared<G> {
    generator: G,
    options: ServerOptions,
    /// Requests received, except `GET /v1/models` (see `requests_seen`).
    seen: Arc<AtomicUsize>,
    /// Completions requests that passed authentication (`fail_first` counts these).
    completions: AtomicUsize,
    pending_reads: Arc<AtomicUsize>,
}

impl CompletionsServer {
    pub fn start<G>(generator: G, options: ServerOptions) -> Result<Self, ServerError>
    where
        G: TextGenerator + Send + Sync + 'static,
    {
        let server = tiny_http::Server::http(options.bind.as_str()).map_err(|e| ServerError::Bind { bind: options.bind.clone(), detail: e.to_string() })?;
        let addr = server.server_addr().to_ip().ok_or_else(|| ServerError::Bind { bind: options.bind.clone(), detail: "not an IP listener".into() })?;
        let server = Arc::new(server);
        let requests_seen = Arc::new(AtomicUsize::new(0));
        let shared = Arc::new(Shared {
            generator,
            options,
            seen: Arc::clone(&requests_seen),
            completions: AtomicUsize::new(0),
            pending_reads: Arc::new(AtomicUsize::new(0)),
        });
        let workers = (0..shared.options.workers.max(1))
            .map(|_| {
                let server = Arc::clone(&server);
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || {
                    // `recv` errors only when the server is unblocked for shutdown.
                    while let Ok(request) = server.recv() {
                        // A panic anywhere in handling (the generator's is already caught
                        // closer to it) must not end this worker: with one worker the server
                        // would stop answering. The request, if still held, is dropped while
                        // unwinding and tiny_http answers it 500.
                        let _ = catch_unwind(AssertUnwindSafe(|| handle(request, &shared)));
                    }
                })
            })
            .collect();
        Ok(Self { server, addr, workers, requests_seen })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR/v1/completions`.
    pub fn completions_url(&self) -> String {
        format!("http://{}/v1/completions", self.addr)
    }

    /// Requests received so far (including the ones answered 503, 4xx or 401), except
    /// `GET /v1/models`: clients read that once to establish the server's identity, and a
    /// count of completions traffic should not move with it.
    pub fn requests_seen(&self) -> usize {
        self.requests_seen.load(Ordering::SeqCst)
    }
}

impl Drop for CompletionsServer {
    fn drop(&mut self) {
        for _ in &self.workers {
            self.server.unblock();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn json_header() -> tiny_http::Header {
    tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..]).expect("static header is valid")
}

fn respond_json(request: tiny_http::Request, status: u16, body: serde_json::Value) {
    let response = tiny_http::Response::from_string(body.to_string()).with_status_code(status).with_header(json_header());
    // The client may have gone away (timeout); nothing useful to do then.
    let _ = request.respond(response);
}

fn error_body(message: &str, kind: &str) -> serde_json::Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": null}})
}

fn handle<G: TextGenerator>(request: tiny_http::Request, shared: &Shared<G>) {
    let options = &shared.options;
    if request.body_length().is_some_and(|n| n > DRAIN_LIMIT_BYTES.max(options.max_body_bytes)) {
        let body = Rejection { status: 413, field: None, message: format!("request body over {} bytes", options.max_body_bytes) }.body();
        let response = tiny_http::Response::from_string(body.to_string()).with_status_code(413).with_header(json_header());
        // See DRAIN_LIMIT_BYTES: dropping this stream would abort the process.
        std::mem::forget(request.upgrade("close", response));
        return;
    }
    let path = request.url().split('?').next().unwrap_or("").to_string();
    let models = request.method() == &tiny_http::Method::Get && path == "/v1/models";
    if !models {
        shared.seen.fetch_add(1, Ordering::SeqCst);
    }
    if let Some(token) = &options.auth_token {
        let auth = request.headers().iter().find(|h| h.field.equiv("Authorization")).map(|h| h.value.as_str());
        if !token.accepts(auth) {
            return respond_json(request, 401, error_body("missing or wrong bearer token (Authorization: Bearer ...)", "authentication_error"));
        }
    }
    if models {
        let o = options;
        return respond_json(
            request,
            200,
            json!({"object": "list", "data": [{"id": o.model_name, "object": "model", "created": 0, "owned_by": "self-redteam", "root": o.model_root}]}),
        );
    }
    if !(request.method() == &tiny_http::Method::Post && path == "/v1/completions") {
        return respond_json(request, 404, error_body("only POST /v1/completions and GET /v1/models are served", "not_found"));
    }
    let n = shared.completions.fetch_add(1, Ordering::SeqCst);
    if n < options.fail_first {
        return respond_json(request, 503, error_body("injected failure (fail_first)", "unavailable"));
    }
    let deadline = Instant::now() + options.request_timeout;
    let Some((request, body)) = receive_body(request, options.max_body_bytes, deadline, &shared.pending_reads) else { return };
    let parsed = match parse_request(&body, options, &shared.generator) {
        Ok(p) => p,
        Err(r) => return respond_json(request, r.status, r.body()),
    };
    let mut texts = Vec::with_capacity(parsed.prompts.len());
    for chunk in parsed.prompts.chunks(options.batch.max(1)) {
        if Instant::now() >= deadline {
            return respond_json(
                request,
                504,
                error_body(
                    &format!(
                        "request timeout ({:.0} s) reached after {} of {} prompts",
                        options.request_timeout.as_secs_f64(),
                        texts.len(),
                        parsed.prompts.len()
                    ),
                    "timeout",
                ),
            );
        }
        let out = catch_unwind(AssertUnwindSafe(|| shared.generator.generate_greedy(chunk, parsed.max_tokens)));
        match out {
            Ok(Ok(t)) if t.len() == chunk.len() => texts.extend(t),
            Ok(Ok(t)) => {
                return respond_json(request, 500, error_body(&format!("generator returned {} texts for {} prompts", t.len(), chunk.len()), "server_error"))
            }
            Ok(Err(e)) => return respond_json(request, 500, error_body(&format!("generation failed: {e:#}"), "server_error")),
            Err(_) => return respond_json(request, 500, error_body("generation panicked; the server keeps serving", "server_error")),
        }
    }
    let choices: Vec<_> = texts.into_iter().enumerate().map(|(i, t)| json!({"index": i, "text": t, "logprobs": null, "finish_reason": "stop"})).collect();
    let model = parsed.model.unwrap_or_else(|| options.model_name.clone());
    respond_json(request, 200, json!({"id": format!("cmpl-{n}"), "object": "text_completion", "created": 0, "model": model, "choices": choices}))
}

/// Read at most `limit + 1` bytes of the body on a helper thread, waiting until `deadline`.
/// Returns the request and its body, or `None` when the request was already answered (413,
/// 503, or 408 by the helper once the body finally arrives or the client gives up).
fn receive_body(request: tiny_http::Request, limit: usize, deadline: Instant, pending: &Arc<AtomicUsize>) -> Option<(tiny_http::Request, Vec<u8>)> {
    if pending.fetch_add(1, Ordering::SeqCst) >= MAX_PENDING_READS {
        pending.fetch_sub(1, Ordering::SeqCst);
        respond_json(request, 503, error_body("too many request bodies in flight; retry later", "unavailable"));
        return None;
    }
    let (tx, rx) = mpsc::sync_channel(1);
    let pending_done = Arc::clone(pending);
    let spawned = std::thread::Builder::new().name("serve-body".into()).spawn(move || {
        let mut request = request;
        let mut body = Vec::new();
        let read = request.as_reader().take(limit as u64 + 1).read_to_end(&mut body);
        pending_done.fetch_sub(1, Ordering::SeqCst);
        if let Err(e) = read {
            return respond_json(request, 400, error_body(&format!("cannot read body: {e}"), "invalid_request_error"));
        }
        if body.len() > limit {
            // Answered here: the rest of the body is drained when the request drops, and
            // that must not hold a worker.
            let r = Rejection { status: 413, field: None, message: format!("request body over {limit} bytes") };
            return respond_json(request, 413, r.body());
        }
        if let Err(mpsc::SendError((request, _))) = tx.send((request, body)) {
            respond_json(request, 408, error_body("request body not received within the request timeout", "timeout"));
        }
    });
    if spawned.is_err() {
        // The closure, and the request with it, was dropped: tiny_http answered 500.
        pending.fetch_sub(1, Ordering::SeqCst);
        return None;
    }
    rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).ok()
}
