//! Content-addressed artifact store: `<root>/<stage>/<key>/` directories with data files and
//! a `manifest.json`; atomic publish, verification, lock, scanning for gc/status. Used by
//! the engine (publish, lookup), the stage context (verified input files) and the CLI.
//!
//! Safety of paths: every directory the store touches is `<root>/<stage>/<key>` or
//! `<root>/.tmp/<name>`, with `stage` checked against `[a-z][a-z0-9-]*`, `key` a 64-digit
//! hex [`Key`] and file names checked by [`is_safe_file_name`]. Nothing read from a
//! manifest or typed by a user (a REF) is ever joined to a path unchecked, so neither can
//! make the store read or write outside its root.
pub mod diff;
pub mod key;
pub mod manifest;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

pub use key::{content_digest, digest_file, Digest, Key, KeyComponents};
pub use manifest::{FileEntry, InputRecord, Manifest, ProgramInfo, RanOn, Timing, MANIFEST_FILE, MANIFEST_VERSION};

/// Errors of the store. Each names the artifact directory or file concerned.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {root}: {op}: {source}")]
    Io { root: PathBuf, op: String, source: std::io::Error },
    #[error("store {root} is locked by another run (lock file {lock}); wait for it to finish")]
    Locked { root: PathBuf, lock: PathBuf },
    #[error("artifact {dir}: manifest is invalid: {reason}")]
    BadManifest { dir: PathBuf, reason: String },
    #[error("artifact {dir}: file {file} does not match its manifest ({reason}); the artifact is corrupt — run `verify`, then `run --force` on that node")]
    DigestMismatch { dir: PathBuf, file: String, reason: String },
    #[error("artifact {dir}: file {file} of {node} was removed by `gc --thin` (its digest is kept, so keys still hold); `run` rebuilds it when a stage needs it, or rebuild it now with `run --only {node} --force`")]
    Thinned { dir: PathBuf, file: String, node: String },
    #[error("bad stage name {0:?} (expected [a-z][a-z0-9-]*)")]
    BadStage(String),
    #[error("bad file name {0:?} in an artifact (plain names only, no `/`, no leading `.`)")]
    BadFileName(String),
}

type Result<T> = std::result::Result<T, StoreError>;

/// Environment variable naming a point at which the process pauses (until killed): a node
/// name (the engine: outputs written, before publishing; `panic:NODE` panics inside that
/// node's stage instead, `abort:NODE` aborts its process, `delay:SECS` makes every stage wait
/// SECS seconds before it runs, stopping early on Ctrl-C), `gc-removing` (an artifact moved
/// out of place, before its files are deleted) or `publish-replacing` (`run --force`: the
/// old artifact moved aside, before the new one is renamed into place). Tests kill the
/// process there and check that the next run recovers.
pub const FAILPOINT_ENV: &str = "SELF_REDTEAM_FAILPOINT";

/// Pause forever when `FAILPOINT_ENV` names `point` (see there).
pub fn failpoint(point: &str) {
    if std::env::var(FAILPOINT_ENV).is_ok_and(|v| v == point) {
        eprintln!("failpoint {point}: pausing");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

/// Something in the store that is not a valid artifact where one should be: a directory
/// `<stage>/<key>` without a readable manifest (a gc of an older version killed halfway, a
/// hand edit), or a manifest that does not parse or does not match its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    pub dir: PathBuf,
    pub reason: String,
}

/// Prefix of a `.tmp` entry holding an artifact that `run --force` moved aside; it is put
/// back when the run died before its replacement was in place (`Store::recover`).
const REPLACED_PREFIX: &str = "replaced-";
/// Prefix of a `.tmp` entry holding an artifact that gc (or a repair) moved out of place.
const REMOVED_PREFIX: &str = "removed-";

fn io_err(root: &Path, op: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    let op = op.into();
    move |source| StoreError::Io { root: root.to_path_buf(), op, source }
}

/// Stage names are directory names: lowercase letters, digits, `-`.
pub fn is_stage_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_lowercase()) && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

/// A data file name inside an artifact: one path component, no leading dot, not the
/// manifest, printable ASCII without separators.
pub fn is_safe_file_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s != MANIFEST_FILE
        && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || c == b'-')
}

/// A published artifact: its directory and its (validated) manifest. Cheap to clone (the
/// manifest is shared): `status` on a long run handles every artifact several times.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub dir: PathBuf,
    pub manifest: std::sync::Arc<Manifest>,
}

impl Artifact {
    /// Path of one of its files; the name must be listed in the manifest.
    pub fn file_path(&self, name: &str) -> Result<PathBuf> {
        if !self.manifest.files.iter().any(|f| f.name == name) {
            return Err(StoreError::DigestMismatch { dir: self.dir.clone(), file: name.to_string(), reason: "no such file in the manifest".into() });
        }
        Ok(self.dir.join(name))
    }

    /// Recompute one file's digest and size and compare with the manifest.
    pub fn verify_file(&self, name: &str) -> Result<PathBuf> {
        if self.manifest.thinned.iter().any(|t| t == name) {
            return Err(StoreError::Thinned { dir: self.dir.clone(), file: name.to_string(), node: self.manifest.node.clone() });
        }
        let entry = self.manifest.files.iter().find(|f| f.name == name).ok_or_else(|| StoreError::DigestMismatch {
            dir: self.dir.clone(),
            file: name.to_string(),
            reason: "no such file in the manifest".into(),
        })?;
        let path = self.dir.join(&entry.name);
        let meta = fs::metadata(&path).map_err(|e| StoreError::DigestMismatch {
            dir: self.dir.clone(),
            file: name.to_string(),
            reason: format!("cannot read: {e}"),
        })?;
        if meta.len() != entry.bytes {
            return Err(StoreError::DigestMismatch {
                dir: self.dir.clone(),
                file: name.to_string(),
                reason: format!("size {} bytes, manifest says {}", meta.len(), entry.bytes),
            });
        }
        let got = digest_file(&path).map_err(|e| StoreError::DigestMismatch {
            dir: self.dir.clone(),
            file: name.to_string(),
            reason: format!("cannot read: {e}"),
        })?;
        if got != entry.blake3 {
            return Err(StoreError::DigestMismatch {
                dir: self.dir.clone(),
                file: name.to_string(),
                reason: format!("blake3 {} but manifest says {}", got.short(), entry.blake3.short()),
            });
        }
        Ok(path)
    }

    /// Verify every file (except those `gc --thin` removed), and that no unlisted file was added.
    pub fn verify_all(&self) -> Vec<StoreError> {
        let mut problems: Vec<StoreError> =
            self.manifest.files.iter().filter(|f| !self.manifest.thinned.contains(&f.name)).filter_map(|f| self.verify_file(&f.name).err()).collect();
        if let Ok(rd) = fs::read_dir(&self.dir) {
            for entry in rd.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                if name != MANIFEST_FILE && !self.manifest.files.iter().any(|f| f.name == name) {
                    problems.push(StoreError::DigestMismatch { dir: self.dir.clone(), file: name, reason: "file not listed in the manifest".into() });
                }
            }
        }
        problems
    }
}

/// The store rooted at one directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// Held while a run writes the store; released on drop (and by the OS if the process dies).
#[derive(Debug)]
pub struct StoreLock {
    _file: fs::File,
}

/// A temporary directory where one node's outputs are written before publishing.
#[derive(Debug)]
pub struct Staging {
    pub dir: PathBuf,
    stage: String,
    key: Key,
}

impl Store {
    /// Open (and create) a store directory.
    pub fn open(root: &Path) -> Result<Store> {
        fs::create_dir_all(root).map_err(io_err(root, "create store directory"))?;
        Ok(Store { root: root.to_path_buf() })
    }

    /// Open without creating (read-only verbs on a store that may not exist yet).
    pub fn at(root: &Path) -> Store {
        Store { root: root.to_path_buf() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn tmp_root(&self) -> PathBuf {
        self.root.join(".tmp")
    }

    /// Take the exclusive writer lock, failing at once if another run holds it.
    pub fn lock(&self) -> Result<StoreLock> {
        use fs4::fs_std::FileExt;
        let path = self.root.join(".lock");
        let file = fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io_err(&self.root, "open lock file"))?;
        match file.try_lock_exclusive() {
            Ok(true) => Ok(StoreLock { _file: file }),
            Ok(false) => Err(StoreError::Locked { root: self.root.clone(), lock: path }),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err(StoreError::Locked { root: self.root.clone(), lock: path }),
            Err(e) => Err(StoreError::Io { root: self.root.clone(), op: "lock".into(), source: e }),
        }
    }

    /// `<root>/<stage>/<key>`, after checking the stage name.
    pub fn artifact_dir(&self, stage: &str, key: &Key) -> Result<PathBuf> {
        if !is_stage_name(stage) {
            return Err(StoreError::BadStage(stage.to_string()));
        }
        Ok(self.root.join(stage).join(key.as_str()))
    }

    /// The artifact of (stage, key), if published.
    pub fn load(&self, stage: &str, key: &Key) -> Result<Option<Artifact>> {
        let dir = self.artifact_dir(stage, key)?;
        let mpath = dir.join(MANIFEST_FILE);
        let bytes = match fs::read(&mpath) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::Io { root: self.root.clone(), op: format!("read {}", mpath.display()), source: e }),
        };
        let manifest = Manifest::from_bytes(&bytes).map_err(|reason| StoreError::BadManifest { dir: dir.clone(), reason })?;
        if manifest.stage != stage || &manifest.key != key {
            return Err(StoreError::BadManifest { dir, reason: format!("manifest is for {}/{}, not {stage}/{key}", manifest.stage, manifest.key) });
        }
        Ok(Some(Artifact { dir, manifest: manifest.into() }))
    }

    /// Every published artifact (directories without a readable manifest are skipped:
    /// they are not artifacts). Sorted by (stage, key).
    pub fn scan(&self) -> Result<Vec<Artifact>> {
        use rayon::prelude::*;
        // Read and parse in parallel (the audit verbs' main cost on a long run); order kept.
        Ok(self.places()?.par_iter().filter_map(|(stage, key)| self.load(stage, key).ok().flatten()).collect())
    }

    /// Every `<stage>/<key>` directory name in the store (valid artifact or not), sorted by
    /// (stage, key): what [`Store::scan`] loads and [`Store::leftovers`] checks.
    fn places(&self) -> Result<Vec<(String, Key)>> {
        let mut out = Vec::new();
        let rd = match fs::read_dir(&self.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(StoreError::Io { root: self.root.clone(), op: "list store".into(), source: e }),
        };
        let mut stages: Vec<String> = rd.flatten().filter_map(|e| e.file_name().to_str().map(str::to_string)).filter(|n| is_stage_name(n)).collect();
        stages.sort();
        for stage in stages {
            let Ok(rd) = fs::read_dir(self.root.join(&stage)) else { continue };
            let mut keys: Vec<Key> = rd.flatten().filter_map(|e| e.file_name().to_str().and_then(|n| Key::parse(n).ok())).collect();
            keys.sort();
            out.extend(keys.into_iter().map(|k| (stage.clone(), k)));
        }
        Ok(out)
    }

    /// Find by key or unique key prefix (at least 4 hex digits).
    pub fn find_by_key_prefix(&self, prefix: &str) -> Result<Vec<Artifact>> {
        if prefix.len() < 4 || !prefix.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Ok(Vec::new());
        }
        Ok(self.scan()?.into_iter().filter(|a| a.manifest.key.as_str().starts_with(prefix)).collect())
    }

    /// Remove leftovers of interrupted runs (`.tmp/*`), after putting back any artifact that
    /// an interrupted `run --force` had moved aside before its replacement was published.
    /// Call only under the lock. Returns the number of entries removed.
    pub fn clean_tmp(&self) -> Result<usize> {
        self.clean_tmp_keeping(&[])
    }

    /// `clean_tmp`, keeping entries whose names start with one of `prefixes`.
    fn clean_tmp_keeping(&self, prefixes: &[String]) -> Result<usize> {
        let tmp = self.tmp_root();
        let mut n = 0;
        if let Ok(rd) = fs::read_dir(&tmp) {
            for e in rd.flatten() {
                let p = e.path();
                let name = e.file_name().to_string_lossy().to_string();
                if prefixes.iter().any(|p| name.starts_with(p.as_str())) {
                    continue;
                }
                if let Some(restored) = self.restore_replaced(&name, &p)? {
                    eprintln!("store {}: put back {} (an interrupted `run --force` had moved it aside)", self.root.display(), restored.display());
                    continue;
                }
                let r = if p.is_dir() { fs::remove_dir_all(&p) } else { fs::remove_file(&p) };
                r.map_err(io_err(&self.root, format!("remove {}", p.display())))?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// `.tmp/replaced-<stage>-<key>` whose place `<stage>/<key>` holds no artifact: move it
    /// back there. `None` when the entry is something else or its place is taken.
    fn restore_replaced(&self, name: &str, path: &Path) -> Result<Option<PathBuf>> {
        let Some(rest) = name.strip_prefix(REPLACED_PREFIX) else { return Ok(None) };
        let Some((stage, key)) = rest.rsplit_once('-') else { return Ok(None) };
        let (Ok(key), true) = (Key::parse(key), is_stage_name(stage)) else { return Ok(None) };
        if !path.join(MANIFEST_FILE).is_file() {
            return Ok(None);
        }
        let place = self.artifact_dir(stage, &key)?;
        if place.join(MANIFEST_FILE).is_file() {
            return Ok(None); // the replacement was published: the aside copy is garbage
        }
        if place.exists() {
            self.move_out(&place, "half-published replacement")?;
        }
        fs::rename(path, &place).map_err(io_err(&self.root, format!("restore {}", place.display())))?;
        if let Some(parent) = place.parent() {
            sync_dir(parent).map_err(io_err(&self.root, "fsync stage dir"))?;
        }
        Ok(Some(place))
    }

    /// Every directory in a stage folder that is named like an artifact but is not a valid
    /// one (see [`Leftover`]). `verify --all` lists them; `run` and `gc` repair them.
    pub fn leftovers(&self) -> Result<Vec<Leftover>> {
        let mut out = Vec::new();
        for (stage, key) in self.places()? {
            let dir = self.root.join(&stage).join(key.as_str());
            let reason = match self.load(&stage, &key) {
                Ok(Some(_)) => continue,
                Ok(None) => "directory without a manifest (an interrupted gc or publish)".to_string(),
                Err(e) => e.to_string(),
            };
            out.push(Leftover { dir, reason });
        }
        Ok(out)
    }

    /// Move every [`Leftover`] out of place (into `.tmp`, then delete it), so the node can be
    /// built again; returns what was removed. Call only under the lock.
    pub fn repair(&self) -> Result<Vec<Leftover>> {
        self.repair_keeping(&[])
    }

    /// [`repair`](Self::repair), leaving in `.tmp` the staging directories of `keep` (stage,
    /// key): nodes another process (a cluster job) is still computing.
    pub fn repair_keeping(&self, keep: &[(String, Key)]) -> Result<Vec<Leftover>> {
        let found = self.leftovers()?;
        for l in &found {
            self.move_out(&l.dir, "leftover")?;
            eprintln!("store {}: removed {} ({}); the node will be built again", self.root.display(), l.dir.display(), l.reason);
        }
        let prefixes: Vec<String> = keep.iter().map(|(stage, key)| format!("{stage}-{}-", key.short())).collect();
        self.clean_tmp_keeping(&prefixes)?;
        Ok(found)
    }

    /// Rename `dir` (an artifact place) into `.tmp/removed-…` and fsync its parent: one atomic
    /// step after which the place is free and nothing half-deleted is left in it.
    fn move_out(&self, dir: &Path, why: &str) -> Result<PathBuf> {
        let tmp = self.tmp_root();
        fs::create_dir_all(&tmp).map_err(io_err(&self.root, "create .tmp"))?;
        let stage = dir.parent().and_then(Path::file_name).map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
        let key = dir.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
        let aside = tempfile::Builder::new()
            .prefix(&format!("{REMOVED_PREFIX}{stage}-{}-", &key[..key.len().min(12)]))
            .tempdir_in(&tmp)
            .map_err(io_err(&self.root, "create removal dir"))?
            .keep();
        fs::remove_dir(&aside).map_err(io_err(&self.root, "prepare removal dir"))?;
        fs::rename(dir, &aside).map_err(io_err(&self.root, format!("move {} out of place ({why})", dir.display())))?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent).map_err(io_err(&self.root, "fsync stage dir"))?;
        }
        Ok(aside)
    }

    /// A fresh temporary directory for (stage, key). Call only under the lock.
    pub fn begin(&self, stage: &str, key: &Key) -> Result<Staging> {
        if !is_stage_name(stage) {
            return Err(StoreError::BadStage(stage.to_string()));
        }
        let tmp = self.tmp_root();
        fs::create_dir_all(&tmp).map_err(io_err(&self.root, "create .tmp"))?;
        let dir =
            tempfile::Builder::new().prefix(&format!("{stage}-{}-", key.short())).tempdir_in(&tmp).map_err(io_err(&self.root, "create staging dir"))?.keep();
        Ok(Staging { dir, stage: stage.to_string(), key: key.clone() })
    }

    /// Publish: digest every file in the staging dir, fsync them, write the manifest last
    /// (fsynced), then rename the directory into place. The store fills the draft's file
    /// list (keeping rows/schema the stage recorded) and content digest. With `replace`
    /// an existing artifact of the same key is swapped out (used by `run --force`).
    pub fn publish(&self, staging: Staging, mut manifest: Manifest, replace: bool) -> Result<Artifact> {
        let root = self.root.clone();
        let mut names: Vec<String> = Vec::new();
        for e in fs::read_dir(&staging.dir).map_err(io_err(&root, "list staging dir"))? {
            let e = e.map_err(io_err(&root, "list staging dir"))?;
            let name = e.file_name().to_string_lossy().to_string();
            if !e.file_type().map_err(io_err(&root, "stat staged file"))?.is_file() || !is_safe_file_name(&name) {
                return Err(StoreError::BadFileName(name));
            }
            names.push(name);
        }
        names.sort();
        let mut files = Vec::new();
        for name in &names {
            let path = staging.dir.join(name);
            let f = fs::File::open(&path).map_err(io_err(&root, format!("open {}", path.display())))?;
            f.sync_all().map_err(io_err(&root, "fsync file"))?;
            let bytes = f.metadata().map_err(io_err(&root, "stat"))?.len();
            let blake3 = digest_file(&path).map_err(io_err(&root, "digest"))?;
            let prior = manifest.files.iter().find(|x| &x.name == name).cloned();
            files.push(FileEntry {
                name: name.clone(),
                blake3,
                bytes,
                rows: prior.as_ref().and_then(|p| p.rows),
                schema: prior.as_ref().and_then(|p| p.schema.clone()),
            });
        }
        manifest.content_digest = content_digest(files.iter().map(|f| (f.name.as_str(), &f.blake3)));
        manifest.files = files;
        manifest.stage = staging.stage.clone();
        manifest.key = staging.key.clone();
        let mpath = staging.dir.join(MANIFEST_FILE);
        {
            let mut f = fs::File::create(&mpath).map_err(io_err(&root, "create manifest"))?;
            f.write_all(&manifest.to_bytes()).map_err(io_err(&root, "write manifest"))?;
            f.sync_all().map_err(io_err(&root, "fsync manifest"))?;
        }
        sync_dir(&staging.dir).map_err(io_err(&root, "fsync staging dir"))?;
        let final_dir = self.artifact_dir(&staging.stage, &staging.key)?;
        let parent = final_dir.parent().expect("artifact dir has a stage parent").to_path_buf();
        if !parent.exists() {
            fs::create_dir_all(&parent).map_err(io_err(&root, "create stage dir"))?;
            // A new directory entry in the root must reach the disk before anything in it counts.
            sync_dir(&root).map_err(io_err(&root, "fsync store root"))?;
        }
        let mut old: Option<PathBuf> = None;
        if final_dir.exists() {
            if self.load(&staging.stage, &staging.key).ok().flatten().is_none() {
                // Not an artifact (no or a bad manifest): a leftover of a crash; take its place.
                self.move_out(&final_dir, "leftover without a valid manifest")?;
            } else if !replace {
                // Someone published the same key meanwhile (same inputs → same bytes).
                let _ = fs::remove_dir_all(&staging.dir);
                return self
                    .load(&staging.stage, &staging.key)?
                    .ok_or_else(|| StoreError::BadManifest { dir: final_dir, reason: "exists without a manifest".into() });
            } else {
                // `run --force`: the old artifact goes aside under a name that says where it
                // belongs; if the process dies before the replacement is in place, the next
                // run's `clean_tmp` puts it back (it is deleted only after the new one is in).
                let aside = self.tmp_root().join(format!("{REPLACED_PREFIX}{}-{}", staging.stage, staging.key));
                let _ = fs::remove_dir_all(&aside);
                fs::rename(&final_dir, &aside).map_err(io_err(&root, "move old artifact aside"))?;
                sync_dir(&parent).map_err(io_err(&root, "fsync stage dir"))?;
                old = Some(aside);
                failpoint("publish-replacing");
            }
        }
        fs::rename(&staging.dir, &final_dir).map_err(io_err(&root, "publish (rename)"))?;
        sync_dir(&parent).map_err(io_err(&root, "fsync stage dir"))?;
        if let Some(o) = old {
            let _ = fs::remove_dir_all(o);
        }
        Ok(Artifact { dir: final_dir, manifest: manifest.into() })
    }

    /// `gc --thin`: delete the artifact's files that `which` selects (an update's policy
    /// weights and optimizer state), keeping their entries and digests in the manifest, which
    /// is rewritten first (atomically: written in `.tmp`, fsynced, renamed over the old one) so
    /// a crash leaves either the full artifact or a thinned one. Returns the files removed.
    pub fn thin(&self, a: &Artifact, which: impl Fn(&str) -> bool) -> Result<Vec<String>> {
        let dir = self.artifact_dir(&a.manifest.stage, &a.manifest.key)?;
        let mut m = (*a.manifest).clone();
        let victims: Vec<String> = m.files.iter().filter(|f| which(&f.name) && !m.thinned.contains(&f.name)).map(|f| f.name.clone()).collect();
        if victims.is_empty() {
            return Ok(victims);
        }
        m.thinned.extend(victims.iter().cloned());
        m.thinned.sort();
        let tmp = self.tmp_root();
        fs::create_dir_all(&tmp).map_err(io_err(&self.root, "create .tmp"))?;
        let staged = tempfile::NamedTempFile::new_in(&tmp).map_err(io_err(&self.root, "create manifest copy"))?;
        {
            let mut f = staged.as_file();
            f.write_all(&m.to_bytes()).map_err(io_err(&self.root, "write manifest"))?;
            f.sync_all().map_err(io_err(&self.root, "fsync manifest"))?;
        }
        staged.persist(dir.join(MANIFEST_FILE)).map_err(|e| StoreError::Io { root: self.root.clone(), op: "replace manifest".into(), source: e.error })?;
        sync_dir(&dir).map_err(io_err(&self.root, "fsync artifact dir"))?;
        failpoint("thin-removing");
        for v in &victims {
            match fs::remove_file(dir.join(v)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(StoreError::Io { root: self.root.clone(), op: format!("remove {v}"), source: e })
                }
                _ => {}
            }
        }
        Ok(victims)
    }

    /// Delete a published artifact (gc): first moved out of its place in one atomic rename
    /// (so a crash never leaves a half-deleted directory that looks like an artifact), then
    /// deleted; a crash in between leaves only a `.tmp` entry that the next run removes.
    pub fn remove(&self, a: &Artifact) -> Result<()> {
        let dir = self.artifact_dir(&a.manifest.stage, &a.manifest.key)?;
        let aside = self.move_out(&dir, "gc")?;
        failpoint("gc-removing");
        fs::remove_dir_all(&aside).map_err(io_err(&self.root, format!("remove {}", aside.display())))
    }
}

impl Staging {
    /// Discard a staging directory (failed stage).
    pub fn discard(self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(node: &str) -> Manifest {
        Manifest::draft(
            node,
            "prep",
            Some(1),
            key::KeyComponents {
                scheme: key::KEY_SCHEME,
                kind: "prep".into(),
                stage_version: 1,
                iteration: Some(1),
                params: serde_json::json!({}),
                inputs: vec![],
                seed: 1,
                files: vec![],
            },
        )
    }

    #[test]
    fn publish_then_load_and_detect_flipped_byte() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = Store::open(tmp.path()).expect("open");
        let _lock = store.lock().expect("lock");
        let m = draft("prep@1");
        let key = m.components.key();
        let st = store.begin("prep", &key).expect("begin");
        fs::write(st.dir.join("a.bin"), b"hello").expect("write");
        let a = store.publish(st, m, false).expect("publish");
        let loaded = store.load("prep", &key).expect("load").expect("present");
        assert_eq!(loaded.manifest.content_digest, a.manifest.content_digest);
        assert!(loaded.verify_all().is_empty());
        fs::write(loaded.dir.join("a.bin"), b"hellp").expect("flip");
        let err = loaded.verify_file("a.bin").expect_err("flipped");
        assert!(err.to_string().contains("does not match"), "{err}");
    }

    #[test]
    fn tampered_manifests_cannot_point_outside_the_store() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = Store::open(tmp.path()).expect("open");
        let _lock = store.lock().expect("lock");
        let m = draft("prep@1");
        let key = m.components.key();
        let st = store.begin("prep", &key).expect("begin");
        fs::write(st.dir.join("a.bin"), b"x").expect("write");
        let a = store.publish(st, m, false).expect("publish");
        let mpath = a.dir.join(MANIFEST_FILE);
        let good = fs::read_to_string(&mpath).expect("read");
        for (from, to) in
            [("\"name\": \"a.bin\"", "\"name\": \"../../a.bin\""), ("\"stage\": \"prep\"", "\"stage\": \"../prep\""), ("\"seed\": 1", "\"seed\": 2")]
        {
            assert!(good.contains(from), "{from}");
            fs::write(&mpath, good.replace(from, to)).expect("tamper");
            assert!(matches!(store.load("prep", &key), Err(StoreError::BadManifest { .. })), "{to} accepted");
        }
    }

    #[test]
    fn second_lock_is_refused() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = Store::open(tmp.path()).expect("open");
        let _l = store.lock().expect("first");
        assert!(matches!(store.lock(), Err(StoreError::Locked { .. })));
    }

    #[test]
    fn names_that_escape_are_refused() {
        assert!(!is_safe_file_name("../x"));
        assert!(!is_safe_file_name("a/b"));
        assert!(!is_safe_file_name(".hidden"));
        assert!(!is_safe_file_name("manifest.json"));
        assert!(is_safe_file_name("seeds.parquet"));
        assert!(!is_stage_name("../prep"));
        assert!(is_stage_name("judge-fit"));
    }
}
