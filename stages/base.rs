//! The `base` stage: import the configured starting checkpoint (GGUF file, HF directory, or
//! the built-in tiny random Llama) into a policy artifact — `model.safetensors`,
//! `config.json`, `tokenizer.json`, `tokenizer_config.json` via `Policy::save_hf_dir` — so no
//! later stage reads GGUF. The same artifact is the frozen reference of every update.
//! Also holds the helpers the rollout/update stages and the `generate` verb use to open a
//! policy artifact (digest-verified) on the configured device.
use crate::spec::{Dtype, ModelFormat, Spec};
// What `run` uses (compute only: the core crate builds params and keys, never runs a stage).
#[cfg(feature = "compute")]
use {
    super::StageContext,
    crate::model::{tch_device, tch_kind, Policy, POLICY_FILES},
    anyhow::Context,
    tch::Kind,
};

/// Bump when this stage's output for the same inputs would change.
pub const VERSION: u32 = 1;

/// What `base` reads from the spec. Key: `dtype` and `format`; the checkpoint enters by its
/// sha256 pin(s) as pinned files (src/plan.rs), its path never.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Params {
    pub dtype: Dtype,
    pub format: ModelFormat,
    /// `base.model.path`, resolved (not in the key).
    #[serde(skip)]
    pub model_path: std::path::PathBuf,
}

pub fn params(spec: &Spec) -> Params {
    Params { dtype: spec.raw.base.dtype, format: spec.raw.base.model.format, model_path: spec.base_model_path.clone() }
}

impl Params {
    pub fn key(&self) -> serde_json::Value {
        super::to_key(self)
    }
}

#[cfg(feature = "compute")]
/// Open the policy artifact filling `role` (every file digest-checked first) on the run's
/// device in the base dtype `dtype`. Stages that load a policy carry `base.dtype` in their
/// `Params` outside their key: it enters every key through the base artifact, whose key
/// holds it and whose weights are stored in it.
pub fn load_policy_input(ctx: &StageContext<'_>, role: &str, dtype: Dtype) -> anyhow::Result<Policy> {
    for f in POLICY_FILES {
        ctx.input_file(role, f)?;
    }
    let dir = ctx.input(role)?.dir().to_path_buf();
    Policy::load(&dir, tch_device(ctx.device), tch_kind(dtype)).with_context(|| format!("{}: load policy {role} from {}", ctx.node, dir.display()))
}

#[cfg(feature = "compute")]
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

#[cfg(feature = "compute")]
pub fn run(p: &Params, ctx: &mut StageContext<'_>) -> anyhow::Result<()> {
    // The engine already checked every pinned file's sha256 (plan files component)
    // before running this node, so the path holds exactly the pinned bytes.
    let policy = match p.format {
        ModelFormat::Gguf | ModelFormat::HfDir => {
            Policy::load(&p.model_path, tch::Device::Cpu, tch_kind(p.dtype)).with_context(|| format!("base: import {}", p.model_path.display()))?
        }
        ModelFormat::TinyRandom => {
            let tiny = crate::model::tiny_random_llama(ctx.seed);
            if tch_kind(p.dtype) == Kind::Float {
                tiny
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
