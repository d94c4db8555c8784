//! GGUF reader: header, metadata, tensor table, dequantisation (F32, F16, BF16, Q8_0, Q4_0,
//! Q4_1, Q4_K, Q6_K) to f32 with HF names and llama.cpp's q/k row permutation undone, and
//! the config + tokenizer + chat template rebuilt from metadata. Called by `policy.rs`.
//! Format reference: ggml/docs/gguf.md and ggml-quants.c `dequantize_row_*` (llama.cpp).
use super::config::{HiddenAct, LlamaConfig, ModelType, RopeScaling, RopeType, TokenIds, LIMITS};
use super::error::{io_err, ModelError, Result};
use super::tensors::TensorMap;
use half::{bf16, f16};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::Tensor;

/// One metadata value. Integers are widened; arrays keep their elements.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    Uint(u64),
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Array(Vec<GgufValue>),
}

/// A tensor's entry in the table: dims fastest-varying first, as stored.
#[derive(Debug, Clone)]
pub struct GgufTensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    /// Absolute offset of the data in the file.
    pub offset: u64,
}

/// ggml type ids (ggml.h `enum ggml_type`) that this reader dequantises.
pub mod ggml_type {
    pub const F32: u32 = 0;
    pub const F16: u32 = 1;
    pub const Q4_0: u32 = 2;
    pub const Q4_1: u32 = 3;
    pub const Q8_0: u32 = 8;
    pub const Q4_K: u32 = 12;
    pub const Q6_K: u32 = 14;
    pub const BF16: u32 = 30;
}

/// (elements per block, bytes per block) of a supported type.
fn block_layout(ty: u32) -> Option<(usize, usize)> {
    use ggml_type::*;
    Some(match ty {
        F32 => (1, 4),
        F16 => (1, 2),
        BF16 => (1, 2),
        Q8_0 => (32, 34),
        Q4_0 => (32, 18),
        Q4_1 => (32, 20),
        Q4_K => (256, 144),
        Q6_K => (256, 210),
        _ => return None,
    })
}

/// A parsed GGUF file, memory-mapped.
pub struct GgufFile {
    pub path: PathBuf,
    pub metadata: BTreeMap<String, GgufValue>,
    pub tensors: Vec<GgufTensorInfo>,
    mmap: memmap2::Mmap,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or_else(|| ModelError::GgufFormat {
            path: self.path.to_path_buf(),
            offset: self.pos as u64,
            expected: format!("{n} more bytes for {what} (file has {} bytes: truncated?)", self.bytes.len()),
        })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        let b = self.take(8, what)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        let bytes = self.take(self.checked_len(len, 1, what)?, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.err(format!("UTF-8 text for {what}")))
    }
    fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }
    /// `len` items of at least `min_item_bytes` each must fit in the rest of the file, so no
    /// length read from the file can drive an allocation or a loop past the file's size.
    fn checked_len(&self, len: u64, min_item_bytes: usize, what: &str) -> Result<usize> {
        let fits = len.checked_mul(min_item_bytes as u64).is_some_and(|b| b <= self.remaining() as u64);
        if !fits {
            return Err(self.err(format!("a length whose {min_item_bytes}-byte items fit in the {} bytes left for {what}, got {len}", self.remaining())));
        }
        Ok(len as usize)
    }
    fn err(&self, expected: String) -> ModelError {
        ModelError::GgufFormat { path: self.path.to_path_buf(), offset: self.pos as u64, expected }
    }
    /// One value of type `ty`; `depth` counts the arrays around it.
    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<GgufValue> {
        Ok(match ty {
            0 => GgufValue::Uint(self.take(1, key)?[0] as u64),
            1 => GgufValue::Int(self.take(1, key)?[0] as i8 as i64),
            2 => GgufValue::Uint(u16::from_le_bytes(self.take(2, key)?.try_into().expect("2")) as u64),
            3 => GgufValue::Int(i16::from_le_bytes(self.take(2, key)?.try_into().expect("2")) as i64),
            4 => GgufValue::Uint(self.u32(key)? as u64),
            5 => GgufValue::Int(self.u32(key)? as i32 as i64),
            // Shortest decimal of the f32, so 1e-5 stays 1e-5 in config.json (not 9.99999974e-6).
            6 => GgufValue::Float(f32_to_f64_shortest(f32::from_bits(self.u32(key)?))),
            7 => GgufValue::Bool(self.take(1, key)?[0] != 0),
            8 => GgufValue::Str(self.string(key)?),
            9 => {
                // Arrays of arrays are legal GGUF, but no model writes more than one level;
                // recursing without a bound lets a small file overflow the stack (an abort,
                // not an error).
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.err(format!("arrays nested at most {MAX_ARRAY_DEPTH} deep in `{key}`")));
                }
                let elem_ty = self.u32(key)?;
                let n = self.u64(key)?;
                let n = self.checked_len(n, min_value_bytes(elem_ty), key)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem_ty, key, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::Uint(self.u64(key)?),
            11 => GgufValue::Int(self.u64(key)? as i64),
            12 => GgufValue::Float(f64::from_bits(self.u64(key)?)),
            other => return Err(self.err(format!("a metadata value type 0..=12 for `{key}`, got {other}"))),
        })
    }
}

/// Deepest nesting of metadata arrays accepted (llama.cpp writes 1: token lists).
const MAX_ARRAY_DEPTH: usize = 4;

/// Fewest bytes one metadata value of type `ty` occupies (unknown types: 1, and they fail
/// when read), which bounds how many of them the rest of the file can hold.
fn min_value_bytes(ty: u32) -> usize {
    match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => 1,
    }
}

impl GgufFile {
    /// Parses the header, metadata and tensor table, checking that every tensor's data lies
    /// inside the file.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(io_err(path))?;
        // SAFETY: read-only map of a file the store never rewrites in place.
        #[allow(unsafe_code)]
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err(path))?;
        let mut c = Cursor { bytes: &mmap, pos: 0, path };
        let magic = c.take(4, "the magic `GGUF`")?;
        if magic != b"GGUF" {
            return Err(ModelError::GgufFormat { path: path.into(), offset: 0, expected: "magic bytes `GGUF`".into() });
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(c.err(format!("GGUF version 2 or 3, got {version}")));
        }
        let n_tensors = c.u64("tensor count")?;
        let n_kv = c.u64("metadata count")?;
        let mut metadata = BTreeMap::new();
        // Each key-value pair takes at least 8 + 4 + 1 bytes, each tensor entry 8 + 4 + 4 + 8:
        // counts beyond what the file can hold are rejected before the loops (which would end
        // at the truncation anyway, but only after parsing everything before it).
        c.checked_len(n_kv, 13, "metadata count")?;
        for _ in 0..n_kv {
            let key_at = c.pos as u64;
            let key = c.string("metadata key")?;
            let ty = c.u32(&key)?;
            let value = c.value(ty, &key, 0)?;
            // llama.cpp rejects a repeated key; keeping the last one would silently pick one
            // of two values.
            if metadata.insert(key.clone(), value).is_some() {
                return Err(ModelError::GgufFormat { path: path.into(), offset: key_at, expected: format!("each metadata key once, got `{key}` twice") });
            }
        }
        let n_tensors = c.checked_len(n_tensors, 24, "tensor count")?;
        let mut infos = Vec::with_capacity(n_tensors);
        let mut names = std::collections::BTreeSet::new();
        for _ in 0..n_tensors {
            let name = c.string("tensor name")?;
            let n_dims = c.u32(&name)?;
            if n_dims > 4 {
                return Err(c.err(format!("at most 4 dims for tensor `{name}`, got {n_dims}")));
            }
            let dims = (0..n_dims).map(|_| c.u64(&name)).collect::<Result<Vec<_>>>()?;
            let ggml_type = c.u32(&name)?;
            let offset = c.u64(&name)?;
            if !names.insert(name.clone()) {
                return Err(ModelError::DuplicateTensor { path: path.into(), name });
            }
            infos.push(GgufTensorInfo { name, dims, ggml_type, offset });
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(GgufValue::Uint(a)) if a.is_power_of_two() && *a <= 1 << 16 => *a,
            Some(_) => {
                return Err(ModelError::GgufMetadata {
                    path: path.into(),
                    key: "general.alignment".into(),
                    expected: "an unsigned power of two up to 65536".into(),
                })
            }
        };
        // c.pos <= file length and alignment <= 2^16, so this cannot overflow a u64.
        let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
        let file_len = mmap.len() as u64;
        let tensor_err = |info: &GgufTensorInfo, expected: String| ModelError::GgufTensor { path: path.into(), tensor: info.name.clone(), expected };
        // (start, end, name) of every tensor's data, to check that no two overlap.
        let mut spans = Vec::with_capacity(infos.len());
        for info in &mut infos {
            if info.offset % alignment != 0 {
                let expected = format!("a data offset that is a multiple of the alignment {alignment}, got {}", info.offset);
                return Err(tensor_err(info, expected));
            }
            // A type this reader cannot dequantise has a size it cannot know: its entry loads
            // (so the metadata stays readable) and `dequantize` names it as unsupported.
            let size = if block_layout(info.ggml_type).is_none() { 0 } else { tensor_size(info).map_err(|expected| tensor_err(info, expected))? };
            // Checked: an offset near 2^64 would otherwise wrap around to a small number and
            // read some other tensor's bytes without any error.
            let start = info.offset.checked_add(data_start);
            let end = start.and_then(|s| s.checked_add(size));
            match (start, end) {
                (Some(start), Some(end)) if end <= file_len => {
                    info.offset = start;
                    if end > start {
                        spans.push((start, end, info.name.clone()));
                    }
                }
                _ => {
                    return Err(ModelError::GgufFormat {
                        path: path.into(),
                        offset: start.unwrap_or(info.offset),
                        expected: format!(
                            "{size} bytes of data for tensor `{}` at offset {} after the data start {data_start} (file ends at {file_len}: truncated, or a corrupt offset)",
                            info.name, info.offset
                        ),
                    })
                }
            }
        }
        spans.sort();
        for pair in spans.windows(2) {
            let ((_, end, first), (start, _, second)) = (&pair[0], &pair[1]);
            if start < end {
                return Err(ModelError::GgufTensor {
                    path: path.into(),
                    tensor: second.clone(),
                    expected: format!("data that does not overlap tensor `{first}` (which ends at {end}, this starts at {start})"),
                });
            }
        }
        Ok(GgufFile { path: path.into(), metadata, tensors: infos, mmap })
    }

    fn meta_err(&self, key: &str, expected: &str) -> ModelError {
        ModelError::GgufMetadata { path: self.path.clone(), key: key.into(), expected: expected.into() }
    }
    pub fn get_str(&self, key: &str) -> Result<&str> {
        match self.metadata.get(key) {
            Some(GgufValue::Str(s)) => Ok(s),
            _ => Err(self.meta_err(key, "a string")),
        }
    }
    pub fn get_uint(&self, key: &str) -> Result<u64> {
        match self.metadata.get(key) {
            Some(GgufValue::Uint(v)) => Ok(*v),
            Some(GgufValue::Int(v)) if *v >= 0 => Ok(*v as u64),
            _ => Err(self.meta_err(key, "an unsigned integer")),
        }
    }
    pub fn get_float(&self, key: &str) -> Result<f64> {
        match self.metadata.get(key) {
            Some(GgufValue::Float(v)) => Ok(*v),
            _ => Err(self.meta_err(key, "a float")),
        }
    }
    fn get_array(&self, key: &str) -> Result<&[GgufValue]> {
        match self.metadata.get(key) {
            Some(GgufValue::Array(v)) => Ok(v),
            _ => Err(self.meta_err(key, "an array")),
        }
    }
    fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        self.get_array(key)?
            .iter()
            .map(|v| match v {
                GgufValue::Str(s) => Ok(s.as_str()),
                _ => Err(self.meta_err(key, "an array of strings")),
            })
            .collect()
    }

    /// Raw bytes of a tensor. `open` checked every entry; this checks again because `info`
    /// is a public struct a caller may have built or changed.
    fn tensor_data(&self, info: &GgufTensorInfo) -> Result<&[u8]> {
        if block_layout(info.ggml_type).is_none() {
            return Err(ModelError::UnsupportedGgmlType { path: self.path.clone(), tensor: info.name.clone(), type_id: info.ggml_type });
        }
        let tensor_err = |expected: String| ModelError::GgufTensor { path: self.path.clone(), tensor: info.name.clone(), expected };
        let size = tensor_size(info).map_err(tensor_err)?;
        let end = info.offset.checked_add(size);
        end.and_then(|end| self.mmap.get(usize::try_from(info.offset).ok()?..usize::try_from(end).ok()?))
            .ok_or_else(|| tensor_err(format!("{size} bytes of data at offset {} inside the file ({} bytes)", info.offset, self.mmap.len())))
    }

    /// Dequantises one tensor to f32 with the row-major (reversed) shape.
    pub fn dequantize(&self, info: &GgufTensorInfo) -> Result<Tensor> {
        let data = self.tensor_data(info)?;
        // tensor_size checked the product of the dims, and that the data (inside the file)
        // holds them, so this allocation is bounded by the file's size.
        let numel: u64 = info.dims.iter().product();
        let mut out = vec![0f32; numel as usize];
        dequantize_into(info.ggml_type, data, &mut out).map_err(|e| match e {
            DequantError::UnsupportedType(type_id) => ModelError::UnsupportedGgmlType { path: self.path.clone(), tensor: info.name.clone(), type_id },
            DequantError::Length { expected, found } => ModelError::GgufTensor {
                path: self.path.clone(),
                tensor: info.name.clone(),
                expected: format!("{expected} bytes of data for its {numel} elements, got {found}"),
            },
        })?;
        let shape: Vec<i64> = info.dims.iter().rev().map(|&d| d as i64).collect();
        // Fallible: a zero dimension beside huge ones passes the element count (0) but
        // overflows libtorch's stride computation (found by fuzz_gguf).
        Tensor::from_slice(&out).f_view(shape.as_slice()).map_err(|e| ModelError::GgufTensor {
            path: self.path.clone(),
            tensor: info.name.clone(),
            expected: format!("a shape libtorch can hold, got {shape:?} ({})", e.to_string().lines().next().unwrap_or("")),
        })
    }

    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    /// The decoder config from `{arch}.*` metadata and the tensor table.
    pub fn config(&self) -> Result<LlamaConfig> {
        let arch = self.architecture()?;
        let model_type = match arch {
            "llama" => ModelType::Llama,
            "mistral" => ModelType::Mistral,
            "qwen2" => ModelType::Qwen2,
            other => return Err(ModelError::UnsupportedArchitecture { path: self.path.clone(), found: other.into() }),
        };
        if self.tensors.iter().any(|t| t.name == "rope_freqs.weight") {
            return Err(ModelError::Unsupported {
                path: self.path.clone(),
                what: "tensor `rope_freqs.weight` (Llama 3.1+ RoPE scaling stored as frequency factors)".into(),
                detail: "load the HF directory of this model instead".into(),
            });
        }
        let key = |k: &str| format!("{arch}.{k}");
        // Every size is checked against `config::LIMITS` before it is used in any arithmetic
        // (head_count 0 used to divide by zero below, before `validate` ran).
        let size = |k: &str, max: usize| -> Result<usize> {
            let k = key(k);
            let v = self.get_uint(&k)?;
            if v == 0 || v > max as u64 {
                return Err(ModelError::InvalidConfig { path: self.path.clone(), key: k, found: v.to_string(), expected: format!("an integer in 1..={max}") });
            }
            Ok(v as usize)
        };
        let optional = |k: &str, max: usize| if self.metadata.contains_key(&key(k)) { size(k, max).map(Some) } else { Ok(None) };
        let n_heads = size("attention.head_count", LIMITS.heads)?;
        let hidden = size("embedding_length", LIMITS.hidden_size)?;
        let n_kv = optional("attention.head_count_kv", LIMITS.heads)?.unwrap_or(n_heads);
        let head_dim = optional("attention.key_length", LIMITS.head_dim)?;
        let vocab = match optional("vocab_size", LIMITS.vocab_size)? {
            Some(v) => v,
            None => self.get_array("tokenizer.ggml.tokens")?.len(),
        };
        let rope_scaling = match self.get_str(&key("rope.scaling.type")) {
            Ok("linear") => Some(RopeScaling {
                rope_type: RopeType::Linear,
                factor: self.get_float(&key("rope.scaling.factor"))?,
                low_freq_factor: None,
                high_freq_factor: None,
                original_max_position_embeddings: None,
            }),
            Ok("none") | Err(_) => None,
            Ok(other) => {
                return Err(ModelError::Unsupported {
                    path: self.path.clone(),
                    what: format!("rope scaling type `{other}`"),
                    detail: "supported: none, linear".into(),
                })
            }
        };
        let tied = !self.tensors.iter().any(|t| t.name == "output.weight");
        // An id that does not fit in a u32 is an error, not a truncation to some other token.
        let token_id = |k: &str| -> Result<Option<u32>> {
            if !self.metadata.contains_key(k) {
                return Ok(None);
            }
            let v = self.get_uint(k)?;
            u32::try_from(v).map(Some).map_err(|_| ModelError::InvalidConfig {
                path: self.path.clone(),
                key: k.into(),
                found: v.to_string(),
                expected: "a token id below 2^32".into(),
            })
        };
        let cfg = LlamaConfig {
            architectures: vec![model_type.architecture().to_string()],
            model_type,
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: size("feed_forward_length", LIMITS.intermediate_size)?,
            num_hidden_layers: size("block_count", LIMITS.layers)?,
            num_attention_heads: n_heads,
            num_key_value_heads: Some(n_kv),
            head_dim: head_dim.filter(|&h| h != hidden / n_heads),
            hidden_act: HiddenAct::Silu,
            max_position_embeddings: self.get_uint(&key("context_length")).map(|v| v as usize).unwrap_or(2048),
            rms_norm_eps: self.get_float(&key("attention.layer_norm_rms_epsilon"))?,
            rope_theta: self.get_float(&key("rope.freq_base")).unwrap_or(10_000.0),
            rope_scaling,
            rope_parameters: None,
            attention_bias: false,
            mlp_bias: false,
            tie_word_embeddings: tied,
            bos_token_id: token_id("tokenizer.ggml.bos_token_id")?.map(TokenIds::One),
            eos_token_id: token_id("tokenizer.ggml.eos_token_id")?.map(TokenIds::One),
            pad_token_id: token_id("tokenizer.ggml.padding_token_id")?,
            torch_dtype: Some("float32".into()),
        };
        cfg.validate().map_err(|e| e.at(&self.path))?;
        Ok(cfg)
    }

    /// Every tensor dequantised to f32 under its HF name, q/k rows in HF order.
    pub fn hf_weights(&self, cfg: &LlamaConfig) -> Result<TensorMap> {
        let permuted = matches!(self.architecture()?, "llama" | "mistral");
        let mut out = TensorMap::new();
        for info in &self.tensors {
            let hf = hf_name(&info.name).ok_or_else(|| ModelError::UnexpectedTensor { path: self.path.clone(), name: info.name.clone() })?;
            let mut t = self.dequantize(info)?;
            if permuted {
                let heads = if info.name.ends_with("attn_q.weight") || info.name.ends_with("attn_q.bias") {
                    Some(cfg.num_attention_heads)
                } else if info.name.ends_with("attn_k.weight") || info.name.ends_with("attn_k.bias") {
                    Some(cfg.num_kv_heads())
                } else {
                    None
                };
                if let Some(heads) = heads {
                    t = unpermute_rows(&t, heads as i64).ok_or_else(|| ModelError::GgufTensor {
                        path: self.path.clone(),
                        tensor: info.name.clone(),
                        expected: format!("a row count divisible by 2 × {heads} heads (for the q/k un-permutation), got shape {:?}", t.size()),
                    })?;
                }
            }
            // Names are unique in the table, but two GGUF names must not map to one HF name.
            if out.insert(hf.clone(), t).is_some() {
                return Err(ModelError::DuplicateTensor { path: self.path.clone(), name: hf });
            }
        }
        Ok(out)
    }

    /// The tokenizer as an HF `tokenizer.json` document, built from `tokenizer.ggml.*`.
    pub fn tokenizer_json(&self) -> Result<serde_json::Value> {
        let model = self.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(ModelError::Unsupported {
                path: self.path.clone(),
                what: format!("tokenizer model `{model}`"),
                detail: "only byte-level BPE (`gpt2`) tokenizers are rebuilt from GGUF".into(),
            });
        }
        let tokens = self.get_str_array("tokenizer.ggml.tokens")?;
        let merges = self.get_str_array("tokenizer.ggml.merges")?;
        let types: Vec<u64> = match self.get_array("tokenizer.ggml.token_type") {
            Ok(a) => a
                .iter()
                .map(|v| {
                    if let GgufValue::Int(i) = v {
                        *i as u64
                    } else if let GgufValue::Uint(u) = v {
                        *u
                    } else {
                        1
                    }
                })
                .collect(),
            Err(_) => vec![1; tokens.len()],
        };
        let pre = self.get_str("tokenizer.ggml.pre").unwrap_or("default");
        let byte_level = |use_regex: bool| serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
        let split = |pattern: &str| serde_json::json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false});
        // Pre-tokenizers of the `tokenizer.ggml.pre` values llama.cpp writes for these families
        // (llama.cpp `llm_tokenizer_bpe` regex table; HF tokenizer.json of each model).
        let (pre_tokenizer, ignore_merges) = match pre {
            "smollm" => (
                serde_json::json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
                false,
            ),
            "llama-bpe" | "llama3" => (
                serde_json::json!({"type": "Sequence", "pretokenizers": [split(
                    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
                    byte_level(false)]}),
                true,
            ),
            "qwen2" => (
                serde_json::json!({"type": "Sequence", "pretokenizers": [split(
                    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
                    byte_level(false)]}),
                false,
            ),
            "default" | "gpt2" => (byte_level(true), false),
            other => {
                return Err(ModelError::Unsupported {
                    path: self.path.clone(),
                    what: format!("pre-tokenizer `{other}`"),
                    detail: "supported: smollm, llama-bpe, qwen2, default/gpt2".into(),
                })
            }
        };
        let vocab: serde_json::Map<String, serde_json::Value> = tokens.iter().enumerate().map(|(i, t)| (t.to_string(), serde_json::Value::from(i))).collect();
        // Control (3) and user-defined (4) tokens are added tokens, matched before BPE.
        let added: Vec<serde_json::Value> = tokens
            .iter()
            .zip(&types)
            .enumerate()
            .filter(|(_, (_, ty))| **ty == 3 || **ty == 4)
            .map(|(id, (tok, ty))| {
                serde_json::json!({"id": id, "content": tok, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": *ty == 3})
            })
            .collect();
        let add_bos = matches!(self.metadata.get("tokenizer.ggml.add_bos_token"), Some(GgufValue::Bool(true)));
        let post_processor = match (add_bos, self.get_uint("tokenizer.ggml.bos_token_id")) {
            (true, Ok(bos)) => {
                let bos_tok = tokens.get(bos as usize).copied().unwrap_or_default();
                serde_json::json!({"type": "TemplateProcessing",
                    "single": [{"SpecialToken": {"id": bos_tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                    "pair": [{"SpecialToken": {"id": bos_tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                             {"SpecialToken": {"id": bos_tok, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                    "special_tokens": {bos_tok: {"id": bos_tok, "ids": [bos], "tokens": [bos_tok]}}})
            }
            _ => serde_json::Value::Null,
        };
        Ok(serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": post_processor,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": ignore_merges,
                "vocab": vocab, "merges": merges}
        }))
    }

    /// An HF `tokenizer_config.json` document: special tokens and the chat template.
    pub fn tokenizer_config_json(&self) -> Result<serde_json::Value> {
        let tokens = self.get_str_array("tokenizer.ggml.tokens")?;
        let tok = |key: &str| self.get_uint(key).ok().and_then(|id| tokens.get(id as usize)).map(|t| serde_json::Value::from(*t));
        let add_bos = matches!(self.metadata.get("tokenizer.ggml.add_bos_token"), Some(GgufValue::Bool(true)));
        Ok(serde_json::json!({
            "add_bos_token": add_bos,
            "add_eos_token": false,
            "bos_token": tok("tokenizer.ggml.bos_token_id"),
            "eos_token": tok("tokenizer.ggml.eos_token_id"),
            "pad_token": tok("tokenizer.ggml.padding_token_id"),
            "unk_token": tok("tokenizer.ggml.unknown_token_id"),
            "chat_template": self.get_str("tokenizer.chat_template").ok(),
            "clean_up_tokenization_spaces": false,
            "model_max_length": self.get_uint(&format!("{}.context_length", self.architecture()?)).unwrap_or(2048),
            "tokenizer_class": "PreTrainedTokenizerFast",
        }))
    }
}

/// Bytes of a tensor's data, or what was expected of its entry: a supported type, dims whose
/// product fits in an i64 (a tensor's shape is i64 in libtorch) and whose first (fastest)
/// dim is a whole number of quantisation blocks, as llama.cpp requires.
fn tensor_size(info: &GgufTensorInfo) -> std::result::Result<u64, String> {
    let (block, size) =
        block_layout(info.ggml_type).ok_or_else(|| format!("a supported ggml type (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K), got {}", info.ggml_type))?;
    let numel = info.dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d)).filter(|&n| n <= i64::MAX as u64);
    let numel = numel.ok_or_else(|| format!("dims {:?} whose product fits in an i64", info.dims))?;
    let first = info.dims.first().copied().unwrap_or(1);
    if !first.is_multiple_of(block as u64) {
        return Err(format!("a first dim that is a multiple of the type's block of {block} elements, got dims {:?}", info.dims));
    }
    // numel / block blocks of `size` bytes each: at most numel * 4 / 1, which fits after the
    // i64 check only if it is checked too (F32 of 2^62 elements is 2^64 bytes).
    (numel / block as u64).checked_mul(size as u64).ok_or_else(|| format!("dims {:?} whose data size fits in a u64", info.dims))
}

/// llama.cpp tensor name -> HF name (`None` for names outside the Llama family).
pub fn hf_name(gguf: &str) -> Option<String> {
    let (stem, suffix) = gguf.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let mapped = match stem {
        "token_embd" => "model.embed_tokens".to_string(),
        "output_norm" => "model.norm".to_string(),
        "output" => "lm_head".to_string(),
        _ => {
            let rest = stem.strip_prefix("blk.")?;
            let (layer, part) = rest.split_once('.')?;
            let layer: usize = layer.parse().ok()?;
            let hf_part = match part {
                "attn_norm" => "input_layernorm",
                "ffn_norm" => "post_attention_layernorm",
                "attn_q" => "self_attn.q_proj",
                "attn_k" => "self_attn.k_proj",
                "attn_v" => "self_attn.v_proj",
                "attn_output" => "self_attn.o_proj",
                "ffn_gate" => "mlp.gate_proj",
                "ffn_up" => "mlp.up_proj",
                "ffn_down" => "mlp.down_proj",
                _ => return None,
            };
            format!("model.layers.{layer}.{hf_part}")
        }
    };
    Some(format!("{mapped}.{suffix}"))
}

/// Undoes convert_hf_to_gguf.py's `permute`: rows viewed as (n, R/2n, 2) become (n, 2, R/2n).
/// `None` when the shape cannot have been permuted so: no axes, no heads, or a row count that
/// is not a multiple of 2n (the reshape would panic).
pub fn unpermute_rows(t: &Tensor, n_heads: i64) -> Option<Tensor> {
    let shape = t.size();
    let rows = *shape.first()?;
    if n_heads <= 0 || rows % (2 * n_heads) != 0 {
        return None;
    }
    let mut view = vec![n_heads, rows / n_heads / 2, 2];
    view.extend_from_slice(&shape[1..]);
    // Fallible reshapes: odd shapes are refused, never a libtorch panic.
    t.f_reshape(view.as_slice()).ok()?.f_transpose(1, 2).ok()?.f_contiguous().ok()?.f_reshape(shape.as_slice()).ok()
}

fn f32_to_f64_shortest(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(v as f64)
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Why `dequantize_into` refused its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DequantError {
    UnsupportedType(u32),
    /// `data` is not exactly the bytes of `out.len()` elements (a whole number of blocks).
    Length {
        expected: usize,
        found: usize,
    },
}

/// Dequantises `data` of ggml type `ty` into `out` (ggml-quants.c `dequantize_row_*`).
/// `data` must hold exactly the blocks of `out.len()` elements: a short block would index
/// past its bytes, and a short `data` would leave elements of `out` silently untouched.
pub fn dequantize_into(ty: u32, data: &[u8], out: &mut [f32]) -> std::result::Result<(), DequantError> {
    use ggml_type::*;
    let (block, size) = block_layout(ty).ok_or(DequantError::UnsupportedType(ty))?;
    let expected = (out.len() / block).checked_mul(size).filter(|_| out.len().is_multiple_of(block));
    if expected != Some(data.len()) {
        return Err(DequantError::Length { expected: expected.unwrap_or(usize::MAX), found: data.len() });
    }
    let blocks = out.par_chunks_mut(block).zip(data.par_chunks(size));
    match ty {
        F32 => blocks.for_each(|(o, b)| o[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        F16 => blocks.for_each(|(o, b)| o[0] = f16_at(b, 0)),
        BF16 => blocks.for_each(|(o, b)| o[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        Q8_0 => blocks.for_each(|(o, b)| {
            let d = f16_at(b, 0);
            for (j, v) in o.iter_mut().enumerate() {
                *v = d * (b[2 + j] as i8) as f32;
            }
        }),
        Q4_0 => blocks.for_each(|(o, b)| {
            let d = f16_at(b, 0);
            for j in 0..16 {
                let q = b[2 + j];
                o[j] = d * ((q & 0x0F) as i32 - 8) as f32;
                o[j + 16] = d * ((q >> 4) as i32 - 8) as f32;
            }
        }),
        Q4_1 => blocks.for_each(|(o, b)| {
            let (d, m) = (f16_at(b, 0), f16_at(b, 2));
            for j in 0..16 {
                let q = b[4 + j];
                o[j] = d * (q & 0x0F) as f32 + m;
                o[j + 16] = d * (q >> 4) as f32 + m;
            }
        }),
        Q4_K => blocks.for_each(|(o, b)| {
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let scales = &b[4..16];
            let qs = &b[16..144];
            let scale_min = |j: usize| -> (u8, u8) {
                if j < 4 {
                    (scales[j] & 63, scales[j + 4] & 63)
                } else {
                    ((scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4), (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4))
                }
            };
            for chunk in 0..4 {
                let (sc1, m1) = scale_min(2 * chunk);
                let (sc2, m2) = scale_min(2 * chunk + 1);
                let (d1, min1) = (d * sc1 as f32, dmin * m1 as f32);
                let (d2, min2) = (d * sc2 as f32, dmin * m2 as f32);
                let q = &qs[32 * chunk..32 * chunk + 32];
                let y = &mut o[64 * chunk..64 * chunk + 64];
                for l in 0..32 {
                    y[l] = d1 * (q[l] & 0x0F) as f32 - min1;
                    y[l + 32] = d2 * (q[l] >> 4) as f32 - min2;
                }
            }
        }),
        Q6_K => blocks.for_each(|(o, b)| {
            let (ql_all, qh_all, sc_all) = (&b[0..128], &b[128..192], &b[192..208]);
            let d = f16_at(b, 208);
            for half in 0..2 {
                let ql = &ql_all[64 * half..];
                let qh = &qh_all[32 * half..];
                let sc = &sc_all[8 * half..];
                let y = &mut o[128 * half..128 * half + 128];
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
                    let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                    let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                    y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                    y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                    y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                    y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                }
            }
        }),
        _ => return Err(DequantError::UnsupportedType(ty)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_1_block_follows_the_documented_layout() {
        // d = 0.5, m = -1.0; byte j holds element j (low nibble) and j + 16 (high nibble).
        let mut block = Vec::new();
        block.extend_from_slice(&f16::from_f32(0.5).to_le_bytes());
        block.extend_from_slice(&f16::from_f32(-1.0).to_le_bytes());
        for j in 0..16u8 {
            block.push(j | ((15 - j) << 4));
        }
        let mut out = vec![0f32; 32];
        dequantize_into(ggml_type::Q4_1, &block, &mut out).expect("supported");
        assert_eq!(out[0], -1.0);
        assert_eq!(out[3], 0.5);
        assert_eq!(out[16], 6.5);
        assert_eq!(out[31], -1.0);
    }

    #[test]
    fn q8_0_block_scales_signed_bytes() {
        let mut block = f16::from_f32(0.25).to_le_bytes().to_vec();
        block.extend((0..32).map(|j| (j as i8 - 16) as u8));
        let mut out = vec![0f32; 32];
        dequantize_into(ggml_type::Q8_0, &block, &mut out).expect("supported");
        assert_eq!(out[0], -4.0);
        assert_eq!(out[31], 3.75);
    }

    #[test]
    fn unpermute_inverts_the_converter_permutation() {
        // convert_hf_to_gguf.py: reshape(n, 2, R/2n, C).swapaxes(1, 2).reshape(R, C)
        let hf = Tensor::arange(8 * 3, (tch::Kind::Float, tch::Device::Cpu)).view([8, 3]);
        let gguf = hf.reshape([2, 2, 2, 3]).transpose(1, 2).contiguous().reshape([8, 3]);
        assert!(unpermute_rows(&gguf, 2).expect("8 rows, 2 heads").equal(&hf));
        // Shapes the converter cannot have written are refused, not a reshape panic.
        assert!(unpermute_rows(&Tensor::from_slice(&[1f32; 6]).view([6]), 2).is_none());
        assert!(unpermute_rows(&Tensor::from(1f32), 2).is_none());
        assert!(unpermute_rows(&hf, 0).is_none());
    }

    #[test]
    fn maps_gguf_names_to_hf_names() {
        assert_eq!(hf_name("blk.12.attn_q.weight").as_deref(), Some("model.layers.12.self_attn.q_proj.weight"));
        assert_eq!(hf_name("blk.0.attn_k.bias").as_deref(), Some("model.layers.0.self_attn.k_proj.bias"));
        assert_eq!(hf_name("token_embd.weight").as_deref(), Some("model.embed_tokens.weight"));
        assert_eq!(hf_name("output.weight").as_deref(), Some("lm_head.weight"));
        assert_eq!(hf_name("blk.0.ssm_in.weight"), None);
    }

    #[test]
    fn truncated_header_is_a_typed_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.gguf");
        let mut bytes = b"GGUF".to_vec();
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(&1u64.to_le_bytes());
        std::fs::write(&p, &bytes).expect("write");
        match GgufFile::open(&p) {
            Err(ModelError::GgufFormat { path, offset, .. }) => {
                assert_eq!(path, p);
                assert_eq!(offset, 16);
            }
            other => panic!("expected GgufFormat, got {:?}", other.err()),
        }
        std::fs::write(&p, b"PK\x03\x04not a gguf").expect("write");
        assert!(matches!(GgufFile::open(&p), Err(ModelError::GgufFormat { offset: 0, .. })));
    }
}
