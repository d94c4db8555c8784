//! Integration tests: the store's and engine's crash windows (issue: hardening). Each kills
//! the real binary at a failpoint (`SELF_REDTEAM_FAILPOINT`) and checks that the next
//! command leaves a store that is complete and honest; plus a stage that panics, `verify`
//! on a corrupt manifest, and `gc` keeping the artifacts of a shorter run sharing the store.
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use super::engine::{artifact_dir, bin, build, sr, status, text, tiny};
use super::util::run_to_failpoint;

/// Spawn `self-redteam ARGS` on the tiny pipeline with a failpoint; return once it paused there.
fn paused_at(store: &Path, args: &[&str], point: &str) -> Child {
    run_to_failpoint(&tiny(), store, args, point).child
}

/// Run `self-redteam ARGS` on the tiny pipeline with a failpoint to its end.
fn run_with_failpoint(store: &Path, args: &[&str], point: &str) -> std::process::Output {
    Command::new(bin()).arg("--config").arg(tiny()).arg("--store").arg(store).args(args).env("SELF_REDTEAM_FAILPOINT", point).output().expect("spawn")
}

fn kill(mut child: Child) {
    child.kill().expect("kill -9");
    child.wait().expect("reap");
}

#[test]
fn gc_killed_between_its_steps_leaves_a_store_that_run_completes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = tmp.path().join("s");
    build(&tiny(), &store);
    let before = status(&tiny(), &store, &[]);
    // With the config's own iteration count nothing is garbage; keeping only what runs of up
    // to 1 iteration reach makes prep@2 the one victim.
    let o = sr(&tiny(), &store, &["gc", "--dry-run", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["removed"].as_array().expect("arr").len(), 0, "{v:#}");
    let o = sr(&tiny(), &store, &["gc", "--dry-run", "--iterations", "1", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    let victims: Vec<&str> = v["removed"].as_array().expect("arr").iter().map(|r| r["node"].as_str().expect("node")).collect();
    assert_eq!(victims, ["prep@2"], "a 1-iteration plan does not reach prep@2: {v:#}");
    let child = paused_at(&store, &["gc", "--iterations", "1"], "gc-removing");
    kill(child);
    // The artifact left its place in one rename: nothing half-deleted looks like an artifact.
    let key2 = before["prep@2"].key.clone().expect("key");
    assert!(!artifact_dir(&store, "prep", &key2).exists(), "prep@2 moved out of place");
    let o = sr(&tiny(), &store, &["verify", "--all", "--json"]);
    assert_eq!(o.status.code(), Some(0), "nothing corrupt after the kill: {}", text(&o));
    assert_eq!(status(&tiny(), &store, &[])["prep@2"].state, "missing");
    build(&tiny(), &store);
    assert_eq!(status(&tiny(), &store, &[]), before, "run rebuilt exactly what gc removed");
    assert_eq!(std::fs::read_dir(store.join(".tmp")).expect(".tmp").count(), 0, "the half-removed copy is cleaned");
}

#[test]
fn a_directory_left_without_its_manifest_is_listed_by_verify_and_repaired_by_run() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = tmp.path().join("s");
    build(&tiny(), &store);
    let before = status(&tiny(), &store, &[]);
    // What an older gc killed between deleting the manifest and the directory left behind.
    let dir = artifact_dir(&store, "prep", before["prep@1"].key.as_deref().expect("key"));
    std::fs::remove_file(dir.join("manifest.json")).expect("rm manifest");
    // And a corrupt manifest elsewhere.
    let dir2 = artifact_dir(&store, "prep", before["prep@2"].key.as_deref().expect("key"));
    std::fs::write(dir2.join("manifest.json"), b"{ not json").expect("corrupt");
    let o = sr(&tiny(), &store, &["verify", "--all", "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    let dirs: Vec<String> = v["leftovers"].as_array().expect("leftovers").iter().map(|l| l["dir"].as_str().expect("dir").to_string()).collect();
    assert_eq!(dirs.len(), 2, "{v:#}");
    assert!(dirs.iter().any(|d| d.ends_with(before["prep@1"].key.as_deref().expect("key"))), "{dirs:?}");
    let o = sr(&tiny(), &store, &["run", "--only", "dataset", "prep@1", "prep@2"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("will be built again"), "run says what it repaired: {}", text(&o));
    assert_eq!(status(&tiny(), &store, &[]), before, "same keys and bytes as before the damage");
    let o = sr(&tiny(), &store, &["verify", "--all"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn force_killed_mid_publish_keeps_the_old_artifact() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = tmp.path().join("s");
    build(&tiny(), &store);
    let before = status(&tiny(), &store, &[]);
    let key = before["prep@1"].key.clone().expect("key");
    let manifest = std::fs::read(artifact_dir(&store, "prep", &key).join("manifest.json")).expect("manifest");
    let child = paused_at(&store, &["run", "--only", "prep@1", "--force"], "publish-replacing");
    kill(child);
    // The next command that takes the lock puts the old artifact back.
    let o = sr(&tiny(), &store, &["run", "--only", "dataset"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("put back"), "{}", text(&o));
    assert_eq!(std::fs::read(artifact_dir(&store, "prep", &key).join("manifest.json")).expect("manifest"), manifest, "the old artifact, untouched");
    assert_eq!(status(&tiny(), &store, &[]), before);
    let o = sr(&tiny(), &store, &["verify", "--all"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn a_panicking_stage_fails_its_node_with_name_and_key_and_publishes_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = tmp.path().join("s");
    let o = run_with_failpoint(&store, &["run", "--only", "dataset", "prep@1"], "panic:prep@1");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("prep@1 (key ") && err.contains("crashed") && err.contains("failpoint"), "{err}");
    let s = status(&tiny(), &store, &[]);
    assert_eq!(s["dataset"].state, "cached", "the node before it is kept");
    assert_eq!(s["prep@1"].state, "missing", "nothing of the crashed node is published");
    assert_eq!(std::fs::read_dir(store.join(".tmp")).map(|d| d.count()).unwrap_or(0), 0, "its staging dir is discarded");
}

/// `lineage` walks the DAG once: update@i reaches update@(i−1) through its policy and
/// optimizer inputs and through rollout@i and judge@i, so a walk of every path of a
/// 10-iteration chain visits ~4^9 subtrees. Each artifact must appear once, later meetings as
/// references, and the command must answer at once.
#[test]
fn lineage_of_a_10_iteration_chain_lists_each_artifact_once_and_answers_at_once() {
    use self_redteam::store::key::KEY_SCHEME;
    use self_redteam::store::{InputRecord, KeyComponents, Manifest, Store};
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path().join("s");
    let store = Store::open(&root).expect("open");
    let lock = store.lock().expect("lock");
    let publish = |node: &str, stage: &str, it: u32, inputs: Vec<(&str, &self_redteam::store::Artifact)>| {
        let components = KeyComponents {
            scheme: KEY_SCHEME,
            kind: stage.into(),
            stage_version: 1,
            iteration: Some(it),
            params: serde_json::json!({}),
            inputs: vec![],
            seed: it as u64,
            files: vec![],
        };
        let mut m = Manifest::draft(node, stage, Some(it), components);
        m.inputs = inputs
            .iter()
            .map(|(role, a)| InputRecord {
                role: role.to_string(),
                node: a.manifest.node.clone(),
                stage: a.manifest.stage.clone(),
                key: a.manifest.key.clone(),
                digest: a.manifest.content_digest.clone(),
            })
            .collect();
        let st = store.begin(stage, &m.key).expect("begin");
        std::fs::write(st.dir.join("x.bin"), node.as_bytes()).expect("write");
        store.publish(st, m, false).expect("publish")
    };
    let mut policy = publish("update@0", "update", 0, vec![]);
    let mut last_rollout = None;
    for i in 1..=10 {
        let rollout = publish(&format!("rollout@{i}"), "rollout", i, vec![("policy", &policy)]);
        last_rollout = Some(rollout.clone());
        let judge = publish(&format!("judge@{i}"), "judge", i, vec![("rollout", &rollout)]);
        policy = publish(&format!("update@{i}"), "update", i, vec![("policy", &policy), ("optimizer", &policy), ("rollout", &rollout), ("judge", &judge)]);
    }
    drop(lock);
    let t0 = std::time::Instant::now();
    let o = sr(&tiny(), &root, &["lineage", policy.manifest.key.as_str(), "--json"]);
    let took = t0.elapsed();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    fn count(v: &Value, full: &mut usize, refs: &mut usize) {
        if v.get("seen").is_some() {
            *refs += 1;
        } else {
            *full += 1;
        }
        for i in v["inputs"].as_array().into_iter().flatten() {
            count(i, full, refs);
        }
    }
    let (mut full, mut refs) = (0, 0);
    count(&v, &mut full, &mut refs);
    assert_eq!(full, 31, "each of the 31 artifacts once");
    // Per iteration: update@(i−1) met again as optimizer and as rollout@i's policy, rollout@i
    // again as judge@i's input.
    assert_eq!(refs, 30, "{v:#}");
    // The bound. `self-redteam` links no libtorch, so process start and the walk
    // take milliseconds (10 ms here); a walk without its visited set would take 4^9 loads.
    assert!(took.as_secs_f64() < 1.0, "lineage took {took:?}");

    // rollout@10 replaced under its key with other bytes (`run --force` of a nondeterministic
    // stage): update@10 was built from the old bytes, and lineage says so.
    let m = last_rollout.expect("rollout@10").manifest;
    let old = serde_json::json!(m.content_digest);
    let lock = store.lock().expect("lock");
    let st = store.begin("rollout", &m.key).expect("begin");
    std::fs::write(st.dir.join("x.bin"), b"other bytes").expect("write");
    let mut again = Manifest::draft("rollout@10", "rollout", Some(10), m.components.clone());
    again.inputs = m.inputs.clone();
    let replaced = store.publish(st, again, true).expect("replace");
    assert_ne!(serde_json::json!(replaced.manifest.content_digest), old, "other bytes, other digest");
    drop(lock);
    let o = sr(&tiny(), &root, &["lineage", policy.manifest.key.as_str(), "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    let rollout = v["inputs"].as_array().expect("inputs").iter().find(|i| i["role"] == "rollout").expect("rollout input").clone();
    assert_eq!(rollout["digest_mismatch"]["in_store"], serde_json::json!(replaced.manifest.content_digest), "{rollout:#}");
    assert_eq!(rollout["digest_mismatch"]["recorded"], old, "{rollout:#}");
    let o = sr(&tiny(), &root, &["lineage", policy.manifest.key.as_str()]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("REPLACED"), "{}", text(&o));
}

/// `*.json` entries and other files under a verdict-cache directory.
fn cache_files(dir: &Path) -> (Vec<std::path::PathBuf>, usize) {
    let (mut entries, mut other) = (Vec::new(), 0);
    for fan in std::fs::read_dir(dir).expect("cache dir").flatten() {
        for f in std::fs::read_dir(fan.path()).expect("fan-out dir").flatten() {
            if f.path().extension().is_some_and(|x| x == "json") {
                entries.push(f.path());
            } else {
                other += 1;
            }
        }
    }
    entries.sort();
    (entries, other)
}

#[test]
fn gc_collects_verdict_cache_entries_of_judges_no_artifact_names_and_keeps_the_live_ones() {
    use self_redteam::judge::cache::{entry_key, VerdictCache};
    use self_redteam::judge::{JudgeInput, JudgeKey, Verdict};
    let tmp = tempfile::tempdir().expect("tmp");
    let store = tmp.path().join("s");
    let o = sr(&tiny(), &store, &["run", "--iterations", "1"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let before = status(&tiny(), &store, &["--iterations", "1"]);
    // judge@i records the judge whose verdicts it read and wrote.
    let judge1 = artifact_dir(&store, "judge", before["judge@1"].key.as_deref().expect("key"));
    let m: Value = serde_json::from_slice(&std::fs::read(judge1.join("manifest.json")).expect("manifest")).expect("json");
    let judges = m["verdict_judges"].as_array().expect("verdict_judges recorded").clone();
    assert_eq!(judges.len(), 1, "{m:#}");
    let cache_dir = store.join(".verdict-cache");
    let (live_entries, _) = cache_files(&cache_dir);
    assert!(!live_entries.is_empty());

    // Entries of a judge no artifact names (e.g. an audit with another judge, or the judge of
    // a run that gc removed), a corrupt entry and a temp file left by a killed write.
    let cache = VerdictCache::open(&cache_dir).expect("open");
    let other = JudgeKey("some-other-judge/v1".into());
    for i in 0..3 {
        let input = JudgeInput::new(format!("prompt {i}"), "response".to_string());
        let verdict = Verdict { prompt_harmful: Some(false), response_refusal: Some(false), response_harmful: Some(false), parse_error: false, raw: None };
        cache.put(&entry_key(&other, &input, false), &other, &verdict).expect("put");
    }
    let fan = live_entries[0].parent().expect("fan-out").to_path_buf();
    std::fs::write(fan.join("0000corrupt.json"), b"{not json").expect("corrupt");
    std::fs::write(fan.join(".tmpKILLED"), b"half").expect("tmp");
    let (all, others) = cache_files(&cache_dir);
    assert_eq!((all.len(), others), (live_entries.len() + 4, 1));

    let o = sr(&tiny(), &store, &["gc", "--dry-run", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    let sweep = &v["verdict_cache"]["sweep"];
    assert_eq!((sweep["removed"].as_u64(), sweep["corrupt"].as_u64(), sweep["temp_files"].as_u64()), (Some(3), Some(1), Some(1)), "{v:#}");
    assert_eq!(sweep["kept"].as_u64(), Some(live_entries.len() as u64), "{v:#}");
    assert_eq!(cache_files(&cache_dir).0.len(), live_entries.len() + 4, "a dry run deletes nothing");

    let o = sr(&tiny(), &store, &["gc", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(cache_files(&cache_dir), (live_entries.clone(), 0), "exactly the foreign, corrupt and temp files went");
    // The live judge's verdicts still serve a rerun: every verdict of judge@1 is a hit.
    let o = sr(&tiny(), &store, &["run", "--only", "judge@1", "--force"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let after = status(&tiny(), &store, &["--iterations", "1"]);
    let judge1 = artifact_dir(&store, "judge", after["judge@1"].key.as_deref().expect("key"));
    let m: Value = serde_json::from_slice(&std::fs::read(judge1.join("manifest.json")).expect("manifest")).expect("json");
    assert_eq!(m["metrics"]["cache_misses"], 0, "{m:#}");
    assert!(m["metrics"]["cache_hits"].as_u64().expect("hits") > 0);
}

/// Issue 10: the fuzzer on `manifest.json`: parsing (`Manifest::from_bytes`) and the store's
/// scan and leftover listing over a store holding the mutated manifest never panic; a bad
/// manifest is an error or a listed leftover. Seeds: real manifests of the tiny DAG.
#[test]
fn fuzz_manifest_json() {
    use self_redteam::store::{Manifest, Store, MANIFEST_FILE};
    let tmp = tempfile::tempdir().expect("tmp");
    let store = tmp.path().join("s");
    build(&tiny(), &store);
    let s = status(&tiny(), &store, &[]);
    let mut seeds = Vec::new();
    let mut dirs = Vec::new();
    for (stage, node) in [("dataset", "dataset"), ("prep", "prep@1")] {
        let dir = artifact_dir(&store, stage, s[node].key.as_deref().expect("key"));
        seeds.push(std::fs::read(dir.join(MANIFEST_FILE)).expect("manifest"));
        dirs.push(dir);
    }
    let target = dirs[1].join(MANIFEST_FILE);
    let st = Store::open(&store).expect("open store");
    crate::fuzz::run("fuzz_manifest_json", &seeds, crate::fuzz::iterations(2000), |bytes| {
        if let Ok(m) = Manifest::from_bytes(bytes) {
            let _ = (m.total_rows(), m.to_bytes());
        }
        // Every 16th input also goes through the store, as `status`/`verify --all` read it.
        if blake3::hash(bytes).as_bytes()[0] < 16 {
            std::fs::write(&target, bytes).expect("write fuzz input");
            let _ = st.scan();
            let _ = st.leftovers();
        }
    });
}

/// One process per stage (src/executor.rs): the OOM killer's SIGKILL of a stage process
/// fails that node — named, with its key and the signal — and nothing else. The engine
/// keeps going to its error, nothing of the node is published, and the next `run`
/// completes it with the bytes of an uninterrupted run.
#[test]
fn a_stage_process_killed_by_sigkill_fails_its_node_and_the_rerun_equals_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = tmp.path().join("s");
    let paused = run_to_failpoint(&tiny(), &store, &["run", "--only", "dataset", "prep@1", "prep@2"], "prep@2");
    let pid = paused.stage_pid();
    let (engine, rest) = (paused.child, paused.rest);
    assert_ne!(pid, engine.id(), "the stage runs in its own process");
    let k = Command::new("kill").args(["-9", &pid.to_string()]).status().expect("kill");
    assert!(k.success());
    let out = engine.wait_with_output().expect("engine exits");
    let err = rest.recv().expect("stderr");
    assert_eq!(out.status.code(), Some(1), "the engine reports the failure and exits 1: {err}");
    assert!(err.contains("prep@2 (key ") && err.contains("killed by signal 9 (SIGKILL") && err.contains("nothing was published"), "{err}");
    let s = status(&tiny(), &store, &[]);
    assert_eq!(s["prep@1"].state, "cached");
    assert_eq!(s["prep@2"].state, "missing", "nothing of the killed node is published");

    let o = sr(&tiny(), &store, &["run", "--only", "dataset", "prep@1", "prep@2"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let clean = tmp.path().join("clean");
    build(&tiny(), &clean);
    let (s1, s2) = (status(&tiny(), &store, &[]), status(&tiny(), &clean, &[]));
    for n in ["dataset", "prep@1", "prep@2"] {
        assert!(s1[n].digest.is_some(), "{n}");
        assert_eq!(s1[n].digest, s2[n].digest, "{n}");
    }
    assert_eq!(std::fs::read_dir(store.join(".tmp")).map(|d| d.count()).unwrap_or(0), 0, "the killed stage's staging dir and job file are swept");
}

/// A stage process that aborts (libtorch's way of failing hard) is reported like a signal,
/// with the tail of its stderr, and does not take the engine down.
#[test]
fn a_stage_process_that_aborts_is_reported_with_its_signal_and_stderr_tail() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = tmp.path().join("s");
    let o = run_with_failpoint(&store, &["run", "--only", "dataset", "prep@1"], "abort:prep@1");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("prep@1 (key ") && err.contains("killed by signal 6 (SIGABRT)"), "{err}");
    assert!(err.contains("its stderr ended with:") && err.contains("failpoint abort:prep@1: aborting"), "{err}");
    let s = status(&tiny(), &store, &[]);
    assert_eq!(s["dataset"].state, "cached", "the node before it is kept");
    assert_eq!(s["prep@1"].state, "missing");
    // In-process, the same abort takes the whole run down: the reason for the child.
    let o = run_with_failpoint(&store, &["run", "--only", "prep@1", "--in-process"], "abort:prep@1");
    assert_eq!(o.status.code(), None, "killed by SIGABRT itself: {}", text(&o));
}

/// Ctrl-C with one process per stage: SIGINT to the engine alone (its stage process is in its
/// own process group) is forwarded once; the stage stops inside its generation loop, publishes
/// nothing, and the engine says the node was interrupted. sft-data post-fills with the model
/// for many seconds on the tiny pipeline, so a stage that ran to its end would be published.
#[test]
fn sigint_to_the_engine_stops_the_running_stage_process_and_publishes_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = tmp.path().join("s");
    let o = sr(&tiny(), &store, &["run", "--only", "dataset", "base"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let child = Command::new(bin())
        .arg("--config")
        .arg(tiny())
        .arg("--store")
        .arg(&store)
        .args(["run", "--only", "sft-data"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    // Wait until the stage process runs (its job file is in .tmp), then a little into its work.
    let job_written = (0..600).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        std::fs::read_dir(store.join(".tmp")).map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with("job-sft-data"))).unwrap_or(false)
    });
    assert!(job_written, "the sft-data stage process never started");
    std::thread::sleep(std::time::Duration::from_secs(3));
    let t0 = std::time::Instant::now();
    let k = Command::new("kill").args(["-INT", &child.id().to_string()]).status().expect("kill");
    assert!(k.success());
    let out = child.wait_with_output().expect("engine exits");
    let latency = t0.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("SIGINT to exit of the engine: {:.2} s", latency.as_secs_f64());
    // "Within a few seconds" (0.2 s measured); before the per-step checks it was the rest of
    // the stage (75 s inside an eval).
    assert!(latency.as_secs_f64() < 10.0, "SIGINT took {latency:?} to stop the run: {err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("interrupted before sft-data"), "{err}");
    let s = status(&tiny(), &store, &[]);
    assert_eq!(s["sft-data"].state, "missing", "the interrupted stage publishes nothing: {err}");
    assert_eq!(s["base"].state, "cached");
    let left = std::fs::read_dir(store.join(".tmp")).map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("job-")).count()).unwrap_or(0);
    assert_eq!(left, 0, "the job file is removed once the stage process ended");
}

/// Parquet files are read from the store (every stage's inputs, `show`, `log`, `report`) and
/// from users (`judge FILE`): mutated `seeds.parquet` / `prep.parquet` must give rows or a
/// typed error naming the file, never a panic, through the typed reader and through `show`'s
/// preview of any Parquet file.
#[test]
fn fuzz_parquet() {
    use self_redteam::schema::prep::PrepSchema;
    use self_redteam::schema::seeds::SeedsSchema;
    use self_redteam::schema::{from_parquet_bytes, preview};
    let tmp = tempfile::tempdir().expect("tmp");
    let store = tmp.path().join("s");
    build(&tiny(), &store);
    let s = status(&tiny(), &store, &[]);
    let seeds = vec![
        std::fs::read(artifact_dir(&store, "dataset", s["dataset"].key.as_deref().expect("key")).join("seeds.parquet")).expect("seeds.parquet"),
        std::fs::read(artifact_dir(&store, "prep", s["prep@1"].key.as_deref().expect("key")).join("prep.parquet")).expect("prep.parquet"),
    ];
    // Found by this target (FUZZ_ITERS=30000): the parquet crate panicked on it.
    let found = std::fs::read(super::util::root().join("tests/fixtures/fuzz/parquet_negative_column_start.parquet")).expect("fixture");
    let err = from_parquet_bytes::<SeedsSchema>(found).expect_err("corrupt column metadata");
    assert!(err.to_string().starts_with("seeds.parquet: corrupt Parquet file: "), "{err}");
    let file = tmp.path().join("fuzz.parquet");
    crate::fuzz::run("fuzz_parquet", &seeds, crate::fuzz::iterations(1500), |bytes| {
        let _ = from_parquet_bytes::<SeedsSchema>(bytes.to_vec());
        let _ = from_parquet_bytes::<PrepSchema>(bytes.to_vec());
        if blake3::hash(bytes).as_bytes()[0] < 32 {
            std::fs::write(&file, bytes).expect("write fuzz input");
            if let Err(e) = preview(&file, 3) {
                assert!(e.to_string().contains("fuzz.parquet") || e.to_string().contains("preview"), "{e}");
            }
        }
    });
}

/// A caught reader panic is reported once, as the error naming the file: the default hook's
/// "thread … panicked at" line does not reach the user's terminal (issue 10).
#[test]
fn a_corrupt_parquet_file_gives_one_error_and_no_panic_message() {
    let tmp = tempfile::tempdir().expect("tmp");
    let file = tmp.path().join("pairs.parquet");
    std::fs::copy(super::util::root().join("tests/fixtures/fuzz/parquet_negative_column_start.parquet"), &file).expect("copy fixture");
    let o = super::util::sr(&tiny(), &tmp.path().join("s"), &["judge", "--with", "rules", file.to_str().expect("utf-8")]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("pairs.parquet") && err.contains("the Parquet reader failed on the file's bytes"), "{err}");
    assert!(!err.contains("panicked at"), "the panic hook printed: {err}");
}
