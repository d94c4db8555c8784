//! The policy-gradient loss (method.md §3.1 step 5) and the SFT term (step 6), on tensors.
//! Reference: OpenRLHF `models/loss.PolicyLoss` (PPO-clip, ε = 0.2; with packed samples the
//! mean runs over all response tokens of the micro-batch) and `GPTLMLoss` (cross-entropy mean
//! over the target tokens). Called by `update::run_update`; `next_token_logprobs` is offered to
//! models that produce logits.
use tch::{Kind, Tensor};

/// `[B, L, V]` logits and `[B, L]` ids → `[B, L−1]` log p(ids[:, j+1] | ids[:, ..=j]).
/// The log-softmax runs in f32 whatever the logits' dtype.
pub fn next_token_logprobs(logits: &Tensor, input_ids: &Tensor) -> Tensor {
    let (_b, l, _v) = logits.size3().expect("logits are [batch, seq, vocab]");
    let targets = input_ids.narrow(1, 1, l - 1).unsqueeze(-1);
    let kind = if logits.kind() == Kind::Double { Kind::Double } else { Kind::Float };
    logits.narrow(1, 0, l - 1).log_softmax(-1, kind).gather(2, &targets, false).squeeze_dim(-1)
}

/// The clipped surrogate and its diagnostics.
#[derive(Debug)]
pub struct PolicyLoss {
    /// Scalar: token mean of −min(ratio·A, clip(ratio)·A) over masked positions.
    pub loss: Tensor,
    /// Fraction of response tokens with |ratio − 1| > ε.
    pub clip_fraction: f64,
    /// Response tokens in the micro-batch.
    pub tokens: f64,
}

/// PPO-clip over `[B, L−1]` tensors. The log-ratio is multiplied by the mask before `exp`, so
/// padded and prompt positions contribute neither loss nor gradient (and cannot overflow).
pub fn ppo_clip_loss(logp: &Tensor, old_logp: &Tensor, advantages: &Tensor, mask: &Tensor, clip_eps: f64) -> PolicyLoss {
    let mask = mask.to_kind(logp.kind());
    let ratio = ((logp - old_logp) * &mask).exp();
    let surr1 = &ratio * advantages;
    let surr2 = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * advantages;
    let per_token = -surr1.minimum(&surr2);
    let tokens = mask.sum(Kind::Double).double_value(&[]);
    let denom = tokens.max(1.0);
    // Fixed-split sums (`model::reduce`): bits independent of the intra-op thread count.
    let loss = crate::model::reduce::sum(&(per_token * &mask), logp.kind()) / denom;
    let clipped = ratio.detach().g_sub_scalar(1.0).abs().gt(clip_eps).to_kind(Kind::Double) * mask.to_kind(Kind::Double);
    let clip_fraction = clipped.sum(Kind::Double).double_value(&[]) / denom;
    PolicyLoss { loss, clip_fraction, tokens }
}

/// Next-token cross-entropy averaged over the target (masked) positions.
pub fn sft_loss(logp: &Tensor, mask: &Tensor) -> Tensor {
    let mask = mask.to_kind(logp.kind());
    let tokens = mask.sum(Kind::Double).double_value(&[]).max(1.0);
    -crate::model::reduce::sum(&(logp * &mask), logp.kind()) / tokens
}
