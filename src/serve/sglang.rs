//! SGLang's native generation API: `POST /generate` (token ids in, one prompt or a batch, one
//! sampling-params dict for all prompts or one per prompt) and the weight update
//! `POST /update_weights_from_disk`.
use super::*;

/// A `POST /generate` that passed every check of `parse_generate`.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidGenerate {
    pub prompts: Vec<Vec<u32>>,
    /// One per prompt.
    pub params: Vec<TokenSampling>,
    /// `input_ids` was one flat list: the reply is one object, not a list.
    pub single: bool,
    pub return_logprob: bool,
    /// With `return_logprob`: prompt log-probs from this position on (`logprob_start_len`).
    pub logprob_start: Option<usize>,
}
/// Parse and validate a SGLang `POST /generate` body, without a socket (see `parse_request`).
/// Pure apart from the generator's sizes (vocabulary, context); never panics on any input.
pub fn parse_generate(body: &[u8], options: &ServerOptions, generator: &dyn TextGenerator) -> Result<ValidGenerate, Rejection> {
    let v = json_value(body, options)?;
    refuse_field(&v, "text", |x| !x.is_null(), "this server takes token ids only: send input_ids, not text")?;
    refuse_field(&v, "input_embeds", |x| !x.is_null(), "this server takes token ids only: send input_ids")?;
    refuse_field(&v, "stream", |x| x.as_bool() == Some(true), "streaming is not supported: send stream=false or omit it")?;
    let parsed: SglangGenerateRequest = check_seeds(v.get("sampling_params"), "sampling_seed")
        .and_then(|()| serde_json::from_value(v).map_err(|e| Rejection { status: 400, field: None, message: format!("bad request JSON: {e}") }))?;
    let single = matches!(parsed.input_ids, OneOrMany::One(_));
    let prompts = parsed.input_ids.into_vec();
    if prompts.is_empty() {
        return Err(Rejection::bad("input_ids", "input_ids is an empty list".into()));
    }
    if prompts.len() > options.max_prompts {
        return Err(Rejection::bad("input_ids", format!("{} prompts in one request; this server takes at most {}", prompts.len(), options.max_prompts)));
    }
    let sampling = match parsed.sampling_params {
        OneOrMany::One(s) => vec![s; prompts.len()],
        OneOrMany::Many(list) if list.len() == prompts.len() => list,
        OneOrMany::Many(list) => {
            return Err(Rejection::bad(
                "sampling_params",
                format!("{} sampling_params for {} prompts: send one for all or one per prompt", list.len(), prompts.len()),
            ))
        }
    };
    let mut params = Vec::with_capacity(prompts.len());
    for (i, (p, s)) in prompts.iter().zip(&sampling).enumerate() {
        top_k_ok(s.top_k)?;
        params.push(check_row(i, p, s.to_token_sampling(), &SGLANG_FIELDS, options, generator)?);
    }
    let logprob_start = match parsed.logprob_start_len {
        _ if !parsed.return_logprob => None,
        -1 => None,
        k if k < -1 => return Err(Rejection::bad("logprob_start_len", format!("logprob_start_len must be -1 or a prompt position, got {k}"))),
        k => {
            let shortest = prompts.iter().map(Vec::len).min().unwrap_or(0);
            match usize::try_from(k) {
                Ok(k) if k < shortest => Some(k),
                _ => {
                    return Err(Rejection::bad(
                        "logprob_start_len",
                        format!("logprob_start_len {k} is not a position of every prompt (shortest: {shortest} tokens)"),
                    ))
                }
            }
        }
    };
    Ok(ValidGenerate { prompts, params, single, return_logprob: parsed.return_logprob, logprob_start })
}
/// SGLang `POST /generate`.
pub(super) fn generate<G: TextGenerator>(body: &[u8], n: usize, shared: &Shared<G>, deadline: Instant) -> Result<serde_json::Value, Failure> {
    let req = parse_generate(body, &shared.options, &shared.generator)?;
    if shared.paused.load(Ordering::SeqCst) {
        return Err(paused_failure());
    }
    let out = sample(shared, &req.prompts, &req.params, req.logprob_start.is_some(), deadline)?;
    let mut replies = Vec::with_capacity(req.prompts.len());
    for (i, (prompt, c)) in req.prompts.iter().zip(&out.completions).enumerate() {
        let finish_reason = if c.finished_by_stop {
            SglangFinishReason { kind: "stop".into(), matched: c.token_ids.last().map(|&t| json!(t)) }
        } else {
            SglangFinishReason { kind: "length".into(), matched: None }
        };
        let output_token_logprobs =
            req.return_logprob.then(|| c.token_ids.iter().zip(&c.logprobs).map(|(&t, &lp)| (Some(f64::from(lp)), t, None)).collect::<Vec<SglangLogprob>>());
        let input_token_logprobs = req.logprob_start.map(|start| {
            (start..prompt.len())
                .map(|j| match j {
                    0 => (None, prompt[0], None),
                    j => (out.prompt_logprobs.get(i).and_then(|lp| lp.get(j - 1)).map(|&lp| f64::from(lp)), prompt[j], None),
                })
                .collect::<Vec<SglangLogprob>>()
        });
        replies.push(SglangGenerateResponse {
            text: decode(&shared.generator, &c.token_ids)?,
            output_ids: c.token_ids.clone(),
            meta_info: SglangMetaInfo {
                id: format!("gen-{n}-{i}"),
                finish_reason: Some(finish_reason),
                prompt_tokens: prompt.len(),
                completion_tokens: c.token_ids.len(),
                weight_version: Some(out.weight_version.clone()),
                output_token_logprobs,
                input_token_logprobs,
            },
        });
    }
    let value = if req.single { serde_json::to_value(&replies[0]) } else { serde_json::to_value(&replies) };
    value.map_err(|e| (500, error_body(&format!("cannot encode the reply: {e}"), "server_error")))
}
/// SGLang `POST /update_weights_from_disk`: 200 `success: true`, or 400 `success: false` with
/// the error (the old weights keep serving).
pub(super) fn update_weights_from_disk<G: TextGenerator>(request: &HttpRequest, shared: &Shared<G>) -> Response {
    let body = &request.body;
    let req: SglangUpdateWeightsRequest = match json_body(body, &shared.options) {
        Ok(r) => r,
        Err(r) => return Response::json(r.status, &json!(SglangUpdateWeightsResponse { success: false, message: r.message, num_paused_requests: 0 })),
    };
    let mut w = write(&shared.weights);
    let reply = match reload(&shared.generator, &req.model_path) {
        Ok(root) => {
            w.root = Some(root);
            w.model_path = Some(req.model_path.clone());
            let mut message = "Succeeded to update model weights.".to_string();
            if let Some(v) = req.weight_version {
                message.push_str(&format!(" Weight version updated to {v}."));
                w.version = v;
            }
            (200, SglangUpdateWeightsResponse { success: true, message, num_paused_requests: 0 })
        }
        Err(e) => (400, SglangUpdateWeightsResponse { success: false, message: format!("Failed to update weights: {e:#}"), num_paused_requests: 0 }),
    };
    drop(w);
    Response::json(reply.0, &json!(reply.1))
}
