//! The `compare RUN…` verb: the final evaluation of several runs (the ablation configs of
//! method.md §6, or any stores) side by side, with each run's base evaluation for the
//! before/after. A RUN is a pipeline file (resolved with its plan against `--store`, so
//! several configs can share one store) or a store directory (read without a spec: the
//! newest artifact of each stage and iteration). Called by src/cli.rs.
use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context};
use serde::Serialize;

use super::{canonical_metrics, gather};
use crate::engine::Engine;
use crate::plan::Plan;
use crate::spec::Spec;
use crate::store::Store;

/// One run's evaluated metrics.
#[derive(Debug, Clone, Serialize)]
pub struct RunMetrics {
    /// The RUN argument as given.
    pub run: String,
    /// `config` or `store`.
    pub kind: &'static str,
    /// First and last evaluated iterations (`None` when nothing is evaluated yet).
    pub base_iteration: Option<u32>,
    pub final_iteration: Option<u32>,
    pub base: BTreeMap<String, f64>,
    #[serde(rename = "final")]
    pub last: BTreeMap<String, f64>,
    /// Every iteration's canonical metrics (rewards, KL, eval).
    pub iterations: BTreeMap<u32, BTreeMap<String, f64>>,
}

fn from_iterations(run: &str, kind: &'static str, iterations: BTreeMap<u32, BTreeMap<String, f64>>, evaluated: Vec<u32>) -> RunMetrics {
    let base_iteration = evaluated.first().copied();
    let final_iteration = evaluated.last().copied();
    let at = |i: Option<u32>| i.and_then(|i| iterations.get(&i)).cloned().unwrap_or_default();
    RunMetrics { run: run.to_string(), kind, base: at(base_iteration), last: at(final_iteration), base_iteration, final_iteration, iterations }
}

/// Metrics of one RUN (`store_for_configs` is the `--store` used for pipeline files).
pub fn load_run(run: &str, store_for_configs: &Path) -> anyhow::Result<RunMetrics> {
    let p = Path::new(run);
    if p.is_file() {
        let spec = Spec::load(p)?;
        let plan = Plan::new(&spec, None);
        let engine = Engine::new(&spec, plan, Store::at(store_for_configs));
        let g = gather(&engine)?;
        let evaluated = g.evals.keys().copied().collect();
        return Ok(from_iterations(run, "config", g.metrics, evaluated));
    }
    if !p.is_dir() {
        bail!("compare: {run:?} is neither a pipeline file nor a store directory");
    }
    let store = Store::at(p);
    let mut newest: BTreeMap<(String, u32), crate::store::Artifact> = BTreeMap::new();
    for a in store.scan().with_context(|| format!("scan store {run}"))? {
        let Some(i) = a.manifest.iteration else { continue };
        let k = (a.manifest.stage.clone(), i);
        if newest.get(&k).is_none_or(|b| b.manifest.timing.started_unix_ms < a.manifest.timing.started_unix_ms) {
            newest.insert(k, a);
        }
    }
    let mut iterations: BTreeMap<u32, BTreeMap<String, f64>> = BTreeMap::new();
    let mut evaluated = Vec::new();
    for ((stage, i), a) in &newest {
        if stage == "eval" {
            evaluated.push(*i);
        }
        let row = iterations.entry(*i).or_default();
        for (k, v) in canonical_metrics(stage, &a.manifest.metrics) {
            row.entry(k).or_insert(v);
        }
    }
    evaluated.sort_unstable();
    Ok(from_iterations(run, "store", iterations, evaluated))
}

/// The table rows: every metric any run's final evaluation has, in name order.
pub fn metric_names(runs: &[RunMetrics]) -> Vec<String> {
    let mut names: Vec<String> = runs.iter().flat_map(|r| r.last.keys().cloned()).collect();
    names.sort();
    names.dedup();
    names
}

/// The text table: one row per metric, one column per run, `final (base)` in each cell.
pub fn render_table(runs: &[RunMetrics]) -> String {
    let names = metric_names(runs);
    let headers: Vec<String> = runs.iter().map(|r| format!("{} [it {}]", r.run, r.final_iteration.map_or("-".to_string(), |i| i.to_string()))).collect();
    let w0 = names.iter().map(String::len).max().unwrap_or(6).max(6);
    let widths: Vec<usize> = headers.iter().map(|h| h.len().max(17)).collect();
    let mut s = format!("{:<w0$}", "metric");
    for (h, w) in headers.iter().zip(&widths) {
        s.push_str(&format!("  {h:>w$}"));
    }
    s.push('\n');
    for n in &names {
        s.push_str(&format!("{n:<w0$}"));
        for (r, w) in runs.iter().zip(&widths) {
            let cell = match (r.last.get(n), r.base.get(n)) {
                (Some(f), Some(b)) if r.base_iteration != r.final_iteration => format!("{f:.4} ({b:.4})"),
                (Some(f), _) => format!("{f:.4}"),
                (None, _) => "-".to_string(),
            };
            s.push_str(&format!("  {cell:>w$}"));
        }
        s.push('\n');
    }
    s.push_str("cells: final evaluation (base evaluation in parentheses)\n");
    s
}
