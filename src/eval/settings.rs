//! The evaluation settings a node of the `eval` stage carries in its `Params` (plain data,
//! no model: the key is built from them in the core crate too); src/eval/protocol.rs runs them.
use std::collections::BTreeMap;

/// The rollout's sampling settings, which the holdout attacker eval samples with.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AttackerSampling {
    pub temperature: f64,
    pub top_p: f64,
    pub top_k: u32,
    pub max_new_tokens: u32,
}

impl AttackerSampling {
    /// The `rollout` section's sampling settings.
    pub fn of(r: &crate::spec::RolloutParams) -> AttackerSampling {
        AttackerSampling { temperature: r.temperature, top_p: r.top_p, top_k: r.top_k, max_new_tokens: r.max_new_tokens }
    }

    /// As the sampler takes them (`top_k` 0 = off). The rollout samples with these too
    /// ([`crate::game::rollout_sampling`]).
    #[cfg(feature = "compute")]
    pub fn sampling_params(&self) -> crate::model::SamplingParams {
        crate::model::SamplingParams {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: (self.top_k > 0).then_some(self.top_k as usize),
            max_new_tokens: self.max_new_tokens as usize,
            ..Default::default()
        }
    }
}

/// The evaluation settings: the `eval` section, the game's CoT switch, the rollout sampling
/// settings (the holdout attacker samples with them) and each custom suite's resolved file.
#[derive(Debug, Clone)]
pub struct EvalSettings {
    pub eval: crate::spec::EvalParams,
    pub cot: bool,
    pub attacker_sampling: AttackerSampling,
    /// Each custom suite's file, resolved.
    pub custom_suite_paths: BTreeMap<String, std::path::PathBuf>,
}

impl EvalSettings {
    pub fn of(spec: &crate::spec::Spec) -> EvalSettings {
        let r = &spec.raw.rollout;
        EvalSettings {
            eval: spec.raw.eval.clone(),
            cot: r.cot,
            attacker_sampling: AttackerSampling::of(r),
            custom_suite_paths: spec.raw.eval.custom_suites.iter().map(|(n, c)| (n.clone(), spec.config_relative(&c.path))).collect(),
        }
    }
}
