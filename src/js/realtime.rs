//! napi binding of `core::stream` (the streaming worker) and `core::online` (the online
//! learner). The compat API, Promise bookkeeping and events live in `js/realtime.js`;
//! here: starting the worker, the packed hot path, and notices back to JS through one
//! weak (unref'd) threadsafe function, so nothing here keeps the process alive.

use super::{plain, range};
use crate::core::linear::LinearModel;
use crate::core::online::{OnlineConfig, OnlineLinear, Optimizer};
use crate::core::stream::{
    Notifier, PgStreamConfig, Request, SendError, StreamConfig, StreamHandle,
};
use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A notice from the worker: `kind`, a number (`id`: request id or durable sequence
/// number) and a JSON payload.
#[napi(object)]
pub struct RealtimeNotice {
    pub kind: String,
    pub id: f64,
    pub payload: Option<String>,
}

type NoticeFn = ThreadsafeFunction<RealtimeNotice, (), RealtimeNotice, Status, false, true>;

struct TsfnNotifier(NoticeFn);

impl Notifier for TsfnNotifier {
    fn notify(&self, kind: &'static str, id: u64, payload: Value) {
        let payload = if payload.is_null() {
            None
        } else {
            Some(payload.to_string())
        };
        // NonBlocking: the worker must never wait on the JS thread. During process
        // teardown the call fails quietly, which is what we want then.
        let _ = self.0.call(
            RealtimeNotice {
                kind: kind.to_owned(),
                id: id as f64,
                payload,
            },
            ThreadsafeFunctionCallMode::NonBlocking,
        );
    }
}

/// Options after the JS layer applied defaults and checked types.
#[napi(object)]
pub struct RealtimeNativeConfig {
    pub buffer_size: u32,
    pub update_interval_ms: f64,
    pub min_samples_for_update: u32,
    pub max_samples_per_update: u32,
    pub update_threshold: f64,
    pub enable_hot_swap: bool,
    pub queue_capacity: u32,
    pub model_path: String,
    pub fine_tuned_dir: Option<String>,
    pub state_dir: String,
    pub feedback_log_dir: Option<String>,
    pub max_log_bytes: f64,
    pub keep_log_files: u32,
    pub fsync_interval_ms: f64,
    pub learning_rate: f64,
    pub timer_enabled: bool,
    /// postgres:// connection string: feedback, training lease and registry in PostgreSQL.
    pub store_url: Option<String>,
    pub pg: Option<super::finetune::PgNativeOptions>,
    pub lease_ms: Option<f64>,
    pub poll_ms: Option<f64>,
    pub train: Option<bool>,
    /// Spool folder while the database cannot take feedback.
    pub spool_dir: Option<String>,
    /// Where production models are cached as files.
    pub cache_dir: Option<String>,
    /// Worker threads of the addon's one runtime; only the first setting before the
    /// runtime starts counts.
    pub runtime_threads: Option<u32>,
    /// Tree families: refit after this many feedback events (0: never by count).
    pub refit_every: Option<f64>,
    /// Tree families: refit at least this often while feedback arrives (0: never by time).
    pub refit_interval_ms: Option<f64>,
    /// Tree families: the newest feedback events a refit trains on.
    pub refit_window: Option<f64>,
}

#[napi(js_name = "RealTimeModelUpdatesCore")]
pub struct RealTimeModelUpdatesCore {
    config: StreamConfig,
    handle: Arc<Mutex<Option<Arc<StreamHandle>>>>,
    io: Mutex<Option<Float64Array>>,
}

fn handle_of(h: &Mutex<Option<Arc<StreamHandle>>>) -> Option<Arc<StreamHandle>> {
    h.lock().clone()
}

#[napi]
impl RealTimeModelUpdatesCore {
    #[napi(constructor, catch_unwind)]
    pub fn new(env: Env, c: RealtimeNativeConfig) -> Result<Self> {
        let online = OnlineConfig {
            learning_rate: c.learning_rate,
            ..OnlineConfig::default()
        };
        online
            .validate()
            .map_err(|m| range(&env, format!("options.{m}")))?;
        if let Some(n) = c.runtime_threads {
            crate::core::runtime::set_worker_threads(n as usize)
                .map_err(|m| range(&env, format!("options.{m}")))?;
        }
        let d = StreamConfig::default();
        let config = StreamConfig {
            refit_every: c.refit_every.map_or(d.refit_every, |v| v.max(0.0) as usize),
            refit_interval_ms: c
                .refit_interval_ms
                .map_or(d.refit_interval_ms, |v| v.max(0.0) as u64),
            refit_window: c
                .refit_window
                .map_or(d.refit_window, |v| v.max(0.0) as usize),
            buffer_size: c.buffer_size.max(1) as usize,
            update_interval_ms: c.update_interval_ms.max(1.0) as u64,
            min_samples_for_update: c.min_samples_for_update as usize,
            max_samples_per_update: c.max_samples_per_update.max(2) as usize,
            update_threshold: c.update_threshold,
            enable_hot_swap: c.enable_hot_swap,
            queue_capacity: c.queue_capacity.max(1) as usize,
            model_path: PathBuf::from(c.model_path),
            fine_tuned_dir: c.fine_tuned_dir.map(PathBuf::from),
            state_dir: PathBuf::from(c.state_dir),
            log_dir: c.feedback_log_dir.map(PathBuf::from),
            max_log_bytes: c.max_log_bytes.max(1024.0) as u64,
            keep_log_files: c.keep_log_files.max(1) as usize,
            fsync_interval_ms: c.fsync_interval_ms.max(1.0) as u64,
            validation_fraction: 0.2,
            online,
            timer_enabled: c.timer_enabled,
            postgres: c.store_url.map(|url| PgStreamConfig {
                url,
                options: super::finetune::pg_options(c.pg),
                lease_ms: c.lease_ms.unwrap_or(5000.0).clamp(100.0, 3_600_000.0) as u64,
                poll_ms: c.poll_ms.unwrap_or(100.0).clamp(1.0, 60_000.0) as u64,
                spool_dir: PathBuf::from(c.spool_dir.unwrap_or_else(|| "feedback-log".into())),
                cache_dir: PathBuf::from(c.cache_dir.unwrap_or_else(|| "fine-tuned".into())),
                train: c.train.unwrap_or(true),
            }),
        };
        Ok(Self {
            config,
            handle: Arc::new(Mutex::new(None)),
            io: Mutex::new(None),
        })
    }

    /// Starts the worker; `notify` receives every notice. Registers an environment
    /// cleanup hook that shuts the worker down cleanly (log flushed) when Node exits.
    #[napi(
        js_name = "_start",
        skip_typescript,
        catch_unwind,
        ts_args_type = "notify: (notice: RealtimeNotice) => void"
    )]
    pub fn start(&self, env: Env, notify: NoticeFn, io: Float64Array) -> Result<bool> {
        let mut slot = self.handle.lock();
        if let Some(old) = slot.as_ref() {
            if !old.shared.closed.load(Ordering::Acquire) {
                return Ok(false);
            }
            // Restart after cleanup(): the old worker has released the log folder before it
            // replied to the shutdown; its thread is exiting.
            old.join();
        }
        let h = Arc::new(
            StreamHandle::start(self.config.clone(), Box::new(TsfnNotifier(notify)))
                .map_err(plain)?,
        );
        *slot = Some(h.clone());
        *self.io.lock() = Some(io);
        let _ = env.add_env_cleanup_hook(h, |h| {
            if h.request(0, Request::Shutdown).is_ok() {
                h.join();
            }
        });
        Ok(true)
    }

    /// Worker threads of the addon's runtime: the count it has, or will have when it starts.
    #[napi(js_name = "_runtimeThreads", skip_typescript)]
    pub fn runtime_threads(&self) -> u32 {
        crate::core::runtime::worker_threads() as u32
    }

    /// Hot path: the first `n` values of the registered buffer are the features.
    /// Returns the event's ticket (acknowledgements refer to it), -1 when the queue is
    /// full, -2 when closed.
    #[napi(js_name = "_push", skip_typescript)]
    pub fn push(&self, n: u32, prediction: f64, actual: f64) -> f64 {
        let Some(h) = handle_of(&self.handle) else {
            return -2.0;
        };
        let features = match self.io.lock().as_ref() {
            Some(io) if (n as usize) <= io.len() => io[..n as usize].to_vec(),
            _ => return -2.0,
        };
        match h.send_feedback(features, prediction, actual) {
            Ok(seq) => seq as f64,
            Err(SendError::Full) => -1.0,
            Err(SendError::Closed) => -2.0,
        }
    }

    #[napi(js_name = "_pushBatch", skip_typescript, catch_unwind)]
    pub fn push_batch(
        &self,
        env: Env,
        features: &[f64],
        predictions: &[f64],
        actuals: &[f64],
    ) -> Result<f64> {
        let n = actuals.len();
        if predictions.len() != n {
            return Err(range(
                &env,
                format!(
                    "predictions has {} values, actuals has {n}",
                    predictions.len()
                ),
            ));
        }
        if n == 0 {
            return Ok(0.0);
        }
        if features.len() % n != 0 {
            return Err(range(
                &env,
                format!(
                    "features has {} values, not a multiple of the {n} events",
                    features.len()
                ),
            ));
        }
        check_finite(&env, predictions, "predictions")?;
        check_finite(&env, actuals, "actuals")?;
        check_finite(&env, features, "features")?;
        let Some(h) = handle_of(&self.handle) else {
            return Ok(-2.0);
        };
        let d = features.len() / n;
        Ok(
            match h.send_batch(d, features.to_vec(), predictions.to_vec(), actuals.to_vec()) {
                Ok(seq) => seq as f64,
                Err(SendError::Full) => -1.0,
                Err(SendError::Closed) => -2.0,
            },
        )
    }

    /// kind: 0 update, 1 forced update, 2 hot swap (path), 3 rollback, 4 timer on,
    /// 5 timer off, 6 flush, 7 shutdown. The answer arrives as a "reply" notice.
    #[napi(js_name = "_request", skip_typescript, catch_unwind)]
    pub fn request(&self, kind: u32, id: f64, path: Option<String>) -> bool {
        let Some(h) = handle_of(&self.handle) else {
            return false;
        };
        let req = match kind {
            0 => Request::Update { force: false },
            1 => Request::Update { force: true },
            2 => Request::HotSwap(PathBuf::from(path.unwrap_or_default())),
            3 => Request::Rollback,
            4 => Request::SetTimer(true),
            5 => Request::SetTimer(false),
            6 => Request::Flush,
            _ => Request::Shutdown,
        };
        h.request(id as u64, req).is_ok()
    }

    /// Waits for the worker thread to finish after a shutdown (it has already answered).
    #[napi(js_name = "_join", skip_typescript)]
    pub fn join(&self) {
        if let Some(h) = self.handle.lock().take() {
            h.join();
        }
    }

    /// Predicts with the served model from the first `n` values of the registered
    /// buffer; NaN when no model serves or the feature count differs.
    #[napi(js_name = "_predict", skip_typescript)]
    pub fn predict(&self, n: u32) -> f64 {
        let Some(h) = handle_of(&self.handle) else {
            return f64::NAN;
        };
        match self.io.lock().as_ref() {
            Some(io) if (n as usize) <= io.len() => {
                h.predict(&io[..n as usize]).unwrap_or(f64::NAN)
            }
            _ => f64::NAN,
        }
    }

    #[napi(js_name = "_modelInfo", skip_typescript)]
    pub fn model_info(&self) -> Vec<f64> {
        match handle_of(&self.handle) {
            Some(h) => {
                let s = h.shared.current.load();
                vec![s.version as f64, s.weights.len() as f64]
            }
            None => vec![0.0, 0.0],
        }
    }

    /// The serving model's feature names (its file's `featureNames`), or null.
    #[napi(js_name = "_featureNames", skip_typescript)]
    pub fn feature_names(&self) -> Option<Vec<String>> {
        let h = handle_of(&self.handle)?;
        let s = h.shared.current.load();
        s.feature_names.as_ref().map(|n| n.as_ref().clone())
    }

    #[napi(js_name = "_stats", skip_typescript, catch_unwind)]
    pub fn stats(&self) -> Value {
        let Some(h) = handle_of(&self.handle) else {
            return Value::Null;
        };
        let s = &h.shared;
        let c = &s.counters;
        let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Acquire);
        let accepted = l(&c.accepted);
        let dequeued = l(&c.dequeued);
        let snap = s.current.load();
        json!({
            "family": snap.family().name(),
            "refits": l(&c.refits),
            "refitsAccepted": l(&c.refits_accepted),
            "refitsRejected": l(&c.refits_rejected),
            "refitting": s.refitting.load(Ordering::Acquire),
            "bufferSize": l(&c.buffered),
            "isUpdating": s.is_updating.load(Ordering::Acquire),
            "lastUpdateTime": if l(&c.last_update_time) == 0 { Value::Null } else { json!(l(&c.last_update_time)) },
            // Accepted updates only, as the old module counted; rejections: updatesRejected.
            "updateCount": l(&c.updates_accepted),
            "updateCycles": l(&c.updates),
            "recentUpdates": s.recent_updates.lock().iter().cloned().collect::<Vec<_>>(),
            "received": l(&c.received),
            "accepted": accepted,
            "rejected": { "closed": l(&c.rejected_closed) },
            "dropped": l(&c.dropped),
            "processed": l(&c.processed),
            "queueDepth": accepted.saturating_sub(dequeued),
            "modelVersion": snap.version,
            "swaps": l(&c.swaps),
            "rollbacks": l(&c.rollbacks),
            "drifts": l(&c.drifts),
            "replayed": l(&c.replayed),
            "updatesAccepted": l(&c.updates_accepted),
            "updatesRejected": l(&c.updates_rejected),
            "durableSeq": l(&c.durable_seq),
            "durableTicket": l(&c.durable_ticket),
            "logHealthy": s.log_healthy.load(Ordering::Acquire),
            "corruptLogRecords": l(&c.corrupt_log_records),
            "corruptLogLines": l(&c.corrupt_log_records),
            "tornLogRecords": l(&c.torn_log_records),
            "logFailed": l(&c.log_failed),
            "lastError": s.last_error.lock().clone(),
            "postgres": s.pg_stats.lock().clone(),
            "currentModelPath": s.current_path.lock().clone(),
        })
    }
}

#[napi(object)]
#[derive(Default)]
pub struct OnlineLinearModelOptions {
    /// Feature count; taken from the first sample when not given.
    pub features: Option<u32>,
    /// AdaGrad: base step size in normalised units (default 0.1).
    pub learning_rate: Option<f64>,
    /// Errors are clipped to ±clip times their running scale (default 3).
    pub clip: Option<f64>,
    /// AdaGrad: L2 shrinkage (default 0).
    pub l2: Option<f64>,
    /// `'auto'` (default: RLS up to 48 features, AdaGrad above), `'rls'` or `'adagrad'`.
    #[napi(ts_type = "'auto' | 'rls' | 'adagrad'")]
    pub optimizer: Option<String>,
    /// RLS forgetting factor in [0.5, 1]; without it a bank of λ ∈ {0.95, 0.99, 1}
    /// is mixed by recent prequential error.
    pub forgetting: Option<f64>,
}

/// Online linear regression on raw features of any scale. Default: recursive least squares
/// with exponential forgetting, the forgetting chosen by a bank mixed on recent
/// prequential error, and a bounded covariance (no wind-up); `optimizer: 'adagrad'` (and
/// `'auto'` above 48 features) takes normalised AdaGrad steps instead. Weights stay in raw
/// units, so `toModel()` is a plain `{weights, bias}` file.
#[napi]
pub struct OnlineLinearModel {
    config: OnlineConfig,
    inner: Option<OnlineLinear>,
}

impl OnlineLinearModel {
    fn model_for(&mut self, env: &Env, d: usize) -> Result<&mut OnlineLinear> {
        let inner = self
            .inner
            .get_or_insert_with(|| OnlineLinear::new(d, self.config.clone()));
        if inner.features() != d {
            return Err(range(
                env,
                format!(
                    "features has {d} values, the model has {}",
                    inner.features()
                ),
            ));
        }
        Ok(inner)
    }
}

/// Values an OnlineLinearModel can learn from (finite, within ±1e100).
fn check_learnable(env: &Env, x: &[f64], field: &str) -> Result<()> {
    check_finite(env, x, field)?;
    match x
        .iter()
        .position(|v| v.abs() > crate::core::online::MAX_MAGNITUDE)
    {
        Some(i) => Err(range(env, format!("{field}[{i}] must be within ±1e100"))),
        None => Ok(()),
    }
}

fn check_finite(env: &Env, x: &[f64], field: &str) -> Result<()> {
    // Branch-free pass first: `v − v` is 0 for finite v and NaN otherwise; eight
    // independent lanes keep it vectorised. The position is only searched on failure.
    let mut lanes = [0.0f64; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            lanes[k] += c[k] - c[k];
        }
    }
    let tail: f64 = rest.iter().map(|v| v - v).sum();
    if lanes.iter().sum::<f64>() + tail == 0.0 {
        return Ok(());
    }
    match x.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(range(env, format!("{field}[{i}] must be a finite number"))),
        None => Ok(()),
    }
}

#[napi]
impl OnlineLinearModel {
    #[napi(constructor, catch_unwind)]
    pub fn new(env: Env, options: Option<OnlineLinearModelOptions>) -> Result<Self> {
        let o = options.unwrap_or_default();
        let d = OnlineConfig::default();
        let config = OnlineConfig {
            learning_rate: o.learning_rate.unwrap_or(d.learning_rate),
            clip: o.clip.unwrap_or(d.clip),
            l2: o.l2.unwrap_or(d.l2),
            optimizer: match o.optimizer.as_deref() {
                None => d.optimizer,
                Some(s) => Optimizer::parse(s).map_err(|m| range(&env, format!("options.{m}")))?,
            },
            forgetting: o.forgetting,
        };
        config
            .validate()
            .map_err(|m| range(&env, format!("options.{m}")))?;
        let inner = o
            .features
            .filter(|&f| f > 0)
            .map(|f| OnlineLinear::new(f as usize, config.clone()));
        Ok(Self { config, inner })
    }

    /// Feature count (0 until the first sample when not given).
    #[napi(getter)]
    pub fn features(&self) -> u32 {
        self.inner.as_ref().map_or(0, |m| m.features() as u32)
    }

    /// Samples learned so far.
    #[napi(getter)]
    pub fn samples(&self) -> f64 {
        self.inner.as_ref().map_or(0.0, |m| m.n as f64)
    }

    /// The optimiser in use: `'rls'` or `'adagrad'` (what `'auto'` resolved to once the
    /// feature count is known; until then the configured one).
    #[napi(getter, ts_return_type = "'auto' | 'rls' | 'adagrad'")]
    pub fn optimizer(&self) -> String {
        let o = match &self.inner {
            Some(m) => m.optimizer(),
            None => self.config.optimizer,
        };
        match o {
            Optimizer::Auto => "auto",
            Optimizer::Rls => "rls",
            Optimizer::Adagrad => "adagrad",
        }
        .into()
    }

    /// RLS: each forgetting factor of the bank with its current mixing weight (one entry
    /// when `forgetting` is fixed; empty for AdaGrad or before the first sample).
    #[napi(
        catch_unwind,
        ts_return_type = "Array<{ forgetting: number; weight: number }>"
    )]
    pub fn bank(&self) -> Value {
        let b = self.inner.as_ref().map(|m| m.bank()).unwrap_or_default();
        Value::Array(
            b.into_iter()
                .map(|(l, w)| json!({ "forgetting": l, "weight": w }))
                .collect(),
        )
    }

    /// Learns one sample; returns the prediction made before learning it.
    #[napi(
        catch_unwind,
        ts_args_type = "features: Float64Array | number[], target: number"
    )]
    pub fn learn_one(&mut self, env: Env, features: &[f64], target: f64) -> Result<f64> {
        if features.is_empty() {
            return Err(range(&env, "features must not be empty".into()));
        }
        check_learnable(&env, features, "features")?;
        if !(target.is_finite() && target.abs() <= crate::core::online::MAX_MAGNITUDE) {
            return Err(range(
                &env,
                "target must be a finite number within ±1e100".into(),
            ));
        }
        Ok(self
            .model_for(&env, features.len())?
            .learn(features, target))
    }

    #[napi(catch_unwind, ts_args_type = "features: Float64Array | number[]")]
    pub fn predict_one(&mut self, env: Env, features: &[f64]) -> Result<f64> {
        check_finite(&env, features, "features")?;
        let d = self.features() as usize;
        if d == 0 {
            return Ok(0.0);
        }
        if features.len() != d {
            return Err(range(
                &env,
                format!("features has {} values, the model has {d}", features.len()),
            ));
        }
        Ok(self.inner.as_ref().map_or(0.0, |m| m.predict(features)))
    }

    /// Learns rows of row-major `X` (`y.length × features`) in order.
    #[napi(catch_unwind)]
    pub fn learn_batch(&mut self, env: Env, x: &[f64], y: &[f64]) -> Result<u32> {
        if y.is_empty() {
            return Ok(0);
        }
        if x.len() % y.len() != 0 || x.is_empty() {
            return Err(range(
                &env,
                format!(
                    "X has {} values, not a multiple of the {} targets",
                    x.len(),
                    y.len()
                ),
            ));
        }
        check_learnable(&env, x, "X")?;
        check_learnable(&env, y, "y")?;
        let d = x.len() / y.len();
        let m = self.model_for(&env, d)?;
        for (row, t) in x.chunks_exact(d).zip(y) {
            m.learn(row, *t);
        }
        Ok(y.len() as u32)
    }

    #[napi(catch_unwind)]
    pub fn predict_batch(&self, env: Env, x: &[f64]) -> Result<Float64Array> {
        check_finite(&env, x, "X")?;
        let Some(m) = &self.inner else {
            return Err(range(
                &env,
                "the model has no features yet: learn a sample first".into(),
            ));
        };
        let d = m.features();
        if x.len() % d != 0 {
            return Err(range(
                &env,
                format!("X has {} values, not a multiple of {d} features", x.len()),
            ));
        }
        Ok(Float64Array::new(
            x.chunks_exact(d).map(|r| m.predict(r)).collect(),
        ))
    }

    /// The whole state, optimiser included: `fromJSON` continues exactly where it stopped.
    #[napi(
        js_name = "toJSON",
        catch_unwind,
        ts_return_type = "Record<string, unknown>"
    )]
    pub fn to_json(&self) -> Result<Value> {
        Ok(json!({
            "format": "mlops-native/online-linear@1",
            "config": serde_json::to_value(&self.config).map_err(|e| plain(e.to_string()))?,
            "state": serde_json::to_value(&self.inner).map_err(|e| plain(e.to_string()))?,
        }))
    }

    #[napi(
        factory,
        js_name = "fromJSON",
        catch_unwind,
        ts_args_type = "json: Record<string, unknown>"
    )]
    pub fn from_json(env: Env, json: Value) -> Result<Self> {
        if json.get("format").and_then(|f| f.as_str()) != Some("mlops-native/online-linear@1") {
            return Err(range(
                &env,
                "json is not an OnlineLinearModel state (format field missing or different)".into(),
            ));
        }
        let config: OnlineConfig = serde_json::from_value(json["config"].clone())
            .map_err(|e| range(&env, format!("json.config: {e}")))?;
        config
            .validate()
            .map_err(|m| range(&env, format!("json.config.{m}")))?;
        let inner: Option<OnlineLinear> = serde_json::from_value(json["state"].clone())
            .map_err(|e| range(&env, format!("json.state: {e}")))?;
        if let Some(m) = &inner {
            m.check()
                .map_err(|m| range(&env, format!("json.state: {m}")))?;
        }
        Ok(Self { config, inner })
    }

    /// ns per `learnOne` in Rust alone (no JS crossing), on synthetic data: the figure
    /// `npm run bench` reports for the learner itself.
    #[napi(js_name = "_benchLearnOne", skip_typescript)]
    pub fn bench_learn_one(features: u32, iterations: u32, optimizer: Option<String>) -> f64 {
        let d = features.clamp(1, 1024) as usize;
        let n = iterations.max(1) as usize;
        let mut rng = crate::core::finetune::SplitMix(1);
        let rows: Vec<f64> = (0..1024 * d)
            .map(|_| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 100.0)
            .collect();
        let ys: Vec<f64> = (0..1024)
            .map(|i| rows[i * d..(i + 1) * d].iter().sum::<f64>())
            .collect();
        let config = OnlineConfig {
            optimizer: optimizer
                .as_deref()
                .and_then(|s| Optimizer::parse(s).ok())
                .unwrap_or_default(),
            ..OnlineConfig::default()
        };
        let mut m = OnlineLinear::new(d, config);
        let t = std::time::Instant::now();
        let mut acc = 0.0;
        for i in 0..n {
            let r = i & 1023;
            acc += m.learn(&rows[r * d..(r + 1) * d], ys[r]);
        }
        let ns = t.elapsed().as_nanos() as f64 / n as f64;
        std::hint::black_box(acc);
        ns
    }

    /// The model as an old-format `{weights, bias}` object (what `hotSwapModel` loads).
    #[napi(catch_unwind, ts_return_type = "{ weights: number[]; bias: number }")]
    pub fn to_model(&self) -> Value {
        let (weights, bias) = self.inner.as_ref().map_or((vec![], 0.0), |m| m.to_raw());
        json!({ "weights": weights, "bias": bias })
    }

    /// Starts from an old-format `{weights, bias}` model (same predictions, fresh optimiser).
    #[napi(
        factory,
        catch_unwind,
        ts_args_type = "model: { weights: number[]; bias: number }, options?: OnlineLinearModelOptions"
    )]
    pub fn from_model(
        env: Env,
        model: Value,
        options: Option<OnlineLinearModelOptions>,
    ) -> Result<Self> {
        let m = LinearModel::from_value(model).map_err(|e| range(&env, format!("model: {e}")))?;
        let mut s = Self::new(env, options)?;
        s.inner = Some(OnlineLinear::from_model(&m, s.config.clone()));
        Ok(s)
    }
}
