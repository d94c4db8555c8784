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
