//! A small inference server over any `TextGenerator`, speaking three protocols:
//! - OpenAI text completions (`POST /v1/completions` with a text prompt, `GET /v1/models`):
//!   greedy only (a text request with `temperature` other than 0 is refused, 400), prompts
//!   passed to the generator as complete strings, no special tokens added
//!   (`add_special_tokens: true` is refused). Lets a local checkpoint serve as a judge for
//!   other machines, and gives the HTTP judge path a real server to be tested against.
//! - SGLang's native API for RL generation (src/remote/wire.rs has the bodies): `POST /generate`
//!   with `input_ids` (one prompt or a batch) and `sampling_params` (one for all prompts or one
//!   per prompt, each with its own `sampling_seed`), output ids with the stop token kept,
//!   output log-probs and, with `logprob_start_len: 0`, the prompt's own log-probs; the weight
//!   update `POST /update_weights_from_disk`, `POST /pause_generation`,
//!   `POST /continue_generation`, `POST /flush_cache`, and the info routes `GET /model_info`
//!   (with `weight_version`) and `GET /server_info`, as SGLang 0.5.23 names them (its retired
//!   `/get_weight_version`, `/get_model_info` and `/get_server_info` are 404 here too).
//! - vLLM's OpenAI extensions for token ids: `POST /v1/completions` with `prompt` a list of
//!   token ids (one prompt per request; `seed`, `min_tokens`, `top_k`, `stop_token_ids`,
//!   `logprobs: 0`, `prompt_logprobs: 0`, `return_token_ids`, `return_tokens_as_token_ids`),
//!   and its dev-mode reload: `POST /collective_rpc {"method": "reload_weights", "kwargs":
//!   {"weights_path": DIR}}`, `POST /update_weight_version {"new_version": V}`,
//!   `GET /weight_info`, `POST /pause`, `POST /resume`, `GET /is_paused`,
//!   `POST /reset_prefix_cache`, `GET /version`. Seeds are checked as both engines check them:
//!   integers in −2⁶³ … 2⁶³−1 (negative ones allowed), 400 otherwise.
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
//!   lock is never poisoned: see `build::PolicyGenerator`);
//! - an optional bearer token (401 without it) on every route but `GET /health`, compared in
//!   constant time.
//!
//! `fail_first` makes the first N generation requests (`/v1/completions` and `/generate`)
//! answer HTTP 503 (to exercise client retries). While generation is paused
//! (`/pause_generation` or `/pause`), token-id generation requests are answered 503; text
//! completions (the judge path) are not paused.

use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::json;

use super::http1::{self, error_body, Request as HttpRequest, Response};
use super::TextGenerator;
use crate::remote::wire::{
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
        let kind = match self.status {
            413 => "request_too_large",
            409 => "conflict",
            503 => "unavailable",
            _ => "invalid_request_error",
        };
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
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| Rejection { status: 400, field: None, message: format!("bad request JSON: {e}") })?;
    // What vLLM's OpenAI text path does and this greedy judge path does not: a clear 400, never
    // a reply that looks like success (a 200 plain-JSON answer to `stream: true` reads as an
    // empty stream in the official `openai` client).
    refuse_field(&value, "stream", |x| x.as_bool() == Some(true), "streaming is not supported: send stream=false or omit it")?;
    refuse_field(&value, "echo", |x| x.as_bool() == Some(true), "echo is not supported")?;
    refuse_field(&value, "n", |x| !x.is_null() && x.as_u64() != Some(1), "one completion per prompt: n must be 1")?;
    refuse_field(&value, "best_of", |x| !x.is_null() && x.as_u64() != Some(1), "best_of must be 1")?;
    refuse_field(
        &value,
        "stop",
        |x| !(x.is_null() || x.as_array().is_some_and(Vec::is_empty)),
        "stop strings are not supported: the answer ends at the model's end of turn or max_tokens",
    )?;
    refuse_field(&value, "logprobs", |x| !x.is_null(), "text completions return no log-probs here: send a token-id prompt with logprobs=0")?;
    let parsed: Request = serde_json::from_value(value).map_err(|e| Rejection { status: 400, field: None, message: format!("bad request JSON: {e}") })?;
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

/// What `/v1/completions` got as `prompt`: text (the judge path), one token-id prompt, or a
/// list of token-id prompts (refused: one token-id prompt per request, as vLLM's `seed` is
/// per request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptKind {
    Text,
    TokenIds,
    TokenIdBatch,
}

/// Classifies a `/v1/completions` body by its `prompt` (anything unparsable is `Text`, so the
/// text path reports the JSON error as before). Pure; never panics.
pub fn completions_prompt_kind(body: &[u8]) -> PromptKind {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else { return PromptKind::Text };
    let Some(items) = v.get("prompt").and_then(|p| p.as_array()).filter(|a| !a.is_empty()) else { return PromptKind::Text };
    if items.iter().all(serde_json::Value::is_number) {
        PromptKind::TokenIds
    } else if items.iter().all(|i| i.as_array().is_some_and(|a| a.iter().all(serde_json::Value::is_number))) {
        PromptKind::TokenIdBatch
    } else {
        PromptKind::Text
    }
}

/// A temperature below this samples greedily (SGLang's `_SAMPLING_EPS`): dividing logits by
/// it would overflow.
pub const GREEDY_BELOW_TEMPERATURE: f64 = 1e-6;

/// A `POST /generate` that passed every check of `parse_generate`.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidGenerate {
    pub prompts: Vec<Vec<u32>>,
    /// One per prompt.
    pub params: Vec<TokenSampling>,
    /// `input_ids` was one flat list: the reply is one object, not a list.
    pub single: bool,
    pub return_logprob: bool,
    /// With `return_logprob`: prompt log-probs from this position on (`logprob_start_len`).
    pub logprob_start: Option<usize>,
}

/// A token-id `POST /v1/completions` that passed every check of `parse_token_completion`.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidTokenCompletion {
    pub prompt: Vec<u32>,
    pub params: TokenSampling,
    pub model: Option<String>,
    /// `logprobs: 0`: the sampled tokens' log-probs.
    pub logprobs: bool,
    /// `prompt_logprobs: 0`: each prompt token's own log-prob.
    pub prompt_logprobs: bool,
    pub return_token_ids: bool,
    pub tokens_as_ids: bool,
}

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

/// Parse and validate a SGLang `POST /generate` body, without a socket (see `parse_request`).
/// Pure apart from the generator's sizes (vocabulary, context); never panics on any input.
pub fn parse_generate(body: &[u8], options: &ServerOptions, generator: &dyn TextGenerator) -> Result<ValidGenerate, Rejection> {
    let v = json_value(body, options)?;
    refuse_field(&v, "text", |x| !x.is_null(), "this server takes token ids only: send input_ids, not text")?;
    refuse_field(&v, "input_embeds", |x| !x.is_null(), "this server takes token ids only: send input_ids")?;
    refuse_field(&v, "stream", |x| x.as_bool() == Some(true), "streaming is not supported: send stream=false or omit it")?;
    let parsed: SglangGenerateRequest = check_seeds(v.get("sampling_params"), "sampling_seed")
        .and_then(|()| serde_json::from_value(v).map_err(|e| Rejection { status: 400, field: None, message: format!("bad request JSON: {e}") }))?;
    let single = matches!(parsed.input_ids, OneOrMany::One(_));
    let prompts = parsed.input_ids.into_vec();
    if prompts.is_empty() {
        return Err(Rejection::bad("input_ids", "input_ids is an empty list".into()));
    }
    if prompts.len() > options.max_prompts {
        return Err(Rejection::bad("input_ids", format!("{} prompts in one request; this server takes at most {}", prompts.len(), options.max_prompts)));
    }
    let sampling = match parsed.sampling_params {
        OneOrMany::One(s) => vec![s; prompts.len()],
        OneOrMany::Many(list) if list.len() == prompts.len() => list,
        OneOrMany::Many(list) => {
            return Err(Rejection::bad(
                "sampling_params",
                format!("{} sampling_params for {} prompts: send one for all or one per prompt", list.len(), prompts.len()),
            ))
        }
    };
    let mut params = Vec::with_capacity(prompts.len());
    for (i, (p, s)) in prompts.iter().zip(&sampling).enumerate() {
        top_k_ok(s.top_k)?;
        params.push(check_row(i, p, s.to_token_sampling(), &SGLANG_FIELDS, options, generator)?);
    }
    let logprob_start = match parsed.logprob_start_len {
        _ if !parsed.return_logprob => None,
        -1 => None,
        k if k < -1 => return Err(Rejection::bad("logprob_start_len", format!("logprob_start_len must be -1 or a prompt position, got {k}"))),
        k => {
            let shortest = prompts.iter().map(Vec::len).min().unwrap_or(0);
            match usize::try_from(k) {
                Ok(k) if k < shortest => Some(k),
                _ => {
                    return Err(Rejection::bad(
                        "logprob_start_len",
                        format!("logprob_start_len {k} is not a position of every prompt (shortest: {shortest} tokens)"),
                    ))
                }
            }
        }
    };
    Ok(ValidGenerate { prompts, params, single, return_logprob: parsed.return_logprob, logprob_start })
}

/// Parse and validate a vLLM token-id `POST /v1/completions` body (one prompt of token ids),
/// without a socket. Pure apart from the generator's sizes; never panics on any input.
pub fn parse_token_completion(body: &[u8], options: &ServerOptions, generator: &dyn TextGenerator) -> Result<ValidTokenCompletion, Rejection> {
    let v = json_value(body, options)?;
    refuse_field(&v, "stream", |x| x.as_bool() == Some(true), "streaming is not supported: send stream=false or omit it")?;
    refuse_field(&v, "echo", |x| x.as_bool() == Some(true), "echo is not supported")?;
    refuse_field(&v, "n", |x| !x.is_null() && x.as_u64() != Some(1), "one completion per request: n must be 1")?;
    refuse_field(&v, "best_of", |x| !x.is_null() && x.as_u64() != Some(1), "best_of must be 1")?;
    let parsed: VllmCompletionRequest = check_seeds(Some(&v), "seed")
        .and_then(|()| serde_json::from_value(v).map_err(|e| Rejection { status: 400, field: None, message: format!("bad request JSON: {e}") }))?;
    if parsed.logprobs.is_some_and(|k| k > 0) {
        return Err(Rejection::bad("logprobs", "only logprobs=0 (the sampled token's log-prob) is supported".into()));
    }
    if parsed.prompt_logprobs.is_some_and(|k| k > 0) {
        return Err(Rejection::bad("prompt_logprobs", "only prompt_logprobs=0 (each prompt token's own log-prob) is supported".into()));
    }
    top_k_ok(parsed.top_k)?;
    let params = check_row(0, &parsed.prompt, parsed.to_token_sampling(), &VLLM_FIELDS, options, generator)?;
    Ok(ValidTokenCompletion {
        params,
        model: parsed.model,
        logprobs: parsed.logprobs.is_some(),
        prompt_logprobs: parsed.prompt_logprobs.is_some(),
        return_token_ids: parsed.return_token_ids,
        tokens_as_ids: parsed.return_tokens_as_token_ids,
        prompt: parsed.prompt,
    })
}

/// The `mode` of vLLM's `POST /pause?mode=…` (`abort`, `wait` or `keep`; none is fine).
/// Every mode pauses the same way here: requests already generating finish (a weight update
/// waits for them), new generation requests are answered 503 until `/resume`.
pub fn parse_pause_mode(query: &str) -> Result<Option<String>, Rejection> {
    let mode = query.split('&').find_map(|kv| kv.strip_prefix("mode="));
    match mode {
        None => Ok(None),
        Some(m @ ("abort" | "wait" | "keep")) => Ok(Some(m.to_string())),
        Some(m) => Err(Rejection::bad("mode", format!("pause mode must be abort, wait or keep, got {m:?}"))),
    }
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
        (_, PromptKind::TokenIds) => token_completion(body, n, shared, deadline),
        (_, PromptKind::TokenIdBatch) => {
            Err(Rejection::bad("prompt", "one token-id prompt per request (a list of token ids, not a list of lists)".into()).into())
        }
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

/// A request naming a model this server does not serve is a 404, as vLLM answers it (a typo in
/// a client's model name must not silently reach another model).
fn check_model(model: Option<&str>, options: &ServerOptions) -> Result<(), Failure> {
    match model {
        Some(m) if m != options.model_name => {
            let message = format!("The model `{m}` does not exist. Valid aliases: {}.", options.model_name);
            Err((404, json!({"error": {"message": message, "type": "NotFoundError", "param": "model", "code": 404}})))
        }
        _ => Ok(()),
    }
}

/// The judge path: greedy text completions, unchanged.
fn text_completion<G: TextGenerator>(body: &[u8], n: usize, shared: &Shared<G>, deadline: Instant) -> Result<serde_json::Value, Failure> {
    let options = &shared.options;
    let parsed = parse_request(body, options, &shared.generator)?;
    check_model(parsed.model.as_deref(), options)?;
    let mut texts = Vec::with_capacity(parsed.prompts.len());
    for chunk in parsed.prompts.chunks(options.batch.max(1)) {
        if Instant::now() >= deadline {
            return Err(timeout_failure(options, texts.len(), parsed.prompts.len()));
        }
        let out = catch_unwind(AssertUnwindSafe(|| shared.generator.generate_greedy(chunk, parsed.max_tokens)));
        match out {
            Ok(Ok(t)) if t.len() == chunk.len() => texts.extend(t),
            Ok(Ok(t)) => return Err((500, error_body(&format!("generator returned {} texts for {} prompts", t.len(), chunk.len()), "server_error"))),
            Ok(Err(e)) => return Err((500, error_body(&format!("generation failed: {e:#}"), "server_error"))),
            Err(_) => return Err((500, error_body("generation panicked; the server keeps serving", "server_error"))),
        }
    }
    let choices: Vec<_> = texts.into_iter().enumerate().map(|(i, t)| json!({"index": i, "text": t, "logprobs": null, "finish_reason": "stop"})).collect();
    let model = parsed.model.unwrap_or_else(|| options.model_name.clone());
    Ok(json!({"id": format!("cmpl-{n}"), "object": "text_completion", "created": 0, "model": model, "choices": choices}))
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

/// SGLang `POST /generate`.
fn generate<G: TextGenerator>(body: &[u8], n: usize, shared: &Shared<G>, deadline: Instant) -> Result<serde_json::Value, Failure> {
    let req = parse_generate(body, &shared.options, &shared.generator)?;
    if shared.paused.load(Ordering::SeqCst) {
        return Err(paused_failure());
    }
    let out = sample(shared, &req.prompts, &req.params, req.logprob_start.is_some(), deadline)?;
    let mut replies = Vec::with_capacity(req.prompts.len());
    for (i, (prompt, c)) in req.prompts.iter().zip(&out.completions).enumerate() {
        let finish_reason = if c.finished_by_stop {
            SglangFinishReason { kind: "stop".into(), matched: c.token_ids.last().map(|&t| json!(t)) }
        } else {
            SglangFinishReason { kind: "length".into(), matched: None }
        };
        let output_token_logprobs =
            req.return_logprob.then(|| c.token_ids.iter().zip(&c.logprobs).map(|(&t, &lp)| (Some(f64::from(lp)), t, None)).collect::<Vec<SglangLogprob>>());
        let input_token_logprobs = req.logprob_start.map(|start| {
            (start..prompt.len())
                .map(|j| match j {
                    0 => (None, prompt[0], None),
                    j => (out.prompt_logprobs.get(i).and_then(|lp| lp.get(j - 1)).map(|&lp| f64::from(lp)), prompt[j], None),
                })
                .collect::<Vec<SglangLogprob>>()
        });
        replies.push(SglangGenerateResponse {
            text: decode(&shared.generator, &c.token_ids)?,
            output_ids: c.token_ids.clone(),
            meta_info: SglangMetaInfo {
                id: format!("gen-{n}-{i}"),
                finish_reason: Some(finish_reason),
                prompt_tokens: prompt.len(),
                completion_tokens: c.token_ids.len(),
                weight_version: Some(out.weight_version.clone()),
                output_token_logprobs,
                input_token_logprobs,
            },
        });
    }
    let value = if req.single { serde_json::to_value(&replies[0]) } else { serde_json::to_value(&replies) };
    value.map_err(|e| (500, error_body(&format!("cannot encode the reply: {e}"), "server_error")))
}

/// vLLM token-id `POST /v1/completions`.
fn token_completion<G: TextGenerator>(body: &[u8], n: usize, shared: &Shared<G>, deadline: Instant) -> Result<serde_json::Value, Failure> {
    let req = parse_token_completion(body, &shared.options, &shared.generator)?;
    check_model(req.model.as_deref(), &shared.options)?;
    if shared.paused.load(Ordering::SeqCst) {
        return Err(paused_failure());
    }
    let prompts = std::slice::from_ref(&req.prompt);
    let out = sample(shared, prompts, std::slice::from_ref(&req.params), req.prompt_logprobs, deadline)?;
    let Some(c) = out.completions.first() else { return Err((500, error_body("generator returned no completion", "server_error"))) };
    let finish_reason = if c.finished_by_stop { "stop" } else { "length" };
    let stop_reason = if c.finished_by_stop { c.token_ids.last().copied() } else { None };
    let text = decode(&shared.generator, &c.token_ids)?;
    let mut choice = json!({"index": 0, "text": text, "finish_reason": finish_reason, "stop_reason": stop_reason, "logprobs": null});
    if req.logprobs {
        let mut tokens = Vec::with_capacity(c.token_ids.len());
        for &t in &c.token_ids {
            tokens.push(if req.tokens_as_ids { format!("token_id:{t}") } else { decode(&shared.generator, &[t])? });
        }
        let token_logprobs: Vec<f64> = c.logprobs.iter().map(|&lp| f64::from(lp)).collect();
        choice["logprobs"] = json!({"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": null, "text_offset": null});
    }
    if req.return_token_ids {
        choice["token_ids"] = json!(c.token_ids);
        choice["prompt_token_ids"] = json!(req.prompt);
    }
    if req.prompt_logprobs {
        let mut entries = vec![serde_json::Value::Null];
        for (&t, &lp) in req.prompt.iter().skip(1).zip(out.prompt_logprobs.first().into_iter().flatten()) {
            let mut entry = serde_json::Map::new();
            entry.insert(t.to_string(), json!(VllmTokenLogprob { logprob: f64::from(lp), rank: None, decoded_token: None }));
            entries.push(serde_json::Value::Object(entry));
        }
        choice["prompt_logprobs"] = serde_json::Value::Array(entries);
    }
    let model = req.model.clone().unwrap_or_else(|| shared.options.model_name.clone());
    let usage = json!({"prompt_tokens": req.prompt.len(), "completion_tokens": c.token_ids.len(), "total_tokens": req.prompt.len() + c.token_ids.len()});
    Ok(json!({"id": format!("cmpl-{n}"), "object": "text_completion", "created": 0, "model": model, "choices": [choice], "usage": usage}))
}

/// Loads `path` into the generator (a panic is an error). The caller holds the weight state
/// for writing.
fn reload<G: TextGenerator>(generator: &G, path: &str) -> anyhow::Result<String> {
    catch_unwind(AssertUnwindSafe(|| generator.reload(std::path::Path::new(path)))).unwrap_or_else(|_| Err(anyhow::anyhow!("reloading {path} panicked")))
}

/// SGLang `POST /update_weights_from_disk`: 200 `success: true`, or 400 `success: false` with
/// the error (the old weights keep serving).
fn update_weights_from_disk<G: TextGenerator>(request: &HttpRequest, shared: &Shared<G>) -> Response {
    let body = &request.body;
    let req: SglangUpdateWeightsRequest = match json_body(body, &shared.options) {
        Ok(r) => r,
        Err(r) => return Response::json(r.status, &json!(SglangUpdateWeightsResponse { success: false, message: r.message, num_paused_requests: 0 })),
    };
    let mut w = write(&shared.weights);
    let reply = match reload(&shared.generator, &req.model_path) {
        Ok(root) => {
            w.root = Some(root);
            w.model_path = Some(req.model_path.clone());
            let mut message = "Succeeded to update model weights.".to_string();
            if let Some(v) = req.weight_version {
                message.push_str(&format!(" Weight version updated to {v}."));
                w.version = v;
            }
            (200, SglangUpdateWeightsResponse { success: true, message, num_paused_requests: 0 })
        }
        Err(e) => (400, SglangUpdateWeightsResponse { success: false, message: format!("Failed to update weights: {e:#}"), num_paused_requests: 0 }),
    };
    drop(w);
    Response::json(reply.0, &json!(reply.1))
}

/// vLLM `POST /collective_rpc` with `method: "reload_weights"` and `kwargs.weights_path`:
/// reloads the weights in place from that directory, which must be an absolute path (the
/// workers resolve it themselves); any other method or argument is refused (400), and a
/// checkpoint that does not load is a 500 with the error, the old weights still serving.
fn collective_rpc<G: TextGenerator>(request: &HttpRequest, shared: &Shared<G>) -> Response {
    let answer = || -> Result<serde_json::Value, Failure> {
        let req: VllmCollectiveRpc = json_body(&request.body, &shared.options)?;
        if req.method != "reload_weights" {
            return Err(Failure::from(Rejection::bad("method", format!("collective_rpc method {:?} is not served here (only reload_weights)", req.method))));
        }
        if let Some(k) = req.kwargs.keys().find(|k| *k != "weights_path") {
            return Err(Failure::from(Rejection::bad("kwargs", format!("reload_weights got an unexpected keyword argument {k:?}"))));
        }
        let path = req.kwargs.get("weights_path").and_then(serde_json::Value::as_str).ok_or_else(|| {
            Failure::from(Rejection::bad("kwargs.weights_path", "reload_weights needs kwargs.weights_path, a checkpoint directory".to_string()))
        })?;
        if !std::path::Path::new(path).is_absolute() {
            return Err(Failure::from(Rejection::bad("kwargs.weights_path", format!("weights_path {path:?} is not absolute"))));
        }
        let mut w = write(&shared.weights);
        match reload(&shared.generator, path) {
            Ok(root) => {
                w.root = Some(root);
                w.model_path = Some(path.to_string());
                Ok(json!({"results": [null]}))
            }
            Err(e) => Err((500, error_body(&format!("Call to collective_rpc method failed: {e:#}"), "server_error"))),
        }
    };
    match answer() {
        Ok(v) => Response::json(200, &v),
        Err((status, v)) => Response::json(status, &v),
    }
}

/// vLLM `POST /update_weight_version {"new_version": V}`: the version `/weight_info` and
/// every reply report from then on.
fn update_weight_version<G: TextGenerator>(request: &HttpRequest, shared: &Shared<G>) -> Response {
    match json_body::<VllmUpdateWeightVersion>(&request.body, &shared.options) {
        Ok(req) => {
            let body = json!({"success": true, "new_version": req.new_version});
            write(&shared.weights).version = req.new_version;
            Response::json(200, &body)
        }
        Err(r) => respond_rejection(&r),
    }
}
