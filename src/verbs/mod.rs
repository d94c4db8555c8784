//! Read-side verbs over a whole store: `report` (one HTML file) and `compare` (runs side by
//! side), plus the metric gathering they share with `log`'s headline columns. Called by
//! src/cli.rs.
//!
//! # Canonical metric names (what `log`, `report` and `compare` show)
//! Stages write their own names into manifests; [`canonical_metrics`] maps them onto one
//! flat, per-iteration namespace by pattern, so a stage can rename a metric without breaking
//! the readers as long as the pattern holds:
//! - `eval` metrics keep their names (`asr/<suite>`, `refusal/<suite>`, `compliance/<suite>`,
//!   `over_refusal/<suite>`, `diversity/sbert`, `diversity/self_bleu`, `attacker/*`; see
//!   stages/eval.rs); counts (`rows`, `attacker/n`, `attacker/well_formed`) and `intervals`
//!   are left out;
//! - any other stage's numeric metric whose name contains `reward` becomes
//!   `reward/<name>` (e.g. judge's `attacker_reward_mean` → `reward/attacker_reward_mean`);
//! - one whose name contains `kl` as a word part becomes `kl/<name>`;
//! - the `judge-fit` metrics whose name contains `accuracy` become `judge/<name>` on every
//!   iteration row (the judge is fitted once).
pub mod compare;
pub mod report;

use std::collections::BTreeMap;

use serde_json::Value;

use crate::engine::Engine;
use crate::store::Artifact;

/// Metrics per iteration under canonical names, plus the artifacts they came from.
#[derive(Debug, Clone, Default)]
pub struct Gathered {
    pub metrics: BTreeMap<u32, BTreeMap<String, f64>>,
    /// `eval@i` artifacts by iteration.
    pub evals: BTreeMap<u32, Artifact>,
    /// Other per-iteration artifacts: (stage, iteration) → artifact.
    pub stages: BTreeMap<(String, u32), Artifact>,
    /// The `judge-fit` artifact, when there is one.
    pub judge_fit: Option<Artifact>,
}

fn flatten_numbers(prefix: &str, v: &Value, out: &mut Vec<(String, f64)>) {
    match v {
        Value::Number(n) => {
            if let Some(f) = n.as_f64() {
                out.push((prefix.to_string(), f));
            }
        }
        Value::Object(m) => {
            for (k, x) in m {
                let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten_numbers(&p, x, out);
            }
        }
        _ => {}
    }
}

fn has_kl(name: &str) -> bool {
    name.to_lowercase().split(|c: char| !c.is_ascii_alphanumeric()).any(|part| part == "kl")
}

/// Canonical names of one artifact's metrics (see the module docs).
pub fn canonical_metrics(stage: &str, metrics: &serde_json::Map<String, Value>) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    if stage == "eval" {
        for (k, v) in metrics {
            if k == "intervals" || k == "rows" || k == "attacker/n" || k == "attacker/well_formed" {
                continue;
            }
            flatten_numbers(k, v, &mut out);
        }
        return out;
    }
    let mut flat = Vec::new();
    flatten_numbers("", &Value::Object(metrics.clone()), &mut flat);
    for (k, v) in flat {
        if stage == "judge-fit" {
            if k.to_lowercase().contains("accuracy") {
                out.push((format!("judge/{k}"), v));
            }
        } else if k.to_lowercase().contains("reward") {
            out.push((if k.starts_with("reward/") { k } else { format!("reward/{k}") }, v));
        } else if has_kl(&k) {
            out.push((if k.starts_with("kl/") { k } else { format!("kl/{k}") }, v));
        }
    }
    out
}

/// Gather the current plan's artifacts (`engine.resolve`) into canonical metrics.
pub fn gather(engine: &Engine<'_>) -> anyhow::Result<Gathered> {
    let mut g = Gathered::default();
    let mut judge_metrics = Vec::new();
    for r in engine.resolve()? {
        let Some(a) = r.artifact else { continue };
        let stage = a.manifest.stage.clone();
        match a.manifest.iteration {
            None => {
                if stage == "judge-fit" {
                    judge_metrics = canonical_metrics(&stage, &a.manifest.metrics);
                    g.judge_fit = Some(a);
                }
            }
            Some(i) => {
                let row = g.metrics.entry(i).or_default();
                for (k, v) in canonical_metrics(&stage, &a.manifest.metrics) {
                    row.entry(k).or_insert(v);
                }
                if stage == "eval" {
                    g.evals.insert(i, a);
                } else {
                    g.stages.insert((stage, i), a);
                }
            }
        }
    }
    for row in g.metrics.values_mut() {
        for (k, v) in &judge_metrics {
            row.entry(k.clone()).or_insert(*v);
        }
    }
    Ok(g)
}

/// Whether a canonical metric is a `log` headline column: rewards, ASR, refusal,
/// over-refusal and compliance per suite, diversity, judge accuracy, KL.
pub fn is_headline(name: &str) -> bool {
    ["reward/", "asr/", "refusal/", "over_refusal/", "compliance/", "diversity/", "judge/", "kl/"].iter().any(|p| name.starts_with(p))
}
