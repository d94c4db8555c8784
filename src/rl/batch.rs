//! Buffer samples and micro-batches (method.md §3.3): the seeded shuffle that mixes both roles
//! into micro-batches, and the right-padded tensors a `NextTokenLogprobs` model sees. Called by
//! `update::run_update`; the update stage builds `RlSample`s from rollout + judge artifacts.
//!
//! Alignment used everywhere in `rl`: a sequence of length n gives n − 1 next-token positions;
//! position j holds log p(token[j+1] | token[..=j]). A response starting at `prompt_len` is
//! therefore predicted at positions `prompt_len − 1 ..= n − 2`; those are the loss-mask ones.
//! Right padding keeps each row's positions 0..n, so a model needs no position offsets.
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

use crate::game::{OutcomeSet, Role};

/// One trajectory (one role's turn) in the replay buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct RlSample {
    pub role: Role,
    /// Prompt (rendered chat template incl. any assistant prefix) followed by the response.
    pub token_ids: Vec<i64>,
    /// Response tokens are `token_ids[prompt_len..]`, hidden CoT included; `prompt_len ≥ 1`.
    pub prompt_len: usize,
    /// log π_old per response token: the policy that sampled, as scored by the training
    /// forward (OpenRLHF recomputes them with the actor rather than trusting the sampler).
    pub old_logprobs: Vec<f32>,
    /// log π_ref per response token (frozen initial model).
    pub ref_logprobs: Vec<f32>,
    /// Scalar game reward (`RoleReward::total`), clipped to ±reward_clip when used.
    pub reward: f64,
    /// Metrics only: CoT format violation of this turn (`None` without CoT).
    pub format_violation: Option<bool>,
    /// Metrics only: outcome tags.
    pub outcomes: OutcomeSet,
}

impl RlSample {
    /// A buffer sample from a scored turn: role, reward total, format flag and outcome tags
    /// come from the game's `RoleReward` (`violation` is `PublicTurn::violation`).
    pub fn from_role_reward(
        reward: &crate::game::RoleReward,
        token_ids: Vec<i64>,
        prompt_len: usize,
        old_logprobs: Vec<f32>,
        ref_logprobs: Vec<f32>,
        violation: Option<bool>,
    ) -> RlSample {
        RlSample {
            role: reward.role,
            token_ids,
            prompt_len,
            old_logprobs,
            ref_logprobs,
            reward: reward.total,
            format_violation: violation,
            outcomes: reward.outcomes.clone(),
        }
    }

    pub fn response_len(&self) -> usize {
        self.token_ids.len().saturating_sub(self.prompt_len)
    }
}

/// One SFT demonstration (§3.1 step 6): loss on `token_ids[prompt_len..]` only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SftExample {
    pub token_ids: Vec<i64>,
    pub prompt_len: usize,
}

/// A right-padded micro-batch, on the policy's device.
#[derive(Debug)]
pub struct TokenBatch {
    /// `[B, L]` int64, padded with the pad id.
    pub input_ids: Tensor,
    /// `[B, L]` int64: 1 on real tokens, 0 on padding.
    pub attention_mask: Tensor,
    /// `[B, L−1]` float: 1 where position j predicts a response (target) token.
    pub loss_mask: Tensor,
    /// Real length of each row.
    pub lengths: Vec<usize>,
    /// Prompt length of each row.
    pub prompt_lens: Vec<usize>,
}

impl TokenBatch {
    /// Build from `(token_ids, prompt_len)` rows. Every row needs `1 ≤ prompt_len < len`.
    pub fn new(rows: &[(&[i64], usize)], pad_id: i64, device: Device) -> TokenBatch {
        let b = rows.len();
        let max_len = rows.iter().map(|(t, _)| t.len()).max().unwrap_or(0).max(2);
        let mut ids = vec![pad_id; b * max_len];
        let mut attn = vec![0i64; b * max_len];
        let mut mask = vec![0f32; b * (max_len - 1)];
        for (i, (toks, p)) in rows.iter().enumerate() {
            assert!(*p >= 1 && *p < toks.len(), "row {i}: prompt_len {p} for length {}", toks.len());
            ids[i * max_len..i * max_len + toks.len()].copy_from_slice(toks);
            attn[i * max_len..i * max_len + toks.len()].iter_mut().for_each(|a| *a = 1);
            for j in (p - 1)..(toks.len() - 1) {
                mask[i * (max_len - 1) + j] = 1.0;
            }
        }
        let dims = [b as i64, max_len as i64];
        TokenBatch {
            input_ids: Tensor::from_slice(&ids).reshape(dims).to_device(device),
            attention_mask: Tensor::from_slice(&attn).reshape(dims).to_device(device),
            loss_mask: Tensor::from_slice(&mask).reshape([b as i64, max_len as i64 - 1]).to_device(device),
            lengths: rows.iter().map(|(t, _)| t.len()).collect(),
            prompt_lens: rows.iter().map(|(_, p)| *p).collect(),
        }
    }

    pub fn batch_size(&self) -> usize {
        self.lengths.len()
    }

    /// Scatter one value per response token of each row into a `[B, L−1]` float tensor aligned
    /// with `loss_mask` (zeros elsewhere).
    pub fn scatter_response_values(&self, per_row: &[&[f64]], kind: Kind) -> Tensor {
        let b = self.batch_size();
        let width = self.loss_mask.size()[1] as usize;
        let mut out = vec![0f64; b * width];
        for (i, vals) in per_row.iter().enumerate() {
            let (p, n) = (self.prompt_lens[i], self.lengths[i]);
            assert_eq!(vals.len(), n - p, "row {i}: one value per response token");
            out[i * width + p - 1..i * width + n - 1].copy_from_slice(vals);
        }
        Tensor::from_slice(&out).reshape([b as i64, width as i64]).to_kind(kind).to_device(self.loss_mask.device())
    }
}

/// Seeded shuffle of `0..n` split into chunks of `size` (the last may be shorter, like
/// `drop_last=False`). Shuffling the whole buffer mixes attacker and defender samples in
/// every micro-batch, as OpenRLHF's shuffled DataLoader does (§3.3).
pub fn micro_batch_indices(n: usize, size: usize, seed: u64) -> Vec<Vec<usize>> {
    assert!(size > 0, "micro-batch size must be positive");
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    idx.chunks(size).map(<[usize]>::to_vec).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_batches_are_a_seeded_partition() {
        let a = micro_batch_indices(10, 4, 7);
        assert_eq!(a, micro_batch_indices(10, 4, 7));
        assert_ne!(a, micro_batch_indices(10, 4, 8));
        assert_eq!(a.iter().map(Vec::len).collect::<Vec<_>>(), vec![4, 4, 2]);
        let mut all: Vec<usize> = a.concat();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn token_batch_pads_right_and_masks_response_positions() {
        let b = TokenBatch::new(&[(&[5, 6, 7, 8], 2), (&[9, 4], 1)], 0, Device::Cpu);
        assert_eq!(Vec::<i64>::try_from(b.input_ids.flatten(0, -1)).expect("ids"), vec![5, 6, 7, 8, 9, 4, 0, 0]);
        assert_eq!(Vec::<i64>::try_from(b.attention_mask.flatten(0, -1)).expect("attn"), vec![1, 1, 1, 1, 1, 1, 0, 0]);
        assert_eq!(Vec::<f32>::try_from(b.loss_mask.flatten(0, -1)).expect("mask"), vec![0., 1., 1., 1., 0., 0.]);
        let v = b.scatter_response_values(&[&[1.0, 2.0], &[3.0]], Kind::Float);
        assert_eq!(Vec::<f32>::try_from(v.flatten(0, -1)).expect("vals"), vec![0., 1., 2., 3., 0., 0.]);
    }
}
