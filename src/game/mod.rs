//! The self-play game (method.md §1–§2): roles and seed kinds, the attacker/defender prompts,
//! hidden-CoT parsing, the outcome tags and the reward table. Called by the rollout stage
//! (prompts, parsing), the judge stage (rewards, filtering) and the eval suites (answer
//! extraction).
//!
//! Data flow of one game:
//!   seed (text, SeedKind) --[`roles::attack_turn`]--> attacker ChatPrompt | verbatim seed | skip
//!   attacker raw output --[`cot::public_text`]--> public attack (only public text travels on)
//!   public attack --[`prompts::defender_prompt`]--> defender ChatPrompt
//!   defender raw output --[`cot::public_text`]--> public answer
//!   judge labels (Q, R, H) --[`reward::score_game`]--> per-role rewards + outcome tags
//!   --[`reward::training_rewards`]--> the samples that enter the RL buffer (§2.5)
pub mod cot;
#[cfg(feature = "compute")]
pub mod demos;
pub mod outcome;
pub mod prompts;
pub mod reward;
pub mod roles;
pub mod turn_stats;

pub use cot::{cot_format_check_and_extract, eval_extract_answer, public_text, AnswerSource, CotRule, EvalAnswer, ParsedResponse, PublicTurn};
pub use outcome::{Outcome, OutcomeSet};
pub use prompts::{
    attacker_prompt, defender_prompt, postfill_prompt, postfill_template_digest, postfilled_sft_target, template_digest, ChatPrompt, ChatRole, DefenderStyle,
    Message, TemplateDigest, THINKING_PREFIX,
};
#[cfg(feature = "compute")]
pub use prompts::{render_prompt, rollout_sampling};
pub use reward::{score_game, training_rewards, CotFormat, GameRecord, GameVerdict, JudgeLabels, RewardScheme, RewardTerms, RoleReward, ScoredGame};
pub use roles::{attack_turn, AttackTurn, GameMode, GameOptions, Role, SeedKind, SeedLabel};
pub use turn_stats::turn_stats;
