//! Learning-rate schedule (method.md §3.2): OpenRLHF's `cosine_with_min_lr`, i.e. transformers'
//! `get_cosine_with_min_lr_schedule_with_warmup` (num_cycles 0.5): linear warm-up from 0, then a
//! half cosine from the base LR down to `min_lr_ratio × base`. Called by `update::run_update`.
//!
//! Indexing as a `LambdaLR` sees it: the optimizer step taken when `k` steps have already been
//! taken uses `lr_at(k)`, so the very first step of a run with warm-up has LR 0. Past
//! `total_steps` the formula is not clamped (the cosine rises again), exactly as transformers.
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CosineWithMinLr {
    pub base_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    /// `min_lr / base_lr` (0.1 in the paper's run).
    pub min_lr_ratio: f64,
}

impl CosineWithMinLr {
    /// OpenRLHF's construction: `warmup = ceil(total × warmup_ratio)`.
    pub fn from_warmup_ratio(base_lr: f64, total_steps: u64, warmup_ratio: f64, min_lr_ratio: f64) -> Self {
        let warmup_steps = (total_steps as f64 * warmup_ratio).ceil() as u64;
        CosineWithMinLr { base_lr, warmup_steps, total_steps, min_lr_ratio }
    }

    /// The multiplier of the base LR after `step` optimizer steps.
    pub fn factor(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return step as f64 / self.warmup_steps.max(1) as f64;
        }
        let progress = (step - self.warmup_steps) as f64 / self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * 0.5 * 2.0 * progress).cos());
        (cosine * (1.0 - self.min_lr_ratio) + self.min_lr_ratio).max(0.0)
    }

    pub fn lr_at(&self, step: u64) -> f64 {
        self.base_lr * self.factor(step)
    }
}

/// Optimizer steps of the whole schedule: `update.schedule_steps`, or, when unset,
/// `iterations × ceil(expected samples per iteration / micro_batch_size)` where the expected
/// samples are the seeds that give a trained sample before tie removal (selfplay: every
/// defender turn plus the revised seeds' attacker turns; attacker_only: the revised seeds;
/// defender_only: every seed). Tie removal makes real buffers smaller, so the schedule is never
/// cut short.
pub fn schedule_steps(spec: &crate::spec::Spec, schedule_iterations: u32) -> u64 {
    if let Some(s) = spec.raw.update.schedule_steps {
        return u64::from(s);
    }
    let seeds = f64::from(spec.raw.prep.seeds_per_iteration);
    let revised = seeds * spec.raw.prep.revise_fraction;
    let samples = match spec.raw.rollout.mode {
        crate::game::GameMode::SelfPlay => seeds + revised,
        crate::game::GameMode::AttackerOnly => revised,
        crate::game::GameMode::DefenderOnly => seeds,
    };
    let per_iteration = (samples.round() as u64).div_ceil(u64::from(spec.raw.update.micro_batch_size)).max(1);
    u64::from(schedule_iterations) * per_iteration
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Spec;
    use std::path::Path;

    fn spec(text: &str) -> Spec {
        Spec::from_yaml(text, Path::new("/p/pipeline.yaml")).expect("valid")
    }

    #[test]
    fn schedule_length_is_derived_from_expected_samples_or_taken_as_configured() {
        // selfplay: 8 defender + 4 attacker samples = 12 → 3 steps of 4, times 10 iterations.
        let s = spec("prep: {seeds_per_iteration: 8}\nupdate: {micro_batch_size: 4}\n");
        assert_eq!(schedule_steps(&s, 10), 30);
        let s = spec("prep: {seeds_per_iteration: 8}\nrollout: {mode: attacker_only}\nupdate: {micro_batch_size: 4}\n");
        assert_eq!(schedule_steps(&s, 10), 10);
        let s = spec("prep: {seeds_per_iteration: 8}\nrollout: {mode: defender_only}\nupdate: {micro_batch_size: 3}\n");
        assert_eq!(schedule_steps(&s, 2), 6);
        let s = spec("update: {schedule_steps: 77}\n");
        assert_eq!(schedule_steps(&s, 2), 77);
    }
}
