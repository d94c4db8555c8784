//! The `status` verb: every node of the plan resolved against the store: cached, stale (an
//! artifact of the node exists under another key; the reason says why) or missing; and for
//! a node that a cluster job is computing (a claim in the store, src/executor/cluster.rs),
//! that job and whether it is queued or running.
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
    /// The cluster job computing the node now (`slurm job 12 running`); null when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
}

/// Resolve every node of `engine`'s plan.
pub fn status(engine: &Engine<'_>) -> anyhow::Result<StatusOutput> {
    use crate::executor::cluster::{read_claims, JobState, Scheduler};
    let claims = read_claims(engine.store.root());
    let slurm = crate::executor::slurm::Slurm::new(&engine.spec.raw.slurm);
    let jobs: std::collections::HashMap<(String, Key), String> = claims
        .into_iter()
        .filter(|c| c.scheduler == slurm.name())
        .filter_map(|c| {
            let state = match slurm.state(&c.job_id) {
                Ok(JobState::Queued) => "queued",
                Ok(JobState::Running) => "running",
                _ => return None,
            };
            Some(((c.node.clone(), c.key.clone()), format!("{} job {} {state}", c.scheduler, c.job_id)))
        })
        .collect();
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
                job: r.key.as_ref().and_then(|k| jobs.get(&(r.name.clone(), k.clone())).cloned()),
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
            let reason = match (&n.job, n.reason.as_deref()) {
                (Some(job), _) => format!("[{job}]"),
                (None, r) => r.unwrap_or("").to_string(),
            };
            writeln!(out, "{:<12} {:<8} {:<12} {}", n.name, n.state, key, reason)?;
        }
        Ok(())
    }
}
