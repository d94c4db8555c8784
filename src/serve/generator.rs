//! What `serve` serves: [`TextGenerator`], implemented by the model runtime (`policy`) and by
//! test fakes, and used beside `serve` by the local WildGuard judge (src/judge/wildguard.rs).
//! They return `anyhow::Result` because their errors come from another module's error types
//! and are only reported, never matched.
use crate::net::wire::{TokenCompletion, TokenSampling};

/// One greedy text completion with what the OpenAI reply reports about it: the token counts
/// of `usage` and whether the stop token ended it (`finish_reason` `stop`) or `max_tokens`
/// did (`length`). Counts are `None` where the generator does not tokenise (test fakes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GreedyText {
    pub text: String,
    pub prompt_tokens: Option<usize>,
    pub completion_tokens: Option<usize>,
    pub finished_by_stop: bool,
}

/// Greedy text completion; implemented by the model runtime (and by test fakes). Returns
/// only the newly generated text for each prompt, in order. Prompts are complete strings
/// (special tokens already in the text; the implementation must not add any).
///
/// The token-level methods below (sampling, prompt log-probs, weight reload, decoding) are
/// what `serve` needs to answer the SGLang / vLLM token-id protocols (`server`); their
/// defaults say "not supported", so a judge-only generator (or a test fake) implements only
/// `generate_greedy`.
pub trait TextGenerator {
    fn generate_greedy(&self, prompts: &[String], max_new_tokens: usize) -> anyhow::Result<Vec<String>>;
    /// `generate_greedy` with token counts and how each completion ended, for the OpenAI
    /// reply's `usage` and `finish_reason`. The default counts with `count_tokens` (`None`
    /// without a tokenizer) and calls a completion that used all `max_new_tokens` cut
    /// (`length`); the model runtime reports what the decoder saw instead.
    fn complete_greedy(&self, prompts: &[String], max_new_tokens: usize) -> anyhow::Result<Vec<GreedyText>> {
        let texts = self.generate_greedy(prompts, max_new_tokens)?;
        let count = |t: &str| self.count_tokens(t).transpose();
        prompts
            .iter()
            .zip(texts)
            .map(|(p, text)| {
                let prompt_tokens = count(p)?;
                let completion_tokens = count(&text)?;
                let finished_by_stop = completion_tokens.is_none_or(|n| n < max_new_tokens);
                Ok(GreedyText { text, prompt_tokens, completion_tokens, finished_by_stop })
            })
            .collect()
    }
    /// Tokens the model attends to (prompt + generated), when bounded; the completions
    /// server refuses requests that would run past it.
    fn context_tokens(&self) -> Option<usize> {
        None
    }
    /// How many tokens `prompt` encodes to (no special tokens added), when this generator
    /// tokenises; `None` for generators without a tokenizer (test fakes).
    fn count_tokens(&self, _prompt: &str) -> Option<anyhow::Result<usize>> {
        None
    }
    /// The token ids of `text`, with the tokenizer's special tokens (a BOS) when
    /// `add_special_tokens`; `None` without a tokenizer (test fakes).
    fn tokenize(&self, _text: &str, _add_special_tokens: bool) -> Option<anyhow::Result<Vec<u32>>> {
        None
    }
    /// Samples one completion per token-id prompt, `params[i]` for `prompts[i]` (each with
    /// its own seed; none = seed 0). A row's result depends only on its prompt, its settings
    /// and its seed, never on the other rows of the call. `weight_version` is left `None`
    /// (the server fills it in).
    fn sample_tokens(&self, _prompts: &[Vec<u32>], _params: &[TokenSampling]) -> anyhow::Result<Vec<TokenCompletion>> {
        Err(anyhow::anyhow!("token sampling is not supported by this generator"))
    }
    /// `log p(ids[k] | ids[..k])` for k = 1..n (n − 1 values): what the update stage computes
    /// for a response token, here for every token of a prompt but the first.
    fn prompt_logprobs(&self, _ids: &[u32]) -> anyhow::Result<Vec<f32>> {
        Err(anyhow::anyhow!("prompt log-probs are not supported by this generator"))
    }
    /// Replaces the model with the checkpoint at `path` (same device and dtype) and returns
    /// the new weights digest as `serve` reports it (`blake3:HEX`). On error the current
    /// model stays.
    fn reload(&self, _path: &std::path::Path) -> anyhow::Result<String> {
        Err(anyhow::anyhow!("reloading weights is not supported by this generator"))
    }
    /// The text of `ids` with special tokens skipped (as `Sample::text`), when this generator
    /// has a tokenizer.
    fn decode(&self, _ids: &[u32]) -> Option<anyhow::Result<String>> {
        None
    }
    /// Rows of the model's embedding: every token id of a request must be below it.
    fn vocab_size(&self) -> Option<usize> {
        None
    }
}

/// Lets a generator that is not `Sync` (a tch model) serve from several threads. A poisoned
/// lock is recovered, not reported: `TextGenerator` only ever reaches `T` through `&T`, so a
/// panic under the lock cannot have left `T` half-modified, and refusing every later request
/// would turn one bad request into an outage.
impl<T: TextGenerator> TextGenerator for std::sync::Mutex<T> {
    fn generate_greedy(&self, prompts: &[String], max_new_tokens: usize) -> anyhow::Result<Vec<String>> {
        let guard = self.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.generate_greedy(prompts, max_new_tokens)
    }
    fn complete_greedy(&self, prompts: &[String], max_new_tokens: usize) -> anyhow::Result<Vec<GreedyText>> {
        self.lock().unwrap_or_else(std::sync::PoisonError::into_inner).complete_greedy(prompts, max_new_tokens)
    }
    fn context_tokens(&self) -> Option<usize> {
        self.lock().unwrap_or_else(std::sync::PoisonError::into_inner).context_tokens()
    }
    fn count_tokens(&self, prompt: &str) -> Option<anyhow::Result<usize>> {
        self.lock().unwrap_or_else(std::sync::PoisonError::into_inner).count_tokens(prompt)
    }
    fn tokenize(&self, text: &str, add_special_tokens: bool) -> Option<anyhow::Result<Vec<u32>>> {
        self.lock().unwrap_or_else(std::sync::PoisonError::into_inner).tokenize(text, add_special_tokens)
    }
    fn sample_tokens(&self, prompts: &[Vec<u32>], params: &[TokenSampling]) -> anyhow::Result<Vec<TokenCompletion>> {
        self.lock().unwrap_or_else(std::sync::PoisonError::into_inner).sample_tokens(prompts, params)
    }
    fn prompt_logprobs(&self, ids: &[u32]) -> anyhow::Result<Vec<f32>> {
        self.lock().unwrap_or_else(std::sync::PoisonError::into_inner).prompt_logprobs(ids)
    }
    fn reload(&self, path: &std::path::Path) -> anyhow::Result<String> {
        self.lock().unwrap_or_else(std::sync::PoisonError::into_inner).reload(path)
    }
    fn decode(&self, ids: &[u32]) -> Option<anyhow::Result<String>> {
        self.lock().unwrap_or_else(std::sync::PoisonError::into_inner).decode(ids)
    }
    fn vocab_size(&self) -> Option<usize> {
        self.lock().unwrap_or_else(std::sync::PoisonError::into_inner).vocab_size()
    }
}

impl<T: TextGenerator + ?Sized> TextGenerator for std::sync::Arc<T> {
    fn generate_greedy(&self, prompts: &[String], max_new_tokens: usize) -> anyhow::Result<Vec<String>> {
        (**self).generate_greedy(prompts, max_new_tokens)
    }
    fn complete_greedy(&self, prompts: &[String], max_new_tokens: usize) -> anyhow::Result<Vec<GreedyText>> {
        (**self).complete_greedy(prompts, max_new_tokens)
    }
    fn context_tokens(&self) -> Option<usize> {
        (**self).context_tokens()
    }
    fn count_tokens(&self, prompt: &str) -> Option<anyhow::Result<usize>> {
        (**self).count_tokens(prompt)
    }
    fn tokenize(&self, text: &str, add_special_tokens: bool) -> Option<anyhow::Result<Vec<u32>>> {
        (**self).tokenize(text, add_special_tokens)
    }
    fn sample_tokens(&self, prompts: &[Vec<u32>], params: &[TokenSampling]) -> anyhow::Result<Vec<TokenCompletion>> {
        (**self).sample_tokens(prompts, params)
    }
    fn prompt_logprobs(&self, ids: &[u32]) -> anyhow::Result<Vec<f32>> {
        (**self).prompt_logprobs(ids)
    }
    fn reload(&self, path: &std::path::Path) -> anyhow::Result<String> {
        (**self).reload(path)
    }
    fn decode(&self, ids: &[u32]) -> Option<anyhow::Result<String>> {
        (**self).decode(ids)
    }
    fn vocab_size(&self) -> Option<usize> {
        (**self).vocab_size()
    }
}
