//! The one integration-test binary: every behaviour test of the crate links here.
mod binaries;
mod contracts;
mod engine;
mod eval;
mod eval_stage;
mod fuzz;
mod game_rl;
mod judge;
mod judge_stage;
mod model;
mod remote;
mod selfplay;
mod serve;
mod slurm;
mod store_crash;
mod util;
mod vllm_live;
