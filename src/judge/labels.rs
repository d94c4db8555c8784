//! Readers for the labelled response sets used to train and score the probe judge
//! (docs/resources.md "Labelled responses"): PyRIT's refusal and objective scorer evals, and
//! UncensorBench's paired censored/uncensored answers, and `LabelledPair`, the probe's
//! training example. The readers are used by tests/it/judge.rs on the pinned files; the pipeline itself reads these sets through
//! `data::read_labelled` (the `dataset` stage's `judge_train.parquet`), and `judge-fit`
//! builds its `LabelledPair`s from that artifact (judge/fit.rs).
//!
//! Formats, as found in the pinned files: PyRIT CSVs start with one or more `#` comment
//! lines (some padded with commas), then a header; columns are found by name because their
//! order differs between files (`harm_category` is first in bias.csv, last elsewhere).
//! `human_score` is 0 or 1. UncensorBench is one JSON object with a `prompts` array.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: CSV: {detail}")]
    Csv { path: PathBuf, detail: String },
    #[error("{path}: missing column {column:?} (found {found:?})")]
    MissingColumn { path: PathBuf, column: String, found: Vec<String> },
    #[error("{path}: row {row}: human_score {value:?} is not 0 or 1")]
    BadScore { path: PathBuf, row: usize, value: String },
    #[error("{path}: JSON: {detail}")]
    Json { path: PathBuf, detail: String },
}

/// One human-labelled (prompt, response) pair for one judge head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelledPair {
    pub prompt: String,
    pub response: String,
    pub label: bool,
    /// Where it came from, e.g. `pyrit/refusal.csv`.
    pub source: String,
    pub category: Option<String>,
}

fn read_commented_csv(path: &Path) -> Result<(Vec<String>, Vec<csv::StringRecord>), LabelError> {
    let text = std::fs::read_to_string(path).map_err(|source| LabelError::Io { path: path.into(), source })?;
    // Drop the leading comment lines only (a `#` inside a quoted response is data).
    let mut body = text.as_str();
    while body.starts_with('#') {
        body = match body.find('\n') {
            Some(i) => &body[i + 1..],
            None => "",
        };
    }
    let mut rdr = csv::ReaderBuilder::new().flexible(false).from_reader(body.as_bytes());
    let headers: Vec<String> =
        rdr.headers().map_err(|e| LabelError::Csv { path: path.into(), detail: e.to_string() })?.iter().map(|h| h.trim().to_string()).collect();
    let mut rows = Vec::new();
    for r in rdr.records() {
        rows.push(r.map_err(|e| LabelError::Csv { path: path.into(), detail: e.to_string() })?);
    }
    Ok((headers, rows))
}

fn column(path: &Path, headers: &[String], name: &str) -> Result<usize, LabelError> {
    headers.iter().position(|h| h == name).ok_or_else(|| LabelError::MissingColumn { path: path.into(), column: name.into(), found: headers.to_vec() })
}

fn source_name(prefix: &str, path: &Path) -> String {
    format!("{prefix}/{}", path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default())
}

fn read_pyrit(path: &Path) -> Result<Vec<LabelledPair>, LabelError> {
    let (headers, rows) = read_commented_csv(path)?;
    let c_obj = column(path, &headers, "objective")?;
    let c_resp = column(path, &headers, "assistant_response")?;
    let c_score = column(path, &headers, "human_score")?;
    let c_cat = headers.iter().position(|h| h == "harm_category");
    let source = source_name("pyrit", path);
    rows.iter()
        .enumerate()
        .map(|(i, r)| {
            let score = r.get(c_score).unwrap_or_default().trim();
            let label = match score {
                "1" | "1.0" => true,
                "0" | "0.0" => false,
                other => return Err(LabelError::BadScore { path: path.into(), row: i + 1, value: other.into() }),
            };
            Ok(LabelledPair {
                prompt: r.get(c_obj).unwrap_or_default().to_string(),
                response: r.get(c_resp).unwrap_or_default().to_string(),
                label,
                source: source.clone(),
                category: c_cat.and_then(|c| r.get(c)).map(|s| s.trim().to_string()).filter(|s| !s.is_empty()),
            })
        })
        .collect()
}

/// PyRIT `refusal_scorer/refusal.csv` or `refusal_extra.csv`: label = refusal
/// (`human_score` 1).
pub fn read_pyrit_refusal(path: &Path) -> Result<Vec<LabelledPair>, LabelError> {
    read_pyrit(path)
}

/// PyRIT `objective/<category>.csv`: label = harmful response (`human_score` 1 = the
/// harmful objective was achieved).
pub fn read_pyrit_objective(path: &Path) -> Result<Vec<LabelledPair>, LabelError> {
    read_pyrit(path)
}

/// Every `*.csv` in a PyRIT `objective/` directory, in file-name order (deterministic).
pub fn read_pyrit_objective_dir(dir: &Path) -> Result<Vec<LabelledPair>, LabelError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| LabelError::Io { path: dir.into(), source })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "csv"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        out.extend(read_pyrit_objective(&f)?);
    }
    Ok(out)
}

/// One UncensorBench item: a harmful prompt with a refusing and a complying answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UncensorBenchItem {
    pub id: String,
    pub topic: String,
    #[serde(default)]
    pub subtopic: Option<String>,
    pub prompt: String,
    pub censored_response: String,
    pub uncensored_response: String,
}

#[derive(Deserialize)]
struct UncensorBenchFile {
    prompts: Vec<UncensorBenchItem>,
}

pub fn read_uncensorbench(path: &Path) -> Result<Vec<UncensorBenchItem>, LabelError> {
    let bytes = std::fs::read(path).map_err(|source| LabelError::Io { path: path.into(), source })?;
    let f: UncensorBenchFile = serde_json::from_slice(&bytes).map_err(|e| LabelError::Json { path: path.into(), detail: e.to_string() })?;
    Ok(f.prompts)
}

/// UncensorBench as head examples: (refusal pairs, response-harm pairs). The censored
/// answer is a refusal and unharmful; the uncensored answer is compliance and harmful.
pub fn uncensorbench_pairs(items: &[UncensorBenchItem]) -> (Vec<LabelledPair>, Vec<LabelledPair>) {
    let mut refusal = Vec::new();
    let mut harm = Vec::new();
    for it in items {
        for (response, is_refusal) in [(&it.censored_response, true), (&it.uncensored_response, false)] {
            let pair = |label| LabelledPair {
                prompt: it.prompt.clone(),
                response: response.clone(),
                label,
                source: "uncensorbench/prompts.json".into(),
                category: Some(it.topic.clone()),
            };
            refusal.push(pair(is_refusal));
            harm.push(pair(!is_refusal));
        }
    }
    (refusal, harm)
}

/// Paths of the pinned labelled sets, relative to the extracted sources directory
/// (`.cache/sources`), as listed in docs/resources.md.
pub const PYRIT_REFUSAL_FILES: [&str; 2] =
    ["pyrit/pyrit/datasets/scorer_evals/refusal_scorer/refusal.csv", "pyrit/pyrit/datasets/scorer_evals/refusal_scorer/refusal_extra.csv"];
pub const PYRIT_OBJECTIVE_DIR: &str = "pyrit/pyrit/datasets/scorer_evals/objective";
pub const UNCENSORBENCH_FILE: &str = "uncensorbench/uncensorbench/data/prompts.json";

/// The response heads' training data from the pinned sets: refusal = PyRIT refusal +
/// refusal_extra + UncensorBench (censored = refusal); response harm = PyRIT objective +
/// UncensorBench (uncensored = harmful). 469 refusal pairs and 695 harm pairs with the
/// pinned versions. The prompt-harm head's examples come from the dataset stage and are
/// added by the caller (`ProbeTrainingSet::add_prompts`).
pub fn pinned_response_sets(sources_root: &Path) -> Result<(Vec<LabelledPair>, Vec<LabelledPair>), LabelError> {
    let mut refusal = Vec::new();
    for f in PYRIT_REFUSAL_FILES {
        refusal.extend(read_pyrit_refusal(&sources_root.join(f))?);
    }
    let mut harm = read_pyrit_objective_dir(&sources_root.join(PYRIT_OBJECTIVE_DIR))?;
    let (ub_refusal, ub_harm) = uncensorbench_pairs(&read_uncensorbench(&sources_root.join(UNCENSORBENCH_FILE))?);
    refusal.extend(ub_refusal);
    harm.extend(ub_harm);
    Ok((refusal, harm))
}
