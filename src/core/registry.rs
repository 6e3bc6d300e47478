//! A versioned model registry on local disk.
//!
//! Layout, per base model `<stem>.json`: `<fineTunedDir>/<stem>/manifest.json` and one
//! file per version, `<stem>-v<N>.json`. The manifest holds every version with its
//! lineage, metrics, options, data fingerprint, creation time and status
//! (`candidate` / `production` / `archived`), plus the production pointer's history for
//! roll back. Every write is atomic (temp + fsync + rename), and every read-modify-write
//! of a manifest holds an exclusive lock on `<stem>/.lock`, so two processes fine-tuning
//! the same base at once get distinct versions and neither loses the other's entry.

use super::fsutil::{read_text, write_atomic};
use super::linear::LinearModel;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VersionEntry {
    pub version: u32,
    /// `v<N>`: the string the old API handed around.
    pub name: String,
    pub filename: String,
    pub model_path: String,
    /// Version this one was trained from (`None`: the base model file itself).
    pub parent: Option<u32>,
    pub created: f64,
    pub status: String,
    #[serde(default)]
    pub metrics: Value,
    #[serde(default)]
    pub base_metrics: Value,
    #[serde(default)]
    pub improvement: Option<f64>,
    #[serde(default)]
    pub accepted: Option<bool>,
    #[serde(default)]
    pub options: Value,
    #[serde(default)]
    pub data: Value,
    /// Model family (`linear`, `gbm`, `random_forest`, `extra_trees`); absent in manifests
    /// written before families existed, which were all linear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub hyperparameters: Value,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub format: String,
    pub base_model: String,
    pub versions: Vec<VersionEntry>,
    /// Production versions in the order they were promoted; the last one serves.
    #[serde(default)]
    pub production_history: Vec<u32>,
}

const MANIFEST_MAX_BYTES: u64 = 256 << 20;
const FORMAT: &str = "mlops-native/registry-manifest@1";

pub struct Registry {
    pub dir: PathBuf,
    pub stem: String,
    pub base_model: PathBuf,
}

/// What a new version records besides its model.
#[derive(Default)]
pub struct NewVersion {
    pub parent: Option<u32>,
    pub metrics: Value,
    pub base_metrics: Value,
    pub improvement: Option<f64>,
    pub accepted: Option<bool>,
    pub options: Value,
    pub data: Value,
    pub family: Option<String>,
    pub hyperparameters: Value,
}

fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// `models/quality.json` → `quality`; `…/fine-tuned/quality/quality-v3.json` → `quality`,
/// so a fine-tuned version fine-tuned again stays in its base's lineage.
pub fn stem_of(base: &Path) -> String {
    let s = base
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    match s.rfind("-v") {
        Some(i) if i > 0 && s[i + 2..].chars().all(|c| c.is_ascii_digit()) && s.len() > i + 2 => {
            s[..i].to_owned()
        }
        _ => s,
    }
}

/// The version number in a fine-tuned file name, if it is one.
pub fn version_of(path: &Path) -> Option<u32> {
    let s = path.file_stem()?.to_string_lossy().into_owned();
    let i = s.rfind("-v")?;
    s[i + 2..].parse().ok()
}

impl Registry {
    pub fn new(fine_tuned_dir: &Path, base_model: &Path) -> Self {
        let stem = stem_of(base_model);
        Self {
            dir: fine_tuned_dir.join(&stem),
            stem,
            base_model: base_model.to_path_buf(),
        }
    }

    fn manifest_path(&self) -> PathBuf {
        self.dir.join("manifest.json")
    }

    pub fn read(&self) -> Result<Manifest, String> {
        let p = self.manifest_path();
        if !p.exists() {
            return Ok(Manifest {
                format: FORMAT.into(),
                base_model: self.base_model.display().to_string(),
                ..Default::default()
            });
        }
        let text = read_text(&p, MANIFEST_MAX_BYTES)?;
        let m: Manifest = serde_json::from_str(&text)
            .map_err(|e| format!("{}: manifest is corrupt ({e})", p.display()))?;
        if m.format != FORMAT {
            return Err(format!("{}: not a registry manifest", p.display()));
        }
        Ok(m)
    }

    /// Runs `f` on the manifest under the exclusive lock and writes the result atomically.
    pub fn update<T>(
        &self,
        f: impl FnOnce(&mut Manifest) -> Result<T, String>,
    ) -> Result<T, String> {
        fs::create_dir_all(&self.dir)
            .map_err(|e| format!("cannot create {}: {e}", self.dir.display()))?;
        let lock_path = self.dir.join(".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
        lock.lock()
            .map_err(|e| format!("cannot lock {}: {e}", lock_path.display()))?;
        self.sweep_temp_files();
        let result = (|| {
            let mut m = self.read()?;
            let out = f(&mut m)?;
            let text = serde_json::to_string_pretty(&m).map_err(|e| e.to_string())?;
            write_atomic(&self.manifest_path(), text.as_bytes())
                .map_err(|e| format!("cannot write manifest: {e}"))?;
            Ok(out)
        })();
        let _ = lock.unlock();
        result
    }

    /// Removes temp files that a process killed mid-write left behind. Only ones older than
    /// a minute: a live writer's temp file is renamed within milliseconds.
    fn sweep_temp_files(&self) {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if !(name.starts_with('.') && name.ends_with(".tmp")) {
                continue;
            }
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age.as_secs() >= 60);
            if old {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    pub fn next_version(&self) -> Result<u32, String> {
        Ok(self
            .read()?
            .versions
            .iter()
            .map(|v| v.version)
            .max()
            .unwrap_or(0)
            + 1)
    }

    /// Allocates the next version, writes its model file, then records it: the model file
    /// is durable before the manifest names it, so a crash never leaves a dangling entry.
    pub fn register(&self, model: &LinearModel, info: NewVersion) -> Result<VersionEntry, String> {
        self.register_text(&model.to_json_pretty(), info)
    }

    /// `register` for a model of any family, given as its file body.
    pub fn register_text(&self, body: &str, info: NewVersion) -> Result<VersionEntry, String> {
        self.update(|m| {
            let version = m.versions.iter().map(|v| v.version).max().unwrap_or(0) + 1;
            let filename = format!("{}-v{version}.json", self.stem);
            let path = self.dir.join(&filename);
            write_atomic(&path, body.as_bytes())
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            let entry = VersionEntry {
                version,
                name: format!("v{version}"),
                filename,
                model_path: path.display().to_string(),
                parent: info.parent,
                created: now_ms(),
                status: "candidate".into(),
                metrics: info.metrics,
                base_metrics: info.base_metrics,
                improvement: info.improvement,
                accepted: info.accepted,
                options: info.options,
                data: info.data,
                family: info.family,
                hyperparameters: info.hyperparameters,
            };
            m.versions.push(entry.clone());
            Ok(entry)
        })
    }

    fn set_production(m: &mut Manifest, version: Option<u32>) {
        for v in &mut m.versions {
            if v.status == "production" {
                v.status = "archived".into();
            }
            if Some(v.version) == version {
                v.status = "production".into();
            }
        }
    }

    pub fn promote(&self, version: u32) -> Result<VersionEntry, String> {
        self.update(|m| {
            let entry = m
                .versions
                .iter()
                .find(|v| v.version == version)
                .cloned()
                .ok_or_else(|| format!("{} has no version {version}", self.stem))?;
            super::models::Model::load(Path::new(&entry.model_path))
                .map_err(|e| format!("refusing to promote v{version}: {e}"))?;
            Self::set_production(m, Some(version));
            if m.production_history.last() != Some(&version) {
                m.production_history.push(version);
            }
            Ok(m.versions
                .iter()
                .find(|v| v.version == version)
                .cloned()
                .unwrap_or(entry))
        })
    }

    /// Moves production back to the version promoted before the current one (or to none:
    /// the base model serves again). Returns the version now in production.
    pub fn rollback(&self) -> Result<Option<u32>, String> {
        self.update(|m| {
            if m.production_history.pop().is_none() {
                return Err(format!(
                    "{} has no production version to roll back",
                    self.stem
                ));
            }
            let prev = m.production_history.last().copied();
            Self::set_production(m, prev);
            Ok(prev)
        })
    }

    pub fn production(&self) -> Result<Option<VersionEntry>, String> {
        let m = self.read()?;
        Ok(m.production_history
            .last()
            .and_then(|p| m.versions.iter().find(|v| v.version == *p).cloned()))
    }

    /// Newest first.
    pub fn history(&self) -> Result<Vec<VersionEntry>, String> {
        let mut v = self.read()?.versions;
        v.sort_by(|a, b| b.version.cmp(&a.version));
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mlops-reg-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn versions_are_monotonic_promote_and_rollback_move_the_pointer() {
        let dir = tmp("basic");
        let r = Registry::new(&dir, Path::new("models/quality.json"));
        let m = LinearModel::zeros(2);
        let v1 = r.register(&m, NewVersion::default()).unwrap();
        let v2 = r
            .register(
                &m,
                NewVersion {
                    parent: Some(1),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!((v1.version, v2.version), (1, 2));
        assert_eq!(r.history().unwrap()[0].version, 2);
        assert!(r.production().unwrap().is_none());
        r.promote(1).unwrap();
        r.promote(2).unwrap();
        assert_eq!(r.production().unwrap().unwrap().version, 2);
        assert_eq!(r.history().unwrap()[1].status, "archived");
        assert_eq!(r.rollback().unwrap(), Some(1));
        assert_eq!(r.production().unwrap().unwrap().status, "production");
        assert_eq!(r.rollback().unwrap(), None);
        assert!(r.rollback().is_err());
        assert!(r.promote(9).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn concurrent_registrations_get_distinct_versions() {
        let dir = tmp("concurrent");
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    let r = Registry::new(&dir, Path::new("q.json"));
                    (0..5)
                        .map(|_| {
                            r.register(&LinearModel::zeros(1), NewVersion::default())
                                .unwrap()
                                .version
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<u32> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        all.sort();
        assert_eq!(all, (1..=40).collect::<Vec<_>>());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_manifest_is_an_error_not_a_reset() {
        let dir = tmp("corrupt");
        let r = Registry::new(&dir, Path::new("q.json"));
        r.register(&LinearModel::zeros(1), NewVersion::default())
            .unwrap();
        fs::write(dir.join("q/manifest.json"), "{\"format\":").unwrap();
        assert!(r
            .register(&LinearModel::zeros(1), NewVersion::default())
            .unwrap_err()
            .contains("corrupt"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stems_follow_lineage() {
        assert_eq!(
            stem_of(Path::new("models/quality-predictor-v3-advanced.json")),
            "quality-predictor-v3-advanced"
        );
        assert_eq!(stem_of(Path::new("x/fine-tuned/q/q-v12.json")), "q");
        assert_eq!(version_of(Path::new("x/q-v12.json")), Some(12));
    }
}
