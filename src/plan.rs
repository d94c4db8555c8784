//! Spec → concrete DAG of nodes `stage@iteration` (docs/design.md "The DAG"), each with its
//! inputs by role, its key parameters and the pinned files it reads; plus [`rng_for`], the
//! one way every stage seeds its random draws. Called by the engine and the CLI.
//!
//! Nodes, in the (topological) order the engine visits them:
//! - once: `dataset`, `base`, `judge-fit` (only for `judge.backend: probe`), `sft-data` (only
//!   when `update.sft_coef > 0`), `eval@0`;
//! - per iteration i = 1..=N: `prep@i`, `rollout@i`, `judge@i`, `update@i`, and `eval@i`
//!   when i is a multiple of `eval.every` or i = N.
//!
//! Inputs by role (the names stages ask their context for):
//!
//! | node | role → producer |
//! |---|---|
//! | `judge-fit` | `dataset` → dataset |
//! | `sft-data` | `dataset` → dataset (eval prompts are never demonstrations); `policy` → base (writes the reasoning) |
//! | `prep@i` | `dataset` → dataset |
//! | `rollout@i` | `policy` → base (i = 1) or update@(i−1); `prep` → prep@i; `reference` → base (attacker_only only) |
//! | `judge@i` | `rollout` → rollout@i; `judge_model` → judge-fit (probe backend only) |
//! | `update@i` | `policy` → base or update@(i−1); `optimizer` → update@(i−1) (i > 1); `reference` → base; `rollout` → rollout@i; `judge` → judge@i; `sft` → sft-data (when `update.sft_coef > 0`) |
//! | `eval@i` | `policy` → base (i = 0) or update@i; `dataset` → dataset; `judge_model` → judge-fit (probe) |
//!
//! Key parameters: each node's are its stage's `params(spec).key()` (stages/<kind>.rs: the
//! `Params` struct lists what the stage reads from the spec, and its doc says what of it
//! stays out of the key — paths, which enter as pinned files by sha256 instead, and
//! speed-only knobs; see also the table in store/key.rs). "judge" in keys is
//! [`judge_key_params`]: the selected backend and its verdict-affecting settings only.
//! Pinned files (this module): dataset ← every source file; base ← the checkpoint (gguf) or
//! every file the HF loader reads (hf_dir); judge-fit, and judge@i / eval@i under the probe
//! judge ← the embedder ([`embedder_files`]: MiniLM's weights, config.json and
//! tokenizer.json), eval@i also when `holdout_attacker` is evaluated; sft-data ← `sft.source`;
//! eval@i ← each custom suite file as `eval.custom_suites.<name>`.
//!
//! Seeding: [`rng_for`] by (run seed, kind, iteration, row), never by the key.
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

pub use crate::stages::StageKind;

use crate::spec::{JudgeBackend, JudgeParams, Sha256Pins, Spec};
use crate::store::key::{FileDigest, InputDigest, KeyComponents, KEY_SCHEME};
use crate::store::Digest;

/// The generator for row `row` of the node `kind@iteration` in a run seeded `seed`: ChaCha8
/// seeded by blake3(domain ‖ seed ‖ kind ‖ iteration ‖ row). Draws therefore depend on
/// neither batch sizes nor thread scheduling nor which rows ran first, and, since the key is
/// not hashed in, not on any knob of the key either: changing `rollout.batch_size` (or any
/// future speed knob that slips into a key) cannot reseed a game. Two nodes of one kind and
/// iteration whose inputs differ (another policy) draw the same numbers: common random
/// numbers, so an ablation's differences are the method's, not the dice's.
pub fn rng_for(seed: u64, kind: &str, iteration: Option<u32>, row: u64) -> ChaCha8Rng {
    let mut h = blake3::Hasher::new();
    h.update(b"self-redteam rng v2\0");
    h.update(&seed.to_le_bytes());
    h.update(kind.as_bytes());
    h.update(b"\0");
    match iteration {
        // A tag byte, so `None` and `Some(0)` differ.
        Some(i) => h.update(&[1]).update(&i.to_le_bytes()),
        None => h.update(&[0]),
    };
    h.update(&row.to_le_bytes());
    ChaCha8Rng::from_seed(*h.finalize().as_bytes())
}

/// The judge settings that enter keys (judge-fit, judge@i, eval@i): the selected backend and
/// only those of its settings that change verdicts. An unused backend's section never enters
/// (editing `judge.wildguard` under the probe judge reruns nothing), and of the wildguard
/// backend neither the server URL (equivalent servers give the same verdicts; a URL may carry
/// credentials, and keys are stored in manifests) nor timeout, retries, concurrency or the
/// API-key variable (a timed-out call is never cached as a verdict). The probe's embedder
/// enters by its pinned files ([`embedder_files`]), its directory never.
pub fn judge_key_params(j: &JudgeParams) -> Value {
    match j.backend {
        JudgeBackend::Probe => {
            let mut p = to_value(&j.probe);
            if let Some(m) = p.as_object_mut() {
                for k in ["embedder_dir", "embedder_sha256", "embedder_config_sha256", "embedder_tokenizer_sha256"] {
                    m.remove(k);
                }
            }
            json!({"backend": j.backend, "probe": p})
        }
        JudgeBackend::Keywords => json!({"backend": j.backend, "keywords": to_value(&j.keywords)}),
        JudgeBackend::Rules => json!({"backend": j.backend}),
        JudgeBackend::Wildguard => {
            let w = &j.wildguard;
            match (w.url.as_ref().or(w.urls.first()), &w.model) {
                // The served model's name (None: the client's default).
                (Some(_), model) => json!({"backend": j.backend, "served_model": model}),
                // A local checkpoint enters by its pinned files (`wildguard_files`), never by
                // its path or folder name.
                (None, _) => json!({"backend": j.backend, "local_model": "pinned"}),
            }
        }
    }
}

/// A local WildGuard checkpoint (`judge.wildguard.model` without a URL) as pinned files: the
/// one GGUF file, or every pinned file of the HF directory (spec.rs refuses a partial map).
/// Empty for every other judge.
pub fn wildguard_files(spec: &Spec) -> Vec<PinnedFile> {
    let w = &spec.raw.judge.wildguard;
    if spec.raw.judge.backend != JudgeBackend::Wildguard || !w.is_local() {
        return Vec::new();
    }
    let path = spec.config_relative(w.model.as_deref().unwrap_or_default());
    match &w.sha256 {
        Some(crate::spec::Sha256Pins::File(s)) => vec![PinnedFile { name: "judge.wildguard.model".into(), sha256: s.clone(), path }],
        Some(crate::spec::Sha256Pins::Dir(m)) => {
            m.iter().map(|(f, s)| PinnedFile { name: format!("judge.wildguard.model/{f}"), sha256: s.clone(), path: path.join(f) }).collect()
        }
        None => Vec::new(),
    }
}

/// The MiniLM embedder as pinned files: every file `model::SentenceEncoder::load` reads. The
/// weights keep the logical name `judge.probe.embedder` (the `judge` verb looks it up in a
/// judge-fit manifest).
pub fn embedder_files(spec: &Spec) -> Vec<PinnedFile> {
    let p = &spec.raw.judge.probe;
    [
        ("judge.probe.embedder", "model.safetensors", &p.embedder_sha256),
        ("judge.probe.embedder/config.json", "config.json", &p.embedder_config_sha256),
        ("judge.probe.embedder/tokenizer.json", "tokenizer.json", &p.embedder_tokenizer_sha256),
    ]
    .into_iter()
    .map(|(name, file, sha)| PinnedFile { name: name.into(), sha256: sha.clone(), path: spec.embedder_dir.join(file) })
    .collect()
}

/// Errors of planning and of naming nodes.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("no node {name:?} in the plan (nodes look like `dataset`, `prep@3`; this plan has iterations 1..={iterations})")]
    UnknownNode { name: String, iterations: u32 },
}

/// A node's identity: stage kind and iteration (`None` for once-per-run nodes).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    pub kind: StageKind,
    pub iteration: Option<u32>,
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.iteration {
            Some(i) => write!(f, "{}@{i}", self.kind),
            None => f.write_str(self.kind.name()),
        }
    }
}

/// A file read from outside the store: logical name (in the key), pinned sha256 (in the
/// key) and where it is now (never in the key).
#[derive(Debug, Clone, PartialEq)]
pub struct PinnedFile {
    pub name: String,
    pub sha256: String,
    pub path: PathBuf,
}

/// One node of the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub id: NodeId,
    /// (role, producing node), in a fixed order.
    pub inputs: Vec<(&'static str, NodeId)>,
    /// Canonical key parameters.
    pub params: Value,
    pub files: Vec<PinnedFile>,
}

impl Node {
    pub fn name(&self) -> String {
        self.id.to_string()
    }

    /// The key components, given the content digest of each input (in `inputs` order).
    pub fn components(&self, stage_version: u32, seed: u64, input_digests: &[Digest]) -> KeyComponents {
        debug_assert_eq!(input_digests.len(), self.inputs.len());
        KeyComponents {
            scheme: KEY_SCHEME,
            kind: self.id.kind.name().to_string(),
            stage_version,
            iteration: self.id.iteration,
            params: self.params.clone(),
            inputs: self.inputs.iter().zip(input_digests).map(|((role, _), d)| InputDigest { role: role.to_string(), digest: d.clone() }).collect(),
            seed,
            files: self.files.iter().map(|f| FileDigest { name: f.name.clone(), sha256: f.sha256.clone() }).collect(),
        }
    }
}

/// The DAG for one spec and iteration count, in topological order.
#[derive(Debug, Clone)]
pub struct Plan {
    pub nodes: Vec<Node>,
    pub iterations: u32,
    pub seed: u64,
    index: HashMap<String, usize>,
}

fn to_value<T: serde::Serialize>(t: &T) -> Value {
    crate::stages::to_key(t)
}

impl Plan {
    /// Build the plan for `iterations` (default: the spec's `run.iterations`). Each node's key
    /// params are its stage's `params(spec).key()` (stages/<kind>.rs); this function wires
    /// the inputs and lists the pinned files.
    pub fn new(spec: &Spec, iterations: Option<u32>) -> Plan {
        let raw = &spec.raw;
        let n = iterations.unwrap_or(raw.run.iterations);
        let probe = raw.judge.backend == JudgeBackend::Probe;
        let id = |kind: StageKind, iteration: Option<u32>| NodeId { kind, iteration };
        let node = |kind: StageKind, iteration: Option<u32>, inputs: Vec<(&'static str, NodeId)>, files: Vec<PinnedFile>| Node {
            id: id(kind, iteration),
            inputs,
            params: kind.key_params(spec),
            files,
        };
        let mut nodes = Vec::new();

        // dataset: every source file by logical name.
        let dfiles = crate::data::dataset_files(&raw.dataset)
            .into_iter()
            .map(|(name, f)| PinnedFile { name, sha256: f.sha256.clone(), path: spec.source_path(f) })
            .collect();
        nodes.push(node(StageKind::Dataset, None, vec![], dfiles));

        // base: the checkpoint's sha256(s).
        let bfiles = match &raw.base.model.sha256 {
            Sha256Pins::File(s) => vec![PinnedFile { name: "base.model".into(), sha256: s.clone(), path: spec.base_model_path.clone() }],
            // hf_dir: every file the loader reads is pinned (spec.rs `hf_dir_unpinned` refuses
            // a partial map), so each enters the key and is verified before `base` runs.
            Sha256Pins::Dir(m) => {
                m.iter().map(|(f, s)| PinnedFile { name: format!("base.model/{f}"), sha256: s.clone(), path: spec.base_model_path.join(f) }).collect()
            }
        };
        nodes.push(node(StageKind::Base, None, vec![], bfiles));

        // Every node that loads the embedder pins it: judge-fit, and with the probe backend
        // judge@i and eval@i too (they embed with it; verified before they run, even under
        // `run --only` while judge-fit is cached).
        let judge_files = if probe { embedder_files(spec) } else { wildguard_files(spec) };
        if probe {
            nodes.push(node(StageKind::JudgeFit, None, vec![("dataset", id(StageKind::Dataset, None))], judge_files.clone()));
        }
        // sft-data: the demonstrations of the SFT term, post-filled by the base policy; only
        // when the term is on; the source by sha256.
        let sft = raw.update.sft_coef > 0.0;
        if sft {
            let sfile = PinnedFile { name: "sft.source".into(), sha256: raw.sft.source.sha256.clone(), path: spec.source_path(&raw.sft.source) };
            nodes.push(node(StageKind::SftData, None, vec![("dataset", id(StageKind::Dataset, None)), ("policy", id(StageKind::Base, None))], vec![sfile]));
        }
        // eval: custom suite files by sha256.
        let mut eval_files: Vec<PinnedFile> = judge_files.clone();
        if !probe && raw.eval.suites.contains_key("holdout_attacker") {
            // SBERT diversity reads MiniLM directly (whatever the judge backend).
            eval_files.extend(embedder_files(spec));
        }
        for (name, c) in &raw.eval.custom_suites {
            let path = spec.config_relative(&c.path);
            // Without a pin, hash the file now; an unreadable file gets an impossible digest
            // so the engine's pre-run check reports it by name.
            let sha256 = c.sha256.clone().unwrap_or_else(|| crate::store::key::sha256_file(&path).unwrap_or_else(|_| "0".repeat(64)));
            eval_files.push(PinnedFile { name: format!("eval.custom_suites.{name}"), sha256, path });
        }
        let eval_params = StageKind::Eval.key_params(spec);
        let eval_node = |i: u32, policy: NodeId| {
            let mut inputs = vec![("policy", policy), ("dataset", id(StageKind::Dataset, None))];
            if probe {
                inputs.push(("judge_model", id(StageKind::JudgeFit, None)));
            }
            Node { id: id(StageKind::Eval, Some(i)), inputs, params: eval_params.clone(), files: eval_files.clone() }
        };
        // Rollout key: `batch_size` stays IN. It reseeds nothing (draws are per row,
        // [`rng_for`], not by the key) and decoding steps of ≤ 64 rows run the CPU decode
        // kernel, whose sums do not depend on the batch; but the prefill is one left-padded MKL
        // forward over the batch, whose rounding depends on the batch mates, so the stored
        // logprobs differ in the last bits (~1e-6 measured on the tiny model between batch
        // sizes 1 and 4; a draw within that of a CDF boundary could even change a token).
        // The rollout is the record the update trains on, so its key must name every input
        // of its bytes. engine.rs `rollout_batch_size_changes_the_key_and_logprob_rounding_but_not_one_sampled_token`
        // pins both halves. (Prefilling each row alone, in src/model, would let it leave.)
        let (prep_params, rollout_params, judge_params, update_params) =
            (StageKind::Prep.key_params(spec), StageKind::Rollout.key_params(spec), StageKind::Judge.key_params(spec), StageKind::Update.key_params(spec));
        let same = |kind: StageKind, i: u32, inputs: Vec<(&'static str, NodeId)>, params: &Value, files: Vec<PinnedFile>| Node {
            id: id(kind, Some(i)),
            inputs,
            params: params.clone(),
            files,
        };
        let eval_its = spec.eval_iterations(n);
        nodes.push(eval_node(0, id(StageKind::Base, None)));
        for i in 1..=n {
            let policy = if i == 1 { id(StageKind::Base, None) } else { id(StageKind::Update, Some(i - 1)) };
            nodes.push(same(StageKind::Prep, i, vec![("dataset", id(StageKind::Dataset, None))], &prep_params, vec![]));
            let mut rin = vec![("policy", policy.clone()), ("prep", id(StageKind::Prep, Some(i)))];
            // Attacker-only: the frozen base model is the defender (method.md §6).
            if raw.rollout.mode == crate::spec::GameMode::AttackerOnly {
                rin.push(("reference", id(StageKind::Base, None)));
            }
            nodes.push(same(StageKind::Rollout, i, rin, &rollout_params, vec![]));
            let mut jin = vec![("rollout", id(StageKind::Rollout, Some(i)))];
            if probe {
                jin.push(("judge_model", id(StageKind::JudgeFit, None)));
            }
            nodes.push(same(StageKind::Judge, i, jin, &judge_params, judge_files.clone()));
            let mut uin = vec![("policy", policy)];
            if i > 1 {
                uin.push(("optimizer", id(StageKind::Update, Some(i - 1))));
            }
            uin.extend([("reference", id(StageKind::Base, None)), ("rollout", id(StageKind::Rollout, Some(i))), ("judge", id(StageKind::Judge, Some(i)))]);
            if sft {
                uin.push(("sft", id(StageKind::SftData, None)));
            }
            nodes.push(same(StageKind::Update, i, uin, &update_params, vec![]));
            if eval_its.contains(&i) {
                nodes.push(eval_node(i, id(StageKind::Update, Some(i))));
            }
        }
        let index = nodes.iter().enumerate().map(|(i, n)| (n.name(), i)).collect();
        Plan { nodes, iterations: n, seed: raw.run.seed, index }
    }

    pub fn get(&self, name: &str) -> Option<&Node> {
        self.index.get(name).map(|i| &self.nodes[*i])
    }

    pub fn position(&self, name: &str) -> Result<usize, PlanError> {
        self.index.get(name).copied().ok_or_else(|| PlanError::UnknownNode { name: name.to_string(), iterations: self.iterations })
    }

    /// Positions of `name` and of every node downstream of it.
    pub fn downstream_of(&self, name: &str) -> Result<Vec<usize>, PlanError> {
        let start = self.position(name)?;
        let mut marked = vec![false; self.nodes.len()];
        marked[start] = true;
        for (i, node) in self.nodes.iter().enumerate().skip(start + 1) {
            if node.inputs.iter().any(|(_, p)| self.index.get(&p.to_string()).is_some_and(|j| marked[*j])) {
                marked[i] = true;
            }
        }
        Ok((0..self.nodes.len()).filter(|i| marked[*i]).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngCore;
    use std::path::Path;

    fn spec(text: &str) -> Spec {
        Spec::from_yaml(text, Path::new("/p/pipeline.yaml")).expect("valid")
    }

    #[test]
    fn plan_has_design_nodes_in_order() {
        let plan = Plan::new(&spec("run: {iterations: 3}\neval: {every: 2}\n"), None);
        let names: Vec<String> = plan.nodes.iter().map(Node::name).collect();
        assert_eq!(
            names,
            [
                "dataset",
                "base",
                "judge-fit",
                "sft-data",
                "eval@0",
                "prep@1",
                "rollout@1",
                "judge@1",
                "update@1",
                "prep@2",
                "rollout@2",
                "judge@2",
                "update@2",
                "eval@2",
                "prep@3",
                "rollout@3",
                "judge@3",
                "update@3",
                "eval@3"
            ]
        );
        let u2 = plan.get("update@2").expect("exists");
        let roles: Vec<String> = u2.inputs.iter().map(|(r, n)| format!("{r}={n}")).collect();
        assert_eq!(roles, ["policy=update@1", "optimizer=update@1", "reference=base", "rollout=rollout@2", "judge=judge@2", "sft=sft-data"]);
        // Without the SFT term there is no sft-data node and no `sft` input.
        let plan = Plan::new(&spec("run: {iterations: 1}\nupdate: {sft_coef: 0}\n"), None);
        assert!(plan.get("sft-data").is_none());
        assert!(plan.get("update@1").expect("exists").inputs.iter().all(|(r, _)| *r != "sft"));
        assert_eq!(plan.get("rollout@1").expect("exists").inputs[0].1.to_string(), "base");
    }

    #[test]
    fn dataset_params_hold_no_paths() {
        let plan = Plan::new(&spec(""), None);
        let text = plan.nodes[0].params.to_string();
        assert!(!text.contains("path"), "{text}");
        assert!(!text.contains(".cache"), "{text}");
        assert!(plan.nodes[0].files.iter().all(|f| !f.name.contains('/')));
    }

    #[test]
    fn rng_for_depends_on_seed_kind_iteration_and_row() {
        let draw = |s, k: &str, i: Option<u32>, r| rng_for(s, k, i, r).next_u64();
        let d = draw(1, "rollout", Some(1), 0);
        assert_eq!(d, draw(1, "rollout", Some(1), 0));
        assert_ne!(d, draw(2, "rollout", Some(1), 0), "seed");
        assert_ne!(d, draw(1, "eval", Some(1), 0), "kind");
        assert_ne!(d, draw(1, "rollout", Some(2), 0), "iteration");
        assert_ne!(d, draw(1, "rollout", Some(1), 1), "row");
        assert_ne!(draw(1, "eval", None, 0), draw(1, "eval", Some(0), 0), "once-per-run vs iteration 0");
    }

    #[test]
    fn judge_keys_hold_only_the_selected_backends_result_settings() {
        let probe = spec("");
        let other = spec("judge:\n  wildguard: {url: 'https://user:secret@judge.example/v1?token=abc', timeout_s: 5, retries: 9, concurrency: 2}\n  keywords: {refusal: [x]}\n");
        let (a, b) = (Plan::new(&probe, Some(1)), Plan::new(&other, Some(1)));
        for n in ["judge-fit", "judge@1", "eval@1"] {
            let (na, nb) = (a.get(n).expect("node"), b.get(n).expect("node"));
            assert_eq!(na.params, nb.params, "{n}");
            assert_eq!(
                na.components(1, 1, &vec![Digest::from_hash(blake3::hash(b"x")); na.inputs.len()]).key(),
                nb.components(1, 1, &vec![Digest::from_hash(blake3::hash(b"x")); nb.inputs.len()]).key(),
                "{n}"
            );
        }
        // The wildguard backend: the served model is in, the URL (and its credentials),
        // timeout, retries and concurrency are not.
        let wg = |extra: &str| {
            Plan::new(&spec(&format!("judge:\n  backend: wildguard\n  wildguard: {{url: 'https://user:secret@a.example/v1?token=abc'{extra}}}\n")), Some(1))
        };
        let p = wg("").get("judge@1").expect("node").params.to_string();
        assert!(!p.contains("secret") && !p.contains("token") && !p.contains("example"), "{p}");
        assert_eq!(wg("").get("judge@1").expect("node").params, wg(", timeout_s: 1, retries: 0, concurrency: 64").get("judge@1").expect("node").params);
        assert_ne!(wg("").get("judge@1").expect("node").params, wg(", model: other/guard").get("judge@1").expect("node").params);
        // The probe's own settings are in.
        let l2 = Plan::new(&spec("judge: {probe: {l2: 0.5}}\n"), Some(1));
        assert_ne!(a.get("judge-fit").expect("node").params, l2.get("judge-fit").expect("node").params);
    }

    #[test]
    fn nodes_that_load_the_embedder_pin_its_three_files() {
        let plan = Plan::new(&spec(""), Some(1));
        for n in ["judge-fit", "judge@1", "eval@0", "eval@1"] {
            let names: Vec<&str> = plan.get(n).expect("node").files.iter().map(|f| f.name.as_str()).filter(|f| f.starts_with("judge.probe.embedder")).collect();
            assert_eq!(names, ["judge.probe.embedder", "judge.probe.embedder/config.json", "judge.probe.embedder/tokenizer.json"], "{n}");
        }
        // keywords judge: judge@i loads nothing; eval@i still embeds for holdout_attacker.
        let plan = Plan::new(&spec("judge: {backend: keywords}\neval: {suites: {holdout_attacker: {}}}\n"), Some(1));
        assert!(plan.get("judge@1").expect("node").files.is_empty());
        assert_eq!(plan.get("eval@1").expect("node").files.len(), 3);
    }

    #[test]
    fn downstream_of_prep_follows_edges() {
        let plan = Plan::new(&spec("run: {iterations: 2}\neval: {every: 5}\n"), None);
        let names: Vec<String> = plan.downstream_of("prep@2").expect("exists").iter().map(|i| plan.nodes[*i].name()).collect();
        assert_eq!(names, ["prep@2", "rollout@2", "judge@2", "update@2", "eval@2"]);
    }
}
