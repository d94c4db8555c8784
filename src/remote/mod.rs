//! Generation on inference servers (`generation.backend: server`): the client that loads each
//! iteration's policy onto a fleet of servers (SGLang, vLLM, or this project's own `serve`,
//! which answers both), verifies it, and spreads a stage's prompts over them (`fleet`). The
//! engines' bodies, the HTTP client and the work queue are shared with the HTTP judge, in
//! `net`. docs/remote.md.
//!
//! Stages sample through [`Generator`]: `Local` is this process's policy (the default),
//! `Servers` the fleet with the same policy loaded and verified. Both return the same
//! `Sample`s; the fleet also records which server made each row (`generation.parquet`).
#[cfg(feature = "compute")]
pub mod fleet;

#[cfg(feature = "compute")]
pub use self::compute::*;

#[cfg(feature = "compute")]
mod compute {
    use std::path::Path;
    use std::sync::atomic::AtomicBool;
    use std::sync::Mutex;

    use anyhow::{Context, Result};

    use super::fleet::{self, Fleet, ServerState};
    use crate::model::{Policy, Sample, SamplingParams, TokenId};
    use crate::schema::generation::GenerationRow;
    use crate::spec::{GenerationBackend, GenerationParams};

    /// Where a stage samples.
    pub enum Generator<'p> {
        Local(&'p Policy),
        Servers(Box<Session<'p>>),
    }

    /// The fleet, locked for this stage, with the policy on every server.
    pub struct Session<'p> {
        fleet: Fleet,
        states: Vec<ServerState>,
        policy: &'p Policy,
        provenance: Mutex<Vec<GenerationRow>>,
        lock: std::sync::Arc<std::fs::File>,
    }

    impl<'p> Generator<'p> {
        /// The generator `generation` asks for. With servers: lock the fleet, put the policy
        /// of the artifact `dir` on every server (`load: false` for the base policy, which
        /// is checked, not loaded) under `weight_version`, and verify it (src/remote/fleet.rs).
        pub fn new(g: &GenerationParams, policy: &'p Policy, store_root: &Path, dir: &Path, weight_version: &str, load: bool) -> Result<Generator<'p>> {
            if g.backend == GenerationBackend::Local {
                return Ok(Generator::Local(policy));
            }
            let fleet = Fleet::connect(g)?;
            let lock = std::sync::Arc::new(fleet.lock(store_root)?);
            Self::start(fleet, lock, policy, store_root, dir, weight_version, load)
        }

        /// A generator for another policy on the same servers, keeping this one's hold on
        /// the fleet (a second lock from the same process would wait for itself).
        pub fn next<'q>(&self, policy: &'q Policy, store_root: &Path, dir: &Path, weight_version: &str, load: bool) -> Result<Generator<'q>> {
            match self {
                Generator::Local(_) => Ok(Generator::Local(policy)),
                Generator::Servers(s) => {
                    Generator::start(Fleet::connect(s.fleet.params())?, std::sync::Arc::clone(&s.lock), policy, store_root, dir, weight_version, load)
                }
            }
        }

        fn start(
            mut fleet: Fleet,
            lock: std::sync::Arc<std::fs::File>,
            policy: &'p Policy,
            store_root: &Path,
            dir: &Path,
            weight_version: &str,
            load: bool,
        ) -> Result<Generator<'p>> {
            let view = fleet::serving_view(store_root, dir)?;
            let digest = crate::serve::policy::weights_digest(&view).with_context(|| format!("digest {}", view.display()))?.to_string();
            let states = fleet.put_policy(store_root, dir, weight_version, load, policy, &digest)?;
            for s in &states {
                tracing::info!(
                    server = %s.url, engine = s.engine.name(), version = %s.engine_version, weights = %s.weight_version,
                    "policy verified: canary mean |Δ log-prob| {:.2e} (max {:.2e}, {} tokens)", s.canary_mean_abs, s.canary_max_abs, s.canary_tokens
                );
            }
            Ok(Generator::Servers(Box::new(Session { fleet, states, policy, provenance: Mutex::new(Vec::new()), lock })))
        }

        pub fn policy(&self) -> &'p Policy {
            match self {
                Generator::Local(p) => p,
                Generator::Servers(s) => s.policy,
            }
        }

        /// The servers and what each reported after the load (none for local generation).
        pub fn servers(&self) -> &[ServerState] {
            match self {
                Generator::Local(_) => &[],
                Generator::Servers(s) => &s.states,
            }
        }

        /// Sample `prompts` (one seed each) in the batches of `plan`; `ids` name the rows
        /// for the provenance table. Results in input order.
        #[allow(clippy::too_many_arguments)]
        pub fn generate(
            &self,
            prompts: &[Vec<TokenId>],
            seeds: &[u64],
            params: &SamplingParams,
            plan: &[Vec<usize>],
            ids: &[String],
            cancel: &AtomicBool,
            progress: &mut dyn FnMut(usize),
        ) -> Result<Vec<Sample>> {
            match self {
                Generator::Local(p) => Ok(p.generate_batched(prompts, seeds, params, plan, cancel, progress)?),
                Generator::Servers(s) => {
                    anyhow::ensure!(ids.len() == prompts.len(), "{} row ids for {} prompts", ids.len(), prompts.len());
                    let out = s.fleet.generate(&s.states, s.policy, prompts, seeds, params, plan, cancel, progress)?;
                    let mut rows = s.provenance.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    let mut samples = Vec::with_capacity(out.len());
                    for (id, (sample, p)) in ids.iter().zip(out) {
                        rows.push(GenerationRow {
                            item: id.clone(),
                            server: p.server,
                            engine: p.engine,
                            engine_version: p.engine_version,
                            weight_version: p.weight_version,
                        });
                        samples.push(sample);
                    }
                    Ok(samples)
                }
            }
        }

        /// The provenance rows so far, sorted by item (`None` for local generation).
        pub fn provenance(&self) -> Option<Vec<GenerationRow>> {
            match self {
                Generator::Local(_) => None,
                Generator::Servers(s) => {
                    let mut rows = s.provenance.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
                    rows.sort_by(|a, b| a.item.cmp(&b.item));
                    Some(rows)
                }
            }
        }
    }
}
