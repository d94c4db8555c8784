//! The two binaries (docs/executor.md, "Two binaries"): `self-redteam`, which links only the
//! libtorch-free core crate, and `self-redteam-compute`, which runs stages and model verbs.
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{bin, root, text};

fn compute_bin() -> &'static str {
    env!("CARGO_BIN_EXE_self-redteam-compute")
}

/// The shared libraries `ldd` lists for `program`.
fn needed(program: &str) -> String {
    let o = Command::new("ldd").arg(program).output().expect("ldd (Debian: libc-bin) must be installed to check linking");
    assert!(o.status.success(), "ldd {program}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn the_self_redteam_binary_does_not_link_libtorch_and_the_compute_binary_does() {
    let core = needed(bin());
    for lib in ["libtorch", "libc10", "libgomp"] {
        assert!(!core.contains(lib), "self-redteam links {lib}:\n{core}");
    }
    let compute = needed(compute_bin());
    assert!(compute.contains("libtorch_cpu"), "the compute binary should link libtorch_cpu:\n{compute}");
}

/// A copy of the core binary alone in a directory (no compute binary beside it). A hard link
/// when the file system allows: `current_exe` of a symlink is its target, which has one.
fn lonely_core_binary() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tmp dir");
    let p = dir.path().join("self-redteam");
    if std::fs::hard_link(bin(), &p).is_err() {
        std::fs::copy(bin(), &p).expect("copy the binary");
    }
    (dir, p)
}

fn run_with(program: &Path, store: &Path, compute: Option<&str>, args: &[&str]) -> std::process::Output {
    let mut c = Command::new(program);
    c.arg("--config").arg(root().join("tests/fixtures/tiny.yaml")).arg("--store").arg(store).args(args).env_remove("SELF_REDTEAM_COMPUTE");
    if let Some(p) = compute {
        c.env("SELF_REDTEAM_COMPUTE", p);
    }
    c.output().expect("spawn")
}

#[test]
fn without_the_compute_binary_the_store_verbs_work_and_what_needs_a_model_says_what_is_missing() {
    let (_dir, lonely) = lonely_core_binary();
    let store = tempfile::tempdir().expect("store");
    let s = store.path();
    let o = run_with(&lonely, s, None, &["status"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("dataset"), "{}", text(&o));
    for args in [&["run", "--only", "dataset"][..], &["generate", "--model", "base", "hi"], &["run", "--in-process", "--only", "dataset"]] {
        let o = run_with(&lonely, s, None, args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("self-redteam-compute") && err.contains("SELF_REDTEAM_COMPUTE"), "{args:?}: {err}");
    }
    let o = run_with(&lonely, s, Some("/nonexistent/self-redteam-compute"), &["run", "--only", "dataset"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("SELF_REDTEAM_COMPUTE=/nonexistent/self-redteam-compute: no such file"), "{}", text(&o));
    // The override is how a user points the core binary at a compute binary elsewhere.
    let o = run_with(&lonely, s, Some(compute_bin()), &["run", "--only", "dataset"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = run_with(&lonely, s, None, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("status --json");
    let dataset = v["nodes"].as_array().expect("nodes").iter().find(|n| n["name"] == "dataset").cloned().expect("dataset node");
    assert_eq!(dataset["state"], "cached", "{dataset}");
}
