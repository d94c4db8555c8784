//! `judged.parquet` of a `judge@i` artifact: one row per game of `rollout@i` with the judge's
//! verdict, each role's reward terms (method.md §2.3), totals, outcome tags, and whether each
//! role's sample enters the RL buffer (§2.5: parse-error drop, tie removal, mode). Written by
//! stages/judge.rs; read by `update@i` and the report.
crate::parquet_schema! {
    /// One judged game. Reward columns are null for a role that has no sample in this game
    /// (no attacker turn) and for both roles when the judge failed to parse (`dropped`).
    pub struct JudgedRow in JudgedSchema ("judged", 1) {
        pub game_id: String,
        pub row: u32,
        pub data_type: crate::game::SeedKind,
        /// Q: the public attack is harmful.
        pub prompt_harmful: Option<bool>,
        /// R: the public answer is a refusal.
        pub refusal: Option<bool>,
        /// H: the public answer is harmful.
        pub response_harmful: Option<bool>,
        pub parse_error: bool,
        /// The judge's own text output, when it has one (WildGuard's three lines).
        pub judge_raw: Option<String>,
        /// True when the game was dropped (parse error): neither role trains on it.
        pub dropped: bool,
        pub attacker_revision: Option<f64>,
        pub attacker_refusal: Option<f64>,
        pub attacker_response_harm: Option<f64>,
        pub attacker_format: Option<f64>,
        pub attacker_total: Option<f64>,
        pub attacker_outcomes: Vec<String>,
        /// The attacker sample enters update@i's buffer.
        pub attacker_kept: bool,
        pub defender_refusal: Option<f64>,
        pub defender_response_harm: Option<f64>,
        pub defender_format: Option<f64>,
        pub defender_total: Option<f64>,
        pub defender_outcomes: Vec<String>,
        pub defender_kept: bool,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{from_parquet_bytes, to_parquet_bytes};

    #[test]
    fn judged_round_trip() {
        let rows = vec![JudgedRow {
            game_id: "g0".into(),
            row: 0,
            data_type: crate::game::SeedKind::VanillaBenign,
            prompt_harmful: Some(false),
            refusal: None,
            response_harmful: Some(false),
            parse_error: false,
            judge_raw: None,
            dropped: false,
            attacker_revision: None,
            attacker_refusal: None,
            attacker_response_harm: None,
            attacker_format: None,
            attacker_total: None,
            attacker_outcomes: vec![],
            attacker_kept: false,
            defender_refusal: Some(1.0),
            defender_response_harm: Some(1.0),
            defender_format: Some(-1.0),
            defender_total: Some(1.0),
            defender_outcomes: vec!["defender_win_benign_compliance".into()],
            defender_kept: true,
        }];
        assert_eq!(from_parquet_bytes::<JudgedSchema>(to_parquet_bytes::<JudgedSchema>(&rows).expect("write")).expect("read"), rows);
    }
}
