//! How a stage spreads many prompts over generation batches — one mechanism for `rollout`
//! (rows in order, `rollout.batch_size` per batch) and `eval` (shortest first, capped in rows
//! and prompt tokens). Rows are independent of their batch mates (model::sampler), so the
//! plan changes nothing but speed and memory; results always come back in input order.
use std::sync::atomic::AtomicBool;

use super::error::Result;
use super::{ModelError, Policy, Sample, SamplingParams, TokenId};

/// Prompt tokens per batch row below which a batch is not shrunk (see [`length_capped`]).
pub const ROW_TOKENS: usize = 256;

/// Rows `0..n` in order, `batch` per batch (at least one).
pub fn in_order(n: usize, batch: usize) -> Vec<Vec<usize>> {
    (0..n).collect::<Vec<_>>().chunks(batch.max(1)).map(<[usize]>::to_vec).collect()
}

/// The rows of `lens` (prompt lengths) shortest first (ties by index), in batches of at most
/// `batch` rows and at most `batch × ROW_TOKENS` prompt tokens (padded to the batch's
/// longest), at least one row each. The token budget keeps the prefill's attention buffers
/// (rows × length²) bounded for long prompts (the adversarial eval suites' jailbreak
/// templates are ≈ 1,500 tokens, where a full batch of 48 would need gigabytes).
pub fn length_capped(lens: &[usize], batch: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| (lens[i], i));
    let budget = batch.max(1) * ROW_TOKENS;
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut cur: Vec<usize> = Vec::new();
    for i in order {
        // Sorted ascending, so the newest row is the longest.
        let rows = cur.len() + 1;
        if !cur.is_empty() && (rows > batch.max(1) || rows * lens[i].max(ROW_TOKENS) > budget) {
            out.push(std::mem::take(&mut cur));
        }
        cur.push(i);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

impl Policy {
    /// Samples every prompt (one seed per row) batch by batch as `plan` groups their indices
    /// ([`in_order`], [`length_capped`]); `interrupt` is checked before every decoding step
    /// ([`Policy::generate_interruptible`]) and `done` is called with the rows finished so far
    /// after each batch. `plan` must name every index exactly once.
    pub fn generate_batched(
        &self,
        prompts: &[Vec<TokenId>],
        seeds: &[u64],
        params: &SamplingParams,
        plan: &[Vec<usize>],
        interrupt: &AtomicBool,
        done: &mut dyn FnMut(usize),
    ) -> Result<Vec<Sample>> {
        if prompts.len() != seeds.len() {
            return Err(ModelError::InvalidInput(format!("{} prompts but {} seeds", prompts.len(), seeds.len())));
        }
        let mut seen = vec![false; prompts.len()];
        for &i in plan.iter().flatten() {
            if i >= prompts.len() || std::mem::replace(&mut seen[i], true) {
                return Err(ModelError::InvalidInput(format!("batch plan names row {i} twice or past the {} prompts", prompts.len())));
            }
        }
        if let Some(i) = seen.iter().position(|s| !s) {
            return Err(ModelError::InvalidInput(format!("batch plan leaves out row {i}")));
        }
        let mut out: Vec<Option<Sample>> = vec![None; prompts.len()];
        let mut finished = 0;
        for rows in plan.iter().filter(|r| !r.is_empty()) {
            let p: Vec<Vec<TokenId>> = rows.iter().map(|&i| prompts[i].clone()).collect();
            let s: Vec<u64> = rows.iter().map(|&i| seeds[i]).collect();
            for (&i, sample) in rows.iter().zip(self.generate_interruptible(&p, &s, params, interrupt)?) {
                out[i] = Some(sample);
            }
            finished += rows.len();
            done(finished);
        }
        Ok(out.into_iter().flatten().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_capped_batches_cap_rows_and_prompt_tokens() {
        // 5 short prompts, then 3 jailbreak-length ones. batch 4 → at most 4 rows and
        // 4 × 256 = 1024 tokens.
        let lens = [10, 20, 30, 40, 50, 600, 700, 1500];
        let b = length_capped(&lens, 4);
        assert_eq!(b, vec![vec![0, 1, 2, 3], vec![4], vec![5], vec![6], vec![7]]);
        // Shortest first, every index exactly once.
        assert_eq!(length_capped(&[700, 10, 30], 4), vec![vec![1, 2], vec![0]]);
        // Short prompts alone: only the row cap applies.
        assert_eq!(length_capped(&[5, 5, 5], 2), vec![vec![0, 1], vec![2]]);
        // batch 0 is treated as 1.
        assert_eq!(length_capped(&[5, 5], 0), vec![vec![0], vec![1]]);
    }

    #[test]
    fn in_order_batches_keep_row_order() {
        assert_eq!(in_order(5, 2), vec![vec![0, 1], vec![2, 3], vec![4]]);
        assert_eq!(in_order(2, 0), vec![vec![0], vec![1]]);
        assert!(in_order(0, 8).is_empty());
    }
}
