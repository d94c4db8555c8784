//! The RL buffer of one update, built from a rollout and its judgement: the turns of each
//! role that judge@i kept, with their tokens and rewards ([`kept_turns`]); their per-token
//! log-probs under a policy without gradients ([`response_logprobs`], for the old and the
//! reference log-probs); and the order in which the SFT term draws its demonstrations
//! ([`sft_indices`]). Called by the `update` stage (stages/update.rs) and
//! examples/sft_format.rs.
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;

use crate::game::Role;
use crate::model::{Policy, SequenceBatch, TokenId};
use crate::rl::{RlSample, SftExample};
use crate::schema::judged::JudgedRow;
use crate::schema::rollout::GameRow;
use crate::schema::sft_demos::SftDemoRow;

/// One trained turn before scoring: tokens and the role's reward.
pub struct Turn {
    pub role: Role,
    pub prompt: Vec<i64>,
    pub response: Vec<i64>,
    pub reward: f64,
    pub violation: Option<bool>,
    pub outcomes: Vec<String>,
}

/// The SFT demonstrations of optimizer step `step`: positions [step·b, (step+1)·b) of the
/// run-long sequence of epochs, each epoch a permutation of `0..n` seeded by `(loader_seed,
/// epoch)` (stages/update.rs module docs, "SFT term"). Returns indices into the demonstrations.
pub fn sft_indices(n: usize, b: usize, step: u64, loader_seed: &[u8; 32]) -> Vec<usize> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    if n == 0 {
        return Vec::new();
    }
    let perm = |epoch: u64| {
        let mut h = blake3::Hasher::new();
        h.update(b"self-redteam sft loader v1\0");
        h.update(loader_seed);
        h.update(&epoch.to_le_bytes());
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rand_chacha::ChaCha8Rng::from_seed(*h.finalize().as_bytes()));
        order
    };
    let start = step * b as u64;
    let mut out = Vec::with_capacity(b);
    let mut cached: Option<(u64, Vec<usize>)> = None;
    for pos in start..start + b as u64 {
        let epoch = pos / n as u64;
        if cached.as_ref().is_none_or(|(e, _)| *e != epoch) {
            cached = Some((epoch, perm(epoch)));
        }
        let order = &cached.as_ref().expect("filled above").1;
        out.push(order[(pos % n as u64) as usize]);
    }
    out
}

/// The RL samples of `turns` with their old and reference log-probs ([`response_logprobs`]).
pub fn rl_samples(turns: &[Turn], old: Vec<Vec<f32>>, refs: Vec<Vec<f32>>) -> Vec<RlSample> {
    turns
        .iter()
        .zip(old)
        .zip(refs)
        .map(|((t, o), r)| RlSample {
            role: t.role,
            token_ids: t.prompt.iter().chain(&t.response).copied().collect(),
            prompt_len: t.prompt.len(),
            old_logprobs: o,
            ref_logprobs: r,
            reward: t.reward,
            format_violation: t.violation,
            outcomes: t.outcomes.iter().filter_map(|s| crate::game::Outcome::parse(s)).collect(),
        })
        .collect()
}

/// The SFT term's examples from an `sft-data` artifact's rows: an empty prompt or target, or a
/// token id at or past `vocab`, is an error naming the row.
pub fn sft_examples(rows: &[SftDemoRow], vocab: u32) -> anyhow::Result<Vec<SftExample>> {
    let mut demos = Vec::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        if r.prompt_ids.is_empty() || r.target_ids.is_empty() {
            anyhow::bail!("sft demonstration {i} ({}) has an empty prompt or target", r.prompt_id);
        }
        if let Some(t) = r.prompt_ids.iter().chain(&r.target_ids).find(|&&t| t >= vocab) {
            anyhow::bail!("sft demonstration {i} ({}) holds token id {t}, outside the policy's vocabulary of {vocab}", r.prompt_id);
        }
        demos.push(SftExample { token_ids: to_i64(&r.prompt_ids).into_iter().chain(to_i64(&r.target_ids)).collect(), prompt_len: r.prompt_ids.len() });
    }
    Ok(demos)
}

/// The SFT term's demonstrations and the order it draws them in ([`sft_indices`]).
pub struct SftLoader {
    pub demos: Vec<SftExample>,
    /// Demonstrations per optimizer step.
    pub batch: usize,
    pub seed: [u8; 32],
}

impl SftLoader {
    /// The demonstrations of optimizer step `step`.
    pub fn draw(&self, step: u64) -> Vec<SftExample> {
        sft_indices(self.demos.len(), self.batch, step, &self.seed).into_iter().map(|i| self.demos[i].clone()).collect()
    }
}

/// The training forward of `policy` as the RL update calls it: next-token log-probs in f32.
/// Once `cancel` is set (Ctrl-C) it fails instead, so an update stops before its next
/// forward pass (the RL micro-batch or the SFT term) rather than at the end of the stage.
pub fn policy_forward<'a>(
    policy: &'a Policy,
    cancel: &'a AtomicBool,
) -> impl FnMut(&crate::rl::TokenBatch) -> Result<tch::Tensor, crate::rl::PolicyError> + 'a {
    move |b| {
        if cancel.load(Ordering::Relaxed) {
            return Err("interrupted".into());
        }
        Ok(crate::rl::next_token_logprobs(&policy.logits(&b.input_ids, &b.attention_mask).to_kind(tch::Kind::Float), &b.input_ids))
    }
}

/// The seed of the SFT loader ([`sft_indices`]): the run seed and the demonstrations' content
/// digest, so another set of demonstrations is drawn in another order.
pub fn sft_loader_seed(run_seed: u64, demos_digest: &str) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&run_seed.to_le_bytes());
    h.update(demos_digest.as_bytes());
    *h.finalize().as_bytes()
}

/// Per-response-token log-probs of `turns` under `policy` (no grad), in chunks of `batch`;
/// an error "interrupted" before the next chunk once `cancel` is set.
pub fn response_logprobs(policy: &Policy, turns: &[Turn], batch: usize, cancel: &AtomicBool) -> anyhow::Result<Vec<Vec<f32>>> {
    let _guard = tch::no_grad_guard();
    let mut out = Vec::with_capacity(turns.len());
    for chunk in turns.chunks(batch.max(1)) {
        if cancel.load(Ordering::Relaxed) {
            anyhow::bail!("interrupted");
        }
        let prompts: Vec<Vec<TokenId>> = chunk.iter().map(|t| t.prompt.iter().map(|&x| x as TokenId).collect()).collect();
        let responses: Vec<Vec<TokenId>> = chunk.iter().map(|t| t.response.iter().map(|&x| x as TokenId).collect()).collect();
        let b = SequenceBatch::new(&prompts, &responses, policy.tokenizer().pad_id(), policy.device())?;
        let lp = policy.token_logprobs(&b).logprobs.to_kind(tch::Kind::Float).to_device(tch::Device::Cpu);
        for (i, t) in chunk.iter().enumerate() {
            let (p, n) = (t.prompt.len() as i64, t.response.len() as i64);
            let row: Vec<f32> = Vec::<f32>::try_from(lp.get(i as i64).narrow(0, p - 1, n)).context("log-probs to host")?;
            out.push(row);
        }
    }
    Ok(out)
}

pub fn to_i64(ids: &[u32]) -> Vec<i64> {
    ids.iter().map(|&x| i64::from(x)).collect()
}

/// The kept samples of judge@i with their rollout tokens.
pub fn kept_turns(games: &[GameRow], judged: &[JudgedRow]) -> anyhow::Result<Vec<Turn>> {
    let by_id: std::collections::HashMap<&str, &GameRow> = games.iter().map(|g| (g.game_id.as_str(), g)).collect();
    let mut turns = Vec::new();
    for j in judged {
        let g = by_id.get(j.game_id.as_str()).with_context(|| format!("judge row {} has no game in the rollout", j.game_id))?;
        if j.attacker_kept {
            let reward = j.attacker_total.with_context(|| format!("game {}: kept attacker sample without a reward", j.game_id))?;
            turns.push(Turn {
                role: Role::Attacker,
                prompt: to_i64(&g.attacker_prompt_ids),
                response: to_i64(&g.attacker_response_ids),
                reward,
                violation: g.attacker_format_violation,
                outcomes: j.attacker_outcomes.clone(),
            });
        }
        if j.defender_kept {
            let reward = j.defender_total.with_context(|| format!("game {}: kept defender sample without a reward", j.game_id))?;
            turns.push(Turn {
                role: Role::Defender,
                prompt: to_i64(&g.defender_prompt_ids),
                response: to_i64(&g.defender_response_ids),
                reward,
                violation: g.defender_format_violation,
                outcomes: j.defender_outcomes.clone(),
            });
        }
    }
    turns.retain(|t| !t.response.is_empty() && !t.prompt.is_empty());
    Ok(turns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sft_loader_cycles_every_demo_once_per_epoch_and_depends_only_on_the_step() {
        let seed = [7u8; 32];
        // 5 demos, 2 per step: steps 0..5 cover positions 0..10 = two whole epochs.
        let drawn: Vec<usize> = (0..5).flat_map(|k| sft_indices(5, 2, k, &seed)).collect();
        for epoch in drawn.chunks(5) {
            let mut e = epoch.to_vec();
            e.sort_unstable();
            assert_eq!(e, [0, 1, 2, 3, 4], "each epoch is a permutation: {drawn:?}");
        }
        assert_ne!(drawn[..5], drawn[5..], "epochs are reshuffled");
        // Resume: step 3 alone gives what it gave inside the sequence.
        assert_eq!(sft_indices(5, 2, 3, &seed), drawn[6..8]);
        assert_ne!((0..5).flat_map(|k| sft_indices(5, 2, k, &[8u8; 32])).collect::<Vec<_>>(), drawn, "another seed, another order");
        assert!(sft_indices(0, 2, 3, &seed).is_empty());
    }

    /// Ctrl-C reaches an update between forward passes: both the log-prob pass and the
    /// training forward fail with "interrupted" once the flag is set, and work before it.
    #[test]
    fn the_update_forwards_stop_once_ctrl_c_is_set() {
        let policy = crate::model::tiny_random_llama(3);
        let turn = Turn { role: Role::Defender, prompt: vec![1, 5, 9], response: vec![4, 2], reward: 1.0, violation: None, outcomes: vec![] };
        let cancel = AtomicBool::new(false);
        let lp = response_logprobs(&policy, std::slice::from_ref(&turn), 4, &cancel).expect("log-probs");
        assert_eq!(lp[0].len(), 2);
        let batch = crate::rl::TokenBatch::new(&[(&[1, 5, 9, 4, 2][..], 3)], 0, policy.device());
        assert!(policy_forward(&policy, &cancel)(&batch).is_ok());
        cancel.store(true, Ordering::Relaxed);
        let err = response_logprobs(&policy, &[turn], 4, &cancel).expect_err("interrupted");
        assert_eq!(err.to_string(), "interrupted");
        let err = policy_forward(&policy, &cancel)(&batch).expect_err("interrupted");
        assert_eq!(err.to_string(), "interrupted");
    }
}
