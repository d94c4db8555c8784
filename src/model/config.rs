//! Typed HF `config.json` for the Llama family (Llama 3.x, Mistral, Qwen2/2.5, SmolLM2).
//! Read by `policy.rs` (HF directories), built by `gguf.rs` (GGUF metadata), written by `policy.rs`.
//! Field names are the JSON keys; options are enums so a typo fails at load time.
use serde::{Deserialize, Serialize};

/// `model_type` of the checkpoint. All three share one decoder; they differ in biases only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelType {
    Llama,
    Mistral,
    Qwen2,
}

impl ModelType {
    pub fn architecture(self) -> &'static str {
        match self {
            ModelType::Llama => "LlamaForCausalLM",
            ModelType::Mistral => "MistralForCausalLM",
            ModelType::Qwen2 => "Qwen2ForCausalLM",
        }
    }
}

/// `hidden_act`: the gate activation of the SwiGLU MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HiddenAct {
    Silu,
    Gelu,
    #[serde(rename = "gelu_pytorch_tanh")]
    GeluPytorchTanh,
}

/// `rope_scaling.rope_type` (older configs say `type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RopeType {
    Default,
    Linear,
    Llama3,
}

/// `rope_scaling` object. Only the fields of the supported types are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    #[serde(alias = "type")]
    pub rope_type: RopeType,
    #[serde(default = "one")]
    pub factor: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_freq_factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_freq_factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_max_position_embeddings: Option<usize>,
}

/// transformers 5 `rope_parameters`: theta plus the scaling fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeParameters {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    #[serde(flatten)]
    pub scaling: RopeScaling,
}

fn one() -> f64 {
    1.0
}
fn default_theta() -> f64 {
    10_000.0
}
fn default_max_pos() -> usize {
    2048
}

/// `eos_token_id` is a number in most configs and a list in Llama 3.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

/// The decoder's configuration, exactly as HF writes `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    #[serde(default)]
    pub architectures: Vec<String>,
    pub model_type: ModelType,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    pub hidden_act: HiddenAct,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    /// transformers >= 5 writes theta and scaling here instead; `normalize` folds it into
    /// `rope_theta` / `rope_scaling`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<RopeParameters>,
    /// Llama/Mistral: bias on q, k, v and o. Qwen2 has q/k/v biases whatever this says.
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<TokenIds>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<TokenIds>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad_token_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torch_dtype: Option<String>,
}

impl LlamaConfig {
    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads)
    }
    /// Weights one token's forward multiplies by: every layer's projections plus the LM head.
    pub fn matmul_weights_per_token(&self) -> usize {
        let (d, f) = (self.hidden_size, self.intermediate_size);
        let attn = d * self.head_dim() * (2 * self.num_attention_heads + 2 * self.num_kv_heads());
        self.num_hidden_layers * (attn + 3 * d * f) + self.vocab_size * d
    }
    /// q/k/v projections carry a bias (always for Qwen2, `attention_bias` for Llama).
    pub fn qkv_bias(&self) -> bool {
        self.attention_bias || self.model_type == ModelType::Qwen2
    }
    /// o_proj carries a bias (only Llama's `attention_bias`; Qwen2's o_proj has none).
    pub fn o_bias(&self) -> bool {
        self.attention_bias && self.model_type != ModelType::Qwen2
    }

    /// RoPE inverse frequencies (length head_dim/2), as HF's `_compute_*_parameters`.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let dim = self.head_dim();
        let base: Vec<f32> = (0..dim / 2)
            .map(|i| {
                let exponent = (2 * i) as f32 / dim as f32;
                1.0f32 / (self.rope_theta as f32).powf(exponent)
            })
            .collect();
        let Some(scaling) = &self.rope_scaling else { return base };
        match scaling.rope_type {
            RopeType::Default => base,
            RopeType::Linear => base.iter().map(|f| f / scaling.factor as f32).collect(),
            RopeType::Llama3 => {
                let factor = scaling.factor;
                let low = scaling.low_freq_factor.unwrap_or(1.0);
                let high = scaling.high_freq_factor.unwrap_or(4.0);
                let old_ctx = scaling.original_max_position_embeddings.unwrap_or(8192) as f64;
                let low_wavelen = old_ctx / low;
                let high_wavelen = old_ctx / high;
                base.iter()
                    .map(|&f| {
                        let freq = f as f64;
                        let wavelen = 2.0 * std::f64::consts::PI / freq;
                        let scaled = if wavelen < high_wavelen {
                            freq
                        } else if wavelen > low_wavelen {
                            freq / factor
                        } else {
                            let smooth = (old_ctx / wavelen - low) / (high - low);
                            (1.0 - smooth) * freq / factor + smooth * freq
                        };
                        scaled as f32
                    })
                    .collect()
            }
        }
    }

    /// Folds transformers-5 `rope_parameters` into `rope_theta` / `rope_scaling`.
    pub fn normalize(&mut self) {
        if let Some(p) = &self.rope_parameters {
            if let Some(theta) = p.rope_theta {
                self.rope_theta = theta;
            }
            if p.scaling.rope_type != RopeType::Default {
                self.rope_scaling = Some(p.scaling.clone());
            }
        }
    }

    /// Checks the invariants the decoder relies on, before any of them is used: positive
    /// sizes, heads that divide the hidden size and each other, an even head_dim for RoPE,
    /// finite positive eps/theta/scaling, special token ids inside the vocabulary, and sizes
    /// below `LIMITS` (so no product of them overflows and no `as i64` turns negative).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, found: String, expected: String| Err(ConfigError { key: key.into(), found, expected });
        for (key, value, max) in [
            ("vocab_size", self.vocab_size, LIMITS.vocab_size),
            ("hidden_size", self.hidden_size, LIMITS.hidden_size),
            ("intermediate_size", self.intermediate_size, LIMITS.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers, LIMITS.layers),
            ("num_attention_heads", self.num_attention_heads, LIMITS.heads),
            ("num_key_value_heads", self.num_kv_heads(), LIMITS.heads),
        ] {
            if value == 0 || value > max {
                return bad(key, value.to_string(), format!("an integer in 1..={max}"));
            }
        }
        if !self.num_attention_heads.is_multiple_of(self.num_kv_heads()) {
            return bad("num_key_value_heads", self.num_kv_heads().to_string(), format!("a divisor of num_attention_heads {}", self.num_attention_heads));
        }
        match self.head_dim {
            Some(hd) if hd == 0 || hd > LIMITS.head_dim => return bad("head_dim", hd.to_string(), format!("an integer in 1..={}", LIMITS.head_dim)),
            Some(_) => {}
            None if !self.hidden_size.is_multiple_of(self.num_attention_heads) => {
                return bad(
                    "hidden_size",
                    self.hidden_size.to_string(),
                    format!("a multiple of num_attention_heads {} (or an explicit head_dim)", self.num_attention_heads),
                )
            }
            None => {}
        }
        if !self.head_dim().is_multiple_of(2) {
            return bad("head_dim", self.head_dim().to_string(), "an even number (RoPE rotates pairs)".into());
        }
        if self.hidden_act != HiddenAct::Silu {
            return bad("hidden_act", format!("{:?}", self.hidden_act), "silu (the Llama family's activation)".into());
        }
        let positive = |key: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                bad(key, v.to_string(), "a finite number > 0".into())
            }
        };
        positive("rms_norm_eps", self.rms_norm_eps)?;
        positive("rope_theta", self.rope_theta)?;
        if let Some(s) = &self.rope_scaling {
            positive("rope_scaling.factor", s.factor)?;
            if s.rope_type == RopeType::Llama3 {
                let low = s.low_freq_factor.unwrap_or(1.0);
                let high = s.high_freq_factor.unwrap_or(4.0);
                positive("rope_scaling.low_freq_factor", low)?;
                positive("rope_scaling.high_freq_factor", high)?;
                if high <= low {
                    return bad("rope_scaling.high_freq_factor", high.to_string(), format!("more than low_freq_factor {low}"));
                }
                if s.original_max_position_embeddings == Some(0) {
                    return bad("rope_scaling.original_max_position_embeddings", "0".into(), "a positive integer".into());
                }
            }
        }
        let ids = [
            ("bos_token_id", self.bos_token_id.as_ref().map(TokenIds::to_vec).unwrap_or_default()),
            ("eos_token_id", self.eos_token_id.as_ref().map(TokenIds::to_vec).unwrap_or_default()),
            ("pad_token_id", self.pad_token_id.into_iter().collect()),
        ];
        for (key, list) in ids {
            if let Some(id) = list.iter().find(|&&id| id as usize >= self.vocab_size) {
                return bad(key, id.to_string(), format!("a token id below vocab_size {}", self.vocab_size));
            }
        }
        Ok(())
    }
}

/// Upper bounds on config sizes. Generous (Llama 3.1 405B: hidden 16384, 126 layers, 128
/// heads, intermediate 53248, vocab 128256; Gemma: vocab 256000) yet small enough that
/// vocab × hidden and layers × hidden × intermediate fit easily in an i64, so the shape
/// arithmetic of the decoder cannot overflow. A value past them is a corrupt file, not a model.
pub struct Limits {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub layers: usize,
    pub heads: usize,
    pub head_dim: usize,
}

pub const LIMITS: Limits = Limits { vocab_size: 1 << 22, hidden_size: 1 << 16, intermediate_size: 1 << 18, layers: 1 << 10, heads: 1 << 10, head_dim: 1 << 12 };

/// Why a config is invalid: the key, its value, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub found: String,
    pub expected: String,
}

impl ConfigError {
    /// The typed model error naming the file the config came from.
    pub fn at(self, path: &std::path::Path) -> super::error::ModelError {
        super::error::ModelError::InvalidConfig { path: path.to_path_buf(), key: self.key, found: self.found, expected: self.expected }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_llama3_rope_scaling_and_eos_list() {
        let json = r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama","vocab_size":128256,
            "hidden_size":2048,"intermediate_size":8192,"num_hidden_layers":16,"num_attention_heads":32,
            "num_key_value_heads":8,"hidden_act":"silu","max_position_embeddings":131072,"rms_norm_eps":1e-5,
            "rope_theta":500000.0,"rope_scaling":{"factor":32.0,"high_freq_factor":4.0,"low_freq_factor":1.0,
            "original_max_position_embeddings":8192,"rope_type":"llama3"},"tie_word_embeddings":true,
            "bos_token_id":128000,"eos_token_id":[128001,128008,128009]}"#;
        let cfg: LlamaConfig = serde_json::from_str(json).expect("valid config");
        assert_eq!(cfg.rope_scaling.as_ref().map(|s| s.rope_type), Some(RopeType::Llama3));
        assert_eq!(cfg.eos_token_id.as_ref().map(|e| e.to_vec()), Some(vec![128001, 128008, 128009]));
        assert_eq!(cfg.head_dim(), 64);
        let inv = cfg.rope_inv_freq();
        // First frequency is unscaled (short wavelength), the last is divided by the factor.
        assert_eq!(inv[0], 1.0);
        let unscaled_last = 1.0f32 / 500000f32.powf(62.0 / 64.0);
        assert!((inv[31] - unscaled_last / 32.0).abs() < 1e-12);
    }

    #[test]
    fn rejects_unknown_hidden_act() {
        let json = r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":8,
            "num_hidden_layers":1,"num_attention_heads":2,"hidden_act":"swish","rms_norm_eps":1e-5}"#;
        assert!(serde_json::from_str::<LlamaConfig>(json).is_err());
    }

    fn tiny() -> LlamaConfig {
        let json = r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":8,
            "num_hidden_layers":1,"num_attention_heads":2,"hidden_act":"silu","rms_norm_eps":1e-5,"eos_token_id":9}"#;
        serde_json::from_str(json).expect("valid config")
    }

    #[test]
    fn validate_names_the_key_that_breaks_the_math() {
        assert_eq!(tiny().validate(), Ok(()));
        let key_of = |f: &dyn Fn(&mut LlamaConfig)| {
            let mut c = tiny();
            f(&mut c);
            c.validate().map_err(|e| e.key)
        };
        assert_eq!(key_of(&|c| c.num_attention_heads = 0), Err("num_attention_heads".into()));
        assert_eq!(key_of(&|c| c.num_attention_heads = 3), Err("hidden_size".into()));
        assert_eq!(key_of(&|c| c.num_key_value_heads = Some(0)), Err("num_key_value_heads".into()));
        assert_eq!(key_of(&|c| c.num_key_value_heads = Some(3)), Err("num_key_value_heads".into()));
        assert_eq!(key_of(&|c| c.vocab_size = 0), Err("vocab_size".into()));
        assert_eq!(key_of(&|c| c.hidden_size = usize::MAX), Err("hidden_size".into()));
        assert_eq!(key_of(&|c| c.head_dim = Some(3)), Err("head_dim".into()));
        assert_eq!(key_of(&|c| c.rms_norm_eps = f64::NAN), Err("rms_norm_eps".into()));
        assert_eq!(key_of(&|c| c.eos_token_id = Some(TokenIds::One(10))), Err("eos_token_id".into()));
    }
}
