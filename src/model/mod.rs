//! Model runtime: one Llama-family decoder in tch (Llama 3.x, Mistral, Qwen2/2.5, SmolLM2),
//! GGUF and HF-directory loading, HF-directory saving, the tokenizer + chat template, the
//! batched sampler, the training log-prob forward, and the MiniLM sentence encoder.
//! Called by the `base`/`update`/rollout stages, the RL code (log-probs, parameters), the judge
//! (probe embeddings) and eval (SBERT diversity).
//!
//! # API for the rest of the crate
//! ```text
//! Policy::load(path, device, kind) -> Result<Policy>        // *.gguf file or HF dir
//! policy.save_hf_dir(dir) -> Result<()>                      // deterministic bytes
//! policy.tokenizer().encode_chat(&[ChatMessage], add_generation_prompt, Some(prefix))
//!     -> Result<Vec<TokenId>>                                // render_chat gives the text
//! policy.generate(&prompts, &seeds, &SamplingParams) -> Result<Vec<Sample>>
//!     // Sample { token_ids, logprobs (T = 1, unfiltered), finished_by_stop, text }
//! SequenceBatch::new(&prompts, &responses, pad_id, device)   // right padded
//! policy.sequence_batch(&prompts, &responses) -> Result<SequenceBatch> // ids checked < vocab
//! policy.token_logprobs(&batch) -> TokenLogprobs { logprobs [B, T-1], mask [B, T-1] }
//! policy.frozen_copy() -> Result<Policy>                     // reference / old policy
//! policy.named_parameters() / trainable_parameters() -> Vec<(String, Tensor)>
//! policy.var_store() / var_store_mut() / copy_weights_from(&other)
//! tensors::{save_safetensors, load_safetensors}              // optimiser state etc.
//! SentenceEncoder::load(dir, device)?.encode(&texts) -> Result<Vec<Vec<f32>>>
//! tiny_random_llama(seed) -> Policy                          // for tests anywhere
//! ```
//! Loading never trusts a file: every length, offset, shape and config value is checked
//! (with checked arithmetic, and allocations bounded by the bytes the file holds) before it is
//! used, and a failure is a `ModelError` naming the file and the key or tensor. Token ids past
//! the vocabulary are errors where they enter (`load` checks the tokenizer against the config,
//! `generate` and `sequence_batch` check the ids they are given).
//!
//! Log-probabilities returned by the sampler are those of the model's own distribution at
//! temperature 1 without top-k/top-p (log π(a_t)), whatever the sampling settings; see
//! `sampler` for why.
pub mod batching;
pub mod bert;
pub mod config;
pub mod error;
pub mod gguf;
pub mod kernels;
pub mod llama;
pub mod policy;
pub mod reduce;
pub mod sampler;
pub mod tensors;
pub mod tokenizer;

pub use bert::SentenceEncoder;
pub use config::LlamaConfig;
pub use error::ModelError;
pub use policy::{random_policy, tiny_random_llama, Policy, SequenceBatch, TokenLogprobs};
pub use sampler::{Sample, SamplingParams};
pub use tokenizer::{ChatMessage, ChatTokenizer, TokenId};

/// The CoT assistant prefix of method.md §1.2/§1.3, appended after the generation prompt.
pub const COT_ASSISTANT_PREFIX: &str = "Let's think step by step.\n<think> ";

/// The files of a policy artifact (an HF directory).
pub const POLICY_FILES: [&str; 4] = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"];

/// The tch device of the spec's `run.device`.
pub fn tch_device(d: crate::spec::Device) -> tch::Device {
    match d {
        crate::spec::Device::Cpu => tch::Device::Cpu,
        crate::spec::Device::Cuda => tch::Device::Cuda(0),
    }
}

/// The tch kind of `base.dtype` (every policy of a run has the base's dtype).
pub fn tch_kind(dtype: crate::spec::Dtype) -> tch::Kind {
    match dtype {
        crate::spec::Dtype::F32 => tch::Kind::Float,
        crate::spec::Dtype::Bf16 => tch::Kind::BFloat16,
    }
}
