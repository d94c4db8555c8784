//! Integration tests: generation on inference servers (`generation.backend: server`,
//! src/remote/) against real servers — the project's own `self-redteam serve` processes,
//! which speak SGLang's and vLLM's protocols (docs/remote.md). What they pin:
//! - the whole tiny pipeline generated on two `serve` processes (rollouts and evals, the
//!   base policy checked on the servers' startup model, every later policy loaded with
//!   `/update_weights_from_disk` and verified) writes the same games and eval rows, byte for
//!   byte, as local generation, and records which server made each row;
//! - the vLLM protocol (one request per row, the in-place reload routes) gives the same
//!   tokens;
//! - a server whose reload reports success but keeps the old weights (the engines' stale-reload
//!   bug) fails the canary and the digest check, a dead server fails the stage, and none of
//!   them publishes anything.
use std::path::{Path, PathBuf};

use super::util::{provenance, shown_artifact_dir as artifact_dir, sr, text, tiny_text_abs, Served};
use self_redteam::net::wire::{TokenCompletion, TokenSampling};
use self_redteam::schema::rollout::GamesSchema;
use self_redteam::serve::policy::PolicyGenerator;
use self_redteam::serve::TextGenerator;
use self_redteam::serve::{CompletionsServer, ServerOptions};

/// tiny.yaml (absolute source paths) plus `extra` YAML, written into `dir`.
fn config(dir: &Path, name: &str, extra: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("{}\n{extra}", tiny_text_abs())).expect("write config");
    p
}

fn servers_yaml(engine: &str, servers: &[&str], extra: &str) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!("generation:\n  backend: server\n  engine: {engine}\n  servers: [{}]\n  retries: 1\n  timeout_s: 120\n{extra}", list.join(", "))
}

fn read(dir: &Path, file: &str) -> Vec<u8> {
    std::fs::read(dir.join(file)).unwrap_or_else(|e| panic!("read {}/{file}: {e}", dir.display()))
}

#[test]
fn the_tiny_pipeline_on_two_own_servers_writes_the_same_bytes_as_local_generation() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let local_cfg = config(tmp.path(), "local.yaml", "");
    let local = tmp.path().join("local");
    let o = sr(&local_cfg, &local, &["run"]);
    assert!(o.status.success(), "local run: {}", text(&o));

    // The servers start on the base policy (as a user starts vLLM/SGLang on the base model).
    let remote = tmp.path().join("remote");
    let o = sr(&local_cfg, &remote, &["run", "--only", "base"]);
    assert!(o.status.success(), "{}", text(&o));
    let base = artifact_dir(&local_cfg, &remote, "base");
    let a = Served::start(&local_cfg, &remote, &base, &[]);
    let b = Served::start(&local_cfg, &remote, &base, &[]);
    let remote_cfg = config(tmp.path(), "remote.yaml", &servers_yaml("self-redteam", &[&a.base, &b.base], "  prompts_per_request: 4\n"));
    let o = sr(&remote_cfg, &remote, &["run"]);
    assert!(o.status.success(), "server run: {}", text(&o));

    for node in ["rollout@1", "rollout@2"] {
        let (l, r) = (artifact_dir(&local_cfg, &local, node), artifact_dir(&remote_cfg, &remote, node));
        assert_ne!(l.file_name(), r.file_name(), "{node}: the engine family is in the key");
        assert_eq!(read(&l, "games.parquet"), read(&r, "games.parquet"), "{node}: games differ between local and server generation");
        let rows = provenance(&r);
        let games = self_redteam::schema::from_parquet_bytes::<GamesSchema>(read(&r, "games.parquet")).expect("games");
        let turns = games.iter().filter(|g| g.attacker_turn).count() + games.len();
        assert_eq!(rows.len(), turns, "{node}: one provenance row per generated turn");
        assert!(rows.iter().all(|p| p.engine == "self-redteam" && (p.server == a.base || p.server == b.base)), "{rows:?}");
        let expect_version = if node == "rollout@1" { "default".to_string() } else { "update@1:".to_string() };
        assert!(rows.iter().all(|p| p.weight_version.starts_with(&expect_version)), "{node}: {rows:?}");
        assert!(!l.join("generation.parquet").exists(), "local generation records no servers");
    }
    for node in ["eval@0", "eval@1", "eval@2"] {
        let (l, r) = (artifact_dir(&local_cfg, &local, node), artifact_dir(&remote_cfg, &remote, node));
        for f in ["eval.parquet", "eval_attacker.parquet"] {
            assert_eq!(read(&l, f), read(&r, f), "{node}/{f} differs between local and server generation");
        }
        assert!(!provenance(&r).is_empty(), "{node}");
    }
    // Both servers took requests, and ended on the last policy.
    let rows = provenance(&artifact_dir(&remote_cfg, &remote, "eval@2"));
    for s in [&a.base, &b.base] {
        assert!(rows.iter().any(|p| &p.server == s), "{s} generated no eval row");
        let v: serde_json::Value = ureq::get(&format!("{s}/model_info")).call().expect("weight version").body_mut().read_json().expect("json");
        assert!(v["weight_version"].as_str().is_some_and(|w| w.starts_with("update@2:")), "{v}");
    }
}

#[test]
fn the_vllm_protocol_gives_the_same_tokens_one_request_per_row() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(tmp.path(), "local.yaml", "run:\n  iterations: 1\n");
    let cfg = {
        // tiny.yaml already has a `run:` section: override iterations by text.
        let t = std::fs::read_to_string(&cfg).expect("read").replace("run:\n  iterations: 1\n", "").replace("iterations: 2", "iterations: 1");
        std::fs::write(&cfg, t).expect("write");
        cfg
    };
    let store = tmp.path().join("store");
    let o = sr(&cfg, &store, &["run", "--only", "dataset", "base", "sft-data", "prep@1", "rollout@1"]);
    assert!(o.status.success(), "{}", text(&o));
    let base = artifact_dir(&cfg, &store, "base");
    let server = Served::start(&cfg, &store, &base, &[]);
    let text_cfg = std::fs::read_to_string(&cfg).expect("read");
    let vcfg = tmp.path().join("vllm.yaml");
    std::fs::write(&vcfg, format!("{text_cfg}\n{}", servers_yaml("vllm", &[&server.base], ""))).expect("write");
    let o = sr(&vcfg, &store, &["run", "--only", "rollout@1"]);
    assert!(o.status.success(), "{}", text(&o));
    let games =
        |c: &Path| self_redteam::schema::from_parquet_bytes::<GamesSchema>(read(&artifact_dir(c, &store, "rollout@1"), "games.parquet")).expect("games");
    let (l, v) = (games(&cfg), games(&vcfg));
    assert_eq!(l.len(), v.len());
    for (a, b) in l.iter().zip(&v) {
        assert_eq!(a.attacker_response_ids, b.attacker_response_ids, "{}", a.game_id);
        assert_eq!(a.defender_response_ids, b.defender_response_ids, "{}", a.game_id);
        assert_eq!(a.defender_output, b.defender_output);
        // One row per request instead of batches of 4: log-probs may differ in the last bits.
        for (x, y) in a.defender_logprobs.iter().zip(&b.defender_logprobs) {
            assert!((x - y).abs() < 1e-4, "{}: {x} vs {y}", a.game_id);
        }
    }
    assert!(provenance(&artifact_dir(&vcfg, &store, "rollout@1")).iter().all(|p| p.engine == "vllm"));
}

/// A server whose weight reload reports success and the new version but keeps serving the old
/// weights: the engines' stale-reload bug (vLLM #32718), which only the checks can catch.
/// The second field is the digest it keeps reporting (its original weights').
struct StaleReload(PolicyGenerator, String);

impl TextGenerator for StaleReload {
    fn generate_greedy(&self, prompts: &[String], max_new_tokens: usize) -> anyhow::Result<Vec<String>> {
        self.0.generate_greedy(prompts, max_new_tokens)
    }
    fn context_tokens(&self) -> Option<usize> {
        Some(8192)
    }
    fn count_tokens(&self, prompt: &str) -> Option<anyhow::Result<usize>> {
        self.0.count_tokens(prompt)
    }
    fn sample_tokens(&self, prompts: &[Vec<u32>], params: &[TokenSampling]) -> anyhow::Result<Vec<TokenCompletion>> {
        self.0.sample_tokens(prompts, params)
    }
    fn prompt_logprobs(&self, ids: &[u32]) -> anyhow::Result<Vec<f32>> {
        self.0.prompt_logprobs(ids)
    }
    fn reload(&self, _path: &Path) -> anyhow::Result<String> {
        Ok(self.1.clone())
    }
    fn decode(&self, ids: &[u32]) -> Option<anyhow::Result<String>> {
        self.0.decode(ids)
    }
    fn vocab_size(&self) -> Option<usize> {
        self.0.vocab_size()
    }
}

#[test]
fn a_stale_reload_fails_the_checks_and_a_dead_server_fails_the_stage() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(tmp.path(), "local.yaml", "");
    let store = tmp.path().join("store");
    let o = sr(&cfg, &store, &["run", "--only", "dataset", "base", "sft-data", "prep@1"]);
    assert!(o.status.success(), "{}", text(&o));
    let text_cfg = std::fs::read_to_string(&cfg).expect("read");
    // Other weights (a tiny model of another seed) behind a reload that does nothing.
    let other = tmp.path().join("other");
    self_redteam::model::tiny_random_llama(4242).save_hf_dir(&other).expect("save");
    let policy = self_redteam::model::Policy::load(&other, tch::Device::Cpu, tch::Kind::Float).expect("load");
    let digest = self_redteam::serve::policy::weights_digest(&other).expect("digest").to_string();
    let options = ServerOptions { workers: 2, model_root: Some(digest.clone()), ..ServerOptions::default() };
    let stale = CompletionsServer::start(StaleReload(PolicyGenerator::new(policy), digest), options).expect("server");
    let url = stale.base_url();

    // SGLang's protocol: the base is not what the server started with, so the stage loads it;
    // the server says yes and reports the new version, and the canary still sees other weights.
    let c = tmp.path().join("sglang.yaml");
    std::fs::write(&c, format!("{text_cfg}\n{}", servers_yaml("sglang", &[&url], ""))).expect("write");
    let o = sr(&c, &store, &["run", "--only", "rollout@1"]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("canary") && t.contains("mean |Δ log-prob|") && t.contains(&url), "{t}");

    // Our own protocol also compares the served weights' digest, which stays the old one.
    let c = tmp.path().join("own.yaml");
    std::fs::write(&c, format!("{text_cfg}\n{}", servers_yaml("self-redteam", &[&url], ""))).expect("write");
    let o = sr(&c, &store, &["run", "--only", "rollout@1"]);
    let t = text(&o);
    assert!(!o.status.success() && t.contains("digest"), "{t}");

    // Nobody listens on port 9 (discard) here: every attempt fails, the stage fails naming it.
    let c = tmp.path().join("dead.yaml");
    std::fs::write(&c, format!("{text_cfg}\n{}", servers_yaml("self-redteam", &["http://127.0.0.1:9"], ""))).expect("write");
    let o = sr(&c, &store, &["run", "--only", "rollout@1"]);
    let t = text(&o);
    assert!(!o.status.success() && t.contains("127.0.0.1:9"), "{t}");

    // Nothing was published by any of the three.
    let rollouts = store.join("rollout");
    let n = std::fs::read_dir(&rollouts).map(|d| d.count()).unwrap_or(0);
    assert_eq!(n, 0, "a failed server stage published into {}", rollouts.display());
}

/// A reload that takes the new checkpoint but keeps the start-up output head, as vLLM's
/// in-place reload did for a tied-embedding model (the new embeddings, the old `lm_head`).
/// The head comes from `head_of`, the start-up checkpoint.
struct StaleHead {
    inner: PolicyGenerator,
    head_of: PathBuf,
    scratch: PathBuf,
}

impl StaleHead {
    fn patched(&self, path: &Path) -> anyhow::Result<PathBuf> {
        let dir = self.scratch.join(format!("reload-{}", std::fs::read_dir(&self.scratch)?.count()));
        std::fs::create_dir_all(&dir)?;
        for e in std::fs::read_dir(path)? {
            let e = e?;
            std::fs::copy(e.path(), dir.join(e.file_name()))?;
        }
        let old: std::collections::HashMap<String, tch::Tensor> = tch::Tensor::read_safetensors(self.head_of.join("model.safetensors"))?.into_iter().collect();
        let head = old.get("lm_head.weight").or_else(|| old.get("model.embed_tokens.weight")).expect("a head");
        let mut new = tch::Tensor::read_safetensors(dir.join("model.safetensors"))?;
        let slot = new.iter_mut().find(|(n, _)| n == "lm_head.weight").expect("the serving view is untied");
        slot.1 = head.shallow_clone();
        tch::Tensor::write_safetensors(&new, dir.join("model.safetensors"))?;
        Ok(dir)
    }
}

impl TextGenerator for StaleHead {
    fn generate_greedy(&self, prompts: &[String], max_new_tokens: usize) -> anyhow::Result<Vec<String>> {
        self.inner.generate_greedy(prompts, max_new_tokens)
    }
    fn context_tokens(&self) -> Option<usize> {
        Some(8192)
    }
    fn sample_tokens(&self, prompts: &[Vec<u32>], params: &[TokenSampling]) -> anyhow::Result<Vec<TokenCompletion>> {
        self.inner.sample_tokens(prompts, params)
    }
    fn prompt_logprobs(&self, ids: &[u32]) -> anyhow::Result<Vec<f32>> {
        self.inner.prompt_logprobs(ids)
    }
    fn reload(&self, path: &Path) -> anyhow::Result<String> {
        self.inner.reload(&self.patched(path)?)
    }
    fn decode(&self, ids: &[u32]) -> Option<anyhow::Result<String>> {
        self.inner.decode(ids)
    }
    fn vocab_size(&self) -> Option<usize> {
        self.inner.vocab_size()
    }
}

/// The canary's default tolerance follows `generation.server_dtype` (f32: 1e-3), tight enough
/// that a load keeping the old output head fails `rollout@2` by its canary alone (SGLang's
/// protocol: no digest check), and the load's movement is recorded when it passes.
#[test]
fn a_stale_output_head_fails_the_canary_under_the_f32_tolerance() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // The default learning rate (5e-7) moves the tiny model's canary by ~8e-5 per token, under
    // the tolerance (the stage then warns that the canary cannot tell the policies apart); a
    // larger one makes update@1 a policy the canary can distinguish.
    let cfg = tmp.path().join("local.yaml");
    std::fs::write(&cfg, tiny_text_abs().replace("update:\n  micro_batch_size: 4\n", "update:\n  micro_batch_size: 4\n  lr: 1.0e-3\n")).expect("write");
    let store = tmp.path().join("store");
    let o = sr(&cfg, &store, &["run", "--only", "dataset", "base"]);
    assert!(o.status.success(), "{}", text(&o));
    let base = artifact_dir(&cfg, &store, "base");
    let policy = self_redteam::model::Policy::load(&base, tch::Device::Cpu, tch::Kind::Float).expect("load");
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir_all(&scratch).expect("mkdir");
    let stale = StaleHead { inner: PolicyGenerator::new(policy), head_of: base.clone(), scratch };
    let server = CompletionsServer::start(stale, ServerOptions { workers: 2, ..ServerOptions::default() }).expect("server");
    let text_cfg = std::fs::read_to_string(&cfg).expect("read");
    let c = tmp.path().join("sglang.yaml");
    std::fs::write(&c, format!("{text_cfg}\n{}", servers_yaml("sglang", &[&server.base_url()], ""))).expect("write");
    // rollout@1 runs on the start-up model (checked, not loaded); rollout@2 loads update@1.
    let o = sr(&c, &store, &["run", "--only", "sft-data", "prep@1", "rollout@1", "judge@1", "update@1", "prep@2", "rollout@2"]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("rollout@2"), "{t}");
    assert!(t.contains("canary: mean |Δ log-prob|") && t.contains("generation.server_dtype f32"), "{t}");
    eprintln!("stale head: {}", t.lines().find(|l| l.contains("canary: mean")).unwrap_or(""));

    // The same load on an honest server passes and records how far the canary moved.
    let own = ServerOptions { workers: 2, ..ServerOptions::default() };
    let policy = self_redteam::model::Policy::load(&base, tch::Device::Cpu, tch::Kind::Float).expect("load");
    let honest = CompletionsServer::start(PolicyGenerator::new(policy).with_max_model_len(8192), own).expect("server");
    std::fs::write(&c, format!("{text_cfg}\n{}", servers_yaml("sglang", &[&honest.base_url()], ""))).expect("write");
    let o = sr(&c, &store, &["run", "--only", "rollout@2"]);
    assert!(o.status.success(), "{}", text(&o));
    let manifest: serde_json::Value = serde_json::from_slice(&read(&artifact_dir(&c, &store, "rollout@2"), "manifest.json")).expect("manifest");
    let m = &manifest["metrics"];
    let (moved, change) = (m["generation/policy/server0/canary_moved_by_load"].as_f64(), m["generation/policy/server0/canary_policy_change"].as_f64());
    eprintln!("honest load: canary moved {moved:?}, policy change {change:?}, mean diff {:?}", m["generation/policy/server0/canary_mean_abs_logprob_diff"]);
    let (moved, change) = (moved.expect("moved"), change.expect("change"));
    assert!(change > 0.0 && (moved - change).abs() <= 1e-3, "moved {moved} vs change {change}");
}
