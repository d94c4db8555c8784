//! The `eval@i` stage: evaluates policy i (the base for i = 0) on the held-out suites
//! (method.md §5) with the protocol of src/eval/protocol.rs ([`evaluate`]: what is generated,
//! how answers are judged, the metric names) and writes `eval.parquet`,
//! `eval_attacker.parquet`, `eval_summary.parquet` (schema/eval.rs) and the manifest metrics.
//! This file is the adapter: its params and key, its verified inputs (policy, dataset,
//! judge-fit), the judge and embedder it loads, and its outputs.
use serde_json::{json, Value};

use crate::eval::settings::EvalSettings;
use crate::spec::{Dtype, Spec};
// What `run` uses (compute only: the core crate builds params and keys, never runs a stage).
#[cfg(feature = "compute")]
use {
    super::StageContext,
    crate::eval::protocol::{evaluate, EvalInputs, HOLDOUT_ATTACKER},
    crate::judge::Embedder,
    crate::model::Policy,
    crate::schema::eval::{EvalAttackerSchema, EvalSchema, EvalSummarySchema},
    crate::schema::seeds::SeedsSchema,
    anyhow::Context,
};

/// Bump when this stage's output for the same inputs would change.
/// 2: decoding steps use the CPU decode kernel (src/model/kernels.rs), whose float rounding
/// differs from MKL's, so sampled tokens can differ.
/// 3: generation batches are also capped by prompt tokens (rows should not depend on their
/// batch, but no cached eval should mix the two batchings), and the adversarial suites'
/// headline is ASR.
pub const VERSION: u32 = 3;

/// What `eval` reads from the spec. Key: `eval` without `batch_size` (speed only), `every` (which
/// iterations are evaluated: the plan's choice, not the artifact's content) and
/// custom suite paths (each custom suite file enters by sha256 as the pinned file
/// `eval.custom_suites.<name>`), the judge's verdict-affecting settings
/// (`plan::judge_key_params`), `rollout.cot`, the rollout sampling settings and the game
/// templates' digest. Which suites are adversarial (headline ASR) is read from the dataset
/// input's manifest, not from the spec.
#[derive(Debug, Clone)]
pub struct Params {
    /// The protocol's settings (custom suite paths are not in the key: their sha256 is).
    pub settings: EvalSettings,
    pub judge: crate::judge::JudgeSetup,
    /// `base.dtype`, not in the key (see `base::load_policy_input`).
    pub dtype: Dtype,
    /// `generation`: only `GenerationParams::key` (server engine family) is in the key.
    pub generation: crate::spec::GenerationParams,
}

pub fn params(spec: &Spec) -> Params {
    Params { settings: EvalSettings::of(spec), judge: crate::judge::JudgeSetup::of(spec), dtype: spec.raw.base.dtype, generation: spec.raw.generation.clone() }
}

impl Params {
    pub fn key(&self) -> Value {
        let s = &self.settings;
        let mut eval = super::to_key(&s.eval);
        super::strip_paths(&mut eval);
        let m = eval.as_object_mut().expect("eval is a map");
        // Speed only, and which iterations are evaluated (the plan's business, not an eval's
        // output): eval@4 is the same artifact whether every is 2 or 4.
        m.remove("batch_size");
        m.remove("every");
        let mut key = json!({
            "eval": eval, "judge": crate::plan::judge_key_params(&self.judge.params), "cot": s.cot,
            "attacker_sampling": super::to_key(&s.attacker_sampling),
            "template_digest": crate::game::template_digest().to_hex(),
        });
        if let Some(g) = self.generation.key() {
            key.as_object_mut().expect("a map").insert("generation".into(), g);
        }
        key
    }
}

/// The suites the dataset artifact built as adversarial (its manifest's
/// `adversarial_suites`): their headline is ASR.
pub fn adversarial_suites(dataset: &crate::store::Manifest) -> std::collections::BTreeSet<String> {
    dataset.components.params.get("adversarial_suites").and_then(Value::as_object).map(|m| m.keys().cloned().collect()).unwrap_or_default()
}

/// Verify every file of the input `role` against its manifest; returns its directory.
#[cfg(feature = "compute")]
fn verified_dir(ctx: &StageContext<'_>, role: &str) -> anyhow::Result<std::path::PathBuf> {
    let input = ctx.input(role)?;
    let names: Vec<String> = input.manifest().files.iter().map(|f| f.name.clone()).collect();
    for f in names {
        ctx.input_file(role, &f)?;
    }
    Ok(ctx.input(role)?.dir().to_path_buf())
}

#[cfg(feature = "compute")]
pub fn run(p: &Params, ctx: &mut StageContext<'_>) -> anyhow::Result<()> {
    let device = crate::model::tch_device(ctx.device);
    let kind = crate::model::tch_kind(p.dtype);
    let seeds = ctx.read_parquet::<SeedsSchema>("dataset")?;
    let policy_dir = verified_dir(ctx, "policy")?;
    let policy = Policy::load(&policy_dir, device, kind).with_context(|| format!("{}: load policy from {}", ctx.node, policy_dir.display()))?;
    let judge_dir = if ctx.input("judge_model").is_ok() { Some(verified_dir(ctx, "judge_model")?) } else { None };
    let judge = crate::judge::build::build(&p.judge, judge_dir.as_deref(), device)?;
    let embedder =
        if p.settings.eval.suites.contains_key(HOLDOUT_ATTACKER) { Some(crate::judge::build::load_embedder(&p.judge.embedder_dir, device)?) } else { None };
    let total: u64 = p.settings.eval.suites.iter().map(|(n, s)| crate::data::suite_subset(&seeds, n, s.subset, ctx.seed).len() as u64).sum();
    let adversarial = adversarial_suites(ctx.input("dataset")?.manifest());
    let generator = ctx.generator(&p.generation, &policy, "policy")?;
    let bar = ctx.progress(total, "evaluating");
    let out = {
        let c: &StageContext<'_> = ctx;
        let rng = |row: u64| c.rng(row);
        let progress = |what: &str, done: u64| {
            bar.set_message(format!("{what} {done}"));
            bar.inc(0);
        };
        evaluate(&EvalInputs {
            params: &p.settings,
            run_seed: c.seed,
            adversarial: &adversarial,
            seeds: &seeds,
            generator: &generator,
            judge: judge.as_ref(),
            embedder: embedder.as_ref().map(|e| e as &dyn Embedder),
            rng: &rng,
            cancel: c.interrupt_flag(),
            progress: &progress,
        })?
    };
    drop(bar);
    ctx.output.write_parquet::<EvalSchema>(&out.rows)?;
    ctx.output.write_parquet::<EvalAttackerSchema>(&out.attacker)?;
    ctx.output.write_parquet::<EvalSummarySchema>(&out.summary)?;
    ctx.write_generation_provenance(&[("policy", &generator)])?;
    for (k, v) in out.metrics {
        ctx.output.metric(&k, v);
    }
    Ok(())
}
