//! `manifest.json` of an artifact: key components, inputs (for lineage), files with
//! digests, rows, metrics, timings, program versions. Written last by `Store::publish`;
//! read by the store, the engine and the CLI (`show`, `log`, `lineage`, `explain`).
use serde::{Deserialize, Serialize};

use super::key::{Digest, Key, KeyComponents};

pub const MANIFEST_FILE: &str = "manifest.json";
/// Bump when the manifest layout changes.
pub const MANIFEST_VERSION: u32 = 1;

/// One input as it was consumed: role, producing node and its key (lineage), content digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputRecord {
    pub role: String,
    pub node: String,
    pub stage: String,
    pub key: Key,
    pub digest: Digest,
}

/// One data file of the artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub name: String,
    pub blake3: Digest,
    pub bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// `name@version` of the Parquet schema (schema/), if it is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
}

/// When the node ran. Not part of the key or the content digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Timing {
    pub started_unix_ms: u64,
    pub seconds: f64,
    /// Seconds of named parts of the stage's work (`update`: load, logprobs, train, write),
    /// so a slow stage says where its time went. Absent when the stage reports none.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub parts: std::collections::BTreeMap<String, f64>,
}

/// Versions of what produced the artifact. Not part of the key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgramInfo {
    pub name: String,
    pub version: String,
    pub libtorch: String,
}
impl ProgramInfo {
    pub fn current() -> Self {
        // The runtime LIBTORCH, else the one this binary was built against (.cargo/config.toml
        // sets it for every cargo build); only its version string is recorded, never the path.
        let libtorch = std::env::var("LIBTORCH")
            .ok()
            .or_else(|| option_env!("LIBTORCH").map(str::to_string))
            .and_then(|d| std::fs::read_to_string(std::path::Path::new(&d).join("build-version")).ok())
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        ProgramInfo { name: env!("CARGO_PKG_NAME").into(), version: env!("CARGO_PKG_VERSION").into(), libtorch }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub manifest_version: u32,
    /// `stage@iteration`, or the stage name for once-per-run nodes.
    pub node: String,
    pub stage: String,
    pub iteration: Option<u32>,
    pub key: Key,
    /// Every key component, separately (for `explain`).
    pub components: KeyComponents,
    pub inputs: Vec<InputRecord>,
    pub content_digest: Digest,
    pub files: Vec<FileEntry>,
    /// Stage metrics (`log` shows them per iteration).
    pub metrics: serde_json::Map<String, serde_json::Value>,
    pub timing: Timing,
    pub program: ProgramInfo,
    /// Files that `gc --thin` deleted to bound the store. They stay in `files` with their
    /// digests, so the content digest, and every key computed from it, still hold; the engine
    /// rebuilds them (bit-identical on the same machine kind) when a stage needs them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub thinned: Vec<String>,
    /// The judge keys (`judge::JudgeKey`) whose verdict-cache entries this artifact's stage
    /// read or wrote (`judge@i`, `eval@i`). `gc` keeps the `.verdict-cache` entries of the
    /// judges that some remaining artifact names here and removes the rest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verdict_judges: Vec<String>,
    /// Where the stage ran when it was a cluster job; absent for a local run. Provenance
    /// only: in no key and not in the content digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ran_on: Option<RanOn>,
}

/// A cluster job's identity: the scheduler, its job id and the host it ran on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RanOn {
    pub scheduler: String,
    pub job_id: String,
    pub host: String,
}

impl Manifest {
    /// A manifest before publishing: files and content digest are filled by the store.
    pub fn draft(node: &str, stage: &str, iteration: Option<u32>, components: KeyComponents) -> Manifest {
        let key = components.key();
        Manifest {
            manifest_version: MANIFEST_VERSION,
            node: node.to_string(),
            stage: stage.to_string(),
            iteration,
            key,
            components,
            inputs: Vec::new(),
            content_digest: Digest::from_hash(blake3::hash(b"")),
            files: Vec::new(),
            metrics: serde_json::Map::new(),
            timing: Timing::default(),
            program: ProgramInfo::current(),
            thinned: Vec::new(),
            verdict_judges: Vec::new(),
            ran_on: None,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("manifest is plain data");
        v.push(b'\n');
        v
    }

    /// Parse and check: version, file names safe, key = hash of the components.
    pub fn from_bytes(bytes: &[u8]) -> Result<Manifest, String> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| format!("not a manifest: {e}"))?;
        if m.manifest_version != MANIFEST_VERSION {
            return Err(format!("manifest version {} (this program reads {MANIFEST_VERSION})", m.manifest_version));
        }
        if !super::is_stage_name(&m.stage) {
            return Err(format!("bad stage name {:?}", m.stage));
        }
        for f in &m.files {
            if !super::is_safe_file_name(&f.name) {
                return Err(format!("bad file name {:?}", f.name));
            }
        }
        for i in &m.inputs {
            if !super::is_stage_name(&i.stage) {
                return Err(format!("bad input stage {:?}", i.stage));
            }
        }
        if let Some(t) = m.thinned.iter().find(|t| !m.files.iter().any(|f| &f.name == *t)) {
            return Err(format!("thinned file {t:?} is not in the file list"));
        }
        if m.components.key() != m.key {
            return Err("key does not match its components".into());
        }
        let cd = super::key::content_digest(m.files.iter().map(|f| (f.name.as_str(), &f.blake3)));
        if cd != m.content_digest {
            return Err("content digest does not match the file list".into());
        }
        Ok(m)
    }

    /// Rows of a file, if recorded.
    pub fn rows(&self, file: &str) -> Option<u64> {
        self.files.iter().find(|f| f.name == file).and_then(|f| f.rows)
    }

    /// Total rows over all files that record rows.
    pub fn total_rows(&self) -> Option<u64> {
        let v: Vec<u64> = self.files.iter().filter_map(|f| f.rows).collect();
        if v.is_empty() {
            None
        } else {
            Some(v.iter().sum())
        }
    }
}
