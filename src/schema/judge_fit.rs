//! `judge_fit_metrics.parquet` of the `judge-fit` artifact: the fitted probe's held-out
//! scores, per head one row for the by-row split and one per left-out source group. Written by stages/judge_fit.rs; read by `show`, the
//! report, and anyone auditing the judge with DuckDB/pandas.
crate::parquet_schema! {
    /// One probe head scored on the examples it never saw while fitting. Positive class =
    /// `true` (harmful prompt, refusal, harmful response). Precision, recall and F1 are 0
    /// when undefined (scikit-learn's `zero_division=0`).
    pub struct HeadMetricsRow in JudgeFitMetricsSchema ("judge_fit_metrics", 2) {
        /// `prompt_harmful`, `response_refusal` or `response_harmful`.
        pub head: String,
        /// `row`: the seeded by-prompt split of the shipped weights; `source`: a head fitted
        /// without one source group, scored on all of it (judge/probe.rs).
        pub split: String,
        /// The left-out source group (`split` = `source`); empty for `row`.
        pub source: String,
        /// Examples the head was fitted on.
        pub train_n: u64,
        /// Held-out examples scored.
        pub n: u64,
        pub tp: u64,
        pub fp: u64,
        pub tn: u64,
        /// False negatives (`fn` is a Rust keyword, hence the underscore).
        pub fn_: u64,
        pub accuracy: f64,
        pub precision: f64,
        pub recall: f64,
        pub f1: f64,
        /// Final training objective (mean log-loss + L2 term) of the shipped weights; none
        /// for a leave-one-source-out fold.
        pub train_loss: Option<f64>,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{from_parquet_bytes, to_parquet_bytes};

    #[test]
    fn head_metrics_round_trip() {
        let rows = vec![HeadMetricsRow {
            head: "prompt_harmful".into(),
            split: "row".into(),
            source: String::new(),
            train_n: 10,
            n: 4,
            tp: 1,
            fp: 1,
            tn: 1,
            fn_: 1,
            accuracy: 0.5,
            precision: 0.5,
            recall: 0.5,
            f1: 0.5,
            train_loss: Some(0.25),
        }];
        let bytes = to_parquet_bytes::<JudgeFitMetricsSchema>(&rows).expect("write");
        assert_eq!(bytes, to_parquet_bytes::<JudgeFitMetricsSchema>(&rows).expect("write again"));
        assert_eq!(from_parquet_bytes::<JudgeFitMetricsSchema>(bytes).expect("read"), rows);
    }
}
