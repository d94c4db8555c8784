//! The `compare RUN…` verb: the final evaluation of several runs (the ablation configs of
//! method.md §6, or any stores) side by side, with each run's base evaluation for the
//! before/after. A RUN is a pipeline file (resolved with its plan against `--store`, so
//! several configs can share one store) or a store directory (read without a spec: the
//! newest artifact of each stage and iteration). Called by src/cli.rs.
//!
//! Statistics (src/eval/stats.rs): each run's base → final change per suite, paired on
//! prompt ids (`changes`), and each run's final evaluation against the **first** run's
//! final evaluation (`versus_first`; e.g. self-play vs defender-only) — paired as well where
//! the two runs' suites hold the same prompt ids (same dataset and subset sizes and run
//! seed), otherwise unpaired (interval only, no test).
use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context};
use serde::Serialize;

use super::{canonical_metrics, eval_changes, gather, render_changes};
use crate::engine::Engine;
use crate::eval::stats::{in_distribution, SuiteChange};
use crate::plan::Plan;
use crate::spec::Spec;
use crate::store::{Artifact, Store};

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
    /// Base → final evaluation per suite and rate (empty with fewer than two evaluations).
    pub changes: Vec<SuiteChange>,
    /// This run's final evaluation against the first run's (`before` = the first run);
    /// empty for the first run itself. Filled by [`load_runs`].
    pub versus_first: Vec<SuiteChange>,
    /// The final `eval` artifact (for the cross-run comparison).
    #[serde(skip)]
    pub final_eval: Option<Artifact>,
}

fn from_iterations(
    run: &str,
    kind: &'static str,
    iterations: BTreeMap<u32, BTreeMap<String, f64>>,
    evals: &BTreeMap<u32, Artifact>,
) -> anyhow::Result<RunMetrics> {
    let base = evals.iter().next();
    let last = evals.iter().next_back();
    let base_iteration = base.map(|(i, _)| *i);
    let final_iteration = last.map(|(i, _)| *i);
    let at = |i: Option<u32>| i.and_then(|i| iterations.get(&i)).cloned().unwrap_or_default();
    let changes = match (base, last) {
        (Some((i0, a0)), Some((i1, a1))) if i0 != i1 => eval_changes(a0, a1).with_context(|| format!("compare: {run}: eval@{i0} -> eval@{i1}"))?,
        _ => Vec::new(),
    };
    Ok(RunMetrics {
        run: run.to_string(),
        kind,
        base: at(base_iteration),
        last: at(final_iteration),
        base_iteration,
        final_iteration,
        iterations,
        changes,
        versus_first: Vec::new(),
        final_eval: last.map(|(_, a)| a.clone()),
    })
}

/// What `compare --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct CompareOutput {
    /// Every RUN, in argument order.
    pub runs: Vec<RunMetrics>,
    /// The metric names of the text table ([`metric_names`]).
    pub metrics: Vec<String>,
}

/// `compare RUN…`: load every RUN (pipeline files against `store_for_configs`) and compare.
pub fn compare(runs: &[String], store_for_configs: &Path) -> anyhow::Result<CompareOutput> {
    let runs = load_runs(runs, store_for_configs)?;
    let metrics = metric_names(&runs);
    Ok(CompareOutput { runs, metrics })
}

impl CompareOutput {
    /// The text output ([`render_table`]).
    pub fn write_text(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        write!(out, "{}", render_table(&self.runs))
    }
}

/// Load every RUN and compare each run's final evaluation with the first run's.
pub fn load_runs(runs: &[String], store_for_configs: &Path) -> anyhow::Result<Vec<RunMetrics>> {
    let mut loaded = runs.iter().map(|r| load_run(r, store_for_configs)).collect::<anyhow::Result<Vec<_>>>()?;
    let first = loaded.first().and_then(|r| r.final_eval.clone());
    if let Some(f) = first {
        for r in loaded.iter_mut().skip(1) {
            if let Some(a) = &r.final_eval {
                r.versus_first = eval_changes(&f, a).with_context(|| format!("compare: {} against {}", r.run, runs[0]))?;
            }
        }
    }
    Ok(loaded)
}

/// Metrics of one RUN (`store_for_configs` is the `--store` used for pipeline files).
pub fn load_run(run: &str, store_for_configs: &Path) -> anyhow::Result<RunMetrics> {
    let p = Path::new(run);
    if p.is_file() {
        let spec = Spec::load(p)?;
        let plan = Plan::new(&spec, None);
        let engine = Engine::new(&spec, plan, Store::at(store_for_configs));
        let g = gather(&engine)?;
        return from_iterations(run, "config", g.metrics, &g.evals);
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
    let mut evals = BTreeMap::new();
    for ((stage, i), a) in &newest {
        if stage == "eval" {
            evals.insert(*i, a.clone());
        }
        let row = iterations.entry(*i).or_default();
        for (k, v) in canonical_metrics(stage, &a.manifest.metrics) {
            row.entry(k).or_insert(v);
        }
    }
    from_iterations(run, "store", iterations, &evals)
}

/// The table rows: every metric any run's final evaluation has, in name order.
pub fn metric_names(runs: &[RunMetrics]) -> Vec<String> {
    let mut names: Vec<String> = runs.iter().flat_map(|r| r.last.keys().cloned()).collect();
    names.sort();
    names.dedup();
    names
}

/// A metric row's label: in-distribution suites are marked (`refusal/advbench (in-dist)`).
fn metric_label(name: &str) -> String {
    match name.split_once('/') {
        Some((_, suite)) if in_distribution(suite) => format!("{name} (in-dist)"),
        _ => name.to_string(),
    }
}

/// The text output: the metric table (one row per metric, one column per run, `final
/// (base)` in each cell), then each run's base → final changes and each later run against
/// the first (paired statistics).
pub fn render_table(runs: &[RunMetrics]) -> String {
    let mut s = render_metrics(runs);
    for r in runs {
        if !r.changes.is_empty() {
            s.push_str(&format!("\n{}: eval@{} -> eval@{}\n", r.run, r.base_iteration.unwrap_or(0), r.final_iteration.unwrap_or(0)));
            s.push_str(&render_changes(&r.changes));
        }
    }
    if let Some(first) = runs.first() {
        for r in runs.iter().skip(1).filter(|r| !r.versus_first.is_empty()) {
            s.push_str(&format!("\nfinal evaluations: {} (before) vs {} (after)\n", first.run, r.run));
            s.push_str(&render_changes(&r.versus_first));
        }
    }
    s
}

fn render_metrics(runs: &[RunMetrics]) -> String {
    let names = metric_names(runs);
    let labels: Vec<String> = names.iter().map(|n| metric_label(n)).collect();
    let headers: Vec<String> = runs.iter().map(|r| format!("{} [it {}]", r.run, r.final_iteration.map_or("-".to_string(), |i| i.to_string()))).collect();
    let w0 = labels.iter().map(String::len).max().unwrap_or(6).max(6);
    let widths: Vec<usize> = headers.iter().map(|h| h.len().max(17)).collect();
    let mut s = format!("{:<w0$}", "metric");
    for (h, w) in headers.iter().zip(&widths) {
        s.push_str(&format!("  {h:>w$}"));
    }
    s.push('\n');
    for (n, label) in names.iter().zip(&labels) {
        s.push_str(&format!("{label:<w0$}"));
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
