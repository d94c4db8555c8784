//! `seeds.parquet` of the `dataset` artifact: every prompt of the seed pool and of the
//! held-out suites. Written by stages/dataset.rs; read by `prep`, `eval`, and `judge-fit`.
/// Where a prompt of the dataset belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// The seed pool of `prep` (and the probe's and the SFT term's training data).
    Train,
    /// A held-out eval suite prompt (`suite` names it).
    Eval,
    /// A seed of the attacker-diversity eval (`holdout_attacker`).
    HoldoutAttacker,
}

impl Split {
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Eval => "eval",
            Split::HoldoutAttacker => "holdout_attacker",
        }
    }
}

impl crate::schema::TextEnum for Split {
    const VALUES: &'static [Self] = &[Split::Train, Split::Eval, Split::HoldoutAttacker];
    fn as_str(self) -> &'static str {
        Split::as_str(self)
    }
}

crate::parquet_schema! {
    /// One prompt and where it belongs.
    pub struct SeedRow in SeedsSchema ("seeds", 1) {
        /// Stable id: first 16 hex digits of blake3 of the normalised text (`data::prompt_id`).
        pub id: String,
        pub text: String,
        pub label: crate::game::SeedLabel,
        /// Source name (`advbench`, `harmbench_val`, `alpaca_eval`, …).
        pub source: String,
        /// The source's own category (empty when it has none).
        pub category: String,
        /// `train`, `holdout_attacker` (attacker-diversity eval) or `eval`.
        pub split: Split,
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
                label: crate::game::SeedLabel::Harmful,
                source: "advbench".into(),
                category: "c".into(),
                split: Split::Train,
                suite: None,
            },
            SeedRow {
                id: "b".into(),
                text: "t2 ünïcode".into(),
                label: crate::game::SeedLabel::Benign,
                source: "x".into(),
                category: "".into(),
                split: Split::Eval,
                suite: Some("benign".into()),
            },
        ];
        let bytes = to_parquet_bytes::<SeedsSchema>(&rows).expect("write");
        assert_eq!(bytes, to_parquet_bytes::<SeedsSchema>(&rows).expect("write again"));
        assert_eq!(from_parquet_bytes::<SeedsSchema>(bytes).expect("read"), rows);
    }
}
