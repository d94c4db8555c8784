//! Batched sampling with a preallocated KV cache, left padding, greedy / temperature / top-k /
//! top-p, stop tokens and per-row seeds. Called through `Policy::generate` by the rollout code.
//!
//! Row independence: each row draws its uniforms from its own `ChaCha8Rng` seeded with the
//! caller's per-row seed, and picks its token by inverse CDF over its own (filtered,
//! temperature-scaled) probabilities. So a row's tokens do not depend on which rows share its
//! batch (up to float rounding of the batched matmuls, which only matters for a draw that
//! lands within ~1e-7 of a CDF boundary).
//!
//! Log-probabilities: every returned log-prob is `log_softmax(logits)` at temperature 1 with no
//! top-k/top-p filtering, i.e. log π(a_t | s_t) of the model itself, whatever the sampling
//! settings. That is what RL needs (the policy's log-prob of the action); at temperature 1 and
//! top_p = 1 (the method's settings, method.md §1.5) it is also the sampling distribution's.
use super::llama::{KvCache, Llama};
use super::tokenizer::TokenId;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

/// Sampling settings shared by all rows of a call.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax); otherwise logits are divided by it before sampling.
    pub temperature: f64,
    /// Nucleus sampling mass in (0, 1]; 1 disables it.
    pub top_p: f64,
    /// Keep only the k most likely tokens; `None` disables it.
    pub top_k: Option<usize>,
    pub max_new_tokens: usize,
    /// A row cannot stop (emit a stop token) before it has generated this many tokens: stop
    /// tokens are masked out of the sampling distribution until then, as vLLM's `min_tokens`
    /// (1 in the method's sampler, method.md §1.5: a turn is never empty). The returned
    /// log-probs stay the model's own (module docs).
    pub min_new_tokens: usize,
    /// Generation ends for a row when it emits one of these (the token is kept in its output).
    /// Empty means the tokenizer's stop ids (filled in by `Policy::generate`).
    pub stop_token_ids: Vec<TokenId>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 1.0, top_p: 1.0, top_k: None, max_new_tokens: 128, min_new_tokens: 1, stop_token_ids: Vec::new() }
    }
}

impl SamplingParams {
    pub fn greedy(max_new_tokens: usize) -> Self {
        SamplingParams { temperature: 0.0, max_new_tokens, ..Default::default() }
    }

    /// These settings with one row's seed, as a server request carries them
    /// (`net::wire::TokenSampling`).
    pub fn with_seed(&self, seed: u64) -> crate::net::wire::TokenSampling {
        crate::net::wire::TokenSampling {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            max_new_tokens: self.max_new_tokens,
            min_new_tokens: self.min_new_tokens,
            stop_token_ids: self.stop_token_ids.clone(),
            seed: Some(crate::net::wire::wire_seed(seed)),
        }
    }

    /// A server request's settings for the sampler: everything but the seed, which the
    /// sampler takes per row.
    pub fn of_request(s: &crate::net::wire::TokenSampling) -> Self {
        SamplingParams {
            temperature: s.temperature,
            top_p: s.top_p,
            top_k: s.top_k,
            max_new_tokens: s.max_new_tokens,
            min_new_tokens: s.min_new_tokens,
            stop_token_ids: s.stop_token_ids.clone(),
        }
    }
}

/// One row's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Generated ids, including the stop token when `finished_by_stop`.
    pub token_ids: Vec<TokenId>,
    /// log π(token) under the model at temperature 1 (see module docs), one per token.
    pub logprobs: Vec<f32>,
    /// True if the row ended on a stop token, false if it hit `max_new_tokens`.
    pub finished_by_stop: bool,
    /// `token_ids` decoded with special tokens skipped.
    pub text: String,
}

/// Raw output of `generate_ids`: [B, N] tensors on the CPU plus per-row lengths.
pub(crate) struct RawSamples {
    pub tokens: Vec<Vec<TokenId>>,
    pub logprobs: Vec<Vec<f32>>,
    pub finished_by_stop: Vec<bool>,
    /// `Some(steps)` when the interrupt flag stopped decoding after `steps` steps (the rows
    /// are then incomplete and must not be used).
    pub interrupted: Option<usize>,
}

/// Uniform in (0, 1] from 53 random bits (never 0, so inverse CDF never picks a zero-prob token).
fn uniform_open0(rng: &mut ChaCha8Rng) -> f64 {
    ((rng.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
}

/// Chooses next tokens [B] from last-position logits [B, V] (float) and uniforms [B].
fn choose(logits: &Tensor, uniforms: &Tensor, params: &SamplingParams) -> Tensor {
    if params.temperature <= 0.0 {
        return logits.argmax(-1, false);
    }
    let vocab = logits.size()[1];
    let probs = (logits / params.temperature).softmax(-1, Kind::Float);
    let filtered = params.top_p < 1.0 || params.top_k.is_some_and(|k| (k as i64) < vocab);
    let (probs, order) = if filtered {
        let (sorted, order) = probs.sort(-1, true);
        let mut keep = sorted.ones_like().to_kind(Kind::Bool);
        if params.top_p < 1.0 {
            // Keep a token if the mass strictly before it is below top_p (so >= 1 token).
            let before = sorted.cumsum(-1, Kind::Float) - &sorted;
            keep = keep.logical_and(&before.lt(params.top_p));
        }
        if let Some(k) = params.top_k {
            let rank = Tensor::arange(vocab, (Kind::Int64, logits.device())).view([1, vocab]);
            keep = keep.logical_and(&rank.lt(k as i64));
        }
        (sorted * keep.to_kind(Kind::Float), Some(order))
    } else {
        (probs, None)
    };
    let cdf = probs.cumsum(-1, Kind::Float);
    let total = cdf.narrow(1, vocab - 1, 1);
    let target = uniforms.view([-1, 1]) * total;
    // First index whose cumulative mass reaches the target.
    let idx = cdf.lt_tensor(&target).sum_dim_intlist(-1, false, Kind::Int64).clamp_max(vocab - 1);
    match order {
        Some(order) => order.gather(1, &idx.view([-1, 1]), false).view([-1]),
        None => idx,
    }
}

/// How often (in decoding steps) the loop checks whether every row has finished; checking
/// is a device->host sync, so it is not done on every step.
const FINISHED_CHECK_EVERY: usize = 4;

/// Generates for `prompts` (token ids, unpadded) with one seed per row.
#[allow(clippy::explicit_counter_loop)] // `next_pos` is a device tensor, not a counter
#[allow(clippy::too_many_arguments)] // crate-internal; the public entry points take a SamplingParams
pub(crate) fn generate_ids(
    model: &Llama,
    prompts: &[Vec<TokenId>],
    seeds: &[u64],
    params: &SamplingParams,
    pad_id: TokenId,
    device: Device,
    kind: Kind,
    interrupt: Option<&std::sync::atomic::AtomicBool>,
) -> RawSamples {
    let _guard = tch::no_grad_guard();
    if params.max_new_tokens == 0 {
        let n = prompts.len();
        return RawSamples { tokens: vec![Vec::new(); n], logprobs: vec![Vec::new(); n], finished_by_stop: vec![false; n], interrupted: None };
    }
    let b_sz = prompts.len() as i64;
    let prompt_len = prompts.iter().map(Vec::len).max().unwrap_or(0).max(1) as i64;
    let max_new = params.max_new_tokens as i64;
    let capacity = prompt_len + max_new;
    // Left padding: row b's tokens sit at the right end of the prompt block.
    let mut ids = vec![pad_id as i64; (b_sz * prompt_len) as usize];
    let mut valid = vec![false; (b_sz * capacity) as usize];
    for (b, p) in prompts.iter().enumerate() {
        let start = prompt_len as usize - p.len();
        for (j, &t) in p.iter().enumerate() {
            ids[b * prompt_len as usize + start + j] = t as i64;
            valid[b * capacity as usize + start + j] = true;
        }
    }
    let ids = Tensor::from_slice(&ids).view([b_sz, prompt_len]).to_device(device);
    let key_valid = Tensor::from_slice(&valid).view([b_sz, capacity]).to_device(device);
    let uniforms: Vec<f32> = seeds
        .iter()
        .flat_map(|&s| {
            let mut rng = ChaCha8Rng::seed_from_u64(s);
            (0..max_new).map(move |_| uniform_open0(&mut rng) as f32).collect::<Vec<_>>()
        })
        .collect();
    let uniforms = Tensor::from_slice(&uniforms).view([b_sz, max_new.max(1)]).to_device(device);
    let stop = Tensor::from_slice(&params.stop_token_ids.iter().map(|&t| t as i64).collect::<Vec<_>>()).to_device(device);
    let pad = Tensor::full([b_sz], pad_id as i64, (Kind::Int64, device));

    let mut cache = KvCache::new(model.config(), b_sz, capacity, kind, device);
    let prompt_valid = key_valid.narrow(1, 0, prompt_len);
    let positions = super::llama::positions_from_mask(&prompt_valid);
    let mask = Llama::attention_mask(&prompt_valid, 0, prompt_len);
    let hidden = model.hidden_states(&ids, &positions, &mask, Some(&mut cache));
    let mut logits = model.lm_head_decode(&hidden.narrow(1, prompt_len - 1, 1).squeeze_dim(1)).to_kind(Kind::Float);
    let mut next_pos = positions.narrow(1, prompt_len - 1, 1) + 1;
    // The prefill above is one big forward on libtorch's threads. On the CPU, the decoding
    // steps below run their matmuls in the decode kernel's threads and the remaining small
    // ops on one libtorch thread (see `kernels::DecodeThreads`: this also keeps the sampled
    // tokens and log-probs independent of the thread count); tiny models (tests) skip the
    // team, whose spinning would cost more than it saves.
    let big_enough = model.config().matmul_weights_per_token() >= super::kernels::TEAM_MIN_WEIGHTS_PER_STEP;
    let _threads = (device == Device::Cpu).then(|| super::kernels::DecodeThreads::enter(big_enough));

    let out_tokens = Tensor::full([b_sz, max_new.max(1)], pad_id as i64, (Kind::Int64, device));
    let out_logprobs = Tensor::zeros([b_sz, max_new.max(1)], (Kind::Float, device));
    let mut finished = Tensor::zeros([b_sz], (Kind::Bool, device));
    let mut lengths = Tensor::zeros([b_sz], (Kind::Int64, device));
    let mut interrupted = None;
    for step in 0..max_new {
        // One relaxed load per step (a step is milliseconds): Ctrl-C stops a long batch
        // within one decoding step instead of at the end of the batch.
        if interrupt.is_some_and(|f| f.load(std::sync::atomic::Ordering::Relaxed)) {
            interrupted = Some(step as usize);
            break;
        }
        let u = uniforms.narrow(1, step, 1).squeeze_dim(1);
        let chosen = if (step as usize) < params.min_new_tokens && stop.numel() > 0 {
            // Too early to stop: sample as if the stop tokens had probability 0.
            let masked = logits.index_fill(1, &stop, f64::NEG_INFINITY);
            choose(&masked, &u, params)
        } else {
            choose(&logits, &u, params)
        };
        let logprob = logits.log_softmax(-1, Kind::Float).gather(1, &chosen.view([-1, 1]), false).view([-1]);
        let active = finished.logical_not();
        let token = chosen.where_self(&active, &pad);
        out_tokens.narrow(1, step, 1).copy_(&token.view([-1, 1]));
        out_logprobs.narrow(1, step, 1).copy_(&(logprob * active.to_kind(Kind::Float)).view([-1, 1]));
        lengths += active.to_kind(Kind::Int64);
        let hit_stop = if stop.numel() > 0 { Tensor::isin(&token, &stop, false, false) } else { token.zeros_like().to_kind(Kind::Bool) };
        finished = finished.logical_or(&hit_stop.logical_and(&active));
        if step + 1 == max_new {
            break;
        }
        if (step as usize + 1).is_multiple_of(FINISHED_CHECK_EVERY) && bool::try_from(finished.all()).unwrap_or(false) {
            break;
        }
        // The new token is a real key for rows that were still active when it was produced.
        key_valid.narrow(1, prompt_len + step, 1).copy_(&active.view([-1, 1]));
        let total = prompt_len + step + 1;
        let kv = key_valid.narrow(1, 0, total);
        let mask = Llama::attention_mask(&kv, total - 1, 1);
        let hidden = model.hidden_states(&token.view([-1, 1]), &next_pos, &mask, Some(&mut cache));
        logits = model.lm_head_decode(&hidden.squeeze_dim(1)).to_kind(Kind::Float);
        next_pos += 1;
    }
    let tokens: Vec<i64> = Vec::try_from(out_tokens.to_device(Device::Cpu).view([-1])).expect("int64 tokens");
    let logprobs: Vec<f32> = Vec::try_from(out_logprobs.to_device(Device::Cpu).view([-1])).expect("f32 logprobs");
    let lengths: Vec<i64> = Vec::try_from(lengths.to_device(Device::Cpu)).expect("int64 lengths");
    let finished: Vec<bool> = Vec::try_from(finished.to_device(Device::Cpu)).expect("bool flags");
    let width = max_new.max(1) as usize;
    let mut out = RawSamples { tokens: Vec::new(), logprobs: Vec::new(), finished_by_stop: finished, interrupted };
    for (b, &len) in lengths.iter().enumerate() {
        let row = b * width..b * width + len as usize;
        out.tokens.push(tokens[row.clone()].iter().map(|&t| t as TokenId).collect());
        out.logprobs.push(logprobs[row].to_vec());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f64, top_p: f64, top_k: Option<usize>) -> SamplingParams {
        SamplingParams { temperature, top_p, top_k, max_new_tokens: 1, min_new_tokens: 0, stop_token_ids: vec![] }
    }

    // Logits ln([0.1, 0.2, 0.3, 0.4]): the CDF is [0.1, 0.3, 0.6, 1.0].
    fn logits() -> Tensor {
        Tensor::from_slice(&[0.1f32, 0.2, 0.3, 0.4]).log().view([1, 4])
    }
    fn pick(p: &SamplingParams, u: f32) -> i64 {
        i64::try_from(choose(&logits(), &Tensor::from_slice(&[u]), p).view([-1]).get(0)).expect("id")
    }

    #[test]
    fn greedy_takes_the_argmax() {
        assert_eq!(pick(&params(0.0, 1.0, None), 0.01), 3);
    }

    #[test]
    fn temperature_one_is_inverse_cdf() {
        let p = params(1.0, 1.0, None);
        assert_eq!(pick(&p, 0.05), 0);
        assert_eq!(pick(&p, 0.25), 1);
        assert_eq!(pick(&p, 0.59), 2);
        assert_eq!(pick(&p, 0.61), 3);
        assert_eq!(pick(&p, 1.0), 3);
    }

    #[test]
    fn top_k_two_renormalises_over_the_two_best() {
        // Sorted kept probs [0.4, 0.3] -> CDF [4/7, 1].
        let p = params(1.0, 1.0, Some(2));
        assert_eq!(pick(&p, 0.5), 3);
        assert_eq!(pick(&p, 0.6), 2);
        assert_eq!(pick(&p, 1.0), 2);
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        // Sorted [0.4, 0.3, 0.2, 0.1]; mass before each [0, 0.4, 0.7, 0.9]; top_p 0.65 keeps 2.
        let p = params(1.0, 0.65, None);
        assert_eq!(pick(&p, 0.99), 2);
        let p = params(1.0, 0.75, None); // keeps 3: CDF [0.4, 0.7, 0.9]/0.9
        assert_eq!(pick(&p, 0.99), 1);
    }

    #[test]
    fn low_temperature_sharpens() {
        // T = 0.1: p ∝ [1, 2^10, 3^10, 4^10]: the top token has ~0.94 of the mass.
        let p = params(0.1, 1.0, None);
        assert_eq!(pick(&p, 0.9), 3);
        assert_eq!(pick(&p, 0.01), 2);
    }
}
