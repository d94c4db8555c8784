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
//! the key by its sha256 under a logical name instead; speed-only knobs removed — see the
//! table in store/key.rs). "judge" below is [`judge_key_params`]: the selected backend and
//! its verdict-affecting settings only. "embedder" is [`embedder_files`]: MiniLM's
//! weights, config.json and tokenizer.json.
//! dataset ← `dataset` without `sources_dir` and file paths; base ← `base.dtype`,
//! `base.model.format`, files: the checkpoint (gguf) or every file the HF loader reads
//! (hf_dir); judge-fit ← judge, files: embedder; sft-data ← `sft`
//! without `source.path` and `batch_size` + `template_digest` + `postfill_template_digest`,
//! file `sft.source`; prep ← `prep`;
//! rollout ← `rollout` with `batch_size` (see "rollout key" in `Plan::new`) + `template_digest` (game::template_digest); judge ← judge + `reward`, files: embedder (probe); update ← `update` +
//! `schedule_iterations` (= the spec's `run.iterations`, so `run --iterations 3` computes
//! the first 3 iterations of the configured schedule and stays cached when extended);
//! eval ← `eval` without `batch_size` (custom suite paths removed; each file by sha256 as
//! `eval.custom_suites.<name>`) + judge + `rollout.cot` + the rollout sampling settings
//! (the attacker eval samples with them) + `template_digest`; files: embedder when the judge
//! is the probe or `holdout_attacker` is evaluated.
//!
//! Seeding: [`rng_for`] by (run seed, kind, iteration, row), never by the key.
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

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
            match (&w.url, &w.model) {
                // The served model's name (None: the client's default).
                (Some(_), model) => json!({"backend": j.backend, "served_model": model}),
                // A local checkpoint: its file name, as the judge names itself in verdicts
                // (a path never enters a key; the checkpoint is not pinned yet).
                (None, model) => {
                    let name = model.as_deref().map(|m| std::path::Path::new(m).file_name().map_or_else(|| m.to_string(), |n| n.to_string_lossy().into_owned()));
                    json!({"backend": j.backend, "local_model": name})
                }
            }
        }
    }
}

/// The MiniLM embedder as pinned files: every file `model::SentenceEncoder::load` reads. The
/// weights keep the logical name `judge.probe.embedder` (the `judge` verb looks it up in a
/// judge-fit manifest).
pub fn embedder_files(spec: &Spec) -> Vec<PinnedFile> {
    let p = &spec.raw.judge.probe;
    [("judge.probe.embedder", "model.safetensors", &p.embedder_sha256), ("judge.probe.embedder/config.json", "config.json", &p.embedder_config_sha256), ("judge.probe.embedder/tokenizer.json", "tokenizer.json", &p.embedder_tokenizer_sha256)]
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
            // hf_dir: every file the loader reads is pinned (spec.rs `hf_dir_unpinned` refuses
            // a partial map), so each enters the key and is verified before `base` runs.
            Sha256Pins::Dir(m) => m.iter().map(|(f, s)| PinnedFile { name: format!("base.model/{f}"), sha256: s.clone(), path: spec.base_model_path.join(f) }).collect(),
        };
        nodes.push(Node { id: id("base", None), inputs: vec![], params: json!({"dtype": raw.base.dtype, "format": raw.base.model.format}), files: bfiles });

        let judge_params = judge_key_params(&raw.judge);
        // Every node that loads the embedder pins it: judge-fit, and with the probe backend
        // judge@i and eval@i too (they embed with it; verified before they run, even under
        // `run --only` while judge-fit is cached).
        let judge_files = if probe { embedder_files(spec) } else { Vec::new() };
        if probe {
            nodes.push(Node { id: id("judge-fit", None), inputs: vec![("dataset", id("dataset", None))], params: judge_params.clone(), files: judge_files.clone() });
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
        let eval_node = |i: u32, policy: NodeId| {
            let mut inputs = vec![("policy", policy), ("dataset", id("dataset", None))];
            if probe {
                inputs.push(("judge_model", id("judge-fit", None)));
            }
            Node { id: id("eval", Some(i)), inputs, params: eval_params.clone(), files: eval_files.clone() }
        };
        // The game templates' digest enters the rollout key, so rewording a prompt reruns it.
        // Rollout key: `batch_size` stays IN. It reseeds nothing (draws are per row,
        // [`rng_for`], not by the key) and decoding steps of ≤ 64 rows run the CPU decode
        // kernel, whose sums do not depend on the batch; but the prefill is one left-padded MKL
        // forward over the batch, whose rounding depends on the batch mates, so the stored
        // logprobs differ in the last bits (~1e-6 measured on the tiny model between batch
        // sizes 1 and 4; a draw within that of a CDF boundary could even change a token).
        // The rollout is the record the update trains on, so its key must name every input
        // of its bytes. engine.rs `rollout_batch_size_changes_the_key_and_logprob_rounding_but_not_one_sampled_token`
        // pins both halves. (Prefilling each row alone, in src/model, would let it leave.)
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
            nodes.push(Node { id: id("judge", Some(i)), inputs: jin, params: json!({"judge": judge_params.clone(), "reward": to_value(&raw.reward)}), files: judge_files.clone() });
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
            assert_eq!(na.components(1, 1, &vec![Digest::from_hash(blake3::hash(b"x")); na.inputs.len()]).key(), nb.components(1, 1, &vec![Digest::from_hash(blake3::hash(b"x")); nb.inputs.len()]).key(), "{n}");
        }
        // The wildguard backend: the served model is in, the URL (and its credentials),
        // timeout, retries and concurrency are not.
        let wg = |extra: &str| Plan::new(&spec(&format!("judge:\n  backend: wildguard\n  wildguard: {{url: 'https://user:secret@a.example/v1?token=abc'{extra}}}\n")), Some(1));
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
