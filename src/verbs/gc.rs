//! The `gc` verb: remove the artifacts no plan of the current spec reaches (with
//! 1..=N iterations), optionally keeping the newest of each node and thinning older
//! policies, and sweep the verdict cache of judges no remaining artifact names.
use std::io::Write;

use serde::Serialize;

use crate::engine::{Engine, VerdictCacheGc};
use crate::store::{Artifact, Key};

/// What `gc --json` prints.
#[derive(Debug, Serialize)]
pub struct GcOutput {
    /// Whether this was `--dry-run` (then nothing was removed: the lists say what would be).
    pub dry_run: bool,
    /// The artifacts removed.
    pub removed: Vec<ArtifactRef>,
    /// The policies whose weights and optimizer state `--thin` deleted.
    pub thinned: Vec<ArtifactRef>,
    /// The verdict-cache sweep: `live_judges`, `sweep` (null when there is no cache or it was
    /// left alone; else counts `removed`, `corrupt`, `temp_files`, `kept`, `removed_bytes`)
    /// and `skipped` (why it was left alone, or null).
    pub verdict_cache: VerdictCacheGc,
}

/// An artifact by node, stage and key.
#[derive(Debug, Clone, Serialize)]
pub struct ArtifactRef {
    pub node: String,
    pub stage: String,
    pub key: Key,
}

impl From<&Artifact> for ArtifactRef {
    fn from(a: &Artifact) -> Self {
        ArtifactRef { node: a.manifest.node.clone(), stage: a.manifest.stage.clone(), key: a.manifest.key.clone() }
    }
}

/// Collect garbage in `engine`'s store, keeping what any plan of up to
/// `engine.plan.iterations` iterations reaches (see `Engine::gc`). A store that does not
/// exist yet has nothing to collect.
pub fn gc(engine: &Engine<'_>, keep_last: usize, thin: bool, dry_run: bool) -> anyhow::Result<GcOutput> {
    let report = if engine.store.root().exists() { engine.gc(engine.plan.iterations, keep_last, thin, dry_run)? } else { Default::default() };
    let list = |v: &[Artifact]| v.iter().map(ArtifactRef::from).collect::<Vec<_>>();
    Ok(GcOutput { dry_run, removed: list(&report.removed), thinned: list(&report.thinned), verdict_cache: report.verdict_cache })
}

impl GcOutput {
    /// One line per removed and thinned artifact, the counts, and the verdict-cache sweep.
    pub fn write_text(&self, out: &mut impl Write) -> std::io::Result<()> {
        let dry_run = self.dry_run;
        for a in &self.removed {
            writeln!(out, "{} {:<12} {}/{}", if dry_run { "would remove" } else { "removed" }, a.node, a.stage, a.key.short())?;
        }
        for a in &self.thinned {
            writeln!(out, "{} {:<12} {}/{}", if dry_run { "would thin" } else { "thinned" }, a.node, a.stage, a.key.short())?;
        }
        writeln!(out, "{} artifact(s) {}, {} thinned", self.removed.len(), if dry_run { "would be removed" } else { "removed" }, self.thinned.len())?;
        let vc = &self.verdict_cache;
        if let Some(why) = &vc.skipped {
            writeln!(out, "verdict cache left alone: {why}")?;
        } else if let Some(s) = &vc.sweep {
            let verb = if dry_run { "would remove" } else { "removed" };
            writeln!(
                out,
                "verdict cache: {verb} {} entr(ies) of judges no artifact names, {} corrupt, {} temp file(s) ({} bytes); kept {} of {} live judge(s)",
                s.removed, s.corrupt, s.temp_files, s.removed_bytes, s.kept, vc.live_judges
            )?;
        }
        Ok(())
    }
}
