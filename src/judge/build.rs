//! Builds the configured judge (`judge:` in pipeline.yaml) as a `Box<dyn Judge>`, and
//! implements `Embedder` for the MiniLM `SentenceEncoder` (probe). A local WildGuard judge
//! generates through `serve::policy::PolicyGenerator`. Called by the `judge` and `eval`
//! stages and the `judge` verb.
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context};

use super::http::{CompletionsClient, CompletionsConfig};
use super::keywords::KeywordsJudge;
use super::probe::{Probe, ProbeJudge};
use super::rules::RulesJudge;
use super::wildguard::WildGuardJudge;
use super::{Embedder, Judge};
use crate::model::{Policy, SentenceEncoder};
use crate::serve::policy::{weights_digest, PolicyGenerator};
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
            let urls: Vec<&String> = w.url.iter().chain(&w.urls).collect();
            if !urls.is_empty() {
                let model_id = w.model.clone().unwrap_or_else(|| "allenai/wildguard".into());
                let mut clients = Vec::with_capacity(urls.len());
                for url in urls {
                    let mut cfg = CompletionsConfig::new(url.clone(), model_id.clone());
                    cfg.api_key_env = w.api_key_env.clone();
                    cfg.concurrency = w.concurrency.max(1) as usize;
                    cfg.timeout_s = f64::from(w.timeout_s);
                    cfg.max_retries = w.retries;
                    cfg.token_ids = w.engine == crate::spec::ServerEngine::Sglang;
                    clients.push(CompletionsClient::new(cfg).with_context(|| format!("judge.wildguard server {url}"))?);
                }
                Ok(Box::new(WildGuardJudge::http_fleet(model_id, super::http::CompletionsFleet::new(clients)?)))
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
