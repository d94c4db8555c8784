//! Hidden-CoT parsing (method.md §1.4, `cot_format_check_and_extract` of the original) and the
//! eval-time answer extraction (§5.1). Called by the rollout stage on every sampled turn, and
//! by the eval suites on every benchmark output. Only the returned public text may travel on
//! to the opponent or the judge; the raw text is for logging.
//!
//! Whitespace follows Python's `str.strip()` / `re` `\s` (the original is Python): that set is
//! Unicode White_Space plus U+001C..U+001F, which Rust's `trim()` does not strip.
use serde::{Deserialize, Serialize};

const THINK_OPEN: &str = "<think>";
const THINK_CLOSE: &str = "</think>";
const ANSWER_OPEN: &str = "<answer>";
const ANSWER_CLOSE: &str = "</answer>";

/// Python's `str.isspace()` for one character.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip()` with no argument.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// One well-formedness rule of §1.4; a response is well-formed when none is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CotRule {
    /// There is a `</think>` and the stripped text before the first one is non-empty.
    ThinkingNonEmpty,
    /// `<answer>\s*(.*?)\s*</answer>` matches and the captured answer is non-empty.
    AnswerNonEmpty,
    /// The literal `<think>` never appears (it is in the prompt, not the response).
    NoThinkOpenTag,
    /// `</think>`, `<answer>`, `</answer>` each occur exactly once.
    TagsExactlyOnce,
    /// `0 < pos(</think>) < pos(<answer>) < pos(</answer>)`.
    TagOrder,
    /// Only whitespace between `</think>` and `<answer>`.
    NothingBetweenThinkAndAnswer,
    /// The stripped response ends with `</answer>`.
    EndsWithAnswerClose,
}

/// Where the public answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerSource {
    /// Every rule holds; `thinking` is set.
    WellFormed,
    /// Some rule broke but the answer regex matched: `(None, answer)`.
    AnswerTagFallback,
    /// Nothing matched: the whole raw response is the "answer" (the private CoT leaks).
    WholeResponseFallback,
}

/// Result of `cot_format_check_and_extract`: `((thinking, answer), violation)` of the original,
/// plus the rules that broke.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParsedResponse {
    pub thinking: Option<String>,
    pub answer: String,
    pub violation: bool,
    pub source: AnswerSource,
    pub broken_rules: Vec<CotRule>,
}

/// First `<answer>` ... first following `</answer>`, stripped: the same span as the original's
/// non-greedy, dot-all `<answer>\s*(.*?)\s*</answer>` search (the `\s*` around the group only
/// move whitespace that the following `.strip()` removes anyway).
fn answer_regex(response: &str) -> Option<&str> {
    let open = response.find(ANSWER_OPEN)?;
    let body_start = open + ANSWER_OPEN.len();
    let close = response[body_start..].find(ANSWER_CLOSE)?;
    Some(py_strip(&response[body_start..body_start + close]))
}

/// §1.4, exactly: the response (decoded, special tokens skipped; the `<think>` prefix is in the
/// prompt) is well-formed only when every `CotRule` holds. On any violation the answer regex is
/// tried anyway: a match gives `(None, answer)`, otherwise the whole raw response is returned.
/// Both fallbacks set `violation`.
///
/// The original has one more branch (text after `</answer>` → `(thinking, answer)` with the
/// violation flag); it is unreachable, because `</answer>` occurring once and the stripped
/// response ending with it already leave only whitespace after it.
pub fn cot_format_check_and_extract(response: &str) -> ParsedResponse {
    let think_end = response.find(THINK_CLOSE);
    let thinking = think_end.map(|p| py_strip(&response[..p]));
    let answer = answer_regex(response);

    let mut broken = Vec::new();
    if thinking.is_none_or(str::is_empty) {
        broken.push(CotRule::ThinkingNonEmpty);
    }
    if answer.is_none_or(str::is_empty) {
        broken.push(CotRule::AnswerNonEmpty);
    }
    if response.contains(THINK_OPEN) {
        broken.push(CotRule::NoThinkOpenTag);
    }
    let once = |tag: &str| response.matches(tag).count() == 1;
    if !(once(THINK_CLOSE) && once(ANSWER_OPEN) && once(ANSWER_CLOSE)) {
        broken.push(CotRule::TagsExactlyOnce);
    }
    // Python's `find` gives -1 for a missing tag; a missing tag breaks the order rule too.
    let pos = |tag: &str| response.find(tag);
    let (te, ao, ac) = (pos(THINK_CLOSE), pos(ANSWER_OPEN), pos(ANSWER_CLOSE));
    let ordered = match (te, ao, ac) {
        (Some(te), Some(ao), Some(ac)) => 0 < te && te < ao && ao < ac,
        _ => false,
    };
    if !ordered {
        broken.push(CotRule::TagOrder);
    }
    if let (Some(te), Some(ao)) = (te, ao) {
        let between_start = te + THINK_CLOSE.len();
        // Python slicing of an empty/backwards range is "", which strips to "".
        let between = if between_start <= ao { &response[between_start..ao] } else { "" };
        if !py_strip(between).is_empty() {
            broken.push(CotRule::NothingBetweenThinkAndAnswer);
        }
    }
    if !py_strip(response).ends_with(ANSWER_CLOSE) {
        broken.push(CotRule::EndsWithAnswerClose);
    }

    match (broken.is_empty(), thinking, answer) {
        (true, Some(t), Some(a)) => {
            ParsedResponse { thinking: Some(t.to_owned()), answer: a.to_owned(), violation: false, source: AnswerSource::WellFormed, broken_rules: broken }
        }
        (_, _, Some(a)) => {
            ParsedResponse { thinking: None, answer: a.to_owned(), violation: true, source: AnswerSource::AnswerTagFallback, broken_rules: broken }
        }
        (_, _, None) => {
            ParsedResponse { thinking: None, answer: response.to_owned(), violation: true, source: AnswerSource::WholeResponseFallback, broken_rules: broken }
        }
    }
}

/// What a turn contributes to the game: the public text and the format flag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicTurn {
    /// The stripped text the opponent and the judge see.
    pub text: String,
    /// The hidden thinking of a well-formed CoT turn (logging only).
    pub thinking: Option<String>,
    /// `Some(violation)` in CoT mode; `None` without CoT (no format term then).
    pub violation: Option<bool>,
    pub source: Option<AnswerSource>,
}

/// The public part of a sampled turn, as the original stores it in the game history: the
/// parsed answer (CoT) or the whole response (no CoT), stripped. In CoT mode the parser runs
/// on every sampled turn, including the frozen defender's plain-template answers in
/// attacker-only runs (those usually have no tags, so their whole text is public).
pub fn public_text(raw_response: &str, cot: bool) -> PublicTurn {
    if cot {
        let p = cot_format_check_and_extract(raw_response);
        PublicTurn { text: py_strip(&p.answer).to_owned(), thinking: p.thinking, violation: Some(p.violation), source: Some(p.source) }
    } else {
        PublicTurn { text: py_strip(raw_response).to_owned(), thinking: None, violation: None, source: None }
    }
}

/// §5.1 eval-time extraction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvalAnswer {
    pub text: String,
    /// Whether the answer regex matched (false = "violation" in the eval fork's count).
    pub tagged: bool,
}

/// Eval-time answer extraction of the safety-eval fork (§5.1): if `<answer>` is present and the
/// output does not end with `</answer>`, append `" </answer>"`; then take the first
/// `<answer>\s*(.*?)\s*</answer>` match, stripped; with no match keep the full output as is.
/// (Token truncation to the task's answer length is the caller's, it needs the tokenizer.)
pub fn eval_extract_answer(output: &str) -> EvalAnswer {
    let mut o = output.to_owned();
    if o.contains(ANSWER_OPEN) && !o.ends_with(ANSWER_CLOSE) {
        o.push_str(" </answer>");
    }
    match answer_regex(&o) {
        Some(a) => EvalAnswer { text: a.to_owned(), tagged: true },
        None => EvalAnswer { text: output.to_owned(), tagged: false },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> ParsedResponse {
        cot_format_check_and_extract(s)
    }

    #[test]
    fn well_formed_response_yields_thinking_and_answer() {
        let p = parse("  plan the reply \n</think>\n<answer>  final text \n</answer>\n ");
        assert_eq!(p.thinking.as_deref(), Some("plan the reply"));
        assert_eq!(p.answer, "final text");
        assert!(!p.violation);
        assert_eq!(p.source, AnswerSource::WellFormed);
        assert!(p.broken_rules.is_empty());
    }

    #[test]
    fn multiline_answer_is_captured_across_lines() {
        let p = parse("t</think><answer>line one\nline two</answer>");
        assert_eq!(p.answer, "line one\nline two");
        assert!(!p.violation);
    }

    #[test]
    fn empty_thinking_is_a_violation_with_answer_fallback() {
        let p = parse("   </think> <answer>a</answer>");
        assert_eq!(p.broken_rules, vec![CotRule::ThinkingNonEmpty]);
        assert_eq!((p.thinking, p.answer.as_str(), p.violation), (None, "a", true));
        assert_eq!(p.source, AnswerSource::AnswerTagFallback);
    }

    #[test]
    fn empty_answer_is_a_violation_and_returns_the_empty_answer() {
        let p = parse("t</think><answer>  \n </answer>");
        assert_eq!(p.broken_rules, vec![CotRule::AnswerNonEmpty]);
        assert_eq!((p.answer.as_str(), p.source), ("", AnswerSource::AnswerTagFallback));
        assert!(p.violation);
    }

    #[test]
    fn literal_think_open_tag_is_a_violation() {
        let p = parse("<think> t</think><answer>a</answer>");
        assert_eq!(p.broken_rules, vec![CotRule::NoThinkOpenTag]);
        assert_eq!((p.thinking.as_deref(), p.answer.as_str()), (None, "a"));
        assert!(p.violation);
    }

    #[test]
    fn repeated_tags_are_a_violation_and_the_first_answer_wins() {
        let p = parse("t</think><answer>a</answer> x </think><answer>b</answer>");
        assert!(p.broken_rules.contains(&CotRule::TagsExactlyOnce));
        assert_eq!(p.answer, "a");
        assert!(p.violation);
        let p = parse("t</think></think><answer>a</answer>");
        assert!(p.broken_rules.contains(&CotRule::TagsExactlyOnce));
        assert_eq!(p.source, AnswerSource::AnswerTagFallback);
    }

    #[test]
    fn answer_before_think_close_breaks_the_order() {
        let p = parse("t<answer>a</answer></think>");
        assert!(p.broken_rules.contains(&CotRule::TagOrder));
        assert!(p.broken_rules.contains(&CotRule::EndsWithAnswerClose));
        assert_eq!((p.answer.as_str(), p.violation), ("a", true));
    }

    #[test]
    fn think_close_at_position_zero_breaks_the_order() {
        let p = parse("</think><answer>a</answer>");
        assert!(p.broken_rules.contains(&CotRule::TagOrder));
        assert!(p.broken_rules.contains(&CotRule::ThinkingNonEmpty));
    }

    #[test]
    fn text_between_think_and_answer_is_a_violation() {
        let p = parse("t</think> so: <answer>a</answer>");
        assert_eq!(p.broken_rules, vec![CotRule::NothingBetweenThinkAndAnswer]);
        assert_eq!((p.answer.as_str(), p.violation), ("a", true));
    }

    #[test]
    fn text_after_answer_close_is_a_violation() {
        let p = parse("t</think><answer>a</answer> trailing");
        assert_eq!(p.broken_rules, vec![CotRule::EndsWithAnswerClose]);
        assert_eq!((p.thinking, p.answer.as_str(), p.violation), (None, "a", true));
    }

    #[test]
    fn missing_think_close_falls_back_to_the_answer_tag() {
        let p = parse("reasoning without a close <answer> the answer </answer>");
        assert!(p.broken_rules.contains(&CotRule::ThinkingNonEmpty));
        assert_eq!((p.answer.as_str(), p.source), ("the answer", AnswerSource::AnswerTagFallback));
    }

    #[test]
    fn no_answer_tag_leaks_the_whole_raw_response() {
        let raw = "  my private plan</think> and then the attack text\n";
        let p = parse(raw);
        assert_eq!(p.answer, raw);
        assert_eq!((p.thinking, p.violation), (None, true));
        assert_eq!(p.source, AnswerSource::WholeResponseFallback);
        // Unclosed answer tag also finds no match.
        let raw = "plan</think><answer>cut off";
        assert_eq!(parse(raw).answer, raw);
        assert_eq!(parse(raw).source, AnswerSource::WholeResponseFallback);
    }

    #[test]
    fn whitespace_is_python_whitespace() {
        // U+001F is whitespace for Python's strip but not for Rust's trim.
        let p = parse("\u{1f}t\u{1f}</think><answer>\u{1f}a\u{1f}</answer>\u{1f}");
        assert_eq!(p.thinking.as_deref(), Some("t"));
        assert_eq!(p.answer, "a");
        assert!(!p.violation);
    }

    #[test]
    fn public_text_is_the_stripped_answer_or_whole_response() {
        let t = public_text("t</think><answer> hi </answer>", true);
        assert_eq!((t.text.as_str(), t.violation), ("hi", Some(false)));
        let t = public_text("  no tags at all \n", true);
        assert_eq!((t.text.as_str(), t.violation), ("no tags at all", Some(true)));
        let t = public_text("  direct <answer>x</answer> ", false);
        assert_eq!((t.text.as_str(), t.violation), ("direct <answer>x</answer>", None));
    }

    #[test]
    fn eval_extraction_closes_an_unclosed_answer_tag() {
        let a = eval_extract_answer("t</think><answer> partial answer");
        assert_eq!(a, EvalAnswer { text: "partial answer".into(), tagged: true });
    }

    #[test]
    fn eval_extraction_takes_the_first_closed_answer() {
        let a = eval_extract_answer("t</think><answer> one </answer> tail");
        assert_eq!(a.text, "one");
        assert!(a.tagged);
    }

    #[test]
    fn eval_extraction_without_tag_keeps_the_full_output() {
        let a = eval_extract_answer("  plain output ");
        assert_eq!(a, EvalAnswer { text: "  plain output ".into(), tagged: false });
    }
}
