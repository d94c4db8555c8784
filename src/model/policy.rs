//! `Policy`: a Llama-family model with its tokenizer, parameters in a tch VarStore. Loads GGUF
//! files and HF directories, saves HF directories, samples, and computes per-token log-probs
//! with gradients for training. Called by the `base`/`update` stages, rollout and RL code.
use super::config::LlamaConfig;
use super::error::{io_err, ModelError, Result};
use super::gguf::GgufFile;
use super::llama::{parameter_shapes, Llama};
use super::sampler::{self, Sample, SamplingParams};
use super::tensors::{self, TensorMap};
use super::tokenizer::{tiny_byte_tokenizer, ChatTokenizer, TokenId};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr_free::normal;
use std::path::{Path, PathBuf};
use tch::{nn, Device, Kind, Tensor};

/// A model ready to sample and train: config, tokenizer, parameters, decoder.
pub struct Policy {
    config: LlamaConfig,
    tokenizer: ChatTokenizer,
    vs: nn::VarStore,
    model: Llama,
    kind: Kind,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("model_type", &self.config.model_type)
            .field("layers", &self.config.num_hidden_layers)
            .field("device", &self.vs.device())
            .field("kind", &self.kind)
            .finish()
    }
}

/// Token-level log-probs of a batch of sequences (see `Policy::token_logprobs`).
#[derive(Debug)]
pub struct TokenLogprobs {
    /// [B, T-1] float: `logprobs[b, t] = log p(ids[b, t+1] | ids[b, ..=t])`.
    pub logprobs: Tensor,
    /// [B, T-1] float 0/1: 1 where `ids[b, t+1]` is a response token (not prompt, not padding).
    pub mask: Tensor,
}

/// A padded batch of prompt+response sequences for the training forward.
#[derive(Debug)]
pub struct SequenceBatch {
    /// [B, T] int64 token ids, right padded with the pad id.
    pub input_ids: Tensor,
    /// [B, T] int64 0/1: real tokens.
    pub attention_mask: Tensor,
    /// [B, T] int64 0/1: response tokens (the ones whose log-probs are trained).
    pub response_mask: Tensor,
}

impl SequenceBatch {
    /// Concatenates each prompt with its response and right-pads to the longest row.
    pub fn new(prompts: &[Vec<TokenId>], responses: &[Vec<TokenId>], pad_id: TokenId, device: Device) -> Result<Self> {
        if prompts.len() != responses.len() || prompts.is_empty() {
            return Err(ModelError::InvalidInput(format!("need as many prompts as responses (and at least one): {} vs {}", prompts.len(), responses.len())));
        }
        let width = prompts.iter().zip(responses).map(|(p, r)| p.len() + r.len()).max().unwrap_or(0).max(2);
        let b_sz = prompts.len();
        let mut ids = vec![pad_id as i64; b_sz * width];
        let mut attn = vec![0i64; b_sz * width];
        let mut resp = vec![0i64; b_sz * width];
        for (b, (p, r)) in prompts.iter().zip(responses).enumerate() {
            for (j, &t) in p.iter().chain(r).enumerate() {
                ids[b * width + j] = t as i64;
                attn[b * width + j] = 1;
                resp[b * width + j] = (j >= p.len()) as i64;
            }
        }
        let shape = [b_sz as i64, width as i64];
        let t = |v: &[i64]| Tensor::from_slice(v).view(shape).to_device(device);
        Ok(SequenceBatch { input_ids: t(&ids), attention_mask: t(&attn), response_mask: t(&resp) })
    }
}

/// Where a model came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelSource {
    Gguf,
    HfDir,
}

/// Decides how to load `path`: a `.gguf` file or an HF directory with `config.json`.
pub fn detect_source(path: &Path) -> Result<ModelSource> {
    if path.is_file() && path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
        Ok(ModelSource::Gguf)
    } else if path.is_dir() && path.join("config.json").is_file() {
        Ok(ModelSource::HfDir)
    } else {
        Err(ModelError::NotAModel { path: path.to_path_buf() })
    }
}

impl Policy {
    /// Loads a GGUF file or an HF directory onto `device` in `kind` (Float or BFloat16).
    pub fn load(path: &Path, device: Device, kind: Kind) -> Result<Self> {
        let (config, weights, tokenizer) = match detect_source(path)? {
            ModelSource::Gguf => {
                let gguf = GgufFile::open(path)?;
                let config = gguf.config()?;
                let tj = gguf.tokenizer_json()?.to_string();
                let tc = gguf.tokenizer_config_json()?;
                let eos = config.eos_token_id.as_ref().map(|e| e.to_vec()).unwrap_or_default();
                let tokenizer = ChatTokenizer::from_json(&tj, tc, &eos, path)?;
                check_tokenizer_fits(&tokenizer, &config, path)?;
                let weights = gguf.hf_weights(&config)?;
                (config, weights, tokenizer)
            }
            ModelSource::HfDir => {
                let config = read_config(path)?;
                let eos = config.eos_token_id.as_ref().map(|e| e.to_vec()).unwrap_or_default();
                let tokenizer = ChatTokenizer::from_hf_dir(path, &eos)?;
                check_tokenizer_fits(&tokenizer, &config, &path.join("tokenizer.json"))?;
                let weights = tensors::load_hf_weights(path)?;
                (config, weights, tokenizer)
            }
        };
        Self::from_weights(config, weights, tokenizer, device, kind, path)
    }

    /// Builds a policy from HF-named weights. Every parameter must be present with the right
    /// shape; extra tensors are an error, except `lm_head.weight` of a tied model and
    /// rotary `inv_freq` buffers that some exporters include.
    pub fn from_weights(config: LlamaConfig, mut weights: TensorMap, tokenizer: ChatTokenizer, device: Device, kind: Kind, source: &Path) -> Result<Self> {
        config.validate().map_err(|e| e.at(source))?;
        if config.tie_word_embeddings {
            weights.remove("lm_head.weight");
        }
        weights.retain(|name, _| !name.ends_with("rotary_emb.inv_freq"));
        // Every parameter present with its shape before anything is allocated: the model then
        // takes exactly as much memory as the checkpoint's tensors, whatever the config says.
        let expected = parameter_shapes(&config);
        for (name, shape) in &expected {
            let src = weights.get(name).ok_or_else(|| ModelError::MissingTensor { path: source.to_path_buf(), name: name.clone() })?;
            if &src.size() != shape {
                return Err(ModelError::ShapeMismatch { path: source.to_path_buf(), name: name.clone(), expected: shape.clone(), found: src.size() });
            }
        }
        if let Some(name) = weights.keys().find(|n| expected.binary_search_by(|(e, _)| e.cmp(n)).is_err()) {
            return Err(ModelError::UnexpectedTensor { path: source.to_path_buf(), name: name.clone() });
        }
        let vs = nn::VarStore::new(device);
        let model = Llama::new(vs.root(), &config);
        {
            let _guard = tch::no_grad_guard();
            let vars = vs.variables();
            for (name, var) in &vars {
                let src = weights.remove(name).ok_or_else(|| ModelError::MissingTensor { path: source.to_path_buf(), name: name.clone() })?;
                if src.size() != var.size() {
                    return Err(ModelError::ShapeMismatch { path: source.to_path_buf(), name: name.clone(), expected: var.size(), found: src.size() });
                }
                var.shallow_clone().f_copy_(&src.to_kind(Kind::Float))?;
            }
        }
        if let Some(name) = weights.keys().next() {
            return Err(ModelError::UnexpectedTensor { path: source.to_path_buf(), name: name.clone() });
        }
        let mut vs = vs;
        if kind != Kind::Float {
            vs.set_kind(kind);
        }
        let mut config = config;
        config.torch_dtype = Some(dtype_name(kind).to_string());
        Ok(Policy { config, tokenizer, vs, model, kind })
    }

    /// Writes an HF directory: `config.json`, `model.safetensors` (in the policy's dtype, names
    /// sorted), `tokenizer.json`, `tokenizer_config.json` (with the chat template). The same
    /// weights always give the same bytes.
    pub fn save_hf_dir(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let vars = self.named_parameters();
        tensors::save_safetensors(&dir.join("model.safetensors"), vars.iter().map(|(n, t)| (n.as_str(), t)))?;
        let cfg = serde_json::to_value(&self.config).map_err(|source| ModelError::Json { path: dir.join("config.json"), source })?;
        super::tokenizer::write_json(&dir.join("config.json"), &cfg)?;
        self.tokenizer.save_hf_dir(dir)
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }
    pub fn tokenizer(&self) -> &ChatTokenizer {
        &self.tokenizer
    }
    pub fn device(&self) -> Device {
        self.vs.device()
    }
    pub fn kind(&self) -> Kind {
        self.kind
    }
    /// The VarStore holding every parameter under its HF name (for optimisers and `copy`).
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }
    pub fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }
    /// Whether any weight is NaN (a diverged update).
    pub fn has_nan_weights(&self) -> bool {
        self.named_parameters().iter().any(|(_, t)| t.isnan().any().int64_value(&[]) != 0)
    }

    /// (HF name, tensor) for every parameter, sorted by name. The tensors share storage with
    /// the model: an optimiser updating them in place (under no_grad) updates the policy.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut vars: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }
    /// Parameters that require gradients (all of them unless frozen), sorted by name.
    pub fn trainable_parameters(&self) -> Vec<(String, Tensor)> {
        self.named_parameters().into_iter().filter(|(_, t)| t.requires_grad()).collect()
    }
    pub fn decoder(&self) -> &Llama {
        &self.model
    }

    /// A frozen copy (no gradients) with the same weights: the reference model of the KL term,
    /// or the old policy of the PPO ratio.
    pub fn frozen_copy(&self) -> Result<Policy> {
        let vs = nn::VarStore::new(self.device());
        let model = Llama::new(vs.root(), &self.config);
        let mut vs = vs;
        vs.set_kind(self.kind);
        vs.copy(&self.vs)?;
        vs.freeze();
        Ok(Policy { config: self.config.clone(), tokenizer: self.tokenizer.clone(), vs, model, kind: self.kind })
    }

    /// Copies `other`'s weights into this policy (same architecture), e.g. to refresh the
    /// old-policy snapshot after an update.
    pub fn copy_weights_from(&mut self, other: &Policy) -> Result<()> {
        Ok(self.vs.copy(&other.vs)?)
    }

    /// `Err(TokenIdOutOfRange)` naming `what` and the position when an id is not below the
    /// model's vocab_size (ids from this policy's own tokenizer always are: `load` checks).
    pub fn check_token_ids(&self, ids: &[TokenId], what: &str) -> Result<()> {
        let vocab_size = self.config.vocab_size;
        match ids.iter().position(|&id| id as usize >= vocab_size) {
            None => Ok(()),
            Some(j) => {
                Err(ModelError::TokenIdOutOfRange { path: PathBuf::from("<input>"), what: format!("{what}, position {j},"), id: ids[j] as u64, vocab_size })
            }
        }
    }

    /// `SequenceBatch::new` with this policy's pad id and device, after checking every id
    /// against the vocabulary (`token_logprobs` on an unchecked out-of-range id panics).
    pub fn sequence_batch(&self, prompts: &[Vec<TokenId>], responses: &[Vec<TokenId>]) -> Result<SequenceBatch> {
        for (i, (p, r)) in prompts.iter().zip(responses).enumerate() {
            self.check_token_ids(p, &format!("prompt {i}"))?;
            self.check_token_ids(r, &format!("response {i}"))?;
        }
        SequenceBatch::new(prompts, responses, self.tokenizer.pad_id(), self.device())
    }

    /// Logits [B, T, V] (in the policy's dtype) of `input_ids` [B, T] with a 0/1 mask.
    pub fn logits(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Tensor {
        self.model.forward(input_ids, attention_mask)
    }

    /// Per-token log-probs with gradients (unless frozen or under `no_grad`).
    /// Works for left or right padding: positions count real tokens only.
    pub fn token_logprobs(&self, batch: &SequenceBatch) -> TokenLogprobs {
        let (_, seq_len) = batch.input_ids.size2().expect("input_ids is [B, T]");
        let logits = self.logits(&batch.input_ids, &batch.attention_mask);
        let logits = logits.narrow(1, 0, seq_len - 1).to_kind(Kind::Float);
        let targets = batch.input_ids.narrow(1, 1, seq_len - 1);
        // log p(target) = logit[target] - logsumexp(logits): avoids materialising a second
        // [B, T, V] tensor for the full log-softmax.
        let picked = logits.gather(2, &targets.unsqueeze(-1), false).squeeze_dim(-1);
        let logprobs = picked - logits.logsumexp([-1], false);
        let mask = (batch.response_mask.narrow(1, 1, seq_len - 1) * batch.attention_mask.narrow(1, 1, seq_len - 1)).to_kind(Kind::Float);
        TokenLogprobs { logprobs: logprobs * &mask, mask }
    }

    /// `log p(ids[k] | ids[..k])` for k = 1..n (n − 1 values): a prompt's own token
    /// log-probs, as the update scores a response (one row, no padding, no grad). What the
    /// remote canary compares with a server's prompt log-probs (src/remote/fleet.rs) and what
    /// `serve` answers for `prompt_logprobs` / `logprob_start_len: 0`.
    pub fn prompt_logprobs(&self, ids: &[TokenId]) -> Result<Vec<f32>> {
        if ids.len() < 2 {
            return Err(ModelError::InvalidInput(format!("prompt log-probs need at least 2 tokens, got {}", ids.len())));
        }
        self.check_token_ids(ids, "prompt")?;
        let _guard = tch::no_grad_guard();
        let batch = self.sequence_batch(&[ids[..1].to_vec()], &[ids[1..].to_vec()])?;
        let lp = self.token_logprobs(&batch).logprobs.to_kind(Kind::Float).to_device(Device::Cpu).view([-1]);
        let v: Vec<f32> = Vec::<f32>::try_from(&lp).map_err(|e| ModelError::InvalidInput(format!("prompt log-probs: {e}")))?;
        Ok(v[..ids.len() - 1].to_vec())
    }

    /// Samples continuations of `prompts` (token ids) with one seed per row. Stop tokens
    /// default to the tokenizer's. Log-probs are at temperature 1 (see `sampler`).
    pub fn generate(&self, prompts: &[Vec<TokenId>], seeds: &[u64], params: &SamplingParams) -> Result<Vec<Sample>> {
        self.generate_inner(prompts, seeds, params, None)
    }

    /// [`Policy::generate`] that checks `interrupt` before every decoding step and returns
    /// [`ModelError::Interrupted`] (dropping the partial batch) once it is set — how a stage
    /// stops within one step of Ctrl-C instead of at the end of a batch. Results are the
    /// same as `generate`'s while the flag stays clear.
    pub fn generate_interruptible(
        &self,
        prompts: &[Vec<TokenId>],
        seeds: &[u64],
        params: &SamplingParams,
        interrupt: &std::sync::atomic::AtomicBool,
    ) -> Result<Vec<Sample>> {
        self.generate_inner(prompts, seeds, params, Some(interrupt))
    }

    fn generate_inner(
        &self,
        prompts: &[Vec<TokenId>],
        seeds: &[u64],
        params: &SamplingParams,
        interrupt: Option<&std::sync::atomic::AtomicBool>,
    ) -> Result<Vec<Sample>> {
        if prompts.len() != seeds.len() {
            return Err(ModelError::InvalidInput(format!("{} prompts but {} seeds", prompts.len(), seeds.len())));
        }
        if prompts.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
            return Err(ModelError::InvalidInput(format!("prompt {i} is empty")));
        }
        let mut params = params.clone();
        if params.stop_token_ids.is_empty() {
            params.stop_token_ids = self.tokenizer.stop_ids().to_vec();
        }
        // Every id that reaches the embedding or `index_fill`: past the vocabulary, libtorch
        // would panic (CPU) or fault (CUDA) in the middle of a batch.
        for (i, p) in prompts.iter().enumerate() {
            self.check_token_ids(p, &format!("prompt {i}"))?;
        }
        self.check_token_ids(&params.stop_token_ids, "a stop token")?;
        self.check_token_ids(&[self.tokenizer.pad_id()], "the pad token")?;
        let raw = sampler::generate_ids(&self.model, prompts, seeds, &params, self.tokenizer.pad_id(), self.device(), self.kind, interrupt);
        if let Some(steps) = raw.interrupted {
            return Err(ModelError::Interrupted { steps });
        }
        let mut out = Vec::with_capacity(prompts.len());
        for ((tokens, logprobs), finished) in raw.tokens.into_iter().zip(raw.logprobs).zip(raw.finished_by_stop) {
            let text = self.tokenizer.decode(&tokens, true)?;
            out.push(Sample { token_ids: tokens, logprobs, finished_by_stop: finished, text });
        }
        Ok(out)
    }
}

fn dtype_name(kind: Kind) -> &'static str {
    match kind {
        Kind::BFloat16 => "bfloat16",
        Kind::Half => "float16",
        _ => "float32",
    }
}

/// The tokenizer of a model file must only produce ids the embedding has rows for: its largest
/// id (vocabulary and added tokens) and its special ids must be below the config's
/// vocab_size. Checked at load so that every `encode` result is a valid model input.
/// (`from_weights` does not check: tests pair one tokenizer with models of any vocabulary,
/// and `generate` checks the ids it is given.)
fn check_tokenizer_fits(tokenizer: &ChatTokenizer, config: &LlamaConfig, path: &Path) -> Result<()> {
    let vocab_size = config.vocab_size;
    let out_of_range = |what: String, id: TokenId| ModelError::TokenIdOutOfRange { path: path.to_path_buf(), what, id: id as u64, vocab_size };
    if let Some((token, &id)) = tokenizer.inner().get_vocab(true).iter().max_by_key(|(_, &id)| id) {
        if id as usize >= vocab_size {
            return Err(out_of_range(format!("the tokenizer's largest id (token `{token}`)"), id));
        }
    }
    let specials = [("the pad token", tokenizer.pad_id()), ("the eos token", tokenizer.eos_id())];
    let stops = tokenizer.stop_ids().iter().map(|&id| ("a stop token", id));
    for (what, id) in specials.into_iter().chain(stops).chain(tokenizer.bos_id().map(|id| ("the bos token", id))) {
        if id as usize >= vocab_size {
            return Err(out_of_range(what.into(), id));
        }
    }
    Ok(())
}

/// Reads and validates `config.json` of an HF directory.
pub fn read_config(dir: &Path) -> Result<LlamaConfig> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    let raw: serde_json::Value = serde_json::from_str(&text).map_err(|source| ModelError::Json { path: path.clone(), source })?;
    if let Some(mt) = raw.get("model_type").and_then(|m| m.as_str()) {
        if !matches!(mt, "llama" | "mistral" | "qwen2") {
            return Err(ModelError::UnsupportedArchitecture { path, found: mt.to_string() });
        }
    }
    let mut cfg: LlamaConfig = serde_json::from_value(raw).map_err(|source| ModelError::Json { path: path.clone(), source })?;
    cfg.normalize();
    cfg.validate().map_err(|e| e.at(&path))?;
    Ok(cfg)
}

/// A tiny random Llama (2 layers, hidden 32, 4 heads / 2 KV heads, untied head, vocab 259)
/// with the byte-level ChatML tokenizer of `tiny_byte_tokenizer`. Weights are N(0, 0.2²)
/// drawn from ChaCha8(seed) on the CPU, so the same seed gives the same model everywhere.
/// For tests of any module that needs a model.
pub fn tiny_random_llama(seed: u64) -> Policy {
    let tokenizer = tiny_byte_tokenizer();
    let config = LlamaConfig {
        architectures: vec!["LlamaForCausalLM".into()],
        model_type: super::config::ModelType::Llama,
        vocab_size: tokenizer.vocab_size(),
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: Some(2),
        head_dim: None,
        hidden_act: super::config::HiddenAct::Silu,
        max_position_embeddings: 512,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_scaling: None,
        rope_parameters: None,
        attention_bias: false,
        mlp_bias: false,
        tie_word_embeddings: false,
        bos_token_id: tokenizer.bos_id().map(super::config::TokenIds::One),
        eos_token_id: Some(super::config::TokenIds::One(tokenizer.eos_id())),
        pad_token_id: Some(tokenizer.pad_id()),
        torch_dtype: None,
    };
    random_policy(config, tokenizer, seed, 0.2, Device::Cpu).expect("the tiny config is valid")
}

/// A policy with N(0, std²) weights (norm weights 1 + N(0, std²)) from ChaCha8(seed).
pub fn random_policy(config: LlamaConfig, tokenizer: ChatTokenizer, seed: u64, std: f64, device: Device) -> Result<Policy> {
    config.validate().map_err(|e| e.at(Path::new("<random>")))?;
    // Sorted by name, as the VarStore listing this replaced, so a seed gives the same weights.
    let vars = parameter_shapes(&config);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut weights = TensorMap::new();
    for (name, shape) in vars {
        let numel: i64 = shape.iter().product();
        let offset = if name.ends_with("norm.weight") { 1.0 } else { 0.0 };
        let values: Vec<f32> = (0..numel).map(|_| (offset + std * normal(&mut rng)) as f32).collect();
        weights.insert(name, Tensor::from_slice(&values).view(shape.as_slice()));
    }
    Policy::from_weights(config, weights, tokenizer, device, Kind::Float, &PathBuf::from("<random>"))
}

/// Standard normal draws without another crate: Box–Muller over ChaCha8 uniforms.
mod rand_distr_free {
    use rand::RngCore;
    pub fn normal(rng: &mut rand_chacha::ChaCha8Rng) -> f64 {
        let u1 = ((rng.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64;
        let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}
