//! vLLM's token-id extensions of `POST /v1/completions` (a prompt of token ids or a list of
//! them, `seed`, `min_tokens`, `top_k`, `stop_token_ids`, `logprobs: 0`, `prompt_logprobs: 0`,
//! `return_token_ids`, `return_tokens_as_token_ids`) and its dev-mode weight reload:
//! `POST /collective_rpc reload_weights`, `POST /update_weight_version`, `POST /pause?mode=…`;
//! and `POST /tokenize`.
use super::*;

/// A token-id `POST /v1/completions` that passed every check of `parse_token_completion`.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidTokenCompletion {
    pub prompt: Vec<u32>,
    pub params: TokenSampling,
    pub model: Option<String>,
    /// `logprobs: 0`: the sampled tokens' log-probs.
    pub logprobs: bool,
    /// `prompt_logprobs: 0`: each prompt token's own log-prob.
    pub prompt_logprobs: bool,
    pub return_token_ids: bool,
    pub tokens_as_ids: bool,
}
/// Parse and validate a vLLM token-id `POST /v1/completions` body (one prompt of token ids),
/// without a socket. Pure apart from the generator's sizes; never panics on any input.
pub fn parse_token_completion(body: &[u8], options: &ServerOptions, generator: &dyn TextGenerator) -> Result<ValidTokenCompletion, Rejection> {
    let v = json_value(body, options)?;
    refuse_field(&v, "stream", |x| x.as_bool() == Some(true), "streaming is not supported: send stream=false or omit it")?;
    refuse_field(&v, "echo", |x| x.as_bool() == Some(true), "echo is not supported")?;
    refuse_field(&v, "n", |x| !x.is_null() && x.as_u64() != Some(1), "one completion per request: n must be 1")?;
    refuse_field(&v, "best_of", |x| !x.is_null() && x.as_u64() != Some(1), "best_of must be 1")?;
    let parsed: VllmCompletionRequest = check_seeds(Some(&v), "seed")
        .and_then(|()| serde_json::from_value(v).map_err(|e| Rejection { status: 400, field: None, message: format!("bad request JSON: {e}") }))?;
    if parsed.logprobs.is_some_and(|k| k > 0) {
        return Err(Rejection::bad("logprobs", "only logprobs=0 (the sampled token's log-prob) is supported".into()));
    }
    if parsed.prompt_logprobs.is_some_and(|k| k > 0) {
        return Err(Rejection::bad("prompt_logprobs", "only prompt_logprobs=0 (each prompt token's own log-prob) is supported".into()));
    }
    top_k_ok(parsed.top_k)?;
    let params = check_row(0, &parsed.prompt, parsed.to_token_sampling(), &VLLM_FIELDS, options, generator)?;
    Ok(ValidTokenCompletion {
        params,
        model: parsed.model,
        logprobs: parsed.logprobs.is_some(),
        prompt_logprobs: parsed.prompt_logprobs.is_some(),
        return_token_ids: parsed.return_token_ids,
        tokens_as_ids: parsed.return_tokens_as_token_ids,
        prompt: parsed.prompt,
    })
}

/// The `mode` of vLLM's `POST /pause?mode=…` (`abort`, `wait` or `keep`; none is fine).
/// Every mode pauses the same way here: requests already generating finish (a weight update
/// waits for them), new generation requests are answered 503 until `/resume`.
pub fn parse_pause_mode(query: &str) -> Result<Option<String>, Rejection> {
    let mode = query.split('&').find_map(|kv| kv.strip_prefix("mode="));
    match mode {
        None => Ok(None),
        Some(m @ ("abort" | "wait" | "keep")) => Ok(Some(m.to_string())),
        Some(m) => Err(Rejection::bad("mode", format!("pause mode must be abort, wait or keep, got {m:?}"))),
    }
}
/// A token-id `POST /v1/completions` whose `prompt` is a list of token-id prompts (vLLM takes
/// a batch; every prompt gets the request's settings and seed, as there): each prompt checked
/// as a request of its own, a refusal naming the prompt's index.
pub fn parse_token_completion_batch(body: &[u8], options: &ServerOptions, generator: &dyn TextGenerator) -> Result<Vec<ValidTokenCompletion>, Rejection> {
    let v = json_value(body, options)?;
    let Some(prompts) = v.get("prompt").and_then(serde_json::Value::as_array).cloned() else {
        return Err(Rejection::bad("prompt", "expected a list of token-id prompts".into()));
    };
    if prompts.len() > options.max_prompts {
        return Err(Rejection::bad("prompt", format!("{} prompts in one request; this server takes at most {}", prompts.len(), options.max_prompts)));
    }
    let mut out = Vec::with_capacity(prompts.len());
    for (i, p) in prompts.into_iter().enumerate() {
        let mut one = v.clone();
        one["prompt"] = p;
        let body = serde_json::to_vec(&one).map_err(|e| Rejection::bad("prompt", e.to_string()))?;
        out.push(parse_token_completion(&body, options, generator).map_err(|r| Rejection { message: format!("prompt {i}: {}", r.message), ..r })?);
    }
    Ok(out)
}

/// vLLM token-id `POST /v1/completions`: one prompt, or a batch of them (`batch`), one choice
/// per prompt in order.
pub(super) fn token_completion<G: TextGenerator>(
    body: &[u8],
    n: usize,
    shared: &Shared<G>,
    deadline: Instant,
    batch: bool,
) -> Result<serde_json::Value, Failure> {
    let reqs = if batch {
        parse_token_completion_batch(body, &shared.options, &shared.generator)?
    } else {
        vec![parse_token_completion(body, &shared.options, &shared.generator)?]
    };
    let Some(first) = reqs.first() else { return Err(Rejection::bad("prompt", "no prompt".into()).into()) };
    check_model(first.model.as_deref(), &shared.options)?;
    if shared.paused.load(Ordering::SeqCst) {
        return Err(paused_failure());
    }
    let prompts: Vec<Vec<u32>> = reqs.iter().map(|r| r.prompt.clone()).collect();
    let params: Vec<TokenSampling> = reqs.iter().map(|r| r.params.clone()).collect();
    let out = sample(shared, &prompts, &params, first.prompt_logprobs, deadline)?;
    if out.completions.len() != reqs.len() {
        return Err((500, error_body(&format!("generator returned {} completions for {} prompts", out.completions.len(), reqs.len()), "server_error")));
    }
    let (mut prompt_tokens, mut completion_tokens) = (0usize, 0usize);
    let mut choices = Vec::with_capacity(reqs.len());
    for (i, (req, c)) in reqs.iter().zip(&out.completions).enumerate() {
        prompt_tokens += req.prompt.len();
        completion_tokens += c.token_ids.len();
        let finish_reason = if c.finished_by_stop { "stop" } else { "length" };
        let stop_reason = if c.finished_by_stop { c.token_ids.last().copied() } else { None };
        let text = decode(&shared.generator, &c.token_ids)?;
        let mut choice = json!({"index": i, "text": text, "finish_reason": finish_reason, "stop_reason": stop_reason, "logprobs": null});
        if req.logprobs {
            let mut tokens = Vec::with_capacity(c.token_ids.len());
            for &t in &c.token_ids {
                tokens.push(if req.tokens_as_ids { format!("token_id:{t}") } else { decode(&shared.generator, &[t])? });
            }
            let token_logprobs: Vec<f64> = c.logprobs.iter().map(|&lp| f64::from(lp)).collect();
            choice["logprobs"] = json!({"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": null, "text_offset": null});
        }
        if req.return_token_ids {
            choice["token_ids"] = json!(c.token_ids);
            choice["prompt_token_ids"] = json!(req.prompt);
        }
        if req.prompt_logprobs {
            let mut entries = vec![serde_json::Value::Null];
            for (&t, &lp) in req.prompt.iter().skip(1).zip(out.prompt_logprobs.get(i).into_iter().flatten()) {
                let mut entry = serde_json::Map::new();
                entry.insert(t.to_string(), json!(VllmTokenLogprob { logprob: f64::from(lp), rank: None, decoded_token: None }));
                entries.push(serde_json::Value::Object(entry));
            }
            choice["prompt_logprobs"] = serde_json::Value::Array(entries);
        }
        choices.push(choice);
    }
    let model = first.model.clone().unwrap_or_else(|| shared.options.model_name.clone());
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens});
    Ok(json!({"id": format!("cmpl-{n}"), "object": "text_completion", "created": 0, "model": model, "choices": choices, "usage": usage}))
}

/// vLLM's `POST /tokenize` for a completion prompt: `{model?, prompt, add_special_tokens}`
/// (default true, as there) → `{count, max_model_len, tokens, token_strs: null}`. The HTTP
/// judge uses it so an engine that cannot be told not to add special tokens to a text prompt
/// (SGLang) gets the WildGuard prompt as token ids, tokenized as vLLM and the local judge do.
pub(super) fn tokenize<G: TextGenerator>(request: &HttpRequest, shared: &Shared<G>) -> Response {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct TokenizeRequest {
        #[serde(default)]
        model: Option<String>,
        prompt: String,
        #[serde(default = "yes")]
        add_special_tokens: bool,
    }
    fn yes() -> bool {
        true
    }
    let answer = || -> Result<serde_json::Value, Failure> {
        let req: TokenizeRequest = json_body(&request.body, &shared.options)?;
        check_model(req.model.as_deref(), &shared.options)?;
        let tokens = match shared.generator.tokenize(&req.prompt, req.add_special_tokens) {
            None => return Err(Rejection::bad("prompt", "this server's generator has no tokenizer".into()).into()),
            Some(Err(e)) => return Err(Rejection::bad("prompt", format!("cannot tokenize: {e:#}")).into()),
            Some(Ok(t)) => t,
        };
        Ok(json!({"count": tokens.len(), "max_model_len": shared.generator.context_tokens(), "tokens": tokens, "token_strs": null}))
    };
    match answer() {
        Ok(v) => Response::json(200, &v),
        Err((status, v)) => Response::json(status, &v),
    }
}

/// vLLM `POST /collective_rpc` with `method: "reload_weights"` and `kwargs.weights_path`:
/// reloads the weights in place from that directory, which must be an absolute path (the
/// workers resolve it themselves); any other method or argument is refused (400), and a
/// checkpoint that does not load is a 500 with the error, the old weights still serving.
pub(super) fn collective_rpc<G: TextGenerator>(request: &HttpRequest, shared: &Shared<G>) -> Response {
    let answer = || -> Result<serde_json::Value, Failure> {
        let req: VllmCollectiveRpc = json_body(&request.body, &shared.options)?;
        if req.method != "reload_weights" {
            return Err(Failure::from(Rejection::bad("method", format!("collective_rpc method {:?} is not served here (only reload_weights)", req.method))));
        }
        if let Some(k) = req.kwargs.keys().find(|k| *k != "weights_path") {
            return Err(Failure::from(Rejection::bad("kwargs", format!("reload_weights got an unexpected keyword argument {k:?}"))));
        }
        let path = req.kwargs.get("weights_path").and_then(serde_json::Value::as_str).ok_or_else(|| {
            Failure::from(Rejection::bad("kwargs.weights_path", "reload_weights needs kwargs.weights_path, a checkpoint directory".to_string()))
        })?;
        if !std::path::Path::new(path).is_absolute() {
            return Err(Failure::from(Rejection::bad("kwargs.weights_path", format!("weights_path {path:?} is not absolute"))));
        }
        let mut w = write(&shared.weights);
        match reload(&shared.generator, path) {
            Ok(root) => {
                w.root = Some(root);
                w.model_path = Some(path.to_string());
                Ok(json!({"results": [null]}))
            }
            Err(e) => Err((500, error_body(&format!("Call to collective_rpc method failed: {e:#}"), "server_error"))),
        }
    };
    match answer() {
        Ok(v) => Response::json(200, &v),
        Err((status, v)) => Response::json(status, &v),
    }
}

/// vLLM `POST /update_weight_version {"new_version": V}`: the version `/weight_info` and
/// every reply report from then on.
pub(super) fn update_weight_version<G: TextGenerator>(request: &HttpRequest, shared: &Shared<G>) -> Response {
    match json_body::<VllmUpdateWeightVersion>(&request.body, &shared.options) {
        Ok(req) => {
            let body = json!({"success": true, "new_version": req.new_version});
            write(&shared.weights).version = req.new_version;
            Response::json(200, &body)
        }
        Err(r) => respond_rejection(&r),
    }
}
