//! The `plan` verb: the plan's nodes in topological order with their inputs, key params and
//! pinned files.
use std::io::Write;

use serde::Serialize;
use serde_json::Value;

use crate::plan::Plan;
use crate::plan::StageKind;
use crate::store::key::FileDigest;

/// What `plan --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct PlanOutput {
    /// The plan's iteration count.
    pub iterations: u32,
    /// Every node, in the order `run` runs them.
    pub nodes: Vec<PlanNode>,
}

/// One node of the plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlanNode {
    /// `stage@iteration`, or the stage for once-per-run nodes.
    pub name: String,
    /// The stage kind (`judge-fit`, `update`, …).
    pub stage: StageKind,
    /// Null for once-per-run nodes.
    pub iteration: Option<u32>,
    /// The node's inputs, in key order.
    pub inputs: Vec<PlanInput>,
    /// The key params (the stage's `Params::key`).
    pub params: Value,
    /// Files read from outside the store: `{"name", "sha256"}` (logical name, pinned digest).
    pub files: Vec<FileDigest>,
}

/// One input of a node.
#[derive(Debug, Clone, Serialize)]
pub struct PlanInput {
    /// The input's role for the consuming stage.
    pub role: String,
    /// The producing node (`prep@2`).
    pub node: String,
}

/// The plan as `plan` shows it.
pub fn plan(plan: &Plan) -> PlanOutput {
    let nodes = plan
        .nodes
        .iter()
        .map(|n| PlanNode {
            name: n.name(),
            stage: n.id.kind,
            iteration: n.id.iteration,
            inputs: n.inputs.iter().map(|(r, p)| PlanInput { role: r.to_string(), node: p.to_string() }).collect(),
            params: n.params.clone(),
            files: n.files.iter().map(|f| FileDigest { name: f.name.clone(), sha256: f.sha256.clone() }).collect(),
        })
        .collect();
    PlanOutput { iterations: plan.iterations, nodes }
}

impl PlanOutput {
    /// One line per node: `name <- role=node, …` (`sources` for a node without inputs).
    pub fn write_text(&self, out: &mut impl Write) -> std::io::Result<()> {
        for n in &self.nodes {
            let ins: Vec<String> = n.inputs.iter().map(|i| format!("{}={}", i.role, i.node)).collect();
            writeln!(out, "{:<12} <- {}", n.name, if ins.is_empty() { "sources".to_string() } else { ins.join(", ") })?;
        }
        Ok(())
    }
}
