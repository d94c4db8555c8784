//! KL, token rewards, returns and per-role advantage normalisation (method.md §3.1 steps 1–4).
//! Reference: OpenRLHF `models/utils.compute_approx_kl` (k1), `compute_reward`,
//! `experience_maker.get_cumulative_returns` and the fork's `replay_buffer.normalize(role=…)`.
//! Called by `update::run_update`; public so the update stage can log the same numbers.
//!
//! Normalisation, exactly as the code (not as the prose of method.md): over all response
//! tokens of one role in the buffer, mean = sum/count, var = mean((x − mean)²) — the
//! *population* variance, as `masked_mean`-style sums divided by the token count, not
//! torch's unbiased `std()` — and the scale is `clamp(var, min = 1e-8).rsqrt()`. So it is the
//! variance that is clamped at 1e-8 (the std at 1e-4), which only matters for a constant role.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::batch::RlSample;
use crate::game::Role;

/// Per-token k1 KL estimate `log π_old(a_t) − log π_ref(a_t)` over the response tokens.
pub fn kl_k1(old_logprobs: &[f32], ref_logprobs: &[f32]) -> Vec<f64> {
    old_logprobs.iter().zip(ref_logprobs).map(|(&o, &r)| f64::from(o) - f64::from(r)).collect()
}

/// `r_t = −β·kl_t` on every response token, plus the game reward clipped to
/// `[−reward_clip, reward_clip]` on the last one. A negative β counts as 0, as in OpenRLHF.
/// `kl` must be non-empty (every response has at least one token: `min_tokens = 1`).
pub fn token_rewards(kl: &[f64], game_reward: f64, kl_coef: f64, reward_clip: f64) -> Vec<f64> {
    let beta = kl_coef.max(0.0);
    let mut r: Vec<f64> = kl.iter().map(|k| -beta * k).collect();
    if let Some(last) = r.last_mut() {
        *last += game_reward.clamp(-reward_clip, reward_clip);
    }
    r
}

/// `G_t = Σ_{k≥t} γ^{k−t} r_k`.
pub fn returns_to_go(rewards: &[f64], gamma: f64) -> Vec<f64> {
    let mut out = vec![0.0; rewards.len()];
    let mut acc = 0.0;
    for t in (0..rewards.len()).rev() {
        acc = rewards[t] + gamma * acc;
        out[t] = acc;
    }
    out
}

/// The statistics one role's advantages were normalised with.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RoleNormStats {
    pub tokens: usize,
    pub mean: f64,
    /// Population variance of the role's returns (before the 1e-8 clamp).
    pub var: f64,
}

/// Normalise `values[i]` in place, separately for each role, over all tokens of that role.
/// Roles with no samples are absent from the result (attacker-only / defender-only runs).
pub fn normalise_per_role(values: &mut [Vec<f64>], roles: &[Role]) -> BTreeMap<Role, RoleNormStats> {
    assert_eq!(values.len(), roles.len(), "one role per sample");
    let mut stats = BTreeMap::new();
    for role in Role::ALL {
        let idx: Vec<usize> = (0..roles.len()).filter(|&i| roles[i] == role).collect();
        let count: usize = idx.iter().map(|&i| values[i].len()).sum();
        if count == 0 {
            continue;
        }
        let n = count as f64;
        let mean = idx.iter().flat_map(|&i| values[i].iter()).sum::<f64>() / n;
        let var = idx.iter().flat_map(|&i| values[i].iter()).map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        let rstd = 1.0 / var.max(1e-8).sqrt();
        for &i in &idx {
            for x in values[i].iter_mut() {
                *x = (*x - mean) * rstd;
            }
        }
        stats.insert(role, RoleNormStats { tokens: count, mean, var });
    }
    stats
}

/// One buffer sample after step 1–4: what the loss needs, plus what metrics report.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedSample {
    pub kl: Vec<f64>,
    pub returns: Vec<f64>,
    pub advantages: Vec<f64>,
}

/// Steps 1–4 of §3.1 for the whole buffer.
pub fn prepare_advantages(buffer: &[RlSample], kl_coef: f64, reward_clip: f64, gamma: f64) -> (Vec<PreparedSample>, BTreeMap<Role, RoleNormStats>) {
    let mut kls = Vec::with_capacity(buffer.len());
    let mut rets = Vec::with_capacity(buffer.len());
    for s in buffer {
        let kl = kl_k1(&s.old_logprobs, &s.ref_logprobs);
        let r = token_rewards(&kl, s.reward, kl_coef, reward_clip);
        rets.push(returns_to_go(&r, gamma));
        kls.push(kl);
    }
    let mut advs = rets.clone();
    let roles: Vec<Role> = buffer.iter().map(|s| s.role).collect();
    let stats = normalise_per_role(&mut advs, &roles);
    let prepared = kls.into_iter().zip(rets).zip(advs).map(|((kl, returns), advantages)| PreparedSample { kl, returns, advantages }).collect();
    (prepared, stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_accumulate_from_the_end() {
        assert_eq!(returns_to_go(&[1.0, 2.0, 3.0], 1.0), vec![6.0, 5.0, 3.0]);
        assert_eq!(returns_to_go(&[1.0, 2.0, 4.0], 0.5), vec![1.0 + 0.5 * (2.0 + 0.5 * 4.0), 4.0, 4.0]);
    }

    #[test]
    fn game_reward_is_clipped_and_added_to_the_last_token_only() {
        let r = token_rewards(&[1.0, -2.0], 25.0, 0.1, 10.0);
        assert_eq!(r, vec![-0.1, 0.2 + 10.0]);
        assert_eq!(token_rewards(&[1.0], -3.0, -5.0, 10.0), vec![-3.0]);
    }

    #[test]
    fn constant_role_normalises_to_zero_without_dividing_by_zero() {
        let mut v = vec![vec![2.0, 2.0], vec![5.0]];
        let st = normalise_per_role(&mut v, &[Role::Defender, Role::Attacker]);
        assert_eq!(v, vec![vec![0.0, 0.0], vec![0.0]]);
        assert_eq!(st[&Role::Defender].var, 0.0);
        assert_eq!(st[&Role::Attacker].tokens, 1);
    }
}
