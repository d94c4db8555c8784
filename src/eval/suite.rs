//! Loader for users' own evaluation suites: any local CSV, JSONL or Parquet file with a
//! prompt column and optional label, category and response columns (names configurable).
//! Called by the `eval` stage for `eval.suites[].file` entries. The pinned benchmark sets
//! are read by `data/`; this is the door for everything else.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuiteFileSpec {
    pub path: PathBuf,
    #[serde(default = "default_prompt_column")]
    pub prompt_column: String,
    /// Prompt label column: true/1/yes/harmful/unsafe or false/0/no/benign/unharmful/safe.
    #[serde(default)]
    pub label_column: Option<String>,
    #[serde(default)]
    pub category_column: Option<String>,
    /// Pre-computed responses (judge-only evaluation of someone else's model).
    #[serde(default)]
    pub response_column: Option<String>,
}

fn default_prompt_column() -> String {
    "prompt".into()
}

impl SuiteFileSpec {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), prompt_column: default_prompt_column(), label_column: None, category_column: None, response_column: None }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuiteRow {
    /// 0-based row index in the file (data rows only).
    pub row: usize,
    pub prompt: String,
    pub label_harmful: Option<bool>,
    pub category: Option<String>,
    pub response: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    #[error("suite file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("suite file {path}: unsupported extension (expected .csv, .jsonl or .parquet)")]
    Format { path: PathBuf },
    #[error("suite file {path}: missing column {column:?} (columns found: {found:?})")]
    MissingColumn { path: PathBuf, column: String, found: Vec<String> },
    #[error("suite file {path}, row {row}: {detail}")]
    Row { path: PathBuf, row: usize, detail: String },
    #[error("suite file {path}: {detail}")]
    Parse { path: PathBuf, detail: String },
}

/// Parse a label cell; empty/null → None.
pub fn parse_label(cell: &str) -> Result<Option<bool>, String> {
    match cell.trim().to_lowercase().as_str() {
        "" | "null" | "none" => Ok(None),
        "true" | "1" | "1.0" | "yes" | "harmful" | "unsafe" => Ok(Some(true)),
        "false" | "0" | "0.0" | "no" | "benign" | "unharmful" | "safe" => Ok(Some(false)),
        other => Err(format!("label {other:?} is not one of true/false, 1/0, yes/no, harmful/benign, unsafe/safe")),
    }
}

/// A table as strings: column names and, per row, one optional cell per requested column.
struct Columns {
    prompt: usize,
    label: Option<usize>,
    category: Option<usize>,
    response: Option<usize>,
}

fn find_columns(spec: &SuiteFileSpec, headers: &[String]) -> Result<Columns, SuiteError> {
    let find = |name: &str| {
        headers.iter().position(|h| h == name).ok_or_else(|| SuiteError::MissingColumn {
            path: spec.path.clone(),
            column: name.to_string(),
            found: headers.to_vec(),
        })
    };
    Ok(Columns {
        prompt: find(&spec.prompt_column)?,
        label: spec.label_column.as_deref().map(find).transpose()?,
        category: spec.category_column.as_deref().map(find).transpose()?,
        response: spec.response_column.as_deref().map(find).transpose()?,
    })
}

fn make_row(spec: &SuiteFileSpec, row: usize, cols: &Columns, cell: impl Fn(usize) -> Option<String>) -> Result<SuiteRow, SuiteError> {
    let err = |detail: String| SuiteError::Row { path: spec.path.clone(), row, detail };
    let prompt = cell(cols.prompt).filter(|p| !p.is_empty()).ok_or_else(|| err(format!("empty prompt in column {:?}", spec.prompt_column)))?;
    let label_harmful = match cols.label {
        Some(c) => parse_label(&cell(c).unwrap_or_default()).map_err(err)?,
        None => None,
    };
    Ok(SuiteRow { row, prompt, label_harmful, category: cols.category.and_then(&cell).filter(|s| !s.is_empty()), response: cols.response.and_then(&cell) })
}

/// Load a suite file; the format is chosen by extension.
pub fn load_suite_file(spec: &SuiteFileSpec) -> Result<Vec<SuiteRow>, SuiteError> {
    let ext = spec.path.extension().and_then(|e| e.to_str()).map(str::to_lowercase);
    match ext.as_deref() {
        Some("csv") => load_csv(spec),
        Some("jsonl") | Some("ndjson") => load_jsonl(spec),
        Some("parquet") => load_parquet(spec),
        _ => Err(SuiteError::Format { path: spec.path.clone() }),
    }
}

fn load_csv(spec: &SuiteFileSpec) -> Result<Vec<SuiteRow>, SuiteError> {
    let path = &spec.path;
    let file = std::fs::File::open(path).map_err(|source| SuiteError::Io { path: path.clone(), source })?;
    let mut rdr = csv::ReaderBuilder::new().from_reader(file);
    let headers: Vec<String> = rdr
        .headers()
        .map_err(|e| SuiteError::Parse { path: path.clone(), detail: e.to_string() })?
        .iter()
        .map(|h| h.trim().trim_start_matches('\u{feff}').to_string())
        .collect();
    let cols = find_columns(spec, &headers)?;
    let mut out = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec.map_err(|e| SuiteError::Row { path: path.clone(), row: i, detail: e.to_string() })?;
        out.push(make_row(spec, i, &cols, |c| rec.get(c).map(str::to_string))?);
    }
    Ok(out)
}

fn json_cell(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn load_jsonl(spec: &SuiteFileSpec) -> Result<Vec<SuiteRow>, SuiteError> {
    let path = &spec.path;
    let text = std::fs::read_to_string(path).map_err(|source| SuiteError::Io { path: path.clone(), source })?;
    let names: Vec<String> = [Some(&spec.prompt_column), spec.label_column.as_ref(), spec.category_column.as_ref(), spec.response_column.as_ref()]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let mut out = Vec::new();
    for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let obj: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(line).map_err(|e| SuiteError::Row { path: path.clone(), row: i, detail: format!("not a JSON object: {e}") })?;
        // Each line is its own record: a key missing from a line is a missing column there.
        for n in &names {
            if !obj.contains_key(n) {
                return Err(SuiteError::MissingColumn { path: path.clone(), column: n.clone(), found: obj.keys().cloned().collect() });
            }
        }
        let headers: Vec<String> = names.clone();
        let cols = find_columns(spec, &headers)?;
        out.push(make_row(spec, i, &cols, |c| obj.get(&headers[c]).and_then(json_cell))?);
    }
    Ok(out)
}

fn load_parquet(spec: &SuiteFileSpec) -> Result<Vec<SuiteRow>, SuiteError> {
    crate::schema::catch_reader_panic(|| load_parquet_unguarded(spec), |detail| SuiteError::Parse { path: spec.path.clone(), detail })
}

fn load_parquet_unguarded(spec: &SuiteFileSpec) -> Result<Vec<SuiteRow>, SuiteError> {
    use arrow::array::Array;
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let path = &spec.path;
    let perr = |e: &dyn std::fmt::Display| SuiteError::Parse { path: path.clone(), detail: e.to_string() };
    let file = std::fs::File::open(path).map_err(|source| SuiteError::Io { path: path.clone(), source })?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| perr(&e))?;
    let headers: Vec<String> = builder.schema().fields().iter().map(|f| f.name().clone()).collect();
    let cols = find_columns(spec, &headers)?;
    let reader = builder.build().map_err(|e| perr(&e))?;
    let mut out = Vec::new();
    let mut row = 0;
    let opts = FormatOptions::default();
    for batch in reader {
        let batch = batch.map_err(|e| perr(&e))?;
        let formatters: Vec<Option<ArrayFormatter<'_>>> = (0..batch.num_columns())
            .map(|c| {
                let used = [Some(cols.prompt), cols.label, cols.category, cols.response].contains(&Some(c));
                if used {
                    ArrayFormatter::try_new(batch.column(c).as_ref(), &opts).map(Some).map_err(|e| perr(&e))
                } else {
                    Ok(None)
                }
            })
            .collect::<Result<_, _>>()?;
        for i in 0..batch.num_rows() {
            let cell = |c: usize| {
                if batch.column(c).is_null(i) {
                    None
                } else {
                    formatters[c].as_ref().map(|f| f.value(i).to_string())
                }
            };
            out.push(make_row(spec, row, &cols, cell)?);
            row += 1;
        }
    }
    Ok(out)
}

/// Convenience for error messages and manifests.
pub fn describe(spec: &SuiteFileSpec) -> String {
    format!("{} (prompt column {:?})", display_path(&spec.path), spec.prompt_column)
}

fn display_path(p: &Path) -> String {
    p.display().to_string()
}
