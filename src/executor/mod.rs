//! How the engine runs a node's stage: in its own process ([`Executor::InProcess`], the
//! library default and `run --in-process`) or as a child process per node
//! ([`Executor::Process`], what `run` uses). A child is started as `PROGRAM exec JOB`, where
//! JOB is the node's complete, self-describing [`Job`] written to the store's `.tmp`; it runs
//! the stage and publishes through the same atomic store path as the in-process executor,
//! then exits. A libtorch abort, an out-of-memory kill or a panic in a stage then ends the
//! child, not the engine, and the memory of a finished stage goes back to the system.
//!
//! The job file is also what a cluster job runs ([`Executor::Cluster`], src/executor/cluster.rs
//! and, for Slurm, src/executor/slurm.rs: exactly `PROGRAM exec JOB` on another machine
//! against a shared store); its fields are documented on [`Job`] and versioned by
//! [`JOB_VERSION`]. The child trusts nothing in it: it rebuilds
//! the plan from the job's spec, loads every input by its key, checks its content digest, and
//! recomputes the node's key, which must equal the job's.
//!
//! Failure handling: a non-zero exit, a signal (SIGKILL from the OOM killer included) or a
//! panic becomes that node's [`EngineError::ChildFailed`](crate::engine::EngineError) with its
//! name, key, exit status and the tail of its stderr; nothing is published (a killed child's
//! staging directory is swept by the next `run`), and the next `run` resumes. Ctrl-C: the child
//! runs in its own process group, so a terminal's SIGINT reaches the engine only, and the
//! engine forwards exactly one SIGINT to the child, which stops at its stage's next check
//! (within one decoding step while generating) and publishes nothing; the engine waits for it
//! as it would for an in-process stage. A second Ctrl-C ends the engine at once, and a child
//! whose engine is gone (that, or `kill -9`) notices within 0.25 s and exits without
//! publishing.
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub mod cluster;
pub mod slurm;

use crate::spec::RawSpec;
use crate::store::{InputRecord, Key};

/// Version of the [`Job`] file format; a child refuses any other.
pub const JOB_VERSION: u32 = 1;

/// Set by the engine for its children when its stderr is a terminal, to the terminal's width:
/// the child then draws its progress bars on its (piped) stderr, which the engine relays.
pub const PROGRESS_ENV: &str = "SELF_REDTEAM_PROGRESS";

/// File name of the compute binary, looked up beside the running binary.
pub const COMPUTE_PROGRAM: &str = "self-redteam-compute";

/// Overrides where the compute binary is (a path to it).
pub const COMPUTE_ENV: &str = "SELF_REDTEAM_COMPUTE";

/// The program that runs stages (`exec JOB`) and the model verbs: `$SELF_REDTEAM_COMPUTE` when
/// set; else this program itself when it is built with `compute`; else
/// `self-redteam-compute` beside this program. An error says where it looked.
pub fn compute_program() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(COMPUTE_ENV).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            anyhow::bail!("{COMPUTE_ENV}={}: no such file (expected the path of the {COMPUTE_PROGRAM} binary)", p.display());
        }
        return Ok(p);
    }
    let me = std::env::current_exe().map_err(|e| anyhow::anyhow!("cannot find this program's own path to look for {COMPUTE_PROGRAM} beside it: {e}"))?;
    if cfg!(feature = "compute") {
        return Ok(me);
    }
    let beside = me.with_file_name(COMPUTE_PROGRAM);
    if beside.is_file() {
        Ok(beside)
    } else {
        anyhow::bail!(
            "this command needs the model runtime, which is in {COMPUTE_PROGRAM}, and there is no {} (build it with `cargo build`, which builds both binaries, install it beside {}, or set {COMPUTE_ENV} to its path)",
            beside.display(),
            me.display()
        )
    }
}

/// Hand this whole command line to the compute binary ([`compute_program`]), replacing this
/// process (same pid, same signals, its exit status is ours). Returns only on failure.
pub fn delegate() -> anyhow::Result<i32> {
    use std::os::unix::process::CommandExt;
    let program = compute_program()?;
    let err = Command::new(&program).args(std::env::args_os().skip(1)).exec();
    anyhow::bail!("cannot start {}: {err}", program.display())
}

/// Bytes of a child's stderr kept for the failure message.
const TAIL_BYTES: usize = 4096;

/// How the engine runs a stage.
#[derive(Debug, Clone, Default)]
pub enum Executor {
    /// In the engine's own process (the library default; `run --in-process`).
    #[default]
    InProcess,
    /// One child process per node: `program exec JOB`.
    Process { program: PathBuf },
    /// One cluster job per node running `program exec JOB` (src/executor/cluster.rs).
    Cluster { scheduler: Arc<dyn cluster::Scheduler>, options: cluster::ClusterOptions },
}

/// One node's job: everything a process needs to run the node's stage against the store and
/// publish it, with nothing taken from the environment. Written by the engine as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// [`JOB_VERSION`].
    pub job_version: u32,
    /// The node (`update@2`).
    pub node: String,
    /// The node's cache key: the child recomputes it and refuses the job when it differs.
    pub key: Key,
    /// The store root (absolute); the artifact is published there.
    pub store: PathBuf,
    /// The pipeline file the spec came from (relative paths in the spec resolve against its
    /// directory, as for the engine).
    pub config_file: PathBuf,
    /// The validated spec as the engine used it (CLI overrides applied).
    pub spec: RawSpec,
    /// Iterations of the engine's plan (`run --iterations`).
    pub iterations: u32,
    /// Each input artifact by role: producing node, stage, key and content digest.
    pub inputs: Vec<InputRecord>,
    /// Replace an existing artifact of the same key (`run --force`).
    pub replace: bool,
}

impl Job {
    /// Write the job atomically into `dir` (the store's `.tmp`); returns its path.
    pub fn write(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let mut f = tempfile::Builder::new().prefix(&format!("job-{}-{}-", self.node.replace('@', "-"), self.key.short())).suffix(".json").tempfile_in(dir)?;
        serde_json::to_writer_pretty(&mut f, self)?;
        f.as_file().sync_all()?;
        let (_, path) = f.keep()?;
        Ok(path)
    }

    /// Read and check a job file.
    pub fn read(path: &Path) -> anyhow::Result<Job> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: cannot read the job file: {e}", path.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: not a JSON job file: {e}", path.display()))?;
        match v.get("job_version").and_then(serde_json::Value::as_u64) {
            Some(n) if n == u64::from(JOB_VERSION) => {}
            other => anyhow::bail!("{}: job_version {other:?}, this program reads version {JOB_VERSION}", path.display()),
        }
        serde_json::from_value(v).map_err(|e| anyhow::anyhow!("{}: malformed job file: {e}", path.display()))
    }
}

/// How a child ended when it did not succeed.
#[derive(Debug)]
pub struct ChildFailure {
    /// `exit status 1`, `killed by signal 9 (SIGKILL)`, …
    pub status: String,
    /// The last bytes of its stderr.
    pub stderr_tail: String,
    /// The engine saw Ctrl-C while the child ran.
    pub interrupted: bool,
}

/// Run `program exec job_path`, relaying its stderr to ours as it comes (keeping the tail),
/// until it exits. Ok when it exited with status 0.
pub fn run_child(program: &Path, job_path: &Path, cancel: &std::sync::atomic::AtomicBool) -> Result<(), ChildFailure> {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(program);
    cmd.arg("exec").arg(job_path).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    // Its own process group: Ctrl-C reaches the child once, forwarded below, not twice
    // (a second SIGINT means "quit now" to a self-redteam process).
    cmd.process_group(0);
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        cmd.env(PROGRESS_ENV, console::Term::stderr().size().1.to_string());
    }
    let mut child = cmd.spawn().map_err(|e| ChildFailure {
        status: format!("could not start {}: {e}", program.display()),
        stderr_tail: String::new(),
        interrupted: false,
    })?;
    let tail = Arc::new(Mutex::new(Vec::<u8>::new()));
    let relay = child.stderr.take().map(|mut err| {
        let tail = Arc::clone(&tail);
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match err.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut out = std::io::stderr().lock();
                        let _ = out.write_all(&buf[..n]);
                        let _ = out.flush();
                        let mut t = tail.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        t.extend_from_slice(&buf[..n]);
                        let excess = t.len().saturating_sub(TAIL_BYTES);
                        t.drain(..excess);
                    }
                }
            }
        })
    });
    let mut cancelled_at: Option<Instant> = None;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) => {}
            Err(e) => break Err(e),
        }
        if cancel.load(Ordering::Relaxed) && cancelled_at.is_none() {
            cancelled_at = Some(Instant::now());
            interrupt(child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if let Some(r) = relay {
        let _ = r.join();
    }
    let tail = String::from_utf8_lossy(&tail.lock().unwrap_or_else(std::sync::PoisonError::into_inner)).trim_end().to_string();
    let interrupted = cancelled_at.is_some() || cancel.load(Ordering::Relaxed);
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(ChildFailure { status: describe(s), stderr_tail: tail, interrupted }),
        Err(e) => Err(ChildFailure { status: format!("lost track of the child: {e}"), stderr_tail: tail, interrupted }),
    }
}

/// Send SIGINT to `pid` (a child this process started and has not reaped).
#[allow(unsafe_code)]
fn interrupt(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: `kill` takes plain integers; the pid is our unreaped child's, so it cannot
        // name another process.
        unsafe {
            libc::kill(pid, libc::SIGINT);
        }
    }
}

/// `exit status N` or `killed by signal N (NAME)`.
pub fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(sig)) => {
            let name = match sig {
                2 => " (SIGINT)",
                6 => " (SIGABRT)",
                9 => " (SIGKILL, e.g. the out-of-memory killer)",
                11 => " (SIGSEGV)",
                15 => " (SIGTERM)",
                _ => "",
            };
            format!("killed by signal {sig}{name}")
        }
        (None, None) => "ended without a status".into(),
    }
}

/// In a child: exit (without publishing: the stage has not returned, or publish has not
/// renamed) as soon as the engine that started it is gone, so `kill -9` of the engine does
/// not leave an orphan computing, or publishing into a store another run may now hold.
///
/// The exit is `_exit(2)`: no atexit handlers or static destructors, which in a process that
/// linked libtorch can wait forever on locks held by the stage's threads (seen: orphans
/// blocked in `exit` after their engine was killed), and no panic when stderr — a pipe to the
/// dead engine — is broken.
pub fn exit_with_parent() {
    let parent = std::os::unix::process::parent_id();
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(250));
        if std::os::unix::process::parent_id() != parent {
            let _ = writeln!(std::io::stderr(), "exec: the engine (pid {parent}) is gone; stopping without publishing");
            exit_now(3);
        }
    });
}

/// End the process at once with `code`, skipping atexit handlers and destructors.
#[allow(unsafe_code)]
fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` takes no pointers and never returns; skipping destructors is the point
    // (see `exit_with_parent`), and nothing of the stage is published without its rename.
    unsafe { libc::_exit(code) }
}

/// The draw target of a child's progress bars: ANSI on stderr, which is a pipe to the engine
/// (indicatif hides bars on a non-terminal), used when the engine sets [`PROGRESS_ENV`] to
/// its terminal's width.
#[derive(Debug)]
pub struct RelayedTerm {
    width: u16,
}

impl RelayedTerm {
    /// A cursor move; none for 0 (terminals read `ESC[0A` as one line).
    fn cursor(&self, n: usize, code: char) -> std::io::Result<()> {
        if n == 0 {
            return Ok(());
        }
        indicatif::TermLike::write_str(self, &format!("\x1b[{n}{code}"))
    }
}

impl indicatif::TermLike for RelayedTerm {
    fn width(&self) -> u16 {
        self.width
    }
    fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
        self.cursor(n, 'A')
    }
    fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
        self.cursor(n, 'B')
    }
    fn move_cursor_right(&self, n: usize) -> std::io::Result<()> {
        self.cursor(n, 'C')
    }
    fn move_cursor_left(&self, n: usize) -> std::io::Result<()> {
        self.cursor(n, 'D')
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.write_str(&format!("{s}\n"))
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        std::io::stderr().lock().write_all(s.as_bytes())
    }
    fn clear_line(&self) -> std::io::Result<()> {
        self.write_str("\r\x1b[2K")
    }
    fn flush(&self) -> std::io::Result<()> {
        std::io::stderr().lock().flush()
    }
}

/// The draw target for a stage's bars: the terminal when stderr is one, the relay when the
/// engine asked for it, otherwise hidden.
pub fn progress_target() -> indicatif::ProgressDrawTarget {
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressDrawTarget::stderr()
    } else if let Some(width) = std::env::var(PROGRESS_ENV).ok().and_then(|v| v.parse::<u16>().ok()).filter(|w| *w > 0) {
        indicatif::ProgressDrawTarget::term_like_with_hz(Box::new(RelayedTerm { width }), 10)
    } else {
        indicatif::ProgressDrawTarget::hidden()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        Job {
            job_version: JOB_VERSION,
            node: "prep@1".into(),
            key: Key::parse(&"ab".repeat(32)).expect("hex"),
            store: "/s".into(),
            config_file: "/p/pipeline.yaml".into(),
            spec: RawSpec::default(),
            iterations: 2,
            inputs: Vec::new(),
            replace: false,
        }
    }

    #[test]
    fn a_job_round_trips_and_other_versions_are_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let j = job();
        let path = j.write(dir.path()).expect("write");
        assert_eq!(Job::read(&path).expect("read"), j);
        let text = std::fs::read_to_string(&path).expect("text").replace("\"job_version\": 1", "\"job_version\": 2");
        std::fs::write(&path, text).expect("rewrite");
        let err = Job::read(&path).expect_err("version 2").to_string();
        assert!(err.contains("job_version Some(2)") && err.contains("version 1"), "{err}");
        std::fs::write(&path, "{\"job_version\": 1, \"node\": 3}").expect("rewrite");
        assert!(Job::read(&path).expect_err("malformed").to_string().contains("malformed job file"));
    }

    #[test]
    fn exit_statuses_are_described_with_their_signal() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(describe(ExitStatus::from_raw(1 << 8)), "exit status 1");
        assert!(describe(ExitStatus::from_raw(9)).starts_with("killed by signal 9 (SIGKILL"));
        assert_eq!(describe(ExitStatus::from_raw(6)), "killed by signal 6 (SIGABRT)");
    }
}
