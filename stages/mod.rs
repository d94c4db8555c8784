//! The stage API and the one registry of stage kinds; the engine (src/engine.rs) looks
//! kinds up here and runs them with a [`StageContext`].
//!
//! # Writing a stage
//! A stage is one thin file: decode params, read inputs, call `src/`, write outputs.
//! Inputs are wired by the plan (src/plan.rs lists each node's roles); a stage only asks
//! its context for them by role. Every input file is digest-checked against its manifest
//! before the stage may open it.
//! ```ignore
//! use crate::schema::prep::{PrepRow, PrepSchema};
//! use crate::schema::seeds::SeedsSchema;
//! use super::{Stage, StageContext};
//!
//! pub struct Example;
//! /// Bump when this stage's output for the same inputs would change.
//! pub const VERSION: u32 = 1;
//! impl Stage for Example {
//!     fn kind(&self) -> &'static str { "example" }
//!     fn version(&self) -> u32 { VERSION }
//!     fn run(&self, ctx: &mut StageContext<'_>) -> anyhow::Result<()> {
//!         let params = &ctx.spec.raw.prep;                        // typed params
//!         let seeds = ctx.read_parquet::<SeedsSchema>("dataset")?; // verified input
//!         let policy_dir = ctx.input_file("policy", "model.safetensors")?; // any file, verified
//!         let mut rng = ctx.rng(0);                                // rng_for(seed, kind, iteration, row 0)
//!         let bar = ctx.progress(seeds.len() as u64, "scoring");
//!         let rows: Vec<PrepRow> = Vec::new();
//!         for _s in &seeds { ctx.check_cancelled()?; bar.inc(1); }
//!         ctx.output.write_parquet::<PrepSchema>(&rows)?;          // prep.parquet, rows recorded
//!         let path = ctx.output.path("policy.safetensors")?;        // written by another library
//!         std::fs::write(&path, b"...")?;
//!         ctx.output.metric("loss", 0.25);                          // shown by `log`
//!         Ok(())
//!     }
//! }
//! ```
//! Then register it in [`REGISTRY`]: `StageEntry { kind: "example", version: example::VERSION,
//! implementation: Some(&example::Example), missing: "" }`.
//!
//! Errors: stages return `anyhow::Result` because they glue many libraries together; the
//! engine adds the node name. A failed stage publishes nothing.
pub mod base;
pub mod dataset;
pub mod eval;
pub mod judge;
pub mod judge_fit;
pub mod prep;
pub mod rollout;
pub mod sft_data;
pub mod update;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context};
use rand_chacha::ChaCha8Rng;

use crate::schema::ArtifactSchema;
use crate::spec::{Device, Spec};
use crate::store::{is_safe_file_name, Artifact, FileEntry, Key};

/// One stage kind's implementation.
pub trait Stage: Send + Sync {
    /// Kind name (`prep`), the `stage` of `stage@iteration`.
    fn kind(&self) -> &'static str;
    /// The stage's `VERSION` constant (enters its keys).
    fn version(&self) -> u32;
    /// Compute the node's outputs into `ctx.output`.
    fn run(&self, ctx: &mut StageContext<'_>) -> anyhow::Result<()>;
}

/// A registry row: a kind, its version, and its implementation or what is missing.
pub struct StageEntry {
    pub kind: &'static str,
    pub version: u32,
    /// `None`: registered but not built yet; `run` stops at the first such node.
    pub implementation: Option<&'static dyn Stage>,
    /// For unbuilt kinds: which issue/stage brings it.
    pub missing: &'static str,
}

/// Every stage kind of the DAG (DESIGN.md). Unbuilt kinds still appear in `plan`/`status`.
pub static REGISTRY: &[StageEntry] = &[
    StageEntry { kind: "dataset", version: dataset::VERSION, implementation: Some(&dataset::Dataset), missing: "" },
    StageEntry { kind: "base", version: base::VERSION, implementation: Some(&base::Base), missing: "" },
    StageEntry { kind: "judge-fit", version: judge_fit::VERSION, implementation: Some(&judge_fit::JudgeFit), missing: "" },
    StageEntry { kind: "sft-data", version: sft_data::VERSION, implementation: Some(&sft_data::SftData), missing: "" },
    StageEntry { kind: "prep", version: prep::VERSION, implementation: Some(&prep::Prep), missing: "" },
    StageEntry { kind: "rollout", version: rollout::VERSION, implementation: Some(&rollout::Rollout), missing: "" },
    StageEntry { kind: "judge", version: judge::VERSION, implementation: Some(&judge::JudgeStage), missing: "" },
    StageEntry { kind: "update", version: update::VERSION, implementation: Some(&update::Update), missing: "" },
    StageEntry { kind: "eval", version: eval::VERSION, implementation: Some(&eval::Eval), missing: "" },
];

/// The registry row of a kind.
pub fn lookup(kind: &str) -> Option<&'static StageEntry> {
    REGISTRY.iter().find(|e| e.kind == kind)
}

/// An input artifact as the stage sees it.
pub struct InputArtifact {
    pub role: &'static str,
    /// Producing node (`update@2`).
    pub node: String,
    pub artifact: Artifact,
}

impl InputArtifact {
    /// The artifact directory inside the store (read-only for the stage).
    pub fn dir(&self) -> &std::path::Path {
        &self.artifact.dir
    }
    pub fn manifest(&self) -> &crate::store::Manifest {
        &self.artifact.manifest
    }
}

/// Progress of a long loop: an indicatif bar on a TTY, nothing otherwise.
pub struct Progress {
    bar: indicatif::ProgressBar,
}

impl Progress {
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
    }
    pub fn set_message(&self, msg: impl Into<String>) {
        self.bar.set_message(msg.into());
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// Where a stage writes its outputs: a staging directory published by the engine.
pub struct OutputWriter {
    dir: PathBuf,
    files: BTreeMap<String, FileEntry>,
    metrics: serde_json::Map<String, serde_json::Value>,
    timing: BTreeMap<String, f64>,
    verdict_judges: std::collections::BTreeSet<String>,
}

/// What a stage's run left in its [`OutputWriter`], for the manifest.
pub(crate) struct OutputParts {
    pub files: Vec<FileEntry>,
    pub metrics: serde_json::Map<String, serde_json::Value>,
    pub timing: BTreeMap<String, f64>,
    pub verdict_judges: Vec<String>,
}

impl OutputWriter {
    pub(crate) fn new(dir: PathBuf) -> Self {
        OutputWriter { dir, files: BTreeMap::new(), metrics: serde_json::Map::new(), timing: BTreeMap::new(), verdict_judges: Default::default() }
    }

    /// Record that this stage judged through the verdict cache with `judge` (the manifest's
    /// `verdict_judges`, which `gc` uses to keep that judge's cache entries).
    pub fn used_verdict_cache(&mut self, judge: &crate::judge::JudgeKey) {
        self.verdict_judges.insert(judge.0.clone());
    }

    fn entry(&mut self, name: &str) -> anyhow::Result<&mut FileEntry> {
        if !is_safe_file_name(name) {
            bail!("output file name {name:?} is not a plain file name");
        }
        Ok(self.files.entry(name.to_string()).or_insert_with(|| FileEntry {
            name: name.to_string(),
            blake3: crate::store::Digest::from_hash(blake3::hash(b"")),
            bytes: 0,
            rows: None,
            schema: None,
        }))
    }

    /// Write rows as `S::NAME.parquet` with the fixed writer properties; rows recorded.
    pub fn write_parquet<S: ArtifactSchema>(&mut self, rows: &[S::Row]) -> anyhow::Result<()> {
        self.write_parquet_as::<S>(&S::file_name(), rows)
    }

    /// Write rows under another file name (several files of one schema).
    pub fn write_parquet_as<S: ArtifactSchema>(&mut self, name: &str, rows: &[S::Row]) -> anyhow::Result<()> {
        let path = self.path(name)?;
        crate::schema::write_parquet::<S>(&path, rows)?;
        let e = self.entry(name)?;
        e.rows = Some(rows.len() as u64);
        e.schema = Some(S::tag());
        Ok(())
    }

    /// Path of an output file for code that writes it itself (safetensors, JSON).
    pub fn path(&mut self, name: &str) -> anyhow::Result<PathBuf> {
        self.entry(name)?;
        Ok(self.dir.join(name))
    }

    /// Write a whole file.
    pub fn write_bytes(&mut self, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let p = self.path(name)?;
        std::fs::write(&p, bytes).with_context(|| format!("write {}", p.display()))
    }

    /// Record the row count of a non-Parquet file.
    pub fn set_rows(&mut self, name: &str, rows: u64) -> anyhow::Result<()> {
        self.entry(name)?.rows = Some(rows);
        Ok(())
    }

    /// Record a metric (shown by `log`, kept in the manifest).
    pub fn metric(&mut self, name: &str, value: impl serde::Serialize) {
        let v = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
        self.metrics.insert(name.to_string(), v);
    }

    /// Record the seconds a named part of the work took (kept in the manifest's `timing`,
    /// never in metrics: metrics are outputs and must not change between identical reruns).
    pub fn time_part(&mut self, name: &str, seconds: f64) {
        self.timing.insert(name.to_string(), seconds);
    }

    pub(crate) fn into_parts(self) -> OutputParts {
        OutputParts { files: self.files.into_values().collect(), metrics: self.metrics, timing: self.timing, verdict_judges: self.verdict_judges.into_iter().collect() }
    }
}

/// Everything a stage may use while it runs.
pub struct StageContext<'a> {
    /// `stage@iteration`.
    pub node: String,
    pub iteration: Option<u32>,
    /// The run seed.
    pub seed: u64,
    pub key: Key,
    /// The validated spec; a stage reads its own section (`ctx.spec.raw.rollout`).
    pub spec: &'a Spec,
    /// The canonical key params of this node (what its key saw).
    pub params: &'a serde_json::Value,
    pub device: Device,
    pub threads: u32,
    pub output: OutputWriter,
    pub(crate) inputs: Vec<InputArtifact>,
    pub(crate) verified: Mutex<BTreeMap<(String, String), PathBuf>>,
    pub(crate) cancel: &'a AtomicBool,
    /// Bars of this run (drawn on stderr only when it is a TTY).
    pub(crate) bars: indicatif::MultiProgress,
    /// Root of the store the node publishes into (for store-level caches, never for keys).
    pub(crate) store_root: PathBuf,
}

impl StageContext<'_> {
    /// The input filling `role`.
    pub fn input(&self, role: &str) -> anyhow::Result<&InputArtifact> {
        self.inputs.iter().find(|i| i.role == role).ok_or_else(|| {
            let roles: Vec<&str> = self.inputs.iter().map(|i| i.role).collect();
            anyhow!("{}: no input role {role:?} (this node has: {})", self.node, roles.join(", "))
        })
    }

    /// Path of an input file after checking its bytes against the manifest (once per run).
    pub fn input_file(&self, role: &str, file: &str) -> anyhow::Result<PathBuf> {
        let input = self.input(role)?;
        let k = (role.to_string(), file.to_string());
        if let Some(p) = self.verified.lock().expect("verified-file cache lock poisoned").get(&k) {
            return Ok(p.clone());
        }
        let p = input.artifact.verify_file(file).with_context(|| format!("{}: refusing input {role} ({})", self.node, input.node))?;
        self.verified.lock().expect("verified-file cache lock poisoned").insert(k, p.clone());
        Ok(p)
    }

    /// Rows of the input's `S::NAME.parquet`, verified.
    pub fn read_parquet<S: ArtifactSchema>(&self, role: &str) -> anyhow::Result<Vec<S::Row>> {
        self.read_parquet_from::<S>(role, &S::file_name())
    }

    /// Rows of a named Parquet file of an input, verified.
    pub fn read_parquet_from<S: ArtifactSchema>(&self, role: &str, file: &str) -> anyhow::Result<Vec<S::Row>> {
        let p = self.input_file(role, file)?;
        Ok(crate::schema::read_parquet::<S>(&p)?)
    }

    /// The generator for row `row` of this node: `plan::rng_for(seed, kind, iteration, row)`.
    /// Not seeded by the key: a knob in the key that changes no output (a batch size) must not
    /// change any draw either. The kind is the node name before `@` (`NodeId`'s display).
    pub fn rng(&self, row: u64) -> ChaCha8Rng {
        let kind = self.node.split('@').next().unwrap_or(&self.node);
        crate::plan::rng_for(self.seed, kind, self.iteration, row)
    }

    /// A progress bar of `total` steps (drawn only on a TTY).
    pub fn progress(&self, total: u64, message: &str) -> Progress {
        let bar = self.bars.add(indicatif::ProgressBar::new(total));
        if let Ok(style) = indicatif::ProgressStyle::with_template("{prefix} {msg} [{bar:30}] {pos}/{len} {eta}") {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(self.node.clone());
        bar.set_message(message.to_string());
        Progress { bar }
    }

    /// The store root. Stages may keep caches under a dot-directory there (the judge's
    /// `.verdict-cache`): store scans only list stage directories, so `gc`/`verify`/`status`
    /// never see them.
    pub fn store_root(&self) -> &std::path::Path {
        &self.store_root
    }

    /// The Ctrl-C flag, for long calls that check it themselves
    /// (`Policy::generate_interruptible` checks it before every decoding step).
    pub fn interrupt_flag(&self) -> &AtomicBool {
        self.cancel
    }

    /// Err after Ctrl-C, so long loops can stop cleanly (nothing is published).
    pub fn check_cancelled(&self) -> anyhow::Result<()> {
        if self.cancel.load(Ordering::Relaxed) {
            bail!("{}: interrupted", self.node);
        }
        Ok(())
    }
}
