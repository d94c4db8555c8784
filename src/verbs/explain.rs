//! The `explain NODE` verb: why a node is not cached, one sentence per key component that
//! differs between its current key and its newest artifact in the store.
use std::io::Write;

use serde::Serialize;

use crate::engine::Engine;

/// What `explain --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct ExplainOutput {
    /// The NODE argument as given.
    pub node: String,
    /// One sentence per differing key component (or one saying the node is cached, has
    /// never been built, or waits for an input).
    pub reasons: Vec<String>,
}

/// Explain the plan node `node` (`prep@1`, `dataset`).
pub fn explain(engine: &Engine<'_>, node: &str) -> anyhow::Result<ExplainOutput> {
    Ok(ExplainOutput { node: node.to_string(), reasons: engine.explain_node(node)? })
}

impl ExplainOutput {
    /// One sentence a line.
    pub fn write_text(&self, out: &mut impl Write) -> std::io::Result<()> {
        for s in &self.reasons {
            writeln!(out, "{s}")?;
        }
        Ok(())
    }
}
