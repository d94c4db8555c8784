//! The `judge` stage: judge@i = rollout@i × judge → `judged.parquet` (schema::judged), one
//! row per game: the verdict on (public attack, public answer), each role's reward terms
//! (method.md §2.3, `reward.type`), outcome tags, and whether each role's sample enters the RL
//! buffer (§2.5: parse-error drop, mode, `reward.remove_ties`). Verdicts go through the
//! verdict cache at `<store root>/.verdict-cache`, so re-judging costs only what changed.
use crate::game::{CotFormat, GameOptions, GameRecord, GameVerdict, JudgeLabels};
use crate::judge::Verdict;
use crate::schema::rollout::GameRow;
use crate::spec::{RewardParams, Spec};
// What `run` uses (compute only: the core crate builds params and keys, never runs a stage).
#[cfg(feature = "compute")]
use {
    super::StageContext,
    crate::game::{score_game, training_rewards, Role, RoleReward, ScoredGame, SeedLabel},
    crate::judge::cache::{judge_cached, VerdictCache, VERDICT_CACHE_DIR},
    crate::judge::JudgeInput,
    crate::schema::judged::{JudgedRow, JudgedSchema},
    crate::schema::rollout::GamesSchema,
    anyhow::Context,
};

/// Bump when this stage's output for the same inputs would change.
/// 2: decoding steps use the CPU decode kernel (src/model/kernels.rs), whose float rounding
/// differs from MKL's, so sampled tokens can differ.
pub const VERSION: u32 = 2;

/// What `judge` reads from the spec. Key: the judge's verdict-affecting settings
/// (`plan::judge_key_params`), the `reward` section, and the game switches (`rollout.mode`,
/// `rollout.cot`: which samples enter the RL buffer). Connection settings, paths and the
/// embedder's directory are left out (the embedder enters by its pinned files).
#[derive(Debug, Clone)]
pub struct Params {
    pub judge: crate::judge::JudgeSetup,
    pub reward: RewardParams,
    pub game: GameOptions,
}

pub fn params(spec: &Spec) -> Params {
    Params { judge: crate::judge::JudgeSetup::of(spec), reward: spec.raw.reward.clone(), game: crate::game::GameOptions::of(&spec.raw.rollout) }
}

impl Params {
    pub fn key(&self) -> serde_json::Value {
        serde_json::json!({"judge": crate::plan::judge_key_params(&self.judge.params), "reward": super::to_key(&self.reward), "game": super::to_key(&self.game)})
    }
}

/// The judge's verdict as the reward code sees it. A missing prompt-harm label cannot be
/// scored (every term keys on Q), so it counts as a parse error, like WildGuard's own parser.
pub fn game_verdict(v: &Verdict) -> GameVerdict {
    match (v.parse_error, v.prompt_harmful) {
        (false, Some(q)) => GameVerdict::Labels(JudgeLabels { prompt_harmful: q, refusal: v.response_refusal, response_harmful: v.response_harmful }),
        _ => GameVerdict::ParseError,
    }
}

/// The reward code's view of a rollout row.
pub fn game_record(g: &GameRow) -> anyhow::Result<GameRecord> {
    let seed_kind = g.data_type;
    Ok(GameRecord {
        seed_kind,
        attacker_format: g.attacker_turn.then(|| CotFormat::from_violation(g.attacker_format_violation)),
        defender_format: CotFormat::from_violation(g.defender_format_violation),
    })
}

/// Games judged between two Ctrl-C checks.
#[cfg(feature = "compute")]
const JUDGE_CHUNK: usize = 256;

#[cfg(feature = "compute")]
fn outcome_names(r: &RoleReward) -> Vec<String> {
    r.outcomes.iter().map(|o| o.as_str().to_string()).collect()
}

#[cfg(feature = "compute")]
pub fn run(p: &Params, ctx: &mut StageContext<'_>) -> anyhow::Result<()> {
    let games = ctx.read_parquet::<GamesSchema>("rollout")?;
    let judge_dir = match ctx.input("judge_model") {
        Ok(_) => {
            ctx.input_file("judge_model", crate::judge::build::PROBE_FILE)?;
            Some(ctx.input("judge_model")?.dir().to_path_buf())
        }
        Err(_) => None,
    };
    let judge = crate::judge::build::build(&p.judge, judge_dir.as_deref(), crate::model::tch_device(ctx.device))?;
    let cache = VerdictCache::open(ctx.store_root().join(VERDICT_CACHE_DIR))?;
    let inputs: Vec<JudgeInput> =
        games.iter().map(|g| JudgeInput::new(g.public_attack.clone(), g.public_answer.clone()).with_seed_label(g.label == SeedLabel::Harmful)).collect();
    let bar = ctx.progress(inputs.len() as u64, "judging");
    if judge.uncacheable().is_none() {
        ctx.output.used_verdict_cache(&judge.key());
    }
    // In chunks, with the Ctrl-C check between them (a WildGuard chunk takes minutes on a CPU).
    // A chunk is a multiple of the probe's embedding batch (64), and rollouts of up to
    // JUDGE_CHUNK games are judged in one piece, as before chunking.
    let mut verdicts = Vec::with_capacity(inputs.len());
    let mut stats = crate::judge::cache::CacheStats::default();
    for chunk in inputs.chunks(JUDGE_CHUNK) {
        ctx.check_cancelled()?;
        let (v, s) = judge_cached(judge.as_ref(), &cache, chunk).with_context(|| format!("{}: judge {}", ctx.node, judge.name()))?;
        verdicts.extend(v);
        stats.hits += s.hits;
        stats.misses += s.misses;
        bar.inc(chunk.len() as u64);
    }
    drop(bar);

    let options = p.game;
    let scheme = p.reward.kind;
    let remove_ties = p.reward.remove_ties;
    let mut rows = Vec::with_capacity(games.len());
    for (g, v) in games.iter().zip(&verdicts) {
        let scored = score_game(&game_record(g)?, &game_verdict(v), scheme);
        let kept = training_rewards(&scored, &options, remove_ties);
        let kept_role = |role: Role| kept.iter().any(|r| r.role == role);
        let (attacker, defender) = match &scored {
            ScoredGame::Dropped => (None, None),
            ScoredGame::Scored { attacker, defender } => (attacker.clone(), Some(defender.clone())),
        };
        rows.push(JudgedRow {
            game_id: g.game_id.clone(),
            row: g.row,
            data_type: g.data_type,
            prompt_harmful: v.prompt_harmful,
            refusal: v.response_refusal,
            response_harmful: v.response_harmful,
            parse_error: v.parse_error,
            judge_raw: v.raw.clone(),
            dropped: matches!(scored, ScoredGame::Dropped),
            attacker_revision: attacker.as_ref().and_then(|a| a.terms.revision),
            attacker_refusal: attacker.as_ref().map(|a| a.terms.refusal),
            attacker_response_harm: attacker.as_ref().map(|a| a.terms.response_harm),
            attacker_format: attacker.as_ref().and_then(|a| a.terms.format),
            attacker_total: attacker.as_ref().map(|a| a.total),
            attacker_outcomes: attacker.as_ref().map(outcome_names).unwrap_or_default(),
            attacker_kept: kept_role(Role::Attacker),
            defender_refusal: defender.as_ref().map(|d| d.terms.refusal),
            defender_response_harm: defender.as_ref().map(|d| d.terms.response_harm),
            defender_format: defender.as_ref().and_then(|d| d.terms.format),
            defender_total: defender.as_ref().map(|d| d.total),
            defender_outcomes: defender.as_ref().map(outcome_names).unwrap_or_default(),
            defender_kept: kept_role(Role::Defender),
        });
    }

    // Metrics over every scored sample (before the tie filter, as the original logs them).
    let mean = |xs: &[f64]| if xs.is_empty() { None } else { Some(xs.iter().sum::<f64>() / xs.len() as f64) };
    let att: Vec<f64> = rows.iter().filter_map(|r| r.attacker_total).collect();
    let def: Vec<f64> = rows.iter().filter_map(|r| r.defender_total).collect();
    ctx.output.metric("judge", judge.name());
    ctx.output.metric("games", rows.len());
    ctx.output.metric("parse_errors", rows.iter().filter(|r| r.dropped).count());
    ctx.output.metric("prompt_harmful_rate", rows.iter().filter(|r| r.prompt_harmful == Some(true)).count() as f64 / rows.len().max(1) as f64);
    ctx.output.metric("refusal_rate", rows.iter().filter(|r| r.refusal == Some(true)).count() as f64 / rows.len().max(1) as f64);
    ctx.output.metric("response_harmful_rate", rows.iter().filter(|r| r.response_harmful == Some(true)).count() as f64 / rows.len().max(1) as f64);
    ctx.output.metric("attacker_reward_mean", mean(&att));
    ctx.output.metric("defender_reward_mean", mean(&def));
    ctx.output.metric("attacker_kept", rows.iter().filter(|r| r.attacker_kept).count());
    ctx.output.metric("defender_kept", rows.iter().filter(|r| r.defender_kept).count());
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for o in rows.iter().flat_map(|r| r.attacker_outcomes.iter().chain(&r.defender_outcomes)) {
        *outcomes.entry(o.clone()).or_default() += 1;
    }
    ctx.output.metric("outcomes", outcomes);
    ctx.output.metric("cache_hits", stats.hits);
    ctx.output.metric("cache_misses", stats.misses);
    ctx.output.write_parquet::<JudgedSchema>(&rows)?;
    Ok(())
}
