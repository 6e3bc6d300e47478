//! A versioned model registry on local disk.
//!
//! Layout, per base model `<stem>.json`: `<fineTunedDir>/<stem>/manifest.json` and one
//! file per version, `<stem>-v<N>.json`. The manifest holds every version with its
//! lineage, metrics, options, data fingerprint, creation time and status
//! (`candidate` / `production` / `archived`), plus the production pointer's history for
//! roll back. Every write is atomic (temp + fsync + rename), and every read-modify-write
//! of a manifest holds an exclusive lock on `<stem>/.lock`, so two processes fine-tuning
//! the same base at once get distinct versions and neither loses the other's entry.
//!
//! Damage: a missing or corrupt manifest is rebuilt from the `<stem>-v<N>.json` files it can
//! read (the corrupt one is kept beside it as `manifest.json.corrupt-<ms>`), and the rebuilt
//! manifest says so in `recovered`. Version numbers always continue above every version file
//! on disk, listed or not, so a number is never reused. The production pointer cannot be
//! recovered from the files; until something is promoted again the base model serves.

use super::fsutil::write_atomic;
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
    /// Set when the manifest was rebuilt from the version files on disk (it was missing or
    /// corrupt): when, why, which versions were recovered and which files were unreadable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered: Option<Value>,
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

    /// The manifest; rebuilt in memory from the version files when it is missing or corrupt
    /// (`update` then writes the rebuilt one).
    pub fn read(&self) -> Result<Manifest, String> {
        self.load().map(|(m, _)| m)
    }

    /// The manifest, and the reason it was rebuilt when the file on disk was corrupt.
    fn load(&self) -> Result<(Manifest, Option<String>), String> {
        let p = self.manifest_path();
        let bytes = match fs::metadata(&p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let files = self.version_files();
                if files.is_empty() {
                    return Ok((
                        Manifest {
                            format: FORMAT.into(),
                            base_model: self.base_model.display().to_string(),
                            ..Default::default()
                        },
                        None,
                    ));
                }
                return Ok((
                    self.rebuild("manifest.json was missing".into(), files),
                    None,
                ));
            }
            Err(e) => return Err(format!("cannot read {}: {e}", p.display())),
            Ok(meta) if meta.is_dir() => {
                return Err(format!("{} is a directory, not a file", p.display()))
            }
            Ok(meta) if meta.len() > MANIFEST_MAX_BYTES => None,
            Ok(_) => Some(fs::read(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?),
        };
        let parsed = match bytes {
            None => Err("larger than allowed".to_string()),
            Some(b) => serde_json::from_slice::<Manifest>(&b)
                .map_err(|e| e.to_string())
                .and_then(|m| {
                    if m.format == FORMAT {
                        Ok(m)
                    } else {
                        Err("not a registry manifest".into())
                    }
                }),
        };
        match parsed {
            Ok(m) => Ok((m, None)),
            Err(e) => {
                let why = format!("manifest.json was corrupt ({e})");
                Ok((self.rebuild(why.clone(), self.version_files()), Some(why)))
            }
        }
    }

    /// `<stem>-v<N>.json` files in the registry folder, by version.
    fn version_files(&self) -> Vec<(u32, PathBuf)> {
        let prefix = format!("{}-v", self.stem);
        let mut v: Vec<(u32, PathBuf)> = fs::read_dir(&self.dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        let n = name.strip_prefix(&prefix)?.strip_suffix(".json")?;
                        if n.is_empty() || !n.bytes().all(|c| c.is_ascii_digit()) {
                            return None;
                        }
                        Some((n.parse().ok()?, e.path()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Highest version number a file on disk uses (0 when none).
    fn max_file_version(&self) -> u32 {
        self.version_files().last().map_or(0, |(n, _)| *n)
    }

    fn rebuild(&self, reason: String, files: Vec<(u32, PathBuf)>) -> Manifest {
        let mut versions = vec![];
        let mut unreadable = vec![];
        for (n, path) in files {
            let filename = path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            // Any family: a rebuilt manifest must not lose tree versions.
            match super::models::Model::load(&path) {
                Ok(model) => {
                    let created = fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
                    versions.push(VersionEntry {
                        version: n,
                        name: format!("v{n}"),
                        filename,
                        model_path: path.display().to_string(),
                        parent: None,
                        created,
                        status: "candidate".into(),
                        metrics: match &model.kind {
                            super::models::ModelKind::Linear(l) if model.metrics.is_null() => {
                                l.extra.get("metrics").cloned().unwrap_or(Value::Null)
                            }
                            _ => model.metrics.clone(),
                        },
                        base_metrics: Value::Null,
                        improvement: None,
                        accepted: None,
                        options: Value::Null,
                        data: Value::Null,
                        family: Some(model.family().name().to_string()),
                        hyperparameters: Value::Null,
                    });
                }
                Err(e) => unreadable.push(serde_json::json!({ "file": filename, "error": e })),
            }
        }
        let recovered = serde_json::json!({
            "time": now_ms(),
            "reason": reason,
            "versions": versions.iter().map(|v| v.version).collect::<Vec<_>>(),
            "unreadable": unreadable,
            "note": "rebuilt from the version files on disk; lineage, metrics and the production pointer could not be recovered (the base model serves until a version is promoted again)",
        });
        Manifest {
            format: FORMAT.into(),
            base_model: self.base_model.display().to_string(),
            versions,
            production_history: vec![],
            recovered: Some(recovered),
        }
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
            let (mut m, corrupt) = self.load()?;
            if corrupt.is_some() {
                // Keep the damaged file for whoever investigates; the rebuilt one replaces it.
                let aside = self
                    .dir
                    .join(format!("manifest.json.corrupt-{}", now_ms() as u64));
                let _ = fs::rename(self.manifest_path(), aside);
            }
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

    /// Above every version the manifest lists and every version file on disk.
    pub fn next_version(&self) -> Result<u32, String> {
        Ok(self
            .read()?
            .versions
            .iter()
            .map(|v| v.version)
            .max()
            .unwrap_or(0)
            .max(self.max_file_version())
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
            // Files count too: one written by a run killed before its manifest write, or
            // left when the manifest was lost, keeps its number.
            let version = m
                .versions
                .iter()
                .map(|v| v.version)
                .max()
                .unwrap_or(0)
                .max(self.max_file_version())
                + 1;
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

    /// What should serve for this base. `Ok(None)`: the base model file (nothing is in
    /// production). Otherwise the production version when its file is readable, else the
    /// newest readable version its gate did not refuse (`accepted ≠ false`); the notes say
    /// which versions were skipped and why. `Err` only when production is set and no
    /// version at all is readable (the caller then serves the base file).
    pub fn serving(&self) -> Result<Option<(VersionEntry, Vec<String>)>, String> {
        let m = self.read()?;
        let Some(&prod) = m.production_history.last() else {
            return Ok(None);
        };
        let mut notes = vec![];
        let mut order: Vec<&VersionEntry> =
            m.versions.iter().filter(|v| v.version == prod).collect();
        if order.is_empty() {
            notes.push(format!("production v{prod} is not in the manifest"));
        }
        let mut rest: Vec<&VersionEntry> = m
            .versions
            .iter()
            .filter(|v| v.version != prod && v.accepted != Some(false))
            .collect();
        rest.sort_by_key(|e| std::cmp::Reverse(e.version));
        order.extend(rest);
        for e in order {
            // Any family serves (tree versions included), so any family is readable here.
            match super::models::Model::load(Path::new(&e.model_path)) {
                Ok(_) => return Ok(Some((e.clone(), notes))),
                Err(err) => notes.push(format!("v{} is unreadable: {err}", e.version)),
            }
        }
        Err(notes.join("; "))
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

    // Issue 10 changed this: a corrupt manifest used to be an error for every later write;
    // now it is rebuilt from the version files, and numbers still never go back.
    #[test]
    fn a_corrupt_or_missing_manifest_is_rebuilt_and_numbers_continue() {
        let dir = tmp("corrupt");
        let r = Registry::new(&dir, Path::new("q.json"));
        for _ in 0..3 {
            r.register(&LinearModel::zeros(1), NewVersion::default())
                .unwrap();
        }
        r.promote(2).unwrap();
        fs::write(dir.join("q/q-v3.json"), "{\"weights\":").unwrap(); // unreadable v3
        fs::write(dir.join("q/manifest.json"), "{\"format\":").unwrap();
        let v4 = r
            .register(&LinearModel::zeros(1), NewVersion::default())
            .unwrap();
        assert_eq!(v4.version, 4, "continues above every file, readable or not");
        let m = r.read().unwrap();
        let rec = m.recovered.as_ref().expect("says it was rebuilt");
        assert!(rec["reason"].as_str().unwrap().contains("corrupt"));
        assert_eq!(rec["versions"], serde_json::json!([1, 2]));
        assert_eq!(rec["unreadable"][0]["file"], "q-v3.json");
        assert!(fs::read_dir(dir.join("q")).unwrap().flatten().any(|e| e
            .file_name()
            .to_string_lossy()
            .starts_with("manifest.json.corrupt-")));
        // Missing: the same, from the files alone.
        fs::remove_file(dir.join("q/manifest.json")).unwrap();
        assert_eq!(r.next_version().unwrap(), 5);
        let v5 = r
            .register(&LinearModel::zeros(1), NewVersion::default())
            .unwrap();
        assert_eq!(v5.version, 5);
        assert!(r.read().unwrap().recovered.unwrap()["reason"]
            .as_str()
            .unwrap()
            .contains("missing"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn serving_falls_back_to_the_newest_readable_version() {
        let dir = tmp("serving");
        let r = Registry::new(&dir, Path::new("q.json"));
        assert!(
            r.serving().unwrap().is_none(),
            "nothing promoted: the base serves"
        );
        for _ in 0..3 {
            r.register(&LinearModel::zeros(1), NewVersion::default())
                .unwrap();
        }
        r.register(
            &LinearModel::zeros(1),
            NewVersion {
                accepted: Some(false),
                ..Default::default()
            },
        )
        .unwrap();
        r.promote(3).unwrap();
        assert_eq!(r.serving().unwrap().unwrap().0.version, 3);
        fs::remove_file(dir.join("q/q-v3.json")).unwrap();
        let (e, notes) = r.serving().unwrap().unwrap();
        assert_eq!(e.version, 2, "v4 was refused by its gate, v3 is gone");
        assert!(notes[0].contains("v3 is unreadable"));
        for v in [1, 2, 4] {
            fs::write(dir.join(format!("q/q-v{v}.json")), "garbage").unwrap();
        }
        assert!(r.serving().is_err());
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
