//! The `update` stage: update@i = policy i−1, optimiser state i−1, base (reference),
//! rollout@i, judge@i → policy i (HF-dir files), `optimizer.safetensors` (Adam state incl. the
//! step count) and `steps.parquet` (per-step metrics); aggregate `rl::UpdateMetrics` go to the
//! manifest. One REINFORCE++ update (method.md §3) over the kept samples of judge@i.
//!
//! - Old log-probs: a no-grad training forward of policy i−1 (as OpenRLHF recomputes them with
//!   the actor instead of trusting the sampler). Ref log-probs: the frozen base.
//! - LR schedule: cosine with min LR over `update.schedule_steps` optimizer steps, or, when
//!   unset, `schedule_iterations × ceil(expected samples per iteration / micro_batch_size)`
//!   where the expected samples are the seeds that give a trained sample before tie removal
//!   (selfplay: every defender turn plus the revised seeds' attacker turns; attacker_only:
//!   the revised seeds; defender_only: every seed). Tie removal makes real buffers smaller, so
//!   the schedule is never cut short; the step index is Adam's run-wide step count.
//! - SFT term (`update.sft_coef > 0`): the dataset's benign completions are not in the offline
//!   seed pool, so this is method.md §4.2's "unused variant" with the defender's own answer as
//!   the completion: the kept defender samples of benign seeds in this batch (prompt +
//!   sampled response) are the demonstrations; optimizer step k of this update gets the
//!   (k mod n)-th chunk of `micro_batch_size` of them.
//! - Resume: Adam moments and step count come from update@(i−1)'s artifact, policy weights are
//!   saved exactly, so a resumed run continues exactly as an uninterrupted one.
//! - Samples with an empty response (the sampler stopped at once) have no token to train and
//!   are left out.
use anyhow::{bail, Context};
use rand::RngCore;
use tch::Tensor;

use super::base::{load_policy_input, write_policy};
use super::rollout::game_options;
use super::{Stage, StageContext};
use crate::game::{GameMode, Role};
use crate::model::{Policy, SequenceBatch, TokenId};
use crate::rl::{next_token_logprobs, run_update, Adam, AdamConfig, CosineWithMinLr, RlSample, SftExample, TokenBatch, UpdateConfig};
use crate::schema::judged::{JudgedRow, JudgedSchema};
use crate::schema::rollout::{GameRow, GamesSchema};
use crate::schema::update_steps::{UpdateStepRow, UpdateStepsSchema};
use crate::spec::Spec;

pub struct Update;
/// Bump when this stage's output for the same inputs would change.
pub const VERSION: u32 = 1;

/// File of the optimiser state inside an update artifact.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// Optimizer steps of the whole schedule (see the module docs).
pub fn schedule_steps(spec: &Spec, schedule_iterations: u32) -> u64 {
    if let Some(s) = spec.raw.update.schedule_steps {
        return u64::from(s);
    }
    let seeds = f64::from(spec.raw.prep.seeds_per_iteration);
    let revised = seeds * spec.raw.prep.revise_fraction;
    let samples = match game_options(spec).mode {
        GameMode::SelfPlay => seeds + revised,
        GameMode::AttackerOnly => revised,
        GameMode::DefenderOnly => seeds,
    };
    let per_iteration = (samples.round() as u64).div_ceil(u64::from(spec.raw.update.micro_batch_size)).max(1);
    u64::from(schedule_iterations) * per_iteration
}

/// One trained turn before scoring: tokens and the role's reward.
struct Turn {
    role: Role,
    prompt: Vec<i64>,
    response: Vec<i64>,
    reward: f64,
    violation: Option<bool>,
    outcomes: Vec<String>,
    benign: bool,
}

/// Per-response-token log-probs of `turns` under `policy` (no grad), in chunks of `batch`.
fn response_logprobs(policy: &Policy, turns: &[Turn], batch: usize) -> anyhow::Result<Vec<Vec<f32>>> {
    let _guard = tch::no_grad_guard();
    let mut out = Vec::with_capacity(turns.len());
    for chunk in turns.chunks(batch.max(1)) {
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

fn to_i64(ids: &[u32]) -> Vec<i64> {
    ids.iter().map(|&x| i64::from(x)).collect()
}

/// The kept samples of judge@i with their rollout tokens.
fn kept_turns(games: &[GameRow], judged: &[JudgedRow]) -> anyhow::Result<Vec<Turn>> {
    let by_id: std::collections::HashMap<&str, &GameRow> = games.iter().map(|g| (g.game_id.as_str(), g)).collect();
    let mut turns = Vec::new();
    for j in judged {
        let g = by_id.get(j.game_id.as_str()).with_context(|| format!("judge row {} has no game in the rollout", j.game_id))?;
        let benign = g.label == "benign";
        if j.attacker_kept {
            let reward = j.attacker_total.with_context(|| format!("game {}: kept attacker sample without a reward", j.game_id))?;
            turns.push(Turn { role: Role::Attacker, prompt: to_i64(&g.attacker_prompt_ids), response: to_i64(&g.attacker_response_ids), reward, violation: g.attacker_format_violation, outcomes: j.attacker_outcomes.clone(), benign });
        }
        if j.defender_kept {
            let reward = j.defender_total.with_context(|| format!("game {}: kept defender sample without a reward", j.game_id))?;
            turns.push(Turn { role: Role::Defender, prompt: to_i64(&g.defender_prompt_ids), response: to_i64(&g.defender_response_ids), reward, violation: g.defender_format_violation, outcomes: j.defender_outcomes.clone(), benign });
        }
    }
    turns.retain(|t| !t.response.is_empty() && !t.prompt.is_empty());
    Ok(turns)
}

impl Stage for Update {
    fn kind(&self) -> &'static str {
        "update"
    }
    fn version(&self) -> u32 {
        VERSION
    }
    fn run(&self, ctx: &mut StageContext<'_>) -> anyhow::Result<()> {
        tch::set_num_threads(ctx.threads as i32);
        let u = ctx.spec.raw.update.clone();
        let games = ctx.read_parquet::<GamesSchema>("rollout")?;
        let judged = ctx.read_parquet::<JudgedSchema>("judge")?;
        let turns = kept_turns(&games, &judged)?;
        let policy = load_policy_input(ctx, "policy")?;
        let reference = load_policy_input(ctx, "reference")?;
        let mb = u.micro_batch_size as usize;

        let old = response_logprobs(&policy, &turns, mb)?;
        let refs = response_logprobs(&reference, &turns, mb)?;
        drop(reference);
        let buffer: Vec<RlSample> = turns
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
            .collect();

        let params = policy.trainable_parameters();
        let adam_cfg = AdamConfig { beta1: u.betas[0], beta2: u.betas[1], eps: 1e-8, weight_decay: u.weight_decay };
        let mut adam = if ctx.input("optimizer").is_ok() {
            let p = ctx.input_file("optimizer", OPTIMIZER_FILE)?;
            let state: Vec<(String, Tensor)> = crate::model::tensors::load_safetensors(&p)?.into_iter().collect();
            Adam::import_state(adam_cfg, state, &params).with_context(|| format!("{}: optimiser state of the previous update", ctx.node))?
        } else {
            Adam::new(adam_cfg)
        };
        let schedule_iterations = ctx.params.get("schedule_iterations").and_then(serde_json::Value::as_u64).unwrap_or(u64::from(ctx.spec.raw.run.iterations)) as u32;
        let total = schedule_steps(ctx.spec, schedule_iterations);
        let schedule = CosineWithMinLr::from_warmup_ratio(u.lr, total, u.warmup_ratio, u.min_lr_ratio);
        let config = UpdateConfig {
            kl_coef: u.kl_beta,
            reward_clip: u.reward_clip,
            gamma: 1.0,
            clip_eps: u.clip_eps,
            micro_batch_size: mb,
            sft_coef: u.sft_coef,
            max_grad_norm: u.grad_clip,
            pad_id: i64::from(policy.tokenizer().pad_id()),
            shuffle_seed: ctx.rng(0).next_u64(),
        };

        // SFT demonstrations (module docs): kept benign defender turns, chunked per step.
        let demos: Vec<SftExample> = turns.iter().filter(|t| t.role == Role::Defender && t.benign).map(|t| SftExample { token_ids: t.prompt.iter().chain(&t.response).copied().collect(), prompt_len: t.prompt.len() }).collect();
        let first_step = adam.steps_taken();
        let mut sft_source = |step: u64| -> Vec<SftExample> {
            if demos.is_empty() {
                return Vec::new();
            }
            let chunks: Vec<&[SftExample]> = demos.chunks(mb.max(1)).collect();
            chunks[((step - first_step) as usize) % chunks.len()].to_vec()
        };
        let device = policy.device();
        let metrics = {
            let p = &policy;
            let mut forward = |b: &TokenBatch| -> Result<Tensor, crate::rl::PolicyError> { Ok(next_token_logprobs(&p.logits(&b.input_ids, &b.attention_mask).to_kind(tch::Kind::Float), &b.input_ids)) };
            if buffer.is_empty() {
                None
            } else {
                let sft: Option<&mut dyn FnMut(u64) -> Vec<SftExample>> = if u.sft_coef > 0.0 { Some(&mut sft_source) } else { None };
                Some(run_update(&mut forward, &params, &mut adam, &schedule, &buffer, sft, &config, device).with_context(|| format!("{}: REINFORCE++ update", ctx.node))?)
            }
        };
        ctx.check_cancelled()?;
        drop(params);
        if policy.named_parameters().iter().any(|(_, t)| t.isnan().any().int64_value(&[]) != 0) {
            bail!("{}: the updated policy has NaN weights", ctx.node);
        }

        write_policy(ctx, &policy)?;
        let state = adam.export_state();
        let path = ctx.output.path(OPTIMIZER_FILE)?;
        crate::model::tensors::save_safetensors(&path, state.iter().map(|(n, t)| (n.as_str(), t)))?;
        let steps: Vec<UpdateStepRow> = metrics
            .as_ref()
            .map(|m| {
                m.steps
                    .iter()
                    .map(|s| UpdateStepRow {
                        step: s.step,
                        lr: s.lr,
                        policy_loss: s.policy_loss,
                        sft_loss: s.sft_loss,
                        clip_fraction: s.clip_fraction,
                        grad_norm: s.grad_norm,
                        attacker_samples: s.attacker_samples as u32,
                        defender_samples: s.defender_samples as u32,
                        response_tokens: s.response_tokens,
                    })
                    .collect()
            })
            .unwrap_or_default();
        ctx.output.write_parquet::<UpdateStepsSchema>(&steps)?;
        ctx.output.metric("samples", buffer.len());
        ctx.output.metric("attacker_samples", buffer.iter().filter(|s| s.role == Role::Attacker).count());
        ctx.output.metric("defender_samples", buffer.iter().filter(|s| s.role == Role::Defender).count());
        ctx.output.metric("optimizer_steps_total", adam.steps_taken());
        ctx.output.metric("schedule_steps", total);
        if let Some(m) = metrics {
            ctx.output.metric("optimizer_steps", m.optimizer_steps);
            ctx.output.metric("policy_loss", m.policy_loss_mean);
            ctx.output.metric("sft_loss", m.sft_loss_mean);
            ctx.output.metric("clip_fraction", m.clip_fraction);
            ctx.output.metric("grad_norm_mean", m.grad_norm_mean);
            ctx.output.metric("grad_norm_max", m.grad_norm_max);
            ctx.output.metric("lr_first", m.lr_first);
            ctx.output.metric("lr_last", m.lr_last);
            ctx.output.metric("kl", m.kl_mean);
            for (role, r) in &m.roles {
                ctx.output.metric(&format!("{}_reward_mean", role.as_str()), r.reward_mean);
                ctx.output.metric(&format!("{}_kl", role.as_str()), r.kl_mean);
                ctx.output.metric(&format!("{}_format_violation_rate", role.as_str()), r.format_violation_rate);
            }
        } else {
            ctx.output.metric("optimizer_steps", 0);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
