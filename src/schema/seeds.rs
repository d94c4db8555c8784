//! `seeds.parquet` of the `dataset` artifact: every prompt of the seed pool and of the
//! held-out suites. Written by stages/dataset.rs; read by `prep`, `eval`, and `judge-fit`.
crate::parquet_schema! {
    /// One prompt and where it belongs.
    pub struct SeedRow in SeedsSchema ("seeds", 1) {
        /// Stable id: first 16 hex digits of blake3 of the normalised text (`data::prompt_id`).
        pub id: String,
        pub text: String,
        /// `harmful` or `benign`.
        pub label: String,
        /// Source name (`advbench`, `harmbench_val`, `alpaca_eval`, …).
        pub source: String,
        /// The source's own category (empty when it has none).
        pub category: String,
        /// `train`, `holdout_attacker` (attacker-diversity eval) or `eval`.
        pub split: String,
        /// Eval suite name for `split = eval` rows.
        pub suite: Option<String>,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{from_parquet_bytes, to_parquet_bytes};

    #[test]
    fn seeds_round_trip_and_bytes_are_stable() {
        let rows = vec![
            SeedRow {
                id: "a".into(),
                text: "t1".into(),
                label: "harmful".into(),
                source: "advbench".into(),
                category: "c".into(),
                split: "train".into(),
                suite: None,
            },
            SeedRow {
                id: "b".into(),
                text: "t2 ünïcode".into(),
                label: "benign".into(),
                source: "x".into(),
                category: "".into(),
                split: "eval".into(),
                suite: Some("benign".into()),
            },
        ];
        let bytes = to_parquet_bytes::<SeedsSchema>(&rows).expect("write");
        assert_eq!(bytes, to_parquet_bytes::<SeedsSchema>(&rows).expect("write again"));
        assert_eq!(from_parquet_bytes::<SeedsSchema>(bytes).expect("read"), rows);
    }
}
