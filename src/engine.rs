//! Runs a plan against a store: resolves every node's key from its inputs' content digests,
//! skips hits, runs misses in dependency order (`StageKind::run`), publishes each
//! result atomically. Also the queries behind `status`, `explain`, `log`, `gc` and
//! `verify --recompute`. Called by the CLI (src/cli.rs), which does all printing.
//!
//! A run holds the store lock from start to end. Every finished node is published before
//! the next starts, so Ctrl-C, `kill -9` or a crash leaves every finished node intact and
//! nothing half-written that looks complete; `run` again resumes.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;

use crate::executor::{Executor, Job, JOB_VERSION};
use crate::plan::{Node, Plan, PlanError};
use crate::spec::Spec;
use crate::stages::{InputArtifact, OutputWriter, StageContext};
use crate::store::{Artifact, InputRecord, Key, KeyComponents, Manifest, Store, StoreError, Timing};

/// Set by the CLI's Ctrl-C handler; checked between nodes and by `ctx.check_cancelled()`.
pub static CANCEL: AtomicBool = AtomicBool::new(false);

/// Fault injection for the crash tests: a node name pauses `run` after that stage has
/// written its outputs and before publishing (other points: `crate::store::FAILPOINT_ENV`).
pub use crate::store::FAILPOINT_ENV;

/// The message a panic was raised with (`panic!("…")` gives a `String` or a `&str`), for the
/// places that turn a caught panic into an error: a stage, a reader of untrusted files, a
/// generator behind `serve`.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> Option<String> {
    payload.downcast_ref::<String>().cloned().or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
}

/// `gc --thin` removes an artifact's tensor files (an update's weights and optimizer state:
/// 0.5 and 1 GB for SmolLM2-135M); config, tokenizer and metrics files stay.
pub fn thinnable(file: &str) -> bool {
    file.ends_with(".safetensors")
}

/// Errors of running or querying; each names the node concerned.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("{node}: {source}")]
    Source { node: String, source: crate::data::DataError },
    #[error("{node} failed")]
    Stage { node: String, source: anyhow::Error },
    #[error("{node} (key {key}) crashed: {message}; nothing was published — fix the cause and `run` again resumes here")]
    Panicked { node: String, key: String, message: String },
    #[error("{node} (key {key}) failed in its stage process ({status}); nothing was published — `run` again resumes here{}", tail_block(stderr_tail))]
    ChildFailed { node: String, key: String, status: String, stderr_tail: String },
    #[error("cannot run {node}: its input {input} is not built; run without --only/--from, or add {input}")]
    InputNotBuilt { node: String, input: String },
    #[error("interrupted before {node}; finished nodes are kept — `run` again resumes")]
    Interrupted { node: String },
    #[error("{0}")]
    Ref(String),
    #[error(transparent)]
    VerdictCache(#[from] crate::judge::cache::CacheError),
}

type Result<T> = std::result::Result<T, EngineError>;

/// The tail of a child's stderr under a failure message, indented.
fn tail_block(tail: &str) -> String {
    if tail.trim().is_empty() {
        return String::new();
    }
    let lines: Vec<&str> = tail.lines().collect();
    let last = &lines[lines.len().saturating_sub(20)..];
    format!("\n  its stderr ended with:\n    {}", last.join("\n    "))
}

/// A node's cache state.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "lowercase")]
pub enum State {
    Cached,
    /// An artifact of this node exists under another key; the reason says why.
    Stale(String),
    /// Never built.
    Missing(String),
}

impl State {
    pub fn name(&self) -> &'static str {
        match self {
            State::Cached => "cached",
            State::Stale(_) => "stale",
            State::Missing(_) => "missing",
        }
    }
    pub fn reason(&self) -> Option<&str> {
        match self {
            State::Cached => None,
            State::Stale(r) | State::Missing(r) => Some(r),
        }
    }
}

/// A node resolved against the store.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub name: String,
    /// Known when every input is cached.
    pub components: Option<KeyComponents>,
    pub key: Option<Key>,
    pub artifact: Option<Artifact>,
    pub state: State,
}

/// Hit or miss of one node in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Hit,
    Miss,
}

/// One summary line of a run.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    pub node: String,
    pub outcome: Outcome,
    pub key: Key,
    pub content_digest: crate::store::Digest,
    pub seconds: f64,
    pub rows: Option<u64>,
    /// Where a miss's time went, as the stage reported it (manifest `timing.parts`).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub parts: std::collections::BTreeMap<String, f64>,
}

/// What `run` did.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub nodes: Vec<NodeReport>,
}

/// Options of `run`.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub only: Vec<String>,
    pub from: Option<String>,
    pub force: bool,
    /// Nodes computed at once (0 and 1: one at a time). More than one needs the process
    /// executor: independent ready nodes (eval@k beside rollout@k+1) run side by side; no
    /// artifact byte depends on it.
    pub jobs: usize,
}

pub struct Engine<'a> {
    pub spec: &'a Spec,
    pub plan: Plan,
    pub store: Store,
    /// How misses are computed (src/executor.rs); in-process unless set.
    pub executor: Executor,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl<'a> Engine<'a> {
    pub fn new(spec: &'a Spec, plan: Plan, store: Store) -> Self {
        Engine { spec, plan, store, executor: Executor::InProcess }
    }

    /// The newest artifact of every node name in the store.
    pub fn latest_by_node(&self) -> Result<HashMap<String, Artifact>> {
        Ok(Self::latest_of(self.store.scan()?))
    }

    fn latest_of(all: Vec<Artifact>) -> HashMap<String, Artifact> {
        let mut latest: HashMap<String, Artifact> = HashMap::new();
        for a in all {
            let newer = latest.get(&a.manifest.node).is_none_or(|b| a.manifest.timing.started_unix_ms >= b.manifest.timing.started_unix_ms);
            if newer {
                latest.insert(a.manifest.node.clone(), a);
            }
        }
        latest
    }

    fn components_for(&self, node: &Node, done: &HashMap<String, Artifact>) -> std::result::Result<KeyComponents, String> {
        let mut digests = Vec::new();
        for (_, producer) in &node.inputs {
            match done.get(&producer.to_string()) {
                Some(a) => digests.push(a.manifest.content_digest.clone()),
                None => return Err(producer.to_string()),
            }
        }
        Ok(node.components(node.id.kind.version(), self.plan.seed, &digests))
    }

    /// Every plan node's key and state (the `status` verb).
    pub fn resolve(&self) -> Result<Vec<Resolved>> {
        // One scan reads every manifest once; lookups by key then hit this index.
        self.resolve_in(self.store.scan()?)
    }

    /// [`Engine::resolve`] against an already scanned store.
    fn resolve_in(&self, all: Vec<Artifact>) -> Result<Vec<Resolved>> {
        let by_key: HashMap<(String, Key), Artifact> = all.iter().map(|a| ((a.manifest.stage.clone(), a.manifest.key.clone()), a.clone())).collect();
        let latest = Self::latest_of(all);
        let mut done: HashMap<String, Artifact> = HashMap::new();
        let mut out = Vec::new();
        for node in &self.plan.nodes {
            let name = node.name();
            let prior = latest.get(&name);
            let r = match self.components_for(node, &done) {
                Ok(c) => {
                    let key = c.key();
                    let art = by_key.get(&(node.id.kind.name().to_string(), key.clone())).cloned();
                    let state = match (&art, prior) {
                        (Some(_), _) => State::Cached,
                        (None, Some(p)) => State::Stale(explain(&c, &p.manifest.components).into_iter().next().unwrap_or_else(|| "key differs".into())),
                        (None, None) => State::Missing("never built".into()),
                    };
                    if let Some(a) = &art {
                        done.insert(name.clone(), a.clone());
                    }
                    Resolved { name, key: Some(key), components: Some(c), artifact: art, state }
                }
                Err(input) => {
                    let why = format!("input {input} is not cached");
                    let state = if prior.is_some() { State::Stale(why) } else { State::Missing(why) };
                    Resolved { name, key: None, components: None, artifact: None, state }
                }
            };
            out.push(r);
        }
        Ok(out)
    }

    /// One sentence per key component that differs between the node's current key and its
    /// newest artifact in the store.
    pub fn explain_node(&self, name: &str) -> Result<Vec<String>> {
        self.plan.position(name)?;
        let resolved = self.resolve()?;
        let r = resolved.iter().find(|r| r.name == name).expect("position checked");
        let latest = self.latest_by_node()?;
        match (&r.components, &r.state, latest.get(name)) {
            (_, State::Cached, _) => Ok(vec![format!("{name} is cached: its key {} matches the store", r.key.as_ref().map_or("", |k| k.short()))]),
            (Some(c), _, Some(old)) => Ok(explain(c, &old.manifest.components)),
            (None, _, _) => Ok(vec![format!("{name}: {}", r.state.reason().unwrap_or("inputs are not cached"))]),
            (Some(_), _, None) => Ok(vec![format!("{name} has never been built in this store")]),
        }
    }

    /// Verify the pinned sha256 of every file the given nodes read.
    fn verify_sources(&self, nodes: &[usize]) -> Result<()> {
        for &i in nodes {
            let node = &self.plan.nodes[i];
            for f in &node.files {
                crate::data::verify_source(&f.path, &f.sha256)
                    .map_err(|source| EngineError::Source { node: format!("{} ({})", node.name(), f.name), source })?;
            }
        }
        Ok(())
    }

    /// Run the plan (or the selected nodes); `report` gets one line per node as it ends.
    pub fn run(&self, opts: &RunOptions, report: &mut dyn FnMut(&NodeReport)) -> Result<RunSummary> {
        let _lock = self.store.lock()?;
        // Jobs an earlier engine left running on the cluster keep their staging directories
        // (they publish when they end); the run adopts them (src/executor/cluster.rs).
        let keep: Vec<(String, Key)> = match &self.executor {
            Executor::Cluster { scheduler, .. } => {
                crate::executor::cluster::live_claims(scheduler.as_ref(), self.store.root()).into_iter().map(|(c, _)| (c.stage, c.key)).collect()
            }
            _ => Vec::new(),
        };
        self.store.repair_keeping(&keep)?;
        let selected: HashSet<usize> = if opts.only.is_empty() && opts.from.is_none() {
            (0..self.plan.nodes.len()).collect()
        } else {
            let mut s = HashSet::new();
            for n in &opts.only {
                s.insert(self.plan.position(n)?);
            }
            if let Some(f) = &opts.from {
                s.extend(self.plan.downstream_of(f)?);
            }
            s
        };
        // Validate before any work: every pinned file of a node that may run must be there
        // with its sha256.
        let mut to_check: Vec<usize> = Vec::new();
        {
            let empty = HashMap::new();
            for &i in &selected {
                let node = &self.plan.nodes[i];
                if node.files.is_empty() {
                    continue;
                }
                let hit = node.inputs.is_empty() && !opts.force && {
                    let c = self.components_for(node, &empty).expect("no inputs");
                    self.store.load(node.id.kind.name(), &c.key())?.is_some()
                };
                if !hit {
                    to_check.push(i);
                }
            }
        }
        to_check.sort();
        self.verify_sources(&to_check)?;

        let jobs = opts.jobs.max(1);
        if jobs > 1 && matches!(self.executor, Executor::InProcess) {
            return Err(EngineError::Ref(format!("run --jobs {jobs} needs one process per stage; drop --in-process or use --jobs 1")));
        }
        // A scheduler over the plan (in plan order, which is a topological order): a node is
        // decided once its inputs are — a hit, skipped (not selected, or not buildable), or
        // computed — and at most `jobs` computations run at once. With one job this is the
        // plain in-order loop.
        let n = self.plan.nodes.len();
        let mut decided = vec![false; n];
        let mut running: HashSet<usize> = HashSet::new();
        let mut done: HashMap<String, Artifact> = HashMap::new();
        let mut reports: Vec<(usize, NodeReport)> = Vec::new();
        let mut failure: Option<EngineError> = None;
        let (tx, rx) = std::sync::mpsc::channel::<(usize, Result<Artifact>, f64)>();
        std::thread::scope(|scope| -> Result<()> {
            loop {
                let mut progressed = false;
                for i in 0..n {
                    if decided[i] || running.contains(&i) || failure.is_some() {
                        continue;
                    }
                    let node = &self.plan.nodes[i];
                    let name = node.name();
                    // Wait for inputs still being decided or computed.
                    let waiting = node.inputs.iter().any(|(_, p)| self.plan.position(&p.to_string()).is_ok_and(|j| !decided[j] || running.contains(&j)));
                    if waiting {
                        continue;
                    }
                    let is_selected = selected.contains(&i);
                    let components = match self.components_for(node, &done) {
                        Ok(c) => c,
                        // Unselected nodes whose inputs are not built are simply not run; a
                        // selected one is the user's selection error.
                        Err(_) if !is_selected => {
                            decided[i] = true;
                            progressed = true;
                            continue;
                        }
                        Err(input) => {
                            failure = Some(EngineError::InputNotBuilt { node: name, input });
                            break;
                        }
                    };
                    let key = components.key();
                    let cached = self.store.load(node.id.kind.name(), &key)?;
                    if let Some(a) = cached.clone() {
                        if !(is_selected && opts.force) {
                            if is_selected {
                                let r = NodeReport {
                                    node: name.clone(),
                                    outcome: Outcome::Hit,
                                    key: key.clone(),
                                    content_digest: a.manifest.content_digest.clone(),
                                    seconds: 0.0,
                                    rows: a.manifest.total_rows(),
                                    parts: Default::default(),
                                };
                                report(&r);
                                reports.push((i, r));
                            }
                            done.insert(name, a);
                            decided[i] = true;
                            progressed = true;
                            continue;
                        }
                    }
                    if !is_selected {
                        decided[i] = true;
                        progressed = true;
                        continue;
                    }
                    if running.len() >= jobs {
                        continue;
                    }
                    if CANCEL.load(Ordering::Relaxed) {
                        failure = Some(EngineError::Interrupted { node: name });
                        break;
                    }
                    // Inputs whose large files `gc --thin` removed are rebuilt first (same key,
                    // same bytes on this machine kind), so the stage reads them as if nothing
                    // happened.
                    for (_, producer) in &node.inputs {
                        let pname = producer.to_string();
                        if done.get(&pname).is_some_and(|a| !a.manifest.thinned.is_empty()) {
                            let full = self.rehydrate(&done[&pname])?;
                            done.insert(pname, full);
                        }
                    }
                    let inputs = self.input_artifacts(node, &done);
                    let replace = cached.is_some();
                    running.insert(i);
                    progressed = true;
                    let tx = tx.clone();
                    let work = move || {
                        let t0 = Instant::now();
                        let r = self.run_node(node, components, inputs, replace);
                        let _ = tx.send((i, r, t0.elapsed().as_secs_f64()));
                    };
                    if jobs == 1 {
                        work();
                    } else {
                        scope.spawn(work);
                    }
                    break; // re-scan from the start: earlier nodes may be ready now
                }
                if running.is_empty() && (failure.is_some() || (!progressed && decided.iter().all(|d| *d))) {
                    return Ok(());
                }
                if running.is_empty() && !progressed {
                    // Nothing runs and nothing can be decided (cannot happen in a plan whose
                    // order is topological, which `Plan::new` builds).
                    let left: Vec<String> = (0..n).filter(|i| !decided[*i]).map(|i| self.plan.nodes[i].name()).collect();
                    return Err(EngineError::Ref(format!("run: no node can start; waiting: {}", left.join(", "))));
                }
                if !running.is_empty() && (!progressed || running.len() >= jobs || failure.is_some()) {
                    let (i, result, seconds) = rx.recv().expect("a running node always reports");
                    running.remove(&i);
                    decided[i] = true;
                    match result {
                        Ok(a) => {
                            let r = NodeReport {
                                node: self.plan.nodes[i].name(),
                                outcome: Outcome::Miss,
                                key: a.manifest.key.clone(),
                                content_digest: a.manifest.content_digest.clone(),
                                seconds,
                                rows: a.manifest.total_rows(),
                                parts: a.manifest.timing.parts.clone(),
                            };
                            report(&r);
                            reports.push((i, r));
                            done.insert(self.plan.nodes[i].name(), a);
                        }
                        Err(e) => {
                            // The first failure is the run's; nodes already running finish.
                            failure.get_or_insert(e);
                        }
                    }
                }
            }
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        reports.sort_by_key(|(i, _)| *i);
        Ok(RunSummary { nodes: reports.into_iter().map(|(_, r)| r).collect() })
    }

    fn input_artifacts(&self, node: &Node, done: &HashMap<String, Artifact>) -> Vec<InputArtifact> {
        node.inputs
            .iter()
            .map(|(role, p)| InputArtifact { role, node: p.to_string(), artifact: done.get(&p.to_string()).expect("inputs resolved before execute").clone() })
            .collect()
    }

    /// Compute one node with the engine's executor and return its published artifact.
    fn run_node(&self, node: &Node, components: KeyComponents, inputs: Vec<InputArtifact>, replace: bool) -> Result<Artifact> {
        let name = node.name();
        if matches!(self.executor, Executor::InProcess) {
            return self.execute(node, components, inputs, &self.store, replace);
        }
        let key = components.key();
        let abs = |p: &std::path::Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let job = Job {
            job_version: JOB_VERSION,
            node: name.clone(),
            key: key.clone(),
            store: abs(self.store.root()),
            config_file: abs(&self.spec.config_file),
            spec: self.spec.raw.clone(),
            iterations: self.plan.iterations,
            inputs: input_records(&inputs),
            replace,
        };
        let failed = |status: String, stderr_tail: String| EngineError::ChildFailed { node: name.clone(), key: key.to_string(), status, stderr_tail };
        let outcome = match &self.executor {
            Executor::Cluster { scheduler, options } => {
                crate::executor::cluster::run_job(scheduler, options, self.store.root(), &job, node.id.kind.name(), &CANCEL)
            }
            Executor::Process { program } => {
                let path = job.write(&self.store.root().join(".tmp")).map_err(|e| failed(format!("could not write its job file: {e:#}"), String::new()))?;
                let outcome = crate::executor::run_child(program, &path, &CANCEL);
                let _ = std::fs::remove_file(&path);
                outcome
            }
            Executor::InProcess => unreachable!("handled above"),
        };
        match outcome {
            Ok(()) => self.store.load(node.id.kind.name(), &key)?.ok_or_else(|| failed("exited with status 0 but published nothing".into(), String::new())),
            Err(f) if f.interrupted => Err(EngineError::Interrupted { node: name }),
            Err(f) => Err(failed(f.status, f.stderr_tail)),
        }
    }

    /// In a stage process (`exec JOB`): check the job against this program's plan — every
    /// input loaded by its key with the recorded content digest, and the node's key recomputed
    /// from them equal to the job's — then run the stage and publish (in this process).
    pub fn run_job(&self, job: &Job) -> Result<Artifact> {
        let i = self.plan.position(&job.node)?;
        let node = &self.plan.nodes[i];
        let mut done: HashMap<String, Artifact> = HashMap::new();
        for (role, producer) in &node.inputs {
            let pname = producer.to_string();
            let rec = job
                .inputs
                .iter()
                .find(|r| r.role == *role && r.node == pname)
                .ok_or_else(|| EngineError::Ref(format!("job {}: no input for role {role:?} (node {pname})", job.node)))?;
            let a = self
                .store
                .load(&rec.stage, &rec.key)?
                .ok_or_else(|| EngineError::Ref(format!("job {}: input {pname} ({}) is not in the store", job.node, rec.key)))?;
            if a.manifest.content_digest != rec.digest {
                return Err(EngineError::Ref(format!(
                    "job {}: input {pname} has content digest {}, the job recorded {}",
                    job.node, a.manifest.content_digest, rec.digest
                )));
            }
            done.insert(pname, a);
        }
        let components = self.components_for(node, &done).map_err(|input| EngineError::InputNotBuilt { node: job.node.clone(), input })?;
        if components.key() != job.key {
            return Err(EngineError::Ref(format!(
                "job {}: this program computes key {} for the node, the job says {} (a job from another version or another spec)",
                job.node,
                components.key(),
                job.key
            )));
        }
        let inputs = self.input_artifacts(node, &done);
        self.execute(node, components, inputs, &self.store, job.replace)
    }

    /// Run one node's stage into `target` and publish it there.
    fn execute(&self, node: &Node, components: KeyComponents, inputs: Vec<InputArtifact>, target: &Store, replace: bool) -> Result<Artifact> {
        let name = node.name();
        let key = components.key();
        let staging = target.begin(node.id.kind.name(), &key)?;
        let records = input_records(&inputs);
        let started = now_ms();
        let t0 = Instant::now();
        // A spinner with the elapsed time while the node runs; the stage's own bars
        // (ctx.progress) stack under it. Hidden unless stderr is a TTY.
        let bars = indicatif::MultiProgress::with_draw_target(crate::executor::progress_target());
        let spinner = bars.add(indicatif::ProgressBar::new_spinner());
        if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
            spinner.set_style(style);
        }
        spinner.set_message(format!("running {name}"));
        spinner.enable_steady_tick(std::time::Duration::from_millis(120));
        #[cfg_attr(not(feature = "compute"), allow(unused_mut))]
        let mut ctx = StageContext {
            node: name.clone(),
            iteration: node.id.iteration,
            seed: self.plan.seed,
            key: key.clone(),
            device: self.spec.raw.run.device,
            threads: self.spec.raw.run.threads,
            output: OutputWriter::new(staging.dir.clone()),
            inputs,
            verified: Default::default(),
            cancel: &CANCEL,
            bars,
            store_root: target.root().to_path_buf(),
        };
        // A panic inside a stage (a libtorch error surfaces from tch as a panic) becomes this
        // node's failure, with its name and key, and nothing of it is published. The stage's
        // state is dropped with `ctx`; the engine's own state is untouched by the stage.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if std::env::var(FAILPOINT_ENV).is_ok_and(|v| v.strip_prefix("panic:") == Some(name.as_str())) {
                panic!("failpoint panic:{name}");
            }
            if std::env::var(FAILPOINT_ENV).is_ok_and(|v| v.strip_prefix("abort:") == Some(name.as_str())) {
                eprintln!("failpoint abort:{name}: aborting");
                std::process::abort();
            }
            // A slow stage for the executor tests: jobs that are still running when the engine
            // is killed or interrupted.
            if let Some(secs) = std::env::var(FAILPOINT_ENV).ok().and_then(|v| v.strip_prefix("delay:").and_then(|s| s.parse::<f64>().ok())) {
                let until = Instant::now() + std::time::Duration::from_secs_f64(secs);
                while Instant::now() < until {
                    ctx.check_cancelled()?;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            }
            #[cfg(feature = "compute")]
            return node.id.kind.run(self.spec, &mut ctx);
            #[cfg(not(feature = "compute"))]
            Err(anyhow::anyhow!(
                "this binary is built without the `compute` feature and cannot run a stage in its own process; run it with the executor (`{}`)",
                crate::executor::COMPUTE_PROGRAM
            ))
        }));
        spinner.finish_and_clear();
        match result {
            Ok(Ok(())) => {}
            Ok(Err(source)) => {
                staging.discard();
                return Err(EngineError::Stage { node: name, source });
            }
            Err(payload) => {
                staging.discard();
                let message = panic_message(payload.as_ref()).unwrap_or_else(|| "panic without a message".into());
                return Err(EngineError::Panicked {
                    node: name,
                    key: key.to_string(),
                    message: message.lines().next().unwrap_or("").chars().take(500).collect(),
                });
            }
        }
        if std::env::var(FAILPOINT_ENV).is_ok_and(|v| v == name) {
            eprintln!("failpoint {name}: outputs written, pausing before publish (pid {})", std::process::id());
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        let out = ctx.output.into_parts();
        let mut m = Manifest::draft(&name, node.id.kind.name(), node.id.iteration, components);
        m.inputs = records;
        m.files = out.files;
        m.metrics = out.metrics;
        m.verdict_judges = out.verdict_judges;
        m.ran_on = crate::executor::cluster::ran_on();
        m.timing = Timing { started_unix_ms: started, seconds: t0.elapsed().as_secs_f64(), parts: out.timing };
        Ok(target.publish(staging, m, replace)?)
    }

    /// Rebuild an artifact whose files `gc --thin` removed: run its node again from the inputs
    /// its manifest records (rebuilding those first when thinned too) and publish it in place.
    /// The result must have the original's content digest, or every key downstream would be
    /// computed from bytes that no longer exist: then it fails, leaving the rebuilt artifact
    /// (the downstream nodes show as stale and the next `run` rebuilds them).
    fn rehydrate(&self, a: &Artifact) -> Result<Artifact> {
        let name = &a.manifest.node;
        let node =
            self.plan.get(name).ok_or_else(|| EngineError::Ref(format!("{name} was thinned by gc and is not in the current plan, so it cannot be rebuilt")))?;
        let mut done = HashMap::new();
        for rec in &a.manifest.inputs {
            let mut input = self.store.load(&rec.stage, &rec.key)?.ok_or_else(|| {
                EngineError::Ref(format!("cannot rebuild the thinned {name}: its input {} ({}) is no longer in the store", rec.node, rec.key.short()))
            })?;
            if !input.manifest.thinned.is_empty() {
                input = self.rehydrate(&input)?;
            }
            done.insert(rec.node.clone(), input);
        }
        let components = self.components_for(node, &done).map_err(|i| EngineError::InputNotBuilt { node: name.clone(), input: i })?;
        if components.key() != a.manifest.key {
            return Err(EngineError::Ref(format!(
                "cannot rebuild the thinned {name}: the current spec gives key {} ≠ its key {}",
                components.key().short(),
                a.manifest.key.short()
            )));
        }
        eprintln!("rebuilding {name} (its files were thinned by gc)");
        let inputs = self.input_artifacts(node, &done);
        let b = self.run_node(node, components, inputs, true)?;
        if b.manifest.content_digest != a.manifest.content_digest {
            return Err(EngineError::Ref(format!(
                "rebuilt {name} has content digest {} but the thinned original had {} (another instruction set or program version?); the nodes after it are now stale — `run` again rebuilds them",
                b.manifest.content_digest.short(),
                a.manifest.content_digest.short()
            )));
        }
        Ok(b)
    }

    /// Resolve a REF: `stage@iter` / `stage` of the plan (its current cached artifact), a
    /// key, or a unique key prefix.
    pub fn find(&self, r: &str) -> Result<Artifact> {
        if self.plan.get(r).is_some() {
            return self.find_in(r, self.store.scan()?);
        }
        self.find_in(r, Vec::new())
    }

    /// [`Engine::find`] with the store already scanned (`all`; for a plan node only).
    pub fn find_in(&self, r: &str, all: Vec<Artifact>) -> Result<Artifact> {
        if self.plan.get(r).is_some() {
            let resolved = self.resolve_in(all)?;
            let res = resolved.into_iter().find(|x| x.name == r).expect("node exists");
            return res.artifact.ok_or_else(|| EngineError::Ref(format!("{r} is not cached ({}: {})", res.state.name(), res.state.reason().unwrap_or(""))));
        }
        let hits = self.store.find_by_key_prefix(r)?;
        match hits.len() {
            1 => Ok(hits.into_iter().next().expect("one hit")),
            0 => Err(EngineError::Ref(format!(
                "{r:?} is neither a node of the plan nor a key (prefix of at least 4 hex digits) in store {}",
                self.store.root().display()
            ))),
            n => Err(EngineError::Ref(format!(
                "key prefix {r:?} is ambiguous ({n} artifacts: {})",
                hits.iter().map(|a| format!("{}/{}", a.manifest.stage, a.manifest.key.short())).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    /// Re-execute an artifact's node into a temporary store and compare file digests.
    /// Returns (file, matches) per file of the stored artifact.
    pub fn recompute(&self, a: &Artifact) -> Result<Vec<(String, Option<String>)>> {
        let node =
            self.plan.get(&a.manifest.node).ok_or_else(|| EngineError::Ref(format!("{} is not in the current plan; cannot recompute", a.manifest.node)))?;
        let mut done = HashMap::new();
        for rec in &a.manifest.inputs {
            let input = self
                .store
                .load(&rec.stage, &rec.key)?
                .ok_or_else(|| EngineError::Ref(format!("input {} ({}) of {} is no longer in the store", rec.node, rec.key.short(), a.manifest.node)))?;
            done.insert(rec.node.clone(), input);
        }
        let components = self.components_for(node, &done).map_err(|i| EngineError::InputNotBuilt { node: node.name(), input: i })?;
        if components.key() != a.manifest.key {
            return Err(EngineError::Ref(format!(
                "{} was built from another spec (key {} ≠ current {}); recompute needs the spec that made it",
                a.manifest.node,
                a.manifest.key.short(),
                components.key().short()
            )));
        }
        let tmp =
            tempfile::tempdir().map_err(|e| EngineError::Store(StoreError::Io { root: PathBuf::from("tmp"), op: "create temp store".into(), source: e }))?;
        let tstore = Store::open(tmp.path())?;
        let _l = tstore.lock()?;
        let inputs = self.input_artifacts(node, &done);
        let b = self.execute(node, components, inputs, &tstore, false)?;
        let theirs: BTreeMap<&str, &crate::store::Digest> = b.manifest.files.iter().map(|f| (f.name.as_str(), &f.blake3)).collect();
        let (here, there) = (self.store.artifact_dir(&a.manifest.stage, &a.manifest.key)?, tstore.artifact_dir(&b.manifest.stage, &b.manifest.key)?);
        Ok(a.manifest
            .files
            .iter()
            .map(|f| {
                let difference = match theirs.get(f.name.as_str()) {
                    Some(d) if *d == &f.blake3 => None,
                    None => Some("not written by the recomputation".to_string()),
                    Some(_) => Some(match crate::store::diff::first_difference(&here.join(&f.name), &there.join(&f.name)) {
                        Ok(d) => d.unwrap_or_else(|| "other digest, same bytes on disk (the stored file changed since its manifest)".into()),
                        Err(e) => format!("other digest ({e} while locating the difference)"),
                    }),
                };
                (f.name.clone(), difference)
            })
            .collect())
    }

    /// Metrics per iteration (`log`) of a resolved plan ([`Engine::resolve`]): iteration →
    /// {"stage.metric": value}.
    pub fn log_of(resolved: &[Resolved]) -> BTreeMap<u32, BTreeMap<String, Value>> {
        let mut out: BTreeMap<u32, BTreeMap<String, Value>> = BTreeMap::new();
        for r in resolved {
            let Some(a) = &r.artifact else { continue };
            let Some(it) = a.manifest.iteration else { continue };
            let row = out.entry(it).or_default();
            let mut flat = BTreeMap::new();
            flatten(&a.manifest.stage, &Value::Object(a.manifest.metrics.clone()), &mut flat);
            row.extend(flat);
        }
        out
    }

    /// Artifacts that no plan of this spec with 1..=`iterations` iterations reaches (so the
    /// artifacts of a longer or shorter run sharing the store stay), minus the `keep_last`
    /// newest per node. Call under the store lock (`gc` takes it first).
    pub fn gc_candidates(&self, iterations: u32, keep_last: usize) -> Result<Vec<Artifact>> {
        self.gc_candidates_in(self.store.scan()?, iterations, keep_last)
    }

    /// [`Engine::gc_candidates`] over an already scanned store.
    fn gc_candidates_in(&self, all: Vec<Artifact>, iterations: u32, keep_last: usize) -> Result<Vec<Artifact>> {
        let mut reachable: HashSet<(String, Key)> = HashSet::new();
        for n in 1..=iterations.max(1) {
            let plan = crate::plan::Plan::new(self.spec, Some(n));
            let engine = Engine::new(self.spec, plan, self.store.clone());
            reachable
                .extend(engine.resolve_in(all.clone())?.into_iter().filter_map(|r| r.artifact.map(|a| (a.manifest.stage.clone(), a.manifest.key.clone()))));
        }
        let mut by_node: BTreeMap<String, Vec<Artifact>> = BTreeMap::new();
        for a in all {
            if !reachable.contains(&(a.manifest.stage.clone(), a.manifest.key.clone())) {
                by_node.entry(a.manifest.node.clone()).or_default().push(a);
            }
        }
        let mut out = Vec::new();
        for (_, mut v) in by_node {
            v.sort_by_key(|a| std::cmp::Reverse(a.manifest.timing.started_unix_ms));
            out.extend(v.into_iter().skip(keep_last));
        }
        Ok(out)
    }

    /// `gc --thin`: the current plan's policies (`update` artifacts) of every iteration but
    /// the newest `keep_last` (at least 1) that still hold [`thinnable`] files.
    pub fn thin_candidates(&self, keep_last: usize) -> Result<Vec<Artifact>> {
        self.thin_candidates_in(self.store.scan()?, keep_last)
    }

    /// [`Engine::thin_candidates`] over an already scanned store.
    fn thin_candidates_in(&self, all: Vec<Artifact>, keep_last: usize) -> Result<Vec<Artifact>> {
        let mut updates: Vec<Artifact> = self.resolve_in(all)?.into_iter().filter_map(|r| r.artifact).filter(|a| a.manifest.stage == "update").collect();
        updates.sort_by_key(|a| std::cmp::Reverse(a.manifest.iteration));
        Ok(updates
            .into_iter()
            .skip(keep_last.max(1))
            .filter(|a| a.manifest.files.iter().any(|f| thinnable(&f.name) && !a.manifest.thinned.contains(&f.name)))
            .collect())
    }

    /// `gc`: under the store lock (taken before anything is decided, so a run cannot publish
    /// between the choice and the deletion), repair leftovers of interrupted runs, choose the
    /// victims ([`Engine::gc_candidates`]) and, unless `dry_run`, delete them; with `thin`,
    /// also thin the older policies ([`Engine::thin_candidates`]).
    pub fn gc(&self, iterations: u32, keep_last: usize, thin: bool, dry_run: bool) -> Result<GcReport> {
        // A dry run only reads (and may run beside a writer).
        let _lock = if dry_run { None } else { Some(self.store.lock()?) };
        if !dry_run {
            self.store.repair()?;
        }
        // One scan of the store serves the three decisions (victims, policies to thin, live
        // judges of the verdict cache); nothing else writes while the lock is held.
        let all = self.store.scan()?;
        let victims = self.gc_candidates_in(all.clone(), iterations, keep_last)?;
        let thinned = if thin { self.thin_candidates_in(all.clone(), keep_last)? } else { Vec::new() };
        if !dry_run {
            for a in &victims {
                self.store.remove(a)?;
            }
            for a in &thinned {
                self.store.thin(a, thinnable)?;
            }
            sweep_serving_views(self.store.root(), &all, &victims, &thinned)?;
        }
        let verdict_cache = self.sweep_verdict_cache(all, &victims, dry_run)?;
        Ok(GcReport { removed: victims, thinned, verdict_cache })
    }

    /// The verdict-cache part of `gc`: the judges named by the artifacts that remain (every
    /// artifact but `removed`) are live; the cache keeps their entries and loses the rest
    /// ([`VerdictCache::sweep`]). When a remaining `judge` artifact does not name its judge
    /// (written before manifests recorded it, or by a judge that bypasses the cache) the live
    /// set is unknown and the cache is left alone, with the reason in the report.
    fn sweep_verdict_cache(&self, all: Vec<Artifact>, removed: &[Artifact], dry_run: bool) -> Result<VerdictCacheGc> {
        let dir = self.store.root().join(crate::judge::cache::VERDICT_CACHE_DIR);
        if !dir.is_dir() {
            return Ok(VerdictCacheGc::default());
        }
        let gone: HashSet<(&str, &Key)> = removed.iter().map(|a| (a.manifest.stage.as_str(), &a.manifest.key)).collect();
        let mut live = HashSet::new();
        for a in all {
            if gone.contains(&(a.manifest.stage.as_str(), &a.manifest.key)) {
                continue;
            }
            if a.manifest.stage == "judge" && a.manifest.verdict_judges.is_empty() {
                return Ok(VerdictCacheGc {
                    skipped: Some(format!(
                        "{} ({}) does not record which judge's verdicts it used; rerun it to let gc collect the verdict cache",
                        a.manifest.node,
                        &a.manifest.key.as_str()[..12]
                    )),
                    ..Default::default()
                });
            }
            live.extend(a.manifest.verdict_judges.iter().cloned());
        }
        let cache = crate::judge::cache::VerdictCache::open(dir)?;
        Ok(VerdictCacheGc { sweep: Some(cache.sweep(&live, dry_run)?), skipped: None, live_judges: live.len() })
    }
}

/// What `gc` did (or, with `--dry-run`, would do).
#[derive(Debug, Default)]
pub struct GcReport {
    pub removed: Vec<Artifact>,
    pub thinned: Vec<Artifact>,
    pub verdict_cache: VerdictCacheGc,
}

/// The verdict-cache part of a [`GcReport`].
#[derive(Debug, Default, serde::Serialize)]
pub struct VerdictCacheGc {
    /// Judges named by the remaining artifacts (their entries stay).
    pub live_judges: usize,
    /// `None` when there is no cache or it was left alone.
    pub sweep: Option<crate::judge::cache::SweepReport>,
    /// Why the cache was left alone.
    pub skipped: Option<String>,
}

/// The manifest's record of each input artifact.
fn input_records(inputs: &[InputArtifact]) -> Vec<InputRecord> {
    inputs
        .iter()
        .map(|i| InputRecord {
            role: i.role.to_string(),
            node: i.node.clone(),
            stage: i.artifact.manifest.stage.clone(),
            key: i.artifact.manifest.key.clone(),
            digest: i.artifact.manifest.content_digest.clone(),
        })
        .collect()
}

fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                flatten(&format!("{prefix}.{k}"), x, out);
            }
        }
        Value::Array(a) if a.iter().any(|x| x.is_object() || x.is_array()) => {
            for (i, x) in a.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), x, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

fn short_json(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 60 {
        format!("{}…", &s[..s.char_indices().nth(57).map_or(s.len(), |(i, _)| i)])
    } else {
        s
    }
}

/// One human sentence per component that differs from `old` to `new`
/// (cargo's `DirtyReason` style).
pub fn explain(new: &KeyComponents, old: &KeyComponents) -> Vec<String> {
    let mut out = Vec::new();
    if new.scheme != old.scheme {
        out.push(format!("key scheme changed {} → {}", old.scheme, new.scheme));
    }
    if new.kind != old.kind {
        out.push(format!("stage kind changed {} → {}", old.kind, new.kind));
    }
    if new.stage_version != old.stage_version {
        out.push(format!("stage {} VERSION changed {} → {}", new.kind, old.stage_version, new.stage_version));
    }
    if new.iteration != old.iteration {
        out.push(format!("iteration changed {:?} → {:?}", old.iteration, new.iteration));
    }
    if new.seed != old.seed {
        out.push(format!("seed changed {} → {}", old.seed, new.seed));
    }
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    flatten("params", &old.params, &mut a);
    flatten("params", &new.params, &mut b);
    for (k, v) in &b {
        match a.get(k) {
            Some(o) if o == v => {}
            Some(o) => out.push(format!("{k} changed {} → {}", short_json(o), short_json(v))),
            None => out.push(format!("{k} was added ({})", short_json(v))),
        }
    }
    for k in a.keys().filter(|k| !b.contains_key(*k)) {
        out.push(format!("{k} was removed"));
    }
    for i in &new.inputs {
        match old.inputs.iter().find(|o| o.role == i.role) {
            Some(o) if o.digest == i.digest => {}
            Some(o) => out.push(format!("input {} changed content {} → {}", i.role, o.digest.short(), i.digest.short())),
            None => out.push(format!("input {} was added", i.role)),
        }
    }
    for o in old.inputs.iter().filter(|o| !new.inputs.iter().any(|i| i.role == o.role)) {
        out.push(format!("input {} was removed", o.role));
    }
    for f in &new.files {
        match old.files.iter().find(|o| o.name == f.name) {
            Some(o) if o.sha256 == f.sha256 => {}
            Some(o) => out.push(format!("file {} changed sha256 {} → {}", f.name, &o.sha256[..o.sha256.len().min(12)], &f.sha256[..f.sha256.len().min(12)])),
            None => out.push(format!("file {} was added", f.name)),
        }
    }
    for o in old.files.iter().filter(|o| !new.files.iter().any(|f| f.name == o.name)) {
        out.push(format!("file {} was removed", o.name));
    }
    out
}

/// The `gc` part for server generation's views (`<store>/.serving/<artifact dir>/`, hard links
/// made by src/remote/fleet.rs): a view whose artifact was removed or thinned goes, so its
/// links do not keep deleted weights on disk; views are remade on demand.
fn sweep_serving_views(root: &std::path::Path, all: &[Artifact], removed: &[Artifact], thinned: &[Artifact]) -> Result<()> {
    let dir = root.join(".serving");
    let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(()) };
    let name = |a: &Artifact| a.dir.file_name().map(std::ffi::OsStr::to_os_string);
    let gone: HashSet<_> = removed.iter().chain(thinned).filter_map(name).collect();
    let live: HashSet<_> = all.iter().filter_map(name).filter(|n| !gone.contains(n)).collect();
    for e in entries.flatten() {
        if !live.contains(&e.file_name()) {
            std::fs::remove_dir_all(e.path()).map_err(|source| StoreError::Io {
                root: root.to_path_buf(),
                op: format!("remove {}", e.path().display()),
                source,
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::key::{InputDigest, KEY_SCHEME};
    use crate::store::Digest;

    #[test]
    fn explain_names_each_changed_component() {
        let old = KeyComponents {
            scheme: KEY_SCHEME,
            kind: "rollout".into(),
            stage_version: 1,
            iteration: Some(2),
            params: serde_json::json!({"temperature": 1.0, "top_p": 1.0}),
            inputs: vec![InputDigest { role: "policy".into(), digest: Digest::from_hash(blake3::hash(b"a")) }],
            seed: 8888,
            files: vec![],
        };
        let mut new = old.clone();
        new.params["temperature"] = serde_json::json!(0.7);
        new.inputs[0].digest = Digest::from_hash(blake3::hash(b"b"));
        let s = explain(&new, &old);
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(s[0], "params.temperature changed 1.0 → 0.7");
        assert!(s[1].starts_with("input policy changed content "), "{}", s[1]);
        assert!(explain(&old, &old).is_empty());
    }
}
