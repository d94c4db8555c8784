//! The offline probe judge's training data and fitting helpers, for the `judge-fit` stage
//! (stages/judge_fit.rs) and examples/refusal_heldout.rs: which examples each head is
//! trained on, the source groups of the held-out split, the embeddings prefetched once for
//! all heads, and the metric rows written from a fit.
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

use crate::game::SeedLabel;
use crate::judge::labels::LabelledPair;
use crate::judge::probe::{texts_for, Head, ProbeReport, ProbeTrainConfig, ProbeTrainingSet};
use crate::judge::Embedder;
use crate::schema::judge_fit::HeadMetricsRow;
use crate::schema::judge_train::JudgeExampleRow;
use crate::schema::seeds::SeedRow;
use crate::schema::seeds::Split;
use crate::spec::{DatasetParams, ProbeParams, SourceFormat};

/// Texts per MiniLM forward pass when prefetching (length-sorted, so padding stays small).
pub const EMBED_BATCH: usize = 32;

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
    let held_out: HashSet<&str> = seeds.iter().filter(|s| s.split != Split::Train).map(|s| s.id.as_str()).collect();
    let mut dropped = 0usize;
    let mut set = ProbeTrainingSet::default();
    let mut prompt_seen: HashSet<String> = HashSet::new();
    for s in seeds.iter().filter(|s| s.split == Split::Train) {
        if prompt_seen.insert(s.id.clone()) {
            set.prompt_harmful.push(LabelledPair {
                prompt: s.text.clone(),
                response: String::new(),
                label: s.label == SeedLabel::Harmful,
                source: s.source.clone(),
                category: Some(s.category.clone()).filter(|c| !c.is_empty()),
            });
        }
    }
    for r in pairs {
        let pid = crate::data::prompt_id(&r.prompt);
        if held_out.contains(pid.as_str()) {
            dropped += 1;
            continue;
        }
        let source = groups.get(&r.source).cloned().unwrap_or_else(|| r.source.clone());
        let pair = |label: bool, response: &str| LabelledPair {
            prompt: r.prompt.clone(),
            response: response.to_string(),
            label,
            source: source.clone(),
            category: Some(r.category.clone()).filter(|c| !c.is_empty()),
        };
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
    ProbeTrainConfig {
        seed,
        held_out_fraction: p.holdout_fraction,
        l2: p.l2,
        iterations: p.epochs as usize,
        refusal_features: p.refusal_features,
        refusal_l2: Some(p.refusal_l2),
        ..ProbeTrainConfig::default()
    }
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
    for (h, examples) in
        [(Head::PromptHarmful, &set.prompt_harmful), (Head::ResponseRefusal, &set.response_refusal), (Head::ResponseHarmful, &set.response_harmful)]
    {
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
        let extra: HashMap<String, Vec<f32>> =
            if missing.is_empty() { HashMap::new() } else { missing.iter().cloned().zip(self.inner.embed(&missing)?).collect() };
        Ok(texts.iter().map(|t| self.table.get(t).or_else(|| extra.get(t)).cloned().expect("every text was embedded above")).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(text: &str, label: &str, split: &str) -> SeedRow {
        SeedRow {
            id: crate::data::prompt_id(text),
            text: text.into(),
            label: crate::schema::TextEnum::from_text(label).expect("a label"),
            source: "s".into(),
            category: String::new(),
            split: crate::schema::TextEnum::from_text(split).expect("a split"),
            suite: (split == "eval").then(|| "x".to_string()),
        }
    }

    fn pair(prompt: &str, response: &str, ph: Option<bool>, refusal: Option<bool>, harm: Option<bool>) -> JudgeExampleRow {
        JudgeExampleRow {
            id: format!("{prompt}/{response}"),
            prompt: prompt.into(),
            response: response.into(),
            prompt_harmful: ph,
            refusal,
            harmful_response: harm,
            source: "src".into(),
            category: "c".into(),
        }
    }

    #[test]
    fn training_set_keeps_train_seeds_and_drops_every_evaluated_prompt() {
        let seeds = vec![
            seed("make a bomb", "harmful", "train"),
            seed("bake bread", "benign", "train"),
            seed("Eval Prompt", "harmful", "eval"),
            seed("attacker holdout", "harmful", "holdout_attacker"),
        ];
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
