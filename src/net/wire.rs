//! The JSON bodies this project sends to inference servers (src/remote/fleet.rs) and that its
//! own `serve` answers (src/serve/): SGLang's native `/generate` and weight-update
//! routes, vLLM's OpenAI `/v1/completions` with its token-id extensions and its weight-transfer
//! routes. Field names and shapes follow the engines' sources and docs for the versions named
//! in docs/remote.md (SGLang 0.5.23, vLLM 0.33.0); fields this project does not use are left
//! out, and unknown fields in replies are ignored, so a newer engine that adds fields still
//! parses. Pure data: no I/O, no model.
use serde::{Deserialize, Serialize};

/// Engine-neutral sampling settings of one prompt (what `model::SamplingParams` plus the
/// per-row seed say), converted to each engine's field names below.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenSampling {
    /// 0 = greedy.
    pub temperature: f64,
    pub top_p: f64,
    /// `None` = no top-k.
    pub top_k: Option<usize>,
    pub max_new_tokens: usize,
    /// Stop tokens are masked until this many tokens were generated (vLLM `min_tokens`,
    /// SGLang `min_new_tokens`).
    pub min_new_tokens: usize,
    /// Generation ends on any of these; the stop token is part of the output ids.
    pub stop_token_ids: Vec<u32>,
    /// The row's sampling seed (vLLM `seed`, SGLang `sampling_seed`): a signed 64-bit value,
    /// the only range both engines accept ([`wire_seed`]).
    pub seed: Option<i64>,
}

/// A row's 64-bit seed as the engines take it. vLLM's `CompletionRequest.seed` and SGLang's
/// `sampling_seed` accept −2⁶³ … 2⁶³−1 only (HTTP 400 otherwise), while this project's seeds
/// are full-range u64 draws: the same 64 bits are sent as their two's-complement i64, and
/// [`seed_of_wire`] turns them back, so every backend samples a row from the same seed as
/// local generation and no stored byte changes.
pub fn wire_seed(seed: u64) -> i64 {
    seed as i64
}

/// The u64 seed of a wire seed: the inverse of [`wire_seed`] (any i64, negative ones too, as
/// vLLM accepts them).
pub fn seed_of_wire(seed: i64) -> u64 {
    seed as u64
}

/// Deserializes an optional seed field strictly, as the engines validate it: an integer within
/// the signed 64-bit range, else an error naming the field and the range (SGLang's message).
fn strict_seed<'de, D: serde::Deserializer<'de>>(d: D, field: &str) -> Result<Option<i64>, D::Error> {
    use serde::de::Error;
    match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Number(n)) => {
            n.as_i64().map(Some).ok_or_else(|| D::Error::custom(format!("{field} must be an integer in [-2**63, 2**63 - 1], got {n}")))
        }
        Some(other) => Err(D::Error::custom(format!("{field} must be an integer in [-2**63, 2**63 - 1], got {other}"))),
    }
}

fn strict_sampling_seed<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    strict_seed(d, "sampling_seed")
}

fn strict_vllm_seed<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    strict_seed(d, "seed")
}

/// One completion as this project uses it, whatever the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenCompletion {
    /// Generated ids, including the stop token when `finished_by_stop`.
    pub token_ids: Vec<u32>,
    /// Log-probability of each generated token as the server reports it.
    pub logprobs: Vec<f32>,
    pub finished_by_stop: bool,
    /// The weight version the server reported for this completion, when it does.
    pub weight_version: Option<String>,
}

/// One value or a list of them (SGLang takes a single prompt or a batch in the same field).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T: Clone> OneOrMany<T> {
    pub fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(x) => vec![x],
            OneOrMany::Many(v) => v,
        }
    }
}

// ---------------------------------------------------------------- SGLang

/// `sampling_params` of SGLang's `POST /generate` (python/sglang/srt/sampling/sampling_params.py).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SglangSamplingParams {
    pub max_new_tokens: usize,
    #[serde(default)]
    pub min_new_tokens: usize,
    pub temperature: f64,
    #[serde(default = "one")]
    pub top_p: f64,
    /// -1 = no top-k.
    #[serde(default = "minus_one")]
    pub top_k: i64,
    #[serde(default)]
    pub stop_token_ids: Vec<u32>,
    /// Honoured only by a server started with `--enable-deterministic-inference`.
    #[serde(default, deserialize_with = "strict_sampling_seed")]
    pub sampling_seed: Option<i64>,
    /// Keep the stop token in the output (this project's samples include it).
    #[serde(default)]
    pub no_stop_trim: bool,
    #[serde(default = "yes")]
    pub skip_special_tokens: bool,
}

/// `top_k` as both engines write it: -1 = no top-k.
fn wire_top_k(k: Option<usize>) -> i64 {
    k.map_or(-1, |k| i64::try_from(k).unwrap_or(i64::MAX))
}

/// The engines' `top_k` back: -1 and 0 = no top-k.
fn top_k_of_wire(k: i64) -> Option<usize> {
    usize::try_from(k).ok().filter(|&k| k > 0)
}

fn one() -> f64 {
    1.0
}
fn minus_one() -> i64 {
    -1
}
fn yes() -> bool {
    true
}

impl From<&TokenSampling> for SglangSamplingParams {
    fn from(s: &TokenSampling) -> Self {
        SglangSamplingParams {
            max_new_tokens: s.max_new_tokens,
            min_new_tokens: s.min_new_tokens,
            temperature: s.temperature,
            top_p: s.top_p,
            top_k: wire_top_k(s.top_k),
            stop_token_ids: s.stop_token_ids.clone(),
            sampling_seed: s.seed,
            no_stop_trim: true,
            skip_special_tokens: true,
        }
    }
}

impl SglangSamplingParams {
    /// Back to the engine-neutral form (what `serve` samples with).
    pub fn to_token_sampling(&self) -> TokenSampling {
        TokenSampling {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: top_k_of_wire(self.top_k),
            max_new_tokens: self.max_new_tokens,
            min_new_tokens: self.min_new_tokens,
            stop_token_ids: self.stop_token_ids.clone(),
            seed: self.sampling_seed,
        }
    }
}

/// Body of SGLang's `POST /generate` with token ids (`text` is never sent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SglangGenerateRequest {
    pub input_ids: OneOrMany<Vec<u32>>,
    /// One dict for all prompts, or one per prompt (how per-row seeds are sent).
    pub sampling_params: OneOrMany<SglangSamplingParams>,
    #[serde(default)]
    pub return_logprob: bool,
    /// -1 (default): log-probs of output tokens only; 0: also of every prompt token.
    #[serde(default = "minus_one")]
    pub logprob_start_len: i64,
}

/// `meta_info.finish_reason`: `{"type": "stop", "matched": ID}` or `{"type": "length", …}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SglangFinishReason {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched: Option<serde_json::Value>,
}

/// `[logprob, token_id, text]`; the first prompt position has a null log-prob.
pub type SglangLogprob = (Option<f64>, u32, Option<String>);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SglangMetaInfo {
    #[serde(default)]
    pub id: String,
    pub finish_reason: Option<SglangFinishReason>,
    #[serde(default)]
    pub prompt_tokens: usize,
    #[serde(default)]
    pub completion_tokens: usize,
    #[serde(default)]
    pub weight_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_token_logprobs: Option<Vec<SglangLogprob>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_token_logprobs: Option<Vec<SglangLogprob>>,
}

/// One prompt's reply (a batch request gets a JSON list of these).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SglangGenerateResponse {
    #[serde(default)]
    pub text: String,
    pub output_ids: Vec<u32>,
    pub meta_info: SglangMetaInfo,
}

/// Body of SGLang's `POST /update_weights_from_disk` (io_struct.py `UpdateWeightFromDiskReqInput`;
/// only the fields this project sends).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SglangUpdateWeightsRequest {
    pub model_path: String,
    #[serde(default)]
    pub weight_version: Option<String>,
    #[serde(default = "yes")]
    pub flush_cache: bool,
    #[serde(default)]
    pub abort_all_requests: bool,
}

/// Reply of `/update_weights_from_disk`: HTTP 200 on success, 400 with `success: false`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SglangUpdateWeightsResponse {
    pub success: bool,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub num_paused_requests: usize,
}

/// The weight version in SGLang's `GET /model_info` and vLLM's `GET /weight_info` (other
/// fields of those replies are ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightVersion {
    pub weight_version: Option<String>,
}

// ---------------------------------------------------------------- vLLM

/// vLLM's `POST /v1/completions` with a token-id prompt (vllm/entrypoints/openai/completion/
/// protocol.py). One prompt per request: `seed` is per request, so per-row seeds need one
/// request per row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VllmCompletionRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    #[serde(default)]
    pub min_tokens: usize,
    pub temperature: f64,
    #[serde(default = "one")]
    pub top_p: f64,
    /// -1 = no top-k.
    #[serde(default = "minus_one")]
    pub top_k: i64,
    #[serde(default, deserialize_with = "strict_vllm_seed")]
    pub seed: Option<i64>,
    #[serde(default)]
    pub stop_token_ids: Vec<u32>,
    /// `Some(0)`: the sampled token's log-prob only.
    #[serde(default)]
    pub logprobs: Option<u32>,
    /// `Some(0)`: each prompt token's own log-prob (the canary).
    #[serde(default)]
    pub prompt_logprobs: Option<u32>,
    /// Adds `token_ids` (and `prompt_token_ids`) to each choice.
    #[serde(default)]
    pub return_token_ids: bool,
    /// `logprobs.tokens` as `"token_id:N"` strings instead of text pieces.
    #[serde(default)]
    pub return_tokens_as_token_ids: bool,
    #[serde(default = "yes")]
    pub skip_special_tokens: bool,
}

impl VllmCompletionRequest {
    pub fn of(prompt: Vec<u32>, s: &TokenSampling) -> Self {
        VllmCompletionRequest {
            model: None,
            prompt,
            max_tokens: s.max_new_tokens,
            min_tokens: s.min_new_tokens,
            temperature: s.temperature,
            top_p: s.top_p,
            top_k: wire_top_k(s.top_k),
            seed: s.seed,
            stop_token_ids: s.stop_token_ids.clone(),
            logprobs: Some(0),
            prompt_logprobs: None,
            return_token_ids: true,
            return_tokens_as_token_ids: true,
            skip_special_tokens: true,
        }
    }
    /// Back to the engine-neutral form (what `serve` samples with).
    pub fn to_token_sampling(&self) -> TokenSampling {
        TokenSampling {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: top_k_of_wire(self.top_k),
            max_new_tokens: self.max_tokens,
            min_new_tokens: self.min_tokens,
            stop_token_ids: self.stop_token_ids.clone(),
            seed: self.seed,
        }
    }
}

/// `choices[i].logprobs` of a completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VllmLogprobs {
    /// `"token_id:N"` with `return_tokens_as_token_ids`.
    #[serde(default)]
    pub tokens: Vec<String>,
    #[serde(default)]
    pub token_logprobs: Vec<Option<f64>>,
}

/// One entry of `prompt_logprobs`: `{"<token id>": {"logprob": …, "rank": …, "decoded_token": …}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VllmTokenLogprob {
    pub logprob: f64,
    #[serde(default)]
    pub rank: Option<i64>,
    #[serde(default)]
    pub decoded_token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VllmChoice {
    #[serde(default)]
    pub index: usize,
    #[serde(default)]
    pub text: String,
    /// `"stop"` or `"length"`.
    pub finish_reason: Option<String>,
    #[serde(default)]
    pub token_ids: Option<Vec<u32>>,
    #[serde(default)]
    pub logprobs: Option<VllmLogprobs>,
    /// First entry null (no log-prob for the first prompt token).
    #[serde(default)]
    pub prompt_logprobs: Option<Vec<Option<std::collections::BTreeMap<String, VllmTokenLogprob>>>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VllmCompletionResponse {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub model: String,
    pub choices: Vec<VllmChoice>,
}

/// vLLM's `POST /collective_rpc` (dev mode, `VLLM_SERVER_DEV_MODE=1`): calls `method` on every
/// worker. This project sends `{"method": "reload_weights", "kwargs": {"weights_path": DIR}}`,
/// the in-place reload from a checkpoint directory (vLLM has no disk weight-transfer
/// backend; its weight-transfer routes answer 500 "Weight transfer not configured" without a
/// transfer engine). `DIR` must be absolute: it is read by the server's own workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VllmCollectiveRpc {
    pub method: String,
    #[serde(default)]
    pub kwargs: serde_json::Map<String, serde_json::Value>,
}

/// vLLM's `POST /update_weight_version {"new_version": V}` (dev mode): the version
/// `GET /weight_info` reports from then on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VllmUpdateWeightVersion {
    pub new_version: String,
}

/// `GET /version` (vLLM) → `{"version": …}`; SGLang's `GET /server_info` carries the same key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineVersion {
    pub version: String,
}

/// Parse `"token_id:N"` (vLLM `return_tokens_as_token_ids`).
pub fn vllm_token_id(s: &str) -> Option<u32> {
    s.strip_prefix("token_id:")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sglang_batch_request_round_trips_with_per_prompt_seeds() {
        let s = TokenSampling {
            temperature: 1.0,
            top_p: 0.9,
            top_k: None,
            max_new_tokens: 8,
            min_new_tokens: 1,
            stop_token_ids: vec![2],
            seed: Some(wire_seed(u64::MAX)),
        };
        let req = SglangGenerateRequest {
            input_ids: OneOrMany::Many(vec![vec![1, 2], vec![3]]),
            sampling_params: OneOrMany::Many(vec![(&s).into(), (&s).into()]),
            return_logprob: true,
            logprob_start_len: -1,
        };
        let text = serde_json::to_string(&req).expect("test value");
        assert!(text.contains("\"sampling_seed\":-1"), "u64::MAX goes out as its i64 bits: {text}");
        assert!(text.contains("\"top_k\":-1"), "{text}");
        let back: SglangGenerateRequest = serde_json::from_str(&text).expect("test value");
        assert_eq!(back, req);
        assert_eq!(back.sampling_params.into_vec()[0].to_token_sampling(), s);
    }

    /// Every u64 seed goes out within the engines' signed range and comes back unchanged;
    /// a seed outside that range is refused with the field's name, as SGLang and vLLM do.
    #[test]
    fn seeds_travel_as_signed_64_bit_values_and_out_of_range_ones_are_refused() {
        for seed in [0u64, 1, (1 << 63) - 1, 1 << 63, u64::MAX, 0x9E37_79B9_7F4A_7C15] {
            assert_eq!(seed_of_wire(wire_seed(seed)), seed);
        }
        let sglang = |seed: &str| {
            serde_json::from_str::<SglangSamplingParams>(&format!(r#"{{"max_new_tokens": 4, "temperature": 1.0, "sampling_seed": {seed}}}"#))
                .map(|p| p.sampling_seed)
                .map_err(|e| e.to_string())
        };
        assert_eq!(sglang("-5"), Ok(Some(-5)));
        assert_eq!(sglang("9223372036854775807"), Ok(Some(i64::MAX)));
        assert_eq!(sglang("null"), Ok(None));
        for bad in ["9223372036854775808", "18446744073709551615", "1e30", "1.5", "\"7\""] {
            let e = sglang(bad).expect_err(bad);
            assert!(e.contains("sampling_seed must be an integer in [-2**63, 2**63 - 1]"), "{bad}: {e}");
        }
        let vllm = serde_json::from_str::<VllmCompletionRequest>(r#"{"prompt": [1], "max_tokens": 1, "temperature": 0, "seed": 9223372036854775808}"#)
            .expect_err("2^63 is out of range");
        assert!(vllm.to_string().contains("seed must be an integer"), "{vllm}");
    }

    #[test]
    fn sglang_reply_with_a_null_first_prompt_logprob_parses() {
        let reply = r#"{"text":"hi","output_ids":[5,2],"meta_info":{"id":"x","finish_reason":{"type":"stop","matched":2},
            "prompt_tokens":2,"completion_tokens":2,"weight_version":"v1",
            "output_token_logprobs":[[-0.5,5,null],[-0.1,2,null]],"input_token_logprobs":[[null,1,null],[-3.0,4,null]],"e2e_latency":0.1}}"#;
        let r: SglangGenerateResponse = serde_json::from_str(reply).expect("test value");
        assert_eq!(r.output_ids, vec![5, 2]);
        assert_eq!(r.meta_info.input_token_logprobs.expect("test value")[0].0, None);
        assert_eq!(r.meta_info.finish_reason.expect("test value").kind, "stop");
    }

    #[test]
    fn vllm_reply_with_token_id_strings_and_prompt_logprobs_parses() {
        let reply = r#"{"id":"c","object":"text_completion","model":"m","choices":[{"index":0,"text":"a","finish_reason":"length",
            "token_ids":[7],"logprobs":{"tokens":["token_id:7"],"token_logprobs":[-1.25],"top_logprobs":[null],"text_offset":[0]},
            "prompt_logprobs":[null,{"9":{"logprob":-2.5,"rank":1,"decoded_token":"x"}}]}]}"#;
        let r: VllmCompletionResponse = serde_json::from_str(reply).expect("test value");
        let c = &r.choices[0];
        assert_eq!(vllm_token_id(&c.logprobs.as_ref().expect("test value").tokens[0]), Some(7));
        assert_eq!(c.prompt_logprobs.as_ref().expect("test value")[1].as_ref().expect("test value")["9"].logprob, -2.5);
        assert_eq!(vllm_token_id("7"), None);
        assert_eq!(vllm_token_id("token_id:x"), None);
    }
}
