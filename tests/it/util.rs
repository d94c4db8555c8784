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

/// A `self-redteam serve` child on a free loopback port (its policy `model`, `extra` flags
/// after the standard ones); killed on drop.
pub struct Served {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
}

impl Served {
    pub fn start(config: &Path, store: &Path, model: &Path, extra: &[&std::ffi::OsStr]) -> Served {
        let mut child = Command::new(bin())
            .arg("--config")
            .arg(config)
            .arg("--store")
            .arg(store)
            .args(["serve", "--model", model.to_str().expect("utf-8"), "--bind", "127.0.0.1:0", "--workers", "2", "--max-model-len", "8192"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("announce line");
        let url = line.trim().rsplit(' ').next().expect("URL").to_string();
        assert!(line.starts_with("serving ") && url.ends_with("/v1/completions"), "{line:?}");
        Served { child, base: url.trim_end_matches("/v1/completions").to_string() }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The artifact directory of NODE (`show NODE --json` → `dir`).
pub fn shown_artifact_dir(config: &Path, store: &Path, node: &str) -> PathBuf {
    let o = sr(config, store, &["show", node, "--json"]);
    assert!(o.status.success(), "show {node}: {}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("show --json");
    PathBuf::from(v["dir"].as_str().unwrap_or_else(|| panic!("no dir in {v}")))
}

/// The rows of an artifact's `generation.parquet` (which server made each generated turn).
pub fn provenance(dir: &Path) -> Vec<self_redteam::schema::generation::GenerationRow> {
    let bytes = std::fs::read(dir.join("generation.parquet")).unwrap_or_else(|e| panic!("read {}/generation.parquet: {e}", dir.display()));
    self_redteam::schema::from_parquet_bytes::<self_redteam::schema::generation::GenerationSchema>(bytes).expect("generation.parquet")
}
