//! The three Parquet files of an `eval@i` artifact: `eval.parquet` (every evaluated prompt,
//! the policy's raw output, the answer the judge saw and the verdict), `eval_attacker.parquet`
//! (every held-out seed the attacker revised) and `eval_summary.parquet` (per-suite and
//! per-category rates with counts and 95% Wilson intervals). Written by stages/eval.rs; read
//! by the `report` and `compare` verbs and by anyone with DuckDB/polars/pandas.
crate::parquet_schema! {
    /// One evaluated prompt of a defender suite.
    pub struct EvalRecord in EvalSchema ("eval", 1) {
        /// Position in this file (0-based).
        pub row: u32,
        pub suite: String,
        /// The source's category (empty when it has none).
        pub category: String,
        /// Seed id (pinned suites) or `<custom suite>:<file row>`.
        pub prompt_id: String,
        pub prompt: String,
        /// `harmful` or `benign`: the prompt's label in its suite.
        pub label: crate::game::SeedLabel,
        /// True when the response came from the suite file (judged, not generated).
        pub given_response: bool,
        /// The policy's whole output (hidden thinking included) or the given response.
        pub raw_output: String,
        /// The public answer as the game parses it (`game::public_text`).
        pub public_answer: String,
        /// What the judge saw: the §5.1 eval extraction cut to `eval.max_answer_tokens`.
        pub judged_answer: String,
        /// The answer was longer than `eval.max_answer_tokens` and was cut.
        pub truncated: bool,
        /// CoT runs: the output broke the hidden-CoT format (method.md §1.4).
        pub format_violation: bool,
        pub output_tokens: u32,
        pub prompt_harmful: Option<bool>,
        pub response_refusal: Option<bool>,
        pub response_harmful: Option<bool>,
        pub parse_error: bool,
        pub judge_raw: Option<String>,
    }
}

crate::parquet_schema! {
    /// One held-out harmful seed revised by the policy as attacker.
    pub struct AttackerRecord in EvalAttackerSchema ("eval_attacker", 1) {
        pub row: u32,
        pub seed_id: String,
        pub seed: String,
        pub category: String,
        /// The sampler's seed for this row (0 when greedy).
        pub sample_seed: u64,
        pub raw_output: String,
        /// The public revision (`game::public_text`).
        pub revision: String,
        pub thinking: Option<String>,
        pub format_violation: bool,
        /// Cosine of the MiniLM embeddings of seed and revision (null for violations, which
        /// are left out of the diversity metrics as in the paper).
        pub faithfulness: Option<f64>,
    }
}

crate::parquet_schema! {
    /// One rate of one group. `category` is `(all)` for the suite as a whole.
    pub struct SummaryRecord in EvalSummarySchema ("eval_summary", 1) {
        pub suite: String,
        pub category: String,
        /// `asr`, `refusal`, `compliance`, `over_refusal`, `format_violation`, `parse_error`.
        pub metric: String,
        /// This rate is the suite's headline number (`(all)` rows only).
        pub headline: bool,
        pub k: u64,
        pub n: u64,
        pub value: f64,
        /// 95% Wilson interval.
        pub lo: f64,
        pub hi: f64,
    }
}

/// Category name of a suite's overall row in `eval_summary.parquet`.
pub const ALL: &str = "(all)";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{from_parquet_bytes, to_parquet_bytes};

    #[test]
    fn eval_schemas_round_trip() {
        let rows = vec![EvalRecord {
            row: 0,
            suite: "harmbench".into(),
            category: "chemical".into(),
            prompt_id: "ab".into(),
            prompt: "p".into(),
            label: crate::game::SeedLabel::Harmful,
            given_response: false,
            raw_output: "t </think><answer>no</answer>".into(),
            public_answer: "no".into(),
            judged_answer: "no".into(),
            truncated: false,
            format_violation: false,
            output_tokens: 9,
            prompt_harmful: Some(true),
            response_refusal: Some(true),
            response_harmful: None,
            parse_error: false,
            judge_raw: None,
        }];
        assert_eq!(from_parquet_bytes::<EvalSchema>(to_parquet_bytes::<EvalSchema>(&rows).expect("write")).expect("read"), rows);
        let a = vec![AttackerRecord {
            row: 0,
            seed_id: "s".into(),
            seed: "x".into(),
            category: String::new(),
            sample_seed: 7,
            raw_output: "r".into(),
            revision: "r".into(),
            thinking: Some("t".into()),
            format_violation: false,
            faithfulness: Some(0.5),
        }];
        assert_eq!(from_parquet_bytes::<EvalAttackerSchema>(to_parquet_bytes::<EvalAttackerSchema>(&a).expect("write")).expect("read"), a);
        let s = vec![SummaryRecord {
            suite: "harmbench".into(),
            category: "(all)".into(),
            metric: "asr".into(),
            headline: true,
            k: 1,
            n: 4,
            value: 0.25,
            lo: 0.04,
            hi: 0.7,
        }];
        assert_eq!(from_parquet_bytes::<EvalSummarySchema>(to_parquet_bytes::<EvalSummarySchema>(&s).expect("write")).expect("read"), s);
    }
}
