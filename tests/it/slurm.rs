//! The Slurm executor (`run --executor slurm`) against a real single-node Slurm 22.05 cluster
//! (munge, slurmctld, slurmd) that `scripts/slurm.sh` starts on loopback in a temp dir and
//! stops by pid; no fake `sbatch`. What it pins:
//! - the tiny pipeline run as Slurm jobs (`--jobs 2`) has every node's key and content digest
//!   equal to the local executor's, and each manifest records the job that made it;
//! - a request the cluster cannot satisfy (a GPU on a node without one) is refused at
//!   submission with sbatch's own message; a stage that aborts fails its node with the job's
//!   end state and the tail of its stderr, and the next `run` resumes;
//! - `kill -9` of the engine while two jobs run, then `run` again: both jobs are adopted (no
//!   node is submitted twice) and the store equals an uninterrupted run;
//! - Ctrl-C stops a running job (SIGINT to it) with nothing published; a second Ctrl-C exits
//!   at once and cancels the job; `scancel` of a running job is reported as CANCELLED.
//!
//! Needs root (to install `slurm-wlm munge` when missing) or those packages;
//! `SELF_REDTEAM_SKIP_SLURM=1` skips it, and so does a machine where neither holds — each
//! time with a message saying how to run it.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::util::{bin, root, text, tiny_text_abs};

/// A cluster started by `scripts/slurm.sh up`; `down` on drop.
struct Cluster {
    dir: tempfile::TempDir,
    conf: PathBuf,
}

impl Cluster {
    fn up(test: &str) -> Option<Cluster> {
        if std::env::var("SELF_REDTEAM_SKIP_SLURM").is_ok_and(|v| v == "1") {
            eprintln!("{test}: skipped (SELF_REDTEAM_SKIP_SLURM=1); unset it to run against a real Slurm started by scripts/slurm.sh");
            return None;
        }
        let dir = tempfile::Builder::new().prefix("srt-slurm").tempdir().expect("tempdir");
        let o = Command::new(root().join("scripts/slurm.sh")).arg("up").arg(dir.path()).output().expect("run scripts/slurm.sh");
        if o.status.code() == Some(3) {
            eprintln!("{test}: skipped: {}", String::from_utf8_lossy(&o.stderr).trim());
            return None;
        }
        assert!(o.status.success(), "slurm.sh up failed:\n{}", text(&o));
        let conf = dir.path().join("slurm.conf");
        Some(Cluster { dir, conf })
    }

    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf);
        c
    }

    /// `self-redteam --config C --store S ARGS…` with `env` and this cluster's SLURM_CONF.
    fn sr(&self, config: &Path, store: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = self.command(bin());
        c.arg("--config").arg(config).arg("--store").arg(store).args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().expect("spawn self-redteam")
    }

    fn spawn(&self, config: &Path, store: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Child {
        let mut c = self.command(bin());
        c.arg("--config").arg(config).arg("--store").arg(store).args(args).stdout(Stdio::null()).stderr(Stdio::piped());
        for (k, v) in env {
            c.env(k, v);
        }
        c.spawn().expect("spawn self-redteam")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(root().join("scripts/slurm.sh")).arg("down").arg(self.dir.path()).output();
    }
}

/// The tiny pipeline with one CPU per job (the test node has two: two jobs run at once).
fn config(dir: &Path, extra: &str) -> PathBuf {
    let p = dir.join("tiny-slurm.yaml");
    std::fs::write(&p, format!("{}\nslurm:\n  resources:\n    default: {{cpus: 1{extra}}}\n", tiny_text_abs())).expect("write config");
    p
}

/// node → (key, content digest) of every node of `status --json`.
fn digests(config: &Path, store: &Path) -> BTreeMap<String, (String, String)> {
    let o = Command::new(bin()).arg("--config").arg(config).arg("--store").arg(store).args(["status", "--json"]).output().expect("status");
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("status JSON");
    v["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| (n["name"].as_str().unwrap_or("").to_string(), (n["key"].to_string(), n["content_digest"].to_string())))
        .collect()
}

fn claims(store: &Path) -> Vec<serde_json::Value> {
    let dir = store.join(".cluster/claims");
    let Ok(rd) = std::fs::read_dir(&dir) else { return Vec::new() };
    rd.flatten().filter_map(|e| std::fs::read(e.path()).ok()).filter_map(|b| serde_json::from_slice(&b).ok()).collect()
}

fn wait_for_claims(store: &Path, n: usize) -> Vec<serde_json::Value> {
    let t0 = Instant::now();
    loop {
        let c = claims(store);
        if c.len() >= n {
            return c;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "{n} claims never appeared in {}", store.display());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_exit(child: &mut std::process::Child, limit: Duration) -> (std::process::ExitStatus, String) {
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            return (status, err);
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            panic!("the engine did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_tiny_pipeline_on_slurm_equals_local_and_failures_are_named() {
    let Some(cluster) = Cluster::up("slurm") else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(tmp.path(), "");
    let (local, on_slurm) = (tmp.path().join("local"), tmp.path().join("slurm"));
    let o = cluster.sr(&cfg, &local, &["run"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let o = cluster.sr(&cfg, &on_slurm, &["run", "--executor", "slurm", "--jobs", "2"], &[]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("submitted as slurm job"), "{out}");
    let want = digests(&cfg, &local);
    assert_eq!(digests(&cfg, &on_slurm), want, "every node's key and content digest equal the local executor's");
    assert!(claims(&on_slurm).is_empty(), "claims are removed when their jobs end");
    let manifest = |store: &Path, stage: &str| -> serde_json::Value {
        let dir = store.join(stage);
        let key = std::fs::read_dir(&dir).expect("stage dir").flatten().next().expect("an artifact").path();
        serde_json::from_slice(&std::fs::read(key.join("manifest.json")).expect("manifest")).expect("JSON")
    };
    let m = manifest(&on_slurm, "dataset");
    assert_eq!(m["ran_on"]["scheduler"], "slurm", "{}", m["ran_on"]);
    assert!(m["ran_on"]["job_id"].as_str().is_some_and(|j| !j.is_empty()) && m["ran_on"]["host"] == "localhost", "{}", m["ran_on"]);
    assert!(manifest(&local, "dataset").get("ran_on").is_none());

    // A GPU on a node without one: refused at submission with sbatch's message.
    let gdir = tmp.path().join("gpu");
    std::fs::create_dir_all(&gdir).expect("mkdir");
    let gcfg = config(&gdir, ", gpus: 1");
    let o = cluster.sr(&gcfg, &on_slurm, &["run", "--executor", "slurm", "--only", "dataset", "--force"], &[]);
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("dataset") && out.contains("slurm refused the job at submission") && out.contains("Invalid generic resource"), "{out}");
    // More CPUs than the node has: refused the same way.
    let cdir = tmp.path().join("cpus");
    std::fs::create_dir_all(&cdir).expect("mkdir");
    let ccfg = cdir.join("tiny-slurm.yaml");
    std::fs::write(&ccfg, std::fs::read_to_string(&cfg).expect("read").replace("default: {cpus: 1}", "default: {cpus: 64}")).expect("write");
    let o = cluster.sr(&ccfg, &on_slurm, &["run", "--executor", "slurm", "--only", "dataset", "--force"], &[]);
    let out = text(&o);
    assert!(!o.status.success() && out.contains("More processors requested than permitted"), "{out}");
    assert_eq!(digests(&cfg, &on_slurm), want, "a refused submission changes nothing");

    // A stage that aborts: its node fails with the job's end and its stderr; the next run resumes.
    let aborted = tmp.path().join("aborted");
    let o = cluster.sr(&cfg, &aborted, &["run", "--executor", "slurm"], &[("SELF_REDTEAM_FAILPOINT", "abort:prep@1")]);
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("prep@1") && out.contains("FAILED, killed by signal 6") && out.contains("failpoint abort:prep@1"), "{out}");
    let o = cluster.sr(&cfg, &aborted, &["run", "--executor", "slurm"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(digests(&cfg, &aborted), want);
}

#[test]
fn slurm_jobs_outlive_a_killed_engine_and_stop_on_ctrl_c_or_scancel() {
    let Some(cluster) = Cluster::up("slurm") else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(tmp.path(), "");
    let local = tmp.path().join("local");
    let o = cluster.sr(&cfg, &local, &["run", "--only", "dataset", "base"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let want: BTreeMap<_, _> = digests(&cfg, &local).into_iter().filter(|(n, _)| n == "dataset" || n == "base").collect();

    // kill -9 of the engine while two (slowed) jobs run; `run` again adopts both.
    let store = tmp.path().join("killed");
    let args = ["run", "--executor", "slurm", "--jobs", "2", "--only", "dataset", "base"];
    let mut engine = cluster.spawn(&cfg, &store, &args, &[("SELF_REDTEAM_FAILPOINT", "delay:8")]);
    let first = wait_for_claims(&store, 2);
    engine.kill().expect("kill -9");
    let _ = engine.wait();
    // `status` shows the two nodes with the jobs computing them.
    let o = cluster.command(bin()).arg("--config").arg(&cfg).arg("--store").arg(&store).arg("status").output().expect("status");
    let shown = String::from_utf8_lossy(&o.stdout);
    for c in &first {
        let job = format!("slurm job {}", c["job_id"].as_str().expect("job id"));
        assert!(shown.lines().any(|l| l.starts_with(c["node"].as_str().expect("node")) && l.contains(&job)), "{job} not in status:\n{shown}");
    }
    let o = cluster.sr(&cfg, &store, &args, &[]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert_eq!(out.matches("adopting slurm job").count(), 2, "both running jobs adopted: {out}");
    assert!(!out.contains("submitted as slurm job"), "no node submitted twice: {out}");
    for c in &first {
        assert!(out.contains(&format!("job {}", c["job_id"].as_str().expect("job id"))), "{out}");
    }
    let got: BTreeMap<_, _> = digests(&cfg, &store).into_iter().filter(|(n, _)| n == "dataset" || n == "base").collect();
    assert_eq!(got, want, "the store equals an uninterrupted run");

    // Ctrl-C: the running job gets SIGINT, stops, and nothing is published.
    let store = tmp.path().join("interrupted");
    let mut engine = cluster.spawn(&cfg, &store, &["run", "--executor", "slurm", "--only", "dataset"], &[("SELF_REDTEAM_FAILPOINT", "delay:60")]);
    wait_for_claims(&store, 1);
    std::thread::sleep(Duration::from_secs(2));
    let t0 = Instant::now();
    let sent = Command::new("kill").args(["-INT", &engine.id().to_string()]).status().expect("kill -INT");
    assert!(sent.success());
    let (status, err) = wait_exit(&mut engine, Duration::from_secs(30));
    assert!(!status.success() && err.contains("interrupted"), "{err}");
    eprintln!("ctrl-c: the engine and its job stopped {:.1} s after SIGINT", t0.elapsed().as_secs_f64());
    assert!(!store.join("dataset").is_dir() || std::fs::read_dir(store.join("dataset")).expect("dir").next().is_none(), "nothing published");
    assert!(claims(&store).is_empty());

    // A second Ctrl-C: the engine exits at once and cancels its job on the way out.
    let store = tmp.path().join("twice");
    let mut engine = cluster.spawn(&cfg, &store, &["run", "--executor", "slurm", "--only", "dataset"], &[("SELF_REDTEAM_FAILPOINT", "delay:60")]);
    let c = wait_for_claims(&store, 1);
    let id = c[0]["job_id"].as_str().expect("job id").to_string();
    std::thread::sleep(Duration::from_secs(2));
    // The two signals 50 ms apart: long enough for the handler to see both, short enough that
    // the job, whose stage stops on its own SIGINT within about a second, is still running when
    // the second one cancels it.
    for _ in 0..2 {
        assert!(Command::new("kill").args(["-INT", &engine.id().to_string()]).status().expect("kill -INT").success());
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, err) = wait_exit(&mut engine, Duration::from_secs(10));
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains(&format!("cancelled slurm job {id}")), "{err}");
    let t0 = Instant::now();
    loop {
        let o = cluster.command("scontrol").args(["show", "job", "-o", &id]).output().expect("scontrol");
        if String::from_utf8_lossy(&o.stdout).contains("JobState=CANCELLED") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "job {id} not cancelled: {}", text(&o));
        std::thread::sleep(Duration::from_millis(200));
    }

    // scancel of a running job: its node fails as CANCELLED.
    let store = tmp.path().join("scancelled");
    let mut engine = cluster.spawn(&cfg, &store, &["run", "--executor", "slurm", "--only", "dataset"], &[("SELF_REDTEAM_FAILPOINT", "delay:60")]);
    let c = wait_for_claims(&store, 1);
    let id = c[0]["job_id"].as_str().expect("job id").to_string();
    std::thread::sleep(Duration::from_secs(2));
    let o = cluster.command("scancel").arg(&id).output().expect("scancel");
    assert!(o.status.success(), "{}", text(&o));
    let (status, err) = wait_exit(&mut engine, Duration::from_secs(30));
    assert!(!status.success() && err.contains(&format!("slurm job {id} CANCELLED")), "{err}");
}
