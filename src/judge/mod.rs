//! Judges: one trait (`Judge`) returning the WildGuard triple plus a parse-error flag, and
//! its backends (`wildguard`, `probe`, `rules`), the verdict cache and judge metrics.
//! Called by the `judge`, `judge-fit` and `eval` stages and by the `judge --with` verb.
//!
//! Data flow: (prompt, response[, seed label]) → `JudgeInput` → a backend → `Verdict`;
//! `cache::judge_cached` wraps any backend so re-judging computes only what changed.
//!
//! The model runtime is not a dependency of this module: the two things a judge needs from
//! a model are the traits `TextGenerator` (greedy completion, for WildGuard on a local
//! checkpoint and for the completions server) and `Embedder` (sentence embeddings, for the
//! probe). The lead implements them with `model/`. They return `anyhow::Result` because
//! their errors come from another module's error types and are only reported, never matched.

#[cfg(feature = "compute")]
pub mod build;
pub mod cache;
pub mod fit;
pub mod http;
pub mod http1;
pub mod keywords;
pub mod labels;
pub mod metrics;
pub mod phrases;
pub mod probe;
pub mod rules;
pub mod server;
pub mod wildguard;

use serde::{Deserialize, Serialize};

use crate::remote::wire::{TokenCompletion, TokenSampling};

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

/// Greedy text completion; implemented by the model runtime (and by test fakes). Returns
/// only the newly generated text for each prompt, in order. Prompts are complete strings
/// (special tokens already in the text; the implementation must not add any).
///
/// The token-level methods below (sampling, prompt log-probs, weight reload, decoding) are
/// what `serve` needs to answer the SGLang / vLLM token-id protocols (`server`); their
/// defaults say "not supported", so a judge-only generator (or a test fake) implements only
/// `generate_greedy`.
pub trait TextGenerator {
    fn generate_greedy(&self, prompts: &[String], max_new_tokens: usize) -> anyhow::Result<Vec<String>>;
    /// Tokens the model attends to (prompt + generated), when bounded; the completions
    /// server refuses requests that would run past it.
    fn context_tokens(&self) -> Option<usize> {
        None
    }
    /// How many tokens `prompt` encodes to (no special tokens added), when this generator
    /// tokenises; `None` for generators without a tokenizer (test fakes).
    fn count_tokens(&self, _prompt: &str) -> Option<anyhow::Result<usize>> {
        None
    }
    /// Samples one completion per token-id prompt, `params[i]` for `prompts[i]` (each with
    /// its own seed; none = seed 0). A row's result depends only on its prompt, its settings
    /// and its seed, never on the other rows of the call. `weight_version` is left `None`
    /// (the server fills it in).
    fn sample_tokens(&self, _prompts: &[Vec<u32>], _params: &[TokenSampling]) -> anyhow::Result<Vec<TokenCompletion>> {
        Err(anyhow::anyhow!("token sampling is not supported by this generator"))
    }
    /// `log p(ids[k] | ids[..k])` for k = 1..n (n − 1 values): what the update stage computes
    /// for a response token, here for every token of a prompt but the first.
    fn prompt_logprobs(&self, _ids: &[u32]) -> anyhow::Result<Vec<f32>> {
        Err(anyhow::anyhow!("prompt log-probs are not supported by this generator"))
    }
    /// Replaces the model with the checkpoint at `path` (same device and dtype) and returns
    /// the new weights digest as `serve` reports it (`blake3:HEX`). On error the current
    /// model stays.
    fn reload(&self, _path: &std::path::Path) -> anyhow::Result<String> {
        Err(anyhow::anyhow!("reloading weights is not supported by this generator"))
    }
    /// The text of `ids` with special tokens skipped (as `Sample::text`), when this generator
    /// has a tokenizer.
    fn decode(&self, _ids: &[u32]) -> Option<anyhow::Result<String>> {
        None
    }
    /// Rows of the model's embedding: every token id of a request must be below it.
    fn vocab_size(&self) -> Option<usize> {
        None
    }
}

/// Lets a generator that is not `Sync` (a tch model) serve from several threads. A poisoned
/// lock is recovered, not reported: `TextGenerator` only ever reaches `T` through `&T`, so a
/// panic under the lock cannot have left `T` half-modified, and refusing every later request
/// would turn one bad request into an outage.
impl<T: TextGenerator> TextGenerator for std::sync::Mutex<T> {
    fn generate_greedy(&self, prompts: &[String], max_new_tokens: usize) -> anyhow::Result<Vec<String>> {
        let guard = self.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.generate_greedy(prompts, max_new_tokens)
    }
    fn context_tokens(&self) -> Option<usize> {
        self.lock().unwrap_or_else(std::sync::PoisonError::into_inner).context_tokens()
    }
    fn count_tokens(&self, prompt: &str) -> Option<anyhow::Result<usize>> {
        self.lock().unwrap_or_else(std::sync::PoisonError::into_inner).count_tokens(prompt)
    }
    fn sample_tokens(&self, prompts: &[Vec<u32>], params: &[TokenSampling]) -> anyhow::Result<Vec<TokenCompletion>> {
        self.lock().unwrap_or_else(std::sync::PoisonError::into_inner).sample_tokens(prompts, params)
    }
    fn prompt_logprobs(&self, ids: &[u32]) -> anyhow::Result<Vec<f32>> {
        self.lock().unwrap_or_else(std::sync::PoisonError::into_inner).prompt_logprobs(ids)
    }
    fn reload(&self, path: &std::path::Path) -> anyhow::Result<String> {
        self.lock().unwrap_or_else(std::sync::PoisonError::into_inner).reload(path)
    }
    fn decode(&self, ids: &[u32]) -> Option<anyhow::Result<String>> {
        self.lock().unwrap_or_else(std::sync::PoisonError::into_inner).decode(ids)
    }
    fn vocab_size(&self) -> Option<usize> {
        self.lock().unwrap_or_else(std::sync::PoisonError::into_inner).vocab_size()
    }
}

impl<T: TextGenerator + ?Sized> TextGenerator for std::sync::Arc<T> {
    fn generate_greedy(&self, prompts: &[String], max_new_tokens: usize) -> anyhow::Result<Vec<String>> {
        (**self).generate_greedy(prompts, max_new_tokens)
    }
    fn context_tokens(&self) -> Option<usize> {
        (**self).context_tokens()
    }
    fn count_tokens(&self, prompt: &str) -> Option<anyhow::Result<usize>> {
        (**self).count_tokens(prompt)
    }
    fn sample_tokens(&self, prompts: &[Vec<u32>], params: &[TokenSampling]) -> anyhow::Result<Vec<TokenCompletion>> {
        (**self).sample_tokens(prompts, params)
    }
    fn prompt_logprobs(&self, ids: &[u32]) -> anyhow::Result<Vec<f32>> {
        (**self).prompt_logprobs(ids)
    }
    fn reload(&self, path: &std::path::Path) -> anyhow::Result<String> {
        (**self).reload(path)
    }
    fn decode(&self, ids: &[u32]) -> Option<anyhow::Result<String>> {
        (**self).decode(ids)
    }
    fn vocab_size(&self) -> Option<usize> {
        (**self).vocab_size()
    }
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
