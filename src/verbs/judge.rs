//! The `judge` verb: judge any file of (prompt, response) pairs with a configured judge and,
//! where the file carries labels, score the judge against them per head (accuracy,
//! precision, recall, F1), so users can audit a judge on their own labels. Called by
//! src/cli.rs (`self-redteam judge --with REF|SPEC FILE`).
//!
//! `--with` takes a backend name (`rules`, `keywords`, `probe`, `wildguard`: built from the
//! current pipeline file's `judge:` options; `probe` uses the plan's cached `judge-fit`) or
//! the REF of a `judge-fit` artifact (`judge-fit`, a key or a key prefix), which is loaded
//! as the probe it holds.
//!
//! FILE is CSV (leading `#` comment lines are skipped, as in PyRIT's scorer files), JSONL or
//! Parquet, with a prompt and a response column and, optionally, label columns
//! `prompt_harmful`, `refusal`, `response_harmful` and a `seed_label` column (the dataset
//! label judges like `rules` read; never a judge verdict). Labels are true/false, 1/0,
//! yes/no (or harmful/benign); an empty cell is "no label". Column names can be changed.
//!
//! Verdicts go through the store's verdict cache (`<store>/.verdict-cache`, shared with the
//! `judge` stage) unless `--no-cache`; a judge that fails (a server that stays down) caches
//! nothing and the verb exits non-zero.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::engine::Engine;
use crate::judge::build::{from_spec, BoxedJudge, PROBE_FILE};
use crate::judge::cache::{judge_cached, CacheStats, VerdictCache, VERDICT_CACHE_DIR};
use crate::judge::metrics::{compare_verdicts, HeadAgreement};
use crate::judge::{JudgeInput, Verdict};
use crate::plan::Plan;
use crate::spec::{JudgeBackend, Spec};
use crate::store::{Artifact, Store};

/// Logical name under which judge-fit's key records the embedder weights (src/plan.rs).
const EMBEDDER_FILE_NAME: &str = "judge.probe.embedder";

/// What `--with` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JudgeChoice {
    /// A backend configured by the pipeline file's `judge:` section.
    Backend(JudgeBackend),
    /// A `judge-fit` artifact REF (its probe).
    Artifact(String),
}

impl JudgeChoice {
    /// Backend names win; anything else is a REF.
    pub fn parse(s: &str) -> JudgeChoice {
        match s {
            "rules" => JudgeChoice::Backend(JudgeBackend::Rules),
            "keywords" => JudgeChoice::Backend(JudgeBackend::Keywords),
            "probe" => JudgeChoice::Backend(JudgeBackend::Probe),
            "wildguard" => JudgeChoice::Backend(JudgeBackend::Wildguard),
            other => JudgeChoice::Artifact(other.to_string()),
        }
    }
}

/// Column names of a pairs file. Label columns are optional: a default name is used when
/// the file has it; a name given explicitly must exist.
#[derive(Debug, Clone, PartialEq)]
pub struct PairColumns {
    pub prompt: String,
    pub response: String,
    pub prompt_harmful: Option<String>,
    pub refusal: Option<String>,
    pub response_harmful: Option<String>,
    pub seed_label: Option<String>,
}

impl Default for PairColumns {
    fn default() -> Self {
        PairColumns { prompt: "prompt".into(), response: "response".into(), prompt_harmful: None, refusal: None, response_harmful: None, seed_label: None }
    }
}

/// Errors of reading a pairs file; each names the file (and row where known).
#[derive(Debug, thiserror::Error)]
pub enum PairFileError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: unsupported extension (expected .csv, .jsonl or .parquet)")]
    Format { path: PathBuf },
    #[error("{path}: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error("{path}: missing column {column:?} (columns found: {found:?})")]
    MissingColumn { path: PathBuf, column: String, found: Vec<String> },
    #[error("{path}, row {row}: {detail}")]
    Row { path: PathBuf, row: usize, detail: String },
}

/// Human labels of one pair (`None` = not labelled).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PairLabels {
    pub prompt_harmful: Option<bool>,
    pub refusal: Option<bool>,
    pub response_harmful: Option<bool>,
}

/// One pair of the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PairRow {
    /// 0-based data row.
    pub row: usize,
    pub prompt: String,
    pub response: String,
    pub seed_harmful: Option<bool>,
    pub labels: PairLabels,
}

/// A pairs file: its rows and which label columns it has (head names).
#[derive(Debug, Clone, PartialEq)]
pub struct PairFile {
    pub rows: Vec<PairRow>,
    pub labelled_heads: Vec<&'static str>,
}

/// A table as strings: header names and one optional cell per column per row.
struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<Option<String>>>,
}

fn read_table(path: &Path) -> Result<Table, PairFileError> {
    let io = |source| PairFileError::Io { path: path.to_path_buf(), source };
    let parse = |detail: String| PairFileError::Parse { path: path.to_path_buf(), detail };
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_lowercase);
    match ext.as_deref() {
        Some("csv") => {
            let text = std::fs::read_to_string(path).map_err(io)?;
            let mut body = text.trim_start_matches('\u{feff}');
            // Leading comment lines only: a `#` inside a quoted cell later on is data.
            while body.starts_with('#') {
                body = body.find('\n').map_or("", |i| &body[i + 1..]);
            }
            let mut rdr = csv::ReaderBuilder::new().from_reader(body.as_bytes());
            let headers: Vec<String> = rdr.headers().map_err(|e| parse(e.to_string()))?.iter().map(|h| h.trim().to_string()).collect();
            let mut rows = Vec::new();
            for (i, rec) in rdr.records().enumerate() {
                let rec = rec.map_err(|e| PairFileError::Row { path: path.to_path_buf(), row: i, detail: e.to_string() })?;
                rows.push((0..headers.len()).map(|c| rec.get(c).map(str::to_string)).collect());
            }
            Ok(Table { headers, rows })
        }
        Some("jsonl") | Some("ndjson") => {
            let text = std::fs::read_to_string(path).map_err(io)?;
            let mut objs = Vec::new();
            let mut headers: Vec<String> = Vec::new();
            for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
                let obj: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line).map_err(|e| PairFileError::Row {
                    path: path.to_path_buf(),
                    row: i,
                    detail: format!("not a JSON object: {e}"),
                })?;
                for k in obj.keys() {
                    if !headers.contains(k) {
                        headers.push(k.clone());
                    }
                }
                objs.push(obj);
            }
            let cell = |v: &serde_json::Value| match v {
                serde_json::Value::Null => None,
                serde_json::Value::String(s) => Some(s.clone()),
                other => Some(other.to_string()),
            };
            let rows = objs.iter().map(|o| headers.iter().map(|h| o.get(h).and_then(cell)).collect()).collect();
            Ok(Table { headers, rows })
        }
        Some("parquet") => crate::schema::catch_reader_panic(
            || {
                use arrow::array::Array;
                use arrow::util::display::{ArrayFormatter, FormatOptions};
                let file = std::fs::File::open(path).map_err(io)?;
                let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| parse(e.to_string()))?;
                let headers: Vec<String> = builder.schema().fields().iter().map(|f| f.name().clone()).collect();
                let mut rows = Vec::new();
                let opts = FormatOptions::default();
                for batch in builder.build().map_err(|e| parse(e.to_string()))? {
                    let batch = batch.map_err(|e| parse(e.to_string()))?;
                    let fmts: Vec<ArrayFormatter<'_>> = batch
                        .columns()
                        .iter()
                        .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts))
                        .collect::<Result<_, _>>()
                        .map_err(|e| parse(e.to_string()))?;
                    for r in 0..batch.num_rows() {
                        rows.push(fmts.iter().zip(batch.columns()).map(|(f, c)| if c.is_null(r) { None } else { Some(f.value(r).to_string()) }).collect());
                    }
                }
                Ok(Table { headers, rows })
            },
            parse,
        ),
        _ => Err(PairFileError::Format { path: path.to_path_buf() }),
    }
}

/// Read a pairs file (format by extension; see the module header).
pub fn read_pairs(path: &Path, cols: &PairColumns) -> Result<PairFile, PairFileError> {
    let t = read_table(path)?;
    let missing = |column: &str| PairFileError::MissingColumn { path: path.to_path_buf(), column: column.to_string(), found: t.headers.clone() };
    let find = |name: &str| t.headers.iter().position(|h| h == name);
    let required = |name: &str| find(name).ok_or_else(|| missing(name));
    // An explicit name must exist; the default name is used only when present.
    let optional = |explicit: &Option<String>, default: &str| match explicit {
        Some(n) => required(n).map(Some),
        None => Ok(find(default)),
    };
    let c_prompt = required(&cols.prompt)?;
    let c_response = required(&cols.response)?;
    let c_ph = optional(&cols.prompt_harmful, "prompt_harmful")?;
    let c_ref = optional(&cols.refusal, "refusal")?;
    let c_rh = optional(&cols.response_harmful, "response_harmful")?;
    let c_seed = optional(&cols.seed_label, "seed_label")?;
    let mut rows = Vec::with_capacity(t.rows.len());
    for (i, r) in t.rows.iter().enumerate() {
        let row_err = |detail: String| PairFileError::Row { path: path.to_path_buf(), row: i, detail };
        let cell = |c: usize| r.get(c).cloned().flatten();
        let label = |c: Option<usize>, what: &str| -> Result<Option<bool>, PairFileError> {
            match c {
                Some(c) => crate::eval::suite::parse_label(&cell(c).unwrap_or_default()).map_err(|e| row_err(format!("{what}: {e}"))),
                None => Ok(None),
            }
        };
        let prompt = cell(c_prompt).ok_or_else(|| row_err(format!("no prompt in column {:?}", t.headers[c_prompt])))?;
        rows.push(PairRow {
            row: i,
            prompt,
            // A missing response is an empty one: judges answer n/a for it.
            response: cell(c_response).unwrap_or_default(),
            seed_harmful: label(c_seed, "seed label")?,
            labels: PairLabels {
                prompt_harmful: label(c_ph, "prompt_harmful")?,
                refusal: label(c_ref, "refusal")?,
                response_harmful: label(c_rh, "response_harmful")?,
            },
        });
    }
    let labelled_heads =
        [("prompt_harmful", c_ph), ("response_refusal", c_ref), ("response_harmful", c_rh)].into_iter().filter(|(_, c)| c.is_some()).map(|(h, _)| h).collect();
    Ok(PairFile { rows, labelled_heads })
}

fn tch_device(d: crate::spec::Device) -> tch::Device {
    match d {
        crate::spec::Device::Cpu => tch::Device::Cpu,
        crate::spec::Device::Cuda => tch::Device::Cuda(0),
    }
}

/// The probe of a `judge-fit` artifact, after checking its file digest and that the
/// configured embedder is the one it was fitted on.
fn probe_from_artifact(spec: &Spec, a: &Artifact) -> Result<BoxedJudge> {
    if a.manifest.stage != "judge-fit" {
        bail!(
            "{} is a `{}` artifact; --with needs a judge-fit artifact or a backend name (rules, keywords, probe, wildguard)",
            a.manifest.node,
            a.manifest.stage
        );
    }
    a.verify_file(PROBE_FILE).with_context(|| format!("refusing {} ({})", a.manifest.node, a.manifest.key.short()))?;
    let mut spec = spec.clone();
    if let Some(f) = a.manifest.components.files.iter().find(|f| f.name == EMBEDDER_FILE_NAME) {
        let weights = spec.embedder_dir.join("model.safetensors");
        crate::data::verify_source(&weights, &f.sha256).with_context(|| {
            format!("the probe of {} was fitted on embeddings of another model: {} must have sha256 {}", a.manifest.key.short(), weights.display(), f.sha256)
        })?;
        spec.raw.judge.probe.embedder_sha256 = f.sha256.clone();
    }
    spec.raw.judge.backend = JudgeBackend::Probe;
    from_spec(&spec, Some(&a.dir), tch_device(spec.raw.run.device))
}

/// Build the judge `--with` names.
pub fn build_judge(spec: &Spec, store_root: &Path, iterations: Option<u32>, choice: &JudgeChoice) -> Result<BoxedJudge> {
    match choice {
        JudgeChoice::Backend(JudgeBackend::Probe) => {
            let mut spec = spec.clone();
            spec.raw.judge.backend = JudgeBackend::Probe;
            let engine = Engine::new(&spec, Plan::new(&spec, iterations), Store::at(store_root));
            let a =
                engine.find("judge-fit").context("--with probe uses the plan's judge-fit artifact; run `self-redteam run --only dataset judge-fit` first")?;
            probe_from_artifact(&spec, &a)
        }
        JudgeChoice::Backend(b) => {
            let mut spec = spec.clone();
            spec.raw.judge.backend = *b;
            from_spec(&spec, None, tch_device(spec.raw.run.device)).with_context(|| format!("build the {b:?} judge from {}", spec.config_file.display()))
        }
        JudgeChoice::Artifact(r) => {
            let engine = Engine::new(spec, Plan::new(spec, iterations), Store::at(store_root));
            let a = engine.find(r).with_context(|| format!("--with {r:?} is neither a backend (rules, keywords, probe, wildguard) nor a judge-fit REF"))?;
            probe_from_artifact(spec, &a)
        }
    }
}

/// One judged pair, as `--json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct JudgedPair {
    #[serde(flatten)]
    pub pair: PairRow,
    pub verdict: Verdict,
}

/// The result of judging a file.
#[derive(Debug, Clone, Serialize)]
pub struct JudgeFileReport {
    pub file: PathBuf,
    pub judge: String,
    pub judge_key: String,
    pub pairs: Vec<JudgedPair>,
    pub parse_errors: usize,
    pub cache: Option<CacheStats>,
    /// Per labelled head: agreement with the labels (pairs with a parse error, an n/a
    /// verdict or no label are counted in `skipped`).
    pub metrics: BTreeMap<String, HeadAgreement>,
}

/// Judge every pair of `file` with `judge`, through the cache when one is given.
pub fn judge_pairs(
    judge: &dyn crate::judge::Judge,
    file: &Path,
    pairs: PairFile,
    cache: Option<&VerdictCache>,
    seed_label: Option<bool>,
) -> Result<JudgeFileReport> {
    let inputs: Vec<JudgeInput> =
        pairs.rows.iter().map(|p| JudgeInput { prompt: p.prompt.clone(), response: p.response.clone(), seed_harmful: seed_label.or(p.seed_harmful) }).collect();
    let (verdicts, stats) = match cache {
        Some(c) => {
            let (v, s) = judge_cached(judge, c, &inputs)?;
            (v, Some(s))
        }
        None => (judge.judge_batch(&inputs)?, None),
    };
    if verdicts.len() != inputs.len() {
        bail!("judge {} returned {} verdicts for {} pairs", judge.name(), verdicts.len(), inputs.len());
    }
    let reference: Vec<Verdict> = pairs
        .rows
        .iter()
        .map(|p| Verdict {
            prompt_harmful: p.labels.prompt_harmful,
            response_refusal: p.labels.refusal,
            response_harmful: p.labels.response_harmful,
            parse_error: false,
            raw: None,
        })
        .collect();
    let agreement = compare_verdicts(&verdicts, &reference);
    let mut metrics = BTreeMap::new();
    for head in &pairs.labelled_heads {
        let a = match *head {
            "prompt_harmful" => agreement.prompt_harmful,
            "response_refusal" => agreement.response_refusal,
            _ => agreement.response_harmful,
        };
        metrics.insert(head.to_string(), a);
    }
    let parse_errors = verdicts.iter().filter(|v| v.parse_error).count();
    Ok(JudgeFileReport {
        file: file.to_path_buf(),
        judge: judge.name().to_string(),
        judge_key: judge.key().to_string(),
        pairs: pairs.rows.into_iter().zip(verdicts).map(|(pair, verdict)| JudgedPair { pair, verdict }).collect(),
        parse_errors,
        cache: stats,
        metrics,
    })
}

/// Options of the verb.
#[derive(Debug, Clone)]
pub struct JudgeFileOptions {
    pub with: JudgeChoice,
    pub file: PathBuf,
    pub columns: PairColumns,
    /// Seed label for every pair (overrides a `seed_label` column).
    pub seed_label: Option<bool>,
    pub use_cache: bool,
}

/// The whole verb: build the judge, read the file, judge, score.
pub fn judge_file(spec: &Spec, store_root: &Path, iterations: Option<u32>, opts: &JudgeFileOptions) -> Result<JudgeFileReport> {
    tch::set_num_threads(spec.raw.run.threads as i32);
    // Read the file first: a typo in it fails before any model loads.
    let pairs = read_pairs(&opts.file, &opts.columns)?;
    let judge = build_judge(spec, store_root, iterations, &opts.with)?;
    let cache = if opts.use_cache { Some(VerdictCache::open(store_root.join(VERDICT_CACHE_DIR))?) } else { None };
    judge_pairs(judge.as_ref(), &opts.file, pairs, cache.as_ref(), opts.seed_label)
        .with_context(|| format!("judge {} with {}", opts.file.display(), judge.name()))
}

/// Human-readable report: summary, per-head metrics, and the first `show_rows` verdicts.
pub fn render_text(r: &JudgeFileReport, show_rows: usize) -> String {
    let mut s = String::new();
    let yn = |b: Option<bool>| b.map_or("-", |b| if b { "yes" } else { "no" });
    s.push_str(&format!("judged {} pair(s) of {} with {} ({})\n", r.pairs.len(), r.file.display(), r.judge, r.judge_key));
    if let Some(c) = r.cache {
        s.push_str(&format!("verdict cache: {} hit(s), {} judged\n", c.hits, c.misses));
    }
    s.push_str(&format!(
        "parse errors: {} of {}{}\n",
        r.parse_errors,
        r.pairs.len(),
        if r.parse_errors > 0 { " (their fields are unscored; --json shows the judge's raw output)" } else { "" }
    ));
    if r.metrics.is_empty() {
        s.push_str("no label columns (prompt_harmful, refusal, response_harmful): nothing to score\n");
    } else {
        s.push_str(&format!("{:<18} {:>5} {:>7} {:>9} {:>9} {:>7} {:>7}\n", "head", "n", "skipped", "accuracy", "precision", "recall", "f1"));
        for (h, a) in &r.metrics {
            let m = &a.metrics;
            s.push_str(&format!("{h:<18} {:>5} {:>7} {:>9.4} {:>9.4} {:>7.4} {:>7.4}\n", m.n, a.skipped, m.accuracy, m.precision, m.recall, m.f1));
        }
    }
    if show_rows > 0 && !r.pairs.is_empty() {
        s.push_str(&format!("{:>5}  {:<14} {:<8} {:<16} {}\n", "row", "prompt_harmful", "refusal", "response_harmful", "prompt"));
        for p in r.pairs.iter().take(show_rows) {
            let v = &p.verdict;
            let prompt: String = p.pair.prompt.chars().take(60).collect::<String>().replace('\n', " ");
            let flag = if v.parse_error { "  [parse error]" } else { "" };
            s.push_str(&format!(
                "{:>5}  {:<14} {:<8} {:<16} {prompt}{flag}\n",
                p.pair.row,
                yn(v.prompt_harmful),
                yn(v.response_refusal),
                yn(v.response_harmful)
            ));
        }
        if r.pairs.len() > show_rows {
            s.push_str(&format!("… {} more (--rows N, or --json for all)\n", r.pairs.len() - show_rows));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::rules::RulesJudge;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    }

    #[test]
    fn with_parses_backend_names_and_refs() {
        assert_eq!(JudgeChoice::parse("rules"), JudgeChoice::Backend(JudgeBackend::Rules));
        assert_eq!(JudgeChoice::parse("wildguard"), JudgeChoice::Backend(JudgeBackend::Wildguard));
        assert_eq!(JudgeChoice::parse("judge-fit"), JudgeChoice::Artifact("judge-fit".into()));
        assert_eq!(JudgeChoice::parse("ea5f80a3"), JudgeChoice::Artifact("ea5f80a3".into()));
    }

    #[test]
    fn csv_with_comment_line_and_renamed_columns_reads_labels() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = write(
            dir.path(),
            "r.csv",
            "# dataset_version=1.0\nobjective,assistant_response,human_score\nhow to x,\"I'm sorry, no\",1\nbake bread,\"Mix flour, # water\",0\n",
        );
        let cols =
            PairColumns { prompt: "objective".into(), response: "assistant_response".into(), refusal: Some("human_score".into()), ..PairColumns::default() };
        let f = read_pairs(&p, &cols).expect("read");
        assert_eq!(f.labelled_heads, ["response_refusal"]);
        assert_eq!(f.rows.len(), 2);
        assert_eq!(f.rows[1].response, "Mix flour, # water");
        assert_eq!(f.rows.iter().map(|r| r.labels.refusal).collect::<Vec<_>>(), [Some(true), Some(false)]);
        // An explicitly named label column must exist.
        let bad = PairColumns { refusal: Some("nope".into()), ..cols };
        assert!(matches!(read_pairs(&p, &bad), Err(PairFileError::MissingColumn { column, .. }) if column == "nope"));
    }

    #[test]
    fn jsonl_labels_accept_bools_numbers_and_words() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = write(dir.path(), "p.jsonl", "{\"prompt\":\"a\",\"response\":\"b\",\"prompt_harmful\":true,\"refusal\":0,\"response_harmful\":\"yes\"}\n\n{\"prompt\":\"c\",\"response\":null,\"prompt_harmful\":\"no\",\"refusal\":null}\n");
        let f = read_pairs(&p, &PairColumns::default()).expect("read");
        assert_eq!(f.labelled_heads, ["prompt_harmful", "response_refusal", "response_harmful"]);
        assert_eq!(f.rows[0].labels, PairLabels { prompt_harmful: Some(true), refusal: Some(false), response_harmful: Some(true) });
        assert_eq!(f.rows[1].labels, PairLabels { prompt_harmful: Some(false), refusal: None, response_harmful: None });
        assert_eq!(f.rows[1].response, "");
        let bad = write(dir.path(), "bad.jsonl", "{\"prompt\":\"a\",\"response\":\"b\",\"refusal\":\"maybe\"}\n");
        let err = read_pairs(&bad, &PairColumns::default()).expect_err("bad label").to_string();
        assert!(err.contains("row 0") && err.contains("maybe"), "{err}");
    }

    #[test]
    fn rules_judge_scored_against_refusal_labels() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Row 3 is a refusal the string list misses (lower-case "sorry"): one false negative.
        let p = write(
            dir.path(),
            "r.csv",
            "prompt,response,refusal\nx,I cannot help with that,1\ny,Sure: step one,0\nz,Here you go,0\nw,sorry not doing that,yes\n",
        );
        let f = read_pairs(&p, &PairColumns::default()).expect("read");
        let r = judge_pairs(&RulesJudge, &p, f, None, None).expect("judge");
        let m = r.metrics["response_refusal"].metrics;
        assert_eq!((m.n, m.tp, m.fp, m.tn, m.fn_), (4, 1, 0, 2, 1));
        assert!((m.accuracy - 0.75).abs() < 1e-12 && (m.precision - 1.0).abs() < 1e-12 && (m.recall - 0.5).abs() < 1e-12);
        assert_eq!(r.parse_errors, 0);
        let text = render_text(&r, 10);
        assert!(text.contains("response_refusal") && text.contains("0.7500"), "{text}");
    }
}
