//! The `serve` verb: exposes any policy (a GGUF file, an HF directory, or a policy artifact
//! of the store such as `base` or `update@3`) as an OpenAI-compatible `/v1/completions`
//! server (`judge::server::CompletionsServer` over `judge::build::PolicyGenerator`), so a
//! local checkpoint can be the `wildguard` judge of another run, and the HTTP judge path
//! can be tested end to end against a real process. Called by src/cli.rs.
//!
//! Greedy decoding only (the server refuses `temperature` ≠ 0). `--fail-first N` answers the
//! first N requests with HTTP 503, to exercise clients' retries. The verb prints one line
//! `serving MODEL at URL` on stdout once it listens, then `requests seen: N` on stderr each
//! time the count changes, and runs until Ctrl-C.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::engine::Engine;
use crate::judge::build::PolicyGenerator;
use crate::judge::server::{CompletionsServer, ServerOptions};
use crate::model::Policy;
use crate::plan::Plan;
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
    let policy = Policy::load(&path, device, kind).with_context(|| format!("load model {}", path.display()))?;
    let options = ServerOptions { bind: opts.bind.clone(), model_name: opts.name.clone().unwrap_or_else(|| opts.model.clone()), fail_first: opts.fail_first, workers: opts.workers.max(1), ..ServerOptions::default() };
    Ok(CompletionsServer::start(PolicyGenerator::new(policy), options)?)
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
