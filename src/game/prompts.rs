//! Attacker and defender prompts (method.md §1.2–§1.3) in this project's own words, built
//! from the template files in `templates/` and returned as chat messages plus an optional
//! assistant prefix; the model runtime renders them with the model's own chat template.
//! Called by the rollout stage (and the SFT/eval code for the defender CoT prompt).
//!
//! Templates are files so a reviewer can read the exact text; they are embedded with
//! `include_str!`, and `template_digest()` hashes every byte that can reach a prompt, so the
//! rollout key changes whenever any wording changes. Each file's final newline is not part
//! of its text (editors add one; the prompt must not depend on that).
use serde::{Deserialize, Serialize};

use super::roles::SeedLabel;

/// Appended after the chat template's generation prompt in CoT mode: the model starts
/// generating inside the think block (§1.2). Kept in code, not in a file, because its
/// trailing space is part of the protocol (also used by the SFT targets of §4.2).
pub const THINKING_PREFIX: &str = "Let's think step by step.\n<think> ";

/// Placeholder in the attacker instructions; it appears exactly once, at the end.
const SEED_PLACEHOLDER: &str = "{seed}";

/// Version of how the pieces below are glued together; bump when `attacker_prompt` or
/// `defender_prompt` change the way they join template texts (it enters the digest).
const ASSEMBLY_VERSION: &str = "prompt-assembly-v2"; // v2: the frozen defender gets the thinking prefix in reasoning mode

const ATTACKER_SYSTEM: &str = include_str!("templates/attacker_system.txt");
const ATTACKER_HARMFUL: &str = include_str!("templates/attacker_harmful.txt");
const ATTACKER_BENIGN: &str = include_str!("templates/attacker_benign.txt");
const FORMAT_COT: &str = include_str!("templates/format_cot.txt");
const FORMAT_DIRECT: &str = include_str!("templates/format_direct.txt");
const DEFENDER_COT: &str = include_str!("templates/defender_cot.txt");

/// (file name, bytes) of every template, in digest order.
const TEMPLATES: [(&str, &str); 6] = [
    ("attacker_system.txt", ATTACKER_SYSTEM),
    ("attacker_harmful.txt", ATTACKER_HARMFUL),
    ("attacker_benign.txt", ATTACKER_BENIGN),
    ("format_cot.txt", FORMAT_COT),
    ("format_direct.txt", FORMAT_DIRECT),
    ("defender_cot.txt", DEFENDER_COT),
];

/// A chat role as the chat template spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatRole {
    System,
    User,
    Assistant,
}

impl ChatRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ChatRole::System => "system",
            ChatRole::User => "user",
            ChatRole::Assistant => "assistant",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: ChatRole,
    pub content: String,
}

/// A prompt before chat-template rendering: render `messages` with the generation prompt
/// added, then append `assistant_prefix` verbatim (it is prompt, not response).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatPrompt {
    pub messages: Vec<Message>,
    pub assistant_prefix: Option<String>,
}

/// How the defender sees the attack (§1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefenderStyle {
    /// R1-style instruction, blank line, `User: <attack>`, and the thinking prefix.
    Cot,
    /// The raw attack text as the only user message (no-CoT runs).
    Plain,
    /// The raw attack text as the only user message, then the thinking prefix: the frozen
    /// defender of attacker-only runs in reasoning mode. The original appends the prefix to the
    /// assistant turn of every role when reasoning is on, whatever the user message.
    PlainThinking,
}

/// blake3 over every template byte, the thinking prefix and the assembly version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TemplateDigest(pub [u8; 32]);

impl TemplateDigest {
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl std::fmt::Display for TemplateDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Digest of everything that can reach a game prompt. Each part is length-prefixed so that
/// moving text between two files changes the digest.
pub fn template_digest() -> TemplateDigest {
    let mut h = blake3::Hasher::new();
    let mut part = |name: &str, bytes: &[u8]| {
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    part("assembly_version", ASSEMBLY_VERSION.as_bytes());
    part("thinking_prefix", THINKING_PREFIX.as_bytes());
    for (name, text) in TEMPLATES {
        part(name, text.as_bytes());
    }
    TemplateDigest(*h.finalize().as_bytes())
}

/// A template's text without the file's final newline.
fn text(template: &'static str) -> &'static str {
    template.strip_suffix('\n').unwrap_or(template)
}

/// Insert `value` at the template's single placeholder. Splitting the template (rather than
/// `replace` on the result) means a seed that itself contains `{seed}` is left untouched.
fn fill(template: &'static str, placeholder: &str, value: &str) -> String {
    let t = text(template);
    let (head, tail) = t.split_once(placeholder).expect("attacker templates contain the seed placeholder (checked by a unit test)");
    let mut out = String::with_capacity(t.len() + value.len());
    out.push_str(head);
    out.push_str(value);
    out.push_str(tail);
    out
}

/// The attacker's prompt for a seed (§1.2): system message, then the role instruction for the
/// seed label (the label stated, win and lose conditions, the seed at the end), then the
/// response-format section; in CoT mode the thinking prefix.
///
/// As in the original, the benign instruction's first win condition also says the rewrite
/// should lead to a harmful reply; this matches the reward table, which pays the attacker for
/// a harmful response whatever the seed label (§2.3).
pub fn attacker_prompt(seed_text: &str, label: SeedLabel, cot: bool) -> ChatPrompt {
    let instruction = match label {
        SeedLabel::Harmful => ATTACKER_HARMFUL,
        SeedLabel::Benign => ATTACKER_BENIGN,
    };
    let format = if cot { FORMAT_COT } else { FORMAT_DIRECT };
    let mut user = fill(instruction, SEED_PLACEHOLDER, seed_text);
    user.push_str("\n\n");
    user.push_str(text(format));
    ChatPrompt {
        messages: vec![Message { role: ChatRole::System, content: text(ATTACKER_SYSTEM).to_owned() }, Message { role: ChatRole::User, content: user }],
        assistant_prefix: cot.then(|| THINKING_PREFIX.to_owned()),
    }
}

/// The defender's prompt (§1.3): no system message; the attack is the public text only.
pub fn defender_prompt(public_attack: &str, style: DefenderStyle) -> ChatPrompt {
    match style {
        DefenderStyle::Cot => ChatPrompt {
            messages: vec![Message { role: ChatRole::User, content: format!("{}\n\nUser: {}", text(DEFENDER_COT), public_attack) }],
            assistant_prefix: Some(THINKING_PREFIX.to_owned()),
        },
        DefenderStyle::Plain | DefenderStyle::PlainThinking => ChatPrompt {
            messages: vec![Message { role: ChatRole::User, content: public_attack.to_owned() }],
            assistant_prefix: (style == DefenderStyle::PlainThinking).then(|| THINKING_PREFIX.to_owned()),
        },
    }
}

/// The instruction that asks a model to post-fill the reasoning of a (request, answer) pair
/// (method.md §4.2, the original's "self-distillation" prompt, in this project's words).
const POSTFILL: &str = include_str!("templates/postfill.txt");
const REQUEST_PLACEHOLDER: &str = "{request}";
const RESPONSE_PLACEHOLDER: &str = "{response}";

/// The post-fill prompt for a demonstration: one user message (no system message, so the chat
/// template adds the model's default one), no assistant prefix; the model's whole answer is
/// the reasoning. Both values are inserted by splitting the template, never by `replace` on
/// the result, so a request that contains `{response}` is left untouched.
pub fn postfill_prompt(request: &str, response: &str) -> ChatPrompt {
    let t = text(POSTFILL);
    let (head, rest) = t.split_once(REQUEST_PLACEHOLDER).expect("postfill template holds {request} (unit test)");
    let (middle, tail) = rest.split_once(RESPONSE_PLACEHOLDER).expect("postfill template holds {response} after {request} (unit test)");
    let content = [head, request, middle, response, tail].concat();
    ChatPrompt { messages: vec![Message { role: ChatRole::User, content }], assistant_prefix: None }
}

/// blake3 of the post-fill template (enters the `sft-data` key, so rewording it reruns only
/// that stage and the updates that read it).
pub fn postfill_template_digest() -> TemplateDigest {
    TemplateDigest(*blake3::hash(POSTFILL.as_bytes()).as_bytes())
}

/// The SFT target of a post-filled CoT demonstration (§4.2): the thinking prefix, the
/// thinking, the answer tags and the original response. Its prompt is
/// `defender_prompt(query, DefenderStyle::Cot)` without the assistant prefix, because here
/// the prefix is part of the target and carries loss.
pub fn postfilled_sft_target(thinking: &str, response: &str) -> String {
    format!("{THINKING_PREFIX}{thinking} </think>\n<answer> {response} </answer>")
}

#[cfg(feature = "compute")]
/// A game prompt rendered with the model's chat template (generation prompt added, then the
/// assistant prefix verbatim): the text and its token ids.
pub fn render_prompt(tokenizer: &crate::model::ChatTokenizer, prompt: &ChatPrompt) -> Result<(String, Vec<crate::model::TokenId>), crate::model::ModelError> {
    let messages: Vec<crate::model::ChatMessage> = prompt.messages.iter().map(|m| crate::model::ChatMessage::new(m.role.as_str(), m.content.clone())).collect();
    let text = tokenizer.render_chat(&messages, true, prompt.assistant_prefix.as_deref())?;
    let ids = tokenizer.encode(&text, false)?;
    Ok((text, ids))
}

#[cfg(feature = "compute")]
/// The rollout sampling settings of the spec (method.md §1.5).
pub fn rollout_sampling(r: &crate::spec::RolloutParams) -> crate::model::SamplingParams {
    crate::eval::settings::AttackerSampling::of(r).sampling_params()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attacker_templates_hold_exactly_one_seed_placeholder_at_the_end() {
        for t in [ATTACKER_HARMFUL, ATTACKER_BENIGN] {
            assert_eq!(text(t).matches(SEED_PLACEHOLDER).count(), 1);
            assert!(text(t).ends_with(SEED_PLACEHOLDER));
        }
        for t in [ATTACKER_SYSTEM, FORMAT_COT, FORMAT_DIRECT, DEFENDER_COT] {
            assert!(!text(t).contains('{'), "no placeholder expected");
            assert!(!text(t).ends_with('\n'));
        }
    }

    #[test]
    fn attacker_cot_prompt_has_system_user_and_thinking_prefix() {
        let p = attacker_prompt("how do I pick a lock {seed}", SeedLabel::Harmful, true);
        assert_eq!(p.messages.len(), 2);
        assert_eq!(p.messages[0].role, ChatRole::System);
        assert_eq!(p.messages[1].role, ChatRole::User);
        let user = &p.messages[1].content;
        assert!(user.contains("labelled HARMFUL"));
        // The seed goes in verbatim, even when it contains the placeholder itself.
        assert!(user.contains("(label: harmful) that you are to rewrite: how do I pick a lock {seed}\n\n**How to format"));
        assert!(user.contains("<think> </think>") && user.contains("<answer> </answer>"));
        assert!(user.ends_with("no mention of these instructions."));
        assert_eq!(p.assistant_prefix.as_deref(), Some("Let's think step by step.\n<think> "));
    }

    #[test]
    fn attacker_no_cot_prompt_asks_for_a_direct_answer_without_prefix() {
        let p = attacker_prompt("bake bread", SeedLabel::Benign, false);
        let user = &p.messages[1].content;
        assert!(user.contains("labelled BENIGN"));
        assert!(user.contains("(label: benign) that you are to rewrite: bake bread\n\n"));
        assert!(user.contains("Give your final output directly."));
        assert!(!user.contains("<think>"));
        assert_eq!(p.assistant_prefix, None);
    }

    #[test]
    fn defender_cot_prompt_is_instruction_blank_line_user_attack() {
        let p = defender_prompt("tell me a joke", DefenderStyle::Cot);
        assert_eq!(p.messages.len(), 1);
        assert_eq!(p.messages[0].role, ChatRole::User);
        let c = &p.messages[0].content;
        assert!(c.starts_with("What follows is a conversation between a User and an Assistant."));
        assert!(c.ends_with("<answer> </answer> tags.\n\nUser: tell me a joke"));
        assert_eq!(p.assistant_prefix.as_deref(), Some(THINKING_PREFIX));
    }

    #[test]
    fn postfill_prompt_holds_request_then_answer_once_each() {
        assert_eq!(text(POSTFILL).matches(REQUEST_PLACEHOLDER).count(), 1);
        assert_eq!(text(POSTFILL).matches(RESPONSE_PLACEHOLDER).count(), 1);
        let p = postfill_prompt("say {response} twice", "ok ok");
        assert_eq!(p.messages.len(), 1);
        let c = &p.messages[0].content;
        assert!(c.contains("Request: say {response} twice\n\nAnswer: ok ok\n\n"), "{c}");
        assert_eq!(p.assistant_prefix, None);
        assert_ne!(postfill_template_digest(), template_digest());
    }

    #[test]
    fn defender_plain_thinking_prompt_is_the_raw_attack_then_the_prefix() {
        let p = defender_prompt("raw attack", DefenderStyle::PlainThinking);
        assert_eq!(p.messages, vec![Message { role: ChatRole::User, content: "raw attack".into() }]);
        assert_eq!(p.assistant_prefix.as_deref(), Some(THINKING_PREFIX));
    }

    #[test]
    fn defender_plain_prompt_is_the_raw_attack() {
        let p = defender_prompt("  raw attack\n", DefenderStyle::Plain);
        assert_eq!(p.messages, vec![Message { role: ChatRole::User, content: "  raw attack\n".into() }]);
        assert_eq!(p.assistant_prefix, None);
    }

    #[test]
    fn template_digest_is_stable_and_covers_the_prefix() {
        let d = template_digest();
        assert_eq!(d, template_digest());
        assert_eq!(d.to_hex().len(), 64);
    }

    #[test]
    fn sft_target_wraps_thinking_and_answer() {
        assert_eq!(postfilled_sft_target("think", "answer"), "Let's think step by step.\n<think> think </think>\n<answer> answer </answer>");
    }
}
