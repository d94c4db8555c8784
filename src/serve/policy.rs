//! The model runtime behind `serve`: [`PolicyGenerator`] implements `TextGenerator` for a
//! `Policy` (greedy text for the OpenAI path and the local WildGuard judge, token-id sampling,
//! prompt log-probs and reloads for the engine protocols), and [`weights_digest`] names what is
//! served (`/v1/models` `root`, a local judge's cache identity, the fleet's check that a server
//! holds the artifact it loaded).
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use anyhow::{bail, Context};

use super::generator::{GreedyText, TextGenerator};
use crate::model::{ChatTokenizer, Policy, SamplingParams};
use crate::net::wire::{TokenCompletion, TokenSampling};

/// Content digest of a checkpoint (a GGUF file, or an HF directory), the cache identity of a
/// local judge. For a directory: every top-level `*.safetensors`, `*.bin`, `*.gguf` and
/// `*.json` file (weights, config, tokenizer: all change the output), sorted by name, each
/// hashed as (name, length, bytes) with length prefixes. Never the directory's path or
/// name, nor mtimes: a moved or renamed checkpoint keeps its verdicts. Computed once per
/// judge construction (a 7B checkpoint takes seconds). A store artifact's own files
/// (`manifest.json`, an update's `optimizer.safetensors`) are not the model and are skipped,
/// so a policy artifact and the clean view servers load (src/remote/fleet.rs) digest alike.
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
            let wanted = [".safetensors", ".bin", ".gguf", ".json"].iter().any(|ext| name.ends_with(ext))
                && !["manifest.json", "optimizer.safetensors"].contains(&name.as_str());
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
/// For `serve`'s token-id protocols it also samples token-id prompts (`sample_tokens`),
/// scores prompts (`prompt_logprobs`) and swaps in another checkpoint (`reload`).
/// A clone of the tokenizer lives outside the lock, so the server can count a request's
/// tokens while another request generates; a reload replaces it together with the policy.
pub struct PolicyGenerator {
    policy: Mutex<Policy>,
    /// What the server reads without waiting for generation; always the loaded policy's.
    meta: RwLock<Arc<PolicyMeta>>,
    /// Held for a whole reload, so two reloads never interleave their load and swap.
    reloading: Mutex<()>,
    /// `serve --max-model-len`: the context the server admits instead of the config's
    /// `max_position_embeddings` (as vLLM's `--max-model-len`).
    max_model_len: Option<usize>,
}

/// The loaded policy's tokenizer and sizes (see `PolicyGenerator::meta`).
struct PolicyMeta {
    tokenizer: ChatTokenizer,
    context: usize,
    vocab_size: usize,
}

impl PolicyMeta {
    fn of(policy: &Policy, max_model_len: Option<usize>) -> Arc<Self> {
        let context = max_model_len.unwrap_or(policy.config().max_position_embeddings);
        Arc::new(PolicyMeta { tokenizer: policy.tokenizer().clone(), context, vocab_size: policy.config().vocab_size })
    }
}

/// Most rows in one `generate` call of `sample_tokens` (the decode kernel's row limit).
const SAMPLE_BATCH_ROWS: usize = crate::model::kernels::MAX_ROWS;

impl PolicyGenerator {
    pub fn new(policy: Policy) -> Self {
        let meta = PolicyMeta::of(&policy, None);
        PolicyGenerator { policy: Mutex::new(policy), meta: RwLock::new(meta), reloading: Mutex::new(()), max_model_len: None }
    }

    /// Admit prompt + new tokens up to `n` instead of the config's context (`serve
    /// --max-model-len`; this runtime's RoPE has no fixed table, so longer is computable,
    /// though a model was not trained past its context).
    pub fn with_max_model_len(mut self, n: usize) -> Self {
        let meta = PolicyMeta::of(&self.policy.lock().unwrap_or_else(PoisonError::into_inner), Some(n));
        self.meta = RwLock::new(meta);
        self.max_model_len = Some(n);
        self
    }

    fn meta(&self) -> Arc<PolicyMeta> {
        Arc::clone(&self.meta.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Runs `f` on the policy under its lock and `no_grad`, a libtorch panic answered as an
    /// error. Poison is recovered rather than reported, and cannot arise from here anyway: the
    /// guard is held outside `catch_unwind`, so a panic in `f` is caught before the guard
    /// drops. Either way the policy is still valid: generation and scoring only read it
    /// (`&Policy`; the KV cache is a local of `generate`), so a panic midway leaves no
    /// half-written state behind.
    fn with_policy<R>(&self, what: &str, f: impl FnOnce(&Policy) -> anyhow::Result<R>) -> anyhow::Result<R> {
        let policy = self.policy.lock().unwrap_or_else(PoisonError::into_inner);
        let run = || {
            let _guard = tch::no_grad_guard();
            f(&policy)
        };
        // libtorch reports allocation failures and shape errors of plain ops as panics.
        catch_unwind(AssertUnwindSafe(run)).unwrap_or_else(|payload| {
            let msg = crate::engine::panic_message(payload.as_ref()).unwrap_or_default();
            Err(anyhow::anyhow!("{what} panicked: {}", msg.lines().next().unwrap_or("")))
        })
    }
}

impl TextGenerator for PolicyGenerator {
    fn generate_greedy(&self, prompts: &[String], max_new_tokens: usize) -> anyhow::Result<Vec<String>> {
        Ok(self.complete_greedy(prompts, max_new_tokens)?.into_iter().map(|c| c.text).collect())
    }
    fn complete_greedy(&self, prompts: &[String], max_new_tokens: usize) -> anyhow::Result<Vec<GreedyText>> {
        self.with_policy("generation", |policy| {
            let mut ids = Vec::with_capacity(prompts.len());
            for p in prompts {
                ids.push(policy.tokenizer().encode(p, false)?);
            }
            let seeds = vec![0u64; prompts.len()];
            let mut out = Vec::with_capacity(prompts.len());
            for (chunk_ids, chunk_seeds) in ids.chunks(16).zip(seeds.chunks(16)) {
                let samples = policy.generate(chunk_ids, chunk_seeds, &SamplingParams::greedy(max_new_tokens))?;
                out.extend(chunk_ids.iter().zip(samples).map(|(prompt, s)| GreedyText {
                    prompt_tokens: Some(prompt.len()),
                    completion_tokens: Some(s.token_ids.len()),
                    finished_by_stop: s.finished_by_stop,
                    text: s.text,
                }));
            }
            Ok(out)
        })
    }
    fn context_tokens(&self) -> Option<usize> {
        Some(self.meta().context)
    }
    fn count_tokens(&self, prompt: &str) -> Option<anyhow::Result<usize>> {
        Some(self.meta().tokenizer.encode(prompt, false).map(|ids| ids.len()).map_err(anyhow::Error::from))
    }
    fn tokenize(&self, text: &str, add_special_tokens: bool) -> Option<anyhow::Result<Vec<u32>>> {
        Some(self.meta().tokenizer.encode(text, add_special_tokens).map_err(anyhow::Error::from))
    }
    /// Rows with equal settings (all but the seed) are sampled together, in order, at most
    /// `SAMPLE_BATCH_ROWS` per `generate` call; the sampler is row-independent, so how the
    /// rows arrive (one request or many) changes nothing but float rounding of the batched
    /// prefill (model::sampler).
    fn sample_tokens(&self, prompts: &[Vec<u32>], params: &[TokenSampling]) -> anyhow::Result<Vec<TokenCompletion>> {
        if prompts.len() != params.len() {
            bail!("{} prompts but {} sampling settings", prompts.len(), params.len());
        }
        let mut groups: Vec<(SamplingParams, Vec<usize>)> = Vec::new();
        for (i, p) in params.iter().enumerate() {
            let sp = SamplingParams::of_request(p);
            match groups.iter_mut().find(|(g, _)| *g == sp) {
                Some((_, rows)) => rows.push(i),
                None => groups.push((sp, vec![i])),
            }
        }
        self.with_policy("sampling", |policy| {
            let mut out: Vec<Option<TokenCompletion>> = vec![None; prompts.len()];
            let never = AtomicBool::new(false);
            for (sp, rows) in &groups {
                let p: Vec<Vec<u32>> = rows.iter().map(|&i| prompts[i].clone()).collect();
                let seeds: Vec<u64> = rows.iter().map(|&i| params[i].seed.map_or(0, crate::net::wire::seed_of_wire)).collect();
                let plan = crate::model::batching::in_order(rows.len(), SAMPLE_BATCH_ROWS);
                let samples = policy.generate_batched(&p, &seeds, sp, &plan, &never, &mut |_| {})?;
                for (&i, s) in rows.iter().zip(samples) {
                    out[i] = Some(TokenCompletion { token_ids: s.token_ids, logprobs: s.logprobs, finished_by_stop: s.finished_by_stop, weight_version: None });
                }
            }
            out.into_iter().enumerate().map(|(i, c)| c.with_context(|| format!("no sample for row {i}"))).collect()
        })
    }
    fn prompt_logprobs(&self, ids: &[u32]) -> anyhow::Result<Vec<f32>> {
        if ids.len() < 2 {
            return Ok(Vec::new());
        }
        // `Policy::prompt_logprobs`: one row, no padding, exactly as the update scores a response.
        self.with_policy("scoring", |policy| Ok(policy.prompt_logprobs(ids)?))
    }
    /// Loads outside the policy lock (the old weights keep serving meanwhile, so both are in
    /// memory for a moment) and swaps under it.
    fn reload(&self, path: &Path) -> anyhow::Result<String> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(PoisonError::into_inner);
        let (device, kind) = {
            let p = self.policy.lock().unwrap_or_else(PoisonError::into_inner);
            (p.device(), p.kind())
        };
        let digest = weights_digest(path).with_context(|| format!("digest {}", path.display()))?;
        let load = || Policy::load(path, device, kind).with_context(|| format!("load model {}", path.display()));
        let new = catch_unwind(AssertUnwindSafe(load)).unwrap_or_else(|payload| {
            let msg = crate::engine::panic_message(payload.as_ref()).unwrap_or_default();
            Err(anyhow::anyhow!("loading {} panicked: {}", path.display(), msg.lines().next().unwrap_or("")))
        })?;
        let meta = PolicyMeta::of(&new, self.max_model_len);
        let old = {
            let mut p = self.policy.lock().unwrap_or_else(PoisonError::into_inner);
            *self.meta.write().unwrap_or_else(PoisonError::into_inner) = meta;
            std::mem::replace(&mut *p, new)
        };
        drop(old);
        Ok(digest.to_string())
    }
    fn decode(&self, ids: &[u32]) -> Option<anyhow::Result<String>> {
        Some(self.meta().tokenizer.decode(ids, true).map_err(anyhow::Error::from))
    }
    fn vocab_size(&self) -> Option<usize> {
        Some(self.meta().vocab_size)
    }
}
