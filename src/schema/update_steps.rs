//! `steps.parquet` of an `update@i` artifact: one row per optimizer step of the REINFORCE++
//! update (`rl::StepMetrics`). Written by stages/update.rs; read by `log`/report and users.
crate::parquet_schema! {
    /// One optimizer step (one micro-batch).
    pub struct UpdateStepRow in UpdateStepsSchema ("steps", 1) {
        /// Optimizer steps taken before this one over the whole run (the LR schedule index).
        pub step: u64,
        pub lr: f64,
        pub policy_loss: f64,
        pub sft_loss: Option<f64>,
        pub clip_fraction: f64,
        /// Global gradient norm before clipping.
        pub grad_norm: f64,
        pub attacker_samples: u32,
        pub defender_samples: u32,
        pub response_tokens: f64,
    }
}
