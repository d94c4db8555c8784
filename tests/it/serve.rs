//! Integration tests: `serve` hardening and its token-id protocols. The real `self-redteam
//! serve` process over a tiny random Llama saved as an HF directory (context 512 tokens, so
//! the token limit is cheap to reach): body, prompt and token limits with the field named, a
//! request claiming an absurd Content-Length, the bearer token, `--weight-version`, and a few
//! hundred mutated requests that must all be answered; the transport's limits (stalled heads
//! cut off at the header timeout, the connection cap, every refused socket closed, raw bytes
//! fuzzed). In process (`CompletionsServer`): a panicking generator, the request and body
//! timeouts, pipelining and `Expect: 100-continue`, `PolicyGenerator` after a failed generation;
//! SGLang `/generate` and vLLM token-id `/v1/completions` against `Policy::generate` and
//! `Policy::prompt_logprobs` (bit for bit), both weight-update flows, pause / continue, ids
//! past the vocabulary, and the token on every route. `fuzz_serve_request`,
//! `fuzz_serve_token_requests` and `fuzz_http_head` fuzz the pure parsers.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use self_redteam::model::{tiny_random_llama, Policy, Sample, SamplingParams};
use self_redteam::net::wire::{
    seed_of_wire, vllm_token_id, wire_seed, OneOrMany, SglangGenerateRequest, SglangGenerateResponse, SglangSamplingParams, SglangUpdateWeightsRequest,
    SglangUpdateWeightsResponse, TokenSampling, VllmCompletionRequest, VllmCompletionResponse,
};
use self_redteam::serve::http1;
use self_redteam::serve::policy::{weights_digest, PolicyGenerator};
use self_redteam::serve::TextGenerator;
use self_redteam::serve::{
    completions_prompt_kind, parse_generate, parse_pause_mode, parse_request, parse_token_completion, parse_token_completion_batch, BearerToken,
    CompletionsServer, ServerOptions,
};

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
    // 3 MB sent whole by the client: the server answers from the head, then discards the
    // rest before closing. (With a 1 MiB cap on that discard, this failed with a broken pipe
    // whenever other tests loaded the machine; with no discard at all it passed here, so it
    // guards the cap, not the gentle close itself.)
    let big = json!({"prompt": "x".repeat(3_000_000), "max_tokens": 1}).to_string();
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
    // The transport answers 413 from the head alone and closes the connection (the body is
    // never read nor allocated); the first transport, tiny_http, aborted the process here.
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
fn server_request_timeout_covers_slow_generation_and_the_body_timeout_slow_bodies() {
    let opts = ServerOptions {
        workers: 1,
        batch: 1,
        request_timeout: Duration::from_millis(400),
        body_timeout: Duration::from_millis(500),
        ..ServerOptions::default()
    };
    let server = CompletionsServer::start(SlowEcho(Duration::from_millis(250)), opts).expect("server");
    // Generation: three batches of 250 ms pass the 400 ms deadline after the second.
    let (status, v) = post(&server.completions_url(), json!({"prompt": ["a", "b", "c"]}).to_string().as_bytes(), None);
    assert_eq!(status, 504, "{v}");
    // A body that never completes never reaches the single worker (another request is
    // answered meanwhile), and is answered 408 and closed at the body timeout.
    let mut tcp = TcpStream::connect(server.addr()).expect("connect");
    write!(tcp, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{{\"prompt\":").expect("send");
    let (status, v) = post(&server.completions_url(), json!({"prompt": "ok"}).to_string().as_bytes(), None);
    assert_eq!(status, 200, "{v}");
    let mut answer = String::new();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let _ = tcp.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains("body not received"), "{answer:?}");
}

/// Read what the server sends until it closes the connection (or 10 s pass).
fn read_until_closed(tcp: &mut TcpStream) -> String {
    tcp.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut bytes = Vec::new();
    let _ = tcp.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Slow-loris: connections that send part of a head and stall hold a slot only until the
/// header timeout; past `--max-connections` a new connection is answered 503 at once; and
/// the server answers normally as soon as the stalled ones are cut off.
#[test]
fn serve_cuts_off_stalled_clients_and_caps_connections() {
    let s = Served::start(&["--max-connections", "4", "--header-timeout-s", "1"], None);
    let started = std::time::Instant::now();
    let mut stalled: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut tcp = TcpStream::connect(s.addr()).expect("connect");
            tcp.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n").expect("send");
            tcp
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut fifth = TcpStream::connect(s.addr()).expect("connect");
    let answer = read_until_closed(&mut fifth);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    assert!(started.elapsed() < Duration::from_millis(900), "the 503 must not wait for the stalled clients: {:?}", started.elapsed());
    for mut tcp in stalled.drain(..) {
        let answer = read_until_closed(&mut tcp);
        assert!(answer.starts_with("HTTP/1.1 408") && answer.contains("head not received"), "{answer:?}");
        // Closing our side ends the server's gentle close (it waits ≤ 2 s for it).
    }
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    std::thread::sleep(Duration::from_millis(300));
    // A client that never sends a byte is closed at the header timeout too.
    let mut silent = TcpStream::connect(s.addr()).expect("connect");
    assert_eq!(read_until_closed(&mut silent), "");
    assert_answers(&s.url, None);
}

/// The server process's open descriptors (Linux).
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Every socket the server refuses or times out is closed: after a few hundred bad
/// connections (absurd Content-Length, malformed heads, stalled heads, over the connection
/// cap) the process holds as many descriptors as before them. The old transport leaked one
/// socket and one thread per absurd Content-Length on purpose.
#[test]
fn serve_closes_every_connection_it_refuses() {
    let s = Served::start(&["--max-connections", "8", "--header-timeout-s", "1"], None);
    assert_answers(&s.url, None);
    let pid = s.child.id();
    let settle = |target: usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while open_fds(pid) > target && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        open_fds(pid)
    };
    let before = settle(0);
    assert!(before > 0, "cannot read /proc/{pid}/fd");
    let heads: [&[u8]; 4] = [
        b"POST /v1/completions HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\n{",
        b"GET / HTTP/9\r\n\r\n",
        b"\x00\xff garbage \r\n\r\n",
        b"POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ];
    for round in 0..50 {
        for head in heads {
            let mut tcp = TcpStream::connect(s.addr()).expect("connect");
            tcp.write_all(head).expect("send");
            let answer = read_until_closed(&mut tcp);
            assert!(answer.starts_with("HTTP/1.1 4") || answer.starts_with("HTTP/1.1 5"), "round {round}: {answer:?}");
        }
    }
    // Stalled heads over the cap, dropped by the client half-way.
    let stalled: Vec<TcpStream> = (0..12)
        .map(|_| {
            let mut tcp = TcpStream::connect(s.addr()).expect("connect");
            let _ = tcp.write_all(b"GET /health HTTP/1.1\r\n");
            tcp
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    drop(stalled);
    let after = settle(before);
    assert!(after <= before, "descriptors: {before} before, {after} after the refused connections");
    assert_answers(&s.url, None);
}

/// Keep-alive and pipelining: three requests written at once on one connection get three
/// answers in order (a HEAD's without a body); `Connection: close` ends it;
/// `Expect: 100-continue` is honoured.
#[test]
fn serve_answers_pipelined_requests_on_one_connection() {
    let server = CompletionsServer::start(std::sync::Mutex::new(PanickyGenerator), ServerOptions { workers: 1, ..ServerOptions::default() }).expect("server");
    let body = |p: &str| json!({"prompt": p}).to_string();
    let (a, b) = (body("first"), body("second"));
    let mut tcp = TcpStream::connect(server.addr()).expect("connect");
    // A stray CRLF after the first body (some old clients send one) and a HEAD between the
    // two: the HEAD's answer has no body, so the third answer still parses.
    let two = format!(
        "POST /v1/completions HTTP/1.1\r\nContent-Length: {}\r\n\r\n{a}\r\nHEAD /health HTTP/1.1\r\n\r\nPOST /v1/completions HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{b}",
        a.len(),
        b.len()
    );
    tcp.write_all(two.as_bytes()).expect("send");
    let answer = read_until_closed(&mut tcp);
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 3, "{answer}");
    let head_answer = answer.split("HTTP/1.1 ").nth(2).expect("the HEAD's answer");
    assert!(head_answer.ends_with("\r\n\r\n") && head_answer.contains("Content-Length: 2\r\n"), "{head_answer:?}");
    let (i, j) = (answer.find("echo first").expect("first"), answer.find("echo second").expect("second"));
    assert!(i < j, "{answer}");
    let mut tcp = TcpStream::connect(server.addr()).expect("connect");
    let c = body("third");
    write!(tcp, "POST /v1/completions HTTP/1.1\r\nExpect: 100-continue\r\nConnection: close\r\nContent-Length: {}\r\n\r\n", c.len()).expect("send");
    let mut interim = [0u8; 25];
    tcp.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    tcp.read_exact(&mut interim).expect("100 Continue");
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    tcp.write_all(c.as_bytes()).expect("send body");
    let answer = read_until_closed(&mut tcp);
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("echo third"), "{answer}");
}

fn http_seeds() -> Vec<Vec<u8>> {
    let body = json!({"prompt": "Hello", "max_tokens": 2}).to_string();
    [
        format!("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()),
        "GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_string(),
        format!("POST /generate HTTP/1.0\r\nConnection: keep-alive\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n{body}", body.len()),
        "GET /health?x=1 HTTP/1.1\r\n\r\nGET /health HTTP/1.1\r\n\r\n".to_string(),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}

/// The head parser is total: never a panic, and what it accepts is within its rules.
#[test]
fn fuzz_http_head() {
    fuzz::run("fuzz_http_head", &http_seeds(), fuzz::iterations(20_000), |bytes| {
        let head = bytes.windows(4).position(|w| w == b"\r\n\r\n").map_or(bytes, |i| &bytes[..i]);
        if let Ok(h) = http1::parse_head(head) {
            assert!(h.target.starts_with('/') && !h.method.is_empty());
            assert!(h.headers.len() <= http1::MAX_HEADERS);
        }
    });
}

/// Mutated raw requests sent to a running `serve`: every connection is answered with a
/// status line or closed, and the server keeps answering.
#[test]
fn fuzz_serve_raw_http_against_a_running_serve() {
    let s = Served::start(&["--max-tokens", "4", "--header-timeout-s", "2"], None);
    let n = fuzz::iterations(300);
    fuzz::run("fuzz_serve_raw_http_live", &http_seeds(), n, |bytes| {
        let mut tcp = TcpStream::connect(s.addr()).expect("connect");
        let _ = tcp.write_all(bytes);
        let _ = tcp.shutdown(std::net::Shutdown::Write);
        let answer = read_until_closed(&mut tcp);
        assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 "), "{answer:?}");
    });
    assert_answers(&s.url, None);
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

/// The judge's text path says what it does not do, as vLLM's OpenAI server would otherwise do
/// it: `stream`, `n`/`best_of` > 1, `stop` strings, `echo` and `logprobs` are 400 naming the
/// field, never a 200 that a client misreads (a plain-JSON reply to `stream: true` is an empty
/// stream to the official `openai` client).
#[test]
fn text_completions_refuse_what_they_do_not_do_by_field() {
    let generator = PolicyGenerator::new(tiny_random_llama(3));
    let options = ServerOptions::default();
    let ok = json!({"model": "local", "prompt": "Hello", "max_tokens": 4, "temperature": 0, "stream": false, "n": 1, "stop": [], "echo": false});
    assert!(parse_request(ok.to_string().as_bytes(), &options, &generator).is_ok());
    for (extra, field) in [
        (json!({"stream": true}), "stream"),
        (json!({"n": 2}), "n"),
        (json!({"best_of": 3}), "best_of"),
        (json!({"stop": ["\n"]}), "stop"),
        (json!({"stop": "END"}), "stop"),
        (json!({"echo": true}), "echo"),
        (json!({"logprobs": 0}), "logprobs"),
        (json!({"logprobs": 5}), "logprobs"),
    ] {
        let mut body = json!({"prompt": "Hello", "max_tokens": 4, "temperature": 0});
        body.as_object_mut().expect("object").extend(extra.as_object().expect("object").clone());
        let r = parse_request(body.to_string().as_bytes(), &options, &generator).expect_err(&body.to_string());
        assert_eq!((r.status, r.field), (400, Some(field)), "{body}: {}", r.message);
    }
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

// ---------------------------------------------------------------- token-id protocols

/// The settings of the RL sampler (top-k and top-p on, a wide stop set so some rows stop
/// early and others run to the length limit), with a per-row seed.
fn rl_sampling(seed: u64) -> TokenSampling {
    TokenSampling {
        temperature: 1.0,
        top_p: 0.95,
        top_k: Some(100),
        max_new_tokens: 10,
        min_new_tokens: 1,
        stop_token_ids: (40..80).collect(),
        seed: Some(wire_seed(seed)),
    }
}

fn token_prompts(policy: &Policy) -> Vec<Vec<u32>> {
    ["Hello there", "How do I bake bread?", "x", "A longer prompt, with punctuation; and more words."]
        .iter()
        .map(|p| policy.tokenizer().encode(p, false).expect("encode"))
        .collect()
}

/// An in-process server over a tiny random policy (the `root` and `model_path` of a served
/// checkpoint, when given).
fn token_server(seed: u64, model: Option<&std::path::Path>, opts: ServerOptions) -> CompletionsServer {
    let policy = match model {
        Some(dir) => Policy::load(dir, tch::Device::Cpu, tch::Kind::Float).expect("load"),
        None => tiny_random_llama(seed),
    };
    let root = model.map(|dir| weights_digest(dir).expect("digest").to_string());
    let opts = ServerOptions { workers: 1, model_root: root, model_path: model.map(|d| d.display().to_string()), ..opts };
    CompletionsServer::start(PolicyGenerator::new(policy), opts).expect("server")
}

fn post_json(url: &str, body: &Value, token: Option<&str>) -> (u16, Value) {
    post(url, body.to_string().as_bytes(), token)
}

fn get(url: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = agent().get(url);
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    let mut resp = req.call().expect("request answered");
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// A `/generate` reply's row as (ids, log-probs, stopped).
fn sglang_row(r: &SglangGenerateResponse) -> (Vec<u32>, Vec<f32>, bool) {
    let lps: Vec<f32> = r.meta_info.output_token_logprobs.as_ref().expect("output logprobs").iter().map(|(lp, _, _)| lp.expect("a log-prob") as f32).collect();
    let ids: Vec<u32> = r.meta_info.output_token_logprobs.as_ref().expect("output logprobs").iter().map(|(_, id, _)| *id).collect();
    assert_eq!(ids, r.output_ids, "log-prob ids follow the output ids");
    let reason = r.meta_info.finish_reason.as_ref().expect("finish reason");
    let stopped = reason.kind == "stop";
    if stopped {
        assert_eq!(reason.matched, Some(json!(r.output_ids.last().copied().expect("a stop token"))), "{reason:?}");
    } else {
        assert_eq!(reason.kind, "length");
    }
    assert_eq!(r.meta_info.completion_tokens, r.output_ids.len());
    (r.output_ids.clone(), lps, stopped)
}

fn assert_same_sample(got: &(Vec<u32>, Vec<f32>, bool), want: &Sample, what: &str) {
    assert_eq!(got.0, want.token_ids, "{what}: ids");
    assert_eq!(bits(&got.1), bits(&want.logprobs), "{what}: log-probs bit for bit");
    assert_eq!(got.2, want.finished_by_stop, "{what}: finish reason");
}

fn generate_body(prompts: &[Vec<u32>], params: &[TokenSampling], single: bool) -> Value {
    let sp: Vec<SglangSamplingParams> = params.iter().map(SglangSamplingParams::from).collect();
    let req = SglangGenerateRequest {
        input_ids: if single { OneOrMany::One(prompts[0].clone()) } else { OneOrMany::Many(prompts.to_vec()) },
        sampling_params: if single { OneOrMany::One(sp[0].clone()) } else { OneOrMany::Many(sp) },
        return_logprob: true,
        logprob_start_len: -1,
    };
    serde_json::to_value(&req).expect("JSON")
}

#[test]
fn generate_batch_with_per_prompt_seeds_is_policy_generate_however_it_is_sent() {
    let policy = tiny_random_llama(3);
    let server = token_server(3, None, ServerOptions::default());
    let url = format!("{}/generate", server.base_url());
    let prompts = token_prompts(&policy);
    // Rows 0..3 share settings (seeds differ); row 3 samples at another temperature, so the
    // generator groups it apart.
    let mut params: Vec<TokenSampling> = (0..4).map(|i| rl_sampling(100 + i)).collect();
    params[3].temperature = 0.7;
    let seeds: Vec<u64> = params.iter().map(|p| seed_of_wire(p.seed.expect("seeded"))).collect();
    let mut want = policy.generate(&prompts[..3], &seeds[..3], &SamplingParams::of_request(&params[0])).expect("generate");
    want.extend(policy.generate(&prompts[3..], &seeds[3..], &SamplingParams::of_request(&params[3])).expect("generate"));
    assert!(want.iter().any(|s| s.finished_by_stop) && want.iter().any(|s| !s.finished_by_stop), "the test wants both finish reasons");

    let (status, v) = post_json(&url, &generate_body(&prompts, &params, false), None);
    assert_eq!(status, 200, "{v}");
    let rows: Vec<SglangGenerateResponse> = serde_json::from_value(v).expect("a list of replies");
    assert_eq!(rows.len(), 4);
    for (i, (r, w)) in rows.iter().zip(&want).enumerate() {
        assert_same_sample(&sglang_row(r), w, &format!("batch row {i}"));
        assert_eq!(r.meta_info.weight_version.as_deref(), Some("default"));
        assert_eq!(r.meta_info.prompt_tokens, prompts[i].len());
        assert_eq!(r.text, policy.tokenizer().decode(&w.token_ids, true).expect("decode"), "row {i}");
    }
    // One request per prompt: the same rows as `generate` of that prompt alone, and the same
    // tokens as in the batch (log-probs up to the batched prefill's float rounding).
    for (i, p) in prompts.iter().enumerate() {
        let (status, v) = post_json(&url, &generate_body(std::slice::from_ref(p), &params[i..=i], true), None);
        assert_eq!(status, 200, "{v}");
        let r: SglangGenerateResponse = serde_json::from_value(v).expect("one reply object for a flat input_ids");
        let alone = policy.generate(std::slice::from_ref(p), &seeds[i..=i], &SamplingParams::of_request(&params[i])).expect("generate");
        let got = sglang_row(&r);
        assert_same_sample(&got, &alone[0], &format!("prompt {i} alone"));
        assert_eq!(got.0, want[i].token_ids, "prompt {i}: alone vs in the batch");
        assert!(got.1.iter().zip(&want[i].logprobs).all(|(a, b)| (a - b).abs() < 1e-4), "prompt {i}");
    }
    // One sampling_params dict for every prompt: each row still gets the dict's seed.
    let shared = SglangSamplingParams::from(&params[0]);
    let body = json!({"input_ids": prompts[..2], "sampling_params": shared, "return_logprob": true});
    let (status, v) = post_json(&url, &body, None);
    assert_eq!(status, 200, "{v}");
    let rows: Vec<SglangGenerateResponse> = serde_json::from_value(v).expect("list");
    let same_seed = policy.generate(&prompts[..2], &[seeds[0], seeds[0]], &SamplingParams::of_request(&params[0])).expect("generate");
    for (r, w) in rows.iter().zip(&same_seed) {
        assert_same_sample(&sglang_row(r), w, "one dict for all");
    }
}

#[test]
fn token_id_completions_are_policy_generate_and_prompt_logprobs_are_the_policys() {
    let policy = tiny_random_llama(3);
    let server = token_server(3, None, ServerOptions::default());
    let prompts = token_prompts(&policy);
    for (i, p) in prompts.iter().enumerate() {
        let s = rl_sampling(7 + i as u64);
        let mut req = VllmCompletionRequest::of(p.clone(), &s);
        req.prompt_logprobs = Some(0);
        let (status, v) = post_json(&server.completions_url(), &serde_json::to_value(&req).expect("JSON"), None);
        assert_eq!(status, 200, "{v}");
        let reply: VllmCompletionResponse = serde_json::from_value(v).expect("a vLLM reply");
        let c = &reply.choices[0];
        let want = &policy.generate(std::slice::from_ref(p), &[7 + i as u64], &SamplingParams::of_request(&s)).expect("generate")[0];
        assert_eq!(c.token_ids.as_ref().expect("token_ids"), &want.token_ids, "prompt {i}");
        let lp = c.logprobs.as_ref().expect("logprobs");
        let ids: Vec<u32> = lp.tokens.iter().map(|t| vllm_token_id(t).expect("token_id:N")).collect();
        assert_eq!(ids, want.token_ids);
        let lps: Vec<f32> = lp.token_logprobs.iter().map(|x| x.expect("a log-prob") as f32).collect();
        assert_eq!(bits(&lps), bits(&want.logprobs), "prompt {i}: log-probs bit for bit");
        assert_eq!(c.finish_reason.as_deref(), Some(if want.finished_by_stop { "stop" } else { "length" }));
        assert_eq!(c.text, want.text);
        // Prompt log-probs: null first, then each token's own, as `Policy::prompt_logprobs`.
        let pl = c.prompt_logprobs.as_ref().expect("prompt_logprobs");
        assert_eq!(pl.len(), p.len());
        assert!(pl[0].is_none());
        let got: Vec<f32> = pl[1..].iter().zip(&p[1..]).map(|(e, t)| e.as_ref().expect("an entry")[&t.to_string()].logprob as f32).collect();
        let direct = if p.len() > 1 { policy.prompt_logprobs(p).expect("prompt logprobs") } else { Vec::new() };
        assert_eq!(bits(&got), bits(&direct), "prompt {i}");
        // SGLang's `logprob_start_len: 0` gives the same numbers.
        let mut body = generate_body(std::slice::from_ref(p), std::slice::from_ref(&s), true);
        body["logprob_start_len"] = json!(0);
        let (status, v) = post_json(&format!("{}/generate", server.base_url()), &body, None);
        assert_eq!(status, 200, "{v}");
        let r: SglangGenerateResponse = serde_json::from_value(v).expect("reply");
        let input = r.meta_info.input_token_logprobs.expect("input_token_logprobs");
        assert_eq!(input[0], (None, p[0], None));
        let got: Vec<f32> = input[1..].iter().map(|(lp, _, _)| lp.expect("a log-prob") as f32).collect();
        assert_eq!(input.iter().map(|e| e.1).collect::<Vec<_>>(), *p);
        assert_eq!(bits(&got), bits(&direct), "prompt {i}");
        assert_eq!(r.output_ids, want.token_ids, "same seed, same settings, either protocol");
    }
    // Decoded pieces instead of `token_id:N`, no token ids: still the same tokens.
    let s = rl_sampling(7);
    let mut req = VllmCompletionRequest::of(prompts[0].clone(), &s);
    req.return_tokens_as_token_ids = false;
    req.return_token_ids = false;
    let (status, v) = post_json(&server.completions_url(), &serde_json::to_value(&req).expect("JSON"), None);
    assert_eq!(status, 200, "{v}");
    let want = &policy.generate(&prompts[..1], &[7], &SamplingParams::of_request(&s)).expect("generate")[0];
    let pieces: Vec<String> = want.token_ids.iter().map(|&t| policy.tokenizer().decode(&[t], true).expect("decode")).collect();
    assert_eq!(v["choices"][0]["logprobs"]["tokens"], json!(pieces), "{v}");
    assert!(v["choices"][0].get("token_ids").is_none(), "{v}");
}

/// Saves tiny random policies `seed_a` and `seed_b` under a temp dir: (dir, A, B).
fn two_checkpoints(seed_a: u64, seed_b: u64) -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    tiny_random_llama(seed_a).save_hf_dir(&a).expect("save a");
    tiny_random_llama(seed_b).save_hf_dir(&b).expect("save b");
    (dir, a, b)
}

/// One seeded `/generate` row of `prompt`: (ids, log-probs bits, weight version).
fn generate_one(server: &CompletionsServer, prompt: &[u32]) -> (Vec<u32>, Vec<u32>, Option<String>) {
    let body = generate_body(&[prompt.to_vec()], &[rl_sampling(42)], true);
    let (status, v) = post_json(&format!("{}/generate", server.base_url()), &body, None);
    assert_eq!(status, 200, "{v}");
    let r: SglangGenerateResponse = serde_json::from_value(v).expect("reply");
    let (ids, lps, _) = sglang_row(&r);
    (ids, bits(&lps), r.meta_info.weight_version)
}

fn policy_sample(dir: &std::path::Path, prompt: &[u32]) -> (Vec<u32>, Vec<u32>) {
    let p = Policy::load(dir, tch::Device::Cpu, tch::Kind::Float).expect("load");
    let s = &p.generate(&[prompt.to_vec()], &[42], &SamplingParams::of_request(&rl_sampling(42))).expect("generate")[0];
    (s.token_ids.clone(), bits(&s.logprobs))
}

fn root_of(server: &CompletionsServer) -> String {
    let (status, v) = get(&format!("{}/v1/models", server.base_url()), None);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"][0]["max_model_len"], 512, "{v}");
    v["data"][0]["root"].as_str().expect("root").to_string()
}

#[test]
fn update_weights_from_disk_swaps_the_model_and_a_bad_checkpoint_keeps_the_old_one() {
    let (dir, a, b) = two_checkpoints(3, 11);
    let server = token_server(3, Some(&a), ServerOptions::default());
    let base = server.base_url();
    let prompt = token_prompts(&tiny_random_llama(3))[1].clone();
    assert_eq!(root_of(&server), weights_digest(&a).expect("digest").to_string());
    let before = generate_one(&server, &prompt);
    assert_eq!((before.0.clone(), before.1.clone()), policy_sample(&a, &prompt));
    assert_eq!(before.2.as_deref(), Some("default"));

    let req =
        SglangUpdateWeightsRequest { model_path: b.display().to_string(), weight_version: Some("v1".into()), flush_cache: true, abort_all_requests: false };
    let (status, v) = post_json(&format!("{base}/update_weights_from_disk"), &serde_json::to_value(&req).expect("JSON"), None);
    assert_eq!(status, 200, "{v}");
    let r: SglangUpdateWeightsResponse = serde_json::from_value(v).expect("reply");
    assert!(r.success && r.message.contains("Weight version updated to v1."), "{r:?}");
    assert_eq!(root_of(&server), weights_digest(&b).expect("digest").to_string());
    let (_, info) = get(&format!("{base}/server_info"), None);
    assert_eq!(info["model_path"], b.display().to_string(), "{info}");
    assert_eq!(info["weight_version"], "v1", "{info}");
    let (_, info) = get(&format!("{base}/model_info"), None);
    assert_eq!(info["is_generation"], true, "{info}");
    assert_eq!(info["weight_version"], "v1", "{info}");
    // SGLang 0.5.23's retired routes are not served.
    for retired in ["/get_weight_version", "/get_server_info", "/get_model_info"] {
        assert_eq!(get(&format!("{base}{retired}"), None).0, 404, "{retired}");
    }
    let after = generate_one(&server, &prompt);
    assert_eq!((after.0.clone(), after.1.clone()), policy_sample(&b, &prompt));
    assert_ne!(after.1, before.1, "other weights, other log-probs");
    assert_eq!(after.2.as_deref(), Some("v1"));

    // A missing directory and a checkpoint with broken weights: 400, success false, and the
    // model, its digest and its version stay.
    let broken = dir.path().join("broken");
    tiny_random_llama(5).save_hf_dir(&broken).expect("save");
    let st = broken.join("model.safetensors");
    let bytes = std::fs::read(&st).expect("read");
    std::fs::write(&st, &bytes[..bytes.len() / 2]).expect("truncate");
    for bad in [dir.path().join("missing"), broken] {
        let body = json!({"model_path": bad.display().to_string(), "weight_version": "v2"});
        let (status, v) = post_json(&format!("{base}/update_weights_from_disk"), &body, None);
        assert_eq!(status, 400, "{v}");
        let r: SglangUpdateWeightsResponse = serde_json::from_value(v).expect("reply");
        assert!(!r.success && !r.message.is_empty(), "{r:?}");
        assert_eq!(root_of(&server), weights_digest(&b).expect("digest").to_string());
        assert_eq!(get(&format!("{base}/model_info"), None).1["weight_version"], "v1");
        assert_eq!(generate_one(&server, &prompt), after);
    }
    // Without a weight_version the version stays.
    let (status, v) = post_json(&format!("{base}/update_weights_from_disk"), &json!({"model_path": a.display().to_string()}), None);
    assert_eq!(status, 200, "{v}");
    assert_eq!(get(&format!("{base}/model_info"), None).1["weight_version"], "v1");
    assert_eq!(generate_one(&server, &prompt).1, before.1);
}

#[test]
fn vllm_reload_flow_reloads_and_sets_the_version() {
    let (dir, a, b) = two_checkpoints(3, 13);
    let server = token_server(3, Some(&a), ServerOptions { weight_version: "step-0".into(), ..ServerOptions::default() });
    let base = server.base_url();
    let prompt = token_prompts(&tiny_random_llama(3))[0].clone();
    let reload = |path: &str| {
        let body = json!({"method": "reload_weights", "kwargs": {"weights_path": path}});
        post_json(&format!("{base}/collective_rpc"), &body, None)
    };
    assert_eq!(get(&format!("{base}/weight_info"), None).1, json!({"weight_version": "step-0"}));
    assert_eq!(post(&format!("{base}/pause?mode=wait"), b"", None), (200, json!({"status": "paused"})));
    assert_eq!(get(&format!("{base}/is_paused"), None).1, json!({"is_paused": true}));
    // A missing directory: 500 with the error, as vLLM answers; here the old model stays.
    let (status, v) = reload(&dir.path().join("missing").display().to_string());
    assert_eq!(status, 500, "{v}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| m.contains("collective_rpc") && m.contains("missing")), "{v}");
    assert_eq!(root_of(&server), weights_digest(&a).expect("digest").to_string());
    // What vLLM's worker would refuse or misread: 400 naming the field.
    for (body, field) in [
        (json!({"method": "reload_weights", "kwargs": {"weights_path": "relative/dir"}}), "kwargs.weights_path"),
        (json!({"method": "reload_weights", "kwargs": {}}), "kwargs.weights_path"),
        (json!({"method": "reload_weights", "kwargs": {"weights_path": "/x", "path": "/y"}}), "kwargs"),
        (json!({"method": "shutdown"}), "method"),
    ] {
        let (status, v) = post_json(&format!("{base}/collective_rpc"), &body, None);
        assert_eq!((status, v["error"]["param"].clone()), (400, json!(field)), "{body}: {v}");
    }
    assert_eq!(reload(&b.display().to_string()), (200, json!({"results": [null]})));
    assert_eq!(root_of(&server), weights_digest(&b).expect("digest").to_string());
    let (status, v) = post_json(&format!("{base}/update_weight_version"), &json!({"new_version": "step-1"}), None);
    assert_eq!((status, v), (200, json!({"success": true, "new_version": "step-1"})));
    assert_eq!(post(&format!("{base}/reset_prefix_cache"), b"", None), (200, json!({"success": true})));
    assert_eq!(post(&format!("{base}/resume"), b"", None), (200, json!({"status": "resumed"})));
    assert_eq!(get(&format!("{base}/weight_info"), None).1, json!({"weight_version": "step-1"}));
    assert_eq!(get(&format!("{base}/model_info"), None).1["weight_version"], "step-1");
    let mut req = VllmCompletionRequest::of(prompt.clone(), &rl_sampling(42));
    req.seed = Some(42);
    let (status, v) = post_json(&server.completions_url(), &serde_json::to_value(&req).expect("JSON"), None);
    assert_eq!(status, 200, "{v}");
    let reply: VllmCompletionResponse = serde_json::from_value(v).expect("reply");
    assert_eq!(reply.choices[0].token_ids.as_ref().expect("ids"), &policy_sample(&b, &prompt).0);
    assert_eq!(generate_one(&server, &prompt).2.as_deref(), Some("step-1"));
    // The retired weight-transfer routes of earlier vLLM drafts are not served.
    for gone in ["/init_weight_transfer_engine", "/start_weight_update", "/update_weights", "/finish_weight_update"] {
        assert_eq!(post_json(&format!("{base}{gone}"), &json!({}), None).0, 404, "{gone}");
    }
}

#[test]
fn paused_generation_is_503_until_continued_and_bad_token_requests_are_400() {
    let policy = tiny_random_llama(3);
    let server = token_server(3, None, ServerOptions::default());
    let base = server.base_url();
    let prompts = token_prompts(&policy);
    let gen = generate_body(&prompts[..1], &[rl_sampling(1)], true);
    let tok = serde_json::to_value(VllmCompletionRequest::of(prompts[0].clone(), &rl_sampling(1))).expect("JSON");
    assert_eq!(post(&format!("{base}/pause_generation"), b"{}", None), (200, json!({"message": "Generation paused successfully.", "status": "ok"})));
    for (url, body) in [(format!("{base}/generate"), &gen), (server.completions_url(), &tok)] {
        let (status, v) = post_json(&url, body, None);
        assert_eq!(status, 503, "{url}: {v}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| m.contains("paused")), "{v}");
    }
    // The judge's text completions are not paused.
    assert_answers(&server.completions_url(), None);
    assert_eq!(post(&format!("{base}/continue_generation"), b"", None), (200, json!({"message": "Generation continued successfully.", "status": "ok"})));
    assert_eq!(post_json(&format!("{base}/generate"), &gen, None).0, 200);
    assert_eq!(post_json(&server.completions_url(), &tok, None).0, 200);
    assert_eq!(post(&format!("{base}/pause?mode=never"), b"", None).0, 400);
    let (status, text) = get(&format!("{base}/flush_cache"), None);
    assert_eq!(status, 404, "flush_cache is a POST: {text}");
    assert!(text["error"]["message"].as_str().is_some_and(|m| m.contains("POST /generate") && m.contains("GET /weight_info")), "{text}");
    let mut resp = agent().post(&format!("{base}/flush_cache")).send(&b""[..]).expect("answered");
    assert_eq!((resp.status().as_u16(), resp.body_mut().read_to_string().expect("text")), (200, "Cache flushed.".to_string()));

    // Ids past the vocabulary (259) and malformed requests: 400 naming the field, never a
    // libtorch panic, and the server keeps answering.
    let vocab = 259u32;
    let mut bad_stop = rl_sampling(1);
    bad_stop.stop_token_ids = vec![vocab];
    let sp = SglangSamplingParams::from(&rl_sampling(1));
    let cases = [
        (format!("{base}/generate"), json!({"input_ids": [[1, 2], [3, vocab]], "sampling_params": sp}), "input_ids", "vocabulary"),
        (format!("{base}/generate"), json!({"input_ids": [1, 2], "sampling_params": SglangSamplingParams::from(&bad_stop)}), "stop_token_ids", "vocabulary"),
        (format!("{base}/generate"), json!({"input_ids": [[1], [2]], "sampling_params": [sp, sp, sp]}), "sampling_params", "3 sampling_params for 2 prompts"),
        (format!("{base}/generate"), json!({"text": "Hello", "sampling_params": sp}), "text", "input_ids"),
        (format!("{base}/generate"), json!({"input_ids": [], "sampling_params": sp}), "input_ids", "empty"),
        (format!("{base}/generate"), json!({"input_ids": [1], "sampling_params": {"max_new_tokens": 600, "temperature": 1.0}}), "max_new_tokens", "context"),
        (format!("{base}/generate"), json!({"input_ids": [1], "sampling_params": {"max_new_tokens": 4, "temperature": 1.0, "top_p": 0}}), "top_p", "top_p"),
        (
            format!("{base}/generate"),
            json!({"input_ids": [1], "sampling_params": sp, "return_logprob": true, "logprob_start_len": 1}),
            "logprob_start_len",
            "position",
        ),
        (server.completions_url(), json!({"prompt": [1, vocab + 1000], "max_tokens": 4, "temperature": 1.0}), "prompt", "vocabulary"),
        // Seeds past 2^63 - 1: both engines answer 400 (vLLM `seed`, SGLang `sampling_seed`).
        (
            server.completions_url(),
            json!({"prompt": [1, 2], "max_tokens": 4, "temperature": 1.0, "seed": 9223372036854775808u64}),
            "seed",
            "[-2**63, 2**63 - 1]",
        ),
        (
            format!("{base}/generate"),
            json!({"input_ids": [1], "sampling_params": {"max_new_tokens": 4, "temperature": 1.0, "sampling_seed": 18446744073709551615u64}}),
            "sampling_seed",
            "[-2**63, 2**63 - 1]",
        ),
        // A batch of token-id prompts (vLLM takes one): each row checked, the refusal names it.
        (server.completions_url(), json!({"prompt": [[1, 2], [3, vocab + 1000]], "max_tokens": 4, "temperature": 1.0}), "prompt", "prompt 1: "),
        (server.completions_url(), json!({"prompt": [1, 2], "max_tokens": 4, "min_tokens": 5, "temperature": 1.0}), "min_tokens", "over max_tokens"),
        (server.completions_url(), json!({"prompt": [1, 2], "max_tokens": 4, "temperature": 1.0, "logprobs": 5}), "logprobs", "logprobs=0"),
        (server.completions_url(), json!({"prompt": [1, 2], "max_tokens": 4, "temperature": 1.0, "n": 2}), "n", "n must be 1"),
    ];
    for (url, body, field, says) in cases {
        let (status, v) = post_json(&url, &body, None);
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["error"]["param"], field, "{body}: {v}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| m.contains(says)), "{body}: {v}");
    }
    assert_eq!(post_json(&format!("{base}/generate"), &gen, None).0, 200);
    // Negative seeds are valid for both engines; a model name that is not served is vLLM's 404.
    let (status, v) = post_json(&server.completions_url(), &json!({"prompt": [1, 2], "max_tokens": 2, "temperature": 1.0, "seed": -5}), None);
    assert_eq!(status, 200, "{v}");
    let sp_neg = json!({"max_new_tokens": 2, "temperature": 1.0, "sampling_seed": i64::MIN});
    assert_eq!(post_json(&format!("{base}/generate"), &json!({"input_ids": [1], "sampling_params": sp_neg}), None).0, 200);
    let (status, v) = post_json(&server.completions_url(), &json!({"model": "nope", "prompt": [1, 2], "max_tokens": 2, "temperature": 1.0}), None);
    assert_eq!((status, v["error"]["param"].clone()), (404, json!("model")), "{v}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| m.contains("The model `nope` does not exist")), "{v}");
}

#[test]
fn new_routes_need_the_token_except_health_and_info_reads_are_not_counted() {
    let server = token_server(3, None, ServerOptions { auth_token: Some(BearerToken::new(TOKEN)), fail_first: 1, ..ServerOptions::default() });
    let base = server.base_url();
    assert_eq!(get(&format!("{base}/health"), None), (200, json!({})));
    let gets = ["/v1/models", "/version", "/server_info", "/model_info", "/weight_info", "/is_paused"];
    let posts = [
        "/generate",
        "/v1/completions",
        "/update_weights_from_disk",
        "/pause_generation",
        "/continue_generation",
        "/flush_cache",
        "/collective_rpc",
        "/update_weight_version",
        "/pause",
        "/resume",
        "/reset_prefix_cache",
        "/nothing",
    ];
    for path in gets {
        assert_eq!(get(&format!("{base}{path}"), None).0, 401, "{path}");
    }
    for path in posts {
        assert_eq!(post(&format!("{base}{path}"), b"{}", Some("wrong")).0, 401, "{path}");
    }
    // The refused pause did nothing.
    assert_eq!(get(&format!("{base}/is_paused"), Some(TOKEN)), (200, json!({"is_paused": false})));
    let (status, v) = get(&format!("{base}/version"), Some(TOKEN));
    assert_eq!(status, 200);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    // Info reads leave `requests_seen` alone; everything else counts.
    let before = server.requests_seen();
    for path in gets.iter().chain(&["/health"]) {
        assert_eq!(get(&format!("{base}{path}"), Some(TOKEN)).0, 200, "{path}");
    }
    assert_eq!(server.requests_seen(), before);
    // fail_first counts generation requests of either protocol: the first /generate is 503,
    // the next is answered.
    let prompts = token_prompts(&tiny_random_llama(3));
    let gen = generate_body(&prompts[..1], &[rl_sampling(1)], true);
    assert_eq!(post_json(&format!("{base}/generate"), &gen, Some(TOKEN)).0, 503);
    assert_eq!(post_json(&format!("{base}/generate"), &gen, Some(TOKEN)).0, 200);
    assert_eq!(server.requests_seen(), before + 2);
}

#[test]
fn serve_reports_its_weight_version_option_and_context() {
    let s = Served::start(&["--weight-version", "iter-0"], None);
    let base = s.url.trim_end_matches("/v1/completions").to_string();
    assert_eq!(get(&format!("{base}/model_info"), None).1["weight_version"], "iter-0");
    let (_, v) = get(&format!("{base}/v1/models"), None);
    assert_eq!(v["data"][0]["max_model_len"], 512, "{v}");
    let (_, info) = get(&format!("{base}/model_info"), None);
    assert!(info["model_path"].as_str().is_some_and(|p| p.ends_with("tiny")), "{info}");
    let prompts = token_prompts(&tiny_random_llama(3));
    let (status, v) = post_json(&format!("{base}/generate"), &generate_body(&prompts[..1], &[rl_sampling(9)], true), None);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["meta_info"]["weight_version"], "iter-0", "{v}");
}

fn token_fuzz_seeds() -> Vec<Vec<u8>> {
    let sp = SglangSamplingParams::from(&rl_sampling(3));
    [
        json!({"input_ids": [1, 2, 3], "sampling_params": sp, "return_logprob": true, "logprob_start_len": 0}),
        json!({"input_ids": [[1, 2], [258]], "sampling_params": [sp, sp]}),
        json!({"prompt": [5, 6, 7], "max_tokens": 8, "min_tokens": 1, "temperature": 0.5, "top_k": -1, "seed": -9223372036854775808i64,
            "stop_token_ids": [2], "logprobs": 0, "prompt_logprobs": 0, "return_token_ids": true, "return_tokens_as_token_ids": true}),
        json!({"prompt": [[1], [2]], "max_tokens": 1, "temperature": 0}),
    ]
    .iter()
    .map(|v| v.to_string().into_bytes())
    .collect()
}

#[test]
fn fuzz_serve_token_requests() {
    let generator = PolicyGenerator::new(tiny_random_llama(3));
    let options = ServerOptions { max_prompts: 8, max_body_bytes: 4096, max_tokens_limit: 64, ..ServerOptions::default() };
    let within = |prompt: &[u32], s: &TokenSampling| {
        assert!(!prompt.is_empty() && prompt.iter().chain(&s.stop_token_ids).all(|&t| t < 259), "{prompt:?} {s:?}");
        assert!(s.max_new_tokens <= 64 && s.min_new_tokens <= s.max_new_tokens && prompt.len() + s.max_new_tokens <= 512);
        assert!(s.temperature >= 0.0 && s.top_p > 0.0 && s.top_p <= 1.0);
    };
    fuzz::run("fuzz_serve_token_requests", &token_fuzz_seeds(), fuzz::iterations(3000), |bytes| {
        let _ = completions_prompt_kind(bytes);
        if let Ok(r) = parse_generate(bytes, &options, &generator) {
            assert!(!r.prompts.is_empty() && r.prompts.len() <= options.max_prompts && r.prompts.len() == r.params.len());
            for (p, s) in r.prompts.iter().zip(&r.params) {
                within(p, s);
                assert!(r.logprob_start.is_none_or(|k| k < p.len()));
            }
        }
        if let Ok(r) = parse_token_completion(bytes, &options, &generator) {
            within(&r.prompt, &r.params);
        }
        if let Ok(rows) = parse_token_completion_batch(bytes, &options, &generator) {
            assert!(rows.len() <= options.max_prompts);
            for r in rows {
                within(&r.prompt, &r.params);
            }
        }
        let _ = parse_pause_mode(&String::from_utf8_lossy(bytes));
    });
}

#[test]
fn a_token_id_batch_is_checked_row_by_row_and_names_the_row() {
    let generator = PolicyGenerator::new(tiny_random_llama(3));
    let options = ServerOptions::default();
    let ok = json!({"prompt": [[1, 2], [3]], "max_tokens": 2, "temperature": 0, "seed": 7}).to_string();
    let rows = parse_token_completion_batch(ok.as_bytes(), &options, &generator).expect("a batch of two");
    assert_eq!(rows.iter().map(|r| r.prompt.clone()).collect::<Vec<_>>(), vec![vec![1, 2], vec![3]]);
    assert!(rows.iter().all(|r| r.params.seed == Some(7)), "every prompt gets the request's seed, as vLLM does");
    let bad = json!({"prompt": [[1, 2], [300]], "max_tokens": 2, "temperature": 0}).to_string();
    let r = parse_token_completion_batch(bad.as_bytes(), &options, &generator).expect_err("token 300 is past the vocabulary");
    assert!(r.status == 400 && r.message.starts_with("prompt 1: "), "{r:?}");
}
