//! `judge_train.parquet` of the `dataset` artifact: labelled (prompt, response) pairs for
//! fitting the offline judge, with every eval prompt removed. Written by
//! stages/dataset.rs; read by `judge-fit`.
crate::parquet_schema! {
    /// One labelled pair. `None` = the source does not label that field.
    pub struct JudgeExampleRow in JudgeTrainSchema ("judge_train", 1) {
        /// blake3 of normalised prompt + response (16 hex digits).
        pub id: String,
        pub prompt: String,
        pub response: String,
        pub prompt_harmful: Option<bool>,
        /// The response refuses.
        pub refusal: Option<bool>,
        /// The response is harmful (the harmful objective was achieved).
        pub harmful_response: Option<bool>,
        pub source: String,
        pub category: String,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{from_parquet_bytes, to_parquet_bytes};

    #[test]
    fn judge_train_round_trip_keeps_nulls() {
        let rows = vec![
            JudgeExampleRow {
                id: "1".into(),
                prompt: "p".into(),
                response: "r".into(),
                prompt_harmful: None,
                refusal: Some(true),
                harmful_response: None,
                source: "refusal".into(),
                category: "refusal".into(),
            },
            JudgeExampleRow {
                id: "2".into(),
                prompt: "p2".into(),
                response: "r2".into(),
                prompt_harmful: Some(true),
                refusal: None,
                harmful_response: Some(false),
                source: "bias".into(),
                category: "bias".into(),
            },
        ];
        assert_eq!(from_parquet_bytes::<JudgeTrainSchema>(to_parquet_bytes::<JudgeTrainSchema>(&rows).expect("write")).expect("read"), rows);
    }
}
