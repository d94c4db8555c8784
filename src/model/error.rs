//! The model runtime's error type: one enum, every variant names the file or tensor involved
//! and what was expected. Callers in stages/ wrap it in `anyhow` and print the chain once.
use std::path::PathBuf;

/// Everything that can go wrong while loading, saving or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: I/O error")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: invalid safetensors file")]
    Safetensors {
        path: PathBuf,
        #[source]
        source: safetensors::SafeTensorError,
    },
    /// A GGUF file that is truncated or does not follow the format.
    #[error("{path}: corrupt GGUF at byte {offset}: expected {expected}")]
    GgufFormat { path: PathBuf, offset: u64, expected: String },
    #[error("{path}: GGUF metadata key `{key}` is missing or has the wrong type (expected {expected})")]
    GgufMetadata { path: PathBuf, key: String, expected: String },
    /// A tensor-table entry whose dims, type, offset or size cannot be right.
    #[error("{path}: GGUF tensor `{tensor}`: expected {expected}")]
    GgufTensor { path: PathBuf, tensor: String, expected: String },
    /// A safetensors file whose header cannot be right (checked before the crate parses it, so
    /// the message says what was expected rather than only `header too large`).
    #[error("{path}: invalid safetensors header: expected {expected}")]
    SafetensorsHeader { path: PathBuf, expected: String },
    /// A tensor of a safetensors file whose shape this runtime cannot hold.
    #[error("{path}: safetensors tensor `{tensor}`: expected {expected}")]
    SafetensorsTensor { path: PathBuf, tensor: String, expected: String },
    /// A shard named by `model.safetensors.index.json` that is not a plain file name inside the
    /// model directory (`../x`, `/abs/x`, `sub/x`), or whose tensors do not match the index.
    #[error("{path}: shard `{shard}`: expected {expected}")]
    ShardIndex { path: PathBuf, shard: String, expected: String },
    /// The same tensor name twice (in one GGUF table, or across safetensors shards).
    #[error("{path}: tensor `{name}` appears twice")]
    DuplicateTensor { path: PathBuf, name: String },
    /// A config value (config.json or GGUF metadata) that would break the model's arithmetic.
    #[error("{path}: config `{key}` is {found}: expected {expected}")]
    InvalidConfig { path: PathBuf, key: String, found: String, expected: String },
    /// A token id at or above the model's vocabulary size, where it would index past the
    /// embedding matrix.
    #[error("{path}: {what} is token id {id}, but the model's vocab_size is {vocab_size}")]
    TokenIdOutOfRange { path: PathBuf, what: String, id: u64, vocab_size: usize },
    #[error(
        "{path}: tensor `{tensor}` has ggml type {type_id}, which this runtime does not dequantize (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K)"
    )]
    UnsupportedGgmlType { path: PathBuf, tensor: String, type_id: u32 },
    #[error(
        "{path}: architecture `{found}` is not supported (expected one of: llama, mistral, qwen2 / LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)"
    )]
    UnsupportedArchitecture { path: PathBuf, found: String },
    #[error("{path}: {what} is not supported: {detail}")]
    Unsupported { path: PathBuf, what: String, detail: String },
    #[error("{path}: tensor `{name}` is missing")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: unexpected tensor `{name}` (not part of the model)")]
    UnexpectedTensor { path: PathBuf, name: String },
    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch { path: PathBuf, name: String, expected: Vec<i64>, found: Vec<i64> },
    #[error("{path}: tokenizer error: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("chat template error: {message}")]
    Template { message: String },
    #[error("no model files found in {path} (expected a *.gguf file or a directory with config.json and *.safetensors)")]
    NotAModel { path: PathBuf },
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The caller's interrupt flag was raised while decoding (Ctrl-C): the batch's partial
    /// output is dropped.
    #[error("generation interrupted after {steps} decoding step(s)")]
    Interrupted { steps: usize },
    #[error("torch error")]
    Torch(#[from] tch::TchError),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ModelError {
    let path = path.into();
    move |source| ModelError::Io { path, source }
}
