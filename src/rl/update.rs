//! One full REINFORCE++ update over a rollout buffer (method.md §3.1, §3.3; OpenRLHF
//! `ppo_actor.fit`/`training_step` as forked by selfplay-redteaming): advantages, seeded
//! micro-batches mixing both roles, PPO-clip loss plus the SFT term accumulated into the same
//! step, global grad-norm clip, LR from the schedule, Adam. Called by the update stage with the
//! real model behind `NextTokenLogprobs`; the tests plug in a toy model.
use tch::{Device, Tensor};

use super::adam::{clip_grad_norm, Adam};
use super::advantage::prepare_advantages;
use super::batch::{micro_batch_indices, RlSample, SftExample, TokenBatch};
use super::loss::{ppo_clip_loss, sft_loss};
use super::metrics::{StepMetrics, UpdateMetrics};
use super::schedule::CosineWithMinLr;
use crate::game::Role;

pub type PolicyError = Box<dyn std::error::Error + Send + Sync>;

/// Anything that scores a micro-batch: returns `[B, L−1]` next-token log-probs (position j =
/// log p(input_ids[b, j+1] | input_ids[b, ..=j])) that carry gradients to the trained
/// parameters. Closures of that shape implement it.
pub trait NextTokenLogprobs {
    fn next_token_logprobs(&mut self, batch: &TokenBatch) -> Result<Tensor, PolicyError>;
}

impl<F> NextTokenLogprobs for F
where
    F: FnMut(&TokenBatch) -> Result<Tensor, PolicyError>,
{
    fn next_token_logprobs(&mut self, batch: &TokenBatch) -> Result<Tensor, PolicyError> {
        self(batch)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RlError {
    #[error("buffer sample {index} ({role:?}): {reason}")]
    BadSample { index: usize, role: Role, reason: String },
    #[error("SFT example {index} of step {step}: {reason}")]
    BadSftExample { step: u64, index: usize, reason: String },
    #[error("policy forward failed at optimizer step {step}")]
    Policy {
        step: u64,
        #[source]
        source: PolicyError,
    },
    #[error("policy returned log-probs of shape {found:?} at step {step}, expected {expected:?}")]
    LogprobShape { step: u64, expected: Vec<i64>, found: Vec<i64> },
    #[error("non-finite {what} ({value}) at optimizer step {step}")]
    NonFinite { step: u64, what: &'static str, value: f64 },
}

/// Hyper-parameters of one update. `UpdateConfig::paper` gives method.md §3.2's values.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UpdateConfig {
    /// β of the k1 KL penalty in the reward (0.01).
    pub kl_coef: f64,
    /// Game rewards are clipped to ±this (10).
    pub reward_clip: f64,
    /// Return discount (1).
    pub gamma: f64,
    /// PPO clip ε (0.2).
    pub clip_eps: f64,
    /// Samples per micro-batch = per optimizer step (8 per GPU × 4 GPUs = 32 globally in the
    /// paper; one process here, so the global number).
    pub micro_batch_size: usize,
    /// Coefficient of the SFT loss (`postfill_cot_loss_coef`, 1.0; 0 disables it).
    pub sft_coef: f64,
    /// Global grad-norm clip (1.0).
    pub max_grad_norm: f64,
    /// Token id used to pad micro-batches on the right.
    pub pad_id: i64,
    /// Seed of the micro-batch shuffle (derive it from run seed and node key).
    pub shuffle_seed: u64,
}

impl UpdateConfig {
    /// From an `update` section; `pad_id` of the policy's tokenizer, `shuffle_seed` from the node.
    pub fn of(u: &crate::spec::UpdateParams, pad_id: i64, shuffle_seed: u64) -> UpdateConfig {
        UpdateConfig {
            kl_coef: u.kl_beta,
            reward_clip: u.reward_clip,
            gamma: 1.0,
            clip_eps: u.clip_eps,
            micro_batch_size: u.micro_batch_size as usize,
            sft_coef: u.sft_coef,
            max_grad_norm: u.grad_clip,
            pad_id,
            shuffle_seed,
        }
    }

    pub fn paper(micro_batch_size: usize, pad_id: i64, shuffle_seed: u64) -> UpdateConfig {
        UpdateConfig { kl_coef: 0.01, reward_clip: 10.0, gamma: 1.0, clip_eps: 0.2, micro_batch_size, sft_coef: 1.0, max_grad_norm: 1.0, pad_id, shuffle_seed }
    }
}

fn check_sample(index: usize, s: &RlSample) -> Result<(), RlError> {
    let bad = |reason: String| Err(RlError::BadSample { index, role: s.role, reason });
    if s.prompt_len == 0 {
        return bad("prompt_len is 0; the first response token needs a context token".into());
    }
    let n = s.response_len();
    if n == 0 {
        return bad(format!("no response tokens (prompt_len {} of {})", s.prompt_len, s.token_ids.len()));
    }
    if s.old_logprobs.len() != n || s.ref_logprobs.len() != n {
        return bad(format!("{} response tokens but {} old and {} ref log-probs", n, s.old_logprobs.len(), s.ref_logprobs.len()));
    }
    if !s.reward.is_finite() {
        return bad(format!("reward {} is not finite", s.reward));
    }
    Ok(())
}

fn zero_grads(params: &[(String, Tensor)]) {
    for (_, p) in params {
        p.shallow_clone().zero_grad();
    }
}

fn policy_logprobs(policy: &mut dyn NextTokenLogprobs, batch: &TokenBatch, step: u64) -> Result<Tensor, RlError> {
    let logp = policy.next_token_logprobs(batch).map_err(|source| RlError::Policy { step, source })?;
    let expected = batch.loss_mask.size();
    if logp.size() != expected {
        return Err(RlError::LogprobShape { step, expected, found: logp.size() });
    }
    Ok(logp)
}

/// The SFT term of one optimizer step (§3.1 step 6): the next-token loss on `examples`, times
/// `coef`, backpropagated into the gradients already accumulated. Returns the loss (before
/// `coef`), or `None` when there are no examples. Used by [`run_update`] and by
/// examples/sft_format.rs (the SFT term alone).
pub fn sft_backward(
    policy: &mut dyn NextTokenLogprobs,
    examples: &[SftExample],
    coef: f64,
    pad_id: i64,
    device: Device,
    step: u64,
) -> Result<Option<f64>, RlError> {
    for (index, e) in examples.iter().enumerate() {
        if e.prompt_len == 0 || e.prompt_len >= e.token_ids.len() {
            return Err(RlError::BadSftExample { step, index, reason: format!("prompt_len {} of {} tokens", e.prompt_len, e.token_ids.len()) });
        }
    }
    if examples.is_empty() {
        return Ok(None);
    }
    let rows: Vec<(&[i64], usize)> = examples.iter().map(|e| (&e.token_ids[..], e.prompt_len)).collect();
    let sb = TokenBatch::new(&rows, pad_id, device);
    let slogp = policy_logprobs(policy, &sb, step)?;
    let l = sft_loss(&slogp, &sb.loss_mask);
    let v = l.double_value(&[]);
    if !v.is_finite() {
        return Err(RlError::NonFinite { step, what: "SFT loss", value: v });
    }
    (l * coef).backward();
    Ok(Some(v))
}

/// Run one update over `buffer` (§3.1 steps 1–6): every sample once (one PPO epoch), one
/// optimizer step per micro-batch. `params` are the trained parameters by name (the same
/// names the optimiser state uses). `sft`, called with the optimizer-step index, supplies the
/// SFT demonstrations added to that step; it is ignored when `config.sft_coef == 0`.
#[allow(clippy::too_many_arguments)]
pub fn run_update(
    policy: &mut dyn NextTokenLogprobs,
    params: &[(String, Tensor)],
    adam: &mut Adam,
    schedule: &CosineWithMinLr,
    buffer: &[RlSample],
    mut sft: Option<&mut dyn FnMut(u64) -> Vec<SftExample>>,
    config: &UpdateConfig,
    device: Device,
) -> Result<UpdateMetrics, RlError> {
    for (i, s) in buffer.iter().enumerate() {
        check_sample(i, s)?;
    }
    let (prepared, norm) = prepare_advantages(buffer, config.kl_coef, config.reward_clip, config.gamma);
    let mut metrics = UpdateMetrics::from_buffer(buffer, &prepared, &norm);

    for idx in micro_batch_indices(buffer.len(), config.micro_batch_size, config.shuffle_seed) {
        let step = adam.steps_taken();
        zero_grads(params);

        let rows: Vec<(&[i64], usize)> = idx.iter().map(|&i| (&buffer[i].token_ids[..], buffer[i].prompt_len)).collect();
        let batch = TokenBatch::new(&rows, config.pad_id, device);
        let logp = policy_logprobs(policy, &batch, step)?;
        let old: Vec<Vec<f64>> = idx.iter().map(|&i| buffer[i].old_logprobs.iter().map(|&x| f64::from(x)).collect()).collect();
        let old_refs: Vec<&[f64]> = old.iter().map(Vec::as_slice).collect();
        let adv_refs: Vec<&[f64]> = idx.iter().map(|&i| prepared[i].advantages.as_slice()).collect();
        let old_t = batch.scatter_response_values(&old_refs, logp.kind());
        let adv_t = batch.scatter_response_values(&adv_refs, logp.kind());
        let pl = ppo_clip_loss(&logp, &old_t, &adv_t, &batch.loss_mask, config.clip_eps);
        let policy_loss = pl.loss.double_value(&[]);
        if !policy_loss.is_finite() {
            return Err(RlError::NonFinite { step, what: "policy loss", value: policy_loss });
        }
        pl.loss.backward();
        drop((logp, pl.loss));

        let mut sft_value = None;
        if config.sft_coef > 0.0 {
            if let Some(source) = sft.as_mut() {
                sft_value = sft_backward(policy, &source(step), config.sft_coef, config.pad_id, device, step)?;
            }
        }

        let grad_norm = clip_grad_norm(params, config.max_grad_norm);
        if !grad_norm.is_finite() {
            return Err(RlError::NonFinite { step, what: "gradient norm", value: grad_norm });
        }
        let lr = schedule.lr_at(step);
        adam.step(params, lr);

        let attackers = idx.iter().filter(|&&i| buffer[i].role == Role::Attacker).count();
        metrics.push_step(StepMetrics {
            step,
            lr,
            policy_loss,
            sft_loss: sft_value,
            clip_fraction: pl.clip_fraction,
            grad_norm,
            attacker_samples: attackers,
            defender_samples: idx.len() - attackers,
            response_tokens: pl.tokens,
        });
    }
    Ok(metrics)
}
