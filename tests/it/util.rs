//! Helpers shared by several integration-test modules.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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
