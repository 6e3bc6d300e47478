//! napi binding of `core::finetune` and `core::registry`. The compat API (config object,
//! row conversion with per-row errors, `{success: false, error}` results, the small
//! metric helpers) is in `js/finetune.js`; everything here runs off the JS thread.

use super::plain;
use crate::core::finetune::{fine_tune, Candidate, EpochInfo, FineTuneOptions, Metrics, Optimizer};
use crate::core::fsutil::write_atomic;
use crate::core::models::{Family, Model, ModelKind, TreeParams};
use crate::core::registry::{stem_of, version_of, NewVersion, Registry, VersionEntry};
use crate::core::runtime;
use crate::core::store::pg_registry::PgRegistry;
use crate::core::store::postgres::PgOptions;
use crate::core::store::{connect_shared, existing_shared, redact_conn_str};
use napi::bindgen_prelude::*;
use napi::sys;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// A JSON result handed to JS as a plain object (serde_json has no `TypeName`).
pub struct Json(pub Value);

impl TypeName for Json {
    fn type_name() -> &'static str {
        "Object"
    }
    fn value_type() -> ValueType {
        ValueType::Object
    }
}

impl ToNapiValue for Json {
    unsafe fn to_napi_value(env: napi::sys::napi_env, val: Self) -> Result<napi::sys::napi_value> {
        unsafe { Value::to_napi_value(env, val.0) }
    }
}

fn to_json<T: serde::Serialize>(v: T) -> Result<Value> {
    serde_json::to_value(v).map_err(|e| plain(e.to_string()))
}

#[napi(object)]
pub struct FineTuneProgress {
    pub epoch: u32,
    pub epochs: u32,
    pub train_loss: f64,
    pub val_loss: f64,
}

/// Options after the JS layer merged `config` and per-run options and checked types.
#[napi(object)]
pub struct NativeFineTuneOptions {
    pub learning_rate: f64,
    pub batch_size: u32,
    pub epochs: u32,
    pub validation_split: f64,
    pub min_samples: u32,
    pub max_samples: u32,
    pub seed: f64,
    pub optimizer: String,
    pub l2: f64,
    /// Negative: no early stopping.
    pub patience: i32,
    pub min_improvement: f64,
    pub save: bool,
    /// Write a version even when the run returns the base unchanged.
    pub save_always: bool,
    pub promote: bool,
    pub test_split: f64,
    pub confidence: f64,
    /// `linear`, `gbm`, `random_forest`, `extra_trees`, `auto`; absent: the base's family.
    pub model: Option<String>,
    pub trees: Option<u32>,
    pub max_depth: Option<u32>,
    /// gbm shrinkage (only when the caller gave `learningRate` for this run).
    pub tree_learning_rate: Option<f64>,
    pub min_samples_leaf: Option<u32>,
    pub mtry: Option<u32>,
    pub subsample: Option<f64>,
    pub early_stopping_rounds: Option<u32>,
}

type ProgressFn = ThreadsafeFunction<FineTuneProgress, (), FineTuneProgress, Status, false, true>;

/// PostgreSQL options after the JS layer checked them.
#[napi(object)]
pub struct PgNativeOptions {
    pub schema: Option<String>,
    pub connect_timeout_ms: Option<f64>,
    pub statement_timeout_ms: Option<f64>,
    pub pool_size: Option<u32>,
}

pub fn pg_options(o: Option<PgNativeOptions>) -> PgOptions {
    let mut p = PgOptions::default();
    if let Some(o) = o {
        if let Some(s) = o.schema {
            p.schema = s;
        }
        if let Some(ms) = o.connect_timeout_ms {
            p.connect_timeout = std::time::Duration::from_secs_f64(ms.max(1.0) / 1000.0);
        }
        if let Some(ms) = o.statement_timeout_ms {
            p.statement_timeout = std::time::Duration::from_secs_f64(ms.max(0.0) / 1000.0);
        }
        if let Some(n) = o.pool_size {
            p.pool_size = n.clamp(1, 64) as usize;
        }
    }
    p
}

/// Where versions live: a folder of files, or PostgreSQL (models cached under the folder).
#[derive(Clone)]
pub struct RegistryTarget {
    dir: PathBuf,
    pg: Option<(String, PgOptions)>,
}

enum Reg {
    Files(Registry),
    Pg(PgRegistry),
}

impl Reg {
    fn open(t: &RegistryTarget, base: &Path) -> std::result::Result<Reg, String> {
        match &t.pg {
            None => Ok(Reg::Files(Registry::new(&t.dir, base))),
            Some((url, opts)) => {
                let store = connect_shared(url, opts.clone()).map_err(|e| e.message)?;
                Ok(Reg::Pg(PgRegistry::new(store, &t.dir, base)))
            }
        }
    }

    fn dir(&self) -> &Path {
        match self {
            Reg::Files(r) => &r.dir,
            Reg::Pg(r) => &r.dir,
        }
    }

    fn register_text(
        &self,
        body: &str,
        info: NewVersion,
    ) -> std::result::Result<VersionEntry, String> {
        match self {
            Reg::Files(r) => r.register_text(body, info),
            Reg::Pg(r) => r.register_text(body, info),
        }
    }

    fn promote(&self, v: u32) -> std::result::Result<VersionEntry, String> {
        match self {
            Reg::Files(r) => r.promote(v),
            Reg::Pg(r) => r.promote(v),
        }
    }

    fn rollback(&self) -> std::result::Result<Option<u32>, String> {
        match self {
            Reg::Files(r) => r.rollback(),
            Reg::Pg(r) => r.rollback(),
        }
    }

    fn production(&self) -> std::result::Result<Option<VersionEntry>, String> {
        match self {
            Reg::Files(r) => r.production(),
            Reg::Pg(r) => r.production(),
        }
    }

    fn history(&self) -> std::result::Result<Vec<VersionEntry>, String> {
        match self {
            Reg::Files(r) => r.history(),
            Reg::Pg(r) => r.history(),
        }
    }
}

#[napi(js_name = "ModelFineTuningCore")]
pub struct ModelFineTuningCore {
    target: RegistryTarget,
}

fn registry_for(t: &RegistryTarget, base: &Path) -> Result<Reg> {
    Reg::open(t, base).map_err(plain)
}

#[napi]
impl ModelFineTuningCore {
    /// `registry_url`: a postgres:// connection string (versions and the production
    /// pointer then live in PostgreSQL; `fine_tuned_dir` caches their model files).
    #[napi(constructor)]
    pub fn new(
        fine_tuned_dir: String,
        registry_url: Option<String>,
        pg: Option<PgNativeOptions>,
    ) -> Self {
        Self {
            target: RegistryTarget {
                dir: PathBuf::from(fine_tuned_dir),
                pg: registry_url.map(|u| (u, pg_options(pg))),
            },
        }
    }

    /// Connects to the PostgreSQL registry (creating its schema on first use) off the JS
    /// thread; resolves null when ready (or when the registry is a folder), else the
    /// reason, with the password replaced by `***`.
    #[napi(catch_unwind, ts_return_type = "Promise<string | null>")]
    pub fn connect(&self) -> AsyncTask<RegistryTask> {
        AsyncTask::new(RegistryTask {
            target: self.target.clone(),
            base: PathBuf::new(),
            op: Some(RegistryOp::Connect),
            out: Value::Null,
        })
    }

    /// The registry's connection string with its password replaced (null for a folder).
    #[napi(getter)]
    pub fn registry_url(&self) -> Option<String> {
        self.target.pg.as_ref().map(|(u, _)| redact_conn_str(u))
    }

    /// Trains on the runtime's blocking pool and resolves the result object as JSON text
    /// (rejects on failure, which the JS layer turns into `{success: false, error}`).
    ///
    /// Why not an `AsyncTask`: a linear fit is about a millisecond, and the libuv worker
    /// that would only wait for the runtime, plus the async task `block_on` needs, cost
    /// four thread wake-ups per run. Here the JS thread hands the job straight to the
    /// pool, and the pool settles the promise. Why text: `JSON.parse` builds the result's
    /// ~90 properties several times faster than setting them one by one through Node-API.
    #[napi(catch_unwind, ts_return_type = "Promise<string>")]
    pub fn fine_tune<'e>(
        &self,
        env: &'e Env,
        base_path: String,
        x: Float64Array,
        y: Float64Array,
        features: u32,
        options: NativeFineTuneOptions,
        #[napi(ts_arg_type = "((info: FineTuneProgress) => void) | undefined | null")] on_progress: Option<ProgressFn>,
    ) -> Result<Object<'e>> {
        let optimizer = match options.optimizer.as_str() {
            "sgd" => Optimizer::Sgd,
            "adam" => Optimizer::Adam,
            "ridge" => Optimizer::Ridge,
            o => return Err(plain(format!("unknown optimizer {o}"))),
        };
        let (family, auto) = match options.model.as_deref() {
            None => (None, false),
            Some("auto") => (None, true),
            Some(f) => match Family::parse(f) {
                Some(f) => (Some(f), false),
                None => return Err(plain(format!("unknown model family {f}"))),
            },
        };
        let tree = TreeParams {
            trees: options.trees.map(|v| v as usize),
            max_depth: options.max_depth.map(|v| v.min(64) as u16),
            learning_rate: options.tree_learning_rate,
            min_samples_leaf: options.min_samples_leaf.map(|v| v as usize),
            mtry: options.mtry.map(|v| v as usize),
            lambda: None,
            subsample: options.subsample,
            early_stopping_rounds: options.early_stopping_rounds.map(|v| v as usize),
            seed: options.seed as u64,
        };
        let opts = FineTuneOptions {
            learning_rate: options.learning_rate,
            batch_size: options.batch_size as usize,
            epochs: options.epochs as usize,
            validation_split: options.validation_split,
            min_samples: options.min_samples as usize,
            max_samples: options.max_samples as usize,
            seed: options.seed as u64,
            optimizer,
            l2: options.l2,
            patience: (options.patience >= 0).then_some(options.patience as usize),
            min_improvement: options.min_improvement,
            test_split: options.test_split,
            confidence: options.confidence,
            family,
            auto,
            tree,
            threads: crate::core::finetune::training_threads(),
        };
        let task = FineTuneTask {
            target: self.target.clone(),
            base: PathBuf::from(base_path),
            x,
            y,
            d: features as usize,
            opts,
            save: options.save,
            save_always: options.save_always,
            promote: options.promote,
            progress: on_progress,
            result: String::new(),
        };
        // Checked first, so that a runtime that cannot start throws here, on the JS thread,
        // with the arrays dropped where they belong.
        let rt = runtime::runtime().map_err(plain)?;
        let hold = EnvHold::new(env)?;
        let (deferred, promise) = match env.create_deferred::<String, _>() {
            Ok(d) => d,
            Err(e) => {
                hold.finish();
                hold.release(env);
                return Err(e);
            }
        };
        let job_hold = hold.clone();
        rt.spawn_blocking(move || {
            let mut task = task;
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task.run()));
            // The arrays are not read past this point: a worker being torn down may go on.
            job_hold.finish();
            // napi's Error holds raw handles and cannot cross threads: its status and text do.
            let out = match ran {
                Ok(Ok(())) => Ok(std::mem::take(&mut task.result)),
                Ok(Err(e)) => Err((e.status, e.reason.clone())),
                Err(_) => Err((
                    Status::GenericFailure,
                    "internal error: the training job panicked".to_string(),
                )),
            };
            // The resolver runs on the JS thread: the typed arrays (napi references) are
            // released there, and the promise settles with the text or the error.
            deferred.resolve(move |env| {
                hold.release(&env);
                drop(task);
                out.map_err(|(status, reason)| Error::new(status, reason))
            });
        });
        Ok(promise)
    }

    /// Synchronous, and on PostgreSQL it never waits for the database: it answers from
    /// the store's counter cache (filled by `connect()`, re-read every second in the
    /// background; see `PgStore::cached_next_version`).
    #[napi(catch_unwind)]
    pub fn next_version(&self, base_path: String) -> Result<u32> {
        let base = Path::new(&base_path);
        let Some((url, opts)) = &self.target.pg else {
            return Registry::new(&self.target.dir, base)
                .next_version()
                .map_err(plain);
        };
        let not_ready = || {
            plain(format!(
                "PostgreSQL registry {}: getNextVersion() answers without waiting for the database, so it needs initialize() to have resolved true first",
                redact_conn_str(url)
            ))
        };
        let store = existing_shared(url, &opts.schema).ok_or_else(not_ready)?;
        PgRegistry::new(store, &self.target.dir, base)
            .cached_next_version()
            .ok_or_else(not_ready)
    }

    #[napi(
        catch_unwind,
        ts_return_type = "Promise<Array<Record<string, unknown>>>"
    )]
    pub fn history(&self, base_path: String) -> AsyncTask<RegistryTask> {
        self.task(base_path, RegistryOp::History)
    }

    #[napi(catch_unwind, ts_return_type = "Promise<Record<string, unknown>>")]
    pub fn promote(&self, base_path: String, version: u32) -> AsyncTask<RegistryTask> {
        self.task(base_path, RegistryOp::Promote(version))
    }

    #[napi(catch_unwind, ts_return_type = "Promise<number | null>")]
    pub fn rollback(&self, base_path: String) -> AsyncTask<RegistryTask> {
        self.task(base_path, RegistryOp::Rollback)
    }

    #[napi(
        catch_unwind,
        ts_return_type = "Promise<Record<string, unknown> | null>"
    )]
    pub fn production(&self, base_path: String) -> AsyncTask<RegistryTask> {
        self.task(base_path, RegistryOp::Production)
    }

    /// Reads and checks a model file; resolves the parsed object (extra keys included).
    #[napi(catch_unwind, ts_return_type = "Promise<Record<string, unknown>>")]
    pub fn load_model(&self, path: String) -> AsyncTask<RegistryTask> {
        self.task(path, RegistryOp::Load)
    }

    /// Bench protocol: fits `family` on all rows with no early stopping; resolves
    /// `{ms, cpuMs, model}` (wall and thread CPU time, the envelope). Left out of the typings.
    #[napi(js_name = "_fitFamily", skip_typescript, catch_unwind)]
    pub fn fit_family(
        &self,
        family: String,
        x: Float64Array,
        y: Float64Array,
        features: u32,
        trees: u32,
        max_depth: Option<u32>,
        learning_rate: Option<f64>,
        seed: u32,
    ) -> Result<AsyncTask<FitTask>> {
        let family = Family::parse(&family)
            .filter(|f| *f != Family::Linear)
            .ok_or_else(|| plain(format!("unknown tree family {family}")))?;
        if features == 0 || x.len() != y.len() * features as usize {
            return Err(plain("x must hold y.length × features values"));
        }
        Ok(AsyncTask::new(FitTask {
            family,
            x,
            y,
            d: features as usize,
            params: TreeParams {
                trees: Some(trees as usize),
                max_depth: max_depth.map(|v| v.min(64) as u16),
                learning_rate,
                early_stopping_rounds: Some(0),
                seed: seed as u64,
                ..Default::default()
            },
            out: Value::Null,
        }))
    }

    /// `{family, features, featureNames}` of a model file of any family.
    #[napi(
        catch_unwind,
        ts_return_type = "Promise<{ family: string; features: number; featureNames: string[] | null }>"
    )]
    pub fn model_info(&self, path: String) -> AsyncTask<RegistryTask> {
        self.task(path, RegistryOp::Info)
    }

    /// Writes `model` as `<fineTunedDir>/<stem>/<stem>-<version>.json`, atomically.
    #[napi(catch_unwind, ts_return_type = "Promise<string>")]
    pub fn save_model(
        &self,
        model: Value,
        base_path: String,
        version: String,
    ) -> AsyncTask<RegistryTask> {
        self.task(base_path, RegistryOp::Save(model, version))
    }

    fn task(&self, base: String, op: RegistryOp) -> AsyncTask<RegistryTask> {
        AsyncTask::new(RegistryTask {
            target: self.target.clone(),
            base: PathBuf::from(base),
            op: Some(op),
            out: Value::Null,
        })
    }
}

/// Keeps a JS environment from being torn down while a job still reads memory it owns.
///
/// A fine-tune reads the caller's typed arrays on the runtime's pool. When the caller is a
/// worker thread that is terminated mid-run, Node disposes of the worker's isolate, and
/// with it those arrays' memory. An `AsyncTask` is safe from that because Node drains
/// libuv's pending work first; a job on our own pool is not, so it registers an env cleanup
/// hook that waits for the job to be done with the arrays (a fit is milliseconds; a large
/// tree fit can be seconds, as it was for the `AsyncTask`). A run that completes normally
/// removes its hook on the JS thread when it settles.
struct EnvHold {
    done: std::sync::Mutex<bool>,
    cv: std::sync::Condvar,
    /// Set on the JS thread when the hook ran (the environment is going away).
    hook_ran: std::sync::atomic::AtomicBool,
}

impl EnvHold {
    fn new(env: &Env) -> Result<std::sync::Arc<Self>> {
        let hold = std::sync::Arc::new(EnvHold {
            done: std::sync::Mutex::new(false),
            cv: std::sync::Condvar::new(),
            hook_ran: std::sync::atomic::AtomicBool::new(false),
        });
        // The hook owns one strong reference until it runs or is removed.
        let arg = std::sync::Arc::into_raw(hold.clone()) as *mut std::ffi::c_void;
        let status = unsafe { sys::napi_add_env_cleanup_hook(env.raw(), Some(Self::hook), arg) };
        if status != sys::Status::napi_ok {
            drop(unsafe { std::sync::Arc::from_raw(arg as *const EnvHold) });
            return Err(plain("cannot register the job with the JS environment"));
        }
        Ok(hold)
    }

    unsafe extern "C" fn hook(arg: *mut std::ffi::c_void) {
        let hold = unsafe { std::sync::Arc::from_raw(arg as *const EnvHold) };
        hold.hook_ran
            .store(true, std::sync::atomic::Ordering::Release);
        let mut done = hold.done.lock().unwrap_or_else(|e| e.into_inner());
        while !*done {
            done = hold.cv.wait(done).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Called by the job once it no longer reads the arrays.
    fn finish(&self) {
        *self.done.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cv.notify_all();
    }

    /// Called on the JS thread when the run settles: the hook is not needed any more.
    fn release(self: &std::sync::Arc<Self>, env: &Env) {
        if self.hook_ran.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let arg = std::sync::Arc::as_ptr(self) as *mut std::ffi::c_void;
        let status = unsafe { sys::napi_remove_env_cleanup_hook(env.raw(), Some(Self::hook), arg) };
        if status == sys::Status::napi_ok {
            drop(unsafe { std::sync::Arc::from_raw(arg as *const EnvHold) });
        }
    }
}

/// The result object of a fine-tune, serialised straight to text: building it as a
/// `serde_json::Value` first (a map per object, a copy per number) cost about 30 µs per run.
/// The keys and their order are the ones the result always had.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct RunResult<'a> {
    success: bool,
    base_model: String,
    family: &'static str,
    base_family: &'static str,
    metrics: Metrics,
    base_metrics: Metrics,
    improvement: f64,
    accepted: bool,
    reason: Option<&'static str>,
    statistic: f64,
    p_value: f64,
    confidence: f64,
    test: TestPart,
    validation: ValidationPart,
    candidates: &'a [Candidate],
    epochs: &'a [EpochInfo],
    best_epoch: usize,
    samples: Samples,
    data: DataPart<'a>,
    model: Value,
    saved: bool,
    model_path: Option<String>,
    version: Option<String>,
    version_number: Option<u32>,
    status: Option<String>,
    promoted: bool,
    /// Only on a saved run (`null` when the base was not a registry version).
    #[serde(skip_serializing_if = "Option::is_none")]
    parent: Option<Option<u32>>,
    duration_ms: f64,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct TestPart {
    metrics: Metrics,
    base_metrics: Metrics,
    rows: usize,
    statistic: f64,
    p_value: f64,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ValidationPart {
    metrics: Metrics,
    base_metrics: Metrics,
}

#[derive(serde::Serialize)]
struct Samples {
    total: usize,
    used: usize,
    train: usize,
    validation: usize,
    test: usize,
}

#[derive(serde::Serialize)]
struct DataPart<'a> {
    rows: usize,
    hash: &'a str,
}

pub struct FineTuneTask {
    target: RegistryTarget,
    base: PathBuf,
    x: Float64Array,
    y: Float64Array,
    d: usize,
    opts: FineTuneOptions,
    save: bool,
    save_always: bool,
    promote: bool,
    progress: Option<ProgressFn>,
    /// The result object as JSON text, once `run` succeeded.
    result: String,
}

fn options_json(o: &FineTuneOptions) -> Value {
    json!({
        "learningRate": o.learning_rate, "batchSize": o.batch_size, "epochs": o.epochs,
        "validationSplit": o.validation_split, "minSamples": o.min_samples, "maxSamples": o.max_samples,
        "seed": o.seed, "optimizer": format!("{:?}", o.optimizer).to_lowercase(), "l2": o.l2,
        "patience": o.patience, "minImprovement": o.min_improvement,
        "testSplit": o.test_split, "confidence": o.confidence,
        "model": if o.auto { "auto" } else { o.family.map_or("base", Family::name) },
    })
}

impl FineTuneTask {
    fn run(&mut self) -> Result<()> {
        let started = std::time::Instant::now();
        let base = Model::load(&self.base).map_err(|e| plain(format!("base model: {e}")))?;
        let progress = self.progress.take();
        let mut report = |e: EpochInfo| {
            if let Some(p) = &progress {
                p.call(
                    FineTuneProgress {
                        epoch: e.epoch as u32,
                        epochs: e.epochs as u32,
                        train_loss: e.train_loss,
                        val_loss: e.val_loss,
                    },
                    ThreadsafeFunctionCallMode::NonBlocking,
                );
            }
        };
        let out =
            fine_tune(&base, &self.x, &self.y, self.d, &self.opts, &mut report).map_err(plain)?;
        // JSON has no infinity: a test set where every row improved reports f64::MAX.
        let statistic = out.gate.statistic.clamp(-f64::MAX, f64::MAX);
        let family = out.model.family();
        let model = match &out.model.kind {
            ModelKind::Linear(m) => json!({"weights": m.weights, "bias": m.bias}),
            ModelKind::Trees(t) => {
                json!({"family": family.name(), "trees": t.trees.len(), "hyperparameters": t.hyperparameters})
            }
        };
        let mut result = RunResult {
            success: true,
            base_model: self.base.display().to_string(),
            family: family.name(),
            base_family: base.family().name(),
            metrics: out.metrics,
            base_metrics: out.base_metrics,
            improvement: out.improvement,
            accepted: out.accepted,
            reason: out.reason,
            statistic,
            p_value: out.gate.p_value,
            confidence: self.opts.confidence,
            test: TestPart {
                metrics: out.metrics,
                base_metrics: out.base_metrics,
                rows: out.test_rows,
                statistic,
                p_value: out.gate.p_value,
            },
            validation: ValidationPart {
                metrics: out.validation_metrics,
                base_metrics: out.base_validation_metrics,
            },
            candidates: &out.candidates,
            epochs: &out.epochs,
            best_epoch: out.best_epoch,
            samples: Samples {
                total: self.y.len(),
                used: out.rows_used,
                train: out.train_rows,
                validation: out.validation_rows,
                test: out.test_rows,
            },
            data: DataPart {
                rows: out.rows_used,
                hash: &out.data_hash,
            },
            model,
            saved: false,
            model_path: None,
            version: None,
            version_number: None,
            status: None,
            promoted: false,
            parent: None,
            duration_ms: 0.0,
        };
        if self.save && (!out.no_change || self.save_always) {
            let reg = registry_for(&self.target, &self.base)?;
            let entry = reg
                .register_text(
                    &out.model.to_json_pretty(),
                    NewVersion {
                        parent: version_of(&self.base).filter(|_| self.base.starts_with(reg.dir())),
                        metrics: to_json(out.metrics)?,
                        base_metrics: to_json(out.base_metrics)?,
                        improvement: Some(out.improvement),
                        accepted: Some(out.accepted),
                        options: options_json(&self.opts),
                        data: to_json(&result.data)?,
                        family: Some(family.name().into()),
                        hyperparameters: out.model.hyperparameters(),
                    },
                )
                .map_err(plain)?;
            let mut status = entry.status.clone();
            if self.promote && out.accepted {
                status = reg.promote(entry.version).map_err(plain)?.status;
                result.promoted = true;
            }
            result.saved = true;
            result.model_path = Some(entry.model_path);
            result.version = Some(entry.name);
            result.version_number = Some(entry.version);
            result.parent = Some(entry.parent);
            result.status = Some(status);
        }
        result.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        self.result = serde_json::to_string(&result).map_err(|e| plain(e.to_string()))?;
        Ok(())
    }
}

pub struct FitTask {
    family: Family,
    x: Float64Array,
    y: Float64Array,
    d: usize,
    params: TreeParams,
    out: Value,
}

impl Task for FitTask {
    type Output = ();
    type JsValue = Json;

    fn compute(&mut self) -> Result<()> {
        on_runtime(self, Self::run)
    }

    fn resolve(&mut self, env: Env, out: ()) -> Result<Json> {
        self.finish(env, out)
    }
}

impl FitTask {
    fn run(&mut self) -> Result<()> {
        let rows: Vec<usize> = (0..self.y.len()).collect();
        let c0 = thread_cpu_ms();
        let t0 = std::time::Instant::now();
        let t = crate::core::models::fit_trees(
            self.family,
            &self.x,
            &self.y,
            self.d,
            &rows,
            &[],
            &self.params,
        )
        .map_err(plain)?;
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        let cpu_ms = c0.zip(thread_cpu_ms()).map(|(a, b)| b - a);
        let m = Model {
            kind: ModelKind::Trees(t),
            features: None,
            metrics: Value::Null,
        };
        self.out = json!({"ms": ms, "cpuMs": cpu_ms, "model": m.to_value()});
        Ok(())
    }

    fn finish(&mut self, _env: Env, _: ()) -> Result<Json> {
        Ok(Json(std::mem::take(&mut self.out)))
    }
}

/// CPU time of the calling thread in ms, where the OS tells it (Linux): on a shared machine
/// the bench compares fits by CPU time, which other processes' load does not inflate.
fn thread_cpu_ms() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: f64 = s.split_whitespace().next()?.parse().ok()?;
    Some(ns / 1e6)
}

pub enum RegistryOp {
    Connect,
    History,
    Promote(u32),
    Rollback,
    Production,
    Load,
    Info,
    Save(Value, String),
}

pub struct RegistryTask {
    target: RegistryTarget,
    base: PathBuf,
    op: Option<RegistryOp>,
    out: Value,
}

impl Task for RegistryTask {
    type Output = ();
    type JsValue = Json;

    fn compute(&mut self) -> Result<()> {
        if let Some(RegistryOp::Connect) = self.op {
            self.op = None;
            self.out = match Reg::open(&self.target, Path::new("x.json")) {
                // Fills the counter cache getNextVersion() answers from.
                Ok(Reg::Pg(r)) => match r.store.cached_next_version("") {
                    Some(_) => Value::Null,
                    None => {
                        let store = r.store.clone();
                        match runtime::block_on(async move { store.refresh_next_versions().await })
                        {
                            Ok(Ok(())) => Value::Null,
                            Ok(Err(e)) => e.message.into(),
                            Err(e) => e.into(),
                        }
                    }
                },
                Ok(Reg::Files(_)) => Value::Null,
                Err(e) => e.into(),
            };
            return Ok(());
        }
        // Only the registry's own operations open it (on PostgreSQL: connect).
        let reg = match self.op {
            Some(
                RegistryOp::History
                | RegistryOp::Promote(_)
                | RegistryOp::Rollback
                | RegistryOp::Production,
            ) => Some(registry_for(&self.target, &self.base)?),
            _ => None,
        };
        let reg = || reg.as_ref().ok_or_else(|| plain("registry not open"));
        self.out = match self.op.take() {
            Some(RegistryOp::History) => to_json(reg()?.history().map_err(plain)?)?,
            Some(RegistryOp::Promote(v)) => to_json(reg()?.promote(v).map_err(plain)?)?,
            Some(RegistryOp::Rollback) => to_json(reg()?.rollback().map_err(plain)?)?,
            Some(RegistryOp::Production) => to_json(reg()?.production().map_err(plain)?)?,
            Some(RegistryOp::Load) => Model::load(&self.base).map_err(plain)?.to_value(),
            Some(RegistryOp::Info) => {
                let m = Model::load(&self.base).map_err(plain)?;
                json!({"family": m.family().name(), "features": m.n_features(), "featureNames": m.features})
            }
            Some(RegistryOp::Save(model, version)) => {
                let m = Model::from_value(model).map_err(|e| plain(format!("model: {e}")))?;
                if version.is_empty() || version.contains(['/', '\\']) || version.contains("..") {
                    return Err(plain(format!("version {version:?} is not a plain name")));
                }
                let stem = stem_of(&self.base);
                let path = self
                    .target
                    .dir
                    .join(&stem)
                    .join(format!("{stem}-{version}.json"));
                write_atomic(&path, m.to_json_pretty().as_bytes())
                    .map_err(|e| plain(format!("cannot write {}: {e}", path.display())))?;
                path.display().to_string().into()
            }
            Some(RegistryOp::Connect) | None => Value::Null,
        };
        Ok(())
    }

    fn resolve(&mut self, _env: Env, _: ()) -> Result<Json> {
        Ok(Json(std::mem::take(&mut self.out)))
    }
}

/// A loaded model of any family: `await Model.load(path)`, then `predict(features)` or
/// `predictBatch(Float64Array, rows)`. Prediction walks flat arrays (see `core::models`),
/// so one call costs a crossing plus the tree walk, not a JSON parse or an allocation.
#[napi(js_name = "Model")]
pub struct NativeModel {
    inner: Model,
}

pub struct LoadModelTask {
    path: PathBuf,
    out: Option<Model>,
}

impl Task for LoadModelTask {
    type Output = ();
    type JsValue = NativeModel;

    fn compute(&mut self) -> Result<()> {
        self.out = Some(Model::load(&self.path).map_err(plain)?);
        Ok(())
    }

    fn resolve(&mut self, _env: Env, _: ()) -> Result<NativeModel> {
        let inner = self
            .out
            .take()
            .ok_or_else(|| plain("model was not loaded"))?;
        Ok(NativeModel { inner })
    }
}

#[napi]
impl NativeModel {
    /// Reads a model file of any family off the JS thread: old `{weights, bias}` files, the
    /// services' nested linear shapes and `mlops-native/<family>@1` envelopes. Rejects with
    /// the file's name and what is wrong for anything else.
    #[napi(catch_unwind, ts_return_type = "Promise<Model>")]
    pub fn load(path: String) -> AsyncTask<LoadModelTask> {
        AsyncTask::new(LoadModelTask {
            path: PathBuf::from(path),
            out: None,
        })
    }

    /// Builds a model from the parsed content of a model file.
    #[napi(
        factory,
        js_name = "fromJSON",
        catch_unwind,
        ts_args_type = "json: Record<string, unknown>"
    )]
    pub fn from_json(env: Env, json: Value) -> Result<Self> {
        match Model::from_value(json) {
            Ok(inner) => Ok(Self { inner }),
            Err(e) => Err(super::range(&env, format!("json: {e}"))),
        }
    }

    /// `linear`, `gbm`, `random_forest` or `extra_trees`.
    #[napi(getter, ts_return_type = "ModelFamily")]
    pub fn family(&self) -> &'static str {
        self.inner.family().name()
    }

    /// Feature names (`x0…` when the file has none); the length is the feature count.
    #[napi(getter)]
    pub fn features(&self) -> Vec<String> {
        self.inner.feature_list()
    }

    /// One prediction; `features` (an array or a Float64Array) must have exactly
    /// `model.features.length` finite values.
    #[napi(catch_unwind)]
    pub fn predict(&self, env: Env, features: Either<Float64ArraySlice, Vec<f64>>) -> Result<f64> {
        let features: &[f64] = match &features {
            Either::A(t) => t,
            Either::B(v) => v,
        };
        let d = self.inner.n_features();
        if features.len() != d {
            return Err(super::range(
                &env,
                format!("features has {} values, the model has {d}", features.len()),
            ));
        }
        if let Some(j) = features.iter().position(|v| !v.is_finite()) {
            return Err(super::range(
                &env,
                format!("features[{j}] must be a finite number"),
            ));
        }
        Ok(self.inner.predict(features))
    }

    /// The JS layer's fast path for `predict`: a plain function `(model, features) → number`
    /// (see [`raw_predict`]). Left out of the typings.
    #[napi(js_name = "_predictFn", skip_typescript, catch_unwind)]
    pub fn predict_fn(env: Env) -> Result<Unknown<'static>> {
        let mut f = std::ptr::null_mut();
        let name = c"predict";
        // SAFETY: plain Node-API calls on the current env; the callback is a static fn.
        let status = unsafe {
            sys::napi_create_function(
                env.raw(),
                name.as_ptr(),
                7,
                Some(raw_predict),
                std::ptr::null_mut(),
                &mut f,
            )
        };
        if status != sys::Status::napi_ok {
            return Err(plain("cannot create the predict function"));
        }
        // SAFETY: `f` is a live function value of this env.
        Ok(unsafe { Unknown::from_raw_unchecked(env.raw(), f) })
    }

    /// Predictions for `rows` rows of row-major `x` (`rows × features` values).
    #[napi(catch_unwind)]
    pub fn predict_batch(&self, env: Env, x: Float64Array, rows: u32) -> Result<Float64Array> {
        let d = self.inner.n_features();
        let n = rows as usize;
        if x.len() != n * d {
            return Err(super::range(
                &env,
                format!(
                    "x has {} values, expected rows × features = {n} × {d}",
                    x.len()
                ),
            ));
        }
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(super::range(
                &env,
                format!(
                    "x[{i}] (row {}, feature {}) must be a finite number",
                    i / d,
                    i % d
                ),
            ));
        }
        let out: Vec<f64> = x
            .chunks_exact(d.max(1))
            .take(n)
            .map(|r| self.inner.predict(r))
            .collect();
        Ok(Float64Array::new(out))
    }

    /// The file body: `{weights, bias, …}` for linear models (in the file's own shape), the
    /// versioned envelope for tree families.
    #[napi(
        js_name = "toJSON",
        catch_unwind,
        ts_return_type = "Record<string, unknown>"
    )]
    pub fn to_json(&self) -> Json {
        Json(self.inner.to_value())
    }
}

/// `predict(model, features)` as a bare Node-API callback. napi-rs's generated method costs
/// more than 200 trees' walk (per call: a borrow registration in a global map behind a
/// mutex, a persistent reference to a typed-array argument, an `Either` that builds an error
/// string before accepting an array, a `Vec`): profiled at ~0.8 µs of CPU for a linear
/// model. This reads a Float64Array in place, an array into a stack buffer, and throws the
/// same TypeError/RangeError messages the JS layer and the method give.
unsafe extern "C" fn raw_predict(
    env: sys::napi_env,
    info: sys::napi_callback_info,
) -> sys::napi_value {
    // No panic may unwind into Node: a panic becomes a thrown Error.
    match std::panic::catch_unwind(|| unsafe { raw_predict_inner(env, info) }) {
        Ok(Ok(v)) => v,
        Ok(Err((kind, msg))) => {
            let msg = std::ffi::CString::new(msg).unwrap_or_default();
            // SAFETY: a plain throw on the calling env.
            unsafe {
                match kind {
                    super::Kind::Type => {
                        sys::napi_throw_type_error(env, std::ptr::null(), msg.as_ptr())
                    }
                    super::Kind::Range => {
                        sys::napi_throw_range_error(env, std::ptr::null(), msg.as_ptr())
                    }
                    super::Kind::Plain => {
                        sys::napi_throw_error(env, std::ptr::null(), msg.as_ptr())
                    }
                };
            }
            std::ptr::null_mut()
        }
        Err(_) => {
            // SAFETY: as above.
            unsafe { sys::napi_throw_error(env, std::ptr::null(), c"predict failed".as_ptr()) };
            std::ptr::null_mut()
        }
    }
}

const FEATURES_TYPE: &str = "features must be an array of numbers or a Float64Array";

unsafe fn raw_predict_inner(
    env: sys::napi_env,
    info: sys::napi_callback_info,
) -> std::result::Result<sys::napi_value, (super::Kind, String)> {
    use super::Kind;
    let ok = sys::Status::napi_ok;
    let mut argc = 2usize;
    let mut argv = [std::ptr::null_mut(); 2];
    // SAFETY (whole function): Node-API calls on the env and values of this callback.
    unsafe {
        if sys::napi_get_cb_info(
            env,
            info,
            &mut argc,
            argv.as_mut_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        ) != ok
            || argc < 2
        {
            return Err((Kind::Type, FEATURES_TYPE.into()));
        }
        // The model: a native Model, checked by its class type tag before the cast (the
        // check napi-rs makes for a `&self` receiver).
        let mut wrapped = std::ptr::null_mut();
        let mut tagged = false;
        if sys::napi_check_object_type_tag(env, argv[0], &NativeModel::type_tag(), &mut tagged)
            != ok
            || !tagged
            || sys::napi_unwrap(env, argv[0], &mut wrapped) != ok
            || wrapped.is_null()
        {
            return Err((Kind::Type, "model must be a native Model".into()));
        }
        // Shared access only: NativeModel has no `&mut self` method, and the object is
        // alive for the whole call (it is an argument).
        let model = &*(wrapped as *const NativeModel);
        let d = model.inner.n_features();
        let mut buf = [0.0f64; 64];
        let mut heap = Vec::new();
        let mut is_typed = false;
        let x: &[f64] = if sys::napi_is_typedarray(env, argv[1], &mut is_typed) == ok && is_typed {
            let (mut kind, mut len, mut data) = (0, 0usize, std::ptr::null_mut());
            let (mut ab, mut off) = (std::ptr::null_mut(), 0usize);
            if sys::napi_get_typedarray_info(
                env, argv[1], &mut kind, &mut len, &mut data, &mut ab, &mut off,
            ) != ok
                || kind != sys::TypedarrayType::float64_array
            {
                return Err((Kind::Type, FEATURES_TYPE.into()));
            }
            if len == 0 || data.is_null() {
                &[]
            } else {
                std::slice::from_raw_parts(data as *const f64, len)
            }
        } else {
            let mut is_array = false;
            let mut len = 0u32;
            if sys::napi_is_array(env, argv[1], &mut is_array) != ok
                || !is_array
                || sys::napi_get_array_length(env, argv[1], &mut len) != ok
            {
                return Err((Kind::Type, FEATURES_TYPE.into()));
            }
            let n = len as usize;
            if n != d {
                return Err((
                    Kind::Range,
                    format!("features has {n} values, the model has {d}"),
                ));
            }
            let out: &mut [f64] = if n <= buf.len() {
                &mut buf[..n]
            } else {
                heap.resize(n, 0.0);
                &mut heap
            };
            for (j, slot) in out.iter_mut().enumerate() {
                let mut v = std::ptr::null_mut();
                if sys::napi_get_element(env, argv[1], j as u32, &mut v) != ok
                    || sys::napi_get_value_double(env, v, slot) != ok
                {
                    return Err((Kind::Type, FEATURES_TYPE.into()));
                }
            }
            out
        };
        if x.len() != d {
            return Err((
                Kind::Range,
                format!("features has {} values, the model has {d}", x.len()),
            ));
        }
        if let Some(j) = x.iter().position(|v| !v.is_finite()) {
            return Err((
                Kind::Range,
                format!("features[{j}] must be a finite number"),
            ));
        }
        let p = model.inner.predict(x);
        let mut out = std::ptr::null_mut();
        if sys::napi_create_double(env, p, &mut out) != ok {
            return Err((Kind::Plain, "cannot return the prediction".into()));
        }
        Ok(out)
    }
}

/// Runs a training task's work under `spawn_blocking` on the addon's one tokio runtime,
/// the pool that also runs the streams' refits, rather than on libuv's pool (which stays
/// free for file I/O). The libuv thread napi gave the task waits for it.
fn on_runtime<T: 'static>(task: &mut T, run: fn(&mut T) -> Result<()>) -> Result<()> {
    struct Ptr<T>(*mut T);
    // SAFETY: the pointer is used only by the job below, and this function does not
    // return before that job has finished (the runtime is never shut down, so a started
    // blocking job always runs to its end; a panic in it ends it too).
    unsafe impl<T> Send for Ptr<T> {}
    impl<T> Ptr<T> {
        fn get(&self) -> *mut T {
            self.0
        }
    }
    let p = Ptr(task as *mut T);
    let job = move || {
        // napi's Error holds raw handles and cannot cross threads: its status and text do.
        run(unsafe { &mut *p.get() }).map_err(|e| (e.status, e.reason.clone()))
    };
    let handle = crate::core::runtime::spawn_long(job).map_err(plain)?;
    let joined = crate::core::runtime::block_on(handle).map_err(plain)?;
    match joined {
        Ok(Ok(())) => Ok(()),
        Ok(Err((status, reason))) => Err(Error::new(status, reason)),
        Err(e) if e.is_panic() => Err(plain("internal error: the training job panicked")),
        Err(_) => Err(plain("the training job was cancelled")),
    }
}
