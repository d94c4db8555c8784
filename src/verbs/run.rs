//! The `run` verb: run the plan (or the selected nodes) through the engine, skipping cached
//! nodes; running again resumes. Its text output goes to stderr: one line per node as it
//! ends ([`write_node_line`], through the callback the CLI passes) and a closing count
//! ([`RunOutput::write_text`]).
use std::io::Write;

use serde::Serialize;

use crate::engine::{Engine, NodeReport, Outcome, RunOptions};

/// What `run --json` prints: `{"nodes": [NodeReport]}`, one entry per selected node in
/// plan order.
#[derive(Debug, Clone, Serialize)]
pub struct RunOutput {
    /// Each node's `node`, `outcome` (`hit`/`miss`), `key`, `content_digest`, `seconds`,
    /// `rows` (null when the stage reports none) and, for a miss whose stage reports it,
    /// `parts` (seconds per named part of the work; absent otherwise).
    pub nodes: Vec<NodeReport>,
}

/// Run `opts` on `engine`; `line` gets each node's report as the node ends.
pub fn run(engine: &Engine<'_>, opts: &RunOptions, line: &mut dyn FnMut(&NodeReport)) -> anyhow::Result<RunOutput> {
    let summary = engine.run(opts, line)?;
    Ok(RunOutput { nodes: summary.nodes })
}

/// One node's text line: `hit`/`miss`, node, short key, seconds, rows, and where a miss's
/// time went (`(load 1.0s train 2.0s)`).
pub fn write_node_line(out: &mut impl Write, r: &NodeReport) -> std::io::Result<()> {
    let rows = r.rows.map_or(String::new(), |n| format!("  rows {n}"));
    let parts: String = r.parts.iter().map(|(k, s)| format!(" {k} {s:.1}s")).collect();
    let parts = if parts.is_empty() { parts } else { format!("  ({})", parts.trim_start()) };
    writeln!(out, "{:<5} {:<12} {}  {:>7.2}s{}{}", if r.outcome == Outcome::Hit { "hit" } else { "miss" }, r.node, r.key.short(), r.seconds, rows, parts)
}

impl RunOutput {
    /// The closing line: how many nodes ran, were computed and were cached.
    pub fn write_text(&self, out: &mut impl Write) -> std::io::Result<()> {
        let misses = self.nodes.iter().filter(|r| r.outcome == Outcome::Miss).count();
        writeln!(out, "done: {} node(s), {misses} computed, {} cached", self.nodes.len(), self.nodes.len() - misses)
    }
}
