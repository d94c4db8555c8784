//! Binary-classification metrics (accuracy, precision, recall, F1) for judge heads: the
//! probe's held-out scores and `judge --with REF|SPEC FILE` agreement between two judges
//! or a judge and human labels. Called by `probe::train_probe` and the CLI.

use serde::{Deserialize, Serialize};

use super::labels::LabelledPair;
use super::probe::Head;
use super::{Judge, JudgeError, JudgeInput, Verdict};

/// Confusion counts and the derived scores (positive class = `true`). Precision, recall
/// and F1 are 0 when undefined (no predicted / no actual positives), as scikit-learn
/// reports with `zero_division=0`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct BinaryMetrics {
    pub n: usize,
    pub tp: usize,
    pub fp: usize,
    pub tn: usize,
    pub fn_: usize,
    pub accuracy: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

impl BinaryMetrics {
    pub fn from_pairs(pairs: impl IntoIterator<Item = (bool, bool)>) -> Self {
        let mut m = BinaryMetrics::default();
        for (pred, label) in pairs {
            match (pred, label) {
                (true, true) => m.tp += 1,
                (true, false) => m.fp += 1,
                (false, false) => m.tn += 1,
                (false, true) => m.fn_ += 1,
            }
        }
        m.n = m.tp + m.fp + m.tn + m.fn_;
        let div = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        m.accuracy = div(m.tp + m.tn, m.n);
        m.precision = div(m.tp, m.tp + m.fp);
        m.recall = div(m.tp, m.tp + m.fn_);
        m.f1 = if m.precision + m.recall == 0.0 { 0.0 } else { 2.0 * m.precision * m.recall / (m.precision + m.recall) };
        m
    }

    pub fn from_predictions(predictions: &[bool], labels: &[bool]) -> Self {
        assert_eq!(predictions.len(), labels.len(), "one prediction per label");
        Self::from_pairs(predictions.iter().copied().zip(labels.iter().copied()))
    }
}

/// Metrics of one head where some predictions or labels may be missing: pairs with a
/// missing side (n/a, or a parse error on either side) are counted in `skipped`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct HeadAgreement {
    pub metrics: BinaryMetrics,
    pub skipped: usize,
}

impl HeadAgreement {
    pub fn from_options(pairs: impl IntoIterator<Item = (Option<bool>, Option<bool>)>) -> Self {
        let mut skipped = 0;
        let mut kept = Vec::new();
        for p in pairs {
            match p {
                (Some(a), Some(b)) => kept.push((a, b)),
                _ => skipped += 1,
            }
        }
        Self { metrics: BinaryMetrics::from_pairs(kept), skipped }
    }
}

/// Agreement of a judge's verdicts with reference verdicts (another judge, or labels
/// turned into verdicts), per head. A parse error on either side skips the pair.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct VerdictAgreement {
    pub prompt_harmful: HeadAgreement,
    pub response_refusal: HeadAgreement,
    pub response_harmful: HeadAgreement,
}

pub fn compare_verdicts(predicted: &[Verdict], reference: &[Verdict]) -> VerdictAgreement {
    assert_eq!(predicted.len(), reference.len(), "one reference verdict per prediction");
    let head = |f: fn(&Verdict) -> Option<bool>| {
        HeadAgreement::from_options(predicted.iter().zip(reference).map(|(p, r)| if p.parse_error || r.parse_error { (None, None) } else { (f(p), f(r)) }))
    };
    VerdictAgreement {
        prompt_harmful: head(|v| v.prompt_harmful),
        response_refusal: head(|v| v.response_refusal),
        response_harmful: head(|v| v.response_harmful),
    }
}

/// The verdict field a head reads.
pub fn head_value(v: &Verdict, head: Head) -> Option<bool> {
    match head {
        Head::PromptHarmful => v.prompt_harmful,
        Head::ResponseRefusal => v.response_refusal,
        Head::ResponseHarmful => v.response_harmful,
    }
}

/// Judge human-labelled pairs and score one head against the labels (for
/// `judge --with FILE` and the report's judge table). `seed_harmful` is passed to judges
/// that read the seed label (the labelled response sets all use harmful objectives, so
/// `Some(true)` there). A parse error or n/a counts as a skipped pair, reported beside.
pub fn score_judge_on_labels(judge: &dyn Judge, head: Head, pairs: &[LabelledPair], seed_harmful: Option<bool>) -> Result<HeadAgreement, JudgeError> {
    let inputs: Vec<JudgeInput> = pairs.iter().map(|p| JudgeInput { prompt: p.prompt.clone(), response: p.response.clone(), seed_harmful }).collect();
    let verdicts = judge.judge_batch(&inputs)?;
    if verdicts.len() != pairs.len() {
        return Err(JudgeError::CountMismatch { backend: judge.name().to_string(), expected: pairs.len(), got: verdicts.len() });
    }
    Ok(HeadAgreement::from_options(verdicts.iter().zip(pairs).map(|(v, p)| (if v.parse_error { None } else { head_value(v, head) }, Some(p.label)))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_match_hand_counts() {
        // preds/labels: tp=2 fp=1 tn=3 fn=2
        let p = [true, true, true, false, false, false, false, false];
        let l = [true, true, false, false, false, false, true, true];
        let m = BinaryMetrics::from_predictions(&p, &l);
        assert_eq!((m.tp, m.fp, m.tn, m.fn_, m.n), (2, 1, 3, 2, 8));
        assert!((m.accuracy - 5.0 / 8.0).abs() < 1e-12);
        assert!((m.precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.recall - 0.5).abs() < 1e-12);
        assert!((m.f1 - 4.0 / 7.0).abs() < 1e-12);
    }

    #[test]
    fn missing_sides_are_skipped() {
        let a = HeadAgreement::from_options([(Some(true), Some(true)), (None, Some(true)), (Some(false), None)]);
        assert_eq!(a.skipped, 2);
        assert_eq!(a.metrics.n, 1);
    }
}
