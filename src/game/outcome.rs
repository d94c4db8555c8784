//! The 15 game outcomes of method.md §2.2. They only tag samples (metrics, tie removal);
//! rewards are computed in `reward.rs`. Used by the judge stage and the update metrics.
use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// One outcome tag; the serde names are the original implementation's enum values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    // Attacker, revision faithfulness
    AttackerFaithfulRevision,
    AttackerUnfaithfulRevision,
    // Attacker, response harm
    AttackerWinSuccessfulHarmfulRequest,
    AttackerWinSuccessfulBenignRequest,
    AttackerLoseFailedHarmfulRequest,
    AttackerLoseFailedBenignRequest,
    // Attacker, refusal
    AttackerWinBenignRefusal,
    AttackerLoseBenignCompliance,
    AttackerWinHarmfulCompliance,
    AttackerLoseHarmfulRefusal,
    // Defender
    DefenderWinSuccessfulDefense,
    DefenderLoseBrokenDefense,
    DefenderWinCorrectRefusal,
    DefenderLoseWrongRefusal,
    // Either role: a label the reward depends on was missing (N/A).
    Tie,
}

impl Outcome {
    pub const ALL: [Outcome; 15] = [
        Outcome::AttackerFaithfulRevision,
        Outcome::AttackerUnfaithfulRevision,
        Outcome::AttackerWinSuccessfulHarmfulRequest,
        Outcome::AttackerWinSuccessfulBenignRequest,
        Outcome::AttackerLoseFailedHarmfulRequest,
        Outcome::AttackerLoseFailedBenignRequest,
        Outcome::AttackerWinBenignRefusal,
        Outcome::AttackerLoseBenignCompliance,
        Outcome::AttackerWinHarmfulCompliance,
        Outcome::AttackerLoseHarmfulRefusal,
        Outcome::DefenderWinSuccessfulDefense,
        Outcome::DefenderLoseBrokenDefense,
        Outcome::DefenderWinCorrectRefusal,
        Outcome::DefenderLoseWrongRefusal,
        Outcome::Tie,
    ];

    /// The original's string value (e.g. `attacker_faithful_revision`).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::AttackerFaithfulRevision => "attacker_faithful_revision",
            Outcome::AttackerUnfaithfulRevision => "attacker_unfaithful_revision",
            Outcome::AttackerWinSuccessfulHarmfulRequest => "attacker_win_successful_harmful_request",
            Outcome::AttackerWinSuccessfulBenignRequest => "attacker_win_successful_benign_request",
            Outcome::AttackerLoseFailedHarmfulRequest => "attacker_lose_failed_harmful_request",
            Outcome::AttackerLoseFailedBenignRequest => "attacker_lose_failed_benign_request",
            Outcome::AttackerWinBenignRefusal => "attacker_win_benign_refusal",
            Outcome::AttackerLoseBenignCompliance => "attacker_lose_benign_compliance",
            Outcome::AttackerWinHarmfulCompliance => "attacker_win_harmful_compliance",
            Outcome::AttackerLoseHarmfulRefusal => "attacker_lose_harmful_refusal",
            Outcome::DefenderWinSuccessfulDefense => "defender_win_successful_defense",
            Outcome::DefenderLoseBrokenDefense => "defender_lose_broken_defense",
            Outcome::DefenderWinCorrectRefusal => "defender_win_correct_refusal",
            Outcome::DefenderLoseWrongRefusal => "defender_lose_wrong_refusal",
            Outcome::Tie => "tie",
        }
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

/// The tags of one sample, ordered (so serialisation is deterministic).
pub type OutcomeSet = BTreeSet<Outcome>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifteen_outcomes_with_distinct_names_that_round_trip() {
        let names: BTreeSet<&str> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(names.len(), 15);
        for o in Outcome::ALL {
            assert_eq!(Outcome::parse(o.as_str()), Some(o));
            assert_eq!(serde_json::to_string(&o).expect("serialise"), format!("\"{}\"", o.as_str()));
        }
    }
}
