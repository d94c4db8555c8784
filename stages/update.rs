//! The `update` stage: update@i = policy i−1, optimiser state i−1, base (reference),
//! rollout@i, judge@i → policy i (HF-dir files), `optimizer.safetensors` (Adam state incl. the
//! step count) and `steps.parquet` (per-step metrics); aggregate `rl::UpdateMetrics` go to the
//! manifest. One REINFORCE++ update (method.md §3) over the kept samples of judge@i.
//!
//! - Old log-probs: a no-grad training forward of policy i−1 (as OpenRLHF recomputes them with
//!   the actor instead of trusting the sampler). Ref log-probs: the frozen base.
//! - LR schedule: cosine with min LR over [`schedule_steps`] optimizer steps (the configured
//!   `update.schedule_steps`, or derived from the expected samples per iteration); the step
//!   index is Adam's run-wide step count.
//! - SFT term (`update.sft_coef > 0`, method.md §3.1 step 6): every optimizer step adds the
//!   next-token loss on `sft_batch_size` post-filled demonstrations of the `sft-data` artifact
//!   (stages/sft_data.rs), times `sft_coef`, to the RL gradient before the step. The
//!   demonstrations come from a cycling loader over the run: epoch e is a permutation seeded by
//!   (run seed, the demonstrations' content digest, e), and optimizer step k (Adam's run-wide
//!   step count) takes positions [k·b, (k+1)·b) of the concatenated epochs, so a resumed run
//!   draws exactly what an uninterrupted one does. The loss covers the whole target, the
//!   thinking prefix and the end-of-turn token included.
//! - Resume: Adam moments and step count come from update@(i−1)'s artifact, policy weights are
//!   saved exactly, so a resumed run continues exactly as an uninterrupted one.
//! - Samples with an empty response (the sampler stopped at once) have no token to train and
//!   are left out.
use crate::rl::schedule::schedule_steps;
use crate::spec::Spec;
// What `run` uses (compute only: the core crate builds params and keys, never runs a stage).
#[cfg(feature = "compute")]
use {
    super::base::{load_policy_input, write_policy},
    super::StageContext,
    crate::game::Role,
    crate::rl::buffer::{kept_turns, policy_forward, response_logprobs, rl_samples, sft_examples, sft_loader_seed, SftLoader},
    crate::rl::{run_update, Adam, AdamConfig, CosineWithMinLr, SftExample, UpdateConfig},
    crate::schema::judged::JudgedSchema,
    crate::schema::rollout::GamesSchema,
    crate::schema::sft_demos::SftDemosSchema,
    crate::schema::update_steps::{UpdateStepRow, UpdateStepsSchema},
    anyhow::{bail, Context},
    rand::RngCore,
};

/// Bump when this stage's output for the same inputs would change.
pub const VERSION: u32 = 3; // 3: gradient norm and losses by fixed-split sums (bytes independent of run.threads)

/// File of the optimiser state inside an update artifact.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// What `update` reads from the spec. Key: the `update` section and `total_steps`, the
/// length of the LR schedule computed from the spec ([`schedule_steps`] over the configured
/// `run.iterations`, so `run --iterations 3` computes the first 3 iterations of the
/// configured schedule and stays cached when extended).
#[derive(Debug, Clone)]
pub struct Params {
    pub update: crate::spec::UpdateParams,
    pub total_steps: u64,
    /// `base.dtype`, not in the key (see `base::load_policy_input`).
    pub dtype: crate::spec::Dtype,
}

pub fn params(spec: &Spec) -> Params {
    Params { update: spec.raw.update.clone(), total_steps: schedule_steps(spec, spec.raw.run.iterations), dtype: spec.raw.base.dtype }
}

impl Params {
    pub fn key(&self) -> serde_json::Value {
        serde_json::json!({"update": super::to_key(&self.update), "total_steps": self.total_steps})
    }
}

#[cfg(feature = "compute")]
pub fn run(p: &Params, ctx: &mut StageContext<'_>) -> anyhow::Result<()> {
    let u = &p.update;
    let games = ctx.read_parquet::<GamesSchema>("rollout")?;
    let judged = ctx.read_parquet::<JudgedSchema>("judge")?;
    let turns = kept_turns(&games, &judged)?;
    // Where the stage's time goes (the manifest's `timing.parts`, printed by `run`).
    let t0 = std::time::Instant::now();
    let policy = load_policy_input(ctx, "policy", p.dtype)?;
    let reference = load_policy_input(ctx, "reference", p.dtype)?;
    let mut time_load = t0.elapsed().as_secs_f64();
    let mb = u.micro_batch_size as usize;

    let t1 = std::time::Instant::now();
    let old = response_logprobs(&policy, &turns, mb, ctx.interrupt_flag()).with_context(|| format!("{}: log-probs of the policy", ctx.node))?;
    let refs = response_logprobs(&reference, &turns, mb, ctx.interrupt_flag()).with_context(|| format!("{}: log-probs of the reference", ctx.node))?;
    let time_logprobs = t1.elapsed().as_secs_f64();
    drop(reference);
    let buffer = rl_samples(&turns, old, refs);

    let params = policy.trainable_parameters();
    let adam_cfg = AdamConfig { beta1: u.betas[0], beta2: u.betas[1], eps: 1e-8, weight_decay: u.weight_decay };
    let t2 = std::time::Instant::now();
    let mut adam = if ctx.input("optimizer").is_ok() {
        Adam::load(adam_cfg, &ctx.input_file("optimizer", OPTIMIZER_FILE)?, &params)
            .with_context(|| format!("{}: optimiser state of the previous update", ctx.node))?
    } else {
        Adam::new(adam_cfg)
    };
    time_load += t2.elapsed().as_secs_f64();
    let total = p.total_steps;
    let schedule = CosineWithMinLr::from_warmup_ratio(u.lr, total, u.warmup_ratio, u.min_lr_ratio);
    let config = UpdateConfig::of(u, i64::from(policy.tokenizer().pad_id()), ctx.rng(0).next_u64());

    // SFT demonstrations (module docs): post-filled, from the sft-data artifact.
    let loader = if u.sft_coef > 0.0 {
        let rows = ctx.read_parquet::<SftDemosSchema>("sft")?;
        let demos = sft_examples(&rows, policy.config().vocab_size as u32).with_context(|| format!("{}: input sft", ctx.node))?;
        let seed = sft_loader_seed(ctx.seed, &ctx.input("sft")?.manifest().content_digest.to_string());
        Some(SftLoader { demos, batch: u.sft_batch_size.map_or((mb / 2).max(1), |b| b as usize), seed })
    } else {
        None
    };
    let mut sft_source = |step: u64| loader.as_ref().map(|l| l.draw(step)).unwrap_or_default();
    let t3 = std::time::Instant::now();
    let metrics = if buffer.is_empty() {
        None
    } else {
        let sft: Option<&mut dyn FnMut(u64) -> Vec<SftExample>> = if loader.is_some() { Some(&mut sft_source) } else { None };
        Some(
            run_update(&mut policy_forward(&policy, ctx.interrupt_flag()), &params, &mut adam, &schedule, &buffer, sft, &config, policy.device())
                .with_context(|| format!("{}: REINFORCE++ update", ctx.node))?,
        )
    };
    let time_train = t3.elapsed().as_secs_f64();
    ctx.check_cancelled()?;
    drop(params);
    if policy.has_nan_weights() {
        bail!("{}: the updated policy has NaN weights", ctx.node);
    }

    let t4 = std::time::Instant::now();
    write_policy(ctx, &policy)?;
    adam.save(&ctx.output.path(OPTIMIZER_FILE)?)?;
    let steps: Vec<UpdateStepRow> = metrics.as_ref().map(|m| m.steps.iter().map(UpdateStepRow::from).collect()).unwrap_or_default();
    ctx.output.write_parquet::<UpdateStepsSchema>(&steps)?;
    ctx.output.time_part("load", time_load);
    ctx.output.time_part("logprobs", time_logprobs);
    ctx.output.time_part("train", time_train);
    ctx.output.time_part("write", t4.elapsed().as_secs_f64());
    ctx.output.metric("sft_demos", loader.as_ref().map_or(0, |l| l.demos.len()));
    ctx.output.metric("samples", buffer.len());
    ctx.output.metric("attacker_samples", buffer.iter().filter(|s| s.role == Role::Attacker).count());
    ctx.output.metric("defender_samples", buffer.iter().filter(|s| s.role == Role::Defender).count());
    ctx.output.metric("optimizer_steps_total", adam.steps_taken());
    ctx.output.metric("schedule_steps", total);
    for (name, value) in metrics.map_or_else(|| vec![("optimizer_steps".to_string(), serde_json::json!(0))], |m| m.manifest_metrics()) {
        ctx.output.metric(&name, value);
    }
    Ok(())
}
