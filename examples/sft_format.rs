//! How fast does the SFT term teach the `<think>…</think><answer>…</answer>` format? Trains
//! the base policy on the post-filled demonstrations of an `sft-data` artifact **only** (no RL
//! term), with the update stage's loss, loader, grad clip and Adam, and every `EVAL_EVERY`
//! steps samples the defender turns of a rollout artifact again (their prompts, at the
//! rollout's temperature, 128 new tokens) and counts well-formed ones with the game's parser.
//! The training step is the update stage's own SFT half (`rl::sft_backward`, `rl::buffer::SftLoader`).
//! This isolates the format-learning part of `update@i` so the SFT settings of the default
//! pipeline (lr, demonstrations per step, steps) can be chosen from a measured curve instead of
//! a full run. Not part of the pipeline; run by hand (README "Measured numbers"):
//!
//! ```sh
//! self-redteam run --only sft-data          # and a rollout@1 for the prompts
//! LR=2e-4 BATCH=4 STEPS=24 EVAL_EVERY=6 cargo run --release --example sft_format -- \
//!     artifacts/base/<key> artifacts/sft-data/<key>/sft_demos.parquet \
//!     artifacts/rollout/<key>/games.parquet
//! ```
//! Knobs (environment): `LR` (constant after `WARMUP` linear steps, default 0), `BATCH`
//! demonstrations per step, `STEPS`, `EVAL_EVERY`, `TEMPERATURE` (1.0), `TOP_P` (1.0),
//! `ROLE` (defender | attacker: whose rollout prompts are sampled), `ALSO` (a second `TEMPERATURE,TOP_P` measured beside), `MAX_NEW` (128), `PROMPTS` (defender prompts sampled, default all), `SEED`, `THREADS` (2).
use std::path::PathBuf;

use anyhow::Context;
use self_redteam::game::cot_format_check_and_extract;
use self_redteam::model::{Policy, SamplingParams, TokenId};
use self_redteam::rl::buffer::{policy_forward, sft_examples, SftLoader};
use self_redteam::rl::{clip_grad_norm, sft_backward, Adam, AdamConfig};
use self_redteam::schema::read_parquet;
use self_redteam::schema::rollout::GamesSchema;
use self_redteam::schema::sft_demos::SftDemosSchema;

fn env<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(v) => v.parse().map_err(|_| anyhow::anyhow!("{name}={v}: not a valid value")),
        Err(_) => Ok(default),
    }
}

/// Samples every prompt once and returns (well-formed, closed `</think>`, stopped by itself).
fn measure(policy: &Policy, prompts: &[Vec<TokenId>], params: &SamplingParams, seed: u64) -> anyhow::Result<(usize, usize, usize)> {
    let _guard = tch::no_grad_guard();
    let (mut wf, mut closed, mut stopped) = (0, 0, 0);
    for (c, chunk) in prompts.chunks(16).enumerate() {
        let seeds: Vec<u64> = (0..chunk.len()).map(|i| seed ^ ((c * 16 + i) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)).collect();
        for s in policy.generate(chunk, &seeds, params)? {
            let parsed = cot_format_check_and_extract(&s.text);
            wf += usize::from(!parsed.violation);
            closed += usize::from(s.text.contains("</think>"));
            stopped += usize::from(s.finished_by_stop);
        }
    }
    Ok((wf, closed, stopped))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [base, demos_path, games_path] = args.as_slice() else {
        anyhow::bail!("usage: sft_format BASE_HF_DIR SFT_DEMOS_PARQUET ROLLOUT_GAMES_PARQUET");
    };
    let (lr, warmup, batch, steps, every) = (env("LR", 2e-4f64)?, env("WARMUP", 0u64)?, env("BATCH", 4usize)?, env("STEPS", 24u64)?, env("EVAL_EVERY", 6u64)?);
    let (temperature, top_p, max_new, seed) = (env("TEMPERATURE", 1.0f64)?, env("TOP_P", 1.0f64)?, env("MAX_NEW", 128usize)?, env("SEED", 8888u64)?);
    tch::set_num_threads(env("THREADS", 2i32)?);

    let policy = Policy::load(base, tch::Device::Cpu, tch::Kind::Float).with_context(|| format!("{}", base.display()))?;
    let demos = sft_examples(&read_parquet::<SftDemosSchema>(demos_path)?, policy.config().vocab_size as u32)?;
    let games = read_parquet::<GamesSchema>(games_path)?;
    // ROLE=attacker: the attacker turns' prompts instead (the revised seeds).
    let role: String = env("ROLE", "defender".to_string())?;
    let mut prompts: Vec<Vec<TokenId>> = match role.as_str() {
        "defender" => games.iter().filter(|g| !g.defender_frozen && !g.defender_prompt_ids.is_empty()).map(|g| g.defender_prompt_ids.clone()).collect(),
        "attacker" => games.iter().filter(|g| g.attacker_turn && !g.attacker_prompt_ids.is_empty()).map(|g| g.attacker_prompt_ids.clone()).collect(),
        other => anyhow::bail!("ROLE={other}: expected defender or attacker"),
    };
    prompts.truncate(env("PROMPTS", prompts.len())?);
    let mut settings = vec![SamplingParams { temperature, top_p, max_new_tokens: max_new, ..Default::default() }];
    // ALSO="0.7,0.9": a second (temperature, top_p) measured at every checkpoint.
    if let Ok(also) = std::env::var("ALSO") {
        let (t2, p2) = also.split_once(',').with_context(|| format!("ALSO={also}: expected TEMPERATURE,TOP_P"))?;
        settings.push(SamplingParams { temperature: t2.parse()?, top_p: p2.parse()?, max_new_tokens: max_new, ..Default::default() });
    }
    let loader = SftLoader { demos, batch, seed: *blake3::hash(&seed.to_le_bytes()).as_bytes() };
    println!(
        "{} demonstrations, {} {role} prompts; lr {lr:e} (warm-up {warmup}), {batch} demonstrations/step, {steps} steps",
        loader.demos.len(),
        prompts.len()
    );
    println!("step  sft_loss  T     top_p  well_formed  closed_think  stopped  secs");

    let params_t = policy.trainable_parameters();
    let mut adam = Adam::new(AdamConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.0 });
    let pad = i64::from(policy.tokenizer().pad_id());
    let mut losses = Vec::new();
    let t = std::time::Instant::now();
    for step in 0..=steps {
        if step % every == 0 || step == steps {
            let n = prompts.len() as f64;
            let mean = if losses.is_empty() { f64::NAN } else { losses.iter().sum::<f64>() / losses.len() as f64 };
            for params in &settings {
                let (wf, closed, stopped) = measure(&policy, &prompts, params, seed)?;
                println!(
                    "{step:>4}  {mean:>8.3}  {:<4}  {:<5}  {:>11.3}  {:>12.3}  {:>7.3}  {:>4.0}",
                    params.temperature,
                    params.top_p,
                    wf as f64 / n,
                    closed as f64 / n,
                    stopped as f64 / n,
                    t.elapsed().as_secs_f64()
                );
            }
            losses.clear();
        }
        if step == steps {
            break;
        }
        for (_, p) in &params_t {
            p.shallow_clone().zero_grad();
        }
        // The update stage's SFT half (rl::sft_backward), alone.
        if let Some(loss) =
            sft_backward(&mut policy_forward(&policy, &std::sync::atomic::AtomicBool::new(false)), &loader.draw(step), 1.0, pad, tch::Device::Cpu, step)?
        {
            losses.push(loss);
        }
        clip_grad_norm(&params_t, 1.0);
        let factor = if step < warmup { (step + 1) as f64 / warmup as f64 } else { 1.0 };
        adam.step(&params_t, lr * factor);
    }
    Ok(())
}
