//! REINFORCE++ as in method.md §3 (OpenRLHF `--advantage_estimator reinforce`, as forked by
//! selfplay-redteaming): k1 KL in the token rewards, return-to-go, per-role advantage
//! normalisation, PPO-clip token-mean loss, the SFT term of §3.1 step 6, Adam with exportable
//! state, global grad-norm clipping and the cosine-with-min-LR schedule. Called by the update
//! stage; it works on plain tch tensors through the `NextTokenLogprobs` trait, so any model that returns
//! next-token log-probs with gradients can be trained.
//!
//! Only `schedule` (the LR schedule's length, which enters the update's key) is in the
//! libtorch-free core crate; the rest is `compute`.
//!
//! Data flow of one update (`update::run_update`):
//!   buffer of `RlSample` (role, tokens, old/ref log-probs, game reward)
//!   --advantage--> KL, token rewards, returns, per-role normalised advantages
//!   --batch--> seeded shuffle into micro-batches mixing both roles, right-padded tensors
//!   --loss--> PPO-clip (+ SFT) --adam--> clip grad norm, LR from schedule, Adam step
//!   --metrics--> `UpdateMetrics`
#[cfg(feature = "compute")]
pub mod adam;
#[cfg(feature = "compute")]
pub mod advantage;
#[cfg(feature = "compute")]
pub mod batch;
#[cfg(feature = "compute")]
pub mod buffer;
#[cfg(feature = "compute")]
pub mod loss;
#[cfg(feature = "compute")]
pub mod metrics;
pub mod schedule;
#[cfg(feature = "compute")]
pub mod update;

pub use schedule::CosineWithMinLr;
#[cfg(feature = "compute")]
pub use {
    adam::{clip_grad_norm, Adam, AdamConfig, AdamStateError},
    advantage::{kl_k1, normalise_per_role, prepare_advantages, returns_to_go, token_rewards, PreparedSample, RoleNormStats},
    batch::{micro_batch_indices, RlSample, SftExample, TokenBatch},
    loss::{next_token_logprobs, ppo_clip_loss, sft_loss, PolicyLoss},
    metrics::{RoleMetrics, StepMetrics, UpdateMetrics},
    update::{run_update, sft_backward, NextTokenLogprobs, PolicyError, RlError, UpdateConfig},
};
