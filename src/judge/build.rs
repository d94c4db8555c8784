//! Builds the configured judge (`judge:` in pipeline.yaml) as a `Box<dyn Judge>`, and
//! implements the two model-facing traits of this module with the model runtime:
//! `TextGenerator` for a `Policy` (local WildGuard) and `Embedder` for the MiniLM
//! `SentenceEncoder` (probe). Called by the `judge` and `eval` stages and the `judge` verb.
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context};

use super::http::{CompletionsClient, CompletionsConfig};
use super::keywords::KeywordsJudge;
use super::probe::{Probe, ProbeJudge};
use super::rules::RulesJudge;
use super::wildguard::WildGuardJudge;
use super::{Embedder, Judge, TextGenerator};
use crate::model::{Policy, SamplingParams, SentenceEncoder};
use crate::spec::{JudgeBackend, Spec};

/// File name of the fitted probe inside a `judge-fit` artifact.
pub const PROBE_FILE: &str = "probe.safetensors";

/// A loaded judge, shareable across threads.
pub type BoxedJudge = Box<dyn Judge + Send + Sync>;

/// The judge of `spec.raw.judge`. `judge_model_dir` is the `judge-fit` artifact directory
/// (required for `probe`; its files must already be digest-verified by the caller, e.g.
/// through `StageContext::input_file`).
pub fn from_spec(spec: &Spec, judge_model_dir: Option<&Path>, device: tch::Device) -> anyhow::Result<BoxedJudge> {
    let j = &spec.raw.judge;
    match j.backend {
        JudgeBackend::Rules => Ok(Box::new(RulesJudge)),
        JudgeBackend::Keywords => Ok(Box::new(KeywordsJudge::new(j.keywords.refusal.clone(), j.keywords.harmful_response.clone()))),
        JudgeBackend::Probe => {
            let dir = judge_model_dir.context("the probe judge needs the judge-fit artifact (judge.backend: probe)")?;
            let probe_path = dir.join(PROBE_FILE);
            let bytes = std::fs::read(&probe_path).with_context(|| format!("read {}", probe_path.display()))?;
            let probe = Probe::from_bytes(&bytes).with_context(|| format!("decode {}", probe_path.display()))?;
            let embedder = load_embedder(&spec.embedder_dir, device)?;
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
                let path = resolve_from_config(spec, model);
                let policy = Policy::load(&path, device, tch::Kind::Float)
                    .with_context(|| format!("judge.wildguard.model: load local checkpoint {}", path.display()))?;
                let id = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| model.clone());
                Ok(Box::new(WildGuardJudge::local(id, Box::new(PolicyGenerator::new(policy)))))
            } else {
                bail!("judge.wildguard: needs `url` (a server) or `model` (a local checkpoint)")
            }
        }
    }
}

fn resolve_from_config(spec: &Spec, p: &str) -> PathBuf {
    let path = Path::new(p);
    if path.is_absolute() {
        return path.to_path_buf();
    }
    spec.config_file.parent().map(|d| d.join(path)).unwrap_or_else(|| path.to_path_buf())
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

/// `TextGenerator` over a policy: the raw prompt is tokenised without special tokens
/// (WildGuard's text carries its own `<s>`), greedy decoding, only the new text returned.
pub struct PolicyGenerator(Mutex<Policy>);

impl PolicyGenerator {
    pub fn new(policy: Policy) -> Self {
        PolicyGenerator(Mutex::new(policy))
    }
}

impl TextGenerator for PolicyGenerator {
    fn generate_greedy(&self, prompts: &[String], max_new_tokens: usize) -> anyhow::Result<Vec<String>> {
        let policy = self.0.lock().map_err(|_| anyhow::anyhow!("policy lock poisoned"))?;
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
    }
}
