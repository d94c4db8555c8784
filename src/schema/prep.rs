//! `prep.parquet` of a `prep@i` artifact: the iteration's seed batch with its revision
//! marking (method.md §1.1). Written by stages/prep.rs; read by `rollout@i`.
crate::parquet_schema! {
    /// One seed of the batch.
    pub struct PrepRow in PrepSchema ("prep", 1) {
        /// Position in the batch (0-based); the row id for per-row seeding downstream.
        pub row: u32,
        /// `SeedRow::id` of the seed.
        pub seed_id: String,
        pub text: String,
        pub label: crate::game::SeedLabel,
        /// `generated_harmful`, `vanilla_harmful`, `generated_benign` or `vanilla_benign`.
        pub data_type: crate::game::SeedKind,
        /// True for `generated_*`: the attacker revises this seed; otherwise it goes to the
        /// defender verbatim.
        pub revise: bool,
        pub source: String,
        pub category: String,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{from_parquet_bytes, to_parquet_bytes};

    #[test]
    fn prep_round_trip() {
        let rows = vec![PrepRow {
            row: 0,
            seed_id: "s".into(),
            text: "t".into(),
            label: crate::game::SeedLabel::Benign,
            data_type: crate::game::SeedKind::VanillaBenign,
            revise: false,
            source: "x".into(),
            category: "".into(),
        }];
        assert_eq!(from_parquet_bytes::<PrepSchema>(to_parquet_bytes::<PrepSchema>(&rows).expect("write")).expect("read"), rows);
    }
}
