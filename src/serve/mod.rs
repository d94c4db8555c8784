//! `serve`: a small inference server over any `TextGenerator`, one file per protocol:
//! - `openai.rs`: OpenAI text completions (`POST /v1/completions` with a text prompt,
//!   `GET /v1/models`), greedy only. Lets a local checkpoint serve as a judge for other
//!   machines, and gives the HTTP judge path a real server to be tested against.
//! - `sglang.rs`: SGLang's native API for RL generation (src/net/wire.rs has the bodies):
//!   `POST /generate` with `input_ids` and per-prompt `sampling_params` (each with its own
//!   `sampling_seed`), output ids with the stop token kept, output log-probs and, with
//!   `logprob_start_len: 0`, the prompt's own log-probs; `POST /update_weights_from_disk`.
//!   Here with it: `POST /pause_generation`, `/continue_generation`, `/flush_cache`, and the
//!   info routes `GET /model_info` (with `weight_version`) and `GET /server_info`, as SGLang
//!   0.5.23 names them (its retired `/get_weight_version`, `/get_model_info` and
//!   `/get_server_info` are 404 here too).
//! - `vllm.rs`: vLLM's token-id extensions of `POST /v1/completions` and its dev-mode reload
//!   (`POST /collective_rpc reload_weights`, `/update_weight_version`, `/pause`); here with
//!   it: `GET /weight_info`, `POST /resume`, `GET /is_paused`, `POST /reset_prefix_cache`,
//!   `GET /version`, and `POST /tokenize` (both engines serve it; the HTTP judge uses it for
//!   SGLang). Seeds are checked as both engines check them: integers in
//!   −2⁶³ … 2⁶³−1 (negative ones allowed), 400 otherwise.
//! - `http1.rs`: the HTTP/1.1 transport; `generator.rs`: the `TextGenerator` trait;
//!   `policy.rs`: its implementation over a `Policy` (feature `compute`).
//!
//! Token-id requests sample (temperature, top-p, top-k, per-row seeds) through
//! `TextGenerator::sample_tokens`; a row's tokens depend only on its prompt, settings and
//! seed, not on how rows are grouped into requests. A temperature below 1e-6 is greedy (as
//! SGLang does). Every reply reports the weight version it was generated with: generation
//! holds the weight state for reading, a weight update holds it for writing, so no reply
//! mixes two versions. The weight version starts at `ServerOptions::weight_version`
//! (SGLang's `"default"`), and `GET /v1/models` reports the current weights digest as `root`.
//! Anyone who can reach the server can make it load any checkpoint path of its machine:
//! bind to loopback or set a bearer token.
//!
//! Hardening (every request gets an answer and none can take the server down):
//! - limits, checked by the pure parsers (`parse_request`, `parse_generate`,
//!   `parse_token_completion`) before any generation: body bytes (413), prompts per request,
//!   `max_tokens`, prompt tokens + `max_tokens` within the model's context, token ids below
//!   the vocabulary size (400, with the offending field in `error.param`, as OpenAI does);
//! - the transport (`http1`) owns every socket: at most `max_connections` connections, a head
//!   due within `header_timeout`, a body within `body_timeout` (408 and close otherwise), a
//!   declared body over `max_body_bytes` answered 413 before it is read, idle keep-alive
//!   connections closed after `idle_timeout`, so slow or silent clients cannot hold threads
//!   or sockets; a request reaches a worker only whole;
//! - a compute deadline (`request_timeout`): generation is split into batches with it
//!   checked between them (504), so one slow client never holds the worker for good;
//! - a generator panic is caught and answered 500, and the worker keeps serving (the policy
//!   lock is never poisoned: see `policy::PolicyGenerator`);
//! - an optional bearer token (401 without it) on every route but `GET /health`, compared in
//!   constant time.
//!
//! `fail_first` makes the first N generation requests (`/v1/completions` and `/generate`)
//! answer HTTP 503 (to exercise client retries). While generation is paused
//! (`/pause_generation` or `/pause`), token-id generation requests are answered 503; text
//! completions (the judge path) are not paused.

pub mod generator;
pub mod http1;
mod openai;
#[cfg(feature = "compute")]
pub mod policy;
mod sglang;
mod vllm;

use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::json;

pub use self::generator::{GreedyText, TextGenerator};
use self::http1::{error_body, Request as HttpRequest, Response};
use self::openai::{check_model, text_completion};
pub use self::openai::{completions_prompt_kind, parse_request, PromptKind, ValidRequest};
use self::sglang::{generate, update_weights_from_disk};
pub use self::sglang::{parse_generate, ValidGenerate};
use self::vllm::{collective_rpc, token_completion, tokenize, update_weight_version};
pub use self::vllm::{parse_pause_mode, parse_token_completion, parse_token_completion_batch, ValidTokenCompletion};
use crate::net::wire::{
    OneOrMany, SglangFinishReason, SglangGenerateRequest, SglangGenerateResponse, SglangLogprob, SglangMetaInfo, SglangUpdateWeightsRequest,
    SglangUpdateWeightsResponse, TokenCompletion, TokenSampling, VllmCollectiveRpc, VllmCompletionRequest, VllmTokenLogprob, VllmUpdateWeightVersion,
    WeightVersion,
};

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
    /// A weight update replaces it with what `TextGenerator::reload` returns.
    pub model_root: Option<String>,
    /// Weight version before any update (SGLang's default: `"default"`); a weight update
    /// sets it (`weight_version` of `/update_weights_from_disk` or `/finish_weight_update`).
    pub weight_version: String,
    /// Reported as `model_path` (`/get_server_info`, `/get_model_info`); a weight update sets
    /// it to the path loaded.
    pub model_path: Option<String>,
    /// Answer the first N generation requests with HTTP 503 (`usize::MAX` = always).
    pub fail_first: usize,
    /// Threads taking requests.
    pub workers: usize,
    /// Largest `max_tokens` accepted.
    pub max_tokens_limit: usize,
    /// Largest request body read; a larger one is answered 413 without being parsed.
    pub max_body_bytes: usize,
    /// Most prompts in one request.
    pub max_prompts: usize,
    /// Deadline for computing a request once it is received whole (generation is checked
    /// against it between batches: 504).
    pub request_timeout: Duration,
    /// Most connections open at once; one more is answered 503 and closed.
    pub max_connections: usize,
    /// A request head (line and headers) is due this long after its first byte (a new
    /// connection's: after the accept), else 408 and the connection is closed.
    pub header_timeout: Duration,
    /// The body is due this long after the head, else 408 and the connection is closed.
    pub body_timeout: Duration,
    /// An idle keep-alive connection is closed after this.
    pub idle_timeout: Duration,
    /// Prompts per generator call (text and token ids); the deadline is checked between calls.
    pub batch: usize,
    /// When set, every request must carry `Authorization: Bearer TOKEN` (else 401).
    pub auth_token: Option<BearerToken>,
    /// When set, every request that passed authentication is written to this directory as
    /// `<n>.json` (`{"method", "route", "body"}`, numbered in arrival order), so tests can feed
    /// what a client really sent to the engines' own request validation
    /// (scripts/contracts.py).
    pub record_requests: Option<std::path::PathBuf>,
}

/// Default `max_body_bytes`: 64 prompts of WildGuard's format around 8 KiB answers fit
/// several times over; anything larger is not a judge request.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;
/// Default `max_prompts`: four of the HTTP judge's default requests (16 prompts).
pub const DEFAULT_MAX_PROMPTS: usize = 64;
/// Default `request_timeout`: above the HTTP judge's own 180 s client timeout, so a slow CPU
/// server answers what the client still waits for.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// Default `weight_version`: SGLang's before any update.
pub const DEFAULT_WEIGHT_VERSION: &str = "default";

impl Default for ServerOptions {
    /// The connection limits are the transport's own defaults (`http1::Limits`).
    fn default() -> Self {
        let limits = http1::Limits::default();
        Self {
            bind: "127.0.0.1:0".into(),
            model_name: "local".into(),
            model_root: None,
            weight_version: DEFAULT_WEIGHT_VERSION.into(),
            model_path: None,
            fail_first: 0,
            workers: 2,
            max_tokens_limit: 4096,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_prompts: DEFAULT_MAX_PROMPTS,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_connections: limits.max_connections,
            header_timeout: limits.header_timeout,
            body_timeout: limits.body_timeout,
            idle_timeout: limits.idle_timeout,
            batch: 16,
            auth_token: None,
            record_requests: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot bind completions server to {bind}: {detail}")]
    Bind { bind: String, detail: String },
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
    pub(crate) fn bad(field: &'static str, message: String) -> Self {
        Rejection { status: 400, field: Some(field), message }
    }
    pub(crate) fn body(&self) -> serde_json::Value {
        let kind = match self.status {
            413 => "request_too_large",
            409 => "conflict",
            503 => "unavailable",
            _ => "invalid_request_error",
        };
        json!({"error": {"message": self.message, "type": kind, "param": self.field, "code": null}})
    }
}

/// A temperature below this samples greedily (SGLang's `_SAMPLING_EPS`): dividing logits by
/// it would overflow.
pub const GREEDY_BELOW_TEMPERATURE: f64 = 1e-6;

/// Request field names of one protocol, for `Rejection::field`.
struct Fields {
    prompt: &'static str,
    max: &'static str,
    min: &'static str,
}

const SGLANG_FIELDS: Fields = Fields { prompt: "input_ids", max: "max_new_tokens", min: "min_new_tokens" };
const VLLM_FIELDS: Fields = Fields { prompt: "prompt", max: "max_tokens", min: "min_tokens" };

/// The body as JSON, within the body limit (413 past it, 400 when it is not JSON).
fn json_value(body: &[u8], options: &ServerOptions) -> Result<serde_json::Value, Rejection> {
    if body.len() > options.max_body_bytes {
        return Err(Rejection { status: 413, field: None, message: format!("request body over {} bytes", options.max_body_bytes) });
    }
    serde_json::from_slice(body).map_err(|e| Rejection { status: 400, field: None, message: format!("bad request JSON: {e}") })
}

/// `T` from a JSON body (an empty body reads as `{}`).
fn json_body<T: serde::de::DeserializeOwned>(body: &[u8], options: &ServerOptions) -> Result<T, Rejection> {
    let v = if body.iter().all(u8::is_ascii_whitespace) { json!({}) } else { json_value(body, options)? };
    serde_json::from_value(v).map_err(|e| Rejection { status: 400, field: None, message: format!("bad request JSON: {e}") })
}

/// 400 naming `field` when a seed in `holder` (an object, or a list of objects: SGLang's
/// per-prompt `sampling_params`) is not an integer in −2⁶³ … 2⁶³−1, as SGLang's
/// `SamplingParams.verify` and vLLM's request model refuse it. Checked before the typed parse,
/// whose error for an untagged list would not name the field.
fn check_seeds(holder: Option<&serde_json::Value>, field: &'static str) -> Result<(), Rejection> {
    let objects: Vec<&serde_json::Value> = match holder {
        Some(serde_json::Value::Array(items)) => items.iter().collect(),
        Some(v) => vec![v],
        None => Vec::new(),
    };
    for seed in objects.iter().filter_map(|o| o.get(field)) {
        if !(seed.is_null() || seed.as_i64().is_some()) {
            return Err(Rejection::bad(field, format!("{field} must be an integer in [-2**63, 2**63 - 1], got {seed}")));
        }
    }
    Ok(())
}

/// 400 naming `field` when the body sets it to something this server does not do.
fn refuse_field(v: &serde_json::Value, field: &'static str, unsupported: impl Fn(&serde_json::Value) -> bool, message: &str) -> Result<(), Rejection> {
    match v.get(field) {
        Some(x) if unsupported(x) => Err(Rejection::bad(field, message.to_string())),
        _ => Ok(()),
    }
}

fn top_k_ok(top_k: i64) -> Result<(), Rejection> {
    if top_k < -1 {
        return Err(Rejection::bad("top_k", format!("top_k must be -1 (off), 0 (off) or a positive count, got {top_k}")));
    }
    Ok(())
}

/// Checks one prompt and its settings against the server's limits and the model (vocabulary,
/// context); returns the settings as sampled (a near-zero temperature made greedy).
fn check_row(
    i: usize,
    prompt: &[u32],
    mut s: TokenSampling,
    f: &Fields,
    options: &ServerOptions,
    generator: &dyn TextGenerator,
) -> Result<TokenSampling, Rejection> {
    if prompt.is_empty() {
        return Err(Rejection::bad(f.prompt, format!("prompt {i} is empty (no tokens)")));
    }
    if let Some(vocab) = generator.vocab_size() {
        if let Some(j) = prompt.iter().position(|&t| t as usize >= vocab) {
            return Err(Rejection::bad(f.prompt, format!("prompt {i}: token id {} at position {j} is not below the vocabulary size {vocab}", prompt[j])));
        }
        if let Some(&t) = s.stop_token_ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(Rejection::bad("stop_token_ids", format!("prompt {i}: stop token id {t} is not below the vocabulary size {vocab}")));
        }
    }
    if !(s.temperature.is_finite() && s.temperature >= 0.0) {
        return Err(Rejection::bad("temperature", format!("prompt {i}: temperature must be a number >= 0, got {}", s.temperature)));
    }
    if s.temperature < GREEDY_BELOW_TEMPERATURE {
        s.temperature = 0.0;
    }
    if !(s.top_p > 0.0 && s.top_p <= 1.0) {
        return Err(Rejection::bad("top_p", format!("prompt {i}: top_p must be in (0, 1], got {}", s.top_p)));
    }
    if s.max_new_tokens > options.max_tokens_limit {
        return Err(Rejection::bad(f.max, format!("{} {} is over this server's limit of {}", f.max, s.max_new_tokens, options.max_tokens_limit)));
    }
    if s.min_new_tokens > s.max_new_tokens {
        return Err(Rejection::bad(f.min, format!("{} {} is over {} {}", f.min, s.min_new_tokens, f.max, s.max_new_tokens)));
    }
    if let Some(context) = generator.context_tokens() {
        let n = prompt.len();
        if n.saturating_add(s.max_new_tokens) > context {
            return Err(Rejection::bad(
                f.max,
                format!("prompt {i} has {n} tokens; with {} {} that is over the model's context of {context} tokens", f.max, s.max_new_tokens),
            ));
        }
    }
    Ok(s)
}

/// Every route: (method, path, route). The 404 reply lists them.
const ROUTES: &[(&str, &str, Route)] = &[
    ("GET", "/health", Route::Health),
    ("GET", "/v1/models", Route::Models),
    ("GET", "/version", Route::Version),
    ("GET", "/server_info", Route::ServerInfo),
    ("GET", "/model_info", Route::ModelInfo),
    ("GET", "/weight_info", Route::WeightVersion),
    ("GET", "/is_paused", Route::IsPaused),
    ("POST", "/v1/completions", Route::Completions),
    ("POST", "/generate", Route::Generate),
    ("POST", "/update_weights_from_disk", Route::UpdateWeightsFromDisk),
    ("POST", "/pause_generation", Route::PauseGeneration),
    ("POST", "/continue_generation", Route::ContinueGeneration),
    ("POST", "/flush_cache", Route::FlushCache),
    ("POST", "/collective_rpc", Route::CollectiveRpc),
    ("POST", "/update_weight_version", Route::UpdateWeightVersion),
    ("POST", "/pause", Route::Pause),
    ("POST", "/resume", Route::Resume),
    ("POST", "/reset_prefix_cache", Route::ResetPrefixCache),
    ("POST", "/tokenize", Route::Tokenize),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Health,
    Models,
    Version,
    ServerInfo,
    ModelInfo,
    WeightVersion,
    IsPaused,
    Completions,
    Generate,
    UpdateWeightsFromDisk,
    PauseGeneration,
    ContinueGeneration,
    FlushCache,
    CollectiveRpc,
    UpdateWeightVersion,
    Pause,
    Resume,
    ResetPrefixCache,
    Tokenize,
    NotFound,
}

impl Route {
    fn of(method: &str, path: &str) -> Route {
        ROUTES.iter().find(|(m, p, _)| *m == method && *p == path).map_or(Route::NotFound, |r| r.2)
    }
    /// Reads of the server's identity and state, which `requests_seen` leaves out.
    fn is_info(self) -> bool {
        matches!(self, Route::Health | Route::Models | Route::Version | Route::ServerInfo | Route::ModelInfo | Route::WeightVersion | Route::IsPaused)
    }
}

/// A running server; stops (and joins its threads) when dropped.
pub struct CompletionsServer {
    http: Option<http1::Server>,
    addr: SocketAddr,
    workers: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    requests_seen: Arc<AtomicUsize>,
}

/// A request for a worker, and where its response goes.
type Job = (HttpRequest, mpsc::SyncSender<Response>);

/// What the served weights are (changed only by a weight update, under the write lock).
struct Weights {
    version: String,
    model_path: Option<String>,
    root: Option<String>,
}

/// What the workers share.
struct Shared<G> {
    generator: G,
    options: ServerOptions,
    /// Requests received, except the info reads (see `requests_seen`).
    seen: Arc<AtomicUsize>,
    /// Generation requests that passed authentication (`fail_first` counts these).
    generation_requests: AtomicUsize,
    /// Requests recorded (`options.record_requests`).
    recorded: AtomicUsize,
    /// Generation reads it for a whole request (so a reply names the version it was made
    /// with); a weight update writes it around the reload.
    weights: RwLock<Weights>,
    paused: AtomicBool,
}

impl CompletionsServer {
    pub fn start<G>(generator: G, options: ServerOptions) -> Result<Self, ServerError>
    where
        G: TextGenerator + Send + Sync + 'static,
    {
        let options_bind = options.bind.clone();
        let limits = http1::Limits {
            max_connections: options.max_connections.max(1),
            max_body_bytes: options.max_body_bytes,
            header_timeout: options.header_timeout,
            body_timeout: options.body_timeout,
            idle_timeout: options.idle_timeout,
            ..http1::Limits::default()
        };
        let requests_seen = Arc::new(AtomicUsize::new(0));
        let weights = Weights { version: options.weight_version.clone(), model_path: options.model_path.clone(), root: options.model_root.clone() };
        let shared = Arc::new(Shared {
            generator,
            options,
            seen: Arc::clone(&requests_seen),
            generation_requests: AtomicUsize::new(0),
            recorded: AtomicUsize::new(0),
            weights: RwLock::new(weights),
            paused: AtomicBool::new(false),
        });
        // The transport reads every request whole on its connection's thread and hands it to
        // the `workers` (which bound how many requests compute at once) through one queue.
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..shared.options.workers.max(1))
            .map(|_| {
                let (queue, shared, stop) = (Arc::clone(&queue), Arc::clone(&shared), Arc::clone(&stop));
                std::thread::spawn(move || loop {
                    let job = queue.lock().unwrap_or_else(PoisonError::into_inner).recv_timeout(Duration::from_millis(100));
                    match job {
                        Ok((request, reply)) => {
                            // A panic anywhere in handling (the generator's is already caught
                            // closer to it) must not end this worker: with one worker the
                            // server would stop answering.
                            let response = catch_unwind(AssertUnwindSafe(|| handle(request, &shared)))
                                .unwrap_or_else(|_| Response::json(500, &error_body("the request handler panicked; the server keeps serving", "server_error")));
                            // The connection may be gone (client timeout); nothing to do then.
                            let _ = reply.send(response);
                        }
                        Err(mpsc::RecvTimeoutError::Timeout) if !stop.load(Ordering::SeqCst) => {}
                        Err(_) => return,
                    }
                })
            })
            .collect();
        let jobs = Mutex::new(jobs);
        let handler: http1::Handler = Arc::new(move |request: HttpRequest| {
            let (reply, response) = mpsc::sync_channel(1);
            let sent = jobs.lock().unwrap_or_else(PoisonError::into_inner).send((request, reply));
            match sent.ok().and_then(|()| response.recv().ok()) {
                Some(r) => r,
                None => Response::json(503, &error_body("the server is shutting down", "unavailable")),
            }
        });
        let http =
            http1::Server::bind(options_bind.as_str(), limits, handler).map_err(|e| ServerError::Bind { bind: options_bind.clone(), detail: e.to_string() })?;
        let addr = http.addr();
        Ok(Self { http: Some(http), addr, workers, stop, requests_seen })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR` (every route is under it).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://ADDR/v1/completions`.
    pub fn completions_url(&self) -> String {
        format!("http://{}/v1/completions", self.addr)
    }

    /// Requests received so far (including the ones answered 503, 4xx or 401), except the
    /// reads of the server's identity and state (`GET /v1/models`, `/health`, `/version`,
    /// `/get_server_info`, `/get_model_info`, `/get_weight_version`, `/weight_info`,
    /// `/is_paused`): clients read those to establish what is served, and a count of
    /// generation traffic should not move with them.
    pub fn requests_seen(&self) -> usize {
        self.requests_seen.load(Ordering::SeqCst)
    }
}

impl Drop for CompletionsServer {
    fn drop(&mut self) {
        // Stop accepting first, then let the workers finish what they hold and exit.
        drop(self.http.take());
        self.stop.store(true, Ordering::SeqCst);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn respond_rejection(r: &Rejection) -> Response {
    Response::json(r.status, &r.body())
}

/// An error answer: (HTTP status, body).
type Failure = (u16, serde_json::Value);

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

fn handle<G: TextGenerator>(request: HttpRequest, shared: &Shared<G>) -> Response {
    let options = &shared.options;
    let (path, query) = match request.target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (request.target.clone(), String::new()),
    };
    // HEAD is GET without the body (the transport leaves the body out).
    let method = if request.method == "HEAD" { "GET" } else { request.method.as_str() };
    let route = Route::of(method, &path);
    if !route.is_info() {
        shared.seen.fetch_add(1, Ordering::SeqCst);
    }
    if let (Some(token), false) = (&options.auth_token, route == Route::Health) {
        let auth = request.header("Authorization");
        if !token.accepts(auth) {
            return Response::json(401, &error_body("missing or wrong bearer token (Authorization: Bearer ...)", "authentication_error"));
        }
    }
    if let Some(dir) = &options.record_requests {
        record_request(dir, &request, method, shared);
    }
    let deadline = Instant::now() + options.request_timeout;
    match route {
        Route::Health => Response::json(200, &json!({})),
        Route::Models => models(shared),
        Route::Version => Response::json(200, &json!({"version": env!("CARGO_PKG_VERSION")})),
        Route::ServerInfo => {
            let w = read(&shared.weights);
            let body = json!({"version": env!("CARGO_PKG_VERSION"), "weight_version": w.version, "model_path": w.model_path});
            drop(w);
            Response::json(200, &body)
        }
        Route::ModelInfo => {
            let w = read(&shared.weights);
            let body = json!({"model_path": w.model_path, "weight_version": w.version, "is_generation": true});
            drop(w);
            Response::json(200, &body)
        }
        Route::WeightVersion => {
            let body = json!(WeightVersion { weight_version: Some(read(&shared.weights).version.clone()) });
            Response::json(200, &body)
        }
        Route::IsPaused => Response::json(200, &json!({"is_paused": shared.paused.load(Ordering::SeqCst)})),
        Route::Completions | Route::Generate => generation(&request, route, shared, deadline),
        Route::UpdateWeightsFromDisk => update_weights_from_disk(&request, shared),
        Route::PauseGeneration => {
            shared.paused.store(true, Ordering::SeqCst);
            Response::json(200, &json!({"message": "Generation paused successfully.", "status": "ok"}))
        }
        Route::ContinueGeneration => {
            shared.paused.store(false, Ordering::SeqCst);
            Response::json(200, &json!({"message": "Generation continued successfully.", "status": "ok"}))
        }
        Route::Pause => match parse_pause_mode(&query) {
            Ok(_) => {
                shared.paused.store(true, Ordering::SeqCst);
                Response::json(200, &json!({"status": "paused"}))
            }
            Err(r) => respond_rejection(&r),
        },
        Route::Resume => {
            shared.paused.store(false, Ordering::SeqCst);
            Response::json(200, &json!({"status": "resumed"}))
        }
        // There is no cache: every request is computed from its prompt.
        Route::FlushCache => Response::text(200, "Cache flushed."),
        Route::ResetPrefixCache => Response::json(200, &json!({"success": true})),
        Route::CollectiveRpc => collective_rpc(&request, shared),
        Route::UpdateWeightVersion => update_weight_version(&request, shared),
        Route::Tokenize => tokenize(&request, shared),
        Route::NotFound => {
            let served: Vec<String> = ROUTES.iter().map(|(m, p, _)| format!("{m} {p}")).collect();
            let message = format!("no route {} {path}; served: {}", request.method, served.join(", "));
            Response::json(404, &error_body(&message, "not_found"))
        }
    }
}

/// `options.record_requests`: one file per request; a write that fails is logged, never
/// answered (recording must not change what a client sees).
fn record_request<G: TextGenerator>(dir: &std::path::Path, request: &HttpRequest, method: &str, shared: &Shared<G>) {
    let n = shared.recorded.fetch_add(1, Ordering::SeqCst);
    let body = match serde_json::from_slice::<serde_json::Value>(&request.body) {
        Ok(v) => v,
        Err(_) if request.body.is_empty() => serde_json::Value::Null,
        Err(_) => serde_json::Value::String(String::from_utf8_lossy(&request.body).into_owned()),
    };
    let record = json!({"method": method, "route": request.target, "body": body});
    let path = dir.join(format!("{n:06}.json"));
    if let Err(e) = std::fs::write(&path, record.to_string()) {
        tracing::warn!("record request to {}: {e}", path.display());
    }
}

fn models<G: TextGenerator>(shared: &Shared<G>) -> Response {
    let o = &shared.options;
    let root = read(&shared.weights).root.clone();
    let context = shared.generator.context_tokens();
    let body = json!({"object": "list", "data": [{"id": o.model_name, "object": "model", "created": 0, "owned_by": "self-redteam", "root": root, "max_model_len": context}]});
    Response::json(200, &body)
}

fn paused_failure() -> Failure {
    (503, error_body("generation is paused (POST /continue_generation or /resume to continue)", "unavailable"))
}

/// `/v1/completions` (text or token ids) and `/generate`: `fail_first`, body, pause, parse,
/// generate, reply.
fn generation<G: TextGenerator>(request: &HttpRequest, route: Route, shared: &Shared<G>, deadline: Instant) -> Response {
    let options = &shared.options;
    let n = shared.generation_requests.fetch_add(1, Ordering::SeqCst);
    if n < options.fail_first {
        return Response::json(503, &error_body("injected failure (fail_first)", "unavailable"));
    }
    let body = &request.body;
    let answer = match (route, completions_prompt_kind(body)) {
        (Route::Generate, _) => generate(body, n, shared, deadline),
        (_, PromptKind::TokenIds) => token_completion(body, n, shared, deadline, false),
        (_, PromptKind::TokenIdBatch) => token_completion(body, n, shared, deadline, true),
        (_, PromptKind::Text) => text_completion(body, n, shared, deadline),
    };
    match answer {
        Ok(v) => Response::json(200, &v),
        Err((status, v)) => Response::json(status, &v),
    }
}

impl From<Rejection> for Failure {
    fn from(r: Rejection) -> Self {
        (r.status, r.body())
    }
}

fn timeout_failure(options: &ServerOptions, done: usize, total: usize) -> Failure {
    let message = format!("request timeout ({:.0} s) reached after {done} of {total} prompts", options.request_timeout.as_secs_f64());
    (504, error_body(&message, "timeout"))
}

/// What one token-id request produced, all under one weight version.
struct Sampled {
    completions: Vec<TokenCompletion>,
    /// Per prompt, when asked: `log p(ids[k] | ids[..k])` for k = 1..n.
    prompt_logprobs: Vec<Vec<f32>>,
    weight_version: String,
}

/// Samples every row (`options.batch` rows per generator call, the deadline checked between
/// calls) and, with `score_prompts`, each prompt's log-probs, holding the weight state for
/// reading throughout.
fn sample<G: TextGenerator>(
    shared: &Shared<G>,
    prompts: &[Vec<u32>],
    params: &[TokenSampling],
    score_prompts: bool,
    deadline: Instant,
) -> Result<Sampled, Failure> {
    let options = &shared.options;
    let weights = read(&shared.weights);
    let weight_version = weights.version.clone();
    let batch = options.batch.max(1);
    let mut completions = Vec::with_capacity(prompts.len());
    for (p, s) in prompts.chunks(batch).zip(params.chunks(batch)) {
        if Instant::now() >= deadline {
            return Err(timeout_failure(options, completions.len(), prompts.len()));
        }
        match catch_unwind(AssertUnwindSafe(|| shared.generator.sample_tokens(p, s))) {
            Ok(Ok(c)) if c.len() == p.len() => completions.extend(c),
            Ok(Ok(c)) => return Err((500, error_body(&format!("generator returned {} completions for {} prompts", c.len(), p.len()), "server_error"))),
            Ok(Err(e)) => return Err((500, error_body(&format!("generation failed: {e:#}"), "server_error"))),
            Err(_) => return Err((500, error_body("generation panicked; the server keeps serving", "server_error"))),
        }
    }
    let mut prompt_logprobs = Vec::new();
    if score_prompts {
        for p in prompts {
            if Instant::now() >= deadline {
                return Err(timeout_failure(options, prompt_logprobs.len(), prompts.len()));
            }
            match catch_unwind(AssertUnwindSafe(|| shared.generator.prompt_logprobs(p))) {
                Ok(Ok(lp)) if lp.len() == p.len().saturating_sub(1) => prompt_logprobs.push(lp),
                Ok(Ok(lp)) => {
                    return Err((500, error_body(&format!("generator returned {} prompt log-probs for {} tokens", lp.len(), p.len()), "server_error")))
                }
                Ok(Err(e)) => return Err((500, error_body(&format!("prompt log-probs failed: {e:#}"), "server_error"))),
                Err(_) => return Err((500, error_body("prompt log-probs panicked; the server keeps serving", "server_error"))),
            }
        }
    }
    drop(weights);
    for c in &mut completions {
        c.weight_version = Some(weight_version.clone());
    }
    Ok(Sampled { completions, prompt_logprobs, weight_version })
}

/// `ids` as text (special tokens skipped); "" for a generator without a tokenizer.
fn decode<G: TextGenerator>(generator: &G, ids: &[u32]) -> Result<String, Failure> {
    match generator.decode(ids) {
        None => Ok(String::new()),
        Some(Ok(t)) => Ok(t),
        Some(Err(e)) => Err((500, error_body(&format!("cannot decode the output: {e:#}"), "server_error"))),
    }
}

/// Loads `path` into the generator (a panic is an error). The caller holds the weight state
/// for writing.
fn reload<G: TextGenerator>(generator: &G, path: &str) -> anyhow::Result<String> {
    catch_unwind(AssertUnwindSafe(|| generator.reload(std::path::Path::new(path)))).unwrap_or_else(|_| Err(anyhow::anyhow!("reloading {path} panicked")))
}
