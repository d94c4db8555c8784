//! Helpers shared by several integration-test modules.
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The built `self-redteam` binary.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_self-redteam")
}

/// The project root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Run `self-redteam --config CONFIG --store STORE ARGS…`.
pub fn sr(config: &Path, store: &Path, args: &[&str]) -> Output {
    Command::new(bin()).arg("--config").arg(config).arg("--store").arg(store).args(args).output().expect("spawn self-redteam")
}

/// Both output streams of a finished command, for assertion messages.
pub fn text(o: &Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Every file below `dir`, recursively (missing dir: none).
pub fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk_files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// tests/fixtures/tiny.yaml's text with its relative source paths made absolute, so a variant
/// can live in a temp dir.
pub fn tiny_text_abs() -> String {
    let text = std::fs::read_to_string(root().join("tests/fixtures/tiny.yaml")).expect("read tiny.yaml");
    text.replace("../../.cache", &root().join(".cache").display().to_string())
}

/// A command paused at a failpoint (`SELF_REDTEAM_FAILPOINT`).
pub struct Paused {
    pub child: Child,
    /// The stderr lines up to the failpoint's own line (included, last).
    pub seen: Vec<String>,
    /// The rest of its stderr, once it ends (a thread keeps draining it meanwhile).
    pub rest: std::sync::mpsc::Receiver<String>,
}

impl Paused {
    /// The pid a stage process printed with its failpoint line (`… (pid N)`).
    pub fn stage_pid(&self) -> u32 {
        self.seen.last().and_then(|l| l.rsplit("(pid ").next()).and_then(|p| p.trim_end_matches(')').parse().ok()).expect("a failpoint line with a pid")
    }
}

/// Spawn `self-redteam --config CONFIG --store STORE ARGS…` with the failpoint `point` and
/// return once it paused there.
pub fn run_to_failpoint(config: &Path, store: &Path, args: &[&str], point: &str) -> Paused {
    let mut child = Command::new(bin())
        .arg("--config")
        .arg(config)
        .arg("--store")
        .arg(store)
        .args(args)
        .env("SELF_REDTEAM_FAILPOINT", point)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut seen = Vec::new();
    loop {
        let line = lines.next().unwrap_or_else(|| panic!("ended before failpoint {point}: {seen:?}")).expect("read");
        let at = line.starts_with(&format!("failpoint {point}"));
        seen.push(line);
        if at {
            break;
        }
    }
    let (tx, rest) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let lines: Vec<String> = lines.map_while(Result::ok).collect();
        let _ = tx.send(lines.join("\n"));
    });
    Paused { child, seen, rest }
}
