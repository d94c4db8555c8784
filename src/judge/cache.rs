//! Verdict cache: one small JSON file per (judge key, prompt, response[, seed label]),
//! named by the blake3 of those, so re-judging a rollout computes only the pairs that
//! changed. Called by the `judge` and `eval` stages through `judge_cached`.
//!
//! What goes into an entry's key, and what never does:
//! - in: `CACHE_SCHEME` (change it when the hashed inputs change), the judge key, the
//!   prompt and response bytes, and the seed label only for judges that read it;
//! - in the judge key: the content digest of a local judge's weights (never its path or
//!   folder name: two checkpoints in folders of one name are different judges, one moved
//!   checkpoint is the same); for an HTTP judge, a digest of the URL without credentials and
//!   of the model the server reports at `/v1/models`;
//! - never: paths, times, API keys or credentials in URLs.
//!
//! Entries are written to a temporary file in the same directory and renamed into place,
//! so a crash never leaves a half-written entry that reads as valid. Only verdicts are
//! stored, and not all of them: a batch that fails (`Err`, e.g. a server down after retries)
//! stores nothing, a parse-error verdict is never stored (it says the judge's output was
//! unusable, which a truncated or garbled reply can cause as well as the judge; it is
//! recomputed next time), and a judge that is `uncacheable` neither reads nor writes.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Judge, JudgeError, JudgeInput, JudgeKey, Verdict};

/// Change this when the inputs to `entry_key` change.
pub const CACHE_SCHEME: &str = "verdict-cache/v1";

/// Directory of the verdict cache under a store root, shared by the `judge` stage, `eval`
/// and the `judge` verb (so an audit run and a pipeline run with the same judge share
/// verdicts). A dot-directory: store scans never list it as a stage.
pub const VERDICT_CACHE_DIR: &str = ".verdict-cache";

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("verdict cache {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("verdict cache entry {path} is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
}

/// blake3 hex digest naming one cache entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EntryKey(pub String);

pub fn entry_key(judge: &JudgeKey, input: &JudgeInput, uses_seed_label: bool) -> EntryKey {
    let mut h = blake3::Hasher::new();
    // Length-prefixed fields: no two different tuples hash the same byte stream.
    for field in [CACHE_SCHEME.as_bytes(), judge.0.as_bytes(), input.prompt.as_bytes(), input.response.as_bytes()] {
        h.update(&(field.len() as u64).to_le_bytes());
        h.update(field);
    }
    let label: &[u8] = match (uses_seed_label, input.seed_harmful) {
        (false, _) => b"-",
        (true, None) => b"none",
        (true, Some(true)) => b"harmful",
        (true, Some(false)) => b"benign",
    };
    h.update(&(label.len() as u64).to_le_bytes());
    h.update(label);
    EntryKey(h.finalize().to_hex().to_string())
}

#[derive(Serialize, Deserialize)]
struct Entry {
    scheme: String,
    judge: JudgeKey,
    verdict: Verdict,
}

#[derive(Debug, Clone)]
pub struct VerdictCache {
    root: PathBuf,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheStats {
    pub hits: usize,
    pub misses: usize,
}

impl VerdictCache {
    /// Open (creating if needed) a cache directory.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, CacheError> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|source| CacheError::Io { path: root.clone(), source })?;
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &EntryKey) -> PathBuf {
        // Two-level fan-out keeps directories small for large eval sets.
        self.root.join(&key.0[..2]).join(format!("{}.json", key.0))
    }

    pub fn get(&self, key: &EntryKey) -> Result<Option<Verdict>, CacheError> {
        let path = self.path_of(key);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CacheError::Io { path, source }),
        };
        let entry: Entry = serde_json::from_slice(&bytes).map_err(|e| CacheError::Corrupt { path: path.clone(), detail: e.to_string() })?;
        if entry.scheme != CACHE_SCHEME {
            return Ok(None);
        }
        Ok(Some(entry.verdict))
    }

    /// Store a verdict atomically (temp file in the same directory, then rename).
    pub fn put(&self, key: &EntryKey, judge: &JudgeKey, verdict: &Verdict) -> Result<(), CacheError> {
        let path = self.path_of(key);
        let dir = path.parent().expect("entry path has a fan-out parent").to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|source| CacheError::Io { path: dir.clone(), source })?;
        let entry = Entry { scheme: CACHE_SCHEME.into(), judge: judge.clone(), verdict: verdict.clone() };
        let bytes = serde_json::to_vec(&entry).expect("verdict entries always serialise");
        let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(|source| CacheError::Io { path: dir.clone(), source })?;
        std::io::Write::write_all(&mut tmp, &bytes).map_err(|source| CacheError::Io { path: tmp.path().to_path_buf(), source })?;
        tmp.as_file().sync_all().map_err(|source| CacheError::Io { path: tmp.path().to_path_buf(), source })?;
        tmp.persist(&path).map_err(|e| CacheError::Io { path: path.clone(), source: e.error })?;
        Ok(())
    }
}

/// What [`VerdictCache::sweep`] removed (or, in a dry run, would remove).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    /// Entries of judges no remaining artifact names.
    pub removed: usize,
    /// Entries that could not be read as an entry (they would fail the next lookup).
    pub corrupt: usize,
    /// Temporary files of writes that were interrupted before their rename.
    pub temp_files: usize,
    /// Entries kept (their judge is named by a remaining artifact).
    pub kept: usize,
    /// Bytes of everything removed.
    pub removed_bytes: u64,
}

impl VerdictCache {
    /// Garbage-collect the cache: keep the entries whose judge key is in `live`, remove the
    /// others, corrupt entries and leftover temporary files (a crash between a temp write and
    /// its rename). With `dry_run` nothing is deleted. The caller holds the store lock, so no
    /// stage writes meanwhile; each removal is one `unlink`, so a kill leaves a smaller cache,
    /// never a wrong one (a missing entry is recomputed).
    pub fn sweep(&self, live: &std::collections::HashSet<String>, dry_run: bool) -> Result<SweepReport, CacheError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CacheError::Io { path, source }
        };
        let mut report = SweepReport::default();
        let top = match std::fs::read_dir(&self.root) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(report),
            Err(e) => return Err(io(&self.root)(e)),
        };
        let mut fanouts: Vec<PathBuf> = top.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>().map_err(io(&self.root))?;
        fanouts.sort();
        for dir in fanouts.into_iter().filter(|p| p.is_dir()) {
            let mut files: Vec<PathBuf> =
                std::fs::read_dir(&dir).map_err(io(&dir))?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>().map_err(io(&dir))?;
            files.sort();
            for path in files {
                let bytes = std::fs::metadata(&path).map_err(io(&path))?.len();
                let is_entry = path.extension().is_some_and(|x| x == "json");
                let remove = if !is_entry {
                    report.temp_files += 1;
                    true
                } else {
                    match std::fs::read(&path).map_err(io(&path)).map(|b| serde_json::from_slice::<Entry>(&b)) {
                        Ok(Ok(entry)) if live.contains(&entry.judge.0) => false,
                        Ok(Ok(_)) => {
                            report.removed += 1;
                            true
                        }
                        Ok(Err(_)) => {
                            report.corrupt += 1;
                            true
                        }
                        Err(e) => return Err(e),
                    }
                };
                if remove {
                    report.removed_bytes += bytes;
                    if !dry_run {
                        std::fs::remove_file(&path).map_err(io(&path))?;
                    }
                } else {
                    report.kept += 1;
                }
            }
        }
        Ok(report)
    }
}

/// Judge `inputs` through the cache: hits are read, misses are judged in one batch (in
/// input order) and stored. If the judge fails, nothing from this call is stored and the
/// error is returned.
pub fn judge_cached(judge: &dyn Judge, cache: &VerdictCache, inputs: &[JudgeInput]) -> Result<(Vec<Verdict>, CacheStats), JudgeError> {
    if let Some(why) = judge.uncacheable() {
        tracing::warn!(judge = judge.name(), "judging without the verdict cache: {why}");
        let verdicts = judge.judge_batch(inputs)?;
        if verdicts.len() != inputs.len() {
            return Err(JudgeError::CountMismatch { backend: judge.name().to_string(), expected: inputs.len(), got: verdicts.len() });
        }
        return Ok((verdicts, CacheStats { hits: 0, misses: inputs.len() }));
    }
    let jkey = judge.key();
    let seeded = judge.uses_seed_label();
    let keys: Vec<EntryKey> = inputs.iter().map(|i| entry_key(&jkey, i, seeded)).collect();
    let mut out: Vec<Option<Verdict>> = Vec::with_capacity(inputs.len());
    let mut miss_idx = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let hit = cache.get(k)?;
        if hit.is_none() {
            miss_idx.push(i);
        }
        out.push(hit);
    }
    let stats = CacheStats { hits: inputs.len() - miss_idx.len(), misses: miss_idx.len() };
    if !miss_idx.is_empty() {
        let batch: Vec<JudgeInput> = miss_idx.iter().map(|&i| inputs[i].clone()).collect();
        let verdicts = judge.judge_batch(&batch)?;
        if verdicts.len() != batch.len() {
            return Err(JudgeError::CountMismatch { backend: judge.name().to_string(), expected: batch.len(), got: verdicts.len() });
        }
        for (&i, v) in miss_idx.iter().zip(verdicts) {
            if !v.parse_error {
                cache.put(&keys[i], &jkey, &v)?;
            }
            out[i] = Some(v);
        }
    }
    Ok((out.into_iter().map(|v| v.expect("every slot is a hit or a judged miss")).collect(), stats))
}
