//! The `verify` verb: recheck artifact digests (one REF, or `--all` with the directories
//! named like artifacts that are not valid ones); `--recompute` re-executes each sound
//! artifact's node and compares the bytes. The CLI exits 1 when [`VerifyOutput::bad`] is
//! not zero.
use std::io::Write;
use std::path::PathBuf;

use anyhow::bail;
use serde::Serialize;

use crate::engine::Engine;
use crate::store::{Artifact, Key};

/// What `verify --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyOutput {
    /// Every artifact checked, in store order.
    pub artifacts: Vec<ArtifactCheck>,
    /// With `--all`: directories named like artifacts that are not valid ones (a corrupt
    /// manifest, a crash halfway through an old gc); `run` and `gc` repair them. Empty for
    /// a single REF.
    pub leftovers: Vec<LeftoverCheck>,
}

/// One artifact's check.
#[derive(Debug, Clone, Serialize)]
pub struct ArtifactCheck {
    pub node: String,
    pub stage: String,
    pub key: Key,
    /// Whether every file matches its manifest digest.
    pub ok: bool,
    /// One sentence per mismatch.
    pub problems: Vec<String>,
    /// With `--recompute` on an artifact without problems: the comparison; null otherwise.
    pub recompute: Option<Recompute>,
}

/// The bytes of a re-execution against the stored artifact.
#[derive(Debug, Clone, Serialize)]
pub struct Recompute {
    pub identical: bool,
    /// Files whose digests differ.
    pub differing_files: Vec<String>,
    /// For each of `differing_files`, where it first differs (`store::diff`: column and row,
    /// tensor, or byte offset).
    pub differences: Vec<String>,
}

/// A directory in the store that is not a valid artifact.
#[derive(Debug, Clone, Serialize)]
pub struct LeftoverCheck {
    pub dir: PathBuf,
    /// What is wrong with it.
    pub problem: String,
}

/// Verify the artifact `reference` names, or with `all` every artifact of the store and its
/// leftovers; `on_artifact` gets each check as it is done (the text output prints them as
/// they come, since `recompute` takes as long as the node).
pub fn verify(
    engine: &Engine<'_>,
    reference: Option<&str>,
    all: bool,
    recompute: bool,
    on_artifact: &mut dyn FnMut(&ArtifactCheck),
) -> anyhow::Result<VerifyOutput> {
    let targets: Vec<Artifact> = match (reference, all) {
        (Some(r), false) => vec![engine.find(r)?],
        (None, true) => engine.store.scan()?,
        _ => bail!("verify takes a REF or --all"),
    };
    let mut artifacts = Vec::new();
    for a in &targets {
        let problems: Vec<String> = a.verify_all().iter().map(|e| e.to_string()).collect();
        let mut rec = None;
        if recompute && problems.is_empty() {
            let cmp = engine.recompute(a)?;
            let (differing_files, differences) = cmp.into_iter().filter_map(|(f, d)| d.map(|d| (f, d))).unzip::<_, _, Vec<_>, Vec<_>>();
            rec = Some(Recompute { identical: differing_files.is_empty(), differing_files, differences });
        }
        let check = ArtifactCheck {
            node: a.manifest.node.clone(),
            stage: a.manifest.stage.clone(),
            key: a.manifest.key.clone(),
            ok: problems.is_empty(),
            problems,
            recompute: rec,
        };
        on_artifact(&check);
        artifacts.push(check);
    }
    let leftovers = if all { engine.store.leftovers()? } else { Vec::new() };
    let leftovers = leftovers.into_iter().map(|l| LeftoverCheck { dir: l.dir, problem: l.reason }).collect();
    Ok(VerifyOutput { artifacts, leftovers })
}

impl ArtifactCheck {
    /// Whether the artifact is corrupt or recomputes to other bytes.
    pub fn bad(&self) -> bool {
        !self.ok || self.recompute.as_ref().is_some_and(|r| !r.identical)
    }

    /// `ok`/`CORRUPT`, node, `stage/key`, then one indented line per problem and the
    /// recompute result.
    pub fn write_text(&self, out: &mut impl Write) -> std::io::Result<()> {
        let status = if self.ok { "ok" } else { "CORRUPT" };
        writeln!(out, "{status:<8} {:<12} {}/{}", self.node, self.stage, self.key.short())?;
        for p in &self.problems {
            writeln!(out, "    {p}")?;
        }
        if let Some(r) = &self.recompute {
            let differs = serde_json::to_string(&r.differing_files).map_err(std::io::Error::other)?;
            writeln!(out, "    recompute: {}", if r.identical { "identical bytes".to_string() } else { format!("DIFFERS in {differs}") })?;
            for (file, d) in r.differing_files.iter().zip(&r.differences) {
                writeln!(out, "      {file}: {d}")?;
            }
        }
        Ok(())
    }
}

impl VerifyOutput {
    /// How many artifacts are bad, plus the leftovers.
    pub fn bad(&self) -> usize {
        self.artifacts.iter().filter(|a| a.bad()).count() + self.leftovers.len()
    }

    /// The whole text output: each artifact (as [`ArtifactCheck::write_text`]), then the
    /// leftovers.
    pub fn write_text(&self, out: &mut impl Write) -> std::io::Result<()> {
        for a in &self.artifacts {
            a.write_text(out)?;
        }
        self.write_leftovers_text(out)
    }

    /// The leftovers' part of the text output (the CLI prints the artifacts as they are
    /// checked).
    pub fn write_leftovers_text(&self, out: &mut impl Write) -> std::io::Result<()> {
        for l in &self.leftovers {
            writeln!(out, "CORRUPT  {}\n    {}", l.dir.display(), l.problem)?;
        }
        Ok(())
    }
}
