//! Training metrics of one update (method.md §3.4, §9 parity curves): loss, SFT loss, KL, clip
//! fraction, grad norm, LR per optimizer step, and per role the reward mean/std, the
//! format-violation rate and the outcome counts. Filled by `update::run_update`; the update
//! stage writes it into its artifact.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::advantage::{PreparedSample, RoleNormStats};
use super::batch::RlSample;
use crate::game::Role;

/// One optimizer step (one micro-batch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Optimizer steps taken before this one (the schedule index).
    pub step: u64,
    pub lr: f64,
    pub policy_loss: f64,
    pub sft_loss: Option<f64>,
    pub clip_fraction: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub attacker_samples: usize,
    pub defender_samples: usize,
    pub response_tokens: f64,
}

/// Per-role statistics over the buffer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoleMetrics {
    pub samples: usize,
    pub response_tokens: usize,
    pub reward_mean: f64,
    /// Population standard deviation of the scalar game rewards.
    pub reward_std: f64,
    /// Share of samples with a CoT format violation (`None` when no sample has a CoT flag).
    pub format_violation_rate: Option<f64>,
    /// Token-weighted mean of the k1 KL.
    pub kl_mean: f64,
    /// The mean and variance the role's returns were normalised with.
    pub return_mean: f64,
    pub return_var: f64,
    /// Outcome tag → number of samples carrying it.
    pub outcome_counts: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateMetrics {
    pub optimizer_steps: usize,
    pub steps: Vec<StepMetrics>,
    pub policy_loss_mean: f64,
    pub sft_loss_mean: Option<f64>,
    /// Token-weighted over all steps.
    pub clip_fraction: f64,
    pub grad_norm_mean: f64,
    pub grad_norm_max: f64,
    pub lr_first: Option<f64>,
    pub lr_last: Option<f64>,
    /// Token-weighted k1 KL over the whole buffer.
    pub kl_mean: f64,
    pub roles: BTreeMap<Role, RoleMetrics>,
}

impl From<&StepMetrics> for crate::schema::update_steps::UpdateStepRow {
    fn from(s: &StepMetrics) -> Self {
        Self {
            step: s.step,
            lr: s.lr,
            policy_loss: s.policy_loss,
            sft_loss: s.sft_loss,
            clip_fraction: s.clip_fraction,
            grad_norm: s.grad_norm,
            attacker_samples: s.attacker_samples as u32,
            defender_samples: s.defender_samples as u32,
            response_tokens: s.response_tokens,
        }
    }
}

fn mean_std(xs: &[f64]) -> (f64, f64) {
    if xs.is_empty() {
        return (0.0, 0.0);
    }
    let n = xs.len() as f64;
    let m = xs.iter().sum::<f64>() / n;
    (m, (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n).sqrt())
}

impl UpdateMetrics {
    /// The update stage's manifest metrics (name, value), shown by `log` per iteration.
    pub fn manifest_metrics(&self) -> Vec<(String, serde_json::Value)> {
        use serde_json::json;
        let mut out = vec![
            ("optimizer_steps".to_string(), json!(self.optimizer_steps)),
            ("policy_loss".into(), json!(self.policy_loss_mean)),
            ("sft_loss".into(), json!(self.sft_loss_mean)),
            ("clip_fraction".into(), json!(self.clip_fraction)),
            ("grad_norm_mean".into(), json!(self.grad_norm_mean)),
            ("grad_norm_max".into(), json!(self.grad_norm_max)),
            ("lr_first".into(), json!(self.lr_first)),
            ("lr_last".into(), json!(self.lr_last)),
            ("kl".into(), json!(self.kl_mean)),
        ];
        for (role, r) in &self.roles {
            out.push((format!("{}_reward_mean", role.as_str()), json!(r.reward_mean)));
            out.push((format!("{}_kl", role.as_str()), json!(r.kl_mean)));
            out.push((format!("{}_format_violation_rate", role.as_str()), json!(r.format_violation_rate)));
        }
        out
    }

    /// Buffer-level numbers; steps are pushed as they run.
    pub fn from_buffer(buffer: &[RlSample], prepared: &[PreparedSample], norm: &BTreeMap<Role, RoleNormStats>) -> Self {
        let mut roles = BTreeMap::new();
        for role in Role::ALL {
            let idx: Vec<usize> = (0..buffer.len()).filter(|&i| buffer[i].role == role).collect();
            if idx.is_empty() {
                continue;
            }
            let rewards: Vec<f64> = idx.iter().map(|&i| buffer[i].reward).collect();
            let (reward_mean, reward_std) = mean_std(&rewards);
            let flagged: Vec<bool> = idx.iter().filter_map(|&i| buffer[i].format_violation).collect();
            let format_violation_rate = (!flagged.is_empty()).then(|| flagged.iter().filter(|v| **v).count() as f64 / flagged.len() as f64);
            let tokens: usize = idx.iter().map(|&i| prepared[i].kl.len()).sum();
            let kl_sum: f64 = idx.iter().flat_map(|&i| prepared[i].kl.iter()).sum();
            let mut outcome_counts = BTreeMap::new();
            for &i in &idx {
                for o in &buffer[i].outcomes {
                    *outcome_counts.entry(o.as_str().to_owned()).or_insert(0) += 1;
                }
            }
            let st = norm.get(&role);
            roles.insert(
                role,
                RoleMetrics {
                    samples: idx.len(),
                    response_tokens: tokens,
                    reward_mean,
                    reward_std,
                    format_violation_rate,
                    kl_mean: if tokens > 0 { kl_sum / tokens as f64 } else { 0.0 },
                    return_mean: st.map_or(0.0, |s| s.mean),
                    return_var: st.map_or(0.0, |s| s.var),
                    outcome_counts,
                },
            );
        }
        let tokens: usize = prepared.iter().map(|p| p.kl.len()).sum();
        let kl_sum: f64 = prepared.iter().flat_map(|p| p.kl.iter()).sum();
        UpdateMetrics {
            optimizer_steps: 0,
            steps: Vec::new(),
            policy_loss_mean: 0.0,
            sft_loss_mean: None,
            clip_fraction: 0.0,
            grad_norm_mean: 0.0,
            grad_norm_max: 0.0,
            lr_first: None,
            lr_last: None,
            kl_mean: if tokens > 0 { kl_sum / tokens as f64 } else { 0.0 },
            roles,
        }
    }

    /// Record one optimizer step and refresh the step aggregates.
    pub fn push_step(&mut self, step: StepMetrics) {
        self.steps.push(step);
        let n = self.steps.len() as f64;
        self.optimizer_steps = self.steps.len();
        self.policy_loss_mean = self.steps.iter().map(|s| s.policy_loss).sum::<f64>() / n;
        let sft: Vec<f64> = self.steps.iter().filter_map(|s| s.sft_loss).collect();
        self.sft_loss_mean = (!sft.is_empty()).then(|| sft.iter().sum::<f64>() / sft.len() as f64);
        let tok: f64 = self.steps.iter().map(|s| s.response_tokens).sum();
        self.clip_fraction = if tok > 0.0 { self.steps.iter().map(|s| s.clip_fraction * s.response_tokens).sum::<f64>() / tok } else { 0.0 };
        self.grad_norm_mean = self.steps.iter().map(|s| s.grad_norm).sum::<f64>() / n;
        self.grad_norm_max = self.steps.iter().map(|s| s.grad_norm).fold(0.0, f64::max);
        self.lr_first = self.steps.first().map(|s| s.lr);
        self.lr_last = self.steps.last().map(|s| s.lr);
    }
}
