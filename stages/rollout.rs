//! The `rollout` stage: rollout@i = policy i−1 × prep@i → `games.parquet` (schema::rollout),
//! one row per game (method.md §1, §3.3). All attacker turns are sampled first as one batched
//! generation (in chunks of `rollout.batch_size`), then all defender turns as a second one.
//! Modes: selfplay, attacker_only (the frozen base model — input `reference` — answers with
//! the plain template; vanilla seeds play no game), defender_only (every seed verbatim).
//!
//! Seeding: the attacker turn of prep row r samples with a seed drawn from `ctx.rng(2r)` and
//! its defender turn from `ctx.rng(2r + 1)`, so a game's tokens depend on neither batch size
//! nor which other seeds share its batch (see model::sampler on row independence).
use crate::spec::{Dtype, RolloutParams, Spec};
// What `run` uses (compute only: the core crate builds params and keys, never runs a stage).
#[cfg(feature = "compute")]
use {
    super::base::load_policy_input,
    super::StageContext,
    crate::game::{attack_turn, defender_prompt, public_text, render_prompt, rollout_sampling, turn_stats, AttackTurn, GameOptions},
    crate::model::{batching, Policy, Sample, TokenId},
    crate::remote::Generator,
    crate::schema::prep::{PrepRow, PrepSchema},
    crate::schema::rollout::{GameRow, GamesSchema},
    rand::RngCore,
};

/// Bump when this stage's output for the same inputs would change.
/// 2: decoding steps use the CPU decode kernel (src/model/kernels.rs), whose float rounding
/// differs from MKL's, so sampled tokens can differ.
pub const VERSION: u32 = 3; // 3: min_new_tokens = 1 (a turn is never empty), per-role truncation metrics

/// What `rollout` reads from the spec. Key: the `rollout` section (`batch_size` included, see
/// "rollout key" in src/plan.rs) and the game templates' digest.
#[derive(Debug, Clone)]
pub struct Params {
    pub rollout: RolloutParams,
    /// `base.dtype`, not in the key (see `base::load_policy_input`).
    pub dtype: Dtype,
    /// `generation`: only `GenerationParams::key` (server engine family) is in the key.
    pub generation: crate::spec::GenerationParams,
}

pub fn params(spec: &Spec) -> Params {
    Params { rollout: spec.raw.rollout.clone(), dtype: spec.raw.base.dtype, generation: spec.raw.generation.clone() }
}

impl Params {
    pub fn key(&self) -> serde_json::Value {
        let mut v = super::to_key(&self.rollout);
        let m = v.as_object_mut().expect("rollout is a map");
        m.insert("template_digest".into(), serde_json::Value::String(crate::game::template_digest().to_hex()));
        if let Some(g) = self.generation.key() {
            m.insert("generation".into(), g);
        }
        v
    }
}

#[cfg(feature = "compute")]
struct Pending {
    prep: PrepRow,
    attacker: Option<(String, Vec<TokenId>)>,
    public_attack: String,
}

#[cfg(feature = "compute")]
pub fn run(p: &Params, ctx: &mut StageContext<'_>) -> anyhow::Result<()> {
    let options = GameOptions::of(&p.rollout);
    let params = rollout_sampling(&p.rollout);
    let batch = p.rollout.batch_size as usize;
    let prep = ctx.read_parquet::<PrepSchema>("prep")?;
    let policy = load_policy_input(ctx, "policy", p.dtype)?;

    // Turn 0 for every seed.
    let mut games = Vec::new();
    for r in prep {
        let kind = r.data_type;
        match attack_turn(&r.text, kind, &options) {
            AttackTurn::Skip => {}
            AttackTurn::Verbatim(text) => games.push(Pending { prep: r, attacker: None, public_attack: text }),
            AttackTurn::Generate(chat) => {
                let rendered = render_prompt(policy.tokenizer(), &chat)?;
                games.push(Pending { prep: r, attacker: Some(rendered), public_attack: String::new() });
            }
        }
    }
    let seed_of = |row: u64| ctx.rng(row).next_u64();
    let att_idx: Vec<usize> = (0..games.len()).filter(|&i| games[i].attacker.is_some()).collect();
    let att_prompts: Vec<Vec<TokenId>> = att_idx.iter().map(|&i| games[i].attacker.as_ref().expect("filtered").1.clone()).collect();
    let att_seeds: Vec<u64> = att_idx.iter().map(|&i| seed_of(2 * u64::from(games[i].prep.row))).collect();
    let att_ids: Vec<String> = att_idx.iter().map(|&i| format!("g{:05}/attacker", games[i].prep.row)).collect();
    let generator = ctx.generator(&p.generation, &policy, "policy")?;
    let att_samples = ctx.generate(&generator, &att_prompts, &att_seeds, &params, &batching::in_order(att_prompts.len(), batch), &att_ids, "attacker turns")?;
    let mut attacker_out: Vec<Option<Sample>> = vec![None; games.len()];
    for (&i, s) in att_idx.iter().zip(att_samples) {
        games[i].public_attack = public_text(&s.text, options.cot).text;
        attacker_out[i] = Some(s);
    }

    // Turn 1: the defender (the frozen base model in attacker-only runs, on the same
    // servers once its weights are loaded there).
    let frozen;
    let frozen_generator;
    let (defender, def_generator): (&Policy, &Generator<'_>) = if options.defender_is_frozen() {
        frozen = load_policy_input(ctx, "reference", p.dtype)?;
        frozen_generator = ctx.next_generator(&generator, &frozen, "reference")?;
        (&frozen, &frozen_generator)
    } else {
        (&policy, &generator)
    };
    let style = options.defender_style();
    let mut def_rendered = Vec::with_capacity(games.len());
    for g in &games {
        def_rendered.push(render_prompt(defender.tokenizer(), &defender_prompt(&g.public_attack, style))?);
    }
    let def_prompts: Vec<Vec<TokenId>> = def_rendered.iter().map(|(_, ids)| ids.clone()).collect();
    let def_seeds: Vec<u64> = games.iter().map(|g| seed_of(2 * u64::from(g.prep.row) + 1)).collect();
    let def_ids: Vec<String> = games.iter().map(|g| format!("g{:05}/defender", g.prep.row)).collect();
    let def_samples =
        ctx.generate(def_generator, &def_prompts, &def_seeds, &params, &batching::in_order(def_prompts.len(), batch), &def_ids, "defender turns")?;

    let mut rows = Vec::with_capacity(games.len());
    for ((g, a), ((dtext, dids), d)) in games.into_iter().zip(attacker_out).zip(def_rendered.into_iter().zip(def_samples)) {
        let dpub = public_text(&d.text, options.cot);
        let (aprompt, aids) = g.attacker.map_or((None, Vec::new()), |(t, ids)| (Some(t), ids));
        rows.push(GameRow {
            game_id: format!("g{:05}", g.prep.row),
            row: g.prep.row,
            seed_id: g.prep.seed_id,
            seed_text: g.prep.text,
            label: g.prep.label,
            data_type: g.prep.data_type,
            category: g.prep.category,
            attacker_turn: a.is_some(),
            attacker_prompt: aprompt,
            attacker_output: a.as_ref().map(|s| s.text.clone()),
            attacker_format_violation: a.as_ref().and_then(|s| public_text(&s.text, options.cot).violation),
            attacker_prompt_ids: aids,
            attacker_response_ids: a.as_ref().map_or_else(Vec::new, |s| s.token_ids.clone()),
            attacker_logprobs: a.as_ref().map_or_else(Vec::new, |s| s.logprobs.clone()),
            attacker_finished_by_stop: a.as_ref().map(|s| s.finished_by_stop),
            public_attack: g.public_attack,
            defender_frozen: options.defender_is_frozen(),
            defender_prompt: dtext,
            defender_output: d.text,
            defender_format_violation: dpub.violation,
            defender_prompt_ids: dids,
            defender_response_ids: d.token_ids,
            defender_logprobs: d.logprobs,
            defender_finished_by_stop: d.finished_by_stop,
            public_answer: dpub.text,
        });
    }
    for (name, value) in turn_stats(&rows, options.cot) {
        ctx.output.metric(&name, value);
    }
    ctx.output.write_parquet::<GamesSchema>(&rows)?;
    if options.defender_is_frozen() {
        ctx.write_generation_provenance(&[("policy", &generator), ("reference", def_generator)])?;
    } else {
        ctx.write_generation_provenance(&[("policy", &generator)])?;
    }
    Ok(())
}
