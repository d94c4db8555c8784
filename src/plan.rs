//! Spec → concrete DAG of nodes `stage@iteration` (DESIGN.md "The DAG"), each with its
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
//! Key parameters per kind (re-serialised typed sections; paths removed — a file enters
//! the key by its sha256 under a logical name instead):
//! dataset ← `dataset` without `sources_dir` and file paths; base ← `base.dtype`,
//! `base.model.format`; judge-fit ← `judge` without `probe.embedder_dir`; sft-data ← `sft`
//! without `source.path` and `batch_size` + `template_digest` + `postfill_template_digest`,
//! file `sft.source`; prep ← `prep`;
//! rollout ← `rollout` + `template_digest` (game::template_digest); judge ← `judge` + `reward`; update ← `update` +
//! `schedule_iterations` (= the spec's `run.iterations`, so `run --iterations 3` computes
//! the first 3 iterations of the configured schedule and stays cached when extended);
//! eval ← `eval` (custom suite paths removed; each file by sha256 as
//! `eval.custom_suites.<name>`) + `judge` + `rollout.cot` + the rollout sampling settings
//! (the attacker eval samples with them) + `template_digest`; files: the MiniLM weights
//! when `holdout_attacker` is evaluated.
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use crate::spec::{JudgeBackend, Sha256Pins, Spec};
use crate::store::key::{FileDigest, InputDigest, Key, KeyComponents, KEY_SCHEME};
use crate::store::Digest;

/// The generator for row `row` of the node with key `key` in a run seeded `seed`:
/// ChaCha8 seeded by blake3(domain ‖ seed ‖ key ‖ row). Draws therefore depend on neither
/// batch sizes nor thread scheduling nor which rows ran first.
pub fn rng_for(seed: u64, key: &Key, row: u64) -> ChaCha8Rng {
    let mut h = blake3::Hasher::new();
    h.update(b"self-redteam rng v1\0");
    h.update(&seed.to_le_bytes());
    h.update(key.as_str().as_bytes());
    h.update(&row.to_le_bytes());
    ChaCha8Rng::from_seed(*h.finalize().as_bytes())
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
    pub kind: &'static str,
    pub iteration: Option<u32>,
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.iteration {
            Some(i) => write!(f, "{}@{i}", self.kind),
            None => f.write_str(self.kind),
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
            kind: self.id.kind.to_string(),
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
    serde_json::to_value(t).expect("spec sections are plain data")
}

impl Plan {
    /// Build the plan for `iterations` (default: the spec's `run.iterations`).
    pub fn new(spec: &Spec, iterations: Option<u32>) -> Plan {
        let raw = &spec.raw;
        let n = iterations.unwrap_or(raw.run.iterations);
        let probe = raw.judge.backend == JudgeBackend::Probe;
        let id = |kind: &'static str, iteration: Option<u32>| NodeId { kind, iteration };
        let mut nodes = Vec::new();

        // dataset: params without paths; every source file by logical name.
        let mut dparams = to_value(&raw.dataset);
        strip_paths(&mut dparams);
        let dfiles = crate::data::dataset_files(&raw.dataset)
            .into_iter()
            .map(|(name, f)| PinnedFile { name, sha256: f.sha256.clone(), path: spec.source_path(f) })
            .collect();
        nodes.push(Node { id: id("dataset", None), inputs: vec![], params: dparams, files: dfiles });

        // base: the checkpoint's sha256(s).
        let bfiles = match &raw.base.model.sha256 {
            Sha256Pins::File(s) => vec![PinnedFile { name: "base.model".into(), sha256: s.clone(), path: spec.base_model_path.clone() }],
            Sha256Pins::Dir(m) => m.iter().map(|(f, s)| PinnedFile { name: format!("base.model/{f}"), sha256: s.clone(), path: spec.base_model_path.join(f) }).collect(),
        };
        nodes.push(Node { id: id("base", None), inputs: vec![], params: json!({"dtype": raw.base.dtype, "format": raw.base.model.format}), files: bfiles });

        let mut judge_params = to_value(&raw.judge);
        if let Some(p) = judge_params.get_mut("probe").and_then(Value::as_object_mut) {
            p.remove("embedder_dir");
        }
        if probe {
            let efile = PinnedFile { name: "judge.probe.embedder".into(), sha256: raw.judge.probe.embedder_sha256.clone(), path: spec.embedder_dir.join("model.safetensors") };
            nodes.push(Node { id: id("judge-fit", None), inputs: vec![("dataset", id("dataset", None))], params: judge_params.clone(), files: vec![efile] });
        }
        // sft-data: the demonstrations of the SFT term, post-filled by the base policy; only
        // when the term is on. Its key holds the sft section (without the source path and the
        // batch size), both template digests (the defender prompt of a demonstration and the
        // post-fill instruction), the base policy by content and the source by sha256.
        let sft = raw.update.sft_coef > 0.0;
        if sft {
            let mut sparams = to_value(&raw.sft);
            strip_paths(&mut sparams);
            let m = sparams.as_object_mut().expect("sft is a map");
            m.remove("batch_size");
            m.insert("template_digest".into(), Value::String(crate::game::template_digest().to_hex()));
            m.insert("postfill_template_digest".into(), Value::String(crate::game::postfill_template_digest().to_hex()));
            let sfile = PinnedFile { name: "sft.source".into(), sha256: raw.sft.source.sha256.clone(), path: spec.source_path(&raw.sft.source) };
            nodes.push(Node { id: id("sft-data", None), inputs: vec![("dataset", id("dataset", None)), ("policy", id("base", None))], params: sparams, files: vec![sfile] });
        }
        // eval: custom suite paths leave the params; each file enters as `files` instead.
        // The attacker eval samples with the rollout settings, and both roles' prompts come
        // from the game templates, so those enter too.
        let mut eval_section = to_value(&raw.eval);
        strip_paths(&mut eval_section);
        // Batch size changes speed, never outputs (rows are independent of batch mates).
        eval_section.as_object_mut().expect("eval is a map").remove("batch_size");
        let r = &raw.rollout;
        let eval_params = json!({
            "eval": eval_section, "judge": judge_params.clone(), "cot": r.cot,
            "attacker_sampling": {"temperature": r.temperature, "top_p": r.top_p, "top_k": r.top_k, "max_new_tokens": r.max_new_tokens},
            "template_digest": crate::game::template_digest().to_hex(),
        });
        let mut eval_files: Vec<PinnedFile> = Vec::new();
        if raw.eval.suites.contains_key("holdout_attacker") {
            // SBERT diversity reads MiniLM directly (whatever the judge backend).
            eval_files.push(PinnedFile { name: "judge.probe.embedder".into(), sha256: raw.judge.probe.embedder_sha256.clone(), path: spec.embedder_dir.join("model.safetensors") });
        }
        for (name, c) in &raw.eval.custom_suites {
            let path = spec.config_relative(&c.path);
            // Without a pin, hash the file now; an unreadable file gets an impossible digest
            // so the engine's pre-run check reports it by name.
            let sha256 = c.sha256.clone().unwrap_or_else(|| crate::store::key::sha256_file(&path).unwrap_or_else(|_| "0".repeat(64)));
            eval_files.push(PinnedFile { name: format!("eval.custom_suites.{name}"), sha256, path });
        }
        let eval_node = |i: u32, policy: NodeId| {
            let mut inputs = vec![("policy", policy), ("dataset", id("dataset", None))];
            if probe {
                inputs.push(("judge_model", id("judge-fit", None)));
            }
            Node { id: id("eval", Some(i)), inputs, params: eval_params.clone(), files: eval_files.clone() }
        };
        // The game templates' digest enters the rollout key, so rewording a prompt reruns it.
        let mut rollout_params = to_value(&raw.rollout);
        rollout_params.as_object_mut().expect("rollout is a map").insert("template_digest".into(), Value::String(crate::game::template_digest().to_hex()));
        let rollout_inputs = |raw: &crate::spec::RawSpec, policy: NodeId, i: u32| {
            let mut v = vec![("policy", policy), ("prep", id("prep", Some(i)))];
            // Attacker-only: the frozen base model is the defender (method.md §6).
            if raw.rollout.mode == crate::spec::GameMode::AttackerOnly {
                v.push(("reference", id("base", None)));
            }
            v
        };
        let eval_its = spec.eval_iterations(n);
        nodes.push(eval_node(0, id("base", None)));
        for i in 1..=n {
            let policy = if i == 1 { id("base", None) } else { id("update", Some(i - 1)) };
            nodes.push(Node { id: id("prep", Some(i)), inputs: vec![("dataset", id("dataset", None))], params: to_value(&raw.prep), files: vec![] });
            nodes.push(Node { id: id("rollout", Some(i)), inputs: rollout_inputs(raw, policy.clone(), i), params: rollout_params.clone(), files: vec![] });
            let mut jin = vec![("rollout", id("rollout", Some(i)))];
            if probe {
                jin.push(("judge_model", id("judge-fit", None)));
            }
            nodes.push(Node { id: id("judge", Some(i)), inputs: jin, params: json!({"judge": judge_params.clone(), "reward": to_value(&raw.reward)}), files: vec![] });
            let mut uin = vec![("policy", policy)];
            if i > 1 {
                uin.push(("optimizer", id("update", Some(i - 1))));
            }
            uin.extend([("reference", id("base", None)), ("rollout", id("rollout", Some(i))), ("judge", id("judge", Some(i)))]);
            if sft {
                uin.push(("sft", id("sft-data", None)));
            }
            nodes.push(Node { id: id("update", Some(i)), inputs: uin, params: json!({"update": to_value(&raw.update), "schedule_iterations": raw.run.iterations}), files: vec![] });
            if eval_its.contains(&i) {
                nodes.push(eval_node(i, id("update", Some(i))));
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

/// Remove `sources_dir`, every `path` (paths never enter keys) and every `sha256` (pinned
/// files enter the key once, as the `files` component, so `explain` names the file).
fn strip_paths(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("sources_dir");
            m.remove("path");
            m.remove("sha256");
            for (_, x) in m.iter_mut() {
                strip_paths(x);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(strip_paths),
        _ => {}
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
                "dataset", "base", "judge-fit", "sft-data", "eval@0", "prep@1", "rollout@1", "judge@1", "update@1", "prep@2", "rollout@2", "judge@2", "update@2", "eval@2", "prep@3", "rollout@3", "judge@3", "update@3", "eval@3"
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
    fn rng_for_depends_on_seed_key_and_row() {
        let k = Key::parse(&"a".repeat(64)).expect("hex");
        let k2 = Key::parse(&"b".repeat(64)).expect("hex");
        let draw = |s, k: &Key, r| rng_for(s, k, r).next_u64();
        assert_eq!(draw(1, &k, 0), draw(1, &k, 0));
        assert_ne!(draw(1, &k, 0), draw(2, &k, 0));
        assert_ne!(draw(1, &k, 0), draw(1, &k2, 0));
        assert_ne!(draw(1, &k, 0), draw(1, &k, 1));
    }

    #[test]
    fn downstream_of_prep_follows_edges() {
        let plan = Plan::new(&spec("run: {iterations: 2}\neval: {every: 5}\n"), None);
        let names: Vec<String> = plan.downstream_of("prep@2").expect("exists").iter().map(|i| plan.nodes[*i].name()).collect();
        assert_eq!(names, ["prep@2", "rollout@2", "judge@2", "update@2", "eval@2"]);
    }
}
