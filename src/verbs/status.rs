//! The `status` verb: every node of the plan resolved against the store: cached, stale (an
//! artifact of the node exists under another key; the reason says why) or missing.
use std::io::Write;

use serde::Serialize;

use crate::engine::Engine;
use crate::plan::StageKind;
use crate::store::{Digest, Key};

/// What `status --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct StatusOutput {
    /// Every node of the plan, in plan order.
    pub nodes: Vec<NodeStatus>,
}

/// One node's state.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    /// `stage@iteration`, or the stage for once-per-run nodes.
    pub name: String,
    /// The stage kind.
    pub stage: StageKind,
    /// Null for once-per-run nodes.
    pub iteration: Option<u32>,
    /// The node's current key; null while some input is not cached.
    pub key: Option<Key>,
    /// The content digest of the cached artifact; null unless `state` is `cached`.
    pub content_digest: Option<Digest>,
    /// `cached`, `stale` or `missing`.
    pub state: &'static str,
    /// Why the node is stale or missing; null when cached.
    pub reason: Option<String>,
}

/// Resolve every node of `engine`'s plan.
pub fn status(engine: &Engine<'_>) -> anyhow::Result<StatusOutput> {
    let nodes = engine
        .resolve()?
        .into_iter()
        .map(|r| {
            let node = engine.plan.get(&r.name).expect("resolved from the plan");
            NodeStatus {
                stage: node.id.kind,
                iteration: node.id.iteration,
                content_digest: r.artifact.as_ref().map(|a| a.manifest.content_digest.clone()),
                state: r.state.name(),
                reason: r.state.reason().map(str::to_string),
                key: r.key,
                name: r.name,
            }
        })
        .collect();
    Ok(StatusOutput { nodes })
}

impl StatusOutput {
    /// One line per node: name, state, short key (`-` when unknown), reason.
    pub fn write_text(&self, out: &mut impl Write) -> std::io::Result<()> {
        for n in &self.nodes {
            let key = n.key.as_ref().map_or("-", |k| k.short());
            writeln!(out, "{:<12} {:<8} {:<12} {}", n.name, n.state, key, n.reason.as_deref().unwrap_or(""))?;
        }
        Ok(())
    }
}
