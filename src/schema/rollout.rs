//! `games.parquet` of a `rollout@i` artifact: one row per self-play game (method.md §1, §3.3):
//! the seed, both turns' rendered prompts, raw outputs, public texts, CoT-format flags, token
//! ids (prompt and response separately) and the sampler's log-probs. Written by
//! stages/rollout.rs; read by `judge@i` and `update@i`.
crate::parquet_schema! {
    /// One game. Attacker columns are empty / null when the seed went to the defender
    /// verbatim (vanilla seeds, defender-only runs).
    pub struct GameRow in GamesSchema ("games", 1) {
        /// `g<row>`: unique within the rollout, stable across reruns.
        pub game_id: String,
        /// `PrepRow::row` of the seed; the row id of per-row seeding.
        pub row: u32,
        pub seed_id: String,
        pub seed_text: String,
        /// `harmful` or `benign` (the dataset label).
        pub label: crate::game::SeedLabel,
        /// `generated_*` / `vanilla_*` (method.md §1.1).
        pub data_type: crate::game::SeedKind,
        pub category: String,
        /// True when the policy wrote the attack (an attacker sample exists).
        pub attacker_turn: bool,
        /// The attacker's prompt as rendered by the chat template (incl. the CoT prefix).
        pub attacker_prompt: Option<String>,
        /// The attacker's raw output (special tokens skipped; hidden CoT included).
        pub attacker_output: Option<String>,
        /// `Some(violation)` with CoT; `None` without CoT or without an attacker turn.
        pub attacker_format_violation: Option<bool>,
        pub attacker_prompt_ids: Vec<u32>,
        pub attacker_response_ids: Vec<u32>,
        /// log π(token) of each attacker response token under the sampling policy (T = 1).
        pub attacker_logprobs: Vec<f32>,
        pub attacker_finished_by_stop: Option<bool>,
        /// What the defender and the judge see: the attacker's public answer or the seed.
        pub public_attack: String,
        /// True when the frozen base model answered (attacker-only runs).
        pub defender_frozen: bool,
        pub defender_prompt: String,
        pub defender_output: String,
        pub defender_format_violation: Option<bool>,
        pub defender_prompt_ids: Vec<u32>,
        pub defender_response_ids: Vec<u32>,
        pub defender_logprobs: Vec<f32>,
        pub defender_finished_by_stop: bool,
        /// What the judge sees as the response.
        pub public_answer: String,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{from_parquet_bytes, to_parquet_bytes};

    #[test]
    fn games_round_trip() {
        let rows = vec![GameRow {
            game_id: "g0".into(),
            row: 0,
            seed_id: "s".into(),
            seed_text: "t".into(),
            label: crate::game::SeedLabel::Harmful,
            data_type: crate::game::SeedKind::GeneratedHarmful,
            category: "".into(),
            attacker_turn: true,
            attacker_prompt: Some("p".into()),
            attacker_output: Some("o".into()),
            attacker_format_violation: Some(true),
            attacker_prompt_ids: vec![1, 2],
            attacker_response_ids: vec![3],
            attacker_logprobs: vec![-0.5],
            attacker_finished_by_stop: Some(false),
            public_attack: "a".into(),
            defender_frozen: false,
            defender_prompt: "dp".into(),
            defender_output: "do".into(),
            defender_format_violation: None,
            defender_prompt_ids: vec![4],
            defender_response_ids: vec![5, 6],
            defender_logprobs: vec![-1.0, -2.0],
            defender_finished_by_stop: true,
            public_answer: "ans".into(),
        }];
        assert_eq!(from_parquet_bytes::<GamesSchema>(to_parquet_bytes::<GamesSchema>(&rows).expect("write")).expect("read"), rows);
    }
}
