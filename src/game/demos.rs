//! Helpers for the SFT term's demonstrations (stages/sft_data.rs, method.md §3.1 step 6):
//! which reference answers fit the token budget and where a long one is cut, and the tags a
//! demonstration may not contain.
use crate::model::ChatTokenizer;

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
