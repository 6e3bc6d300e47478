//! The model registry on PostgreSQL, with the file registry's verbs and entries
//! (`core::registry::VersionEntry`), so `ModelFineTuning` works the same on either.
//!
//! The model key is the base model's stem (`quality-predictor-v3-advanced`), the same
//! lineage rule as the file registry. Models live in the `versions` table; each version a
//! caller sees is also written to a local cache file, `<cacheDir>/<stem>-v<N>.json`, so
//! `modelPath` / `getProductionModelPath()` name a real file as before. Versions never
//! change once written, so a cache file is rewritten only when its bytes differ (another
//! database behind the same folder).

use super::super::models::Model;
use super::super::registry::{stem_of, NewVersion, VersionEntry};
use super::super::runtime;
use super::postgres::{self as pg, PgStore, StoreError, VersionRow};
use std::path::{Path, PathBuf};

/// Temp file + rename, without the fsyncs of `write_atomic`: a reader never sees a torn
/// file, and the database is the durable copy (a cache file lost in a crash, or left
/// different, is rewritten the next time the version is read). Keeps a swap off the disk's
/// fsync latency.
fn write_cache(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

pub struct PgRegistry {
    pub store: PgStore,
    pub model_key: String,
    /// Where version files are cached (`<fineTunedDir>/.postgres/<schema>/<stem>`).
    pub dir: PathBuf,
    pub stem: String,
}

fn err(e: StoreError) -> String {
    e.message
}

impl PgRegistry {
    pub fn new(store: PgStore, fine_tuned_dir: &Path, base_model: &Path) -> Self {
        let stem = stem_of(base_model);
        Self {
            dir: fine_tuned_dir
                .join(".postgres")
                .join(store.schema())
                .join(&stem),
            model_key: stem.clone(),
            stem,
            store,
        }
    }

    fn path_of(&self, version: u32) -> PathBuf {
        self.dir.join(format!("{}-v{version}.json", self.stem))
    }

    /// The entry for `row`, writing its model to the cache when the row carries it.
    fn entry(&self, row: VersionRow) -> Result<VersionEntry, String> {
        let path = self.path_of(row.version);
        if let Some(model) = &row.model {
            let text = serde_json::to_string_pretty(model).map_err(|e| e.to_string())?;
            let same = std::fs::read(&path).is_ok_and(|b| b == text.as_bytes());
            if !same {
                write_cache(&path, text.as_bytes())
                    .map_err(|e| format!("cannot cache {}: {e}", path.display()))?;
            }
        }
        Ok(VersionEntry {
            version: row.version,
            name: format!("v{}", row.version),
            filename: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            model_path: path.display().to_string(),
            parent: row.parent,
            created: row.created_ms,
            status: row.status,
            metrics: row.metrics,
            base_metrics: row.base_metrics,
            improvement: row.improvement,
            accepted: row.accepted,
            options: row.options,
            data: row.data,
            family: Some(row.family),
            hyperparameters: row.hyperparameters,
        })
    }

    fn run<T: Send + 'static>(
        &self,
        f: impl std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, String> {
        runtime::block_on(f)?.map_err(err)
    }

    /// Records a model of any family, given as its file body (as `Registry::register_text`).
    pub fn register_text(&self, body: &str, info: NewVersion) -> Result<VersionEntry, String> {
        let model: serde_json::Value =
            serde_json::from_str(body).map_err(|e| format!("model: not valid JSON ({e})"))?;
        let store = self.store.clone();
        let key = self.model_key.clone();
        let nv = pg::NewVersion {
            family: info.family.unwrap_or_else(|| "linear".into()),
            hyperparameters: info.hyperparameters,
            parent: info.parent,
            metrics: info.metrics,
            base_metrics: info.base_metrics,
            improvement: info.improvement,
            accepted: info.accepted,
            options: info.options,
            data: info.data,
            model,
            created_by: Some(format!(
                "{}:{}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into()),
                std::process::id()
            )),
        };
        let row = self.run(async move { store.register(&key, nv).await })?;
        self.entry(row)
    }

    pub fn promote(&self, version: u32) -> Result<VersionEntry, String> {
        let store = self.store.clone();
        let key = self.model_key.clone();
        // Refuse a version whose model would not load, as the file registry does.
        let row = self.run(async move { store.version(&key, version).await })?;
        match row {
            None => return Err(format!("{} has no version {version}", self.stem)),
            Some(r) => {
                Model::from_value(r.model.unwrap_or_default())
                    .map_err(|e| format!("refusing to promote v{version}: {e}"))?;
            }
        }
        let store = self.store.clone();
        let key = self.model_key.clone();
        let row = self.run(async move { store.promote(&key, version).await })?;
        self.entry(row)
    }

    pub fn rollback(&self) -> Result<Option<u32>, String> {
        let store = self.store.clone();
        let key = self.model_key.clone();
        self.run(async move { store.rollback(&key).await })
    }

    pub fn production(&self) -> Result<Option<VersionEntry>, String> {
        let store = self.store.clone();
        let key = self.model_key.clone();
        self.run(async move { store.production(&key).await })?
            .map(|r| self.entry(r))
            .transpose()
    }

    /// Newest first; every listed model is cached so its `modelPath` can be opened.
    pub fn history(&self) -> Result<Vec<VersionEntry>, String> {
        let store = self.store.clone();
        let key = self.model_key.clone();
        self.run(async move { store.history(&key, true).await })?
            .into_iter()
            .map(|r| self.entry(r))
            .collect()
    }

    /// Never waits for the database: see [`PgStore::cached_next_version`]. `None` before
    /// the first read of the counters completed.
    pub fn cached_next_version(&self) -> Option<u32> {
        self.store.cached_next_version(&self.model_key)
    }

    pub fn next_version(&self) -> Result<u32, String> {
        let store = self.store.clone();
        let key = self.model_key.clone();
        self.run(async move { store.next_version(&key).await })
    }
}
