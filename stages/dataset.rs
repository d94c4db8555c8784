//! `dataset` stage: the seed pool, held-out suites and judge-training pairs from the
//! pinned sources (logic in `crate::data::build_dataset`), including the adversarial eval
//! suites (jailbreak templates around HarmBench behaviours). Outputs `seeds.parquet` and
//! `judge_train.parquet`. Listed in `stages::StageKind`.
use std::collections::BTreeMap;

use super::StageContext;
use crate::schema::judge_train::JudgeTrainSchema;
use crate::schema::seeds::SeedsSchema;

/// Bump when the output for the same sources and params would change.
/// 2: adversarial suites (`dataset.adversarial_suites`), behaviours they wrap are kept out
/// of training and judge training, metric `dropped_long_adversarial`; PyRIT objective
/// answers that achieved the objective carry `refusal = false`.
pub const VERSION: u32 = 2;

/// What `dataset` reads from the spec. Key: `dataset` without `sources_dir`, paths and
/// sha256 pins (every source file enters the key by its sha256 as a pinned file instead,
/// src/plan.rs).
#[derive(Debug, Clone)]
pub struct Params {
    pub dataset: crate::spec::DatasetParams,
    /// `dataset.sources_dir`, resolved (not in the key).
    pub sources_dir: std::path::PathBuf,
}

pub fn params(spec: &crate::spec::Spec) -> Params {
    Params { dataset: spec.raw.dataset.clone(), sources_dir: spec.sources_dir.clone() }
}

impl Params {
    pub fn key(&self) -> serde_json::Value {
        let mut v = super::to_key(&self.dataset);
        super::strip_paths(&mut v);
        v
    }
}

pub fn run(p: &Params, ctx: &mut StageContext<'_>) -> anyhow::Result<()> {
    // The engine verified every pinned source's sha256 before any node ran.
    let out = crate::data::build_dataset(&p.dataset, &p.sources_dir, ctx.seed)?;
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for r in &out.seeds {
        let bucket = match &r.suite {
            Some(s) => format!("eval.{s}"),
            None => format!("{}.{}", r.split.as_str(), r.label.as_str()),
        };
        *counts.entry(bucket).or_default() += 1;
    }
    ctx.output.write_parquet::<SeedsSchema>(&out.seeds)?;
    ctx.output.write_parquet::<JudgeTrainSchema>(&out.judge_train)?;
    ctx.output.metric("rows", counts);
    ctx.output.metric("judge_train_rows", out.judge_train.len());
    ctx.output.metric("dropped_long", out.dropped_long);
    ctx.output.metric("dropped_duplicate", out.dropped_duplicate);
    ctx.output.metric("dropped_eval_overlap", out.dropped_eval_overlap);
    ctx.output.metric("dropped_long_adversarial", out.dropped_long_adversarial);
    Ok(())
}
