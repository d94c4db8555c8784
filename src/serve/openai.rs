//! OpenAI text completions (`POST /v1/completions` with a text prompt): the judge path.
//! Greedy only, prompts passed to the generator as complete strings (no special tokens
//! added), `usage` and `finish_reason` on every choice; what it does not do (`stream`, `n`,
//! `best_of`, `stop`, `echo`, `logprobs`, `add_special_tokens: true`, a non-zero
//! `temperature`) is refused by field with a 400.
use super::*;

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum PromptField {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
pub(super) struct Request {
    prompt: PromptField,
    #[serde(default = "default_max_tokens")]
    max_tokens: usize,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    model: Option<String>,
    /// vLLM extension. `TextGenerator` prompts are complete strings and never get special
    /// tokens added, so `true` is refused rather than silently ignored.
    #[serde(default)]
    add_special_tokens: Option<bool>,
}

fn default_max_tokens() -> usize {
    // OpenAI's documented default for /v1/completions.
    16
}

/// A request that passed every check of `parse_request`.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidRequest {
    pub prompts: Vec<String>,
    pub max_tokens: usize,
    pub model: Option<String>,
}

/// Parse and validate one completions request body, without a socket: what the server does
/// before it touches the generator. Pure apart from the generator's tokenizer (for the
/// context check); never panics on any input.
pub fn parse_request(body: &[u8], options: &ServerOptions, generator: &dyn TextGenerator) -> Result<ValidRequest, Rejection> {
    if body.len() > options.max_body_bytes {
        return Err(Rejection { status: 413, field: None, message: format!("request body over {} bytes", options.max_body_bytes) });
    }
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| Rejection { status: 400, field: None, message: format!("bad request JSON: {e}") })?;
    // What vLLM's OpenAI text path does and this greedy judge path does not: a clear 400, never
    // a reply that looks like success (a 200 plain-JSON answer to `stream: true` reads as an
    // empty stream in the official `openai` client).
    refuse_field(&value, "stream", |x| x.as_bool() == Some(true), "streaming is not supported: send stream=false or omit it")?;
    refuse_field(&value, "echo", |x| x.as_bool() == Some(true), "echo is not supported")?;
    refuse_field(&value, "n", |x| !x.is_null() && x.as_u64() != Some(1), "one completion per prompt: n must be 1")?;
    refuse_field(&value, "best_of", |x| !x.is_null() && x.as_u64() != Some(1), "best_of must be 1")?;
    refuse_field(
        &value,
        "stop",
        |x| !(x.is_null() || x.as_array().is_some_and(Vec::is_empty)),
        "stop strings are not supported: the answer ends at the model's end of turn or max_tokens",
    )?;
    refuse_field(&value, "logprobs", |x| !x.is_null(), "text completions return no log-probs here: send a token-id prompt with logprobs=0")?;
    let parsed: Request = serde_json::from_value(value).map_err(|e| Rejection { status: 400, field: None, message: format!("bad request JSON: {e}") })?;
    if parsed.temperature.is_some_and(|t| t != 0.0) {
        return Err(Rejection::bad("temperature", "this server decodes greedily: temperature must be 0".into()));
    }
    if parsed.add_special_tokens == Some(true) {
        return Err(Rejection::bad("add_special_tokens", "this server never adds special tokens: send add_special_tokens=false or omit it".into()));
    }
    if parsed.max_tokens > options.max_tokens_limit {
        return Err(Rejection::bad("max_tokens", format!("max_tokens {} is over this server's limit of {}", parsed.max_tokens, options.max_tokens_limit)));
    }
    let prompts = match parsed.prompt {
        PromptField::One(p) => vec![p],
        PromptField::Many(ps) => ps,
    };
    if prompts.is_empty() {
        return Err(Rejection::bad("prompt", "prompt is an empty list".into()));
    }
    if prompts.len() > options.max_prompts {
        return Err(Rejection::bad("prompt", format!("{} prompts in one request; this server takes at most {}", prompts.len(), options.max_prompts)));
    }
    if let Some(context) = generator.context_tokens() {
        for (i, p) in prompts.iter().enumerate() {
            let n = match generator.count_tokens(p) {
                Some(Ok(n)) => n,
                Some(Err(e)) => return Err(Rejection::bad("prompt", format!("prompt {i} cannot be tokenised: {e:#}"))),
                None => continue,
            };
            if n == 0 {
                return Err(Rejection::bad("prompt", format!("prompt {i} is empty (no tokens)")));
            }
            if n.saturating_add(parsed.max_tokens) > context {
                return Err(Rejection::bad(
                    "max_tokens",
                    format!("prompt {i} has {n} tokens; with max_tokens {} that is over the model's context of {context} tokens", parsed.max_tokens),
                ));
            }
        }
    }
    Ok(ValidRequest { prompts, max_tokens: parsed.max_tokens, model: parsed.model })
}

/// What `/v1/completions` got as `prompt`: text (the judge path), one token-id prompt, or a
/// list of token-id prompts (refused: one token-id prompt per request, as vLLM's `seed` is
/// per request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptKind {
    Text,
    TokenIds,
    TokenIdBatch,
}

/// Classifies a `/v1/completions` body by its `prompt` (anything unparsable is `Text`, so the
/// text path reports the JSON error as before). Pure; never panics.
pub fn completions_prompt_kind(body: &[u8]) -> PromptKind {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else { return PromptKind::Text };
    let Some(items) = v.get("prompt").and_then(|p| p.as_array()).filter(|a| !a.is_empty()) else { return PromptKind::Text };
    if items.iter().all(serde_json::Value::is_number) {
        PromptKind::TokenIds
    } else if items.iter().all(|i| i.as_array().is_some_and(|a| a.iter().all(serde_json::Value::is_number))) {
        PromptKind::TokenIdBatch
    } else {
        PromptKind::Text
    }
}
/// A request naming a model this server does not serve is a 404, as vLLM answers it (a typo in
/// a client's model name must not silently reach another model).
pub(super) fn check_model(model: Option<&str>, options: &ServerOptions) -> Result<(), Failure> {
    match model {
        Some(m) if m != options.model_name => {
            let message = format!("The model `{m}` does not exist. Valid aliases: {}.", options.model_name);
            Err((404, json!({"error": {"message": message, "type": "NotFoundError", "param": "model", "code": 404}})))
        }
        _ => Ok(()),
    }
}

/// The judge path: greedy text completions, unchanged.
pub(super) fn text_completion<G: TextGenerator>(body: &[u8], n: usize, shared: &Shared<G>, deadline: Instant) -> Result<serde_json::Value, Failure> {
    let options = &shared.options;
    let parsed = parse_request(body, options, &shared.generator)?;
    check_model(parsed.model.as_deref(), options)?;
    let mut done: Vec<GreedyText> = Vec::with_capacity(parsed.prompts.len());
    for chunk in parsed.prompts.chunks(options.batch.max(1)) {
        if Instant::now() >= deadline {
            return Err(timeout_failure(options, done.len(), parsed.prompts.len()));
        }
        let out = catch_unwind(AssertUnwindSafe(|| shared.generator.complete_greedy(chunk, parsed.max_tokens)));
        match out {
            Ok(Ok(t)) if t.len() == chunk.len() => done.extend(t),
            Ok(Ok(t)) => return Err((500, error_body(&format!("generator returned {} texts for {} prompts", t.len(), chunk.len()), "server_error"))),
            Ok(Err(e)) => return Err((500, error_body(&format!("generation failed: {e:#}"), "server_error"))),
            Err(_) => return Err((500, error_body("generation panicked; the server keeps serving", "server_error"))),
        }
    }
    // vLLM's reply: `finish_reason` per choice, `usage` summed over the request's prompts
    // (counts the generator cannot make are 0).
    let (mut prompt_tokens, mut completion_tokens) = (0usize, 0usize);
    let mut choices = Vec::with_capacity(done.len());
    for (i, c) in done.into_iter().enumerate() {
        prompt_tokens += c.prompt_tokens.unwrap_or(0);
        completion_tokens += c.completion_tokens.unwrap_or(0);
        let finish_reason = if c.finished_by_stop { "stop" } else { "length" };
        choices.push(json!({"index": i, "text": c.text, "logprobs": null, "finish_reason": finish_reason, "stop_reason": null}));
    }
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens});
    let model = parsed.model.unwrap_or_else(|| options.model_name.clone());
    Ok(json!({"id": format!("cmpl-{n}"), "object": "text_completion", "created": 0, "model": model, "choices": choices, "usage": usage}))
}
