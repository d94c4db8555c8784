//! The CLI's verbs, one file each: src/cli.rs parses the arguments and calls the verb's
//! function here, which does the work and returns its result; the CLI prints it.
//!
//! - `run`, `plan`, `status`, `log`, `show`, `lineage`, `explain`, `verify`, `gc`: the
//!   pipeline and store verbs;
//! - `report` (one HTML file) and `compare` (runs side by side): read-side verbs over a
//!   whole store;
//! - `generate` (sample from a policy; also the game-prompt rendering the rollout stage
//!   uses), `judge` (judge a pairs file, score against labels), `serve` (a policy behind an
//!   OpenAI-compatible completions server).
//!
//! Each data verb returns a `#[derive(Serialize)]` struct that *is* its `--json` shape (the
//! CLI prints `serde_json::to_value` of it, pretty, keys sorted; the struct's doc comments
//! describe the fields) and renders its text output itself (`write_text` into a writer the
//! CLI passes, or `render_text`). This module also holds the metric gathering that `log`'s
//! headline columns, `report` and `compare` share.
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
//!   iteration row (the judge is fitted once);
//! - `rollout`'s `<role>_well_formed_rate` becomes `format/<role>_well_formed` (headline) and
//!   its `<role>_truncated_rate` / `<role>_truncated_in_thinking_rate` become
//!   `truncation/<role>` / `truncation/<role>_in_thinking` (turns that hit the token cap, and
//!   those cut inside their reasoning, whose whole reasoning then goes public);
//! - `update`'s `sft_loss` becomes `sft/loss`.
//!
//! # Paired changes
//! [`eval_changes`] joins two `eval` artifacts' `eval.parquet` rows on (suite, prompt id)
//! and gives each suite's rate change with its Newcombe interval and exact McNemar p-value
//! (src/eval/stats.rs); [`render_changes`] is the text table `log` and `compare` print.
pub mod compare;
pub mod explain;
pub mod gc;
#[cfg(feature = "compute")]
pub mod generate;
#[cfg(feature = "compute")]
pub mod judge;
pub mod lineage;
pub mod log;
pub mod plan;
pub mod report;
pub mod run;
#[cfg(feature = "compute")]
pub mod serve;
pub mod show;
pub mod status;
pub mod verify;

use std::collections::BTreeMap;

use serde_json::Value;

use crate::engine::Engine;
use crate::eval::stats::{format_p, suite_changes, suite_label, SuiteChange};
use crate::schema::eval::{EvalRecord, EvalSchema, EvalSummarySchema};
use crate::store::Artifact;

/// Metrics per iteration under canonical names, plus the artifacts they came from.
#[derive(Debug, Clone, Default)]
pub struct Gathered {
    pub metrics: BTreeMap<u32, BTreeMap<String, f64>>,
    /// 95% Wilson intervals (lo, hi) of the eval rates, by iteration and canonical name
    /// (the eval manifest's `intervals`).
    pub intervals: BTreeMap<u32, BTreeMap<String, (f64, f64)>>,
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
        } else if stage == "rollout" && (k.ends_with("_well_formed_rate") || k.contains("_truncated")) {
            let role = k.split('_').next().unwrap_or_default();
            let name = if k.ends_with("_well_formed_rate") {
                format!("format/{role}_well_formed")
            } else if k.ends_with("_truncated_in_thinking_rate") {
                format!("truncation/{role}_in_thinking")
            } else {
                format!("truncation/{role}")
            };
            out.push((name, v));
        } else if stage == "update" && k == "sft_loss" {
            out.push(("sft/loss".into(), v));
        } else if k.to_lowercase().contains("reward") {
            out.push((if k.starts_with("reward/") { k } else { format!("reward/{k}") }, v));
        } else if has_kl(&k) {
            out.push((if k.starts_with("kl/") { k } else { format!("kl/{k}") }, v));
        }
    }
    out
}

/// The eval manifest's `intervals` (`{rate name: {k, n, lo, hi}}`) as name → (lo, hi).
pub fn eval_intervals(metrics: &serde_json::Map<String, Value>) -> BTreeMap<String, (f64, f64)> {
    let Some(Value::Object(m)) = metrics.get("intervals") else { return BTreeMap::new() };
    m.iter()
        .filter_map(|(k, v)| {
            let lo = v.get("lo")?.as_f64()?;
            let hi = v.get("hi")?.as_f64()?;
            Some((k.clone(), (lo, hi)))
        })
        .collect()
}

/// Gather the current plan's artifacts (`engine.resolve`) into canonical metrics.
pub fn gather(engine: &Engine<'_>) -> anyhow::Result<Gathered> {
    Ok(gather_from(engine.resolve()?))
}

/// [`gather`] of an already resolved plan.
pub fn gather_from(resolved: Vec<crate::engine::Resolved>) -> Gathered {
    let mut g = Gathered::default();
    let mut judge_metrics = Vec::new();
    for r in resolved {
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
                    g.intervals.insert(i, eval_intervals(&a.manifest.metrics));
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
    g
}

/// Whether a canonical metric is a `log` headline column: rewards, ASR, refusal,
/// over-refusal and compliance per suite, diversity, judge accuracy, KL.
pub fn is_headline(name: &str) -> bool {
    ["reward/", "format/", "asr/", "refusal/", "over_refusal/", "compliance/", "diversity/", "judge/", "kl/"].iter().any(|p| name.starts_with(p))
}

/// Every row of an eval artifact's `eval.parquet` (digest-checked).
pub fn eval_rows(a: &Artifact) -> anyhow::Result<Vec<EvalRecord>> {
    let p = a.verify_file("eval.parquet")?;
    Ok(crate::schema::read_parquet::<EvalSchema>(&p)?)
}

/// Suite → its headline metric name (`asr`, `refusal`, `compliance`), from
/// `eval_summary.parquet`.
pub fn eval_headlines(a: &Artifact) -> anyhow::Result<BTreeMap<String, String>> {
    let p = a.verify_file("eval_summary.parquet")?;
    let rows = crate::schema::read_parquet::<EvalSummarySchema>(&p)?;
    Ok(rows.into_iter().filter(|r| r.headline && r.category == crate::schema::eval::ALL).map(|r| (r.suite, r.metric)).collect())
}

/// Per-suite rate changes from `before` to `after` (two eval artifacts; paired on prompt
/// ids where the suites hold the same prompts). Headlines come from `after`.
pub fn eval_changes(before: &Artifact, after: &Artifact) -> anyhow::Result<Vec<SuiteChange>> {
    let mut heads = eval_headlines(before)?;
    heads.extend(eval_headlines(after)?);
    Ok(suite_changes(&eval_rows(before)?, &eval_rows(after)?, &heads))
}

/// The text table of changes: one row per suite and rate, headline rates marked `*`,
/// in-distribution suites labelled.
pub fn render_changes(changes: &[SuiteChange]) -> String {
    let labels: Vec<String> = changes.iter().map(|c| suite_label(&c.suite)).collect();
    let w = labels.iter().map(String::len).max().unwrap_or(5).max(5);
    let mut s = format!(
        "{:<w$}  {:<11}  {:>6}  {:>6}  {:>7}  {:>17}  {:>14}  {:>7}  {:>9}\n",
        "suite", "rate", "before", "after", "diff", "95% interval", "one-sided 95%", "p", "pairs"
    );
    for (c, label) in changes.iter().zip(&labels) {
        let ch = &c.change;
        let metric = if c.headline { format!("{}*", c.metric) } else { c.metric.clone() };
        let pairs = match ch.discordant {
            Some((b, cc)) => format!("{} b{b}c{cc}", c.shared_prompts),
            None => format!("{}/{}", ch.before.n, ch.after.n),
        };
        let interval = format!("[{:+.3}, {:+.3}]", ch.lo, ch.hi);
        let one = format!("[{:+.3}, {:+.3}]", ch.lo_one_sided, ch.hi_one_sided);
        s.push_str(&format!(
            "{label:<w$}  {metric:<11}  {:>6.3}  {:>6.3}  {:>+7.3}  {interval:>17}  {one:>14}  {:>7}  {pairs:>9}\n",
            ch.before.value,
            ch.after.value,
            ch.difference,
            format_p(ch.mcnemar_p),
        ));
    }
    s.push_str("* headline rate. diff = after - before; 95% interval: Newcombe (1998) method 10 (paired on prompt ids; unpaired where the prompts differ);\n");
    s.push_str("one-sided 95%: the difference is above the left / below the right bound at 95%; p: exact McNemar (two-sided; '-' when unpaired);\n");
    s.push_str("pairs: shared prompts and discordant pairs b (1 -> 0), c (0 -> 1), or n before/after when unpaired. In-distribution suites are held-out slices of a training source.\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names(stage: &str, v: Value) -> Vec<(String, f64)> {
        canonical_metrics(stage, v.as_object().expect("object"))
    }

    #[test]
    fn canonical_names_follow_the_patterns() {
        assert_eq!(names("judge", json!({"attacker_reward_mean": 0.5, "games": 8, "judge": "probe"})), vec![("reward/attacker_reward_mean".to_string(), 0.5)]);
        assert_eq!(names("update", json!({"kl_mean": 0.1, "loss": 2.0, "skill": 1.0})), vec![("kl/kl_mean".to_string(), 0.1)]);
        assert_eq!(names("judge-fit", json!({"refusal.accuracy": 0.9, "refusal.n": 40})), vec![("judge/refusal.accuracy".to_string(), 0.9)]);
        let e = names("eval", json!({"asr/harmbench": 0.25, "rows": 7, "attacker/n": 3, "intervals": {"asr/harmbench": {"k": 1}}}));
        assert_eq!(e, vec![("asr/harmbench".to_string(), 0.25)]);
        assert!(is_headline("asr/harmbench") && is_headline("reward/attacker_reward_mean") && !is_headline("attacker/faithfulness"));
        let r = names(
            "rollout",
            json!({"defender_well_formed_rate": 0.75, "attacker_truncated_rate": 0.5, "defender_truncated_in_thinking_rate": 0.25, "games": 8}),
        );
        assert_eq!(
            r,
            vec![
                ("truncation/attacker".to_string(), 0.5),
                ("truncation/defender_in_thinking".to_string(), 0.25),
                ("format/defender_well_formed".to_string(), 0.75)
            ]
        );
        assert_eq!(names("update", json!({"sft_loss": 1.5})), vec![("sft/loss".to_string(), 1.5)]);
        assert!(is_headline("format/defender_well_formed") && !is_headline("truncation/defender"));
    }
}
