//! Wire-format conformance with the engines' own request code: the requests this project's
//! generation client really sends (recorded by `serve --record-requests` while the tiny
//! pipeline's rollout and eval run on it, once as `engine: sglang` and once as `engine: vllm`,
//! loading a later policy on the way) are fed to SGLang 0.5.23's and vLLM 0.32.0's own route
//! table, request classes and validation (`scripts/contracts.sh`, which pins both). SGLang has
//! no CPU build, so this is how its contract is tested; vLLM's is also tested live
//! (tests/it/vllm_live.rs). Every recorded request must be accepted whole: a rejected body, an
//! unknown route or a field the engine would silently drop fails the test.
//!
//! Needs the two venvs (`scripts/contracts.sh`, `scripts/vllm.sh install`; `scripts/test.sh`
//! and CI install them). `SELF_REDTEAM_SKIP_ENGINES=1` skips it (it says so).
use std::process::Command;

use super::util::{root, shown_artifact_dir, sr, text, tiny_text_abs, Served};

pub(crate) fn engines_skipped(what: &str) -> bool {
    if std::env::var("SELF_REDTEAM_SKIP_ENGINES").is_ok_and(|v| v == "1") {
        eprintln!("{what}: skipped (SELF_REDTEAM_SKIP_ENGINES=1)");
        return true;
    }
    false
}

#[test]
fn every_request_the_client_sends_passes_sglang_and_vllm_own_validation() {
    if engines_skipped("contracts") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let local = tmp.path().join("local.yaml");
    let body = tiny_text_abs().replace("iterations: 2", "iterations: 1");
    std::fs::write(&local, &body).expect("write config");
    let store = tmp.path().join("store");
    let o = sr(&local, &store, &["run", "--only", "dataset", "base"]);
    assert!(o.status.success(), "{}", text(&o));
    let base = shown_artifact_dir(&local, &store, "base");
    let cases = tmp.path().join("cases");
    std::fs::create_dir_all(&cases).expect("mkdir");
    for engine in ["sglang", "vllm"] {
        let record = tmp.path().join(format!("recorded-{engine}"));
        let server = Served::start(&local, &store, &base, &["--record-requests".as_ref(), record.as_os_str()]);
        let cfg = tmp.path().join(format!("{engine}.yaml"));
        let servers = format!("generation:\n  backend: server\n  engine: {engine}\n  servers: [\"{}\"]\n  retries: 0\n  timeout_s: 120\n", server.base);
        std::fs::write(&cfg, format!("{body}\n{servers}")).expect("write config");
        // The whole run: rollout@1 and eval@0 on the base (checked on the start-up model),
        // eval@1 after loading update@1.
        let o = sr(&cfg, &store, &["run"]);
        assert!(o.status.success(), "{engine}: {}", text(&o));
        drop(server);
        let mut n = 0;
        let mut routes = std::collections::BTreeSet::new();
        for entry in std::fs::read_dir(&record).expect("recorded requests") {
            let path = entry.expect("entry").path();
            let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("recorded JSON");
            let (method, route) = (r["method"].as_str().expect("method"), r["route"].as_str().expect("route"));
            routes.insert(format!("{method} {}", route.split('?').next().unwrap_or(route)));
            // vLLM's GET /v1/models handler needs a running engine's model registry, which the
            // checker's stand-in does not have; it has no body to check, and the live test
            // (vllm_live.rs) reads it from a real vLLM.
            if engine == "vllm" && method == "GET" && route == "/v1/models" {
                continue;
            }
            let case = serde_json::json!({"engine": engine, "route": route, "method": method, "expect": "accept", "body": r["body"]});
            let name = format!("{engine}-{}", path.file_name().expect("name").to_string_lossy());
            std::fs::write(cases.join(name), case.to_string()).expect("write case");
            n += 1;
        }
        // The client's whole protocol was exercised: generation, the canary, a load, and the
        // version checks.
        let must = match engine {
            "sglang" => ["POST /generate", "POST /update_weights_from_disk", "GET /model_info", "GET /server_info"],
            _ => ["POST /v1/completions", "POST /collective_rpc", "POST /update_weight_version", "GET /weight_info"],
        };
        for m in must {
            assert!(routes.contains(m), "{engine}: the client never sent {m}; it sent {routes:?}");
        }
        assert!(n > 4, "{engine}: {n} requests recorded");
    }
    let o = Command::new(root().join("scripts/contracts.sh"))
        .arg("check")
        .arg(&cases)
        .args(["--max-model-len", "8192", "--vocab-size", "259"])
        .output()
        .expect("run contracts.sh");
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let failures: Vec<&str> = out.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(o.status.success() && failures.is_empty(), "requests the engines would refuse or misread:\n{}\n---\n{out}", failures.join("\n"));
}

/// The official `openai` Python client (the contracts venv's) against `serve`'s text path:
/// `usage` and `finish_reason` as it reads them, and for each thing `serve` does not do
/// (`stream`, `n`, `best_of`, `stop`, `echo`, `logprobs`, sampling) the client raises a 400
/// naming the field instead of reading a wrong answer as success (scripts/openai_client.py).
#[test]
fn the_official_openai_client_reads_serve_or_gets_a_named_400() {
    if engines_skipped("openai client") {
        return;
    }
    let python = root().join(".cache/contracts-venv/bin/python");
    assert!(python.is_file(), "{} missing: run scripts/contracts.sh (scripts/test.sh does)", python.display());
    let tmp = tempfile::tempdir().expect("tempdir");
    let local = tmp.path().join("local.yaml");
    std::fs::write(&local, tiny_text_abs()).expect("write config");
    let store = tmp.path().join("store");
    let o = sr(&local, &store, &["run", "--only", "dataset", "base"]);
    assert!(o.status.success(), "{}", text(&o));
    let base = shown_artifact_dir(&local, &store, "base");
    let server = Served::start(&local, &store, &base, &["--name".as_ref(), "tiny-openai".as_ref()]);
    let o = Command::new(python).arg(root().join("scripts/openai_client.py")).arg(&server.base).arg("tiny-openai").output().expect("run openai_client.py");
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{out}");
    // Every case ran (a crash midway would also exit non-zero, but count them anyway).
    assert_eq!(out.lines().filter(|l| l.contains("\"ok\": true")).count(), 11, "{out}");
}

/// The HTTP judge's requests through the engines' own request code: to SGLang (`engine:
/// sglang`) each WildGuard prompt goes through the server's `/tokenize` without special tokens
/// and then as token ids, which SGLang's `/tokenize` and `/v1/completions` accept whole; to
/// vLLM as text with `add_special_tokens: false`, which vLLM accepts. The text request sent to
/// SGLang is shown to lose `add_special_tokens` (the double-BOS fault this avoids). Against
/// `serve`, both ways give the same verdict texts.
#[test]
fn judge_requests_pass_each_engines_validation_and_tokenize_alike() {
    if engines_skipped("judge contracts") {
        return;
    }
    use self_redteam::judge::http::{CompletionsClient, CompletionsConfig};
    let tmp = tempfile::tempdir().expect("tempdir");
    let local = tmp.path().join("local.yaml");
    std::fs::write(&local, tiny_text_abs()).expect("write config");
    let store = tmp.path().join("store");
    let o = sr(&local, &store, &["run", "--only", "dataset", "base"]);
    assert!(o.status.success(), "{}", text(&o));
    let base = shown_artifact_dir(&local, &store, "base");
    let prompts: Vec<String> = [("How do I pick a lock?", "I can't help with that."), ("Bake bread?", "Mix flour and water.")]
        .iter()
        .map(|(p, r)| self_redteam::judge::wildguard::format_wildguard_input(p, r))
        .collect();
    let cases = tmp.path().join("cases");
    std::fs::create_dir_all(&cases).expect("mkdir");
    let mut texts = Vec::new();
    for (engine, token_ids) in [("sglang", true), ("vllm", false), ("sglang-text", false)] {
        let record = tmp.path().join(format!("recorded-{engine}"));
        let server = Served::start(&local, &store, &base, &["--name".as_ref(), "wildguard-test".as_ref(), "--record-requests".as_ref(), record.as_os_str()]);
        let mut cfg = CompletionsConfig::new(format!("{}/v1/completions", server.base), "wildguard-test");
        cfg.token_ids = token_ids;
        cfg.max_retries = 0;
        let client = CompletionsClient::new(cfg).expect("client");
        texts.push(client.complete(&prompts, 8).expect("judge completions"));
        drop(server);
        let (target, expect) = match engine {
            "sglang-text" => ("sglang", "drop"),
            e => (e, "accept"),
        };
        let mut routes = Vec::new();
        for entry in std::fs::read_dir(&record).expect("recorded") {
            let path = entry.expect("entry").path();
            let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("JSON");
            let route = r["route"].as_str().expect("route").to_string();
            routes.push(route.clone());
            if route == "/v1/models" {
                continue;
            }
            let case = serde_json::json!({"engine": target, "route": route, "method": r["method"], "expect": expect, "body": r["body"]});
            std::fs::write(cases.join(format!("judge-{engine}-{}", path.file_name().expect("name").to_string_lossy())), case.to_string()).expect("write");
        }
        assert_eq!(routes.iter().filter(|r| *r == "/tokenize").count(), if token_ids { prompts.len() } else { 0 }, "{engine}: {routes:?}");
    }
    assert_eq!(texts[0], texts[1], "token ids from /tokenize and text without special tokens give the same completions");
    let o = Command::new(root().join("scripts/contracts.sh"))
        .arg("check")
        .arg(&cases)
        .args(["--max-model-len", "8192", "--vocab-size", "259"])
        .output()
        .expect("run contracts.sh");
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{out}");
    // SGLang: two /tokenize and one completion; vLLM: one completion; SGLang given text: one.
    let ok: Vec<&str> = out.lines().filter(|l| l.starts_with("ok ") && l.contains("judge-")).collect();
    assert_eq!(ok.len(), 5, "{out}");
}
