//! A small OpenAI-compatible completions server (`POST /v1/completions`) over any
//! `TextGenerator`: lets a local checkpoint serve as a judge for other machines, and gives
//! the HTTP judge path a real server to be tested against. Called by the CLI (`serve`) and
//! by tests. Greedy only: a request with `temperature` other than 0 is refused (400),
//! since the generator cannot sample.
//!
//! Prompts are passed to the generator as complete strings: no special tokens are added
//! (`add_special_tokens: true` is refused).
//!
//! `fail_first` makes the first N requests answer HTTP 503 (to exercise client retries).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use serde::Deserialize;
use serde_json::json;

use super::TextGenerator;

#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Address to bind, e.g. `127.0.0.1:0` (0 = any free port).
    pub bind: String,
    /// Name reported in replies (`model`).
    pub model_name: String,
    /// Answer the first N requests with HTTP 503 (`usize::MAX` = always).
    pub fail_first: usize,
    /// Threads taking requests.
    pub workers: usize,
    /// Largest `max_tokens` accepted.
    pub max_tokens_limit: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:0".into(),
            model_name: "local".into(),
            fail_first: 0,
            workers: 2,
            max_tokens_limit: 4096,
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

/// A running server; stops (and joins its threads) when dropped.
pub struct CompletionsServer {
    server: Arc<tiny_http::Server>,
    addr: SocketAddr,
    workers: Vec<JoinHandle<()>>,
    requests_seen: Arc<AtomicUsize>,
}

impl CompletionsServer {
    pub fn start<G>(generator: G, options: ServerOptions) -> Result<Self, ServerError>
    where
        G: TextGenerator + Send + Sync + 'static,
    {
        let server =
            tiny_http::Server::http(options.bind.as_str()).map_err(|e| ServerError::Bind {
                bind: options.bind.clone(),
                detail: e.to_string(),
            })?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| ServerError::Bind {
                bind: options.bind.clone(),
                detail: "not an IP listener".into(),
            })?;
        let server = Arc::new(server);
        let generator = Arc::new(generator);
        let requests_seen = Arc::new(AtomicUsize::new(0));
        let options = Arc::new(options);
        let workers = (0..options.workers.max(1))
            .map(|_| {
                let server = Arc::clone(&server);
                let generator = Arc::clone(&generator);
                let seen = Arc::clone(&requests_seen);
                let options = Arc::clone(&options);
                std::thread::spawn(move || {
                    // `recv` errors only when the server is unblocked for shutdown.
                    while let Ok(request) = server.recv() {
                        let n = seen.fetch_add(1, Ordering::SeqCst);
                        handle(request, n, generator.as_ref(), &options);
                    }
                })
            })
            .collect();
        Ok(Self {
            server,
            addr,
            workers,
            requests_seen,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR/v1/completions`.
    pub fn completions_url(&self) -> String {
        format!("http://{}/v1/completions", self.addr)
    }

    /// Requests received so far (including the ones answered 503).
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

fn respond_json(request: tiny_http::Request, status: u16, body: serde_json::Value) {
    let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..])
        .expect("static header is valid");
    let response = tiny_http::Response::from_string(body.to_string())
        .with_status_code(status)
        .with_header(header);
    // The client may have gone away (timeout); nothing useful to do then.
    let _ = request.respond(response);
}

fn error_body(message: &str, kind: &str) -> serde_json::Value {
    json!({"error": {"message": message, "type": kind}})
}

fn handle(
    mut request: tiny_http::Request,
    n: usize,
    generator: &dyn TextGenerator,
    options: &ServerOptions,
) {
    if request.method() != &tiny_http::Method::Post
        || request.url().split('?').next() != Some("/v1/completions")
    {
        return respond_json(
            request,
            404,
            error_body("only POST /v1/completions is served", "not_found"),
        );
    }
    if n < options.fail_first {
        return respond_json(
            request,
            503,
            error_body("injected failure (fail_first)", "unavailable"),
        );
    }
    let mut body = String::new();
    if let Err(e) = request.as_reader().read_to_string(&mut body) {
        return respond_json(
            request,
            400,
            error_body(&format!("cannot read body: {e}"), "invalid_request_error"),
        );
    }
    let parsed: Request = match serde_json::from_str(&body) {
        Ok(r) => r,
        Err(e) => {
            return respond_json(
                request,
                400,
                error_body(&format!("bad request JSON: {e}"), "invalid_request_error"),
            )
        }
    };
    if parsed.temperature.is_some_and(|t| t != 0.0) {
        return respond_json(
            request,
            400,
            error_body(
                "this server decodes greedily: temperature must be 0",
                "invalid_request_error",
            ),
        );
    }
    if parsed.add_special_tokens == Some(true) {
        return respond_json(
            request,
            400,
            error_body(
                "this server never adds special tokens: send add_special_tokens=false or omit it",
                "invalid_request_error",
            ),
        );
    }
    if parsed.max_tokens > options.max_tokens_limit {
        return respond_json(
            request,
            400,
            error_body(
                &format!("max_tokens over {}", options.max_tokens_limit),
                "invalid_request_error",
            ),
        );
    }
    let prompts = match parsed.prompt {
        PromptField::One(p) => vec![p],
        PromptField::Many(ps) => ps,
    };
    match generator.generate_greedy(&prompts, parsed.max_tokens) {
        Ok(texts) if texts.len() == prompts.len() => {
            let choices: Vec<_> = texts
                .into_iter()
                .enumerate()
                .map(|(i, t)| json!({"index": i, "text": t, "logprobs": null, "finish_reason": "stop"}))
                .collect();
            let model = parsed.model.unwrap_or_else(|| options.model_name.clone());
            respond_json(
                request,
                200,
                json!({"id": format!("cmpl-{n}"), "object": "text_completion", "created": 0, "model": model, "choices": choices}),
            )
        }
        Ok(texts) => respond_json(
            request,
            500,
            error_body(
                &format!(
                    "generator returned {} texts for {} prompts",
                    texts.len(),
                    prompts.len()
                ),
                "server_error",
            ),
        ),
        Err(e) => respond_json(
            request,
            500,
            error_body(&format!("generation failed: {e:#}"), "server_error"),
        ),
    }
}
