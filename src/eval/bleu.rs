//! Sentence BLEU exactly as sacreBLEU 2.x `sentence_bleu(hyp, refs)` with its defaults
//! (13a tokenizer, 4-gram, smooth_method="exp", use_effective_order=True), and Self-BLEU
//! diversity as in Self-RedTeam `utils/self_bleu.py`. Called by the `eval` stage and the
//! RL diversity monitors. Golden: `scripts/golden_eval.py` (sacreBLEU 2.6.0).
//!
//! Reference code mirrored line by line: `sacrebleu/tokenizers/tokenizer_13a.py`,
//! `tokenizer_re.py`, `metrics/bleu.py` (`_get_closest_ref_len`,
//! `_extract_reference_info`, `_compute_segment_statistics`, `compute_bleu`),
//! `metrics/helpers.py` (`extract_all_word_ngrams`).

use std::collections::HashMap;
use std::sync::OnceLock;

use regex::Regex;

const MAX_NGRAM_ORDER: usize = 4;

/// Python's `str.isspace` set (Unicode White_Space plus the ASCII separators
/// \x1c–\x1f, which Python counts as whitespace and Rust does not).
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_py_space).filter(|t| !t.is_empty())
}

struct Rules {
    punct: Regex,
    period_comma_after_nondigit: Regex,
    period_comma_before_nondigit: Regex,
    dash_after_digit: Regex,
}

fn rules() -> &'static Rules {
    static R: OnceLock<Rules> = OnceLock::new();
    R.get_or_init(|| Rules {
        // Python: r'([\{-\~\[-\` -\&\(-\+\:-\@\/])' → ' \1 '
        punct: Regex::new(r"([\{-~\[-`\x20-&\(-\+:-@/])").expect("static regex"),
        // r'([^0-9])([\.,])' → r'\1 \2 '
        period_comma_after_nondigit: Regex::new(r"([^0-9])([\.,])").expect("static regex"),
        // r'([\.,])([^0-9])' → r' \1 \2'
        period_comma_before_nondigit: Regex::new(r"([\.,])([^0-9])").expect("static regex"),
        // r'([0-9])(-)' → r'\1 \2 '
        dash_after_digit: Regex::new(r"([0-9])(-)").expect("static regex"),
    })
}

/// sacreBLEU's `13a` tokenizer applied to `line.rstrip()` (as `_preprocess_segment` does);
/// returns the tokens.
pub fn tokenize_13a(line: &str) -> Vec<String> {
    let mut line = line.trim_end_matches(is_py_space).to_string();
    line = line.replace("<skipped>", "").replace("-\n", "").replace('\n', " ");
    if line.contains('&') {
        line = line.replace("&quot;", "\"").replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">");
    }
    let line = format!(" {line} ");
    let r = rules();
    let line = r.punct.replace_all(&line, " ${1} ");
    let line = r.period_comma_after_nondigit.replace_all(&line, "${1} ${2} ");
    let line = r.period_comma_before_nondigit.replace_all(&line, " ${1} ${2}");
    let line = r.dash_after_digit.replace_all(&line, "${1} ${2} ");
    py_split(&line).map(str::to_string).collect()
}

type Ngrams = HashMap<Vec<String>, usize>;

fn ngram_counts(tokens: &[String]) -> Ngrams {
    let mut counts = Ngrams::new();
    for n in 1..=MAX_NGRAM_ORDER {
        if tokens.len() >= n {
            for w in tokens.windows(n) {
                *counts.entry(w.to_vec()).or_insert(0) += 1;
            }
        }
    }
    counts
}

/// References pre-processed once (n-gram counts merged by max, lengths kept).
pub struct References {
    ngrams: Ngrams,
    lens: Vec<usize>,
}

impl References {
    pub fn new<S: AsRef<str>>(refs: &[S]) -> Self {
        let mut ngrams = Ngrams::new();
        let mut lens = Vec::with_capacity(refs.len());
        for r in refs {
            let toks = tokenize_13a(r.as_ref());
            lens.push(toks.len());
            for (g, c) in ngram_counts(&toks) {
                let e = ngrams.entry(g).or_insert(0);
                *e = (*e).max(c);
            }
        }
        Self { ngrams, lens }
    }
}

fn closest_ref_len(hyp_len: usize, ref_lens: &[usize]) -> usize {
    let mut best: Option<(usize, usize)> = None; // (diff, len)
    for &r in ref_lens {
        let diff = hyp_len.abs_diff(r);
        best = match best {
            None => Some((diff, r)),
            Some((d, _)) if diff < d => Some((diff, r)),
            Some((d, l)) if diff == d && r < l => Some((d, r)),
            keep => keep,
        };
    }
    best.map_or(0, |(_, l)| l)
}

/// `my_log` of sacreBLEU: log(0) is a large negative number, not -inf.
fn my_log(x: f64) -> f64 {
    if x == 0.0 {
        -9_999_999_999.0
    } else {
        x.ln()
    }
}

/// sacreBLEU `compute_bleu` with smooth_method="exp", effective_order=True; 0..=100.
fn compute_bleu(correct: &[usize; MAX_NGRAM_ORDER], total: &[usize; MAX_NGRAM_ORDER], sys_len: usize, ref_len: usize) -> f64 {
    let mut bp = 1.0;
    if sys_len < ref_len {
        bp = if sys_len > 0 { (1.0 - ref_len as f64 / sys_len as f64).exp() } else { 0.0 };
    }
    let mut precisions = [0.0_f64; MAX_NGRAM_ORDER];
    if correct.iter().all(|&c| c == 0) {
        return 0.0;
    }
    let mut smooth_mteval = 1.0_f64;
    let mut eff_order = MAX_NGRAM_ORDER;
    for n in 1..=MAX_NGRAM_ORDER {
        if total[n - 1] == 0 {
            break;
        }
        eff_order = n;
        if correct[n - 1] == 0 {
            smooth_mteval *= 2.0;
            precisions[n - 1] = 100.0 / (smooth_mteval * total[n - 1] as f64);
        } else {
            precisions[n - 1] = 100.0 * correct[n - 1] as f64 / total[n - 1] as f64;
        }
    }
    // Python sums the list left to right, then divides.
    let mut s = 0.0;
    for p in &precisions[..eff_order] {
        s += my_log(*p);
    }
    bp * (s / eff_order as f64).exp()
}

/// Sentence BLEU (0..=100) of `hyp` against pre-processed references.
pub fn sentence_bleu_with(hyp: &str, refs: &References) -> f64 {
    let toks = tokenize_13a(hyp);
    bleu_of_counts(&ngram_counts(&toks), toks.len(), refs)
}

fn bleu_of_counts(hyp: &Ngrams, hyp_len: usize, refs: &References) -> f64 {
    let ref_len = closest_ref_len(hyp_len, &refs.lens);
    let mut correct = [0usize; MAX_NGRAM_ORDER];
    let mut total = [0usize; MAX_NGRAM_ORDER];
    for (g, &c) in hyp {
        let n = g.len() - 1;
        total[n] += c;
        if let Some(&rc) = refs.ngrams.get(g) {
            correct[n] += c.min(rc);
        }
    }
    compute_bleu(&correct, &total, hyp_len, ref_len)
}

/// `sacrebleu.sentence_bleu(hyp, refs).score` (0..=100).
pub fn sentence_bleu<S: AsRef<str>>(hyp: &str, refs: &[S]) -> f64 {
    sentence_bleu_with(hyp, &References::new(refs))
}

/// Per-text BLEU against all other texts of the set (0..=100 each). Each text is
/// tokenised once; the references of text i are the max-merged n-gram counts of all j ≠ i
/// (the same statistics sacreBLEU builds from the raw strings).
pub fn self_bleu_scores<S: AsRef<str>>(texts: &[S]) -> Vec<f64> {
    let counted: Vec<(Ngrams, usize)> = texts
        .iter()
        .map(|t| {
            let toks = tokenize_13a(t.as_ref());
            (ngram_counts(&toks), toks.len())
        })
        .collect();
    (0..counted.len())
        .map(|i| {
            let mut refs = References { ngrams: Ngrams::new(), lens: Vec::with_capacity(counted.len().saturating_sub(1)) };
            for (j, (ng, len)) in counted.iter().enumerate() {
                if j == i {
                    continue;
                }
                refs.lens.push(*len);
                for (g, &c) in ng {
                    let e = refs.ngrams.entry(g.clone()).or_insert(0);
                    *e = (*e).max(c);
                }
            }
            bleu_of_counts(&counted[i].0, counted[i].1, &refs)
        })
        .collect()
}

/// Self-BLEU diversity = 1 − mean(sentence BLEU of each text against the others)/100
/// (higher = more diverse). None for fewer than two texts (no references).
pub fn self_bleu_diversity<S: AsRef<str>>(texts: &[S]) -> Option<f64> {
    if texts.len() < 2 {
        return None;
    }
    let scores = self_bleu_scores(texts);
    let mean = scores.iter().sum::<f64>() / scores.len() as f64;
    Some(1.0 - mean / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thirteen_a_splits_punctuation_but_not_numbers() {
        assert_eq!(tokenize_13a("$1,000.50 in 2023-2024, ok."), vec!["$", "1,000.50", "in", "2023", "-", "2024", ",", "ok", "."]);
    }

    #[test]
    fn identical_sentence_scores_100() {
        let s = "the cat sat on the mat";
        assert!((sentence_bleu(s, &[s]) - 100.0).abs() < 1e-9);
    }
}
