//! The `show REF` verb: an artifact's manifest and the first rows of each of its Parquet
//! files.
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use serde::Serialize;
use serde_json::Value;

use crate::engine::Engine;
use crate::store::Manifest;

/// What `show --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct ShowOutput {
    /// The artifact's directory.
    pub dir: PathBuf,
    /// Its manifest, as `manifest.json` holds it.
    pub manifest: Manifest,
    /// The first rows of each Parquet file, by file name.
    pub rows: BTreeMap<String, FilePreview>,
}

/// The first rows of one Parquet file.
#[derive(Debug, Clone, Serialize)]
pub struct FilePreview {
    /// Column names, in schema order.
    pub columns: Vec<String>,
    /// Rows in the whole file.
    pub total_rows: u64,
    /// The first rows, each `{"column": "cell as text", …}`.
    pub rows: Vec<Value>,
}

/// The artifact `reference` names, with up to `rows` rows of each Parquet file.
pub fn show(engine: &Engine<'_>, reference: &str, rows: usize) -> anyhow::Result<ShowOutput> {
    let a = engine.find(reference)?;
    let mut previews = BTreeMap::new();
    for f in a.manifest.files.iter().filter(|f| f.name.ends_with(".parquet")) {
        let crate::schema::Preview { columns, rows: data, total_rows } =
            crate::schema::preview(&a.dir.join(&f.name), rows).with_context(|| format!("read {}", f.name))?;
        let objs: Vec<Value> = data.iter().map(|r| Value::Object(columns.iter().cloned().zip(r.iter().map(|c| Value::String(c.clone()))).collect())).collect();
        previews.insert(f.name.clone(), FilePreview { columns, total_rows, rows: objs });
    }
    Ok(ShowOutput { dir: a.dir, manifest: (*a.manifest).clone(), rows: previews })
}

impl ShowOutput {
    /// `node stage/key`, the manifest as stored, then each Parquet file's rows (one JSON
    /// object a line) in manifest order.
    pub fn write_text(&self, out: &mut impl Write) -> std::io::Result<()> {
        let m = &self.manifest;
        writeln!(out, "{} {}/{}\n{}", m.node, m.stage, m.key, String::from_utf8_lossy(&m.to_bytes()))?;
        for f in m.files.iter().filter(|f| f.name.ends_with(".parquet")) {
            let Some(p) = self.rows.get(&f.name) else { continue };
            writeln!(out, "\n{} ({} rows; first {}):", f.name, p.total_rows, p.rows.len())?;
            for o in &p.rows {
                writeln!(out, "  {o}")?;
            }
        }
        Ok(())
    }
}
