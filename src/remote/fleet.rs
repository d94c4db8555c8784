//! The client side of `generation.backend: server`: puts one policy on every listed server,
//! proves each serves it, then spreads a stage's prompts over them. Called by the `rollout`
//! and `eval` stages through `StageContext::generator` (stages/mod.rs).
//!
//! Per stage run (docs/remote.md has the exact calls per engine):
//! 1. **Lock** the fleet (`<store>/.locks/generation-<hash of the URLs>.lock`): two stages
//!    running at once (`run --jobs 2`) must not load different policies onto the same servers.
//! 2. **Load** the policy artifact onto every server. The base policy is the servers'
//!    startup model: it is checked first and loaded only when the check fails (a later
//!    policy left there by an earlier stage, or a server started on something else). The servers read a clean view of the
//!    artifact, `<store>/.serving/<key>/` (hard links to its config, weights and tokenizer
//!    files only: an update artifact also holds `optimizer.safetensors`, which a loader that
//!    globs `*.safetensors` would take for weights), under `generation.server_store_path`
//!    when the servers mount the store elsewhere. The weight version is `<node>:<key prefix>`.
//! 3. **Verify**, because an HTTP 200 does not prove the weights changed (both engines have
//!    open bugs where a reload keeps serving the old weights): the server must report the
//!    expected weight version, this project's own server must report the artifact's weights
//!    digest as `/v1/models` `root`, and a canary — fixed prompts scored with prompt
//!    log-probs — must agree with this process's log-probs of the same weights within
//!    `generation.canary_tolerance` (mean |Δ| per token). A mismatch fails the stage with
//!    both numbers.
//! 4. **Generate**: token ids in, token ids and log-probs out, one seed per row. Requests
//!    follow the stage's own batch plan (so this project's `serve` sees the same batches as
//!    local generation and returns the same bytes), split to `prompts_per_request` (1 for
//!    vLLM, whose `seed` is per request). `concurrency` requests per server are in flight;
//!    a request that fails (connection, 5xx, 429, timeout) is retried with exponential
//!    backoff, and after `retries` its server is dropped for the rest of the stage and the
//!    request goes to another; when no server is left the stage fails and publishes nothing.
//!    Every row records the server, engine, engine version and weight version that made it.
//!
//! Replies are checked, never trusted: token ids inside the vocabulary, one log-prob per token,
//! no more tokens than asked, the weight version of each SGLang reply.
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::model::{Policy, Sample, SamplingParams, TokenId};
use crate::net::client::{api_key_from_env, excerpt, Failure, HttpClient, Retry};
use crate::net::spread::{spread, SpreadError};
use crate::net::wire::*;
use crate::spec::{GenerationParams, ServerEngine};

/// Largest reply body read (a batch of 64 rows of 2,048 tokens with log-probs is ~10 MB).
const MAX_REPLY_BYTES: u64 = 64 << 20;
/// Backoff before retry k (k ≥ 1): `BACKOFF_MS · 2^(k−1)`, capped.
const BACKOFF_MS: u64 = 500;
const BACKOFF_MAX_MS: u64 = 30_000;

/// Canary prompts: fixed chat turns, rendered with the policy's own template.
const CANARY: [&str; 2] = ["Write one sentence about the sea.", "How do I choose a strong password? Answer briefly."];

/// The files of a policy artifact a server loads (everything else stays out of its view).
const SERVED_FILES: [&str; 6] =
    ["config.json", "model.safetensors", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"];

/// One server's state once the policy is on it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerState {
    pub url: String,
    pub engine: ServerEngine,
    pub engine_version: String,
    pub weight_version: String,
    /// Canary: mean and max |Δ log-prob| per token against this process, and the token count.
    pub canary_mean_abs: f64,
    pub canary_max_abs: f64,
    pub canary_tokens: usize,
    /// After a load: mean |Δ log-prob| by which the server's canary moved, and by which this
    /// runtime says it should have moved (from what the server served before to this policy).
    pub canary_moved: Option<(f64, f64)>,
    /// Prompt + new tokens the server admits (`max_model_len` of `/v1/models`; vLLM and this
    /// project's server report it), if known.
    pub max_model_len: Option<usize>,
}

/// Which server made a row.
#[derive(Debug, Clone, PartialEq)]
pub struct Provenance {
    pub server: String,
    pub engine: String,
    pub engine_version: String,
    pub weight_version: String,
}

/// The configured servers.
pub struct Fleet {
    params: GenerationParams,
    urls: Vec<String>,
    client: HttpClient,
}

impl Fleet {
    pub fn connect(params: &GenerationParams) -> Result<Fleet> {
        if params.servers.is_empty() {
            bail!("generation.servers: no server to generate on");
        }
        let api_key = api_key_from_env(params.api_key_env.as_deref(), "generation.api_key_env").map_err(|e| anyhow!(e))?;
        let retry = Retry { retries: params.retries, backoff_initial_ms: BACKOFF_MS, backoff_max_ms: BACKOFF_MAX_MS };
        let client = HttpClient::new(Duration::from_secs(u64::from(params.timeout_s)), api_key, MAX_REPLY_BYTES, retry);
        let urls = params.servers.iter().map(|u| u.trim_end_matches('/').to_string()).collect();
        Ok(Fleet { params: params.clone(), urls, client })
    }

    pub fn params(&self) -> &GenerationParams {
        &self.params
    }

    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// Exclusive use of these servers for one stage run (blocks while another stage holds it).
    pub fn lock(&self, store_root: &Path) -> Result<std::fs::File> {
        use fs4::fs_std::FileExt;
        let mut urls = self.urls.clone();
        urls.sort();
        let dir = store_root.join(".locks");
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let path = dir.join(format!("generation-{}.lock", &blake3::hash(urls.join("\n").as_bytes()).to_hex()[..16]));
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).with_context(|| format!("open {}", path.display()))?;
        file.lock_exclusive().with_context(|| format!("lock {}", path.display()))?;
        Ok(file)
    }

    // ------------------------------------------------------------ HTTP

    fn url(&self, server: usize, route: &str) -> String {
        format!("{}{route}", self.urls[server])
    }

    /// One attempt (never retried: loads and other state changes go through here).
    fn call(&self, server: usize, route: &str, body: Option<&Value>) -> Result<Vec<u8>, Failure> {
        self.client.call(&self.url(server, route), body)
    }

    /// `call` with retries and exponential backoff on transient failures.
    fn call_retrying(&self, server: usize, route: &str, body: Option<&Value>) -> Result<Vec<u8>, Failure> {
        self.client.call_retrying(&self.url(server, route), body)
    }

    fn json<T: DeserializeOwned>(&self, server: usize, route: &str, body: Option<&Value>) -> Result<T> {
        let bytes = self.call_retrying(server, route, body).map_err(|f| anyhow!("{}", f.message()))?;
        parse_reply(&bytes).with_context(|| format!("{}: reply", self.url(server, route)))
    }

    fn post_ok(&self, server: usize, route: &str, body: &Value) -> Result<()> {
        self.call_retrying(server, route, Some(body)).map(|_| ()).map_err(|f| anyhow!("{}", f.message()))
    }

    // ------------------------------------------------------------ loading and checks

    /// Put the policy whose artifact directory is `dir` on every server and verify each
    /// (`load: false` for the base policy: the servers' startup model is checked first and
    /// loaded only when it is not the base). `weight_version` is
    /// what a load sets; `local` is this process's copy of the same weights (for the canary)
    /// and `weights_digest` its digest (checked against this project's own servers).
    pub fn put_policy(
        &mut self,
        store_root: &Path,
        dir: &Path,
        weight_version: &str,
        load: bool,
        local: &Policy,
        weights_digest: &str,
    ) -> Result<Vec<ServerState>> {
        let canary = canary_prompts(local)?;
        let expected: Vec<Vec<f32>> =
            canary.iter().map(|ids| local.prompt_logprobs(ids)).collect::<Result<_, _>>().context("canary: local prompt log-probs")?;
        let server_dir = self.server_view(store_root, dir)?;
        let vocab = local.config().vocab_size;
        let this = &*self;
        let results: Vec<Result<ServerState>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..this.urls.len())
                .map(|s| {
                    let (canary, expected, server_dir) = (&canary, &expected, &server_dir);
                    scope.spawn(move || this.put_on(s, server_dir, weight_version, load, canary, expected, weights_digest, vocab))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| Err(anyhow!("panicked: {}", crate::engine::panic_message(p.as_ref()).unwrap_or_default()))))
                .collect()
        });
        // A server that failed its load or its checks is out for this stage: it is never
        // resumed nor sent rows (a half-loaded vLLM crashes on its next completion). The
        // stage goes on with the others, and fails when none is left.
        let (mut states, mut kept, mut failed) = (Vec::new(), Vec::new(), Vec::new());
        for (s, r) in results.into_iter().enumerate() {
            match r {
                Ok(state) => {
                    states.push(state);
                    kept.push(self.urls[s].clone());
                }
                Err(e) => failed.push(format!("server {}: {e:#}", self.urls[s])),
            }
        }
        if states.is_empty() {
            bail!("no server serves the policy: {}", failed.join("; "));
        }
        for f in &failed {
            tracing::warn!("dropped for this stage: {f}");
        }
        self.urls = kept;
        Ok(states)
    }

    /// Load (unless `load_first` is false: the base policy, the servers' startup model, is
    /// checked first and loaded only when the check fails, e.g. after a later policy was
    /// loaded by an earlier stage) and verify one server.
    #[allow(clippy::too_many_arguments)]
    fn put_on(
        &self,
        s: usize,
        server_dir: &str,
        version: &str,
        load_first: bool,
        canary: &[Vec<TokenId>],
        expected: &[Vec<f32>],
        digest: &str,
        vocab: usize,
    ) -> Result<ServerState> {
        let engine_version = self.engine_version(s)?;
        if !load_first {
            match self.verify(s, None, canary, expected, digest, vocab, &engine_version) {
                Ok(state) => return Ok(state),
                Err(e) => tracing::warn!(server = %self.urls[s], "does not serve the base policy as started ({e:#}); loading it"),
            }
        }
        // What the server serves before the load, to tell whether the canary can tell the two
        // policies apart: the tolerance bounds |served − this policy| (checked in `verify`),
        // which also bounds |moved − should| by the triangle inequality, so when this policy
        // moves the canary by less than the tolerance, a load that did nothing would pass it.
        let before = self.canary_of(s, canary, vocab).context("canary before the load")?;
        match self.params.engine {
            ServerEngine::Sglang | ServerEngine::SelfRedteam => self.load_sglang(s, server_dir, version)?,
            ServerEngine::Vllm => self.load_vllm(s, server_dir, version)?,
        }
        let mut state = self.verify(s, Some(version), canary, expected, digest, vocab, &engine_version)?;
        let after = self.canary_of(s, canary, vocab).context("canary after the load")?;
        let moved = mean_abs_diff(&after, &before);
        let should = mean_abs_diff(expected, &before);
        let tolerance = self.params.canary_tolerance();
        if should <= tolerance {
            tracing::warn!(
                server = %self.urls[s],
                "canary: this policy moves the canary by only {should:.2e} per token from what the server served before (tolerance {tolerance:.1e}), so the canary cannot tell them apart; the weight version check stands alone"
            );
        }
        state.canary_moved = Some((moved, should));
        Ok(state)
    }

    /// The canary prompts' log-probs as server `s` computes them.
    fn canary_of(&self, s: usize, canary: &[Vec<TokenId>], vocab: usize) -> Result<Vec<Vec<f32>>> {
        canary.iter().map(|ids| self.prompt_logprobs(s, ids, vocab)).collect()
    }

    /// The checks after a load (`version`: the weight version it set) or of the startup model.
    #[allow(clippy::too_many_arguments)]
    fn verify(
        &self,
        s: usize,
        version: Option<&str>,
        canary: &[Vec<TokenId>],
        expected: &[Vec<f32>],
        digest: &str,
        vocab: usize,
        engine_version: &str,
    ) -> Result<ServerState> {
        let engine = self.params.engine;
        let weight_version = self.weight_version(s)?;
        if let Some(v) = version {
            if weight_version != v {
                bail!("reports weight version {weight_version:?} after loading {v:?}: the load did not take");
            }
        }
        let mut max_model_len = None;
        if matches!(engine, ServerEngine::SelfRedteam | ServerEngine::Vllm) {
            let models: Value = self.json(s, "/v1/models", None)?;
            max_model_len = models.pointer("/data/0/max_model_len").and_then(Value::as_u64).map(|n| n as usize);
            let root = models.pointer("/data/0/root").and_then(Value::as_str).unwrap_or("");
            if engine == ServerEngine::SelfRedteam && root != digest {
                bail!("serves weights with digest {root:?}, expected {digest:?} (this policy's weights)");
            }
        }
        let got = self.canary_of(s, canary, vocab)?;
        for ((g, w), ids) in got.iter().zip(expected).zip(canary) {
            if g.len() != w.len() {
                bail!("canary: {} prompt log-probs for {} tokens (expected {})", g.len(), ids.len(), w.len());
            }
        }
        let n: usize = expected.iter().map(Vec::len).sum();
        let mean = mean_abs_diff(&got, expected);
        let max = got.iter().flatten().zip(expected.iter().flatten()).map(|(g, w)| (f64::from(*g) - f64::from(*w)).abs()).fold(0f64, f64::max);
        let tolerance = self.params.canary_tolerance();
        if mean.is_nan() || mean > tolerance {
            bail!(
                "canary: mean |Δ log-prob| {mean:.6} per token (max {max:.6}, {n} tokens) over the tolerance {tolerance} (generation.canary_tolerance, or by generation.server_dtype {}): the server does not serve these weights (weight version {weight_version:?})",
                serde_json::to_value(self.params.server_dtype).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
            );
        }
        Ok(ServerState {
            url: self.urls[s].clone(),
            engine,
            engine_version: engine_version.to_string(),
            weight_version,
            canary_mean_abs: mean,
            canary_max_abs: max,
            canary_tokens: n,
            canary_moved: None,
            max_model_len,
        })
    }

    fn engine_version(&self, s: usize) -> Result<String> {
        let route = match self.params.engine {
            ServerEngine::Sglang => "/server_info",
            ServerEngine::Vllm | ServerEngine::SelfRedteam => "/version",
        };
        let v: Value = self.json(s, route, None)?;
        Ok(v.get("version").and_then(Value::as_str).unwrap_or("unknown").to_string())
    }

    fn weight_version(&self, s: usize) -> Result<String> {
        let route = match self.params.engine {
            ServerEngine::Sglang | ServerEngine::SelfRedteam => "/model_info",
            ServerEngine::Vllm => "/weight_info",
        };
        let v: WeightVersion = self.json(s, route, None)?;
        Ok(v.weight_version.unwrap_or_else(|| "unknown".into()))
    }

    /// SGLang's RL flow: pause (aborting stragglers), load from disk with the new version,
    /// continue — continue also when the load failed, so the server is not left paused.
    fn load_sglang(&self, s: usize, path: &str, version: &str) -> Result<()> {
        self.post_ok(s, "/pause_generation", &json!({"mode": "abort"}))?;
        let req =
            SglangUpdateWeightsRequest { model_path: path.to_string(), weight_version: Some(version.to_string()), flush_cache: true, abort_all_requests: true };
        let loaded = self.call_retrying(s, "/update_weights_from_disk", Some(&serde_json::to_value(&req)?));
        let resumed = self.post_ok(s, "/continue_generation", &json!({}));
        let bytes = match loaded {
            Ok(b) => b,
            Err(f) => {
                // A 400 carries `{"success": false, "message": …}`; keep the message whole.
                bail!("load {path}: {}", f.message())
            }
        };
        let reply: SglangUpdateWeightsResponse = parse_reply(&bytes).context("update_weights_from_disk reply")?;
        if !reply.success {
            bail!("load {path}: {}", reply.message);
        }
        resumed
    }

    /// vLLM's in-place reload (dev mode, `VLLM_SERVER_DEV_MODE=1`): pause (waiting for
    /// requests in flight), `collective_rpc reload_weights` from the absolute view path, set
    /// the weight version, reset the prefix cache (its entries were computed by the old
    /// weights), resume. Each call is made once, never retried: a reload that failed may have
    /// left the model half-loaded (measured: the next completion then crashed the engine), so
    /// on any failure the server is left paused and the caller drops it for the stage.
    fn load_vllm(&self, s: usize, path: &str, version: &str) -> Result<()> {
        let once = |route: &str, body: &Value| self.call(s, route, Some(body)).map(|_| ()).map_err(|f| anyhow!("{}", f.message()));
        once("/pause?mode=wait", &json!({}))?;
        let reload = VllmCollectiveRpc { method: "reload_weights".into(), kwargs: serde_json::Map::from_iter([("weights_path".to_string(), json!(path))]) };
        once("/collective_rpc", &serde_json::to_value(&reload)?).with_context(|| format!("reload_weights from {path} (the server is left paused)"))?;
        once("/update_weight_version", &serde_json::to_value(VllmUpdateWeightVersion { new_version: version.to_string() })?)?;
        once("/reset_prefix_cache", &json!({}))?;
        once("/resume", &json!({}))
    }

    /// The server's log-probs of `ids[1..]` given their prefixes (greedy, one new token).
    fn prompt_logprobs(&self, s: usize, ids: &[TokenId], vocab: usize) -> Result<Vec<f32>> {
        let greedy =
            TokenSampling { temperature: 0.0, top_p: 1.0, top_k: None, max_new_tokens: 1, min_new_tokens: 0, stop_token_ids: Vec::new(), seed: Some(0) };
        match self.params.engine {
            ServerEngine::Sglang | ServerEngine::SelfRedteam => {
                let req = SglangGenerateRequest {
                    input_ids: OneOrMany::One(ids.to_vec()),
                    sampling_params: OneOrMany::One((&greedy).into()),
                    return_logprob: true,
                    logprob_start_len: 0,
                };
                let r: SglangGenerateResponse = self.json(s, "/generate", Some(&serde_json::to_value(&req)?))?;
                let lps = r.meta_info.input_token_logprobs.context("canary: reply has no meta_info.input_token_logprobs")?;
                if lps.len() != ids.len() {
                    bail!("canary: {} input log-probs for {} prompt tokens", lps.len(), ids.len());
                }
                lps.iter()
                    .enumerate()
                    .skip(1)
                    .map(|(k, (lp, id, _))| {
                        if *id != ids[k] {
                            bail!("canary: input log-prob {k} is for token {id}, the prompt has {}", ids[k]);
                        }
                        lp.map(|v| v as f32).with_context(|| format!("canary: input log-prob {k} is null"))
                    })
                    .collect()
            }
            ServerEngine::Vllm => {
                let mut req = VllmCompletionRequest::of(ids.to_vec(), &greedy);
                req.prompt_logprobs = Some(0);
                req.logprobs = None;
                let r: VllmCompletionResponse = self.json(s, "/v1/completions", Some(&serde_json::to_value(&req)?))?;
                let choice = r.choices.first().context("canary: reply has no choices")?;
                let lps = choice.prompt_logprobs.as_ref().context("canary: reply has no prompt_logprobs")?;
                if lps.len() != ids.len() {
                    bail!("canary: {} prompt log-probs for {} prompt tokens", lps.len(), ids.len());
                }
                let _ = vocab;
                (1..ids.len())
                    .map(|k| {
                        let entry = lps[k].as_ref().with_context(|| format!("canary: prompt log-prob {k} is null"))?;
                        entry
                            .get(&ids[k].to_string())
                            .map(|t| t.logprob as f32)
                            .with_context(|| format!("canary: prompt log-prob {k} lacks the prompt's token {}", ids[k]))
                    })
                    .collect()
            }
        }
    }

    /// The servers' path of the clean view of the artifact `dir` (made once, by hard links).
    fn server_view(&self, store_root: &Path, dir: &Path) -> Result<String> {
        let view = serving_view(store_root, dir)?;
        let path = match &self.params.server_store_path {
            // The server resolves a relative path against its own working directory: send an
            // absolute one.
            None => std::path::absolute(&view).with_context(|| format!("absolute path of {}", view.display()))?,
            Some(server_root) => {
                let rel = view.strip_prefix(store_root).with_context(|| format!("{} is not inside the store {}", view.display(), store_root.display()))?;
                Path::new(server_root).join(rel)
            }
        };
        path.to_str().map(str::to_string).with_context(|| format!("{} is not UTF-8", path.display()))
    }

    // ------------------------------------------------------------ generation

    /// Sample every prompt on the fleet. `plan` is the stage's own batching (rows in order);
    /// each batch is sent as requests of at most `prompts_per_request` rows (1 for vLLM).
    /// Results in input order, with the server that made each row.
    #[allow(clippy::too_many_arguments)]
    pub fn generate(
        &self,
        states: &[ServerState],
        local: &Policy,
        prompts: &[Vec<TokenId>],
        seeds: &[u64],
        params: &SamplingParams,
        plan: &[Vec<usize>],
        cancel: &AtomicBool,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<(Sample, Provenance)>> {
        if prompts.len() != seeds.len() {
            bail!("{} prompts but {} seeds", prompts.len(), seeds.len());
        }
        let stop: Vec<TokenId> = if params.stop_token_ids.is_empty() { local.tokenizer().stop_ids().to_vec() } else { params.stop_token_ids.clone() };
        let per_request = match self.params.engine {
            ServerEngine::Vllm => 1,
            _ => self.params.prompts_per_request as usize,
        };
        let jobs: Vec<Vec<usize>> = plan.iter().flat_map(|b| b.chunks(per_request.max(1)).map(<[usize]>::to_vec).collect::<Vec<_>>()).collect();
        let total: usize = jobs.iter().map(Vec::len).sum();
        if total != prompts.len() {
            bail!("batch plan covers {total} rows of {}", prompts.len());
        }
        // A row the servers would cut short: vLLM answers a prompt + max_tokens past its
        // --max-model-len with fewer tokens and `finish_reason: length`, indistinguishable
        // from a turn that ran to the cap. Refused here, naming the row and both numbers.
        if let Some((limit, url)) = states.iter().filter_map(|st| st.max_model_len.map(|m| (m, &st.url))).min() {
            if let Some((row, p)) = prompts.iter().enumerate().find(|(_, p)| p.len() + params.max_new_tokens > limit) {
                bail!(
                    "row {row}: a prompt of {} tokens + max_new_tokens {} exceeds max_model_len {limit} of {url}; start the servers with a longer context or lower the token caps",
                    p.len(),
                    params.max_new_tokens
                );
            }
        }
        let params = SamplingParams { stop_token_ids: stop, ..params.clone() };
        let sampling = |row: usize| params.with_seed(seeds[row]);
        let vocab = local.config().vocab_size;
        let workers = vec![self.params.concurrency as usize; self.urls.len()];
        let run = |s: usize, job: usize| {
            let rows: Vec<(Vec<TokenId>, TokenSampling)> = jobs[job].iter().map(|&r| (prompts[r].clone(), sampling(r))).collect();
            self.sample_on(s, &rows, vocab, &states[s].weight_version).inspect_err(|f| {
                if let Failure::Transient(m) = f {
                    tracing::warn!(server = %self.urls[s], "dropping the server for this stage: {m}");
                }
            })
        };
        let mut out: Vec<Option<(Sample, Provenance)>> = vec![None; prompts.len()];
        let mut done = 0usize;
        let deliver = |job: usize, s: usize, completions: Vec<TokenCompletion>| -> Result<(), String> {
            let state = &states[s];
            for (&row, c) in jobs[job].iter().zip(completions) {
                let text = local.tokenizer().decode(&c.token_ids, true).map_err(|e| format!("decode row {row} from {}: {e}", state.url))?;
                let provenance = Provenance {
                    server: state.url.clone(),
                    engine: state.engine.name().to_string(),
                    engine_version: state.engine_version.clone(),
                    weight_version: c.weight_version.unwrap_or_else(|| state.weight_version.clone()),
                };
                out[row] = Some((Sample { token_ids: c.token_ids, logprobs: c.logprobs, finished_by_stop: c.finished_by_stop, text }, provenance));
                done += 1;
            }
            progress(done);
            Ok(())
        };
        let down = match spread(jobs.len(), &workers, Some(cancel), run, deliver) {
            Ok(down) => down,
            Err(SpreadError::Permanent(m) | SpreadError::Delivery(m)) => bail!("generation on servers failed: {m}"),
            Err(SpreadError::AllDown(m)) => bail!("generation on servers failed: every server failed; the last: {m}"),
            Err(SpreadError::Cancelled) => bail!("interrupted"),
        };
        let missing = out.iter().filter(|o| o.is_none()).count();
        if missing > 0 {
            let down: Vec<&str> = down.iter().map(|&s| self.urls[s].as_str()).collect();
            bail!("generation on servers: {missing} of {} rows were not generated (servers down: {})", out.len(), down.join(", "));
        }
        Ok(out.into_iter().map(|o| o.expect("checked above")).collect())
    }

    /// One request (with retries) for `rows` on server `s`, its replies checked.
    fn sample_on(&self, s: usize, rows: &[(Vec<TokenId>, TokenSampling)], vocab: usize, version: &str) -> Result<Vec<TokenCompletion>, Failure> {
        let bad = |m: String| Failure::Permanent(format!("{}: {m}", self.urls[s]));
        match self.params.engine {
            ServerEngine::Sglang | ServerEngine::SelfRedteam => {
                let req = SglangGenerateRequest {
                    input_ids: OneOrMany::Many(rows.iter().map(|(p, _)| p.clone()).collect()),
                    sampling_params: OneOrMany::Many(rows.iter().map(|(_, t)| t.into()).collect()),
                    return_logprob: true,
                    logprob_start_len: -1,
                };
                let body = serde_json::to_value(&req).map_err(|e| bad(e.to_string()))?;
                let bytes = self.call_retrying(s, "/generate", Some(&body))?;
                let replies: Vec<SglangGenerateResponse> = parse_reply(&bytes).map_err(|e| bad(format!("/generate reply: {e:#}")))?;
                if replies.len() != rows.len() {
                    return Err(bad(format!("/generate answered {} prompts of {}", replies.len(), rows.len())));
                }
                rows.iter()
                    .zip(replies)
                    .enumerate()
                    .map(|(i, ((_, t), r))| {
                        if let Some(v) = &r.meta_info.weight_version {
                            if v != version {
                                return Err(bad(format!("row {i} was generated by weight version {v:?}, expected {version:?}")));
                            }
                        }
                        let lps = r.meta_info.output_token_logprobs.as_ref().ok_or_else(|| bad(format!("row {i}: no output_token_logprobs")))?;
                        let mut logprobs = Vec::with_capacity(lps.len());
                        for (k, (lp, id, _)) in lps.iter().enumerate() {
                            if r.output_ids.get(k) != Some(id) {
                                return Err(bad(format!("row {i}: output log-prob {k} is for token {id}, not the output's")));
                            }
                            logprobs.push(lp.ok_or_else(|| bad(format!("row {i}: output log-prob {k} is null")))? as f32);
                        }
                        let finished_by_stop = r.meta_info.finish_reason.as_ref().is_some_and(|f| f.kind == "stop");
                        check_completion(&r.output_ids, &logprobs, t, vocab).map_err(|m| bad(format!("row {i}: {m}")))?;
                        Ok(TokenCompletion { token_ids: r.output_ids, logprobs, finished_by_stop, weight_version: r.meta_info.weight_version })
                    })
                    .collect()
            }
            ServerEngine::Vllm => {
                let mut out = Vec::with_capacity(rows.len());
                for (i, (prompt, t)) in rows.iter().enumerate() {
                    let body = serde_json::to_value(VllmCompletionRequest::of(prompt.clone(), t)).map_err(|e| bad(e.to_string()))?;
                    let bytes = self.call_retrying(s, "/v1/completions", Some(&body))?;
                    let r: VllmCompletionResponse = parse_reply(&bytes).map_err(|e| bad(format!("/v1/completions reply: {e:#}")))?;
                    let c = r.choices.into_iter().next().ok_or_else(|| bad(format!("row {i}: no choices")))?;
                    let ids = c.token_ids.ok_or_else(|| bad(format!("row {i}: no token_ids (return_token_ids)")))?;
                    let lp = c.logprobs.ok_or_else(|| bad(format!("row {i}: no logprobs")))?;
                    if lp.tokens.len() != ids.len() || lp.tokens.iter().zip(&ids).any(|(tok, id)| vllm_token_id(tok) != Some(*id)) {
                        return Err(bad(format!("row {i}: logprobs.tokens do not name the output's token ids")));
                    }
                    let logprobs = lp
                        .token_logprobs
                        .iter()
                        .enumerate()
                        .map(|(k, v)| v.map(|x| x as f32).ok_or_else(|| bad(format!("row {i}: log-prob {k} is null"))))
                        .collect::<Result<Vec<f32>, _>>()?;
                    check_completion(&ids, &logprobs, t, vocab).map_err(|m| bad(format!("row {i}: {m}")))?;
                    out.push(TokenCompletion { token_ids: ids, logprobs, finished_by_stop: c.finish_reason.as_deref() == Some("stop"), weight_version: None });
                }
                Ok(out)
            }
        }
    }
}

/// Mean |a − b| over the tokens of equally shaped log-prob lists (NaN when a value is).
fn mean_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    let (mut sum, mut n) = (0f64, 0usize);
    for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
        sum += (f64::from(*x) - f64::from(*y)).abs();
        n += 1;
    }
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}

/// A reply body as `T`, or an error quoting its start.
fn parse_reply<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| anyhow!("not the expected JSON ({e}): {}", excerpt(bytes)))
}

/// A completion is usable: ids in the vocabulary, one log-prob each, finite and ≤ 0, at most
/// the tokens asked for, at least one token.
fn check_completion(ids: &[TokenId], logprobs: &[f32], t: &TokenSampling, vocab: usize) -> Result<(), String> {
    if ids.is_empty() {
        return Err("an empty completion".into());
    }
    if ids.len() > t.max_new_tokens {
        return Err(format!("{} tokens, more than the {} asked for", ids.len(), t.max_new_tokens));
    }
    if let Some(id) = ids.iter().find(|&&id| id as usize >= vocab) {
        return Err(format!("token id {id} is outside the vocabulary of {vocab}"));
    }
    if logprobs.len() != ids.len() {
        return Err(format!("{} log-probs for {} tokens", logprobs.len(), ids.len()));
    }
    if let Some(lp) = logprobs.iter().find(|lp| !lp.is_finite() || **lp > 1e-3) {
        return Err(format!("log-prob {lp} is not a log-probability"));
    }
    Ok(())
}

/// The canary prompts as this policy's chat template renders them.
fn canary_prompts(policy: &Policy) -> Result<Vec<Vec<TokenId>>> {
    CANARY
        .iter()
        .map(|q| {
            let msgs = [crate::model::ChatMessage::new("user", q.to_string())];
            Ok(policy.tokenizer().encode_chat(&msgs, true, None)?)
        })
        .collect()
}

/// `<store>/.serving/<artifact dir name>/`: hard links to the files a server loads from the
/// artifact `dir` (copies where the filesystem cannot link), made atomically once.
///
/// A model whose output head is tied to its input embeddings (`tie_word_embeddings: true`
/// in config.json, no `lm_head.weight` tensor; SmolLM2 is one) is served **untied**: the view's
/// `model.safetensors` holds every tensor plus `lm_head.weight` (the embedding's bytes) and its
/// config says `tie_word_embeddings: false`. Why: vLLM's in-place reload (`reload_weights`)
/// updates the embeddings of a tied model but keeps serving the output head it started with,
/// and that stale head passed a loose canary (measured: mean |Δ log-prob| 4.6e-2); with untied
/// weights in the start-up model and every reload, reloads were exact (~6e-6). The numbers
/// served are the same either way.
pub fn serving_view(store_root: &Path, dir: &Path) -> Result<PathBuf> {
    let name = dir.file_name().context("artifact directory has no name")?;
    let parent = store_root.join(".serving");
    let view = parent.join(name);
    if view.is_dir() {
        if !tied_embeddings(&view.join("config.json"))? {
            return Ok(view);
        }
        // Made by an older version, which linked tied weights: remade untied.
        std::fs::remove_dir_all(&view).with_context(|| format!("remove the tied view {}", view.display()))?;
    }
    std::fs::create_dir_all(&parent).with_context(|| format!("create {}", parent.display()))?;
    let tmp = tempfile::Builder::new().prefix(".tmp-").tempdir_in(&parent).with_context(|| format!("temp dir in {}", parent.display()))?;
    let untie = tied_embeddings(&dir.join("config.json"))?;
    for f in SERVED_FILES {
        let src = dir.join(f);
        if !src.is_file() || (untie && (f == "config.json" || f == "model.safetensors")) {
            continue;
        }
        let dst = tmp.path().join(f);
        if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst).with_context(|| format!("copy {} to {}", src.display(), dst.display()))?;
        }
    }
    if untie {
        write_untied(dir, tmp.path()).with_context(|| format!("untied serving view of {}", dir.display()))?;
    }
    let tmp = tmp.keep();
    if let Err(e) = std::fs::rename(&tmp, &view) {
        let _ = std::fs::remove_dir_all(&tmp);
        if !view.is_dir() {
            return Err(e).with_context(|| format!("publish {}", view.display()));
        }
    }
    Ok(view)
}

/// Whether the config at `path` ties the output head to the embeddings. A missing or
/// unreadable config (not a model directory this project wrote) counts as untied: the server
/// then reports what is wrong with it.
fn tied_embeddings(path: &Path) -> Result<bool> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(false) };
    let Ok(config) = serde_json::from_str::<Value>(&text) else { return Ok(false) };
    Ok(config.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(false))
}

/// Writes `view/config.json` (untied) and `view/model.safetensors` (+ `lm_head.weight`) from
/// the tied model in `dir`.
fn write_untied(dir: &Path, view: &Path) -> Result<()> {
    const EMBED: &str = "model.embed_tokens.weight";
    const HEAD: &str = "lm_head.weight";
    if dir.join("model.safetensors.index.json").is_file() {
        bail!("tied embeddings with sharded weights (model.safetensors.index.json) cannot be served untied; write one model.safetensors");
    }
    let weights = dir.join("model.safetensors");
    let file = std::fs::File::open(&weights).with_context(|| format!("open {}", weights.display()))?;
    // SAFETY: a read-only map of a published artifact file, which the store never rewrites
    // in place (publishing renames whole directories).
    #[allow(unsafe_code)]
    let map = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("map {}", weights.display()))?;
    let tensors = safetensors::SafeTensors::deserialize(&map).with_context(|| format!("read {}", weights.display()))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&map).with_context(|| format!("read {}", weights.display()))?;
    let mut views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors.tensors();
    if !views.iter().any(|(n, _)| n == HEAD) {
        let embed = tensors.tensor(EMBED).with_context(|| format!("{}: tied embeddings but no {EMBED} tensor", weights.display()))?;
        views.push((HEAD.to_string(), embed));
    }
    safetensors::serialize_to_file(views, meta.metadata().clone(), &view.join("model.safetensors"))
        .with_context(|| format!("write {}", view.join("model.safetensors").display()))?;
    let config_path = dir.join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&config_path)?).with_context(|| format!("parse {}", config_path.display()))?;
    config["tie_word_embeddings"] = Value::Bool(false);
    std::fs::write(view.join("config.json"), serde_json::to_vec_pretty(&config)?).context("write config.json")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_are_checked_before_use() {
        let t = TokenSampling { temperature: 1.0, top_p: 1.0, top_k: None, max_new_tokens: 3, min_new_tokens: 1, stop_token_ids: vec![], seed: Some(1) };
        assert!(check_completion(&[1, 2], &[-0.5, -1.0], &t, 10).is_ok());
        assert!(check_completion(&[], &[], &t, 10).expect_err("refused").contains("empty"));
        assert!(check_completion(&[1, 2, 3, 4], &[-0.1; 4], &t, 10).expect_err("refused").contains("more than"));
        assert!(check_completion(&[10], &[-0.1], &t, 10).expect_err("refused").contains("vocabulary"));
        assert!(check_completion(&[1, 2], &[-0.1], &t, 10).expect_err("refused").contains("log-probs for"));
        assert!(check_completion(&[1], &[f32::NAN], &t, 10).expect_err("refused").contains("not a log-probability"));
        assert!(check_completion(&[1], &[0.5], &t, 10).expect_err("refused").contains("not a log-probability"));
    }

    #[test]
    fn the_serving_view_holds_only_what_a_server_loads() {
        let store = tempfile::tempdir().expect("test value");
        let art = store.path().join("update").join("abc");
        std::fs::create_dir_all(&art).expect("test value");
        for f in ["config.json", "model.safetensors", "optimizer.safetensors", "tokenizer.json", "manifest.json", "steps.parquet"] {
            std::fs::write(art.join(f), f).expect("test value");
        }
        let view = serving_view(store.path(), &art).expect("test value");
        assert_eq!(view, store.path().join(".serving").join("abc"));
        let mut names: Vec<String> =
            std::fs::read_dir(&view).expect("test value").map(|e| e.expect("test value").file_name().into_string().expect("test value")).collect();
        names.sort();
        assert_eq!(names, ["config.json", "model.safetensors", "tokenizer.json"]);
        assert_eq!(std::fs::read(view.join("model.safetensors")).expect("test value"), b"model.safetensors");
        // A second call reuses it.
        assert_eq!(serving_view(store.path(), &art).expect("test value"), view);
    }

    #[test]
    fn a_tied_model_is_served_untied_with_the_same_numbers() {
        let store = tempfile::tempdir().expect("test value");
        let art = store.path().join("base").join("k1");
        std::fs::create_dir_all(&art).expect("test value");
        let embed: Vec<u8> = [0.5f32, -1.0, 2.0, 0.25].iter().flat_map(|x| x.to_le_bytes()).collect();
        let norm: Vec<u8> = [1.0f32, 1.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let views = vec![
            ("model.embed_tokens.weight", safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 2], &embed).expect("test value")),
            ("model.norm.weight", safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], &norm).expect("test value")),
        ];
        let meta = Some(std::collections::HashMap::from([("format".to_string(), "pt".to_string())]));
        std::fs::write(art.join("model.safetensors"), safetensors::serialize(views, meta).expect("test value")).expect("test value");
        std::fs::write(art.join("config.json"), r#"{"model_type": "llama", "tie_word_embeddings": true, "vocab_size": 2}"#).expect("test value");
        std::fs::write(art.join("tokenizer.json"), "{}").expect("test value");
        let view = serving_view(store.path(), &art).expect("test value");
        let config: Value = serde_json::from_slice(&std::fs::read(view.join("config.json")).expect("test value")).expect("test value");
        assert_eq!(config["tie_word_embeddings"], Value::Bool(false));
        assert_eq!(config["model_type"], "llama", "the rest of the config is kept");
        let bytes = std::fs::read(view.join("model.safetensors")).expect("test value");
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("test value");
        assert_eq!(st.tensor("lm_head.weight").expect("head written").data(), &embed[..]);
        assert_eq!(st.tensor("model.embed_tokens.weight").expect("test value").data(), &embed[..]);
        assert_eq!(st.tensor("model.norm.weight").expect("test value").data(), &norm[..]);
        assert!(safetensors::SafeTensors::read_metadata(&bytes).expect("test value").1.metadata().as_ref().is_some_and(|m| m["format"] == "pt"));
        // The artifact itself is untouched.
        assert!(std::fs::read_to_string(art.join("config.json")).expect("test value").contains("\"tie_word_embeddings\": true"));
    }
}
