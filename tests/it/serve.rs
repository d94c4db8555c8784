//! Integration tests: `serve` hardening. The real `self-redteam serve` process over a tiny
//! random Llama saved as an HF directory (context 512 tokens, so the token limit is cheap to
//! reach): body, prompt and token limits with the field named, a request claiming an absurd
//! Content-Length, the bearer token, and a few hundred mutated requests that must all be
//! answered. In process (`CompletionsServer`): a panicking generator, the request timeout,
//! and `PolicyGenerator` after a failed generation. `fuzz_serve_request` fuzzes the pure
//! `parse_request`.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use self_redteam::judge::build::PolicyGenerator;
use self_redteam::judge::server::{parse_request, CompletionsServer, ServerOptions};
use self_redteam::judge::TextGenerator;
use self_redteam::model::tiny_random_llama;

use super::util::root;
use crate::fuzz;

const TOKEN_VAR: &str = "SELF_REDTEAM_TEST_SERVE_TOKEN_91c2";
const TOKEN: &str = "test-token-5d1e";

/// A `self-redteam serve` child over a tiny random model; killed on drop.
struct Served {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Served {
    fn start(extra: &[&str], token: Option<&str>) -> Served {
        let dir = tempfile::tempdir().expect("tempdir");
        let model = dir.path().join("tiny");
        tiny_random_llama(3).save_hf_dir(&model).expect("save tiny model");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_self-redteam"));
        cmd.arg("--config").arg(root().join("pipeline.yaml")).arg("--store").arg(dir.path().join("store"));
        cmd.args(["serve", "--model", model.to_str().expect("utf-8"), "--bind", "127.0.0.1:0", "--name", "tiny", "--workers", "1"]).args(extra);
        match token {
            Some(t) => cmd.arg("--auth-token-env").arg(TOKEN_VAR).env(TOKEN_VAR, t),
            None => cmd.env_remove(TOKEN_VAR),
        };
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("spawn serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read the announce line");
        let url = line.trim().rsplit(' ').next().expect("URL at the end").to_string();
        assert!(line.starts_with("serving ") && url.ends_with("/v1/completions"), "{line:?}");
        Served { child, url, _dir: dir }
    }

    fn addr(&self) -> String {
        self.url.trim_start_matches("http://").split('/').next().expect("host:port").to_string()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(120))).build().into()
}

/// POST raw bytes; (status, JSON body or Null).
fn post(url: &str, body: &[u8], token: Option<&str>) -> (u16, Value) {
    let mut req = agent().post(url).header("Content-Type", "application/json");
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    let mut resp = req.send(body).expect("request answered");
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn ok_request() -> Vec<u8> {
    json!({"prompt": ["Hello", "World"], "max_tokens": 4, "temperature": 0}).to_string().into_bytes()
}

fn assert_answers(url: &str, token: Option<&str>) {
    let (status, v) = post(url, &ok_request(), token);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"].as_array().map(|c| c.len()), Some(2), "{v}");
}

#[test]
fn serve_answers_413_to_an_oversized_body_and_keeps_serving() {
    let s = Served::start(&["--max-body-bytes", "65536"], None);
    let big = json!({"prompt": "x".repeat(100_000), "max_tokens": 1}).to_string();
    let (status, v) = post(&s.url, big.as_bytes(), None);
    assert_eq!(status, 413, "{v}");
    assert_eq!(v["error"]["type"], "request_too_large", "{v}");
    assert_answers(&s.url, None);
}

#[test]
fn serve_refuses_too_many_prompts_and_tokens_naming_the_field() {
    let s = Served::start(&["--max-prompts", "3", "--max-tokens", "256"], None);
    let cases = [
        (json!({"prompt": ["a", "b", "c", "d"], "max_tokens": 1}), "prompt", "at most 3"),
        (json!({"prompt": "a", "max_tokens": 257}), "max_tokens", "limit of 256"),
        // 400 bytes of the byte-level tokenizer + 200 new tokens > the context of 512.
        (json!({"prompt": "y".repeat(400), "max_tokens": 200}), "max_tokens", "context of 512"),
        (json!({"prompt": [], "max_tokens": 1}), "prompt", "empty"),
        (json!({"prompt": "a", "temperature": 0.5}), "temperature", "greedily"),
    ];
    for (body, field, says) in cases {
        let (status, v) = post(&s.url, body.to_string().as_bytes(), None);
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["error"]["param"], field, "{body}: {v}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| m.contains(says)), "{body}: {v}");
    }
    // 400 + 100 fits the context: answered.
    let (status, v) = post(&s.url, json!({"prompt": "y".repeat(400), "max_tokens": 100}).to_string().as_bytes(), None);
    assert_eq!(status, 200, "{v}");
}

#[test]
fn serve_survives_a_request_claiming_an_absurd_content_length() {
    // tiny_http drains an unread body with `vec![0; remaining]`: without the server's guard
    // this request aborts the process when it is dropped.
    let s = Served::start(&[], None);
    for claimed in ["1000000000000000000", "18446744073709551615", "70000000"] {
        let mut tcp = TcpStream::connect(s.addr()).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        write!(tcp, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {claimed}\r\n\r\n{{\"prompt\":")
            .expect("send");
        let mut head = [0u8; 12];
        tcp.read_exact(&mut head).expect("an answer");
        assert_eq!(&head, b"HTTP/1.1 413", "{claimed}");
        drop(tcp);
    }
    assert_answers(&s.url, None);
}

#[test]
fn serve_with_a_bearer_token_refuses_requests_without_it() {
    let s = Served::start(&[], Some(TOKEN));
    let (status, v) = post(&s.url, &ok_request(), None);
    assert_eq!(status, 401, "{v}");
    let (status, _) = post(&s.url, &ok_request(), Some("test-token-5d1f"));
    assert_eq!(status, 401);
    let (status, _) = post(&s.url, &ok_request(), Some(&format!("{TOKEN}x")));
    assert_eq!(status, 401);
    assert_answers(&s.url, Some(TOKEN));
    // /v1/models is behind the token too, and reports the weights digest.
    let models = s.url.replace("/completions", "/models");
    assert_eq!(agent().get(&models).call().expect("answered").status().as_u16(), 401);
    let mut resp = agent().get(&models).header("Authorization", &format!("Bearer {TOKEN}")).call().expect("answered");
    assert_eq!(resp.status().as_u16(), 200);
    let v: Value = serde_json::from_str(&resp.body_mut().read_to_string().expect("body")).expect("JSON");
    assert_eq!(v["data"][0]["id"], "tiny", "{v}");
    assert!(v["data"][0]["root"].as_str().is_some_and(|r| r.starts_with("blake3:") && r.len() == 7 + 64), "{v}");
}

#[test]
fn serve_refuses_to_start_when_the_token_variable_is_unset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("tiny");
    tiny_random_llama(3).save_hf_dir(&model).expect("save");
    let o = Command::new(env!("CARGO_BIN_EXE_self-redteam"))
        .arg("--config")
        .arg(root().join("pipeline.yaml"))
        .arg("--store")
        .arg(dir.path().join("store"))
        .args(["serve", "--model", model.to_str().expect("utf-8"), "--bind", "127.0.0.1:0", "--auth-token-env", "SELF_REDTEAM_TEST_NO_SUCH_VAR_77"])
        .env_remove("SELF_REDTEAM_TEST_NO_SUCH_VAR_77")
        .output()
        .expect("spawn");
    assert_ne!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stderr).contains("SELF_REDTEAM_TEST_NO_SUCH_VAR_77"), "{o:?}");
}

/// Panics on the prompt `boom`, echoes otherwise.
struct PanickyGenerator;

impl TextGenerator for PanickyGenerator {
    fn generate_greedy(&self, prompts: &[String], _max_new_tokens: usize) -> anyhow::Result<Vec<String>> {
        if prompts.iter().any(|p| p == "boom") {
            panic!("generator blew up");
        }
        Ok(prompts.iter().map(|p| format!("echo {p}")).collect())
    }
}

#[test]
fn server_keeps_serving_after_a_generator_panic() {
    let server = CompletionsServer::start(std::sync::Mutex::new(PanickyGenerator), ServerOptions { workers: 1, ..ServerOptions::default() }).expect("server");
    for _ in 0..2 {
        let (status, v) = post(&server.completions_url(), json!({"prompt": "boom"}).to_string().as_bytes(), None);
        assert_eq!(status, 500, "{v}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| m.contains("panicked")), "{v}");
        let (status, v) = post(&server.completions_url(), json!({"prompt": "fine"}).to_string().as_bytes(), None);
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["choices"][0]["text"], "echo fine");
    }
}

/// Sleeps per call.
struct SlowEcho(Duration);

impl TextGenerator for SlowEcho {
    fn generate_greedy(&self, prompts: &[String], _max_new_tokens: usize) -> anyhow::Result<Vec<String>> {
        std::thread::sleep(self.0);
        Ok(prompts.to_vec())
    }
}

#[test]
fn server_request_timeout_covers_slow_bodies_and_slow_generation() {
    let opts = ServerOptions { workers: 1, batch: 1, request_timeout: Duration::from_millis(400), ..ServerOptions::default() };
    let server = CompletionsServer::start(SlowEcho(Duration::from_millis(250)), opts).expect("server");
    // Generation: three batches of 250 ms pass the 400 ms deadline after the second.
    let (status, v) = post(&server.completions_url(), json!({"prompt": ["a", "b", "c"]}).to_string().as_bytes(), None);
    assert_eq!(status, 504, "{v}");
    // A body that never completes: 408 once the client gives up, and the single worker is
    // free again after the deadline (another request is answered meanwhile).
    let mut tcp = TcpStream::connect(server.addr()).expect("connect");
    write!(tcp, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{{\"prompt\":").expect("send");
    std::thread::sleep(Duration::from_millis(600));
    let (status, v) = post(&server.completions_url(), json!({"prompt": "ok"}).to_string().as_bytes(), None);
    assert_eq!(status, 200, "{v}");
    tcp.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut answer = String::new();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let _ = tcp.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 4"), "{answer:?}");
}

#[test]
fn policy_generator_stays_usable_after_a_generation_that_fails() {
    let g = PolicyGenerator::new(tiny_random_llama(5));
    assert_eq!(g.context_tokens(), Some(512));
    // A very long prompt (whatever the model makes of it) and an empty one (an error): never a
    // panic, and no poisoned lock.
    let long: String = (0..700).map(|i| format!("w{i} ")).collect();
    let _ = g.generate_greedy(&[long], 50);
    assert!(g.generate_greedy(&[String::new()], 4).is_err());
    let out = g.generate_greedy(&["Hello".to_string()], 3).expect("generation still works");
    assert_eq!(out.len(), 1);
}

fn fuzz_seeds() -> Vec<Vec<u8>> {
    [
        json!({"prompt": "Hello", "max_tokens": 4}),
        json!({"prompt": ["a", "b"], "max_tokens": 8, "temperature": 0, "model": "tiny", "add_special_tokens": false}),
        json!({"prompt": ["ünïcödé ✓", ""], "max_tokens": 0}),
        json!({"prompt": "y", "max_tokens": 511}),
    ]
    .iter()
    .map(|v| v.to_string().into_bytes())
    .collect()
}

#[test]
fn fuzz_serve_request() {
    let generator = PolicyGenerator::new(tiny_random_llama(3));
    let options = ServerOptions { max_prompts: 8, max_body_bytes: 4096, ..ServerOptions::default() };
    fuzz::run("fuzz_serve_request", &fuzz_seeds(), fuzz::iterations(3000), |bytes| {
        if let Ok(r) = parse_request(bytes, &options, &generator) {
            // What passed is within every limit.
            assert!(!r.prompts.is_empty() && r.prompts.len() <= options.max_prompts);
            for p in &r.prompts {
                let n = generator.count_tokens(p).expect("counts").expect("tokenises");
                assert!(n > 0 && n + r.max_tokens <= 512, "{n} + {}", r.max_tokens);
            }
        }
    });
}

#[test]
fn fuzz_serve_request_against_a_running_serve() {
    let s = Served::start(&["--max-prompts", "4", "--max-tokens", "8"], None);
    let n = fuzz::iterations(300);
    let answered = std::cell::Cell::new(0);
    fuzz::run("fuzz_serve_request_live", &fuzz_seeds(), n, |bytes| {
        let (status, v) = post(&s.url, bytes, None);
        assert!(matches!(status, 200 | 400 | 413), "{status}: {v}");
        if status != 200 {
            assert!(v["error"]["message"].is_string(), "{status}: {v}");
        }
        answered.set(answered.get() + 1);
    });
    assert_eq!(answered.get(), n + fuzz_seeds().len());
    assert_answers(&s.url, None);
}
