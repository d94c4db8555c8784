//! Builds the configured judge (`judge:` in pipeline.yaml) as a `Box<dyn Judge>`, and
//! implements the two model-facing traits of this module with the model runtime:
//! `TextGenerator` for a `Policy` (local WildGuard) and `Embedder` for the MiniLM
//! `SentenceEncoder` (probe). Called by the `judge` and `eval` stages and the `judge` verb,
//! and by `serve` (`PolicyGenerator`, `weights_digest`).
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use anyhow::{bail, Context};

use super::http::{CompletionsClient, CompletionsConfig};
use super::keywords::KeywordsJudge;
use super::probe::{Probe, ProbeJudge};
use super::rules::RulesJudge;
use super::wildguard::WildGuardJudge;
use super::{Embedder, Judge, TextGenerator};
use crate::model::{ChatTokenizer, Policy, SamplingParams, SentenceEncoder};
use crate::spec::{JudgeBackend, Spec};

pub use super::{JudgeSetup, PROBE_FILE};

/// A loaded judge, shareable across threads.
pub type BoxedJudge = Box<dyn Judge + Send + Sync>;

/// The judge of `spec.raw.judge` ([`build`] of [`JudgeSetup::of`]).
pub fn from_spec(spec: &Spec, judge_model_dir: Option<&Path>, device: tch::Device) -> anyhow::Result<BoxedJudge> {
    build(&JudgeSetup::of(spec), judge_model_dir, device)
}

/// The configured judge. `judge_model_dir` is the `judge-fit` artifact directory
/// (required for `probe`; its files must already be digest-verified by the caller, e.g.
/// through `StageContext::input_file`).
pub fn build(setup: &JudgeSetup, judge_model_dir: Option<&Path>, device: tch::Device) -> anyhow::Result<BoxedJudge> {
    let j = &setup.params;
    match j.backend {
        JudgeBackend::Rules => Ok(Box::new(RulesJudge)),
        JudgeBackend::Keywords => Ok(Box::new(KeywordsJudge::new(j.keywords.refusal.clone(), j.keywords.harmful_response.clone()))),
        JudgeBackend::Probe => {
            let dir = judge_model_dir.context("the probe judge needs the judge-fit artifact (judge.backend: probe)")?;
            let probe_path = dir.join(PROBE_FILE);
            let bytes = std::fs::read(&probe_path).with_context(|| format!("read {}", probe_path.display()))?;
            let probe = Probe::from_bytes(&bytes).with_context(|| format!("decode {}", probe_path.display()))?;
            let embedder = load_embedder(&setup.embedder_dir, device)?;
            let id = format!("minilm-{}", &j.probe.embedder_sha256[..j.probe.embedder_sha256.len().min(12)]);
            Ok(Box::new(ProbeJudge::new(probe, Box::new(embedder), &id)?))
        }
        JudgeBackend::Wildguard => {
            let w = &j.wildguard;
            if let Some(url) = &w.url {
                let mut cfg = CompletionsConfig::new(url.clone(), w.model.clone().unwrap_or_else(|| "allenai/wildguard".into()));
                cfg.api_key_env = w.api_key_env.clone();
                cfg.concurrency = w.concurrency.max(1) as usize;
                cfg.timeout_s = f64::from(w.timeout_s);
                cfg.max_retries = w.retries;
                let model_id = cfg.model.clone();
                let client = CompletionsClient::new(cfg).with_context(|| format!("judge.wildguard.url {url}"))?;
                Ok(Box::new(WildGuardJudge::http(model_id, client)))
            } else if let Some(model) = &w.model {
                let path = resolve_from_config(&setup.config_dir, model);
                let policy = Policy::load(&path, device, tch::Kind::Float)
                    .with_context(|| format!("judge.wildguard.model: load local checkpoint {}", path.display()))?;
                // The cache identity is what the weights are, not what their folder is called:
                // two checkpoints both named `wildguard-7b` must not share verdicts.
                let id = weights_digest(&path).with_context(|| format!("judge.wildguard.model: digest {}", path.display()))?;
                Ok(Box::new(WildGuardJudge::local(id.to_string(), Box::new(PolicyGenerator::new(policy)))))
            } else {
                bail!("judge.wildguard: needs `url` (a server) or `model` (a local checkpoint)")
            }
        }
    }
}

fn resolve_from_config(config_dir: &Path, p: &str) -> PathBuf {
    let path = Path::new(p);
    if path.is_absolute() {
        return path.to_path_buf();
    }
    config_dir.join(path)
}

/// Loads the MiniLM sentence encoder as an `Embedder`.
pub fn load_embedder(dir: &Path, device: tch::Device) -> anyhow::Result<EncoderEmbedder> {
    let enc = SentenceEncoder::load(dir, device).with_context(|| format!("load sentence encoder from {}", dir.display()))?;
    Ok(EncoderEmbedder(Mutex::new(enc)))
}

/// `Embedder` over the MiniLM encoder (batched inside `encode`).
pub struct EncoderEmbedder(Mutex<SentenceEncoder>);

impl Embedder for EncoderEmbedder {
    fn embed(&self, texts: &[String]) -> anyhow::Result<Vec<Vec<f32>>> {
        let enc = self.0.lock().map_err(|_| anyhow::anyhow!("sentence encoder lock poisoned"))?;
        let _guard = tch::no_grad_guard();
        // Chunks bound the padded batch's memory; results do not depend on the chunking
        // beyond float rounding of padded positions, which the mask excludes.
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(64) {
            out.extend(enc.encode(chunk)?);
        }
        Ok(out)
    }
}

/// Content digest of a checkpoint (a GGUF file, or an HF directory), the cache identity of a
/// local judge. For a directory: every top-level `*.safetensors`, `*.bin`, `*.gguf` and
/// `*.json` file (weights, config, tokenizer: all change the output), sorted by name, each
/// hashed as (name, length, bytes) with length prefixes. Never the directory's path or
/// name, nor mtimes: a moved or renamed checkpoint keeps its verdicts. Computed once per
/// judge construction (a 7B checkpoint takes seconds).
pub fn weights_digest(path: &Path) -> std::io::Result<WeightsDigest> {
    // Change this when the hashed inputs change.
    const SCHEME: &[u8] = b"weights-digest/v1";
    let mut h = blake3::Hasher::new();
    h.update(&(SCHEME.len() as u64).to_le_bytes());
    h.update(SCHEME);
    let mut files = Vec::new();
    if path.is_dir() {
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let wanted = [".safetensors", ".bin", ".gguf", ".json"].iter().any(|ext| name.ends_with(ext));
            if wanted && entry.file_type()?.is_file() {
                files.push((name, entry.path()));
            }
        }
        files.sort();
    } else {
        files.push((String::new(), path.to_path_buf()));
    }
    for (name, file) in files {
        let len = std::fs::metadata(&file)?.len();
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(&len.to_le_bytes());
        let copied = std::io::copy(&mut std::fs::File::open(&file)?, &mut h)?;
        if copied != len {
            return Err(std::io::Error::other(format!("{} changed while being hashed", file.display())));
        }
    }
    Ok(WeightsDigest(h.finalize().to_hex().to_string()))
}

/// blake3 hex digest of a checkpoint's contents (see `weights_digest`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WeightsDigest(pub String);

impl std::fmt::Display for WeightsDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "blake3:{}", self.0)
    }
}

/// `TextGenerator` over a policy: the raw prompt is tokenised without special tokens
/// (WildGuard's text carries its own `<s>`), greedy decoding, only the new text returned.
/// A clone of the tokenizer lives outside the lock, so the server can count a request's
/// tokens while another request generates.
pub struct PolicyGenerator {
    policy: Mutex<Policy>,
    tokenizer: ChatTokenizer,
    context: usize,
}

impl PolicyGenerator {
    pub fn new(policy: Policy) -> Self {
        let tokenizer = policy.tokenizer().clone();
        let context = policy.config().max_position_embeddings;
        PolicyGenerator { policy: Mutex::new(policy), tokenizer, context }
    }
}

impl TextGenerator for PolicyGenerator {
    fn generate_greedy(&self, prompts: &[String], max_new_tokens: usize) -> anyhow::Result<Vec<String>> {
        // Poison is recovered rather than reported, and cannot arise from here anyway: the
        // guard is held outside `catch_unwind`, so a panic in generation is caught before the
        // guard drops. Either way the policy is still valid: generation only reads it
        // (`&Policy`; the KV cache is a local of `generate`), so a panic midway leaves no
        // half-written state behind.
        let policy = self.policy.lock().unwrap_or_else(PoisonError::into_inner);
        let run = || -> anyhow::Result<Vec<String>> {
            let _guard = tch::no_grad_guard();
            let mut ids = Vec::with_capacity(prompts.len());
            for p in prompts {
                ids.push(policy.tokenizer().encode(p, false)?);
            }
            let seeds = vec![0u64; prompts.len()];
            let mut out = Vec::with_capacity(prompts.len());
            for (chunk_ids, chunk_seeds) in ids.chunks(16).zip(seeds.chunks(16)) {
                let samples = policy.generate(chunk_ids, chunk_seeds, &SamplingParams::greedy(max_new_tokens))?;
                out.extend(samples.into_iter().map(|s| s.text));
            }
            Ok(out)
        };
        // libtorch reports allocation failures and shape errors of plain ops as panics.
        catch_unwind(AssertUnwindSafe(run)).unwrap_or_else(|payload| {
            let msg = crate::engine::panic_message(payload.as_ref()).unwrap_or_default();
            Err(anyhow::anyhow!("generation panicked: {}", msg.lines().next().unwrap_or("")))
        })
    }
    fn context_tokens(&self) -> Option<usize> {
        Some(self.context)
    }
    fn count_tokens(&self, prompt: &str) -> Option<anyhow::Result<usize>> {
        Some(self.tokenizer.encode(prompt, false).map(|ids| ids.len()).map_err(anyhow::Error::from))
    }
}
