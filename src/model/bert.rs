//! BERT sentence encoder for all-MiniLM-L6-v2 (sentence-transformers): mean pooling over the
//! attention mask, then L2 normalisation; max 256 tokens. Used by eval's SBERT diversity
//! metric and the `probe` judge. Inference only (no VarStore, no gradients).
use super::error::{io_err, ModelError, Result};
use super::tensors::{load_safetensors, TensorMap};
use serde::Deserialize;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// The fields of BERT's `config.json` the encoder uses.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    pub hidden_act: BertAct,
}

impl BertConfig {
    /// Positive sizes within the decoder's limits and heads that divide the hidden size, so
    /// that `forward`'s `hidden / heads` and reshapes cannot fail.
    fn validate(&self, path: &Path) -> Result<()> {
        use super::config::LIMITS;
        let bad = |key: &str, found: String, expected: String| Err(ModelError::InvalidConfig { path: path.to_path_buf(), key: key.into(), found, expected });
        for (key, v, max) in [
            ("vocab_size", self.vocab_size, LIMITS.vocab_size),
            ("hidden_size", self.hidden_size, LIMITS.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers, LIMITS.layers),
            ("num_attention_heads", self.num_attention_heads, LIMITS.heads),
            ("intermediate_size", self.intermediate_size, LIMITS.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings, 1 << 20),
            ("type_vocab_size", self.type_vocab_size, 1 << 10),
        ] {
            if v == 0 || v > max {
                return bad(key, v.to_string(), format!("an integer in 1..={max}"));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return bad("hidden_size", self.hidden_size.to_string(), format!("a multiple of num_attention_heads {}", self.num_attention_heads));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return bad("layer_norm_eps", self.layer_norm_eps.to_string(), "a finite number > 0".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BertAct {
    Gelu,
}

struct Linear {
    weight: Tensor,
    bias: Tensor,
}
impl Linear {
    fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, Some(&self.bias))
    }
}
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}
impl LayerNorm {
    fn forward(&self, x: &Tensor) -> Tensor {
        let dim = *x.size().last().expect("layer norm input has a last axis");
        x.layer_norm([dim], Some(&self.weight), Some(&self.bias), self.eps, false)
    }
}
struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    out_norm: LayerNorm,
}

/// Maximum tokens per text (sentence_bert_config.json `max_seq_length`); longer texts are
/// truncated, as sentence-transformers does.
pub const MAX_SEQ_LEN: usize = 256;

/// all-MiniLM-L6-v2 (or any BERT checkpoint in the sentence-transformers layout).
pub struct SentenceEncoder {
    cfg: BertConfig,
    tokenizer: tokenizers::Tokenizer,
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
    device: Device,
}

impl std::fmt::Debug for SentenceEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentenceEncoder").field("cfg", &self.cfg).field("device", &self.device).finish()
    }
}

impl SentenceEncoder {
    /// Loads `config.json`, `model.safetensors` and `tokenizer.json` from `dir`.
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(io_err(&cfg_path))?;
        let cfg: BertConfig = serde_json::from_str(&text).map_err(|source| ModelError::Json { path: cfg_path.clone(), source })?;
        cfg.validate(&cfg_path)?;
        let tok_path = dir.join("tokenizer.json");
        let mut tokenizer =
            tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| ModelError::Tokenizer { path: tok_path.clone(), message: e.to_string() })?;
        // The shipped tokenizer.json pads and truncates to 128; sentence-transformers
        // overrides that with max_seq_length 256 and pads per batch, as done here.
        // Past the position table, the embedding lookup would panic: truncate to both.
        let max_len = MAX_SEQ_LEN.min(cfg.max_position_embeddings);
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams { max_length: max_len, ..Default::default() }))
            .map_err(|e| ModelError::Tokenizer { path: tok_path.clone(), message: e.to_string() })?;
        tokenizer.with_padding(None);
        if let Some((token, &id)) = tokenizer.get_vocab(true).iter().max_by_key(|(_, &id)| id) {
            if id as usize >= cfg.vocab_size {
                return Err(ModelError::TokenIdOutOfRange {
                    path: tok_path.clone(),
                    what: format!("the tokenizer's largest id (token `{token}`)"),
                    id: id as u64,
                    vocab_size: cfg.vocab_size,
                });
            }
        }
        let weights_path = dir.join("model.safetensors");
        let mut w = load_safetensors(&weights_path)?;
        // Checkpoints saved from BertModel have no prefix; from BertForX they have `bert.`.
        let prefixed: Vec<String> = w.keys().filter(|k| k.starts_with("bert.")).cloned().collect();
        for k in prefixed {
            if let Some(t) = w.remove(&k) {
                w.insert(k["bert.".len()..].to_string(), t);
            }
        }
        // Every tensor with the shape the config implies: a wrong one would otherwise panic in
        // the first forward (a shape error inside `linear`) instead of failing the load.
        let mut take = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let t = w.remove(name).ok_or_else(|| ModelError::MissingTensor { path: weights_path.clone(), name: name.to_string() })?;
            let expected: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
            if t.size() != expected {
                return Err(ModelError::ShapeMismatch { path: weights_path.clone(), name: name.to_string(), expected, found: t.size() });
            }
            Ok(t.to_kind(Kind::Float).to_device(device))
        };
        type Take<'a> = dyn FnMut(&str, &[usize]) -> Result<Tensor> + 'a;
        let linear = |take: &mut Take, p: &str, out_dim: usize, in_dim: usize| -> Result<Linear> {
            Ok(Linear { weight: take(&format!("{p}.weight"), &[out_dim, in_dim])?, bias: take(&format!("{p}.bias"), &[out_dim])? })
        };
        let d = cfg.hidden_size;
        let norm = |take: &mut Take, p: &str| -> Result<LayerNorm> {
            Ok(LayerNorm { weight: take(&format!("{p}.weight"), &[d])?, bias: take(&format!("{p}.bias"), &[d])?, eps: cfg.layer_norm_eps })
        };
        let word = take("embeddings.word_embeddings.weight", &[cfg.vocab_size, d])?;
        let position = take("embeddings.position_embeddings.weight", &[cfg.max_position_embeddings, d])?;
        let token_type = take("embeddings.token_type_embeddings.weight", &[cfg.type_vocab_size, d])?;
        let emb_norm = norm(&mut take, "embeddings.LayerNorm")?;
        let mut layers = Vec::new();
        let f = cfg.intermediate_size;
        for i in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            layers.push(Layer {
                query: linear(&mut take, &format!("{p}.attention.self.query"), d, d)?,
                key: linear(&mut take, &format!("{p}.attention.self.key"), d, d)?,
                value: linear(&mut take, &format!("{p}.attention.self.value"), d, d)?,
                attn_out: linear(&mut take, &format!("{p}.attention.output.dense"), d, d)?,
                attn_norm: norm(&mut take, &format!("{p}.attention.output.LayerNorm"))?,
                intermediate: linear(&mut take, &format!("{p}.intermediate.dense"), f, d)?,
                output: linear(&mut take, &format!("{p}.output.dense"), d, f)?,
                out_norm: norm(&mut take, &format!("{p}.output.LayerNorm"))?,
            });
        }
        let _unused: TensorMap = w; // pooler and position_ids are not used by mean pooling
        Ok(SentenceEncoder { cfg, tokenizer, word, position, token_type, emb_norm, layers, device })
    }

    /// Unit-length embeddings, one per text, in input order. Texts are encoded in batches of 64.
    pub fn encode(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(64) {
            out.extend(self.encode_batch(chunk)?);
        }
        Ok(out)
    }

    fn encode_batch(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let _guard = tch::no_grad_guard();
        let mut rows = Vec::with_capacity(texts.len());
        for t in texts {
            let enc = self.tokenizer.encode(t.as_str(), true).map_err(|e| ModelError::Tokenizer { path: "<minilm encode>".into(), message: e.to_string() })?;
            rows.push(enc.get_ids().iter().map(|&i| i as i64).collect::<Vec<i64>>());
        }
        let b_sz = rows.len() as i64;
        let seq_len = rows.iter().map(Vec::len).max().unwrap_or(1).max(1) as i64;
        let mut ids = vec![0i64; (b_sz * seq_len) as usize];
        let mut mask = vec![0f32; (b_sz * seq_len) as usize];
        for (b, r) in rows.iter().enumerate() {
            for (j, &id) in r.iter().enumerate() {
                ids[b * seq_len as usize + j] = id;
                mask[b * seq_len as usize + j] = 1.0;
            }
        }
        let ids = Tensor::from_slice(&ids).view([b_sz, seq_len]).to_device(self.device);
        let mask = Tensor::from_slice(&mask).view([b_sz, seq_len]).to_device(self.device);
        let hidden = self.forward(&ids, &mask);
        // Mean over real tokens, then L2 normalise (sentence-transformers Pooling + Normalize).
        let m = mask.unsqueeze(-1);
        let summed = (&hidden * &m).sum_dim_intlist(1, false, Kind::Float);
        let counts = m.sum_dim_intlist(1, false, Kind::Float).clamp_min(1e-9);
        let mean = summed / counts;
        let norm = mean.norm_scalaropt_dim(2, [-1], true).clamp_min(1e-12);
        let emb = (mean / norm).to_device(Device::Cpu).contiguous();
        let dim = self.cfg.hidden_size;
        let flat: Vec<f32> = Vec::try_from(emb.view([-1]))?;
        Ok(flat.chunks(dim).map(<[f32]>::to_vec).collect())
    }

    /// Last hidden states [B, T, D].
    fn forward(&self, ids: &Tensor, mask: &Tensor) -> Tensor {
        let (b_sz, seq_len) = ids.size2().expect("ids is [B, T]");
        let (heads, dim) = (self.cfg.num_attention_heads as i64, self.cfg.hidden_size as i64);
        let head_dim = dim / heads;
        let positions = Tensor::arange(seq_len, (Kind::Int64, self.device));
        let x = Tensor::embedding(&self.word, ids, -1, false, false)
            + Tensor::embedding(&self.position, &positions, -1, false, false).unsqueeze(0)
            + self.token_type.get(0).view([1, 1, dim]);
        let mut x = self.emb_norm.forward(&x);
        let attn_mask = mask.to_kind(Kind::Bool).view([b_sz, 1, 1, seq_len]);
        let split = |t: Tensor| t.view([b_sz, seq_len, heads, head_dim]).transpose(1, 2);
        for l in &self.layers {
            let q = split(l.query.forward(&x));
            let k = split(l.key.forward(&x));
            let v = split(l.value.forward(&x));
            let a = Tensor::scaled_dot_product_attention(&q, &k, &v, Some(&attn_mask), 0.0, false, None::<f64>, false);
            let a = a.transpose(1, 2).reshape([b_sz, seq_len, dim]);
            let h = l.attn_norm.forward(&(l.attn_out.forward(&a) + &x));
            let inter = l.intermediate.forward(&h).gelu("none");
            x = l.out_norm.forward(&(l.output.forward(&inter) + h));
        }
        x
    }
}
