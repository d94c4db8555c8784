//! Sampling from a policy outside the training loop: the `generate` verb (`self-redteam generate --model REF|PATH …`,
//! called by src/cli.rs), which resolves a policy from the store (digest-verified) or a path
//! and samples one batch. `terminal_safe` / `write_plain` are how its plain (non-`--json`)
//! output must be printed: model text is untrusted bytes, and escape sequences in it could
//! rewrite the terminal (title, clipboard through OSC 52, cursor moves that hide lines).
use std::borrow::Cow;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::engine::Engine;
use crate::game::{attacker_prompt, defender_prompt, render_prompt, rollout_sampling, DefenderStyle, SeedLabel};
use crate::model::{Policy, TokenId};
use crate::spec::Spec;

pub use crate::cli::GenerateRole;

/// Options of one `generate` call.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub model: String,
    pub role: GenerateRole,
    pub greedy: bool,
    pub max_new_tokens: Option<usize>,
    pub prompts: Vec<String>,
}

/// One generated answer (`--json` prints a list of these).
#[derive(Debug, Clone, Serialize)]
pub struct Generated {
    pub prompt: String,
    /// The rendered prompt the model saw.
    pub rendered_prompt: String,
    pub prompt_ids: Vec<TokenId>,
    pub output: String,
    pub token_ids: Vec<TokenId>,
    /// log π(token) at temperature 1 (see model::sampler).
    pub logprobs: Vec<f32>,
    pub finished_by_stop: bool,
}

/// Where `--model` points: an existing path (GGUF file or HF dir) or a store REF.
fn resolve_model(spec: &Spec, store_root: &Path, iterations: Option<u32>, model: &str) -> Result<PathBuf> {
    let p = Path::new(model);
    if p.exists() {
        return Ok(p.to_path_buf());
    }
    let plan = crate::plan::Plan::new(spec, iterations);
    let engine = Engine::new(spec, plan, crate::store::Store::at(store_root));
    let a = engine.find(model).with_context(|| format!("--model {model:?} is neither a path nor a store REF"))?;
    for f in crate::model::POLICY_FILES {
        a.verify_file(f).with_context(|| format!("{} ({}) is not a usable policy artifact", a.manifest.node, a.manifest.stage))?;
    }
    Ok(a.dir.clone())
}

/// Load the model and sample one batch (one row per prompt).
pub fn generate(spec: &Spec, store_root: &Path, iterations: Option<u32>, opts: &GenerateOptions) -> Result<Vec<Generated>> {
    if opts.prompts.is_empty() {
        bail!("generate needs at least one PROMPT");
    }
    tch::set_num_threads(spec.raw.run.threads as i32);
    let path = resolve_model(spec, store_root, iterations, &opts.model)?;
    let policy = Policy::load(&path, crate::model::tch_device(spec.raw.run.device), crate::model::tch_kind(spec.raw.base.dtype))
        .with_context(|| format!("load model {}", path.display()))?;
    let cot = spec.raw.rollout.cot;
    let mut rendered = Vec::new();
    for p in &opts.prompts {
        let chat = match opts.role {
            GenerateRole::Attacker => attacker_prompt(p, SeedLabel::Harmful, cot),
            GenerateRole::Defender => defender_prompt(p, if cot { DefenderStyle::Cot } else { DefenderStyle::Plain }),
            GenerateRole::Plain => defender_prompt(p, DefenderStyle::Plain),
        };
        rendered.push(render_prompt(policy.tokenizer(), &chat)?);
    }
    let mut params = rollout_sampling(&spec.raw.rollout);
    if opts.greedy {
        params.temperature = 0.0;
    }
    if let Some(n) = opts.max_new_tokens {
        params.max_new_tokens = n;
    }
    // Row i is seeded from (run seed, i): the same command gives the same samples.
    let seeds: Vec<u64> = (0..opts.prompts.len() as u64).map(|i| spec.raw.run.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(i)).collect();
    let ids: Vec<Vec<TokenId>> = rendered.iter().map(|(_, ids)| ids.clone()).collect();
    let samples = policy.generate(&ids, &seeds, &params)?;
    Ok(opts
        .prompts
        .iter()
        .zip(rendered)
        .zip(samples)
        .map(|((prompt, (text, ids)), s)| Generated {
            prompt: prompt.clone(),
            rendered_prompt: text,
            prompt_ids: ids,
            output: s.text,
            token_ids: s.token_ids,
            logprobs: s.logprobs,
            finished_by_stop: s.finished_by_stop,
        })
        .collect())
}

/// `text` with terminal control sequences removed, for printing model output to a terminal:
/// ESC sequences (CSI `ESC [ … final`, OSC `ESC ] … BEL|ST`, DCS/SOS/PM/APC `ESC P|X|^|_ … ST`,
/// and two-byte `ESC x`), the 8-bit C1 forms of the same (U+0080–U+009F; U+009B CSI and
/// U+009D OSC take their parameters with them), every other C0 control except `\n` and `\t`
/// (so `\r` cannot overwrite a line), and DEL. Printable text, including all non-ASCII
/// letters, is kept as is. `--json` prints the raw text instead (JSON escapes controls).
pub fn terminal_safe(text: &str) -> Cow<'_, str> {
    let is_control = |c: char| (c.is_control() && c != '\n' && c != '\t') || ('\u{80}'..='\u{9f}').contains(&c);
    if !text.chars().any(is_control) {
        return Cow::Borrowed(text);
    }
    /// Where the scanner is inside an escape sequence.
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        Text,
        /// After ESC.
        Escape,
        /// ESC followed by intermediate bytes (0x20–0x2F), waiting for the final byte.
        EscapeIntermediate,
        /// Inside CSI parameters, waiting for the final byte (0x40–0x7E).
        Csi,
        /// Inside a string (OSC, DCS, SOS, PM, APC), until BEL or ST.
        Str,
        /// ESC seen inside a string: `\` ends it (ST).
        StrEscape,
    }
    let mut out = String::with_capacity(text.len());
    let mut state = State::Text;
    for c in text.chars() {
        state = match state {
            State::Text => match c {
                '\u{1b}' => State::Escape,
                '\u{9b}' => State::Csi,
                '\u{90}' | '\u{98}' | '\u{9d}' | '\u{9e}' | '\u{9f}' => State::Str,
                c if is_control(c) => State::Text,
                c => {
                    out.push(c);
                    State::Text
                }
            },
            State::Escape => match c {
                '[' => State::Csi,
                ']' | 'P' | 'X' | '^' | '_' => State::Str,
                '\u{20}'..='\u{2f}' => State::EscapeIntermediate,
                // ESC ESC: the second one starts a new sequence.
                '\u{1b}' => State::Escape,
                _ => State::Text,
            },
            State::EscapeIntermediate => match c {
                '\u{20}'..='\u{2f}' => State::EscapeIntermediate,
                _ => State::Text,
            },
            State::Csi => match c {
                '\u{40}'..='\u{7e}' => State::Text,
                '\u{1b}' => State::Escape,
                // A newline ends a runaway sequence, so one stray ESC [ cannot eat the rest.
                '\n' => {
                    out.push('\n');
                    State::Text
                }
                _ => State::Csi,
            },
            State::Str => match c {
                '\u{7}' | '\u{9c}' => State::Text,
                '\u{1b}' => State::StrEscape,
                _ => State::Str,
            },
            State::StrEscape => match c {
                '\\' => State::Text,
                '\u{1b}' => State::StrEscape,
                _ => State::Str,
            },
        };
    }
    Cow::Owned(out)
}

/// Print `generated` as plain text, one output per line, through `terminal_safe` (what
/// `generate` prints without `--json`).
pub fn write_plain(out: &mut impl Write, generated: &[Generated]) -> std::io::Result<()> {
    for g in generated {
        writeln!(out, "{}", terminal_safe(&g.output))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::terminal_safe;

    #[test]
    fn terminal_safe_strips_escape_sequences_and_controls_but_keeps_text() {
        let cases = [
            ("plain\ttext\nnext line, ünïcödé ✓", "plain\ttext\nnext line, ünïcödé ✓"),
            ("\u{1b}[31mred\u{1b}[0m", "red"),
            ("\u{1b}[2J\u{1b}[1;1Hcleared", "cleared"),
            ("\u{1b}]0;evil title\u{7}after", "after"),
            ("\u{1b}]52;c;ZXZpbA==\u{1b}\\clip", "clip"),
            ("\u{1b}P1$r\u{1b}\\dcs", "dcs"),
            ("over\rwrite", "overwrite"),
            ("bell\u{7} back\u{8}space del\u{7f}", "bell backspace del"),
            ("\u{9b}31mc1 csi", "c1 csi"),
            ("\u{9d}0;t\u{9c}c1 osc", "c1 osc"),
            ("\u{85}nel", "nel"),
            ("\u{1b}(Bcharset", "charset"),
            ("\u{1b}7saved\u{1b}8", "saved"),
            ("runaway \u{1b}[12;\nnext", "runaway \nnext"),
            ("trailing \u{1b}", "trailing "),
            ("\u{1b}]unterminated osc", ""),
        ];
        for (input, want) in cases {
            assert_eq!(terminal_safe(input), want, "{input:?}");
        }
        assert!(matches!(terminal_safe("no controls"), std::borrow::Cow::Borrowed(_)));
    }
}
