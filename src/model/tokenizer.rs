//! Tokenizer wrapper: the only place that knows special tokens (bos/eos/pad/stop) and renders
//! chat templates (minijinja + pycompat, as HF's `apply_chat_template`). Used by `policy.rs`,
//! the sampler, and the game/judge code through `Policy::tokenizer()`.
use super::error::{io_err, ModelError, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One chat message, as HF chat templates expect it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: content.into() }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// Token ids are u32 everywhere in this crate (the `tokenizers` convention).
pub type TokenId = u32;

/// A `tokenizers` tokenizer plus the special tokens and chat template of
/// `tokenizer_config.json` (or the GGUF metadata it was rebuilt from).
#[derive(Clone)]
pub struct ChatTokenizer {
    inner: tokenizers::Tokenizer,
    /// The `tokenizer_config.json` document, kept to be written back unchanged on save.
    config: serde_json::Value,
    chat_template: Option<String>,
    bos: Option<(String, TokenId)>,
    eos: (String, TokenId),
    pad_id: TokenId,
    stop_ids: Vec<TokenId>,
}

impl std::fmt::Debug for ChatTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTokenizer")
            .field("vocab_size", &self.inner.get_vocab_size(true))
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("pad_id", &self.pad_id)
            .field("stop_ids", &self.stop_ids)
            .finish()
    }
}

/// Token strings that end a turn in the common chat formats; each one present in the vocabulary
/// is a stop token in addition to eos (ChatML, Llama 3, GPT-2 style end of text).
const TURN_END_TOKENS: &[&str] = &["<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>", "</s>"];

/// A special token in tokenizer_config.json is a string or `{"content": ...}`.
fn token_str(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(str::to_string),
        _ => None,
    }
}

impl ChatTokenizer {
    /// Builds from a `tokenizer.json` document and a `tokenizer_config.json` document;
    /// `source` names where they came from, for errors. `config_eos` is the model config's
    /// eos id(s), also used as stop tokens.
    pub fn from_json(tokenizer_json: &str, config: serde_json::Value, config_eos: &[TokenId], source: &Path) -> Result<Self> {
        let tok_err = |message: String| ModelError::Tokenizer { path: source.to_path_buf(), message };
        // The tokenizers crate panics on some malformed documents (an `unwrap` in a decoder's
        // deserialiser; found by tests/it/model/files.rs `fuzz_tokenizer_json`): contain it,
        // so a bad file is this error and not a crash.
        let parsed = contained(|| tokenizer_json.parse::<tokenizers::Tokenizer>())
            .ok_or_else(|| tok_err("the tokenizers crate panicked while parsing it (a malformed entry)".into()))?;
        let inner: tokenizers::Tokenizer = parsed.map_err(|e: tokenizers::Error| tok_err(e.to_string()))?;
        // A file that parses can still panic the crate when used (a template post-processor
        // naming an undefined special token): one probe encode with specials at load, so
        // such a file is an error naming it here rather than at the first prompt.
        if contained(|| inner.encode("probe", true)).is_none() {
            return Err(tok_err(
                "the tokenizers crate panicked encoding a probe text with special tokens (an inconsistent post-processor or special-token map)".into(),
            ));
        }
        let id_of = |name: &str, what: &str| inner.token_to_id(name).ok_or_else(|| tok_err(format!("{what} token `{name}` is not in the vocabulary")));
        let bos = match token_str(config.get("bos_token")) {
            Some(t) => Some((t.clone(), id_of(&t, "bos")?)),
            None => None,
        };
        let eos_name = token_str(config.get("eos_token")).ok_or_else(|| tok_err("no eos_token in tokenizer config".into()))?;
        let eos = (eos_name.clone(), id_of(&eos_name, "eos")?);
        let pad_id = match token_str(config.get("pad_token")) {
            Some(t) => id_of(&t, "pad")?,
            None => eos.1,
        };
        let mut stop_ids = vec![eos.1];
        stop_ids.extend_from_slice(config_eos);
        stop_ids.extend(TURN_END_TOKENS.iter().filter_map(|t| inner.token_to_id(t)));
        // Only ids that are real specials: `<|endoftext|>` may double as bos in some vocabularies.
        stop_ids.retain(|id| bos.as_ref().is_none_or(|(_, b)| b != id) || *id == eos.1);
        stop_ids.sort_unstable();
        stop_ids.dedup();
        let chat_template = match config.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            // A list of named templates: take `default`.
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .find(|i| i.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|i| i.get("template").and_then(|t| t.as_str()).map(str::to_string)),
            _ => None,
        };
        Ok(ChatTokenizer { inner, config, chat_template, bos, eos, pad_id, stop_ids })
    }

    /// Loads `tokenizer.json` and `tokenizer_config.json` from an HF directory (a separate
    /// `chat_template.jinja` wins over the config's template, as in recent transformers).
    pub fn from_hf_dir(dir: &Path, config_eos: &[TokenId]) -> Result<Self> {
        let tj_path = dir.join("tokenizer.json");
        let tj = std::fs::read_to_string(&tj_path).map_err(io_err(&tj_path))?;
        let tc_path = dir.join("tokenizer_config.json");
        let tc_text = std::fs::read_to_string(&tc_path).map_err(io_err(&tc_path))?;
        let mut tc: serde_json::Value = serde_json::from_str(&tc_text).map_err(|source| ModelError::Json { path: tc_path.clone(), source })?;
        let jinja = dir.join("chat_template.jinja");
        if jinja.is_file() {
            let t = std::fs::read_to_string(&jinja).map_err(io_err(&jinja))?;
            if let Some(o) = tc.as_object_mut() {
                o.insert("chat_template".into(), serde_json::Value::String(t));
            }
        }
        Self::from_json(&tj, tc, config_eos, &tj_path)
    }

    /// Writes `tokenizer.json` and `tokenizer_config.json` into `dir` (deterministic bytes).
    pub fn save_hf_dir(&self, dir: &Path) -> Result<()> {
        let tj_path = dir.join("tokenizer.json");
        let tj = self.inner.to_string(true).map_err(|e| ModelError::Tokenizer { path: tj_path.clone(), message: e.to_string() })?;
        // Re-serialise through serde_json (sorted keys) so the bytes do not depend on hash order.
        let tj_value: serde_json::Value = serde_json::from_str(&tj).map_err(|source| ModelError::Json { path: tj_path.clone(), source })?;
        write_json(&tj_path, &tj_value)?;
        write_json(&dir.join("tokenizer_config.json"), &self.config)
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
    pub fn bos_id(&self) -> Option<TokenId> {
        self.bos.as_ref().map(|b| b.1)
    }
    pub fn eos_id(&self) -> TokenId {
        self.eos.1
    }
    /// The id used for padding (the config's pad token, else eos).
    pub fn pad_id(&self) -> TokenId {
        self.pad_id
    }
    /// Ids that end generation: eos, the model config's eos ids, and turn-end tokens.
    pub fn stop_ids(&self) -> &[TokenId] {
        &self.stop_ids
    }
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }
    pub fn token_to_id(&self, token: &str) -> Option<TokenId> {
        self.inner.token_to_id(token)
    }

    /// Encodes text. `add_special_tokens` applies the post-processor (e.g. a leading bos).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<TokenId>> {
        // The tokenizers crate panics on some inconsistent files at encode time (a template
        // post-processor naming a special token it does not define; found by
        // fuzz_tokenizer_json): contained here as an error, and checked at load (`from_json`).
        let enc = contained(|| self.inner.encode(text, add_special_tokens))
            .ok_or_else(|| ModelError::Tokenizer {
                path: PathBuf::from("<encode>"),
                message: "the tokenizers crate panicked while encoding (an inconsistent tokenizer.json)".into(),
            })?
            .map_err(|e| ModelError::Tokenizer { path: PathBuf::from("<encode>"), message: e.to_string() })?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes ids; with `skip_special_tokens` the special tokens (bos, eos, im_start...) vanish.
    pub fn decode(&self, ids: &[TokenId], skip_special_tokens: bool) -> Result<String> {
        contained(|| self.inner.decode(ids, skip_special_tokens))
            .ok_or_else(|| ModelError::Tokenizer {
                path: PathBuf::from("<decode>"),
                message: "the tokenizers crate panicked while decoding (an inconsistent tokenizer.json)".into(),
            })?
            .map_err(|e| ModelError::Tokenizer { path: PathBuf::from("<decode>"), message: e.to_string() })
    }

    /// Renders the chat template as HF's `apply_chat_template(messages, tokenize=False,
    /// add_generation_prompt=...)`, then appends `assistant_prefix` verbatim (method.md §1.2:
    /// the CoT prefix `"Let's think step by step.\n<think> "` goes after the generation prompt).
    pub fn render_chat(&self, messages: &[ChatMessage], add_generation_prompt: bool, assistant_prefix: Option<&str>) -> Result<String> {
        let template = self.chat_template.as_deref().ok_or_else(|| ModelError::Template { message: "the tokenizer has no chat template".into() })?;
        let mut env = minijinja::Environment::new();
        // A chat template comes with the model files, so it is input like any other: a loop
        // that never ends (or runs 10^8 times) must fail, not hang the stage. Real templates
        // (ChatML, Llama 3, Qwen 2) execute a few thousand instructions for a game prompt.
        env.set_fuel(Some(TEMPLATE_FUEL));
        // transformers renders with jinja2 trim_blocks + lstrip_blocks, and the globals below.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        minijinja_contrib::add_to_environment(&mut env);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        // Deterministic stand-in for HF's `strftime_now`: templates that print today's date
        // (Llama 3.x) would otherwise make prompts, and so cache keys, depend on the clock.
        env.add_function("strftime_now", |_fmt: String| -> String { "26 Jul 2024".to_string() });
        env.add_template("chat", template).map_err(|e| ModelError::Template { message: format!("{e:#}") })?;
        let tmpl = env.get_template("chat").map_err(|e| ModelError::Template { message: format!("{e:#}") })?;
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos.as_ref().map(|b| b.0.clone()).unwrap_or_default(),
            eos_token => self.eos.0.clone(),
            pad_token => token_str(self.config.get("pad_token")).unwrap_or_default(),
            unk_token => token_str(self.config.get("unk_token")).unwrap_or_default(),
        };
        let mut text = tmpl.render(ctx).map_err(|e| ModelError::Template { message: format!("{e:#}") })?;
        if let Some(prefix) = assistant_prefix {
            text.push_str(prefix);
        }
        Ok(text)
    }

    /// `render_chat` then tokenize without adding specials (the template already has them),
    /// as HF's `apply_chat_template(tokenize=True)`.
    pub fn encode_chat(&self, messages: &[ChatMessage], add_generation_prompt: bool, assistant_prefix: Option<&str>) -> Result<Vec<TokenId>> {
        self.encode(&self.render_chat(messages, add_generation_prompt, assistant_prefix)?, false)
    }
}

/// Runs a call into the tokenizers crate, which panics on some inconsistent files instead
/// of returning an error (found by `fuzz_tokenizer_json`): `None` when it panicked. The
/// crate's state is only read by these calls, so continuing after a caught panic is sound.
fn contained<T>(f: impl FnOnce() -> T) -> Option<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok()
}

/// Instructions one render of a chat template may execute (minijinja fuel); see
/// `ChatTokenizer::render_chat`.
pub const TEMPLATE_FUEL: u64 = 2_000_000;

pub(crate) fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).map_err(|source| ModelError::Json { path: path.into(), source })?;
    text.push('\n');
    super::tensors::write_atomic(path, text.as_bytes())
}

/// A tiny byte-level tokenizer with ChatML specials (ids 0..=2 then the 256 bytes), used by
/// `tiny_random_llama` so tests of every module can tokenize and render chats without files.
pub fn tiny_byte_tokenizer() -> ChatTokenizer {
    let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    let mut vocab = serde_json::Map::new();
    for (i, s) in specials.iter().enumerate() {
        vocab.insert(s.to_string(), i.into());
    }
    // GPT-2's byte -> printable char table, so every byte is one token.
    for (b, ch) in gpt2_byte_chars().into_iter().enumerate() {
        vocab.insert(ch.to_string(), (specials.len() + b).into());
    }
    let added: Vec<serde_json::Value> = specials
        .iter()
        .enumerate()
        .map(|(id, s)| {
            serde_json::json!({"id": id, "content": s, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let tj = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": []}
    });
    let tc = serde_json::json!({
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>",
        "chat_template": CHATML_TEMPLATE, "clean_up_tokenization_spaces": false,
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 512,
    });
    ChatTokenizer::from_json(&tj.to_string(), tc, &[2], Path::new("<tiny_byte_tokenizer>")).expect("the built-in tiny tokenizer is valid")
}

/// Plain ChatML (SmolLM2's template without the default system prompt).
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

fn gpt2_byte_chars() -> Vec<char> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut chars = vec!['\0'; 256];
    for &b in &printable {
        chars[b as usize] = char::from_u32(b).expect("latin-1 char");
    }
    let mut n = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            chars[b as usize] = char::from_u32(256 + n).expect("valid char");
            n += 1;
        }
    }
    printable.clear();
    chars
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_tokenizer_roundtrips_text_and_renders_chatml() {
        let tok = tiny_byte_tokenizer();
        let ids = tok.encode("<|im_start|>hé!", false).expect("encode");
        assert_eq!(ids, vec![1, 3 + b'h' as u32, 3 + 0xC3, 3 + 0xA9, 3 + b'!' as u32]);
        assert_eq!(tok.decode(&ids, true).expect("decode"), "hé!");
        let text = tok.render_chat(&[ChatMessage::user("Hi")], true, Some("Let's think step by step.\n<think> ")).expect("render");
        assert_eq!(text, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nLet's think step by step.\n<think> ");
        assert_eq!(tok.stop_ids(), &[0, 2]);
        assert_eq!(tok.pad_id(), 2);
    }

    #[test]
    fn a_chat_template_that_never_ends_runs_out_of_fuel_instead_of_hanging() {
        let mut tok = tiny_byte_tokenizer();
        tok.chat_template = Some("{% for i in range(10000) %}{% for j in range(10000) %}{{ i * j }}{% endfor %}{% endfor %}".into());
        match tok.render_chat(&[ChatMessage::user("x")], true, None) {
            Err(ModelError::Template { message }) => assert!(message.to_lowercase().contains("fuel"), "{message}"),
            other => panic!("expected a template error, got {other:?}"),
        }
        // The real template's render uses a small fraction of the budget.
        let tok = tiny_byte_tokenizer();
        assert!(tok.render_chat(&[ChatMessage::user("long ".repeat(2000))], true, None).is_ok());
    }

    #[test]
    fn raise_exception_surfaces_as_template_error() {
        let mut tok = tiny_byte_tokenizer();
        tok.chat_template = Some("{{ raise_exception('only user messages') }}".into());
        match tok.render_chat(&[ChatMessage::system("x")], false, None) {
            Err(ModelError::Template { message }) => assert!(message.contains("only user messages"), "{message}"),
            other => panic!("expected template error, got {other:?}"),
        }
    }

    #[test]
    fn pycompat_string_methods_work_in_templates() {
        let mut tok = tiny_byte_tokenizer();
        tok.chat_template = Some("{% for m in messages %}{{ m['content'].strip().upper() }}{% endfor %}".into());
        assert_eq!(tok.render_chat(&[ChatMessage::user("  hi ")], false, None).expect("render"), "HI");
    }
}
