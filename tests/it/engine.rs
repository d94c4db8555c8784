//! Integration tests: engine — spawn the built binary on tests/fixtures/tiny.yaml with
//! temporary stores, and check keys, caching, determinism, crash-resume, corruption,
//! config errors and the Parquet files' readability in pyarrow.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub(crate) use super::util::{bin, root, run_to_failpoint, sr, text, tiny_text_abs};
use serde_json::Value;

pub(crate) fn tiny() -> PathBuf {
    root().join("tests/fixtures/tiny.yaml")
}

fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write config");
    p
}

/// Build dataset, prep@1, prep@2 (the built stages) into `store`.
pub(crate) fn build(config: &Path, store: &Path) -> Output {
    let o = sr(config, store, &["run", "--only", "dataset", "prep@1", "prep@2", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    o
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NodeStatus {
    pub key: Option<String>,
    pub digest: Option<String>,
    pub state: String,
    pub reason: Option<String>,
}

pub(crate) fn status(config: &Path, store: &Path, extra: &[&str]) -> BTreeMap<String, NodeStatus> {
    let mut args = vec!["status", "--json"];
    args.extend_from_slice(extra);
    let o = sr(config, store, &args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("status json");
    v["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            (
                n["name"].as_str().expect("name").to_string(),
                NodeStatus {
                    key: n["key"].as_str().map(str::to_string),
                    digest: n["content_digest"].as_str().map(str::to_string),
                    state: n["state"].as_str().expect("state").to_string(),
                    reason: n["reason"].as_str().map(str::to_string),
                },
            )
        })
        .collect()
}

fn keys(s: &BTreeMap<String, NodeStatus>) -> BTreeMap<String, Option<String>> {
    s.iter().map(|(n, st)| (n.clone(), st.key.clone())).collect()
}

/// Every file of every artifact: (stage/key/file) → bytes, manifests excluded.
fn data_files(store: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for stage in std::fs::read_dir(store).expect("store").flatten() {
        let sname = stage.file_name().to_string_lossy().to_string();
        if sname.starts_with('.') || !stage.path().is_dir() {
            continue;
        }
        for art in std::fs::read_dir(stage.path()).expect("stage").flatten() {
            for f in std::fs::read_dir(art.path()).expect("artifact").flatten() {
                let fname = f.file_name().to_string_lossy().to_string();
                if fname != "manifest.json" {
                    out.insert(format!("{sname}/{}/{fname}", art.file_name().to_string_lossy()), std::fs::read(f.path()).expect("read"));
                }
            }
        }
    }
    out
}

pub(crate) fn artifact_dir(store: &Path, stage: &str, key: &str) -> PathBuf {
    store.join(stage).join(key)
}

#[test]
fn keys_ignore_comments_order_whitespace_defaults_store_path_and_log_level() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store_a = tmp.path().join("a");
    build(&tiny(), &store_a);
    let base = status(&tiny(), &store_a, &[]);
    for n in ["dataset", "prep@1", "prep@2"] {
        assert_eq!(base[n].state, "cached", "{n}: {:?}", base[n]);
    }
    assert!(base["base"].key.is_some());
    assert_eq!(base["rollout@1"].key, None, "rollout@1 waits for base");

    let abs = tiny_text_abs();
    // Comments, blank lines, reordered sections and keys, flow style.
    let reordered = format!(
        "# a comment\n\nprep: {{seeds_per_iteration: 8}}   # trailing\n\n{}\n",
        abs.lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>().join("\n").replace("prep:\n  seeds_per_iteration: 8\n", "")
    );
    // Spelled-out defaults.
    let spelled = abs.replace("prep:\n  seeds_per_iteration: 8\n", "prep:\n  seeds_per_iteration: 8\n  harmful_fraction: 0.5\n  revise_fraction: 0.5\n")
        + "reward:\n  type: general_sum\n  remove_ties: true\n";
    let spelled = spelled.replace("  max_rows_per_file: 40\n", "  max_rows_per_file: 40\n  max_prompt_chars: 500\n  dedupe: true\n");
    assert_ne!(spelled, abs);
    for (name, variant) in [("reordered.yaml", reordered), ("spelled.yaml", spelled), ("abs.yaml", abs.clone())] {
        let cfg = write_config(tmp.path(), name, &variant);
        let s = status(&cfg, &store_a, &[]);
        assert_eq!(keys(&s), keys(&base), "{name} changed keys:\n{variant}");
        assert_eq!(s["prep@2"].state, "cached", "{name}");
    }
    // Another store path (a copy), and another log level.
    let store_b = tmp.path().join("elsewhere/deeper/b");
    std::fs::create_dir_all(store_b.parent().expect("parent")).expect("mkdir");
    let cp = Command::new("cp").arg("-r").arg(&store_a).arg(&store_b).status().expect("cp");
    assert!(cp.success());
    let moved = status(&tiny(), &store_b, &["--log-level", "debug"]);
    assert_eq!(keys(&moved), keys(&base));
    assert_eq!(moved["prep@1"].digest, base["prep@1"].digest);
    assert_eq!(moved["prep@1"].state, "cached");
}

#[test]
fn key_changes_with_params_seed_sources_and_input_content_and_status_says_why() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = tmp.path().join("s");
    build(&tiny(), &store);
    let base = status(&tiny(), &store, &[]);
    let abs = tiny_text_abs();

    // prep params: prep keys change, dataset does not; status says stale with the reason.
    let cfg = write_config(tmp.path(), "prep6.yaml", &abs.replace("seeds_per_iteration: 8", "seeds_per_iteration: 6"));
    let s = status(&cfg, &store, &[]);
    assert_eq!(s["dataset"].key, base["dataset"].key);
    assert_ne!(s["prep@1"].key, base["prep@1"].key);
    assert_eq!(s["prep@1"].state, "stale");
    assert_eq!(s["prep@1"].reason.as_deref(), Some("params.seeds_per_iteration changed 8 → 6"));
    let o = sr(&cfg, &store, &["explain", "prep@1"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "params.seeds_per_iteration changed 8 → 6");

    // Run seed: every key changes.
    let cfg = write_config(tmp.path(), "seed.yaml", &abs.replace("seed: 8888", "seed: 7"));
    let s = status(&cfg, &store, &[]);
    assert_ne!(s["dataset"].key, base["dataset"].key);
    assert_ne!(s["base"].key, base["base"].key);
    assert!(s["dataset"].reason.as_deref().is_some_and(|r| r.contains("seed changed 8888 → 7")), "{:?}", s["dataset"]);

    // A pinned file's sha256: the dataset key changes (and the reason names the file).
    let sha = "ccf76355d0d661bcf81f57f70baa1db9299da8aa9352f39b3672cf3da560d3e0";
    let pinned = abs.replace("  max_rows_per_file: 40\n", &format!("  max_rows_per_file: 40\n  harmful:\n    - {{format: advbench_prompt, path: pyrit/pyrit/datasets/seed_datasets/local/adv_bench.prompt, sha256: {sha}, name: advbench}}\n"));
    let pinned_cfg = write_config(tmp.path(), "pinned.yaml", &pinned);
    let o = sr(&pinned_cfg, &store, &["run", "--only", "dataset"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let s_pinned = status(&pinned_cfg, &store, &[]);
    let s_other = status(&write_config(tmp.path(), "pinned2.yaml", &pinned.replace(sha, &"0".repeat(64))), &store, &[]);
    assert_ne!(s_pinned["dataset"].key, s_other["dataset"].key);
    assert_eq!(s_other["dataset"].reason.as_deref(), Some("file dataset.harmful[0] changed sha256 ccf76355d0d6 → 000000000000"));

    // Input content: a dataset param that changes its rows changes prep's key with the
    // same prep params; one that leaves the bytes alone keeps prep cached (early cutoff).
    let fewer = write_config(tmp.path(), "fewer.yaml", &abs.replace("max_rows_per_file: 40", "max_rows_per_file: 30"));
    build(&fewer, &store);
    let s = status(&fewer, &store, &[]);
    assert_ne!(s["dataset"].digest, base["dataset"].digest);
    assert_ne!(s["prep@1"].key, base["prep@1"].key);
    let same_bytes = write_config(tmp.path(), "same.yaml", &abs.replace("max_rows_per_file: 40\n", "max_rows_per_file: 40\n  max_prompt_chars: 100000\n"));
    let tight = write_config(tmp.path(), "tight.yaml", &abs.replace("max_rows_per_file: 40\n", "max_rows_per_file: 40\n  max_prompt_chars: 90000\n"));
    build(&same_bytes, &store);
    let o = sr(&tight, &store, &["run", "--only", "dataset", "prep@1", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["nodes"][0]["outcome"], "miss", "dataset key differs: recomputed");
    assert_eq!(v["nodes"][1]["outcome"], "hit", "same dataset bytes: prep@1 stays cached\n{v:#}");
}

#[test]
fn two_runs_into_two_empty_stores_are_byte_identical() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    build(&tiny(), &a);
    build(&tiny(), &b);
    let (fa, fb) = (data_files(&a), data_files(&b));
    assert_eq!(fa.len(), 4, "seeds, judge_train, 2 × prep: {:?}", fa.keys().collect::<Vec<_>>());
    assert_eq!(fa, fb);
    let (sa, sb) = (status(&tiny(), &a, &[]), status(&tiny(), &b, &[]));
    assert_eq!(sa, sb);
    // The two iterations draw different batches.
    let p1 = fa.iter().find(|(k, _)| k.starts_with(&format!("prep/{}", sa["prep@1"].key.as_deref().expect("key")))).expect("prep@1");
    let p2 = fa.iter().find(|(k, _)| k.starts_with(&format!("prep/{}", sa["prep@2"].key.as_deref().expect("key")))).expect("prep@2");
    assert_ne!(p1.1, p2.1);
}

#[test]
fn kill_9_mid_stage_then_resume_recomputes_nothing_finished() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = tmp.path().join("s");
    let paused = run_to_failpoint(&tiny(), &store, &["run", "--only", "dataset", "prep@1", "prep@2"], "prep@2");
    let stage_pid = paused.stage_pid();
    let (mut child, seen) = (paused.child, paused.seen);
    // The paused run holds the store lock: a second writer is refused.
    let o = sr(&tiny(), &store, &["run", "--only", "dataset"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is locked by another run"), "{}", text(&o));
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    // The stage process notices its engine is gone and exits without publishing.
    let gone = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        std::fs::read_to_string(format!("/proc/{stage_pid}/stat")).map_or(true, |s| s.split_whitespace().nth(2) == Some("Z"))
    });
    assert!(gone, "the orphaned stage process {stage_pid} is still running");
    let after_crash = status(&tiny(), &store, &[]);
    assert_eq!(after_crash["dataset"].state, "cached", "{seen:?}");
    assert_eq!(after_crash["prep@1"].state, "cached");
    assert_eq!(after_crash["prep@2"].state, "missing", "nothing half-written looks complete");
    // The stage process exits by itself once its engine is gone (src/executor.rs).
    let tmpdirs = std::fs::read_dir(store.join(".tmp")).expect(".tmp").flatten().filter(|e| !e.file_name().to_string_lossy().starts_with("job-")).count();
    assert_eq!(tmpdirs, 1, "the interrupted stage's staging dir is left in .tmp (beside its job file)");
    let ds_manifest = artifact_dir(&store, "dataset", after_crash["dataset"].key.as_deref().expect("key")).join("manifest.json");
    let before = std::fs::read(&ds_manifest).expect("manifest");

    let o = sr(&tiny(), &store, &["run", "--only", "dataset", "prep@1", "prep@2", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    let outcomes: Vec<(String, String)> = v["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| (n["node"].as_str().expect("n").to_string(), n["outcome"].as_str().expect("o").to_string()))
        .collect();
    assert_eq!(outcomes, [("dataset".to_string(), "hit".to_string()), ("prep@1".into(), "hit".into()), ("prep@2".into(), "miss".into())]);
    assert_eq!(std::fs::read(&ds_manifest).expect("manifest"), before, "finished node untouched");
    assert_eq!(std::fs::read_dir(store.join(".tmp")).expect(".tmp").count(), 0, "leftovers cleaned");

    let clean = tmp.path().join("clean");
    build(&tiny(), &clean);
    let (s1, s2) = (status(&tiny(), &store, &[]), status(&tiny(), &clean, &[]));
    for n in ["dataset", "prep@1", "prep@2"] {
        assert_eq!(s1[n].digest, s2[n].digest, "{n}");
        assert!(s1[n].digest.is_some());
    }
}

#[test]
fn flipped_byte_is_caught_by_verify_and_refused_by_its_consumer() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = tmp.path().join("s");
    build(&tiny(), &store);
    let o = sr(&tiny(), &store, &["verify", "--all", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let s = status(&tiny(), &store, &[]);
    let seeds = artifact_dir(&store, "dataset", s["dataset"].key.as_deref().expect("key")).join("seeds.parquet");
    let mut bytes = std::fs::read(&seeds).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&seeds, &bytes).expect("flip");

    let o = sr(&tiny(), &store, &["verify", "--all", "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    let bad: Vec<&Value> = v["artifacts"].as_array().expect("arr").iter().filter(|a| a["ok"] == false).collect();
    assert_eq!(bad.len(), 1, "{v:#}");
    assert_eq!(bad[0]["node"], "dataset");
    assert!(bad[0]["problems"][0].as_str().expect("msg").contains("seeds.parquet does not match its manifest"), "{v:#}");

    let prep1 = artifact_dir(&store, "prep", s["prep@1"].key.as_deref().expect("key"));
    let before = std::fs::read(prep1.join("prep.parquet")).expect("read");
    let o = sr(&tiny(), &store, &["run", "--only", "prep@1", "--force"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("refusing input dataset") && err.contains("seeds.parquet does not match its manifest"), "{err}");
    assert_eq!(std::fs::read(prep1.join("prep.parquet")).expect("read"), before, "the cached prep@1 is kept");
}

#[test]
fn bad_config_missing_source_and_wrong_sha256_fail_clearly_and_publish_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let abs = tiny_text_abs();
    let cases = [
        ("unknown.yaml", abs.replace("seeds_per_iteration: 8", "seeds_per_iter: 8"), vec!["prep.seeds_per_iter", "line", "unknown field"]),
        ("type.yaml", abs.replace("seeds_per_iteration: 8", "seeds_per_iteration: lots"), vec!["prep.seeds_per_iteration", "line"]),
        (
            "field.yaml",
            abs.replace("  max_rows_per_file: 40\n", "  max_rows_per_file: 40\n  harmful:\n    - {path: a.prompt, sha256: x}\n"),
            vec!["dataset.harmful[0] (line 14", "missing field `format`"],
        ),
        ("ref.yaml", abs.replace("    harmbench: {subset: 4}", "    harmbenchh: {subset: 4}"), vec!["eval.suites.harmbenchh", "no such suite"]),
        ("fraction.yaml", abs.replace("seeds_per_iteration: 8", "seeds_per_iteration: 8\n  harmful_fraction: 1.5"), vec!["prep.harmful_fraction", "between 0 and 1"]),
        (
            "missing.yaml",
            abs.replace(&root().join(".cache/sources").display().to_string(), &tmp.path().join("nowhere").display().to_string()),
            vec!["is missing", "nowhere/pyrit/pyrit/datasets/seed_datasets/local/adv_bench.prompt", "dataset (dataset.harmful[0])"],
        ),
        (
            "sha.yaml",
            abs.replace("  max_rows_per_file: 40\n", &format!("  max_rows_per_file: 40\n  harmful:\n    - {{format: advbench_prompt, path: pyrit/pyrit/datasets/seed_datasets/local/adv_bench.prompt, sha256: {}}}\n", "0".repeat(64))),
            vec!["sha256 ccf76355d0d661bcf81f57f70baa1db9299da8aa9352f39b3672cf3da560d3e0 does not match the pinned 0000", "adv_bench.prompt"],
        ),
    ];
    for (name, cfg_text, needles) in cases {
        let cfg = write_config(tmp.path(), name, &cfg_text);
        let store = tmp.path().join(format!("store-{name}"));
        let o = sr(&cfg, &store, &["run"]);
        assert_eq!(o.status.code(), Some(1), "{name}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        for n in needles {
            assert!(err.contains(n), "{name}: {n:?} not in {err}");
        }
        let published: Vec<String> = std::fs::read_dir(&store)
            .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().to_string()).filter(|n| !n.starts_with('.')).collect())
            .unwrap_or_default();
        assert!(published.is_empty(), "{name}: published {published:?}");
    }
}

#[test]
fn run_completes_the_tiny_dag_and_from_reruns_a_node_and_its_dependants() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = tmp.path().join("s");
    let o = sr(&tiny(), &store, &["run", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let s = status(&tiny(), &store, &[]);
    for node in ["dataset", "base", "prep@2", "rollout@2", "judge@2", "update@2", "eval@0", "eval@2"] {
        assert_eq!(s[node].state, "cached", "{node}");
    }
    // Two nodes at a time (each stage in its own process): the same bytes in every data file,
    // and the report still lists the nodes in plan order.
    let parallel = tmp.path().join("p");
    let o2 = sr(&tiny(), &parallel, &["run", "--jobs", "2", "--json"]);
    assert_eq!(o2.status.code(), Some(0), "{}", text(&o2));
    assert_eq!(data_files(&parallel), data_files(&store), "run --jobs 2 and --jobs 1 write the same bytes");
    let order = |o: &std::process::Output| -> Vec<String> {
        let v: Value = serde_json::from_slice(&o.stdout).expect("json");
        v["nodes"].as_array().expect("nodes").iter().map(|n| n["node"].as_str().expect("node").to_string()).collect()
    };
    assert_eq!(order(&o2), order(&o));
    let o = sr(&tiny(), &parallel, &["run", "--jobs", "2", "--in-process"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("needs one process per stage"), "{}", text(&o));
    // --from reruns that node and what follows it; upstream stays as it is.
    let o = sr(&tiny(), &store, &["run", "--from", "prep@2", "--force", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    let nodes: Vec<&str> = v["nodes"].as_array().expect("nodes").iter().map(|n| n["node"].as_str().expect("node")).collect();
    assert_eq!(nodes, ["prep@2", "rollout@2", "judge@2", "update@2", "eval@2"], "{v:#}");
    assert!(v["nodes"].as_array().expect("nodes").iter().all(|n| n["outcome"] == "miss"));
    assert_eq!(v["nodes"][0]["content_digest"].as_str(), s["prep@2"].digest.as_deref(), "same bytes again");
    assert_eq!(v["nodes"][3]["content_digest"].as_str(), s["update@2"].digest.as_deref(), "same policy again");
}

#[test]
fn prep_marks_half_of_each_class_and_dataset_keeps_eval_out_of_training() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = tmp.path().join("s");
    build(&tiny(), &store);
    let o = sr(&tiny(), &store, &["show", "prep@1", "--rows", "8", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    let rows = v["rows"]["prep.parquet"]["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 8);
    let count = |dt: &str| rows.iter().filter(|r| r["data_type"] == dt).count();
    assert_eq!((count("generated_harmful"), count("vanilla_harmful"), count("generated_benign"), count("vanilla_benign")), (2, 2, 2, 2));
    assert!(rows.iter().all(|r| (r["revise"] == "true") == r["data_type"].as_str().expect("dt").starts_with("generated")));
    assert_eq!(v["manifest"]["metrics"]["seeds"], 8);

    // Show by key prefix and lineage back to the sources.
    let s = status(&tiny(), &store, &[]);
    let prefix = &s["dataset"].key.as_deref().expect("key")[..10];
    let o = sr(&tiny(), &store, &["show", prefix, "--json", "--rows", "1"]);
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["manifest"]["node"], "dataset");
    let seeds_total = v["rows"]["seeds.parquet"]["total_rows"].as_u64().expect("n");
    assert!(seeds_total > 200, "{seeds_total}");
    let o = sr(&tiny(), &store, &["lineage", "prep@2", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["inputs"][0]["node"], "dataset");
    assert_eq!(v["inputs"][0]["role"], "dataset");
    assert!(v["inputs"][0]["sources"].as_array().expect("sources").len() > 10);

    // `log` has one row per built iteration with prep's metrics.
    let o = sr(&tiny(), &store, &["log", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["iterations"].as_array().expect("its").len(), 2);
    assert_eq!(v["iterations"][1]["metrics"]["prep.generated_benign"], 2);
}

#[test]
fn verify_recompute_and_gc_work_on_real_artifacts() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = tmp.path().join("s");
    build(&tiny(), &store);
    let o = sr(&tiny(), &store, &["verify", "prep@1", "--recompute", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["artifacts"][0]["recompute"]["identical"], true, "{v:#}");

    // A second prep variant makes the first unreachable; gc removes it, keep-last spares it.
    let cfg = write_config(tmp.path(), "p6.yaml", &tiny_text_abs().replace("seeds_per_iteration: 8", "seeds_per_iteration: 6"));
    build(&cfg, &store);
    let o = sr(&cfg, &store, &["gc", "--keep-last", "1", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["removed"].as_array().expect("arr").len(), 0);
    let o = sr(&cfg, &store, &["gc", "--dry-run", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    let mut nodes: Vec<&str> = v["removed"].as_array().expect("arr").iter().map(|r| r["node"].as_str().expect("node")).collect();
    nodes.sort();
    assert_eq!(nodes, ["prep@1", "prep@2"]);
    let o = sr(&cfg, &store, &["gc", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(status(&tiny(), &store, &[])["prep@1"].state, "stale", "only the 6-seed prep@1 is left");
    assert_eq!(status(&cfg, &store, &[])["prep@1"].state, "cached");
}

#[test]
fn every_parquet_artifact_opens_unchanged_in_pyarrow() {
    let python = root().join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/setup.sh (it creates .venv with pyarrow)", python.display());
    let tmp = tempfile::tempdir().expect("tmp");
    let store = tmp.path().join("s");
    build(&tiny(), &store);
    let script = r#"
import json, pathlib, sys
import pyarrow.parquet as pq
out = {}
for mf in sorted(pathlib.Path(sys.argv[1]).glob("*/*/manifest.json")):
    m = json.loads(mf.read_text())
    for f in m["files"]:
        if f["name"].endswith(".parquet"):
            t = pq.read_table(mf.parent / f["name"])
            out[m["node"] + "/" + f["name"]] = {"rows": t.num_rows, "manifest_rows": f["rows"], "columns": t.column_names,
                                                "created_by": pq.ParquetFile(mf.parent / f["name"]).metadata.created_by}
print(json.dumps(out))
"#;
    let o = Command::new(&python).arg("-c").arg(script).arg(&store).output().expect("run python");
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    let files = v.as_object().expect("obj");
    assert_eq!(files.len(), 4, "{v:#}");
    for (name, f) in files {
        assert_eq!(f["rows"], f["manifest_rows"], "{name}");
        assert_eq!(f["created_by"], "self-redteam", "{name}");
    }
    assert_eq!(v["dataset/seeds.parquet"]["columns"], serde_json::json!(["id", "text", "label", "source", "category", "split", "suite"]));
    assert_eq!(v["prep@1/prep.parquet"]["rows"], 8);
}

#[test]
fn dataset_from_the_pinned_sources_keeps_every_eval_prompt_out_of_training() {
    use self_redteam::schema::{judge_train::JudgeTrainSchema, read_parquet, seeds::SeedsSchema};
    use std::collections::HashSet;
    let spec = self_redteam::spec::Spec::load(&root().join("pipeline.yaml")).expect("default pipeline.yaml is valid");
    let tmp = tempfile::tempdir().expect("tmp");
    let store = tmp.path().join("s");
    let o = sr(&root().join("pipeline.yaml"), &store, &["run", "--only", "dataset", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    let dir = store.join("dataset").join(v["nodes"][0]["key"].as_str().expect("key"));
    let seeds = read_parquet::<SeedsSchema>(&dir.join("seeds.parquet")).expect("seeds");
    let judge = read_parquet::<JudgeTrainSchema>(&dir.join("judge_train.parquet")).expect("judge");
    let count = |split: &str, suite: Option<&str>, label: &str| {
        seeds.iter().filter(|r| r.split.as_str() == split && r.suite.as_deref() == suite && r.label.as_str() == label).count()
    };
    // HarmBench test, standard functional category only (docs/resources.md: 159 of 320).
    assert_eq!(count("eval", Some("harmbench"), "harmful"), 159);
    assert_eq!(count("eval", Some("overrefusal"), "benign"), 150);
    assert!(count("eval", Some("strongreject"), "harmful") >= 300);
    assert!(count("eval", Some("donotanswer"), "harmful") >= 900);
    let adv_eval = count("eval", Some("advbench"), "harmful");
    assert!((90..=105).contains(&adv_eval), "20% of AdvBench: {adv_eval}");
    let benign_eval = count("eval", Some("benign"), "benign");
    let benign_train = count("train", None, "benign");
    let benign_total = (benign_eval + benign_train) as f64;
    assert!((benign_eval as f64 - 0.1 * benign_total).abs() <= 1.0, "{benign_eval} of {benign_total}");
    assert!(benign_total > 1800.0, "{benign_total}");
    assert!(count("holdout_attacker", None, "harmful") > 30);
    assert!(count("train", None, "harmful") > 300);
    // Unique ids, nothing over 500 chars, and no eval prompt in training or judge data.
    let ids: HashSet<&str> = seeds.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), seeds.len(), "deduplicated");
    let adversarial = |r: &&self_redteam::schema::seeds::SeedRow| r.suite.as_deref().is_some_and(|s| spec.raw.dataset.adversarial_suites.contains_key(s));
    assert!(seeds.iter().filter(|r| !adversarial(r)).all(|r| r.text.chars().count() <= spec.raw.dataset.max_prompt_chars as usize));
    // Adversarial suites: every HarmBench test behaviour in a template, under their own cap.
    assert_eq!(count("eval", Some("harmbench_dan"), "harmful"), 159);
    assert_eq!(count("eval", Some("jailbreak_wild"), "harmful"), 159);
    assert!(seeds.iter().filter(adversarial).all(|r| r.text.chars().count() <= spec.raw.dataset.adversarial_max_prompt_chars as usize));
    let manifest: Value = serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest")).expect("json");
    assert_eq!(manifest["metrics"]["dropped_long_adversarial"], 0, "{:#}", manifest["metrics"]);
    let eval: HashSet<&str> = seeds.iter().filter(|r| r.split == self_redteam::schema::seeds::Split::Eval).map(|r| r.id.as_str()).collect();
    let eval_norm: HashSet<String> =
        seeds.iter().filter(|r| r.split == self_redteam::schema::seeds::Split::Eval).map(|r| self_redteam::data::normalise(&r.text)).collect();
    assert!(seeds
        .iter()
        .filter(|r| r.split != self_redteam::schema::seeds::Split::Eval)
        .all(|r| !eval.contains(r.id.as_str()) && !eval_norm.contains(&self_redteam::data::normalise(&r.text))));
    assert!(judge.len() > 500, "{}", judge.len());
    assert!(judge.iter().all(|j| !eval_norm.contains(&self_redteam::data::normalise(&j.prompt))), "a judge-training prompt is an eval prompt");
    assert!(judge.iter().any(|j| j.refusal == Some(true)) && judge.iter().any(|j| j.harmful_response == Some(true)));
}

/// Issue 10: every number of the config is range-checked (spec.rs `number_bounds`), NaN and
/// ±inf everywhere (they all serialise to `null` in a key), and the message names the key path.
#[test]
fn nan_inf_and_out_of_range_numbers_are_rejected_with_their_key_path() {
    use self_redteam::spec::Spec;
    let cases: [(&str, &str, &str); 23] = [
        ("update:\n  kl_beta: .nan\n", "update.kl_beta", "must be finite and ≥ 0, got NaN"),
        ("update:\n  grad_clip: .inf\n", "update.grad_clip", "must be finite and > 0, got inf"),
        ("update:\n  reward_clip: -.inf\n", "update.reward_clip", "got -inf"),
        ("update:\n  clip_eps: 0\n", "update.clip_eps", "must be finite and > 0, got 0"),
        ("update:\n  lr: -1e-5\n", "update.lr", "got -0.00001"),
        ("update:\n  weight_decay: -0.1\n", "update.weight_decay", "≥ 0"),
        ("update:\n  sft_coef: .nan\n", "update.sft_coef", "got NaN"),
        ("update:\n  betas: [0.9, 1.0]\n", "update.betas[1]", "in [0, 1), got 1"),
        ("update:\n  warmup_ratio: -0.5\n", "update.warmup_ratio", "between 0 and 1"),
        ("rollout:\n  temperature: .inf\n", "rollout.temperature", "got inf"),
        ("rollout:\n  top_p: 0\n", "rollout.top_p", "in (0, 1], got 0"),
        ("sft:\n  top_p: 1.5\n", "sft.top_p", "got 1.5"),
        ("judge:\n  probe:\n    l2: .nan\n", "judge.probe.l2", "got NaN"),
        ("judge:\n  probe:\n    lr: 0\n", "judge.probe.lr", "> 0"),
        ("prep:\n  harmful_fraction: .nan\n", "prep.harmful_fraction", "between 0 and 1, got NaN"),
        ("dataset:\n  holdout_attacker_fraction: 1.5\n", "dataset.holdout_attacker_fraction", "got 1.5"),
        ("run:\n  iterations: 0\n", "run.iterations", "between 1 and 100000, got 0"),
        ("run:\n  iterations: 4294967295\n", "run.iterations", "got 4294967295"),
        ("rollout:\n  max_new_tokens: 4000000000\n", "rollout.max_new_tokens", "between 1 and 32768"),
        ("judge:\n  wildguard:\n    retries: 1000\n", "judge.wildguard.retries", "between 0 and 100, got 1000"),
        ("eval:\n  suites:\n    harmbench: {subset: 0}\n", "eval.suites.harmbench.subset", "at least 1, got 0"),
        ("update:\n  sft_batch_size: 0\n", "update.sft_batch_size", "at least 1"),
        ("eval:\n  batch_size: 65\n", "eval.batch_size", "between 1 and 64, got 65"),
    ];
    for (text, path, needle) in cases {
        let msg = Spec::from_yaml(text, Path::new("/p/pipeline.yaml")).expect_err(text).to_string();
        assert!(msg.contains(&format!("{path}: must be")) && msg.contains(needle), "{text:?}: {msg}");
    }
    // The boundaries themselves are allowed.
    let edges = "update: {kl_beta: 0, weight_decay: 0, betas: [0, 0.999], warmup_ratio: 1}\nrollout: {temperature: 0, top_p: 1}\nrun: {iterations: 100000}\njudge: {wildguard: {retries: 0}}\n";
    Spec::from_yaml(edges, Path::new("/p/pipeline.yaml")).expect("boundary values are valid");
}

/// Issue 10: every sha256 pin is exactly 64 lowercase hex digits. A non-ASCII pin used to
/// pass and then panic `status` (cut at byte 12 for display).
#[test]
fn non_ascii_short_or_uppercase_sha256_pins_are_rejected_by_spec_load() {
    use self_redteam::spec::Spec;
    let tmp = tempfile::tempdir().expect("tmp");
    let good = "ccf76355d0d661bcf81f57f70baa1db9299da8aa9352f39b3672cf3da560d3e0";
    let non_ascii = format!("{}é{}", &good[..11], &good[13..]);
    assert_eq!(non_ascii.len(), 64, "as long as a real pin, in bytes");
    let harmful = |sha: &str| format!("dataset:\n  harmful:\n    - {{format: advbench_prompt, path: a.prompt, sha256: \"{sha}\"}}\n");
    let cases = [
        (harmful(&non_ascii), "dataset.harmful[0].sha256"),
        (harmful(&good[..63]), "dataset.harmful[0].sha256"),
        (harmful(&good.to_uppercase()), "dataset.harmful[0].sha256"),
        (format!("base:\n  model: {{format: gguf, path: m.gguf, sha256: \"{non_ascii}\"}}\n"), "base.model.sha256"),
        (format!("base:\n  model: {{format: hf_dir, path: m, sha256: {{config.json: \"{non_ascii}\"}}}}\n"), "base.model.sha256.config.json"),
        (format!("judge:\n  probe: {{embedder_tokenizer_sha256: \"{}\"}}\n", &good[..12]), "judge.probe.embedder_tokenizer_sha256"),
        (format!("sft:\n  source: {{format: alpaca_eval_responses, path: a.json, sha256: \"{non_ascii}\"}}\n"), "sft.source.sha256"),
        (format!("eval:\n  custom_suites:\n    mine: {{path: m.csv, label: harmful, sha256: \"{non_ascii}\"}}\n"), "eval.custom_suites.mine.sha256"),
    ];
    for (i, (text, path)) in cases.iter().enumerate() {
        let cfg = write_config(tmp.path(), &format!("pin{i}.yaml"), text);
        let msg = Spec::load(&cfg).expect_err(text).to_string();
        assert!(msg.contains(&format!("{path}: must be 64 lowercase hex digits")), "{text}: {msg}");
    }
    // The CLI says so instead of panicking (exit 1, not 101).
    let cfg = write_config(tmp.path(), "status.yaml", &tiny_text_abs().replace("    format: tiny_random   # model::tiny_random_llama(run seed): byte tokenizer, ChatML template\n    path: builtin         # ignored for tiny_random\n    sha256: {}", &format!("    format: gguf\n    path: m.gguf\n    sha256: \"{non_ascii}\"")));
    let o = sr(&cfg, &tmp.path().join("s"), &["status"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("base.model.sha256: must be 64 lowercase hex digits"), "{}", text(&o));
}

/// A tiny HF directory (config.json, model.safetensors, tokenizer.json, tokenizer_config.json)
/// and the YAML `sha256:` map that pins it.
fn tiny_hf_dir(dir: &Path) -> BTreeMap<String, String> {
    self_redteam::model::tiny_random_llama(3).save_hf_dir(dir).expect("save tiny HF dir");
    let mut pins = BTreeMap::new();
    for f in std::fs::read_dir(dir).expect("dir").flatten() {
        let name = f.file_name().to_string_lossy().to_string();
        pins.insert(name, self_redteam::store::key::sha256_file(&f.path()).expect("sha256"));
    }
    pins
}

fn hf_config(model_dir: &Path, pins: &BTreeMap<String, String>) -> String {
    let map: Vec<String> = pins.iter().map(|(f, s)| format!("\"{f}\": {s}")).collect();
    format!("base:\n  model:\n    format: hf_dir\n    path: {}\n    sha256: {{{}}}\n", model_dir.display(), map.join(", "))
}

/// Issue 10 (pins): `base` with `format: hf_dir` pins every file the loader reads. A partial
/// map is an error naming the missing files; a changed config.json changes the base key (or,
/// with the old pin, is refused before the stage runs); pin names stay inside the directory.
#[test]
fn hf_dir_base_pins_every_file_and_a_changed_config_json_changes_the_base_key() {
    use self_redteam::plan::Plan;
    use self_redteam::spec::Spec;
    let tmp = tempfile::tempdir().expect("tmp");
    let model = tmp.path().join("model");
    let pins = tiny_hf_dir(&model);
    assert_eq!(pins.keys().collect::<Vec<_>>(), ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]);
    let base_key = |text: &str| -> Result<String, String> {
        let cfg = write_config(tmp.path(), "hf.yaml", text);
        let spec = Spec::load(&cfg).map_err(|e| e.to_string())?;
        let plan = Plan::new(&spec, Some(1));
        let base = plan.get("base").expect("base node");
        Ok(base.components(1, spec.raw.run.seed, &[]).key().to_string())
    };
    let k1 = base_key(&hf_config(&model, &pins)).expect("fully pinned");

    // Partial and empty maps name what is missing; a chat template found in the dir counts.
    let mut partial = pins.clone();
    partial.remove("tokenizer_config.json");
    let msg = base_key(&hf_config(&model, &partial)).expect_err("partial");
    assert!(msg.contains("base.model.sha256: every file the loader reads must be pinned; missing: tokenizer_config.json"), "{msg}");
    let msg = base_key(&hf_config(&model, &BTreeMap::new())).expect_err("empty");
    assert!(msg.contains("missing: config.json, model.safetensors, tokenizer.json, tokenizer_config.json"), "{msg}");
    std::fs::write(model.join("chat_template.jinja"), "{{ messages }}").expect("write template");
    let msg = base_key(&hf_config(&model, &pins)).expect_err("template unpinned");
    assert!(msg.contains("missing: chat_template.jinja"), "{msg}");
    std::fs::remove_file(model.join("chat_template.jinja")).expect("rm");

    // Pin names must stay inside the model directory.
    for escape in ["../config.json", "/etc/passwd"] {
        let mut p = pins.clone();
        p.insert(escape.to_string(), "0".repeat(64));
        let msg = base_key(&hf_config(&model, &p)).expect_err(escape);
        assert!(msg.contains("must be a file name inside the model directory"), "{escape}: {msg}");
    }

    // Another config.json: with its new pin the key changes ...
    let cfg_path = model.join("config.json");
    let mut config_text = std::fs::read_to_string(&cfg_path).expect("read");
    config_text.push('\n');
    std::fs::write(&cfg_path, &config_text).expect("write");
    let mut repinned = pins.clone();
    repinned.insert("config.json".into(), self_redteam::store::key::sha256_file(&cfg_path).expect("sha"));
    let k2 = base_key(&hf_config(&model, &repinned)).expect("repinned");
    assert_ne!(k1, k2);
    // ... and with the old pin, `base` is refused before it runs.
    let cfg = write_config(tmp.path(), "old-pin.yaml", &(tiny_text_abs().replace("base:\n  model:\n    format: tiny_random   # model::tiny_random_llama(run seed): byte tokenizer, ChatML template\n    path: builtin         # ignored for tiny_random\n    sha256: {}\n", "") + &hf_config(&model, &pins)));
    let o = sr(&cfg, &tmp.path().join("s"), &["run", "--only", "base"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("base (base.model/config.json)") && err.contains("does not match the pinned"), "{err}");
}

/// Issue 10: the fuzzer on `pipeline.yaml` text: `Spec::load` (and, for small plans,
/// `Plan::new`) never panics on any mutation of the shipped configs.
#[test]
fn fuzz_pipeline_yaml() {
    use self_redteam::plan::Plan;
    use self_redteam::spec::Spec;
    let mut seeds = vec![std::fs::read(root().join("pipeline.yaml")).expect("pipeline.yaml"), tiny_text_abs().into_bytes()];
    for name in ["attacker_only", "defender_only", "no_cot", "gpu"] {
        seeds.push(std::fs::read(root().join(format!("configs/{name}.yaml"))).expect("config"));
    }
    // Regression inputs found by longer runs (FUZZ_ITERS=20000) stay as seeds.
    seeds.extend(FUZZ_PIPELINE_REGRESSIONS.iter().map(|s| s.as_bytes().to_vec()));
    let tmp = tempfile::tempdir().expect("tmp");
    let path = tmp.path().join("pipeline.yaml");
    crate::fuzz::run("pipeline_yaml", &seeds, crate::fuzz::iterations(300), |bytes| {
        std::fs::write(&path, bytes).expect("write fuzz input");
        if let Ok(spec) = Spec::load(&path) {
            // A plan is five nodes per iteration: small ones only, so an iteration count of
            // 100,000 (valid) does not make the fuzzer slow.
            if spec.raw.run.iterations <= 50 {
                let _ = Plan::new(&spec, None);
            }
        }
    });
}

/// Inputs that once crashed `fuzz_pipeline_yaml` (none yet; each new one is added here).
const FUZZ_PIPELINE_REGRESSIONS: &[&str] = &[];

/// Issue 10 (keys): speed-only knobs and an unused judge backend's settings change no key.
/// Builds dataset, base, prep@1 and rollout@1 of the tiny DAG (keywords judge), so status
/// computes the keys of judge@1 and eval@0 too.
#[test]
fn unused_judge_backend_settings_and_speed_knobs_leave_every_key_unchanged() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = tmp.path().join("s");
    let abs = tiny_text_abs();
    let o = sr(&tiny(), &store, &["run", "--only", "dataset", "base", "prep@1", "rollout@1"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let base = status(&tiny(), &store, &[]);
    for n in ["judge@1", "eval@0", "rollout@1"] {
        assert!(base[n].key.is_some(), "{n} has a key: {:?}", base[n]);
    }
    let judge_section = "judge:\n  backend: keywords";
    let same = [
        (
            "wildguard.yaml",
            abs.replace(
                judge_section,
                &format!("{judge_section}\n  wildguard: {{url: 'https://u:secret@judge.example/v1?token=t', timeout_s: 5, retries: 0, concurrency: 1}}"),
            ),
        ),
        ("probe.yaml", abs.replace("    embedder_dir:", "    l2: 0.5\n    epochs: 3\n    embedder_dir:")),
        (
            "speed.yaml",
            abs.replace("  threads: 2", "  threads: 1")
                .replace("eval:\n  every: 1", "eval:\n  batch_size: 3\n  every: 1")
                .replace("  demos: 4\n", "  demos: 4\n  batch_size: 3\n"),
        ),
    ];
    for (name, variant) in same {
        assert_ne!(variant, abs, "{name}: the replacement applied");
        let s = status(&write_config(tmp.path(), name, &variant), &store, &[]);
        assert_eq!(keys(&s), keys(&base), "{name} changed keys:\n{variant}");
    }
    // `eval.every` picks which iterations are evaluated; an evaluation it keeps is the same
    // artifact (the plan loses eval@1; eval@0 keeps its key).
    let every2 = abs.replace("eval:\n  every: 1", "eval:\n  every: 2");
    assert_ne!(every2, abs);
    let s = status(&write_config(tmp.path(), "every2.yaml", &every2), &store, &[]);
    assert!(!s.contains_key("eval@1"), "{:?}", s.keys().collect::<Vec<_>>());
    assert_eq!(s["eval@0"].key, base["eval@0"].key);
    // The selected backend's settings do enter.
    let s = status(&write_config(tmp.path(), "kw.yaml", &abs.replace("refusal: [\"I cannot\", \"sorry\", \"e\"]", "refusal: [\"I cannot\"]")), &store, &[]);
    assert_ne!(s["judge@1"].key, base["judge@1"].key);
    assert_ne!(s["eval@0"].key, base["eval@0"].key);
    assert_eq!(s["rollout@1"].key, base["rollout@1"].key);
}

/// Issue 10 (keys): `rollout.batch_size` stays in the rollout key, because it changes bytes:
/// the batch's left-padded prefill is one MKL forward whose rounding depends on the batch
/// mates (measured: logprobs differ by ~1e-6 between batch sizes 1 and 4). It no longer
/// reseeds anything: draws are seeded by (seed, kind, iteration, row), not by the key, so
/// every batch size plays the same games, token for token.
#[test]
fn rollout_batch_size_changes_the_key_and_logprob_rounding_but_not_one_sampled_token() {
    use self_redteam::schema::{read_parquet, rollout::GamesSchema};
    let tmp = tempfile::tempdir().expect("tmp");
    let abs = tiny_text_abs();
    let rollout = |bs: u32| {
        let cfg = write_config(
            tmp.path(),
            &format!("bs{bs}.yaml"),
            &abs.replace("max_new_tokens: 32\n  batch_size: 4\n", &format!("max_new_tokens: 32\n  batch_size: {bs}\n")),
        );
        let store = tmp.path().join(format!("s{bs}"));
        let o = sr(&cfg, &store, &["run", "--only", "dataset", "base", "prep@1", "rollout@1"]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let key = status(&cfg, &store, &[])["rollout@1"].key.clone().expect("rollout@1 key");
        let games = read_parquet::<GamesSchema>(&artifact_dir(&store, "rollout", &key).join("games.parquet")).expect("games");
        (key, games)
    };
    let (key4, games4) = rollout(4);
    for bs in [1, 3] {
        let (key, games) = rollout(bs);
        assert_ne!(key, key4, "batch_size {bs} is in the rollout key");
        assert_eq!(games.len(), games4.len());
        for (a, b) in games.iter().zip(&games4) {
            assert_eq!(
                (&a.attacker_response_ids, &a.defender_response_ids, &a.attacker_output, &a.defender_output),
                (&b.attacker_response_ids, &b.defender_response_ids, &b.attacker_output, &b.defender_output),
                "row {}: batch_size {bs} changed a token",
                a.row
            );
            for (x, y) in a.attacker_logprobs.iter().zip(&b.attacker_logprobs).chain(a.defender_logprobs.iter().zip(&b.defender_logprobs)) {
                assert!((x - y).abs() < 1e-4, "row {}: logprob {x} vs {y}", a.row);
            }
        }
    }
}

/// Issue 10 (keys): `sft.batch_size` and `run.threads` are speed settings left out of every key,
/// so no artifact may depend on them. sft-data post-fills in batches (3 vs 16 rows, so padding
/// and batch mates differ) and rollout@1 samples with 1 or 2 torch threads: the same keys, and
/// the same bytes of every Parquet file.
/// Node by node, where two stores built from one spec differ: for every node whose key is
/// the same in both, the first differing file of its artifact and where in it
/// (`store::diff`), never the bytes. Nodes whose keys differ are listed as such.
fn content_differences(a: (&Path, &Path), b: (&Path, &Path)) -> Vec<String> {
    let (sa, sb) = (status(a.0, a.1, &[]), status(b.0, b.1, &[]));
    let mut out = Vec::new();
    for (node, x) in &sa {
        let y = &sb[node];
        assert!(x.state == "cached" && y.state == "cached", "{node}: {} / {}", x.state, y.state);
        if x.key != y.key {
            out.push(format!("{node}: other key ({} vs {})", x.key.as_deref().unwrap_or("-"), y.key.as_deref().unwrap_or("-")));
            continue;
        }
        if x.digest == y.digest {
            continue;
        }
        let key = x.key.as_deref().expect("key");
        let stage = node.split('@').next().expect("stage");
        let (da, db) = (artifact_dir(a.1, stage, key), artifact_dir(b.1, stage, key));
        let mut files: Vec<String> = std::fs::read_dir(&da)
            .expect("artifact")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|f| f != "manifest.json")
            .collect();
        files.sort();
        for f in files {
            if let Some(d) = self_redteam::store::diff::first_difference(&da.join(&f), &db.join(&f)).expect("read artifact files") {
                out.push(format!("{node} (same key {}): {f}: {d}", &key[..12]));
            }
        }
    }
    out
}

/// `run.threads` and `sft.batch_size` are speed knobs: they enter no key, so they must change
/// no byte. The whole tiny pipeline (every node through the last eval: sampling, judging, the
/// update's backward pass and Adam) runs with 1 and with 2 threads; `sft-data` also with
/// another batch size.
#[test]
fn sft_batch_size_and_run_threads_change_no_key_and_no_byte() {
    let tmp = tempfile::tempdir().expect("tmp");
    let abs = tiny_text_abs();
    assert!(abs.contains("  threads: 2\n") && abs.contains("sft:   #"), "tiny.yaml changed shape");
    let run = |name: &str, threads: u32, sft_batch: u32, only: &[&str]| {
        let yaml = abs.replace("  threads: 2\n", &format!("  threads: {threads}\n")).replacen("sft:   #", &format!("sft:\n  batch_size: {sft_batch}\n  #"), 1);
        let cfg = write_config(tmp.path(), &format!("{name}.yaml"), &yaml);
        let store = tmp.path().join(name);
        let mut args = vec!["run"];
        if !only.is_empty() {
            args.push("--only");
            args.extend_from_slice(only);
        }
        let o = sr(&cfg, &store, &args);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        (cfg, store)
    };
    let reference = run("t2b16", 2, 16, &[]);
    let one_thread = run("t1b16", 1, 16, &[]);
    let differences = content_differences((&reference.0, &reference.1), (&one_thread.0, &one_thread.1));
    assert!(differences.is_empty(), "threads 1 vs 2:\n{}", differences.join("\n"));

    let sft_only = ["dataset", "base", "sft-data"];
    let small_batch = run("t2b3", 2, 3, &sft_only);
    let (sa, sb) = (status(&reference.0, &reference.1, &[]), status(&small_batch.0, &small_batch.1, &[]));
    for node in sft_only {
        assert_eq!(sa[node].key, sb[node].key, "{node}: sft.batch_size 3 changed the key");
        assert_eq!(sa[node].digest, sb[node].digest, "{node}: sft.batch_size 3 changed the content");
    }
}
