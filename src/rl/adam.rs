//! Adam over named tch tensors with exportable state, and global grad-norm clipping
//! (method.md §3.2: Adam β = (0.9, 0.95), ε = 1e-8, weight decay 0, clip 1.0). Called by
//! `update::run_update`; the update stage saves `export_state()` as the optimiser artifact and
//! feeds it back through `import_state` so a resumed run continues exactly.
//!
//! Not tch's `nn::Optimizer`: its state cannot be saved. The step mirrors torch.optim.Adam
//! (single-tensor path): `m.lerp_(g, 1−β1)`, `v = β2·v + (1−β2)·g²`,
//! `p −= lr/(1−β1^t) · m / (sqrt(v)/sqrt(1−β2^t) + ε)`. Weight decay, when non-zero, is
//! decoupled (AdamW), as DeepSpeed's FusedAdam in OpenRLHF applies it; at 0 both agree.
//! Moments are f32. A parameter stored in another dtype (bf16 on GPU) gets an f32 master copy
//! that takes the updates and is copied back, as DeepSpeed's bf16 optimizer does; otherwise a
//! 5e-7 learning rate would vanish in bf16 rounding.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamConfig {
    /// The paper's run: betas (0.9, 0.95), eps 1e-8, weight decay 0.
    fn default() -> Self {
        AdamConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.0 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdamStateError {
    #[error("optimiser state has no `step` entry")]
    MissingStep,
    #[error("optimiser state entry `{name}` is not a known `<param>.exp_avg|exp_avg_sq|master` name")]
    UnknownEntry { name: String },
    #[error("optimiser state for parameter `{param}` lacks `{missing}`")]
    Incomplete { param: String, missing: &'static str },
    #[error("optimiser state for `{param}` has shape {found:?}, parameter has {expected:?}")]
    ShapeMismatch { param: String, expected: Vec<i64>, found: Vec<i64> },
    #[error("optimiser state has moments for `{param}`, which is not a parameter being trained")]
    UnknownParam { param: String },
}

#[derive(Debug)]
struct ParamState {
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    master: Option<Tensor>,
}

/// Adam with named state. `steps_taken` is also the LR schedule's index.
#[derive(Debug)]
pub struct Adam {
    config: AdamConfig,
    steps_taken: u64,
    state: BTreeMap<String, ParamState>,
}

const STEP_KEY: &str = "step";

impl Adam {
    pub fn new(config: AdamConfig) -> Adam {
        Adam { config, steps_taken: 0, state: BTreeMap::new() }
    }

    pub fn config(&self) -> &AdamConfig {
        &self.config
    }

    /// Optimizer steps taken so far (over the whole run, across resumes).
    pub fn steps_taken(&self) -> u64 {
        self.steps_taken
    }

    /// One Adam step at learning rate `lr` using each parameter's `.grad()`. Parameters whose
    /// gradient is undefined are skipped (their moments do not advance), as torch does.
    pub fn step(&mut self, params: &[(String, Tensor)], lr: f64) {
        let AdamConfig { beta1, beta2, eps, weight_decay } = self.config;
        self.steps_taken += 1;
        let t = self.steps_taken as i32;
        let bias1 = 1.0 - beta1.powi(t);
        let bias2_sqrt = (1.0 - beta2.powi(t)).sqrt();
        let step_size = lr / bias1;
        tch::no_grad(|| {
            for (name, param) in params {
                let grad = param.grad();
                if !grad.defined() {
                    continue;
                }
                let grad = grad.to_kind(Kind::Float);
                let st = self.state.entry(name.clone()).or_insert_with(|| ParamState {
                    exp_avg: grad.zeros_like(),
                    exp_avg_sq: grad.zeros_like(),
                    master: (param.kind() != Kind::Float).then(|| param.detach().to_kind(Kind::Float)),
                });
                let _ = st.exp_avg.lerp_(&grad, 1.0 - beta1);
                let _ = st.exp_avg_sq.g_mul_scalar_(beta2);
                let _ = st.exp_avg_sq.g_add_(&((&grad * &grad) * (1.0 - beta2)));
                let denom = (st.exp_avg_sq.sqrt() / bias2_sqrt).g_add_scalar(eps);
                let mut target = match &st.master {
                    Some(m) => m.shallow_clone(),
                    None => param.shallow_clone(),
                };
                if weight_decay != 0.0 {
                    let _ = target.g_mul_scalar_(1.0 - lr * weight_decay);
                }
                let _ = target.g_add_(&((&st.exp_avg / &denom) * (-step_size)));
                if let Some(m) = &st.master {
                    param.shallow_clone().copy_(&m.to_kind(param.kind()));
                }
            }
        });
    }

    /// The state as named tensors: `step` (int64 scalar) and, per parameter,
    /// `<name>.exp_avg`, `<name>.exp_avg_sq` and (non-f32 parameters) `<name>.master`.
    /// Tensors are copies on the CPU, ready for safetensors.
    pub fn export_state(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![(STEP_KEY.to_owned(), Tensor::from(self.steps_taken as i64))];
        for (name, st) in &self.state {
            out.push((format!("{name}.exp_avg"), st.exp_avg.to_device(tch::Device::Cpu).copy()));
            out.push((format!("{name}.exp_avg_sq"), st.exp_avg_sq.to_device(tch::Device::Cpu).copy()));
            if let Some(m) = &st.master {
                out.push((format!("{name}.master"), m.to_device(tch::Device::Cpu).copy()));
            }
        }
        out
    }

    /// Rebuild from `export_state()` output, placing moments on each parameter's device and
    /// checking names and shapes against the parameters being trained.
    pub fn import_state(config: AdamConfig, state: Vec<(String, Tensor)>, params: &[(String, Tensor)]) -> Result<Adam, AdamStateError> {
        let by_name: BTreeMap<&str, &Tensor> = params.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let mut steps_taken = None;
        let mut parts: BTreeMap<String, [Option<Tensor>; 3]> = BTreeMap::new();
        for (name, tensor) in state {
            if name == STEP_KEY {
                steps_taken = Some(tensor.int64_value(&[]) as u64);
                continue;
            }
            let (param, slot) = if let Some(p) = name.strip_suffix(".exp_avg_sq") {
                (p, 1)
            } else if let Some(p) = name.strip_suffix(".exp_avg") {
                (p, 0)
            } else if let Some(p) = name.strip_suffix(".master") {
                (p, 2)
            } else {
                return Err(AdamStateError::UnknownEntry { name });
            };
            let Some(target) = by_name.get(param) else {
                return Err(AdamStateError::UnknownParam { param: param.to_owned() });
            };
            if tensor.size() != target.size() {
                return Err(AdamStateError::ShapeMismatch { param: param.to_owned(), expected: target.size(), found: tensor.size() });
            }
            parts.entry(param.to_owned()).or_default()[slot] = Some(tensor.to_kind(Kind::Float).to_device(target.device()));
        }
        let steps_taken = steps_taken.ok_or(AdamStateError::MissingStep)?;
        let mut st = BTreeMap::new();
        for (param, [m, v, master]) in parts {
            let exp_avg = m.ok_or(AdamStateError::Incomplete { param: param.clone(), missing: "exp_avg" })?;
            let exp_avg_sq = v.ok_or(AdamStateError::Incomplete { param: param.clone(), missing: "exp_avg_sq" })?;
            let needs_master = by_name[param.as_str()].kind() != Kind::Float;
            if needs_master && master.is_none() {
                return Err(AdamStateError::Incomplete { param, missing: "master" });
            }
            st.insert(param, ParamState { exp_avg, exp_avg_sq, master: if needs_master { master } else { None } });
        }
        Ok(Adam { config, steps_taken, state: st })
    }
}

impl Adam {
    /// Writes [`Adam::export_state`] to a safetensors file.
    pub fn save(&self, path: &std::path::Path) -> anyhow::Result<()> {
        let state = self.export_state();
        crate::model::tensors::save_safetensors(path, state.iter().map(|(n, t)| (n.as_str(), t)))?;
        Ok(())
    }

    /// Reads a state written by [`Adam::save`] for `params` ([`Adam::import_state`]'s checks).
    pub fn load(config: AdamConfig, path: &std::path::Path, params: &[(String, Tensor)]) -> anyhow::Result<Adam> {
        let state: Vec<(String, Tensor)> = crate::model::tensors::load_safetensors(path)?.into_iter().collect();
        Adam::import_state(config, state, params).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }
}

/// `torch.nn.utils.clip_grad_norm_(params, max_norm)` with the 2-norm: total = ‖(‖g_p‖)_p‖,
/// every gradient is multiplied by `min(max_norm / (total + 1e-6), 1)`. Returns the total norm
/// before clipping. Norms are computed in f32 whatever the gradient dtype.
pub fn clip_grad_norm(params: &[(String, Tensor)], max_norm: f64) -> f64 {
    tch::no_grad(|| {
        let grads: Vec<Tensor> = params.iter().map(|(_, p)| p.grad()).filter(Tensor::defined).collect();
        if grads.is_empty() {
            return 0.0;
        }
        // Per-parameter norms stay on their device and are gathered on the first gradient's
        // device, as torch does; only the final scalar is read back.
        let first_device = grads[0].device();
        // Fixed-split sums (`model::reduce`): the norm, hence the clipping factor and every
        // weight, must not depend on the intra-op thread count.
        let norms: Vec<Tensor> = grads.iter().map(|g| crate::model::reduce::norm(g).to_device(first_device)).collect();
        let total = crate::model::reduce::norm(&Tensor::stack(&norms, 0));
        let total_f = total.double_value(&[]);
        // f32 arithmetic like torch: coef = max_norm / (total + 1e-6), clamped to 1, and
        // applied even when it is 1 (a no-op).
        let coef = (Tensor::from(max_norm as f32).to_device(first_device) / (total + 1e-6)).clamp_max(1.0).double_value(&[]);
        for mut g in grads {
            let _ = g.g_mul_scalar_(coef);
        }
        total_f
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_through_named_tensors() {
        let p = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let params = vec![("w".to_owned(), p.shallow_clone())];
        let mut adam = Adam::new(AdamConfig::default());
        (&p * &p).sum(Kind::Float).backward();
        adam.step(&params, 0.1);
        let exported = adam.export_state();
        let names: Vec<&str> = exported.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, vec!["step", "w.exp_avg", "w.exp_avg_sq"]);
        let back = Adam::import_state(AdamConfig::default(), exported, &params).expect("import");
        assert_eq!(back.steps_taken(), 1);
        assert!(Adam::import_state(AdamConfig::default(), vec![], &params).is_err());
        let bad = vec![("step".to_owned(), Tensor::from(1i64)), ("v.exp_avg".to_owned(), Tensor::zeros([2], (Kind::Float, tch::Device::Cpu)))];
        assert!(matches!(Adam::import_state(AdamConfig::default(), bad, &params), Err(AdamStateError::UnknownParam { .. })));
    }
}
