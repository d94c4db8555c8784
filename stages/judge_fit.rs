//! `judge-fit` stage: fits the offline `probe` judge (src/judge/probe.rs) on the dataset
//! artifact's labelled sets and records its held-out scores. Outputs `probe.safetensors`
//! (`judge::build::PROBE_FILE`, read by `judge@i`/`eval@i` through `judge::build::from_spec`)
//! and `judge_fit_metrics.parquet` (one row per head, schema/judge_fit.rs), and the manifest
//! metrics `<head>.accuracy|precision|recall|f1|n` that `show judge-fit` and reports print.
//! Listed in `stages::StageKind`; wired to `dataset` by src/plan.rs.
//!
//! Training data per head:
//! - prompt_harmful: the dataset's `train` split seeds (harmful and benign, labelled by
//!   their source), plus the prompts of the labelled response sets that carry a prompt
//!   label (PyRIT objectives, UncensorBench: all harmful), one example per distinct prompt;
//! - response_refusal / response_harmful: the `judge_train.parquet` pairs with that label
//!   (refusal: PyRIT refusal + refusal_extra, UncensorBench censored = refusal and
//!   uncensored = compliance, PyRIT objective answers that achieved the harmful objective =
//!   compliance, AlpacaEval reference answers = compliance).
//!
//! Each example's `source` is its **source group** (`source_group`): one group per
//! labelling protocol of the pinned sets (`pyrit_refusal` for both refusal files,
//! `pyrit_objective` for the 14 objective files, `uncensorbench`, `alpaca_eval`); a seed's
//! group is its seed source. The probe reports held-out scores per group, each from a head
//! fitted without that group (probe.rs, "by source"), beside the by-row split; both go to
//! `judge_fit_metrics.parquet` (column `split`: `row` | `source`) and the manifest
//! (`<head>.accuracy|…` by row; `<head>.by_source.<group>.accuracy|precision|recall|f1|n`
//! for the two response heads), which `show`, `log` and `report` print.
//!
//! No prompt used by evaluation is trained on: the dataset stage already drops labelled
//! pairs whose prompt is an eval prompt, and this stage also drops any example whose prompt
//! is a seed outside the `train` split (eval suites and the `holdout_attacker` split, which
//! the attacker-diversity eval reads). The count is the metric `dropped_eval_overlap`.
//!
//! The held-out split is seeded by the run seed, not the node key, so changing `l2` or
//! `epochs` re-fits on the same split and the held-out scores stay comparable.
use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::Context;

use super::StageContext;
use crate::judge::build::{load_embedder, PROBE_FILE};
use crate::judge::labels::LabelledPair;
use crate::judge::probe::{texts_for, train_probe, Head, ProbeReport, ProbeTrainConfig, ProbeTrainingSet};
use crate::judge::Embedder;
use crate::schema::judge_fit::{HeadMetricsRow, JudgeFitMetricsSchema};
use crate::schema::judge_train::{JudgeExampleRow, JudgeTrainSchema};
use crate::schema::seeds::{SeedRow, SeedsSchema};
use crate::spec::{DatasetParams, ProbeParams, SourceFormat};

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

/// Texts per MiniLM forward pass when prefetching (length-sorted, so padding stays small).
const EMBED_BATCH: usize = 32;

/// The probe's training examples and what was left out of them.
#[derive(Debug, Clone, PartialEq)]
pub struct FitData {
    pub set: ProbeTrainingSet,
    /// Examples dropped because their prompt is an eval or held-out attacker prompt.
    pub dropped_eval_overlap: usize,
}

/// The source group of each `dataset.judge_train` file, by its `source` name: one group per
/// labelling protocol (module header). A name not listed maps to itself.
pub fn source_groups(d: &DatasetParams) -> BTreeMap<String, String> {
    d.judge_train
        .iter()
        .map(|f| {
            let group = match f.format {
                SourceFormat::PyritRefusalCsv => "pyrit_refusal".to_string(),
                SourceFormat::PyritObjectiveCsv => "pyrit_objective".to_string(),
                SourceFormat::UncensorbenchJson => "uncensorbench".to_string(),
                SourceFormat::AlpacaEvalResponses => "alpaca_eval".to_string(),
                _ => f.source_name(),
            };
            (f.source_name(), group)
        })
        .collect()
}

/// Assemble the three heads' examples from the dataset artifact (see the module header);
/// `groups` maps a pair's `source` to its source group (`source_groups`).
/// Deterministic: follows the input row order.
pub fn training_set(seeds: &[SeedRow], pairs: &[JudgeExampleRow], groups: &BTreeMap<String, String>) -> FitData {
    let held_out: HashSet<&str> = seeds.iter().filter(|s| s.split != "train").map(|s| s.id.as_str()).collect();
    let mut dropped = 0usize;
    let mut set = ProbeTrainingSet::default();
    let mut prompt_seen: HashSet<String> = HashSet::new();
    for s in seeds.iter().filter(|s| s.split == "train") {
        if prompt_seen.insert(s.id.clone()) {
            set.prompt_harmful.push(LabelledPair { prompt: s.text.clone(), response: String::new(), label: s.label == "harmful", source: s.source.clone(), category: Some(s.category.clone()).filter(|c| !c.is_empty()) });
        }
    }
    for r in pairs {
        let pid = crate::data::prompt_id(&r.prompt);
        if held_out.contains(pid.as_str()) {
            dropped += 1;
            continue;
        }
        let source = groups.get(&r.source).cloned().unwrap_or_else(|| r.source.clone());
        let pair = |label: bool, response: &str| LabelledPair { prompt: r.prompt.clone(), response: response.to_string(), label, source: source.clone(), category: Some(r.category.clone()).filter(|c| !c.is_empty()) };
        if let Some(l) = r.prompt_harmful {
            if prompt_seen.insert(pid) {
                set.prompt_harmful.push(pair(l, ""));
            }
        }
        if let Some(l) = r.refusal {
            set.response_refusal.push(pair(l, &r.response));
        }
        if let Some(l) = r.harmful_response {
            set.response_harmful.push(pair(l, &r.response));
        }
    }
    FitData { set, dropped_eval_overlap: dropped }
}

/// `judge.probe` options as the trainer's config. `epochs` counts full-batch iterations
/// (every iteration sees every example). `lr` is not used: the trainer's step is fixed at
/// 1/L from the data (probe.rs), which needs no tuning and cannot diverge.
pub fn train_config(p: &ProbeParams, seed: u64) -> ProbeTrainConfig {
    ProbeTrainConfig { seed, held_out_fraction: p.holdout_fraction, l2: p.l2, iterations: p.epochs as usize, refusal_features: p.refusal_features, refusal_l2: Some(p.refusal_l2), ..ProbeTrainConfig::default() }
}

/// The held-out report as Parquet rows: first each head's by-row split (`split` = `row`,
/// `source` empty; what `show` previews first), then per head one row per left-out source
/// group (`split` = `source`).
pub fn metric_rows(report: &ProbeReport) -> Vec<HeadMetricsRow> {
    let row = |head: Head, split: &str, source: &str, train_n: usize, m: &crate::judge::metrics::BinaryMetrics, train_loss: Option<f64>| HeadMetricsRow {
        head: head.name().to_string(),
        split: split.to_string(),
        source: source.to_string(),
        train_n: train_n as u64,
        n: m.n as u64,
        tp: m.tp as u64,
        fp: m.fp as u64,
        tn: m.tn as u64,
        fn_: m.fn_ as u64,
        accuracy: m.accuracy,
        precision: m.precision,
        recall: m.recall,
        f1: m.f1,
        train_loss,
    };
    let by_row = report.heads.iter().map(|h| row(h.head, "row", "", h.train_n, &h.held_out, Some(h.train_loss)));
    let by_source = report.heads.iter().flat_map(|h| h.by_source.iter().map(move |s| row(h.head, "source", &s.source, s.train_n, &s.held_out, None)));
    by_row.chain(by_source).collect()
}

/// Every text the trainer embeds for these examples (`probe::texts_for` of each head),
/// distinct, shortest first.
pub fn texts_to_embed(set: &ProbeTrainingSet, config: &ProbeTrainConfig) -> Vec<String> {
    let mut texts: HashSet<String> = HashSet::new();
    for (h, examples) in [(Head::PromptHarmful, &set.prompt_harmful), (Head::ResponseRefusal, &set.response_refusal), (Head::ResponseHarmful, &set.response_harmful)] {
        for e in examples {
            texts.extend(texts_for(h, config.refusal_features, &e.prompt, &e.response));
        }
    }
    let mut texts: Vec<String> = texts.into_iter().collect();
    texts.sort_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
    texts
}

/// Embeddings computed ahead of training, in batches of similar length, then served from
/// memory. Why: the trainer embeds its distinct texts in alphabetical chunks, so each chunk
/// pads to its longest text (MiniLM truncates at 256 tokens) and most of the compute goes to
/// padding; batching by length cut judge-fit from about 13 minutes to (see the report) on
/// 2 cores. A text that was not prefetched (should the trainer's features change) is
/// embedded on demand, so this only ever changes speed, never which vectors are used.
pub struct PrefetchedEmbedder<'a> {
    inner: &'a dyn Embedder,
    table: HashMap<String, Vec<f32>>,
}

impl<'a> PrefetchedEmbedder<'a> {
    /// Embed `texts` (ideally sorted by length) in batches of `batch`; `tick` after each.
    pub fn build(inner: &'a dyn Embedder, texts: Vec<String>, batch: usize, mut tick: impl FnMut(usize) -> anyhow::Result<()>) -> anyhow::Result<Self> {
        let mut table = HashMap::with_capacity(texts.len());
        for chunk in texts.chunks(batch.max(1)) {
            let vecs = inner.embed(chunk)?;
            anyhow::ensure!(vecs.len() == chunk.len(), "embedder returned {} vectors for {} texts", vecs.len(), chunk.len());
            table.extend(chunk.iter().cloned().zip(vecs));
            tick(chunk.len())?;
        }
        Ok(PrefetchedEmbedder { inner, table })
    }
}

impl Embedder for PrefetchedEmbedder<'_> {
    fn embed(&self, texts: &[String]) -> anyhow::Result<Vec<Vec<f32>>> {
        let missing: Vec<String> = texts.iter().filter(|t| !self.table.contains_key(*t)).cloned().collect();
        let extra: HashMap<String, Vec<f32>> = if missing.is_empty() { HashMap::new() } else { missing.iter().cloned().zip(self.inner.embed(&missing)?).collect() };
        Ok(texts.iter().map(|t| self.table.get(t).or_else(|| extra.get(t)).cloned().expect("every text was embedded above")).collect())
    }
}

use crate::model::tch_device;

pub fn run(p: &Params, ctx: &mut StageContext<'_>) -> anyhow::Result<()> {
    let embedder_dir = &p.embedder_dir;
    let p_groups = p.source_groups.clone();
    let p = &p.judge.probe;
    // The probe's weights only mean something on the embeddings they were fitted on.
    let weights = embedder_dir.join("model.safetensors");
    crate::data::verify_source(&weights, &p.embedder_sha256).with_context(|| format!("judge.probe: the sentence embedder's weights {} do not match judge.probe.embedder_sha256", weights.display()))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(text: &str, label: &str, split: &str) -> SeedRow {
        SeedRow { id: crate::data::prompt_id(text), text: text.into(), label: label.into(), source: "s".into(), category: String::new(), split: split.into(), suite: (split == "eval").then(|| "x".to_string()) }
    }

    fn pair(prompt: &str, response: &str, ph: Option<bool>, refusal: Option<bool>, harm: Option<bool>) -> JudgeExampleRow {
        JudgeExampleRow { id: format!("{prompt}/{response}"), prompt: prompt.into(), response: response.into(), prompt_harmful: ph, refusal, harmful_response: harm, source: "src".into(), category: "c".into() }
    }

    #[test]
    fn training_set_keeps_train_seeds_and_drops_every_evaluated_prompt() {
        let seeds = vec![seed("make a bomb", "harmful", "train"), seed("bake bread", "benign", "train"), seed("Eval Prompt", "harmful", "eval"), seed("attacker holdout", "harmful", "holdout_attacker")];
        let pairs = vec![
            pair("eval   prompt", "no", Some(true), Some(true), Some(false)), // normalises to an eval prompt
            pair("attacker holdout", "sure", Some(true), None, Some(true)),
            pair("steal a car", "I can't", Some(true), Some(true), Some(false)),
            pair("steal a car", "here is how", Some(true), Some(false), Some(true)),
            pair("write a poem", "roses", None, Some(false), None),
        ];
        let groups = BTreeMap::from([("src".to_string(), "group".to_string())]);
        let d = training_set(&seeds, &pairs, &groups);
        assert_eq!(d.dropped_eval_overlap, 2);
        let prompts: Vec<(&str, bool)> = d.set.prompt_harmful.iter().map(|e| (e.prompt.as_str(), e.label)).collect();
        assert_eq!(prompts, [("make a bomb", true), ("bake bread", false), ("steal a car", true)]);
        let refusal: Vec<(&str, bool)> = d.set.response_refusal.iter().map(|e| (e.response.as_str(), e.label)).collect();
        assert_eq!(refusal, [("I can't", true), ("here is how", false), ("roses", false)]);
        let harm: Vec<(&str, bool)> = d.set.response_harmful.iter().map(|e| (e.response.as_str(), e.label)).collect();
        assert_eq!(harm, [("I can't", false), ("here is how", true)]);
    }

    #[test]
    fn epochs_map_to_iterations_and_seed_is_the_run_seed() {
        let p = ProbeParams { epochs: 7, l2: 0.5, holdout_fraction: 0.25, ..ProbeParams::default() };
        let c = train_config(&p, 42);
        assert_eq!((c.iterations, c.l2, c.held_out_fraction, c.seed, c.threshold), (7, 0.5, 0.25, 42, 0.5));
    }
}
