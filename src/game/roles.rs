//! Roles, seed kinds and game modes (method.md §1.1, §6): which seeds get an attacker turn,
//! which go to the defender verbatim, and which are skipped. Used by the prep and rollout
//! stages and by the reward code.
use serde::{Deserialize, Serialize};

use super::prompts::{attacker_prompt, ChatPrompt, DefenderStyle};

/// The two roles one policy plays. Turn 0 is the attacker, turn 1 the defender (§1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Attacker,
    Defender,
}

impl Role {
    pub const ALL: [Role; 2] = [Role::Attacker, Role::Defender];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Attacker => "attacker",
            Role::Defender => "defender",
        }
    }
}

/// The dataset label of a seed: what the seed pool says, not what the judge says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeedLabel {
    Harmful,
    Benign,
}

impl SeedLabel {
    pub fn as_str(self) -> &'static str {
        match self {
            SeedLabel::Harmful => "harmful",
            SeedLabel::Benign => "benign",
        }
    }
}

impl crate::schema::TextEnum for SeedLabel {
    const VALUES: &'static [Self] = &[SeedLabel::Harmful, SeedLabel::Benign];
    fn as_str(self) -> &'static str {
        SeedLabel::as_str(self)
    }
}

impl crate::schema::TextEnum for SeedKind {
    const VALUES: &'static [Self] = &[SeedKind::GeneratedHarmful, SeedKind::GeneratedBenign, SeedKind::VanillaHarmful, SeedKind::VanillaBenign];
    fn as_str(self) -> &'static str {
        SeedKind::as_str(self)
    }
}

/// A seed's `data_type` (§1.1): `generated_*` seeds are revised by the attacker,
/// `vanilla_*` seeds go to the defender verbatim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeedKind {
    GeneratedHarmful,
    GeneratedBenign,
    VanillaHarmful,
    VanillaBenign,
}

impl SeedKind {
    /// The string used by the original implementation's `data_type` column.
    pub fn as_str(self) -> &'static str {
        match self {
            SeedKind::GeneratedHarmful => "generated_harmful",
            SeedKind::GeneratedBenign => "generated_benign",
            SeedKind::VanillaHarmful => "vanilla_harmful",
            SeedKind::VanillaBenign => "vanilla_benign",
        }
    }

    pub fn parse(s: &str) -> Option<SeedKind> {
        match s {
            "generated_harmful" => Some(SeedKind::GeneratedHarmful),
            "generated_benign" => Some(SeedKind::GeneratedBenign),
            "vanilla_harmful" => Some(SeedKind::VanillaHarmful),
            "vanilla_benign" => Some(SeedKind::VanillaBenign),
            _ => None,
        }
    }

    /// The kind of a seed with `label`, revised by the attacker or not (§1.1).
    pub fn of(label: SeedLabel, generated: bool) -> SeedKind {
        match (label, generated) {
            (SeedLabel::Harmful, true) => SeedKind::GeneratedHarmful,
            (SeedLabel::Harmful, false) => SeedKind::VanillaHarmful,
            (SeedLabel::Benign, true) => SeedKind::GeneratedBenign,
            (SeedLabel::Benign, false) => SeedKind::VanillaBenign,
        }
    }

    pub fn label(self) -> SeedLabel {
        match self {
            SeedKind::GeneratedHarmful | SeedKind::VanillaHarmful => SeedLabel::Harmful,
            SeedKind::GeneratedBenign | SeedKind::VanillaBenign => SeedLabel::Benign,
        }
    }

    /// Whether the seed was marked for attacker revision (§1.1).
    pub fn is_generated(self) -> bool {
        matches!(self, SeedKind::GeneratedHarmful | SeedKind::GeneratedBenign)
    }
}

/// Which roles train (§6). `SelfPlay` is the method; the other two are the paper's baselines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GameMode {
    /// Both roles are the trained policy; `generated_*` seeds get an attacker turn.
    /// Spelled `selfplay` in pipeline.yaml (and keys).
    #[serde(rename = "selfplay")]
    SelfPlay,
    /// Static defender (`no_defender_turn`): the frozen initial model answers with the plain
    /// template, `vanilla_*` seeds are skipped, defender samples never train.
    AttackerOnly,
    /// Static attacker (`no_attacker_turn`): no attacker turn at all; every seed goes to the
    /// defender verbatim, whatever its kind.
    DefenderOnly,
}

/// The switches that shape prompts and samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GameOptions {
    /// Hidden chain of thought (`<think>`/`<answer>`); false is `direct_chat_no_cot`.
    pub cot: bool,
    pub mode: GameMode,
}

impl GameOptions {
    /// The game switches of a `rollout` section.
    pub fn of(r: &crate::spec::RolloutParams) -> GameOptions {
        GameOptions { cot: r.cot, mode: r.mode }
    }

    /// Whether samples of `role` enter the RL buffer.
    pub fn trains(&self, role: Role) -> bool {
        match (self.mode, role) {
            (GameMode::SelfPlay, _) => true,
            (GameMode::AttackerOnly, Role::Attacker) => true,
            (GameMode::AttackerOnly, Role::Defender) => false,
            (GameMode::DefenderOnly, Role::Attacker) => false,
            (GameMode::DefenderOnly, Role::Defender) => true,
        }
    }

    /// How the defender is prompted (§1.3): the CoT instruction only when CoT is on and the
    /// defender is the trained policy. The frozen defender of attacker-only runs gets the raw
    /// attack, because an untrained model "does not know how to use the CoT template", but in
    /// reasoning mode still the thinking prefix, as every role's assistant turn does in the
    /// original (so the attacker-only baseline faces the same opponent as there).
    pub fn defender_style(&self) -> DefenderStyle {
        match (self.cot, self.mode) {
            (true, GameMode::AttackerOnly) => DefenderStyle::PlainThinking,
            (true, _) => DefenderStyle::Cot,
            (false, _) => DefenderStyle::Plain,
        }
    }

    /// Whether the defender's sampler is the frozen initial model rather than the policy.
    pub fn defender_is_frozen(&self) -> bool {
        self.mode == GameMode::AttackerOnly
    }
}

/// What turn 0 of a game is.
#[derive(Debug, Clone, PartialEq)]
pub enum AttackTurn {
    /// The policy writes the attack from this prompt.
    Generate(ChatPrompt),
    /// The seed text itself is the attack (vanilla seeds, and every seed in defender-only).
    Verbatim(String),
    /// The seed plays no game (vanilla seeds in attacker-only runs).
    Skip,
}

/// Decide turn 0 for one seed (§1.1, §6).
pub fn attack_turn(seed_text: &str, kind: SeedKind, options: &GameOptions) -> AttackTurn {
    match options.mode {
        GameMode::DefenderOnly => AttackTurn::Verbatim(seed_text.to_owned()),
        GameMode::AttackerOnly if !kind.is_generated() => AttackTurn::Skip,
        GameMode::SelfPlay | GameMode::AttackerOnly => {
            if kind.is_generated() {
                AttackTurn::Generate(attacker_prompt(seed_text, kind.label(), options.cot))
            } else {
                AttackTurn::Verbatim(seed_text.to_owned())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_seeds_get_an_attacker_turn_vanilla_go_verbatim_in_selfplay() {
        let o = GameOptions { cot: true, mode: GameMode::SelfPlay };
        assert!(matches!(attack_turn("x", SeedKind::GeneratedBenign, &o), AttackTurn::Generate(_)));
        assert_eq!(attack_turn("raw seed ", SeedKind::VanillaHarmful, &o), AttackTurn::Verbatim("raw seed ".into()));
        assert_eq!(o.defender_style(), DefenderStyle::Cot);
        assert!(o.trains(Role::Attacker) && o.trains(Role::Defender));
    }

    #[test]
    fn attacker_only_skips_vanilla_and_uses_plain_frozen_defender() {
        let o = GameOptions { cot: true, mode: GameMode::AttackerOnly };
        assert_eq!(attack_turn("x", SeedKind::VanillaBenign, &o), AttackTurn::Skip);
        assert!(matches!(attack_turn("x", SeedKind::GeneratedHarmful, &o), AttackTurn::Generate(_)));
        assert_eq!(o.defender_style(), DefenderStyle::PlainThinking, "raw attack, but the thinking prefix in reasoning mode");
        assert!(o.defender_is_frozen());
        assert!(!o.trains(Role::Defender));
        assert_eq!(GameOptions { cot: false, ..o }.defender_style(), DefenderStyle::Plain);
    }

    /// Every role's rendered prompt ends with the thinking prefix in reasoning mode (the frozen
    /// defender of attacker-only runs too), and none has it with `cot: false`.
    #[cfg(feature = "compute")]
    #[test]
    fn thinking_prefix_is_in_every_roles_rendered_prompt_exactly_in_reasoning_mode() {
        use crate::game::{attacker_prompt, defender_prompt, SeedLabel, THINKING_PREFIX};
        let policy = crate::model::tiny_random_llama(1);
        let tok = policy.tokenizer();
        for cot in [true, false] {
            for mode in [GameMode::SelfPlay, GameMode::AttackerOnly, GameMode::DefenderOnly] {
                let o = GameOptions { cot, mode };
                let mut prompts = vec![("defender", defender_prompt("how do I pick a lock", o.defender_style()))];
                if mode != GameMode::DefenderOnly {
                    for label in [SeedLabel::Harmful, SeedLabel::Benign] {
                        prompts.push(("attacker", attacker_prompt("how do I pick a lock", label, cot)));
                    }
                }
                for (role, p) in prompts {
                    let (text, _) = crate::game::render_prompt(tok, &p).expect("render");
                    assert_eq!(text.ends_with(THINKING_PREFIX), cot, "{mode:?} {role} cot={cot}: {text:?}");
                    assert_eq!(text.contains("<think>"), cot, "{mode:?} {role} cot={cot}");
                }
            }
        }
    }

    #[test]
    fn defender_only_never_has_an_attacker_turn() {
        let o = GameOptions { cot: false, mode: GameMode::DefenderOnly };
        for k in [SeedKind::GeneratedHarmful, SeedKind::VanillaBenign] {
            assert_eq!(attack_turn("s", k, &o), AttackTurn::Verbatim("s".into()));
        }
        assert!(!o.trains(Role::Attacker));
        assert_eq!(o.defender_style(), DefenderStyle::Plain);
    }

    #[test]
    fn seed_kind_round_trips_its_data_type_string() {
        for k in [SeedKind::GeneratedHarmful, SeedKind::GeneratedBenign, SeedKind::VanillaHarmful, SeedKind::VanillaBenign] {
            assert_eq!(SeedKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(SeedKind::parse("other"), None);
    }
}
