//! `judge-fit` stage: fits the offline `probe` judge (src/judge/probe.rs) on the dataset
//! artifact's labelled sets and records its held-out scores. Outputs `probe.safetensors`
//! (`judge::build::PROBE_FILE`, read by `judge@i`/`eval@i` through `judge::build::build`)
//! and `judge_fit_metrics.parquet` (one row per head, schema/judge_fit.rs), and the manifest
//! metrics `<head>.accuracy|precision|recall|f1|n` that `show judge-fit` and reports print.
//! Listed in `stages::StageKind`; wired to `dataset` by src/plan.rs.
//!
//! The training data, source groups and metric rows are src/judge/fit.rs; this file is the
//! adapter (params and key, verified inputs, outputs).
use std::collections::BTreeMap;

use crate::judge::fit::source_groups;
// What `run` uses (compute only: the core crate builds params and keys, never runs a stage).
#[cfg(feature = "compute")]
use {
    super::StageContext,
    crate::judge::build::{load_embedder, PROBE_FILE},
    crate::judge::fit::{metric_rows, texts_to_embed, train_config, training_set, PrefetchedEmbedder, EMBED_BATCH},
    crate::judge::probe::{train_probe, Head},
    crate::model::tch_device,
    crate::schema::judge_fit::JudgeFitMetricsSchema,
    crate::schema::judge_train::JudgeTrainSchema,
    crate::schema::seeds::SeedsSchema,
    anyhow::Context,
};

/// Bump when the output for the same inputs would change. 2: refusal phrase and
/// opening-sentence features, per-source held-out metrics, metrics Parquet v2.
pub const VERSION: u32 = 2;

/// What `judge-fit` reads from the spec. Key: the probe settings as `plan::judge_key_params`
/// gives them (embedder directory and pins left out: the embedder enters by its pinned files)
/// and the source groups of the labelled sets (`source_groups`, from `dataset.judge_train`:
/// they decide the by-source held-out split).
#[derive(Debug, Clone)]
pub struct Params {
    pub judge: crate::spec::JudgeParams,
    pub source_groups: BTreeMap<String, String>,
    /// `judge.probe.embedder_dir`, resolved (not in the key).
    pub embedder_dir: std::path::PathBuf,
}

pub fn params(spec: &crate::spec::Spec) -> Params {
    Params { judge: spec.raw.judge.clone(), source_groups: source_groups(&spec.raw.dataset), embedder_dir: spec.embedder_dir.clone() }
}

impl Params {
    pub fn key(&self) -> serde_json::Value {
        let mut v = crate::plan::judge_key_params(&self.judge);
        v.as_object_mut().expect("judge key params are a map").insert("source_groups".into(), super::to_key(&self.source_groups));
        v
    }
}

#[cfg(feature = "compute")]
pub fn run(p: &Params, ctx: &mut StageContext<'_>) -> anyhow::Result<()> {
    let embedder_dir = &p.embedder_dir;
    let p_groups = p.source_groups.clone();
    let p = &p.judge.probe;
    // The probe's weights only mean something on the embeddings they were fitted on.
    let weights = embedder_dir.join("model.safetensors");
    crate::data::verify_source(&weights, &p.embedder_sha256)
        .with_context(|| format!("judge.probe: the sentence embedder's weights {} do not match judge.probe.embedder_sha256", weights.display()))?;
    let seeds = ctx.read_parquet::<SeedsSchema>("dataset")?;
    let pairs = ctx.read_parquet::<JudgeTrainSchema>("dataset")?;
    let data = training_set(&seeds, &pairs, &p_groups);
    let encoder = load_embedder(embedder_dir, tch_device(ctx.device))?;
    let config = train_config(p, ctx.seed);
    let t0 = std::time::Instant::now();
    let texts = texts_to_embed(&data.set, &config);
    let bar = ctx.progress(texts.len() as u64, "embedding");
    let embedder = PrefetchedEmbedder::build(&encoder, texts, EMBED_BATCH, |n| {
        bar.inc(n as u64);
        ctx.check_cancelled()
    })?;
    drop(bar);
    let t1 = std::time::Instant::now();
    let probe = train_probe(&embedder, &data.set, &config).with_context(|| format!("{}: fit the probe", ctx.node))?;
    tracing::info!(node = %ctx.node, embed_s = (t1 - t0).as_secs_f64(), fit_s = t1.elapsed().as_secs_f64(), "probe fitted");
    ctx.check_cancelled()?;
    let bytes = probe.to_bytes()?;
    ctx.output.write_bytes(PROBE_FILE, &bytes)?;
    let rows = metric_rows(&probe.report);
    ctx.output.write_parquet::<JudgeFitMetricsSchema>(&rows)?;
    for r in &rows {
        // By row: `<head>.…`; by source, response heads only (the prompt head's groups
        // are the seed sources, one class each: in the Parquet, kept out of `log`).
        let prefix = match r.split.as_str() {
            "row" => r.head.clone(),
            _ if r.head == Head::PromptHarmful.name() => continue,
            _ => format!("{}.by_source.{}", r.head, r.source),
        };
        ctx.output.metric(&format!("{prefix}.accuracy"), r.accuracy);
        ctx.output.metric(&format!("{prefix}.precision"), r.precision);
        ctx.output.metric(&format!("{prefix}.recall"), r.recall);
        ctx.output.metric(&format!("{prefix}.f1"), r.f1);
        ctx.output.metric(&format!("{prefix}.n"), r.n);
        ctx.output.metric(&format!("{prefix}.train_n"), r.train_n);
    }
    ctx.output.metric("dropped_eval_overlap", data.dropped_eval_overlap);
    Ok(())
}
