//! The `log` verb: one row per iteration with the metrics that exist so far — the headline
//! columns (canonical names, see the module docs of src/verbs/mod.rs) by default, every
//! manifest metric with `--all` — then each suite's paired change from the first to the
//! last evaluation.
use std::collections::BTreeMap;
use std::io::Write;

use serde::Serialize;
use serde_json::Value;

use super::{eval_changes, gather_from, is_headline, render_changes};
use crate::engine::Engine;
use crate::eval::stats::{in_distribution, SuiteChange};

/// What `log --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct LogOutput {
    /// Every iteration that has an artifact, in order.
    pub iterations: Vec<LogIteration>,
    /// The paired change from the first to the last evaluation; null with fewer than two
    /// evaluated iterations.
    pub changes: Option<LogChanges>,
}

/// One iteration's row.
#[derive(Debug, Clone, Serialize)]
pub struct LogIteration {
    pub iteration: u32,
    /// Every manifest metric of the iteration's artifacts, flattened: `{"stage.name": value}`
    /// (values as the manifests hold them).
    pub metrics: BTreeMap<String, Value>,
    /// The headline metrics under canonical names: `{"asr/harmbench": number, …}`.
    pub headline: BTreeMap<String, Value>,
}

/// Each suite's rate change between two evaluations on the same prompts (eval subsets are
/// seeded by the run seed, not the iteration).
#[derive(Debug, Clone, Serialize)]
pub struct LogChanges {
    /// The first evaluated iteration.
    pub from: u32,
    /// The last evaluated iteration.
    pub to: u32,
    pub suites: Vec<SuiteChange>,
}

/// The log of `engine`'s plan as far as it is cached.
pub fn log(engine: &Engine<'_>) -> anyhow::Result<LogOutput> {
    // One resolve of the plan serves both the raw metrics and the headline columns.
    let resolved = engine.resolve()?;
    let rows = Engine::log_of(&resolved);
    // Headline columns: canonical names (src/verbs/mod.rs) matched by pattern.
    let gathered = gather_from(resolved);
    let mut headline: BTreeMap<u32, BTreeMap<String, Value>> = gathered
        .metrics
        .iter()
        .map(|(i, m)| (*i, m.iter().filter(|(k, _)| is_headline(k)).map(|(k, v)| (k.clone(), serde_json::json!(v))).collect()))
        .collect();
    let changes = match (gathered.evals.iter().next(), gathered.evals.iter().next_back()) {
        (Some((i0, a0)), Some((i1, a1))) if i0 != i1 => Some(LogChanges { from: *i0, to: *i1, suites: eval_changes(a0, a1)? }),
        _ => None,
    };
    let iterations = rows.into_iter().map(|(i, metrics)| LogIteration { iteration: i, metrics, headline: headline.remove(&i).unwrap_or_default() }).collect();
    Ok(LogOutput { iterations, changes })
}

impl LogOutput {
    /// The table (one row per iteration; the headline columns, or with `all` — or when no
    /// iteration has a headline metric — every metric), then the change table.
    pub fn write_text(&self, all: bool, out: &mut impl Write) -> std::io::Result<()> {
        let use_headline = !all && self.iterations.iter().any(|r| !r.headline.is_empty());
        let rows: Vec<(u32, &BTreeMap<String, Value>)> =
            self.iterations.iter().map(|r| (r.iteration, if use_headline { &r.headline } else { &r.metrics })).collect();
        let mut cols: Vec<&String> = rows.iter().flat_map(|(_, m)| m.keys()).collect();
        cols.sort();
        cols.dedup();
        // Headers: in-distribution suites (held-out slices of a training source) are
        // labelled, e.g. `refusal/advbench(in-dist)`.
        let headers: Vec<String> = cols
            .iter()
            .map(|c| match c.split_once('/') {
                Some((_, suite)) if in_distribution(suite) => format!("{c}(in-dist)"),
                _ => c.to_string(),
            })
            .collect();
        write!(out, "{:<5}", "iter")?;
        for h in &headers {
            write!(out, " {h:>w$}", w = h.len().max(6))?;
        }
        writeln!(out)?;
        for (i, m) in &rows {
            write!(out, "{i:<5}")?;
            for (c, h) in cols.iter().zip(&headers) {
                let v = m.get(*c).map_or("-".to_string(), |v| match v {
                    Value::Number(n) => n.as_f64().filter(|f| f.fract() != 0.0).map_or(n.to_string(), |f| format!("{f:.4}")),
                    other => other.to_string(),
                });
                write!(out, " {v:>w$}", w = h.len().max(6))?;
            }
            writeln!(out)?;
        }
        if let Some(c) = &self.changes {
            writeln!(out, "\nchange eval@{} -> eval@{} on the same prompts:", c.from, c.to)?;
            write!(out, "{}", render_changes(&c.suites))?;
        }
        Ok(())
    }
}
