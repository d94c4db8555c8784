//! The Llama-family decoder in tch (RMSNorm, RoPE, GQA, SwiGLU, optional biases, tied or
//! untied head). Built by `policy.rs`; parameters live in the caller's VarStore under the HF
//! checkpoint names (`model.layers.N.self_attn.q_proj.weight`), so loading needs no renaming.
use super::config::LlamaConfig;
use tch::{nn, Kind, Tensor};

/// A linear layer with HF's `[out, in]` weight layout and an optional bias.
#[derive(Debug)]
struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    fn new(p: nn::Path, in_dim: usize, out_dim: usize, bias: bool) -> Self {
        let weight = p.zeros("weight", &[out_dim as i64, in_dim as i64]);
        let bias = bias.then(|| p.zeros("bias", &[out_dim as i64]));
        Linear { weight, bias }
    }
    /// `decode`: a KV-cache decoding step (no gradients needed), where a few rows use the
    /// weight-streaming CPU kernel of `kernels` when it applies.
    fn forward(&self, x: &Tensor, decode: bool) -> Tensor {
        project(x, &self.weight, self.bias.as_ref(), decode)
    }
}

/// `x · Wᵀ (+ b)` for an HF-layout weight [out, in]; see `Linear::forward` for `decode`.
fn project(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, decode: bool) -> Tensor {
    if decode {
        if let Some(y) = super::kernels::small_rows_linear(x, weight, bias) {
            return y;
        }
    }
    x.linear(weight, bias)
}

/// HF `LlamaRMSNorm`: normalise in f32, cast back, then scale.
#[derive(Debug)]
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(p: nn::Path, dim: usize, eps: f64) -> Self {
        RmsNorm { weight: p.ones("weight", &[dim as i64]), eps }
    }
    fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let x32 = x.to_kind(Kind::Float);
        let var = x32.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        let normed = (x32 * (var + self.eps).rsqrt()).to_kind(kind);
        &self.weight * normed
    }
}

/// Rotates the two halves of the last axis: (x1, x2) -> (-x2, x1).
fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size().last().copied().expect("rotate_half on a tensor with no axes") / 2;
    let x1 = x.narrow(-1, 0, half);
    let x2 = x.narrow(-1, half, half);
    Tensor::cat(&[-x2, x1], -1)
}

/// Which keys each query may attend to.
#[derive(Debug)]
pub enum AttentionMask {
    /// Key j is visible to query i iff j <= i: for rows without left padding and no cache
    /// (right padding only affects positions after the last real token, never read).
    Causal,
    /// Boolean [B, 1, T, S], true = may attend (see `Llama::attention_mask`).
    Explicit(Tensor),
}

/// Preallocated per-layer key/value cache for batched decoding.
#[derive(Debug)]
pub struct KvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    len: i64,
    capacity: i64,
}

impl KvCache {
    /// Allocates room for `capacity` positions of `batch` rows for every layer.
    pub fn new(cfg: &LlamaConfig, batch: i64, capacity: i64, kind: Kind, device: tch::Device) -> Self {
        let shape = [batch, cfg.num_kv_heads() as i64, capacity, cfg.head_dim() as i64];
        let alloc = || Tensor::zeros(shape, (kind, device));
        KvCache { keys: (0..cfg.num_hidden_layers).map(|_| alloc()).collect(), values: (0..cfg.num_hidden_layers).map(|_| alloc()).collect(), len: 0, capacity }
    }
    /// Number of positions already stored.
    pub fn len(&self) -> i64 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn capacity(&self) -> i64 {
        self.capacity
    }
}

#[derive(Debug)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    num_heads: i64,
    num_kv_heads: i64,
    head_dim: i64,
}

impl Attention {
    fn new(p: nn::Path, cfg: &LlamaConfig) -> Self {
        let (h, kv, hd) = (cfg.num_attention_heads, cfg.num_kv_heads(), cfg.head_dim());
        let d = cfg.hidden_size;
        Attention {
            q_proj: Linear::new(&p / "q_proj", d, h * hd, cfg.qkv_bias()),
            k_proj: Linear::new(&p / "k_proj", d, kv * hd, cfg.qkv_bias()),
            v_proj: Linear::new(&p / "v_proj", d, kv * hd, cfg.qkv_bias()),
            o_proj: Linear::new(&p / "o_proj", h * hd, d, cfg.o_bias()),
            num_heads: h as i64,
            num_kv_heads: kv as i64,
            head_dim: hd as i64,
        }
    }

    /// `cache` holds S - T earlier keys; see `AttentionMask` for the mask and
    /// `Linear::forward` for `decode`.
    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, mask: &AttentionMask, cache: Option<(&mut Tensor, &mut Tensor, i64)>, decode: bool) -> Tensor {
        let (b_sz, seq_len, _) = x.size3().expect("attention input is [B, T, D]");
        let (num_heads, num_kv_heads, head_dim) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let q = self.q_proj.forward(x, decode).view([b_sz, seq_len, num_heads, head_dim]).transpose(1, 2);
        let k = self.k_proj.forward(x, decode).view([b_sz, seq_len, num_kv_heads, head_dim]).transpose(1, 2);
        let v = self.v_proj.forward(x, decode).view([b_sz, seq_len, num_kv_heads, head_dim]).transpose(1, 2);
        // cos/sin are [B, 1, T, head_dim] so they broadcast over heads.
        let q = &q * cos + rotate_half(&q) * sin;
        let k = &k * cos + rotate_half(&k) * sin;
        let (k, v) = match cache {
            Some((k_cache, v_cache, past)) => {
                k_cache.narrow(2, past, seq_len).copy_(&k);
                v_cache.narrow(2, past, seq_len).copy_(&v);
                (k_cache.narrow(2, 0, past + seq_len), v_cache.narrow(2, 0, past + seq_len))
            }
            None => (k, v),
        };
        let n_rep = num_heads / num_kv_heads;
        let attn = match mask {
            // Plain causal attention (training on unpadded / right-padded rows, no cache): the
            // fused causal kernel, kv heads expanded (cheap next to the training compute).
            AttentionMask::Causal => {
                let (k, v) = if n_rep == 1 {
                    (k, v)
                } else {
                    let kv_len = k.size()[2];
                    let expand =
                        |t: Tensor| t.unsqueeze(2).expand([b_sz, num_kv_heads, n_rep, kv_len, head_dim], false).reshape([b_sz, num_heads, kv_len, head_dim]);
                    (expand(k), expand(v))
                };
                Tensor::scaled_dot_product_attention(&q, &k, &v, None::<&Tensor>, 0.0, true, None::<f64>, false)
            }
            // GQA without copying keys/values: the n_rep query heads that share a kv head are
            // folded into the query-length axis, q [B, kv, n_rep*T, hd] against k/v [B, kv, S, hd].
            // (HF's `repeat_kv` materialises n_rep copies of the whole cache on every step.)
            AttentionMask::Explicit(mask) if n_rep > 1 => {
                let q = q.contiguous().view([b_sz, num_kv_heads, n_rep * seq_len, head_dim]);
                let mask = mask.repeat([1, 1, n_rep, 1]);
                Tensor::scaled_dot_product_attention(&q, &k, &v, Some(&mask), 0.0, false, None::<f64>, false).view([b_sz, num_heads, seq_len, head_dim])
            }
            AttentionMask::Explicit(mask) => Tensor::scaled_dot_product_attention(&q, &k, &v, Some(mask), 0.0, false, None::<f64>, false),
        };
        let attn = attn.transpose(1, 2).reshape([b_sz, seq_len, num_heads * head_dim]);
        self.o_proj.forward(&attn, decode)
    }
}

#[derive(Debug)]
struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    fn new(p: nn::Path, cfg: &LlamaConfig) -> Self {
        let (d, f, b) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
        Mlp {
            gate_proj: Linear::new(&p / "gate_proj", d, f, b),
            up_proj: Linear::new(&p / "up_proj", d, f, b),
            down_proj: Linear::new(&p / "down_proj", f, d, b),
        }
    }
    fn forward(&self, x: &Tensor, decode: bool) -> Tensor {
        let h = self.gate_proj.forward(x, decode).silu() * self.up_proj.forward(x, decode);
        self.down_proj.forward(&h, decode)
    }
}

#[derive(Debug)]
struct Block {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

/// The decoder plus its LM head.
#[derive(Debug)]
pub struct Llama {
    embed_tokens: Tensor,
    layers: Vec<Block>,
    norm: RmsNorm,
    /// `None` when the head is tied to `embed_tokens`.
    lm_head: Option<Tensor>,
    inv_freq: Tensor,
    cfg: LlamaConfig,
}

impl Llama {
    /// Creates the parameters (zeros; the loader fills them) under `root` with HF names.
    pub fn new(root: nn::Path, cfg: &LlamaConfig) -> Self {
        let m = &root / "model";
        let embed_tokens = (&m / "embed_tokens").zeros("weight", &[cfg.vocab_size as i64, cfg.hidden_size as i64]);
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let l = &m / "layers" / i;
                Block {
                    input_layernorm: RmsNorm::new(&l / "input_layernorm", cfg.hidden_size, cfg.rms_norm_eps),
                    self_attn: Attention::new(&l / "self_attn", cfg),
                    post_attention_layernorm: RmsNorm::new(&l / "post_attention_layernorm", cfg.hidden_size, cfg.rms_norm_eps),
                    mlp: Mlp::new(&l / "mlp", cfg),
                }
            })
            .collect();
        let norm = RmsNorm::new(&m / "norm", cfg.hidden_size, cfg.rms_norm_eps);
        let lm_head = (!cfg.tie_word_embeddings).then(|| (&root / "lm_head").zeros("weight", &[cfg.vocab_size as i64, cfg.hidden_size as i64]));
        let inv_freq = Tensor::from_slice(&cfg.rope_inv_freq()).to_device(root.device());
        Llama { embed_tokens, layers, norm, lm_head, inv_freq, cfg: cfg.clone() }
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// cos/sin tables [B, 1, T, head_dim] for integer positions [B, T], computed in f32 as HF does.
    fn rope_tables(&self, positions: &Tensor, kind: Kind) -> (Tensor, Tensor) {
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * self.inv_freq.view([1, 1, -1]);
        let emb = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1);
        (emb.cos().to_kind(kind), emb.sin().to_kind(kind))
    }

    /// Boolean attention mask [B, 1, T, S] for T new queries after `past` cached positions.
    /// A query may see key j when j is not later than itself and j is a real token. A padding
    /// query may always see itself, so no row of the softmax is empty (which would give NaN).
    pub fn attention_mask(key_valid: &Tensor, past: i64, seq_len: i64) -> Tensor {
        let (b_sz, total) = key_valid.size2().expect("key_valid is [B, S]");
        let device = key_valid.device();
        let keys = Tensor::arange(total, (Kind::Int64, device)).view([1, 1, 1, total]);
        let queries = (Tensor::arange(seq_len, (Kind::Int64, device)) + past).view([1, 1, seq_len, 1]);
        let causal = keys.le_tensor(&queries);
        let own = keys.eq_tensor(&queries);
        let valid = key_valid.to_kind(Kind::Bool).view([b_sz, 1, 1, total]);
        causal.logical_and(&valid.logical_or(&own))
    }

    /// Final hidden states [B, T, D] for `input_ids` [B, T] at `positions` [B, T] with the
    /// boolean `mask` [B, 1, T, S]. With a cache, keys/values are appended after its length;
    /// a cached forward is for inference only: single-token steps of at most `kernels::MAX_ROWS`
    /// rows may run the linears through the CPU decode kernel, which records no gradient.
    pub fn hidden_states(&self, input_ids: &Tensor, positions: &Tensor, mask: &Tensor, cache: Option<&mut KvCache>) -> Tensor {
        self.hidden_states_with(input_ids, positions, &AttentionMask::Explicit(mask.shallow_clone()), cache)
    }

    /// `hidden_states` with any `AttentionMask`. `Causal` must not be used with a non-empty cache.
    pub fn hidden_states_with(&self, input_ids: &Tensor, positions: &Tensor, mask: &AttentionMask, mut cache: Option<&mut KvCache>) -> Tensor {
        let (_, seq_len) = input_ids.size2().expect("input_ids is [B, T]");
        let mut x = Tensor::embedding(&self.embed_tokens, input_ids, -1, false, false);
        let (cos, sin) = self.rope_tables(positions, x.kind());
        let past = cache.as_ref().map(|c| c.len).unwrap_or(0);
        // A single-token step with a cache (not the prefill) is a decoding step.
        let decode = cache.is_some() && seq_len == 1;
        for (i, layer) in self.layers.iter().enumerate() {
            let residual = x.shallow_clone();
            let h = layer.input_layernorm.forward(&x);
            let layer_cache = cache.as_mut().map(|c| {
                let (keys, values) = (&mut c.keys[i], &mut c.values[i]);
                (keys, values, past)
            });
            let h = layer.self_attn.forward(&h, &cos, &sin, mask, layer_cache, decode);
            let x1 = residual + h;
            let h = layer.mlp.forward(&layer.post_attention_layernorm.forward(&x1), decode);
            x = x1 + h;
        }
        if let Some(c) = cache {
            c.len = past + seq_len;
        }
        self.norm.forward(&x)
    }

    /// Logits [.., V] of hidden states [.., D].
    pub fn lm_head(&self, hidden: &Tensor) -> Tensor {
        project(hidden, self.head_weight(), None, false)
    }

    /// `lm_head` for a decoding step: no gradients; a few rows may use the CPU decode kernel.
    pub fn lm_head_decode(&self, hidden: &Tensor) -> Tensor {
        project(hidden, self.head_weight(), None, true)
    }

    fn head_weight(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }

    /// Full forward without cache: logits [B, T, V] for `input_ids` [B, T] with a 0/1
    /// `attention_mask` [B, T] (left or right padding). Positions count real tokens only.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Tensor {
        let (_, seq_len) = input_ids.size2().expect("input_ids is [B, T]");
        let positions = positions_from_mask(attention_mask);
        // Rows whose padding is all on the right (or absent) need only the causal mask, which
        // lets libtorch use its fused causal kernel. One host sync to find out.
        let valid = attention_mask.to_kind(Kind::Int64);
        let right_padded = seq_len < 2 || bool::try_from(valid.narrow(1, 1, seq_len - 1).le_tensor(&valid.narrow(1, 0, seq_len - 1)).all()).unwrap_or(false);
        let mask = if right_padded { AttentionMask::Causal } else { AttentionMask::Explicit(Self::attention_mask(attention_mask, 0, seq_len)) };
        self.lm_head(&self.hidden_states_with(input_ids, &positions, &mask, None))
    }
}

/// (HF name, shape) of every parameter `Llama::new` creates for `cfg`, sorted by name, without
/// allocating any. The loader compares a checkpoint against this list before it builds the
/// model, so a config with absurd sizes fails as a shape mismatch instead of allocating what
/// it asks for; `cfg` must have passed `LlamaConfig::validate` (so no product overflows).
pub fn parameter_shapes(cfg: &LlamaConfig) -> Vec<(String, Vec<i64>)> {
    let (v, d, f) = (cfg.vocab_size as i64, cfg.hidden_size as i64, cfg.intermediate_size as i64);
    let (q, kv) = ((cfg.num_attention_heads * cfg.head_dim()) as i64, (cfg.num_kv_heads() * cfg.head_dim()) as i64);
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, d]), ("model.norm.weight".to_string(), vec![d])];
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".into(), vec![v, d]));
    }
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let mut linear = |name: &str, out_dim: i64, in_dim: i64, bias: bool| {
            out.push((format!("{p}.{name}.weight"), vec![out_dim, in_dim]));
            if bias {
                out.push((format!("{p}.{name}.bias"), vec![out_dim]));
            }
        };
        linear("self_attn.q_proj", q, d, cfg.qkv_bias());
        linear("self_attn.k_proj", kv, d, cfg.qkv_bias());
        linear("self_attn.v_proj", kv, d, cfg.qkv_bias());
        linear("self_attn.o_proj", d, q, cfg.o_bias());
        linear("mlp.gate_proj", f, d, cfg.mlp_bias);
        linear("mlp.up_proj", f, d, cfg.mlp_bias);
        linear("mlp.down_proj", d, f, cfg.mlp_bias);
        out.push((format!("{p}.input_layernorm.weight"), vec![d]));
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![d]));
    }
    out.sort();
    out
}

/// Position ids [B, T] from a 0/1 mask: the index among the row's real tokens (0 on padding).
pub fn positions_from_mask(attention_mask: &Tensor) -> Tensor {
    (attention_mask.to_kind(Kind::Int64).cumsum(-1, Kind::Int64) - 1).clamp_min(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_shapes_lists_exactly_what_new_creates() {
        let mut cfg = crate::model::tiny_random_llama(0).config().clone();
        for (tied, bias, mlp_bias) in [(false, false, false), (true, true, true)] {
            cfg.tie_word_embeddings = tied;
            cfg.attention_bias = bias;
            cfg.mlp_bias = mlp_bias;
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let _model = Llama::new(vs.root(), &cfg);
            let mut created: Vec<(String, Vec<i64>)> = vs.variables().into_iter().map(|(n, t)| (n, t.size())).collect();
            created.sort();
            assert_eq!(parameter_shapes(&cfg), created, "tied {tied}, bias {bias}");
        }
    }
}
