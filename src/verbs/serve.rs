//! The `serve` verb: exposes any policy (a GGUF file, an HF directory, or a policy artifact
//! of the store such as `base` or `update@3`) as an inference server
//! (`serve::CompletionsServer` over `serve::policy::PolicyGenerator`). Called by
//! src/cli.rs. It speaks (see `serve` for every route):
//! - OpenAI text completions (`POST /v1/completions` with a text prompt, `GET /v1/models`):
//!   greedy only (`temperature` ≠ 0 is refused), so a local checkpoint can be the `wildguard`
//!   judge of another run and the HTTP judge path can be tested against a real process;
//! - SGLang's native `POST /generate` with token ids (a batch, one sampling-params dict per
//!   prompt with its own `sampling_seed`, output and prompt log-probs) and vLLM's token-id
//!   extensions of `POST /v1/completions` (`prompt` as token ids, `seed`, `logprobs`,
//!   `prompt_logprobs`, `return_token_ids`): these sample (temperature, top-p, top-k, per-row
//!   seeds), so greedy-only holds for text requests only. This is what the RL generation
//!   client (src/remote/fleet.rs) uses when `generation.backend: server` points at `serve`;
//! - both engines' weight updates from disk: SGLang `POST /update_weights_from_disk`
//!   (`GET /get_weight_version`, `/pause_generation`, `/continue_generation`) and vLLM's
//!   disk weight-transfer flow (`/init_weight_transfer_engine`, `/start_weight_update`,
//!   `/update_weights`, `/finish_weight_update`, `GET /weight_info`, `/pause`, `/resume`).
//!   A reload loads the new checkpoint with the same device and dtype and swaps it in; on
//!   failure the old one keeps serving.
//!
//! `--weight-version V` names the initial weights (default `default`, as SGLang); every
//! `/generate` reply carries the version it was generated with. `GET /v1/models` reports the
//! current weights digest as `root` (it follows reloads), so HTTP judges key their verdict
//! cache by what is served, not by the `--name` alone, and the RL client can check that a
//! server holds the checkpoint it loaded.
//!
//! `--fail-first N` answers the first N generation requests with HTTP 503, to exercise
//! clients' retries. The verb prints one line `serving MODEL at URL` on stdout once it
//! listens, then `requests seen: N` on stderr each time the count changes, and runs until
//! Ctrl-C.
//!
//! Limits (see `serve` for how each is enforced): `--max-body-bytes` (413),
//! `--max-prompts`, `--max-tokens`, prompt + max_tokens within the model's context and token
//! ids below the vocabulary size (400 naming the field), `--request-timeout-s` (408/504);
//! `--batch` prompts go to the model at once. `--auth-token-env NAME` requires
//! `Authorization: Bearer $NAME` on every request but `GET /health` (401 otherwise); the
//! token is read from the environment so it never appears in `ps` or shell history. The
//! default bind is loopback: a client that can reach the server can make it load any
//! checkpoint path of this machine.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::engine::Engine;
use crate::model::Policy;
use crate::plan::Plan;
use crate::serve::policy::{weights_digest, PolicyGenerator};
use crate::serve::{BearerToken, CompletionsServer, ServerOptions};
use crate::spec::{Device, Dtype, Spec};
use crate::store::Store;

/// Options of the verb.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// A path to a GGUF file or HF directory, or a store REF of a policy artifact.
    pub model: String,
    pub bind: String,
    /// Name reported in replies; default: the model argument.
    pub name: Option<String>,
    pub fail_first: usize,
    pub workers: usize,
    /// Name of the environment variable holding the bearer token; `None` = no auth.
    pub auth_token_env: Option<String>,
    pub max_body_bytes: usize,
    pub max_prompts: usize,
    /// Largest `max_tokens` of a request.
    pub max_tokens: usize,
    pub request_timeout_s: f64,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Seconds within which a request head must arrive.
    pub header_timeout_s: f64,
    /// Weight version reported before any update; `None` = SGLang's `default`.
    pub weight_version: Option<String>,
    /// Prompts per generator call.
    pub batch: usize,
    /// `--max-model-len`: the context admitted instead of the config's.
    pub max_model_len: Option<usize>,
    /// `--record-requests DIR` (`ServerOptions::record_requests`).
    pub record_requests: Option<std::path::PathBuf>,
}

impl ServeOptions {
    /// The defaults of `ServerOptions` for every limit.
    pub fn new(model: impl Into<String>) -> Self {
        let d = ServerOptions::default();
        ServeOptions {
            model: model.into(),
            bind: "127.0.0.1:8000".into(),
            name: None,
            fail_first: 0,
            workers: 1,
            auth_token_env: None,
            max_body_bytes: d.max_body_bytes,
            max_prompts: d.max_prompts,
            max_tokens: d.max_tokens_limit,
            request_timeout_s: d.request_timeout.as_secs_f64(),
            max_connections: d.max_connections,
            header_timeout_s: d.header_timeout.as_secs_f64(),
            weight_version: None,
            batch: d.batch,
            max_model_len: None,
            record_requests: None,
        }
    }
}

/// Where `--model` points: an existing path, or the directory of a store artifact (all of
/// whose files are digest-checked first).
pub fn resolve_model(spec: &Spec, store_root: &Path, iterations: Option<u32>, model: &str) -> Result<PathBuf> {
    let p = Path::new(model);
    if p.exists() {
        return Ok(p.to_path_buf());
    }
    let engine = Engine::new(spec, Plan::new(spec, iterations), Store::at(store_root));
    let a = engine.find(model).with_context(|| format!("--model {model:?} is neither an existing path nor a store REF"))?;
    if let Some(e) = a.verify_all().into_iter().next() {
        return Err(anyhow::Error::new(e).context(format!("refusing {} ({})", a.manifest.node, a.manifest.key.short())));
    }
    Ok(a.dir.clone())
}

/// Load the model and start the server (returns once it listens).
pub fn start(spec: &Spec, store_root: &Path, iterations: Option<u32>, opts: &ServeOptions) -> Result<CompletionsServer> {
    tch::set_num_threads(spec.raw.run.threads as i32);
    let path = resolve_model(spec, store_root, iterations, &opts.model)?;
    let device = match spec.raw.run.device {
        Device::Cpu => tch::Device::Cpu,
        Device::Cuda => tch::Device::Cuda(0),
    };
    let kind = match spec.raw.base.dtype {
        Dtype::F32 => tch::Kind::Float,
        Dtype::Bf16 => tch::Kind::BFloat16,
    };
    // Read the token before loading anything: a typo in the variable name fails at once.
    let auth_token = match &opts.auth_token_env {
        None => None,
        Some(var) => match std::env::var(var) {
            Ok(t) if !t.is_empty() => Some(BearerToken::new(&t)),
            _ => anyhow::bail!("--auth-token-env {var}: the environment variable is unset or empty"),
        },
    };
    for (flag, s) in [("--request-timeout-s", opts.request_timeout_s), ("--header-timeout-s", opts.header_timeout_s)] {
        if !(s > 0.0 && s.is_finite() && s < 1e9) {
            anyhow::bail!("{flag} must be a positive number of seconds, got {s}");
        }
    }
    anyhow::ensure!(opts.max_connections > 0, "--max-connections must be at least 1");
    if let Some(dir) = &opts.record_requests {
        std::fs::create_dir_all(dir).with_context(|| format!("--record-requests {}: create the directory", dir.display()))?;
    }
    let policy = Policy::load(&path, device, kind).with_context(|| format!("load model {}", path.display()))?;
    let digest = weights_digest(&path).with_context(|| format!("digest {}", path.display()))?;
    let options = ServerOptions {
        bind: opts.bind.clone(),
        model_name: opts.name.clone().unwrap_or_else(|| opts.model.clone()),
        model_root: Some(digest.to_string()),
        weight_version: opts.weight_version.clone().unwrap_or_else(|| crate::serve::DEFAULT_WEIGHT_VERSION.into()),
        model_path: Some(path.display().to_string()),
        batch: opts.batch.max(1),
        fail_first: opts.fail_first,
        workers: opts.workers.max(1),
        max_tokens_limit: opts.max_tokens,
        max_body_bytes: opts.max_body_bytes,
        max_prompts: opts.max_prompts,
        request_timeout: Duration::from_secs_f64(opts.request_timeout_s),
        max_connections: opts.max_connections,
        header_timeout: Duration::from_secs_f64(opts.header_timeout_s),
        auth_token,
        record_requests: opts.record_requests.clone(),
        ..ServerOptions::default()
    };
    let mut generator = PolicyGenerator::new(policy);
    if let Some(n) = opts.max_model_len {
        anyhow::ensure!(n > 0, "--max-model-len must be at least 1");
        generator = generator.with_max_model_len(n);
    }
    Ok(CompletionsServer::start(generator, options)?)
}

/// The verb: start, announce, report the request count until Ctrl-C. Returns the number of
/// requests seen.
pub fn serve(spec: &Spec, store_root: &Path, iterations: Option<u32>, opts: &ServeOptions) -> Result<usize> {
    let server = start(spec, store_root, iterations, opts)?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "serving {} at {}", opts.model, server.completions_url())?;
        out.flush()?;
    }
    let mut last = 0;
    while !crate::engine::CANCEL.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
        let n = server.requests_seen();
        if n != last {
            eprintln!("requests seen: {n}");
            last = n;
        }
    }
    let n = server.requests_seen();
    eprintln!("stopped after {n} request(s)");
    Ok(n)
}
