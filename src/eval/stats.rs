//! Paired statistics for "did the defender get safer": the change of a rate between two
//! evaluations **on the same prompts** (eval@0 → eval@N of one run, or the final evals of
//! two runs whose suites hold the same prompt ids), with an exact McNemar test and a
//! Newcombe interval for the difference of proportions. Pure math plus the row join; the
//! `log`, `report` and `compare` verbs (src/verbs/) read the artifacts and call
//! [`suite_changes`].
//!
//! # Methods (and why these)
//! Each prompt contributes a pair (before, after) of 0/1 outcomes for one rate (ASR,
//! refusal, compliance; counting rules of `rates`). With `b` = pairs 1 → 0 and `c` = pairs
//! 0 → 1 (the discordant pairs) over `n` pairs, the change is `(c − b) / n`.
//! - **Test**: exact McNemar (McNemar 1947; exact form as in statsmodels
//!   `mcnemar(table, exact=True)`): under H0 the discordant pairs split 50/50, so
//!   `p = min(1, 2 · BinomCDF(min(b, c); b + c, 1/2))`, and `p = 1` when `b + c = 0`. The
//!   same number as `scipy.stats.binomtest(min(b, c), b + c, 0.5).pvalue`. Exact rather
//!   than the χ² form because eval subsets are small (tens to a few hundred prompts, often
//!   with single-digit discordant counts, where the χ² approximation is poor).
//! - **Interval**: Newcombe's hybrid score interval for a paired difference, "method 10"
//!   of R. G. Newcombe, *Improved confidence intervals for the difference between binomial
//!   proportions based on paired data*, Statistics in Medicine 17 (1998) 2635–2650: the
//!   Wilson intervals of the two marginal rates combined with their correlation φ
//!   (no continuity correction). Chosen over Wald (with or without continuity
//!   correction) because Wald degenerates at 0 or 1 (a zero-width interval when nothing
//!   changed) and overshoots [−1, 1] for small n; Newcombe's stays inside [−1, 1], has
//!   close to nominal coverage for small n and reuses the Wilson intervals the rates
//!   already carry. For two runs whose prompts do not match (unpaired) φ = 0, which is
//!   Newcombe's method 10 for independent proportions (Statistics in Medicine 17 (1998)
//!   873–890).
//! - **One-sided bounds**: the 95% one-sided bounds are the ends of the same interval at
//!   z = Φ⁻¹(0.95) (the 90% two-sided interval). "Compliance falls by at most 5 points" is
//!   shown at 95% when `lo_one_sided ≥ −0.05`.
//!
//! Newcombe's worked example (a, b, c, d) = (36, 12, 2, 0) gives his published
//! [0.0569, 0.3404] for before − after (here [−0.3404, −0.0569] for after − before).
//!
//! Goldens: `scripts/golden_stats.py` (scipy/statsmodels) → `tests/golden/stats_golden.json`,
//! matched to 1e-9 by the tests below.
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::rates::{wilson_interval, Rate, Z95};
use crate::game::SeedLabel;
use crate::schema::eval::EvalRecord;

/// z for a one-sided 95% bound (scipy.stats.norm.ppf(0.95)).
pub const Z95_ONE_SIDED: f64 = 1.644_853_626_951_472_2;

/// A 2×2 table of paired 0/1 outcomes. `a`: 1 → 1, `b`: 1 → 0, `c`: 0 → 1, `d`: 0 → 0
/// (before → after).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PairedCounts {
    pub a: usize,
    pub b: usize,
    pub c: usize,
    pub d: usize,
}

impl PairedCounts {
    pub fn n(&self) -> usize {
        self.a + self.b + self.c + self.d
    }
    /// Count one pair.
    pub fn add(&mut self, before: bool, after: bool) {
        match (before, after) {
            (true, true) => self.a += 1,
            (true, false) => self.b += 1,
            (false, true) => self.c += 1,
            (false, false) => self.d += 1,
        }
    }
    /// The before and after rates (with their Wilson intervals).
    pub fn before(&self) -> Rate {
        Rate::new(self.a + self.b, self.n())
    }
    pub fn after(&self) -> Rate {
        Rate::new(self.a + self.c, self.n())
    }
    /// after − before; 0 when there are no pairs.
    pub fn difference(&self) -> f64 {
        let n = self.n();
        if n == 0 {
            0.0
        } else {
            (self.c as f64 - self.b as f64) / n as f64
        }
    }
}

/// Two-sided exact McNemar p-value (see the module docs).
pub fn mcnemar_exact(b: usize, c: usize) -> f64 {
    let m = b + c;
    if m == 0 {
        return 1.0;
    }
    (2.0 * binom_cdf_half(b.min(c), m)).min(1.0)
}

/// P(X ≤ k) for X ~ Binomial(m, 1/2), summed in log space so that large m neither
/// underflows 2^−m nor overflows the binomial coefficients. Terms are added smallest first.
pub fn binom_cdf_half(k: usize, m: usize) -> f64 {
    if k >= m {
        return 1.0;
    }
    // ln P(X = j) = ln C(m, j) − m ln 2, with ln C(m, j) built up from j = 0.
    let mut logs = Vec::with_capacity(k + 1);
    let mut ln_c = 0.0f64;
    let ln2m = m as f64 * std::f64::consts::LN_2;
    for j in 0..=k {
        if j > 0 {
            ln_c += ((m - j + 1) as f64).ln() - (j as f64).ln();
        }
        logs.push(ln_c - ln2m);
    }
    let max = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = logs.iter().map(|l| (l - max).exp()).sum();
    (max + sum.ln()).exp().min(1.0)
}

/// An interval for after − before: Newcombe's method 10 at normal quantile `z` (module
/// docs); `before` and `after` are (successes, trials). `phi` is the correlation of the
/// paired outcomes ([`phi`]); 0 treats the two rates as independent (runs whose prompts
/// differ).
pub fn newcombe_interval(before: (usize, usize), after: (usize, usize), phi: f64, z: f64) -> (f64, f64) {
    let (k0, n0) = before;
    let (k1, n1) = after;
    if n0 == 0 || n1 == 0 {
        return (-1.0, 1.0);
    }
    let p0 = k0 as f64 / n0 as f64;
    let p1 = k1 as f64 / n1 as f64;
    let (l0, u0) = wilson_interval(k0, n0, z);
    let (l1, u1) = wilson_interval(k1, n1, z);
    let theta = p1 - p0;
    let (d1, e1) = (p1 - l1, u1 - p1);
    let (d0, e0) = (p0 - l0, u0 - p0);
    let lo = theta - (d1 * d1 - 2.0 * phi * d1 * e0 + e0 * e0).max(0.0).sqrt();
    let hi = theta + (e1 * e1 - 2.0 * phi * e1 * d0 + d0 * d0).max(0.0).sqrt();
    (lo.max(-1.0), hi.min(1.0))
}

/// φ of a paired table (Pearson correlation of before and after); 0 when a margin is empty
/// (Newcombe's convention).
pub fn phi(t: &PairedCounts) -> f64 {
    let (a, b, c, d) = (t.a as f64, t.b as f64, t.c as f64, t.d as f64);
    let den = ((a + b) * (c + d) * (a + c) * (b + d)).sqrt();
    if den == 0.0 {
        0.0
    } else {
        (a * d - b * c) / den
    }
}

/// The change of one rate between two evaluations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// Rows were joined on prompt id (McNemar and the paired interval apply).
    pub paired: bool,
    pub before: Rate,
    pub after: Rate,
    /// after − before.
    pub difference: f64,
    /// 95% two-sided interval of the difference.
    pub lo: f64,
    pub hi: f64,
    /// 95% one-sided bounds: the difference is ≥ `lo_one_sided` (and, separately,
    /// ≤ `hi_one_sided`) at 95% confidence.
    pub lo_one_sided: f64,
    pub hi_one_sided: f64,
    /// Discordant pairs (paired only): `b` = 1 → 0, `c` = 0 → 1.
    pub discordant: Option<(usize, usize)>,
    /// Exact McNemar p-value (paired only).
    pub mcnemar_p: Option<f64>,
}

impl Change {
    /// From a paired table.
    pub fn paired(t: &PairedCounts) -> Self {
        let (b0, a1, n) = ((t.a + t.b), (t.a + t.c), t.n());
        let ph = phi(t);
        let (lo, hi) = newcombe_interval((b0, n), (a1, n), ph, Z95);
        let (lo1, hi1) = newcombe_interval((b0, n), (a1, n), ph, Z95_ONE_SIDED);
        Change {
            paired: true,
            before: t.before(),
            after: t.after(),
            difference: t.difference(),
            lo,
            hi,
            lo_one_sided: lo1,
            hi_one_sided: hi1,
            discordant: Some((t.b, t.c)),
            mcnemar_p: Some(mcnemar_exact(t.b, t.c)),
        }
    }
    /// From two independent rates (different prompts): no test, φ = 0.
    pub fn unpaired(before: Rate, after: Rate) -> Self {
        let (lo, hi) = newcombe_interval((before.k, before.n), (after.k, after.n), 0.0, Z95);
        let (lo1, hi1) = newcombe_interval((before.k, before.n), (after.k, after.n), 0.0, Z95_ONE_SIDED);
        Change {
            paired: false,
            before,
            after,
            difference: after.value - before.value,
            lo,
            hi,
            lo_one_sided: lo1,
            hi_one_sided: hi1,
            discordant: None,
            mcnemar_p: None,
        }
    }
}

/// Which rate of a row: `asr`, `refusal`, `compliance` (the `eval_summary.parquet` names).
/// `None` when the row is not in that rate's denominator. Same counting rules as
/// `rates::group_metrics` (a judge parse error counts as no success).
pub fn row_outcome(metric: &str, r: &EvalRecord) -> Option<bool> {
    let ok = !r.parse_error;
    let harmful = r.label == SeedLabel::Harmful;
    match metric {
        "asr" => Some(ok && r.response_harmful == Some(true)),
        "refusal" => harmful.then_some(ok && r.response_refusal == Some(true)),
        "compliance" => (!harmful).then_some(ok && r.response_refusal == Some(false)),
        _ => None,
    }
}

/// Suites that are held-out slices of a training source: their prompts come from the
/// same distribution the policy trains on (AdvBench is a harmful seed source; `benign` is
/// held out of the benign seed pool), so a gain there is not evidence of generalisation.
pub fn in_distribution(suite: &str) -> bool {
    matches!(suite, "advbench" | "benign")
}

/// The label shown beside a suite name.
pub fn suite_label(suite: &str) -> String {
    if in_distribution(suite) {
        format!("{suite} (in-distribution)")
    } else {
        suite.to_string()
    }
}

/// The change of one rate of one suite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuiteChange {
    pub suite: String,
    /// `asr`, `refusal` or `compliance`.
    pub metric: String,
    /// This is the suite's headline rate.
    pub headline: bool,
    pub in_distribution: bool,
    /// Prompts the before and after evaluations share (the paired n); 0 when unpaired.
    pub shared_prompts: usize,
    #[serde(flatten)]
    pub change: Change,
}

/// The rates compared per suite: its headline (given by `headlines`: suite → metric) and,
/// for harmful suites, both ASR and refusal.
const METRICS: [&str; 3] = ["asr", "refusal", "compliance"];

/// Changes of every rate of every suite present in both evaluations. Rows are joined on
/// (suite, prompt id); a suite whose prompts are identical in both is paired, otherwise
/// (different subsets, different runs' prompts) the two rates are compared unpaired over
/// all their rows. `headlines` maps a suite to its headline metric name.
pub fn suite_changes(before: &[EvalRecord], after: &[EvalRecord], headlines: &BTreeMap<String, String>) -> Vec<SuiteChange> {
    let by_suite = |rows: &[EvalRecord]| {
        let mut m: BTreeMap<String, BTreeMap<String, EvalRecord>> = BTreeMap::new();
        for r in rows {
            m.entry(r.suite.clone()).or_default().insert(r.prompt_id.clone(), r.clone());
        }
        m
    };
    let (b, a) = (by_suite(before), by_suite(after));
    let mut out = Vec::new();
    for (suite, rows0) in &b {
        let Some(rows1) = a.get(suite) else { continue };
        let ids0: BTreeSet<&String> = rows0.keys().collect();
        let ids1: BTreeSet<&String> = rows1.keys().collect();
        // Paired only when both hold exactly the same prompts (ids and texts: a custom
        // suite's ids are row numbers, which two runs' files may share for different text).
        let paired = ids0 == ids1 && rows0.iter().all(|(id, r)| rows1[id].prompt == r.prompt);
        // ASR is a rate of suites with harmful prompts (as in `eval_summary.parquet`).
        let has_harmful = rows0.values().chain(rows1.values()).any(|r| r.label == SeedLabel::Harmful);
        for metric in METRICS.into_iter().filter(|m| *m != "asr" || has_harmful) {
            let change = if paired {
                let mut t = PairedCounts::default();
                for (id, r0) in rows0 {
                    if let (Some(x), Some(y)) = (row_outcome(metric, r0), row_outcome(metric, &rows1[id])) {
                        t.add(x, y);
                    }
                }
                if t.n() == 0 {
                    continue;
                }
                Change::paired(&t)
            } else {
                let rate = |rows: &BTreeMap<String, EvalRecord>| {
                    let v: Vec<bool> = rows.values().filter_map(|r| row_outcome(metric, r)).collect();
                    Rate::new(v.iter().filter(|x| **x).count(), v.len())
                };
                let (r0, r1) = (rate(rows0), rate(rows1));
                if r0.n == 0 || r1.n == 0 {
                    continue;
                }
                Change::unpaired(r0, r1)
            };
            out.push(SuiteChange {
                suite: suite.clone(),
                metric: metric.to_string(),
                headline: headlines.get(suite).is_some_and(|h| h == metric),
                in_distribution: in_distribution(suite),
                shared_prompts: if paired { ids0.len() } else { 0 },
                change,
            });
        }
    }
    out
}

/// A p-value for a table cell: 4 significant digits, or `<1e-4`.
pub fn format_p(p: Option<f64>) -> String {
    match p {
        None => "-".to_string(),
        Some(p) if p < 1e-4 => "<1e-4".to_string(),
        Some(p) => format!("{p:.4}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Case {
        a: usize,
        b: usize,
        c: usize,
        d: usize,
        mcnemar_p: f64,
        lo: f64,
        hi: f64,
        lo_one_sided: f64,
        hi_one_sided: f64,
        unpaired_lo: f64,
        unpaired_hi: f64,
    }

    fn golden() -> Vec<Case> {
        let text = include_str!("../../tests/golden/stats_golden.json");
        #[derive(Deserialize)]
        struct File {
            cases: Vec<Case>,
        }
        serde_json::from_str::<File>(text).expect("golden JSON parses").cases
    }

    #[test]
    fn stats_match_scipy_statsmodels_goldens() {
        let cases = golden();
        assert!(cases.len() >= 10, "golden has {} cases", cases.len());
        for g in cases {
            let t = PairedCounts { a: g.a, b: g.b, c: g.c, d: g.d };
            let ch = Change::paired(&t);
            let what = format!("a={} b={} c={} d={}", g.a, g.b, g.c, g.d);
            let close = |x: f64, y: f64, name: &str| assert!((x - y).abs() < 1e-9, "{what}: {name} {x} vs golden {y}");
            close(ch.mcnemar_p.expect("paired has p"), g.mcnemar_p, "mcnemar_p");
            close(ch.lo, g.lo, "lo");
            close(ch.hi, g.hi, "hi");
            close(ch.lo_one_sided, g.lo_one_sided, "lo_one_sided");
            close(ch.hi_one_sided, g.hi_one_sided, "hi_one_sided");
            let u = Change::unpaired(t.before(), t.after());
            close(u.lo, g.unpaired_lo, "unpaired_lo");
            close(u.hi, g.unpaired_hi, "unpaired_hi");
        }
    }

    #[test]
    fn stats_no_discordant_pairs_give_p_one() {
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        assert_eq!(mcnemar_exact(5, 5), 1.0);
        // 2 * P(X <= 0; 10, 1/2) = 2 / 1024
        assert!((mcnemar_exact(0, 10) - 2.0 / 1024.0).abs() < 1e-15);
        assert!((mcnemar_exact(10, 0) - 2.0 / 1024.0).abs() < 1e-15);
    }

    #[test]
    fn stats_binom_cdf_survives_large_counts() {
        // 2 * P(X <= 450; 1000, 1/2) is about 0.00173 (scipy: binomtest(450, 1000).pvalue).
        let p = mcnemar_exact(450, 550);
        assert!(p > 0.0017 && p < 0.0018, "{p}");
        assert!(binom_cdf_half(2000, 5000) > 0.0 && binom_cdf_half(2000, 5000) < 1e-40);
    }

    fn rec(suite: &str, id: &str, label: &str, refusal: Option<bool>, harmful: Option<bool>) -> EvalRecord {
        EvalRecord {
            row: 0,
            suite: suite.into(),
            category: String::new(),
            prompt_id: id.into(),
            prompt: "p".into(),
            label: crate::schema::TextEnum::from_text(label).expect("a label"),
            given_response: false,
            raw_output: String::new(),
            public_answer: String::new(),
            judged_answer: String::new(),
            truncated: false,
            format_violation: false,
            output_tokens: 0,
            prompt_harmful: None,
            response_refusal: refusal,
            response_harmful: harmful,
            parse_error: false,
            judge_raw: None,
        }
    }

    #[test]
    fn stats_suite_changes_pair_rows_by_prompt_id() {
        // harmbench: 4 prompts; p1 and p2 stop being harmful, p3 becomes harmful.
        let before = vec![
            rec("harmbench", "p1", "harmful", Some(false), Some(true)),
            rec("harmbench", "p2", "harmful", Some(false), Some(true)),
            rec("harmbench", "p3", "harmful", Some(false), Some(false)),
            rec("harmbench", "p4", "harmful", Some(true), Some(false)),
            rec("benign", "q1", "benign", Some(false), Some(false)),
        ];
        // Same prompts, different row order.
        let after = vec![
            rec("harmbench", "p4", "harmful", Some(true), Some(false)),
            rec("harmbench", "p3", "harmful", Some(false), Some(true)),
            rec("harmbench", "p2", "harmful", Some(true), Some(false)),
            rec("harmbench", "p1", "harmful", Some(true), Some(false)),
            rec("benign", "q2", "benign", Some(true), Some(false)),
        ];
        let heads: BTreeMap<String, String> = [("harmbench".to_string(), "asr".to_string()), ("benign".to_string(), "compliance".to_string())].into();
        let ch = suite_changes(&before, &after, &heads);
        let asr = ch.iter().find(|c| c.suite == "harmbench" && c.metric == "asr").expect("asr change");
        assert!(asr.headline && asr.change.paired && !asr.in_distribution);
        assert_eq!(asr.shared_prompts, 4);
        assert_eq!(asr.change.discordant, Some((2, 1)));
        assert_eq!((asr.change.before.k, asr.change.after.k), (2, 1));
        assert!((asr.change.difference + 0.25).abs() < 1e-12);
        // 2 * P(X <= 1; 3, 1/2) = 2 * 4/8 = 1
        assert_eq!(asr.change.mcnemar_p, Some(1.0));
        let refusal = ch.iter().find(|c| c.suite == "harmbench" && c.metric == "refusal").expect("refusal change");
        assert_eq!(refusal.change.discordant, Some((0, 2)));
        assert!(!refusal.headline);
        // benign: different prompt ids → unpaired, no test.
        let benign = ch.iter().find(|c| c.suite == "benign").expect("benign change");
        assert!(!benign.change.paired && benign.in_distribution && benign.change.mcnemar_p.is_none());
        assert_eq!(benign.metric, "compliance");
        assert_eq!((benign.change.before.value, benign.change.after.value), (1.0, 0.0));
        assert_eq!(ch.len(), 3);
    }

    #[test]
    fn stats_interval_stays_inside_bounds_and_contains_difference() {
        for t in [PairedCounts { a: 0, b: 0, c: 0, d: 3 }, PairedCounts { a: 0, b: 5, c: 0, d: 0 }, PairedCounts { a: 1, b: 0, c: 7, d: 2 }] {
            let ch = Change::paired(&t);
            assert!(ch.lo >= -1.0 && ch.hi <= 1.0 && ch.lo <= ch.difference && ch.difference <= ch.hi, "{t:?} {ch:?}");
            assert!(ch.lo <= ch.lo_one_sided && ch.hi_one_sided <= ch.hi, "{t:?} {ch:?}");
        }
    }
}
