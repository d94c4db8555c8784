//! What a rollout's turns looked like, per role: the `rollout` stage's manifest metrics, shown
//! by `log` per iteration. Besides counts and lengths: how often a turn is well-formed, how
//! often it hit the token cap, and how often it was cut inside its reasoning (no `</think>`),
//! where the parser's fallback makes the whole reasoning public (method.md §1.4). These are
//! what the default caps were chosen from (docs/benchmarks.md).
use serde_json::{json, Value};

use crate::schema::rollout::GameRow;

/// (metric name, value) for the rows of one rollout; the frozen defender of attacker-only
/// runs is not counted as a defender turn.
pub fn turn_stats(rows: &[GameRow], cot: bool) -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = Vec::new();
    let n = rows.len().max(1) as f64;
    let attackers: Vec<&GameRow> = rows.iter().filter(|r| r.attacker_turn).collect();
    out.push(("games".into(), json!(rows.len())));
    out.push(("attacker_turns".into(), json!(attackers.len())));
    out.push(("defender_mean_tokens".into(), json!(rows.iter().map(|r| r.defender_response_ids.len()).sum::<usize>() as f64 / n)));
    out.push(("defender_finished_rate".into(), json!(rows.iter().filter(|r| r.defender_finished_by_stop).count() as f64 / n)));
    if !attackers.is_empty() {
        let na = attackers.len() as f64;
        out.push(("attacker_mean_tokens".into(), json!(attackers.iter().map(|r| r.attacker_response_ids.len()).sum::<usize>() as f64 / na)));
        out.push(("attacker_finished_rate".into(), json!(attackers.iter().filter(|r| r.attacker_finished_by_stop == Some(true)).count() as f64 / na)));
    }
    if cot {
        let v: Vec<bool> =
            rows.iter().flat_map(|r| [r.attacker_format_violation, (!r.defender_frozen).then_some(r.defender_format_violation).flatten()]).flatten().collect();
        if !v.is_empty() {
            out.push(("format_violation_rate".into(), json!(v.iter().filter(|x| **x).count() as f64 / v.len() as f64)));
        }
    }
    // Per turn: (format violation, stopped by itself, raw output).
    type TurnFlags<'a> = (Option<bool>, bool, &'a str);
    let turns: [(&str, Vec<TurnFlags>); 2] = [
        (
            "attacker",
            attackers
                .iter()
                .map(|r| (r.attacker_format_violation, r.attacker_finished_by_stop == Some(true), r.attacker_output.as_deref().unwrap_or("")))
                .collect(),
        ),
        (
            "defender",
            rows.iter()
                .filter(|r| !r.defender_frozen)
                .map(|r| (r.defender_format_violation, r.defender_finished_by_stop, r.defender_output.as_str()))
                .collect(),
        ),
    ];
    for (role, t) in turns {
        if t.is_empty() {
            continue;
        }
        let n = t.len() as f64;
        let rate = |f: &dyn Fn(&TurnFlags) -> bool| t.iter().filter(|x| f(x)).count() as f64 / n;
        out.push((format!("{role}_truncated_rate"), json!(rate(&|x| !x.1))));
        if cot {
            out.push((format!("{role}_well_formed_rate"), json!(rate(&|x| x.0 == Some(false)))));
            out.push((format!("{role}_truncated_in_thinking_rate"), json!(rate(&|x| !x.1 && !x.2.contains("</think>")))));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(attacker: Option<(&str, bool, bool)>, defender: (&str, bool, bool), frozen: bool) -> GameRow {
        GameRow {
            game_id: "g".into(),
            row: 0,
            seed_id: "s".into(),
            seed_text: "seed".into(),
            label: crate::game::SeedLabel::Harmful,
            data_type: if attacker.is_some() { crate::game::SeedKind::GeneratedHarmful } else { crate::game::SeedKind::VanillaHarmful },
            category: String::new(),
            attacker_turn: attacker.is_some(),
            attacker_prompt: attacker.map(|_| "p".to_string()),
            attacker_output: attacker.map(|a| a.0.to_string()),
            attacker_format_violation: attacker.map(|a| a.1),
            attacker_prompt_ids: Vec::new(),
            attacker_response_ids: attacker.map_or_else(Vec::new, |_| vec![1, 2]),
            attacker_logprobs: Vec::new(),
            attacker_finished_by_stop: attacker.map(|a| a.2),
            public_attack: String::new(),
            defender_frozen: frozen,
            defender_prompt: String::new(),
            defender_output: defender.0.to_string(),
            defender_format_violation: Some(defender.1),
            defender_prompt_ids: Vec::new(),
            defender_response_ids: vec![1; 4],
            defender_logprobs: Vec::new(),
            defender_finished_by_stop: defender.2,
            public_answer: String::new(),
        }
    }

    fn get(stats: &[(String, Value)], name: &str) -> Option<f64> {
        stats.iter().find(|(n, _)| n == name).and_then(|(_, v)| v.as_f64())
    }

    #[test]
    fn per_role_rates_count_well_formed_capped_and_cut_in_thinking_turns() {
        let rows = vec![
            // A well-formed attack that stopped; a defender cut inside its reasoning.
            row(Some(("<think>a</think><answer>b</answer>", false, true)), ("<think>long", true, false), false),
            // A malformed attack cut after its reasoning; a well-formed answer.
            row(Some(("<think>a</think> and on", true, false)), ("<think>x</think><answer>y</answer>", false, true), false),
            // A vanilla seed: defender only, stopped but malformed.
            row(None, ("plain", true, true), false),
        ];
        let s = turn_stats(&rows, true);
        assert_eq!(get(&s, "games"), Some(3.0));
        assert_eq!(get(&s, "attacker_turns"), Some(2.0));
        assert_eq!(get(&s, "attacker_well_formed_rate"), Some(0.5));
        assert_eq!(get(&s, "attacker_truncated_rate"), Some(0.5));
        assert_eq!(get(&s, "attacker_truncated_in_thinking_rate"), Some(0.0));
        assert_eq!(get(&s, "defender_well_formed_rate"), Some(1.0 / 3.0));
        assert_eq!(get(&s, "defender_truncated_rate"), Some(1.0 / 3.0));
        assert_eq!(get(&s, "defender_truncated_in_thinking_rate"), Some(1.0 / 3.0));
        // 5 turns, 3 of them violate the format.
        assert_eq!(get(&s, "format_violation_rate"), Some(0.6));
        // Without the reasoning format there is no format metric.
        assert!(get(&turn_stats(&rows, false), "defender_well_formed_rate").is_none());
    }

    #[test]
    fn the_frozen_defender_of_attacker_only_runs_is_not_a_defender_turn() {
        let rows = vec![row(Some(("<think>a</think><answer>b</answer>", false, true)), ("plain", true, true), true)];
        let s = turn_stats(&rows, true);
        assert!(get(&s, "defender_well_formed_rate").is_none());
        assert_eq!(get(&s, "format_violation_rate"), Some(0.0));
    }
}
