//! Judges: one trait (`Judge`) returning the WildGuard triple plus a parse-error flag, and
//! its backends (`wildguard`, `probe`, `rules`), the verdict cache and judge metrics.
//! Called by the `judge`, `judge-fit` and `eval` stages and by the `judge --with` verb.
//!
//! Data flow: (prompt, response[, seed label]) → `JudgeInput` → a backend → `Verdict`;
//! `cache::judge_cached` wraps any backend so re-judging computes only what changed.
//!
//! The model runtime is not a dependency of this module: the two things a judge needs from
//! a model are the traits `serve::TextGenerator` (greedy completion, for WildGuard on a local
//! checkpoint) and `Embedder` (sentence embeddings, for the probe), implemented with `model/`
//! in `serve::policy` and `build`. They return `anyhow::Result` because their errors come from
//! another module's error types and are only reported, never matched.

#[cfg(feature = "compute")]
pub mod build;
pub mod cache;
pub mod fit;
pub mod http;
pub mod keywords;
pub mod labels;
pub mod metrics;
pub mod phrases;
pub mod probe;
pub mod rules;
pub mod wildguard;

use serde::{Deserialize, Serialize};

/// File name of the fitted probe inside a `judge-fit` artifact.
pub const PROBE_FILE: &str = "probe.safetensors";

/// Everything needed to build the configured judge: the `judge` section and the two paths it
/// resolves (stages carry this in their `Params`; only `judge_key_params(&params)` of it
/// enters keys, src/plan.rs).
#[derive(Debug, Clone)]
pub struct JudgeSetup {
    pub params: crate::spec::JudgeParams,
    /// `judge.probe.embedder_dir`, resolved.
    pub embedder_dir: std::path::PathBuf,
    /// The pipeline file's directory (a relative `judge.wildguard.model` is resolved there).
    pub config_dir: std::path::PathBuf,
}

impl JudgeSetup {
    pub fn of(spec: &crate::spec::Spec) -> JudgeSetup {
        JudgeSetup {
            params: spec.raw.judge.clone(),
            embedder_dir: spec.embedder_dir.clone(),
            config_dir: spec.config_file.parent().map(std::path::Path::to_path_buf).unwrap_or_default(),
        }
    }
}

/// One thing to judge: the prompt the defender saw (attacker's public text or the vanilla
/// seed) and the defender's public answer. `seed_harmful` is the dataset label of the seed
/// the game started from; only judges that say `uses_seed_label()` read it (the `rules`
/// baseline takes prompt harm from it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JudgeInput {
    pub prompt: String,
    pub response: String,
    pub seed_harmful: Option<bool>,
}

impl JudgeInput {
    pub fn new(prompt: impl Into<String>, response: impl Into<String>) -> Self {
        Self { prompt: prompt.into(), response: response.into(), seed_harmful: None }
    }
    pub fn with_seed_label(mut self, seed_harmful: bool) -> Self {
        self.seed_harmful = Some(seed_harmful);
        self
    }
}

/// The WildGuard triple plus a parse-error flag. `None` = "n/a" (WildGuard answers n/a for
/// refusal and response harm when the response is empty) or not produced. On a parse
/// error the fields that did parse are kept, as WildGuard's own parser does; consumers
/// must check `parse_error` first. `raw` keeps the judge's own output text (WildGuard's
/// three lines) for audit; backends without a text output leave it `None`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Verdict {
    pub prompt_harmful: Option<bool>,
    pub response_refusal: Option<bool>,
    pub response_harmful: Option<bool>,
    pub parse_error: bool,
    pub raw: Option<String>,
}

/// Identity of a judge configuration for caching: two judges with the same key must give
/// the same verdicts for the same inputs. Computed by each backend from everything that
/// changes its output (backend name, weights digest, probe weights digest, the server and
/// the model it reports, …) and never from secrets, credentials in URLs, or timeouts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JudgeKey(pub String);

impl std::fmt::Display for JudgeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JudgeError {
    #[error("text generator failed while judging a batch of {batch} pairs: {source:#}")]
    Generator { batch: usize, source: anyhow::Error },
    #[error("embedder failed while judging a batch of {batch} texts: {source:#}")]
    Embedder { batch: usize, source: anyhow::Error },
    #[error("{backend} returned {got} outputs for {expected} inputs")]
    CountMismatch { backend: String, expected: usize, got: usize },
    #[error(transparent)]
    Http(#[from] http::HttpError),
    #[error(transparent)]
    Cache(#[from] cache::CacheError),
    #[error("probe judge: {0}")]
    Probe(#[from] probe::ProbeError),
}

/// A judge backend. `judge_batch` returns one verdict per input, in order. A transient
/// failure (a server that stays down after retries) is an `Err` for the whole batch and
/// never a verdict, so it is never cached.
pub trait Judge {
    /// Short human name, e.g. `wildguard`, `probe`, `rules-baseline`.
    fn name(&self) -> &str;
    /// Cache identity (see `JudgeKey`).
    fn key(&self) -> JudgeKey;
    /// Whether `JudgeInput::seed_harmful` influences the verdict (then it is part of the
    /// cache key too).
    fn uses_seed_label(&self) -> bool {
        false
    }
    /// Why this judge's verdicts must not be cached (its identity could not be established,
    /// e.g. a server whose `/v1/models` cannot be read), or `None` when `key` is trustworthy.
    /// `cache::judge_cached` then judges everything afresh and stores nothing.
    fn uncacheable(&self) -> Option<String> {
        None
    }
    fn judge_batch(&self, pairs: &[JudgeInput]) -> Result<Vec<Verdict>, JudgeError>;
}

/// Sentence embeddings (MiniLM: mean pooling + L2 normalisation); one vector per text, all
/// of the same dimension. Implemented by the model runtime.
pub trait Embedder {
    fn embed(&self, texts: &[String]) -> anyhow::Result<Vec<Vec<f32>>>;
}

impl<T: Embedder + ?Sized> Embedder for std::sync::Arc<T> {
    fn embed(&self, texts: &[String]) -> anyhow::Result<Vec<Vec<f32>>> {
        (**self).embed(texts)
    }
}
