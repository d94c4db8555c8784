//! The stage API and the one list of stage kinds ([`StageKind`]); the engine (src/engine.rs)
//! runs a node by `kind.run(spec, ctx)`, which builds the stage's typed `Params` from the spec
//! and hands the stage only those and a [`StageContext`] (its inputs, its output, its seed).
//!
//! # Writing a stage
//! A stage is one thin file with four items: `VERSION`, a `Params` struct with everything
//! it reads from the spec, `params(&Spec) -> Params`, and `run(&Params, ctx)`. `Params::key`
//! is what enters the node's key: every field, except those its doc comment lists as left
//! out (paths: a file enters the key by its sha256 instead; speed-only knobs). A stage never
//! sees the whole spec, so it cannot read a setting that its key does not hold.
//! Inputs are wired by the plan (src/plan.rs lists each node's roles); a stage only asks
//! its context for them by role. Every input file is digest-checked against its manifest
//! before the stage may open it.
//! ```ignore
//! use crate::schema::prep::{PrepRow, PrepSchema};
//! use crate::schema::seeds::SeedsSchema;
//! use super::StageContext;
//!
//! /// Bump when this stage's output for the same inputs would change.
//! pub const VERSION: u32 = 1;
//! /// Everything `run` reads from the spec; all of it enters the key.
//! #[derive(Debug, Clone, serde::Serialize)]
//! pub struct Params { pub draws: u32 }
//! impl Params { pub fn key(&self) -> serde_json::Value { super::to_key(self) } }
//! pub fn params(spec: &crate::spec::Spec) -> Params { Params { draws: spec.raw.prep.seeds_per_iteration } }
//! pub fn run(p: &Params, ctx: &mut StageContext<'_>) -> anyhow::Result<()> {
//!     let seeds = ctx.read_parquet::<SeedsSchema>("dataset")?; // verified input
//!     let policy_dir = ctx.input_file("policy", "model.safetensors")?; // any file, verified
//!     let mut rng = ctx.rng(0);                                // rng_for(seed, kind, iteration, row 0)
//!     let bar = ctx.progress(seeds.len() as u64, "scoring");
//!     let rows: Vec<PrepRow> = Vec::new();
//!     for _s in &seeds { ctx.check_cancelled()?; bar.inc(1); }
//!     ctx.output.write_parquet::<PrepSchema>(&rows)?;          // prep.parquet, rows recorded
//!     let path = ctx.output.path("policy.safetensors")?;        // written by another library
//!     std::fs::write(&path, b"...")?;
//!     ctx.output.metric("loss", 0.25);                          // shown by `log`
//!     Ok(())
//! }
//! ```
//! Then add a variant to [`StageKind`] and one arm to each of its `match`es.
//!
//! Two crates compile this file (docs/executor.md, "Two binaries"): `VERSION`, `Params`,
//! `params` and the key are in both, because the libtorch-free engine computes keys; `run`
//! and whatever only it uses (model, RL, judge construction) are `#[cfg(feature = "compute")]`
//! (most stage files group those imports in one gated `use {…}`).
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

/// Every stage kind of the DAG, in the order of the node table of docs/design.md "The DAG".
/// The name (`judge-fit`) is the `stage` of `stage@iteration` and the store's directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StageKind {
    Dataset,
    Base,
    JudgeFit,
    SftData,
    Prep,
    Rollout,
    Judge,
    Update,
    Eval,
}

impl StageKind {
    pub const ALL: [StageKind; 9] = [
        StageKind::Dataset,
        StageKind::Base,
        StageKind::JudgeFit,
        StageKind::SftData,
        StageKind::Prep,
        StageKind::Rollout,
        StageKind::Judge,
        StageKind::Update,
        StageKind::Eval,
    ];

    pub fn name(self) -> &'static str {
        match self {
            StageKind::Dataset => "dataset",
            StageKind::Base => "base",
            StageKind::JudgeFit => "judge-fit",
            StageKind::SftData => "sft-data",
            StageKind::Prep => "prep",
            StageKind::Rollout => "rollout",
            StageKind::Judge => "judge",
            StageKind::Update => "update",
            StageKind::Eval => "eval",
        }
    }

    pub fn parse(name: &str) -> Option<StageKind> {
        StageKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The stage's `VERSION` (enters its keys).
    pub fn version(self) -> u32 {
        match self {
            StageKind::Dataset => dataset::VERSION,
            StageKind::Base => base::VERSION,
            StageKind::JudgeFit => judge_fit::VERSION,
            StageKind::SftData => sft_data::VERSION,
            StageKind::Prep => prep::VERSION,
            StageKind::Rollout => rollout::VERSION,
            StageKind::Judge => judge::VERSION,
            StageKind::Update => update::VERSION,
            StageKind::Eval => eval::VERSION,
        }
    }

    /// The key parameters of this kind's nodes: `<stage>::params(spec).key()`.
    pub fn key_params(self, spec: &Spec) -> serde_json::Value {
        match self {
            StageKind::Dataset => dataset::params(spec).key(),
            StageKind::Base => base::params(spec).key(),
            StageKind::JudgeFit => judge_fit::params(spec).key(),
            StageKind::SftData => sft_data::params(spec).key(),
            StageKind::Prep => prep::params(spec).key(),
            StageKind::Rollout => rollout::params(spec).key(),
            StageKind::Judge => judge::params(spec).key(),
            StageKind::Update => update::params(spec).key(),
            StageKind::Eval => eval::params(spec).key(),
        }
    }

    /// Compute a node of this kind into `ctx.output`: the stage sees its `Params` (built
    /// from `spec` here) and its context, never the spec itself.
    #[cfg(feature = "compute")]
    pub(crate) fn run(self, spec: &Spec, ctx: &mut StageContext<'_>) -> anyhow::Result<()> {
        tch::set_num_threads(ctx.threads as i32);
        match self {
            StageKind::Dataset => dataset::run(&dataset::params(spec), ctx),
            StageKind::Base => base::run(&base::params(spec), ctx),
            StageKind::JudgeFit => judge_fit::run(&judge_fit::params(spec), ctx),
            StageKind::SftData => sft_data::run(&sft_data::params(spec), ctx),
            StageKind::Prep => prep::run(&prep::params(spec), ctx),
            StageKind::Rollout => rollout::run(&rollout::params(spec), ctx),
            StageKind::Judge => judge::run(&judge::params(spec), ctx),
            StageKind::Update => update::run(&update::params(spec), ctx),
            StageKind::Eval => eval::run(&eval::params(spec), ctx),
        }
    }
}

impl std::fmt::Display for StageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The JSON of a params value (every stage's `Params::key` starts here).
pub fn to_key<T: serde::Serialize>(t: &T) -> serde_json::Value {
    serde_json::to_value(t).expect("stage params are plain data")
}

/// Remove `sources_dir`, every `path` (paths never enter keys) and every `sha256` (pinned
/// files enter the key once, as the `files` component, so `explain` names the file).
pub fn strip_paths(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.remove("sources_dir");
            m.remove("path");
            m.remove("sha256");
            for (_, x) in m.iter_mut() {
                strip_paths(x);
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_paths),
        _ => {}
    }
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
    pub fn set_position(&self, n: u64) {
        self.bar.set_position(n);
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
        OutputParts {
            files: self.files.into_values().collect(),
            metrics: self.metrics,
            timing: self.timing,
            verdict_judges: self.verdict_judges.into_iter().collect(),
        }
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

    /// Where this node samples with the policy of input `role`: this process, or the
    /// servers of `generation` with that policy loaded and verified (src/remote/). The base
    /// policy is the servers' startup model: checked first, loaded only when that fails.
    #[cfg(feature = "compute")]
    pub fn generator<'p>(
        &self,
        g: &crate::spec::GenerationParams,
        policy: &'p crate::model::Policy,
        role: &str,
    ) -> anyhow::Result<crate::remote::Generator<'p>> {
        let (dir, version, load) = self.served_policy(role)?;
        crate::remote::Generator::new(g, policy, &self.store_root, dir, &version, load).with_context(|| format!("{}: generation servers", self.node))
    }

    /// Like `generator`, for a second policy on the same servers within this node (the frozen
    /// defender of attacker-only rollouts): reuses `previous`'s hold on the fleet.
    #[cfg(feature = "compute")]
    pub fn next_generator<'p>(
        &self,
        previous: &crate::remote::Generator<'_>,
        policy: &'p crate::model::Policy,
        role: &str,
    ) -> anyhow::Result<crate::remote::Generator<'p>> {
        let (dir, version, load) = self.served_policy(role)?;
        previous.next(policy, &self.store_root, dir, &version, load).with_context(|| format!("{}: generation servers", self.node))
    }

    /// The policy input `role` as servers get it: its artifact directory, its weight version
    /// (`<node>:<key prefix>`) and whether it must be loaded (every policy but the base).
    #[cfg(feature = "compute")]
    fn served_policy(&self, role: &str) -> anyhow::Result<(&std::path::Path, String, bool)> {
        let input = self.input(role)?;
        Ok((input.dir(), format!("{}:{}", input.node, input.manifest().key.short()), !input.node.starts_with("base")))
    }

    /// Sample `prompts` (one seed each) batch by batch as `plan` groups them
    /// (model::batching), with a progress bar and the Ctrl-C check before every decoding step
    /// (between requests on servers); results in input order. `ids` name the rows in the
    /// provenance of server generation.
    #[cfg(feature = "compute")]
    #[allow(clippy::too_many_arguments)]
    pub fn generate(
        &self,
        generator: &crate::remote::Generator<'_>,
        prompts: &[Vec<crate::model::TokenId>],
        seeds: &[u64],
        params: &crate::model::SamplingParams,
        plan: &[Vec<usize>],
        ids: &[String],
        what: &str,
    ) -> anyhow::Result<Vec<crate::model::Sample>> {
        let bar = self.progress(prompts.len() as u64, what);
        generator
            .generate(prompts, seeds, params, plan, ids, self.cancel, &mut |done| bar.set_position(done as u64))
            .with_context(|| format!("{}: sampling {what}", self.node))
    }

    /// Write what server generation recorded (`generation.parquet` and, per policy role and
    /// server, the server in the manifest's metrics); nothing for local generation.
    #[cfg(feature = "compute")]
    pub fn write_generation_provenance(&mut self, generators: &[(&str, &crate::remote::Generator<'_>)]) -> anyhow::Result<()> {
        let mut rows = Vec::new();
        for (role, g) in generators {
            let Some(part) = g.provenance() else { continue };
            for (i, s) in g.servers().iter().enumerate() {
                let at = format!("generation/{role}/server{i}");
                self.output.metric(&format!("{at}/url"), &s.url);
                self.output.metric(&format!("{at}/engine"), format!("{} {}", s.engine.name(), s.engine_version));
                self.output.metric(&format!("{at}/weight_version"), &s.weight_version);
                self.output.metric(&format!("{at}/canary_mean_abs_logprob_diff"), s.canary_mean_abs);
                if let Some((moved, should)) = s.canary_moved {
                    // How far the load moved the server's canary, and how far this runtime
                    // says the policy change moves it.
                    self.output.metric(&format!("{at}/canary_moved_by_load"), moved);
                    self.output.metric(&format!("{at}/canary_policy_change"), should);
                }
                self.output.metric(&format!("{at}/rows"), part.iter().filter(|r| r.server == s.url).count());
            }
            rows.extend(part);
        }
        if generators.iter().all(|(_, g)| g.provenance().is_none()) {
            return Ok(());
        }
        rows.sort_by(|a, b| a.item.cmp(&b.item));
        self.output.write_parquet::<crate::schema::generation::GenerationSchema>(&rows)
    }

    /// The Ctrl-C flag, for long calls that check it themselves
    /// (`Policy::generate_interruptible` before every decoding step, the update's forward passes).
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

/// For every leaf setting of the spec at `file` (a value, or one element of a list): the
/// stage kinds whose key params change when that setting changes, found by changing it
/// (a number up or down, a flag flipped, text extended) to a value the spec still accepts.
/// Settings no stage reads are listed with no kind (run-level: the seed, which is its own
/// key component; threads; speed-only batch sizes; judge connection settings). This is the
/// "which stage reads which params" table of docs/stage-params.md, generated from the code.
pub fn params_table(spec: &Spec) -> Vec<(String, Vec<StageKind>)> {
    use serde_json::Value;
    fn leaves(v: &Value, path: String, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => m.iter().for_each(|(k, x)| leaves(x, if path.is_empty() { k.clone() } else { format!("{path}.{k}") }, out)),
            Value::Array(a) if !a.is_empty() => a.iter().enumerate().for_each(|(i, x)| leaves(x, format!("{path}[{i}]"), out)),
            _ => out.push(path),
        }
    }
    fn slot<'v>(v: &'v mut Value, path: &str) -> &'v mut Value {
        let mut cur = v;
        for part in path.split('.') {
            let (name, index) = match part.split_once('[') {
                Some((n, i)) => (n, Some(i.trim_end_matches(']').parse::<usize>().expect("index"))),
                None => (part, None),
            };
            cur = &mut cur[name];
            if let Some(i) = index {
                cur = &mut cur[i];
            }
        }
        cur
    }
    fn candidates(v: &Value) -> Vec<Value> {
        match v {
            Value::Bool(b) => vec![Value::Bool(!b)],
            Value::Number(n) if n.is_u64() => {
                let n = n.as_u64().expect("u64");
                vec![(n + 1).into(), n.saturating_sub(1).into(), (n * 2).into()]
            }
            Value::Number(n) => {
                let x = n.as_f64().expect("f64");
                [x * 0.5, x + 0.01, x - 0.01, x * 1.5, 1.0].into_iter().filter_map(|y| serde_json::Number::from_f64(y).map(Value::Number)).collect()
            }
            // Text: extended, or another value of one of the spec's enums.
            Value::String(s) => std::iter::once(format!("{s}x"))
                .chain(
                    [
                        "selfplay",
                        "attacker_only",
                        "defender_only",
                        "keywords",
                        "rules",
                        "probe",
                        "general_sum",
                        "zero_sum",
                        "general_sum_all_one",
                        "bf16",
                        "f32",
                        "cuda",
                        "cpu",
                        "harmful",
                        "benign",
                    ]
                    .into_iter()
                    .filter(|e| e != s)
                    .map(String::from),
                )
                .map(Value::String)
                .collect(),
            _ => vec![],
        }
    }
    let base = to_key(&spec.raw);
    let keys = |s: &Spec| StageKind::ALL.map(|k| k.key_params(s));
    let before = keys(spec);
    let mut paths = Vec::new();
    leaves(&base, String::new(), &mut paths);
    let mut table = Vec::new();
    // Paths and pins enter keys as pinned files (by sha256), never as params.
    let file_setting = |p: &str| p.ends_with(".path") || p.ends_with("sha256") || p.ends_with("sources_dir") || p.ends_with("embedder_dir");
    for path in paths.into_iter().filter(|p| !file_setting(p)) {
        let original = slot(&mut base.clone(), &path).clone();
        let changed = candidates(&original).into_iter().find_map(|c| {
            let mut v = base.clone();
            *slot(&mut v, &path) = c;
            let raw: crate::spec::RawSpec = serde_json::from_value(v).ok()?;
            (raw != spec.raw).then(|| Spec::validate(raw, &spec.config_file).ok()).flatten()
        });
        let Some(changed) = changed else { continue };
        let after = keys(&changed);
        table.push((path, StageKind::ALL.into_iter().zip(before.iter().zip(&after)).filter(|(_, (a, b))| a != b).map(|(k, _)| k).collect()));
    }
    table
}

/// [`params_table`] as the Markdown of docs/stage-params.md.
pub fn params_table_markdown(spec: &Spec) -> String {
    let mut s = String::from("| setting | stages whose key it enters |\n|---|---|\n");
    for (path, kinds) in params_table(spec) {
        let kinds: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
        s.push_str(&format!("| `{path}` | {} |\n", if kinds.is_empty() { "— (no stage's params)".to_string() } else { kinds.join(", ") }));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_spec() -> Spec {
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipeline.yaml");
        Spec::from_yaml(&std::fs::read_to_string(&file).expect("pipeline.yaml"), &file).expect("valid")
    }

    #[test]
    fn stage_kind_names_round_trip_and_serialise_as_names() {
        for k in StageKind::ALL {
            assert_eq!(StageKind::parse(k.name()), Some(k));
            assert_eq!(serde_json::to_value(k).expect("json"), serde_json::Value::String(k.name().into()));
        }
        assert_eq!(StageKind::parse("judge_fit"), None);
    }

    /// Which stage reads which setting of the default pipeline, checked against the committed
    /// table (regenerate: `UPDATE_GOLDEN=1 cargo test --lib stage_params_table`). A change
    /// here is a change of some stage's key: bump that stage's VERSION if its outputs change.
    #[test]
    fn stage_params_table_matches_docs() {
        let spec = default_spec();
        let table = params_table(&spec);
        let reads = |path: &str| table.iter().find(|(p, _)| p == path).map(|(_, k)| k.clone()).unwrap_or_else(|| panic!("{path} not in the table"));
        // Each section is in its own stage's key ...
        assert_eq!(reads("prep.harmful_fraction"), [StageKind::Prep]);
        assert_eq!(reads("update.lr"), [StageKind::Update]);
        assert_eq!(reads("sft.demos"), [StageKind::SftData]);
        assert_eq!(reads("reward.remove_ties"), [StageKind::Judge]);
        // ... plus what a stage reads from another section: the judge's game switches, the
        // update's schedule length, the eval's rollout sampling, the judge-fit source groups.
        assert_eq!(reads("rollout.mode"), [StageKind::Rollout, StageKind::Judge, StageKind::Update]);
        assert_eq!(reads("prep.seeds_per_iteration"), [StageKind::Prep, StageKind::Update]);
        assert_eq!(reads("rollout.temperature"), [StageKind::Rollout, StageKind::Eval]);
        assert_eq!(reads("run.iterations"), [StageKind::Update]);
        // Speed-only knobs and the run seed (its own key component) enter no params.
        for p in ["eval.batch_size", "sft.batch_size", "run.threads", "run.seed"] {
            assert!(reads(p).is_empty(), "{p}: {:?}", reads(p));
        }
        let md = params_table_markdown(&spec);
        let doc_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/stage-params.md");
        let doc = std::fs::read_to_string(&doc_path).unwrap_or_default();
        let (head, _) = doc.split_once("| setting |").unwrap_or((doc.as_str(), ""));
        if std::env::var("UPDATE_GOLDEN").is_ok() {
            std::fs::write(&doc_path, format!("{head}{md}")).expect("write docs/stage-params.md");
        } else {
            assert_eq!(
                doc.split_once("| setting |").map(|(_, t)| format!("| setting |{t}")).unwrap_or_default(),
                md,
                "docs/stage-params.md is stale: UPDATE_GOLDEN=1 cargo test --lib stage_params_table"
            );
        }
    }
}
