//! The `lineage REF` verb: the tree of an artifact's inputs back to the sources, walking the
//! DAG once: an artifact met a second time (update@i reaches update@(i−1) through four
//! inputs) is shown as a reference to its first appearance (`"seen": true`) instead of
//! again, so the output grows with the number of artifacts, not with the number of paths.
//! Each input record's digest is checked against the artifact now in the store, so a
//! `run --force` replacement with other bytes shows as `"digest_mismatch"` instead of
//! passing for the original.
use std::collections::{HashMap, HashSet};
use std::io::Write;

use serde::Serialize;

use crate::engine::Engine;
use crate::store::key::FileDigest;
use crate::store::{Artifact, Digest, Key};

/// What `lineage --json` prints: the root artifact's node, recursively.
#[derive(Debug, Clone, Serialize)]
pub struct LineageNode {
    /// `stage@iteration`, or the stage for once-per-run nodes.
    pub node: String,
    /// The role under which the parent consumed this artifact; absent on the root.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    pub stage: String,
    pub key: Key,
    /// Either the artifact walked (`content_digest`, `inputs`, `sources`) or one marker
    /// field saying why it is not (`missing`, `digest_mismatch`, `seen`).
    #[serde(flatten)]
    pub body: LineageBody,
}

/// The rest of a [`LineageNode`]: exactly one of these shapes.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum LineageBody {
    /// The artifact is in the store with the recorded digest, met for the first time.
    Walked {
        content_digest: Digest,
        /// Its inputs, in manifest order.
        inputs: Vec<LineageNode>,
        /// The files it read from outside the store: `{"name", "sha256"}`.
        sources: Vec<FileDigest>,
    },
    /// `"missing": true`: no artifact under the recorded key.
    Missing { missing: bool },
    /// The store holds other bytes under the recorded key than the ones consumed.
    DigestMismatch { digest_mismatch: DigestMismatch },
    /// `"seen": true`: already shown above.
    Seen { seen: bool },
}

/// The two digests of a replaced input.
#[derive(Debug, Clone, Serialize)]
pub struct DigestMismatch {
    /// The digest the consumer recorded.
    pub recorded: Digest,
    /// The digest of the artifact now in the store.
    pub in_store: Digest,
}

/// The lineage of the artifact `reference` names.
pub fn lineage_of(engine: &Engine<'_>, reference: &str) -> anyhow::Result<LineageNode> {
    // One scan of the store serves finding the artifact and every input of the walk.
    let all = engine.store.scan()?;
    let index: Index = all.iter().map(|a| ((a.manifest.stage.clone(), a.manifest.key.to_string()), a.clone())).collect();
    let a = engine.find_in(reference, all)?;
    Ok(lineage_indexed(&index, &a))
}

/// Every artifact of a store by (stage, key).
type Index = HashMap<(String, String), Artifact>;

/// The artifact's ancestry as a tree (see the module docs).
fn lineage_indexed(index: &Index, a: &Artifact) -> LineageNode {
    let mut seen: HashSet<(String, String)> = HashSet::new();
    seen.insert((a.manifest.stage.clone(), a.manifest.key.to_string()));
    lineage_walk(index, a, None, &mut seen)
}

fn lineage_walk(index: &Index, a: &Artifact, role: Option<String>, seen: &mut HashSet<(String, String)>) -> LineageNode {
    let mut inputs = Vec::new();
    for rec in &a.manifest.inputs {
        let id = (rec.stage.clone(), rec.key.to_string());
        let marker = |body| LineageNode { node: rec.node.clone(), role: Some(rec.role.clone()), stage: rec.stage.clone(), key: rec.key.clone(), body };
        let child = match index.get(&id) {
            None => marker(LineageBody::Missing { missing: true }),
            Some(c) if c.manifest.content_digest != rec.digest => marker(LineageBody::DigestMismatch {
                digest_mismatch: DigestMismatch { recorded: rec.digest.clone(), in_store: c.manifest.content_digest.clone() },
            }),
            Some(_) if seen.contains(&id) => marker(LineageBody::Seen { seen: true }),
            Some(c) => {
                seen.insert(id);
                lineage_walk(index, c, Some(rec.role.clone()), seen)
            }
        };
        inputs.push(child);
    }
    let m = &a.manifest;
    let body = LineageBody::Walked { content_digest: m.content_digest.clone(), inputs, sources: m.components.files.clone() };
    LineageNode { node: m.node.clone(), role, stage: m.stage.clone(), key: m.key.clone(), body }
}

fn short(k: &str) -> &str {
    &k[..k.len().min(12)]
}

impl LineageNode {
    /// The tree, two spaces of indent per level: `role: node key` (with a note for a missing,
    /// replaced or already shown input), then the node's sources and inputs.
    pub fn write_text(&self, out: &mut impl Write) -> std::io::Result<()> {
        self.write_tree(out, 0)
    }

    fn write_tree(&self, out: &mut impl Write, depth: usize) -> std::io::Result<()> {
        let pad = "  ".repeat(depth);
        let role = self.role.as_ref().map_or(String::new(), |r| format!("{r}: "));
        let note = match &self.body {
            LineageBody::Missing { .. } => "  (not in store)",
            LineageBody::DigestMismatch { .. } => "  (REPLACED: the store holds other bytes under this key than the ones this artifact was built from)",
            LineageBody::Seen { .. } => "  (see above)",
            LineageBody::Walked { .. } => "",
        };
        writeln!(out, "{pad}{role}{} {}{note}", self.node, short(self.key.as_str()))?;
        if let LineageBody::Walked { inputs, sources, .. } = &self.body {
            for s in sources {
                writeln!(out, "{pad}  source {} sha256 {}", s.name, short(&s.sha256))?;
            }
            for i in inputs {
                i.write_tree(out, depth + 1)?;
            }
        }
        Ok(())
    }
}
