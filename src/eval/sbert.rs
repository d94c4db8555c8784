//! Embedding-based metrics: SBERT diversity (1 − mean off-diagonal cosine similarity, as in
//! Self-RedTeam `utils/sbert.py`) and revision faithfulness (cosine of seed and revision).
//! The embeddings come from the model runtime's MiniLM encoder; this file only does the
//! arithmetic (in f64). Called by the `eval` stage and the RL diversity monitors.

/// Cosine similarity in f64; 0 when either vector has zero norm.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "embeddings of one model have one dimension");
    let (mut ab, mut aa, mut bb) = (0.0_f64, 0.0_f64, 0.0_f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 {
        0.0
    } else {
        ab / (aa.sqrt() * bb.sqrt())
    }
}

/// 1 − mean cosine similarity over all ordered pairs i ≠ j. None for fewer than two texts.
pub fn sbert_diversity(embeddings: &[Vec<f32>]) -> Option<f64> {
    let n = embeddings.len();
    if n < 2 {
        return None;
    }
    let mut sum = 0.0;
    for i in 0..n {
        for j in (i + 1)..n {
            sum += cosine(&embeddings[i], &embeddings[j]);
        }
    }
    // The matrix is symmetric: the mean over ordered pairs equals the mean over i < j.
    let pairs = (n * (n - 1) / 2) as f64;
    Some(1.0 - sum / pairs)
}

/// Revision faithfulness: cosine(seed, revision) (method.md §5.3 monitors 1 − this).
pub fn revision_faithfulness(seed: &[f32], revision: &[f32]) -> f64 {
    cosine(seed, revision)
}
