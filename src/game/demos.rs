//! Helpers for the SFT term's demonstrations (stages/sft_data.rs, method.md §3.1 step 6):
//! which reference answers fit the token budget and where a long one is cut, and the tags a
//! demonstration may not contain; which (request, answer) pairs are candidates, and how a
//! post-filled reasoning becomes a demonstration row or is rejected.
use std::collections::HashSet;

use super::{cot_format_check_and_extract, defender_prompt, postfilled_sft_target, render_prompt, ChatPrompt, DefenderStyle, THINKING_PREFIX};
use crate::model::ChatTokenizer;
use crate::schema::sft_demos::SftDemoRow;

/// Tags that may not appear inside a post-filled reasoning or a reference answer.
pub const TAGS: [&str; 4] = ["<think>", "</think>", "<answer>", "</answer>"];

/// The reference answer within `max_tokens`: whole, or its longest run of leading paragraphs
/// (split on blank lines) that fits; `None` when not even the first paragraph fits. A cut is
/// only taken where every code fence (```) it opened is closed again (blank lines also occur
/// inside code), and never after a colon (that announces a list that was cut away).
pub fn fit_response(tokenizer: &ChatTokenizer, response: &str, max_tokens: usize) -> anyhow::Result<Option<(String, bool)>> {
    fit_response_by(|t| Ok(tokenizer.encode(t, false)?.len()), response, max_tokens)
}

/// [`fit_response`] with any token counter.
pub fn fit_response_by(count: impl Fn(&str) -> anyhow::Result<usize>, response: &str, max_tokens: usize) -> anyhow::Result<Option<(String, bool)>> {
    let whole = response.trim();
    if count(whole)? <= max_tokens {
        return Ok(Some((whole.to_string(), false)));
    }
    let paragraphs: Vec<&str> = whole.split("\n\n").collect();
    let mut best = None;
    for n in 1..paragraphs.len() {
        let head = paragraphs[..n].join("\n\n");
        let head = head.trim();
        if count(head)? > max_tokens {
            break;
        }
        let fences_closed = head.matches("```").count().is_multiple_of(2);
        if !head.is_empty() && !head.ends_with(':') && fences_closed {
            best = Some((head.to_string(), true));
        }
    }
    Ok(best)
}

/// A (request, reference answer) pair that may become a demonstration.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// 1-based position in the (shuffled) source: seeds the candidate's own draw.
    pub row: u64,
    pub prompt_id: String,
    pub request: String,
    /// The answer, whole or cut by [`fit_response`].
    pub response: String,
    pub cut: bool,
}

/// Why pairs did not become candidates.
#[derive(Debug, Clone, Copy, Default)]
pub struct Dropped {
    /// The request is an eval or held-out prompt of the dataset.
    pub eval_overlap: usize,
    /// Not even the answer's first paragraph fits the budget.
    pub too_long: usize,
    /// The request or answer holds one of the [`TAGS`].
    pub tagged: usize,
}

/// The candidates among `pairs` (in their order): none whose request id is in `held_out`, none
/// holding a tag, each answer fitted to `max_response_tokens`.
pub fn candidates(
    pairs: &[crate::data::LabelledResponse],
    held_out: &HashSet<&str>,
    tokenizer: &ChatTokenizer,
    max_response_tokens: usize,
) -> anyhow::Result<(Vec<Candidate>, Dropped)> {
    let mut dropped = Dropped::default();
    let mut out = Vec::new();
    for (i, pair) in pairs.iter().enumerate() {
        let pid = crate::data::prompt_id(&pair.prompt);
        if held_out.contains(pid.as_str()) {
            dropped.eval_overlap += 1;
            continue;
        }
        if TAGS.iter().any(|t| pair.prompt.contains(t) || pair.response.contains(t)) {
            dropped.tagged += 1;
            continue;
        }
        match fit_response(tokenizer, &pair.response, max_response_tokens)? {
            Some((response, cut)) => out.push(Candidate { row: i as u64 + 1, prompt_id: pid, request: pair.prompt.trim().to_string(), response, cut }),
            None => dropped.too_long += 1,
        }
    }
    Ok((out, dropped))
}

/// Why a post-filled reasoning was not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// The reasoning did not stop by itself within its token budget.
    NotStopped,
    /// Empty, holding a tag, or the joined target does not parse with the reference answer as
    /// its answer.
    Malformed,
}

/// The demonstration for `c` from a sampled reasoning (`text`, and whether the sampler stopped
/// by itself): the target is the thinking prefix, the reasoning, the answer in tags and the
/// end-of-turn token; the prompt is the defender's reasoning-mode prompt without the prefix.
pub fn demonstration(tokenizer: &ChatTokenizer, c: &Candidate, text: &str, stopped: bool) -> anyhow::Result<Result<SftDemoRow, Rejected>> {
    let thinking = super::cot::py_strip(text).to_string();
    if !stopped {
        return Ok(Err(Rejected::NotStopped));
    }
    let target_text = postfilled_sft_target(&thinking, &c.response);
    // The parser sees what the policy would generate: the target without the prefix.
    let parsed = cot_format_check_and_extract(target_text.strip_prefix(THINKING_PREFIX).unwrap_or(&target_text));
    if thinking.is_empty() || TAGS.iter().any(|t| thinking.contains(t)) || parsed.violation || parsed.answer != c.response {
        return Ok(Err(Rejected::Malformed));
    }
    let dprompt = defender_prompt(&c.request, DefenderStyle::Cot);
    let (prompt_text, prompt_ids) = render_prompt(tokenizer, &ChatPrompt { assistant_prefix: None, ..dprompt })?;
    let mut target_ids = tokenizer.encode(&target_text, false)?;
    target_ids.push(tokenizer.eos_id());
    Ok(Ok(SftDemoRow {
        prompt_id: c.prompt_id.clone(),
        request: c.request.clone(),
        response: c.response.clone(),
        cut: c.cut,
        thinking,
        prompt_text,
        target_text,
        prompt_ids,
        target_ids,
    }))
}

#[cfg(test)]
mod tests {
    use super::fit_response_by;

    fn words(t: &str) -> anyhow::Result<usize> {
        Ok(t.split_whitespace().count())
    }

    #[test]
    fn a_fitting_answer_is_kept_whole() {
        assert_eq!(fit_response_by(words, "  one two\n\nthree  ", 3).expect("fits"), Some(("one two\n\nthree".into(), false)));
    }

    #[test]
    fn a_long_answer_is_cut_after_its_last_fitting_paragraph() {
        let r = "a b\n\nc d\n\ne f g h";
        assert_eq!(fit_response_by(words, r, 5).expect("fits"), Some(("a b\n\nc d".into(), true)));
        assert_eq!(fit_response_by(words, r, 1).expect("fits"), None);
    }

    #[test]
    fn a_cut_never_ends_on_a_colon() {
        assert_eq!(fit_response_by(words, "Intro.\n\nSteps:\n\n1 2 3 4 5", 3).expect("fits"), Some(("Intro.".into(), true)));
    }

    #[test]
    fn a_cut_never_leaves_a_code_fence_open() {
        // The blank line inside the code block is not a place to cut.
        let r = "Here is code.\n\n```python\nx = 1\n\ny = 2\n```\n\nMore words after the block here";
        assert_eq!(fit_response_by(words, r, 11).expect("fits"), Some(("Here is code.\n\n```python\nx = 1\n\ny = 2\n```".into(), true)));
        assert_eq!(fit_response_by(words, r, 7).expect("fits"), Some(("Here is code.".into(), true)));
    }
}
