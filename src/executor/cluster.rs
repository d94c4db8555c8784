//! A node as a job on a cluster scheduler (`run.executor: slurm`): the engine stays the only
//! coordinator and submits each ready node as one job that runs exactly
//! `PROGRAM exec JOB` against the shared store; dependencies stay in the engine, so a failure
//! stops new submissions as it does locally. A scheduler is one [`Scheduler`] implementation
//! (src/executor/slurm.rs); everything below is the same for any.
//!
//! Protocol, per node:
//! 1. **Claim or adopt.** `<store>/.cluster/claims/<stage>-<key>.json` names the job computing
//!    that node. A claim whose job is still queued or running (an engine killed with `kill -9`
//!    or a lost login shell leaves its jobs running) is adopted: the engine waits for that job
//!    instead of submitting a second. A claim whose job has ended is dropped (its artifact is
//!    in the store if the job published it, and the engine then sees a hit).
//! 2. **Submit** (no live claim): the job file goes to `<store>/.cluster/jobs/` (not `.tmp`,
//!    which a starting engine sweeps), the job's stdout and stderr to `<store>/.cluster/logs/`;
//!    a submission the scheduler refuses is this node's failure with the scheduler's own
//!    message, never a job that pends forever. Then the claim is written (atomically).
//! 3. **Wait**: the job's state every `poll` until it ends. Each way it ends is named
//!    ([`JobEnd`]); anything but `Completed` fails the node with the tail of the job's stderr
//!    file. `Completed` hands back to the engine, which loads the artifact by its key and
//!    checks it (a job that exits 0 without publishing is a failure there).
//! 4. **Ctrl-C**: a running job gets SIGINT (the stage stops at its next check and publishes
//!    nothing), a queued one is cancelled; after `grace` a job still running is cancelled. A
//!    second Ctrl-C cancels every job of this engine at once ([`cancel_all_now`]) and exits.
//! 5. The claim and the job file are removed once the job has ended.
//!
//! Publishing is the store's atomic path inside the job, so nothing half-written is ever
//! visible, whatever happens to the engine or the job.
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::ChildFailure;
use crate::store::Key;

/// How a cluster job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEnd {
    Completed,
    /// The program exited non-zero (`code`) or was killed by `signal`.
    Failed {
        code: i32,
        signal: i32,
    },
    Cancelled,
    /// Its time limit.
    Timeout,
    OutOfMemory,
    NodeFail,
    Preempted,
    /// Any other end state, as the scheduler names it.
    Other(String),
}

impl std::fmt::Display for JobEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobEnd::Completed => write!(f, "COMPLETED"),
            JobEnd::Failed { code, signal: 0 } => write!(f, "FAILED with exit status {code}"),
            JobEnd::Failed { signal, .. } => write!(f, "FAILED, killed by signal {signal}"),
            JobEnd::Cancelled => write!(f, "CANCELLED"),
            JobEnd::Timeout => write!(f, "TIMEOUT (its time limit)"),
            JobEnd::OutOfMemory => write!(f, "OUT_OF_MEMORY"),
            JobEnd::NodeFail => write!(f, "NODE_FAIL (the node it ran on failed)"),
            JobEnd::Preempted => write!(f, "PREEMPTED"),
            JobEnd::Other(s) => write!(f, "{s}"),
        }
    }
}

/// A job's state as the scheduler reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    Queued,
    Running,
    Ended(JobEnd),
}

/// What one submission asks for.
#[derive(Debug, Clone)]
pub struct Submission<'a> {
    /// `update@2`.
    pub node: &'a str,
    /// The stage kind (`update`): selects the resources.
    pub stage: &'a str,
    /// The program and its arguments (`PROGRAM exec JOB`).
    pub command: Vec<String>,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

/// A cluster scheduler: the four calls the protocol above needs.
pub trait Scheduler: Send + Sync + std::fmt::Debug {
    /// `slurm`.
    fn name(&self) -> &'static str;
    /// Submit; the job id, or the scheduler's refusal message.
    fn submit(&self, s: &Submission<'_>) -> Result<String, String>;
    /// The job's state; an error when the scheduler cannot say.
    fn state(&self, id: &str) -> Result<JobState, String>;
    /// Deliver SIGINT to the job's program without cancelling the job.
    fn interrupt(&self, id: &str) -> Result<(), String>;
    /// Cancel the job.
    fn cancel(&self, id: &str) -> Result<(), String>;
}

/// How the engine drives jobs.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The compute binary as the cluster's nodes reach it.
    pub program: PathBuf,
    pub poll: Duration,
    pub grace: Duration,
}

/// A claim: node key → job (see the module header).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claim {
    pub scheduler: String,
    pub job_id: String,
    pub node: String,
    pub stage: String,
    pub key: Key,
    pub job_file: PathBuf,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

/// `<store>/.cluster`.
pub fn cluster_dir(store_root: &Path) -> PathBuf {
    store_root.join(".cluster")
}

fn claim_path(store_root: &Path, stage: &str, key: &Key) -> PathBuf {
    cluster_dir(store_root).join("claims").join(format!("{stage}-{}.json", key.as_str()))
}

/// Every claim in the store (unreadable files are skipped with a warning: a claim is a hint
/// for adoption, never the truth about an artifact).
pub fn read_claims(store_root: &Path) -> Vec<Claim> {
    let dir = cluster_dir(store_root).join("claims");
    let Ok(rd) = std::fs::read_dir(&dir) else { return Vec::new() };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "json") {
            continue;
        }
        match std::fs::read(&p).map_err(|e| e.to_string()).and_then(|b| serde_json::from_slice::<Claim>(&b).map_err(|e| e.to_string())) {
            Ok(c) => out.push(c),
            Err(e) => tracing::warn!("ignoring claim {}: {e}", p.display()),
        }
    }
    out.sort_by(|a, b| a.node.cmp(&b.node));
    out
}

fn write_claim(store_root: &Path, c: &Claim) -> std::io::Result<()> {
    let path = claim_path(store_root, &c.stage, &c.key);
    let dir = path.parent().expect("claims dir");
    std::fs::create_dir_all(dir)?;
    let mut f = tempfile::NamedTempFile::new_in(dir)?;
    serde_json::to_writer_pretty(&mut f, c)?;
    f.as_file().sync_all()?;
    f.persist(&path).map_err(|e| e.error)?;
    Ok(())
}

fn drop_claim(store_root: &Path, c: &Claim) {
    let _ = std::fs::remove_file(claim_path(store_root, &c.stage, &c.key));
    let _ = std::fs::remove_file(&c.job_file);
}

/// Claims whose jobs are still queued or running (the others are dropped here). Called by a
/// starting engine: their staging directories must survive its sweep of `.tmp`.
pub fn live_claims(sched: &dyn Scheduler, store_root: &Path) -> Vec<(Claim, JobState)> {
    let mut live = Vec::new();
    for c in read_claims(store_root) {
        if c.scheduler != sched.name() {
            continue;
        }
        match sched.state(&c.job_id) {
            Ok(s @ (JobState::Queued | JobState::Running)) => live.push((c, s)),
            Ok(JobState::Ended(_)) => drop_claim(store_root, &c),
            // Unknown to the scheduler (purged, another cluster): nothing to wait for.
            Err(e) => {
                tracing::warn!("claim of {} names {} job {}, which the scheduler cannot report ({e}); dropping it", c.node, c.scheduler, c.job_id);
                drop_claim(store_root, &c);
            }
        }
    }
    live
}

/// Jobs this engine waits for, so a second Ctrl-C can cancel them before exiting.
static ACTIVE: Mutex<Vec<(Arc<dyn Scheduler>, String)>> = Mutex::new(Vec::new());

/// Cancel every job this engine is waiting for (the second Ctrl-C).
pub fn cancel_all_now() {
    let jobs = ACTIVE.lock().map(|a| a.clone()).unwrap_or_default();
    for (sched, id) in jobs {
        if let Err(e) = sched.cancel(&id) {
            eprintln!("could not cancel {} job {id}: {e}", sched.name());
        } else {
            eprintln!("cancelled {} job {id}", sched.name());
        }
    }
}

fn set_active(sched: &Arc<dyn Scheduler>, id: &str, on: bool) {
    if let Ok(mut a) = ACTIVE.lock() {
        if on {
            a.push((Arc::clone(sched), id.to_string()));
        } else {
            a.retain(|(_, j)| j != id);
        }
    }
}

/// Consecutive state queries that may fail (a controller restarting) before the node fails.
const STATE_ERRORS_TOLERATED: u32 = 30;

/// Bytes of the job's stderr file kept for a failure message.
const TAIL_BYTES: u64 = 4096;

/// Run one node as a job (adopting a live claim for it, else submitting), wait until it ends.
/// Ok when the job completed.
pub fn run_job(
    sched: &Arc<dyn Scheduler>,
    opts: &ClusterOptions,
    store_root: &Path,
    job: &super::Job,
    stage: &str,
    cancel: &AtomicBool,
) -> Result<(), ChildFailure> {
    let fail = |status: String, stderr_tail: String| ChildFailure { status, stderr_tail, interrupted: cancel.load(Ordering::Relaxed) };
    let existing = read_claims(store_root).into_iter().find(|c| c.scheduler == sched.name() && c.stage == stage && c.key == job.key);
    let claim = match existing {
        Some(c) if matches!(sched.state(&c.job_id), Ok(JobState::Queued | JobState::Running)) => {
            eprintln!("{}: adopting {} job {} (submitted by an earlier run; log: {})", job.node, sched.name(), c.job_id, c.stderr.display());
            c
        }
        stale => {
            if let Some(c) = stale {
                drop_claim(store_root, &c);
            }
            let dir = cluster_dir(store_root);
            let jobs = dir.join("jobs");
            let logs = dir.join("logs");
            for d in [&jobs, &logs] {
                std::fs::create_dir_all(d).map_err(|e| fail(format!("cannot create {}: {e}", d.display()), String::new()))?;
            }
            let job_file = job.write(&jobs).map_err(|e| fail(format!("could not write its job file: {e:#}"), String::new()))?;
            let base = format!("{}-{}", job.node.replace('@', "-"), job.key.short());
            let (stdout, stderr) = (logs.join(format!("{base}.out")), logs.join(format!("{base}.err")));
            let command = vec![opts.program.display().to_string(), "exec".into(), job_file.display().to_string()];
            let sub = Submission { node: &job.node, stage, command, stdout: stdout.clone(), stderr: stderr.clone() };
            let id = match sched.submit(&sub) {
                Ok(id) => id,
                Err(refusal) => {
                    let _ = std::fs::remove_file(&job_file);
                    return Err(fail(format!("{} refused the job at submission: {refusal}", sched.name()), String::new()));
                }
            };
            let c = Claim {
                scheduler: sched.name().into(),
                job_id: id,
                node: job.node.clone(),
                stage: stage.into(),
                key: job.key.clone(),
                job_file,
                stdout,
                stderr,
            };
            if let Err(e) = write_claim(store_root, &c) {
                let _ = sched.cancel(&c.job_id);
                return Err(fail(format!("could not write the claim for {} job {}: {e} (the job was cancelled)", sched.name(), c.job_id), String::new()));
            }
            eprintln!("{}: submitted as {} job {} (log: {})", job.node, sched.name(), c.job_id, c.stderr.display());
            c
        }
    };
    set_active(sched, &claim.job_id, true);
    let end = wait(sched.as_ref(), opts, &claim, cancel);
    set_active(sched, &claim.job_id, false);
    let end = match end {
        Ok(e) => e,
        Err(msg) => return Err(fail(msg, tail(&claim.stderr))),
    };
    drop_claim(store_root, &claim);
    match end {
        JobEnd::Completed => Ok(()),
        other => Err(fail(format!("{} job {} {other} (log: {})", sched.name(), claim.job_id, claim.stderr.display()), tail(&claim.stderr))),
    }
}

/// Poll until the job ends, handling Ctrl-C as step 4 says.
fn wait(sched: &dyn Scheduler, opts: &ClusterOptions, claim: &Claim, cancel: &AtomicBool) -> Result<JobEnd, String> {
    let (mut interrupted_at, mut cancelled, mut errors) = (None::<Instant>, false, 0u32);
    loop {
        let state = match sched.state(&claim.job_id) {
            Ok(s) => {
                errors = 0;
                s
            }
            Err(e) => {
                errors += 1;
                if errors > STATE_ERRORS_TOLERATED {
                    return Err(format!("lost track of {} job {}: {e}", sched.name(), claim.job_id));
                }
                std::thread::sleep(opts.poll);
                continue;
            }
        };
        match state {
            JobState::Ended(end) => return Ok(end),
            JobState::Queued if cancel.load(Ordering::Relaxed) && !cancelled => {
                let _ = sched.cancel(&claim.job_id);
                cancelled = true;
            }
            JobState::Running if cancel.load(Ordering::Relaxed) => match interrupted_at {
                None => {
                    if let Err(e) = sched.interrupt(&claim.job_id) {
                        tracing::warn!("SIGINT to {} job {}: {e}", sched.name(), claim.job_id);
                    }
                    interrupted_at = Some(Instant::now());
                }
                Some(t) if t.elapsed() > opts.grace && !cancelled => {
                    let _ = sched.cancel(&claim.job_id);
                    cancelled = true;
                }
                Some(_) => {}
            },
            _ => {}
        }
        std::thread::sleep(if cancel.load(Ordering::Relaxed) { opts.poll.min(Duration::from_millis(250)) } else { opts.poll });
    }
}

/// The last bytes of a job's stderr file ("" when there is none yet).
fn tail(path: &Path) -> String {
    let Ok(mut f) = std::fs::File::open(path) else { return String::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).trim_end().to_string()
}

/// Where this process runs when it is a cluster job (read from the scheduler's environment).
pub fn ran_on() -> Option<crate::store::RanOn> {
    let job_id = std::env::var("SLURM_JOB_ID").ok().filter(|v| !v.is_empty())?;
    let host = std::env::var("SLURMD_NODENAME").or_else(|_| std::env::var("SLURM_JOB_NODELIST")).unwrap_or_default();
    Some(crate::store::RanOn { scheduler: "slurm".into(), job_id, host })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ends_read_as_themselves() {
        assert_eq!(JobEnd::Failed { code: 3, signal: 0 }.to_string(), "FAILED with exit status 3");
        assert_eq!(JobEnd::Failed { code: 0, signal: 11 }.to_string(), "FAILED, killed by signal 11");
        assert_eq!(JobEnd::Timeout.to_string(), "TIMEOUT (its time limit)");
    }

    #[test]
    fn claims_round_trip_and_unreadable_ones_are_skipped() {
        let dir = tempfile::tempdir().expect("tmp");
        let key = Key::parse(&"cd".repeat(32)).expect("key");
        let c = Claim {
            scheduler: "slurm".into(),
            job_id: "17".into(),
            node: "update@1".into(),
            stage: "update".into(),
            key: key.clone(),
            job_file: dir.path().join("j.json"),
            stdout: dir.path().join("o"),
            stderr: dir.path().join("e"),
        };
        write_claim(dir.path(), &c).expect("write");
        std::fs::write(cluster_dir(dir.path()).join("claims/garbage.json"), "{").expect("garbage");
        assert_eq!(read_claims(dir.path()), vec![c.clone()]);
        drop_claim(dir.path(), &c);
        assert!(read_claims(dir.path()).is_empty());
    }
}
