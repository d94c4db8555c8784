//! The `base` stage: import the configured starting checkpoint (GGUF file, HF directory, or
//! the built-in tiny random Llama) into a policy artifact — `model.safetensors`,
//! `config.json`, `tokenizer.json`, `tokenizer_config.json` via `Policy::save_hf_dir` — so no
//! later stage reads GGUF. The same artifact is the frozen reference of every update.
//! Also holds the helpers the rollout/update stages and the `generate` verb use to open a
//! policy artifact (digest-verified) on the configured device.
use anyhow::Context;
use tch::Kind;

use super::{Stage, StageContext};
use crate::model::Policy;
use crate::spec::{Device, Dtype, ModelFormat, Spec};

pub struct Base;
/// Bump when this stage's output for the same inputs would change.
pub const VERSION: u32 = 1;

/// The files of a policy artifact (an HF directory).
pub const POLICY_FILES: [&str; 4] = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"];

/// The tch device of the spec's `run.device`.
pub fn tch_device(d: Device) -> tch::Device {
    match d {
        Device::Cpu => tch::Device::Cpu,
        Device::Cuda => tch::Device::Cuda(0),
    }
}

/// The tch kind of `base.dtype` (every policy of a run has the base's dtype).
pub fn tch_kind(spec: &Spec) -> Kind {
    match spec.raw.base.dtype {
        Dtype::F32 => Kind::Float,
        Dtype::Bf16 => Kind::BFloat16,
    }
}

/// Open the policy artifact filling `role` (every file digest-checked first) on the run's
/// device in the base dtype.
pub fn load_policy_input(ctx: &StageContext<'_>, role: &str) -> anyhow::Result<Policy> {
    for f in POLICY_FILES {
        ctx.input_file(role, f)?;
    }
    let dir = ctx.input(role)?.dir().to_path_buf();
    Policy::load(&dir, tch_device(ctx.device), tch_kind(ctx.spec)).with_context(|| format!("{}: load policy {role} from {}", ctx.node, dir.display()))
}

/// Write `policy` as this node's policy files (an HF directory inside the artifact).
pub fn write_policy(ctx: &mut StageContext<'_>, policy: &Policy) -> anyhow::Result<()> {
    let mut dir = None;
    for f in POLICY_FILES {
        dir = ctx.output.path(f)?.parent().map(std::path::Path::to_path_buf);
    }
    let dir = dir.expect("output files live in the staging directory");
    policy.save_hf_dir(&dir).with_context(|| format!("{}: save policy", ctx.node))?;
    Ok(())
}

impl Stage for Base {
    fn kind(&self) -> &'static str {
        "base"
    }
    fn version(&self) -> u32 {
        VERSION
    }
    fn run(&self, ctx: &mut StageContext<'_>) -> anyhow::Result<()> {
        tch::set_num_threads(ctx.threads as i32);
        let spec = ctx.spec;
        // The engine already checked every pinned file's sha256 (plan files component)
        // before running this node, so the path holds exactly the pinned bytes.
        let policy = match spec.raw.base.model.format {
            ModelFormat::Gguf | ModelFormat::HfDir => {
                Policy::load(&spec.base_model_path, tch::Device::Cpu, tch_kind(spec)).with_context(|| format!("base: import {}", spec.base_model_path.display()))?
            }
            ModelFormat::TinyRandom => {
                let p = crate::model::tiny_random_llama(ctx.seed);
                if tch_kind(spec) == Kind::Float {
                    p
                } else {
                    anyhow::bail!("base.model.format tiny_random supports dtype f32 only")
                }
            }
        };
        let cfg = policy.config();
        ctx.output.metric("parameters", policy.named_parameters().iter().map(|(_, t)| t.numel()).sum::<usize>());
        ctx.output.metric("layers", cfg.num_hidden_layers);
        ctx.output.metric("hidden_size", cfg.hidden_size);
        ctx.output.metric("vocab_size", cfg.vocab_size);
        write_policy(ctx, &policy)
    }
}
