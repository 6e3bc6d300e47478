//! Streaming feedback → online learning → validated hot-swap, with a durable feedback log.
//!
//! One worker thread owns everything that learns or touches disk; callers talk to it over
//! a bounded channel (full ⇒ the event is refused and counted, never unbounded memory)
//! and read the served model through an `ArcSwap`, so a prediction never waits for
//! learning and never sees a half-updated model.
//!
//! The worker drains the channel in groups: every feedback of a group is appended to the
//! log in one write (so many concurrent `addFeedback` awaits share one syscall), then the
//! group's highest sequence number is reported as durable. The log is fsynced on a short
//! interval. A watermark file records which sequence numbers update cycles have consumed;
//! on start, logged feedback above it is replayed into the buffer.
//!
//! Update cycle: candidate = current learner + the older part of the buffer; current and
//! candidate are scored on the newest part, which neither has seen; the candidate is
//! published when its relative MSE improvement reaches the threshold.

use super::fsutil::{read_text, write_atomic};
use super::linear::LinearModel;
use super::drift::PageHinkley;
use super::online::{OnlineConfig, OnlineLinear};
use super::registry::Registry;
use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct StreamConfig {
    pub buffer_size: usize,
    pub update_interval_ms: u64,
    pub min_samples_for_update: usize,
    pub max_samples_per_update: usize,
    pub update_threshold: f64,
    pub enable_hot_swap: bool,
    pub queue_capacity: usize,
    /// The model served at start (when the registry has no production version).
    pub model_path: PathBuf,
    /// Registry folder (`<modelsDir>/fine-tuned`) to follow production promotions.
    pub fine_tuned_dir: Option<PathBuf>,
    /// Where the online learner's state is kept between runs.
    pub state_dir: PathBuf,
    /// Feedback log folder; None disables the log.
    pub log_dir: Option<PathBuf>,
    pub max_log_bytes: u64,
    pub keep_log_files: usize,
    pub fsync_interval_ms: u64,
    pub validation_fraction: f64,
    pub online: OnlineConfig,
    pub timer_enabled: bool,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            buffer_size: 100,
            update_interval_ms: 60_000,
            min_samples_for_update: 50,
            max_samples_per_update: 500,
            update_threshold: 0.05,
            enable_hot_swap: true,
            queue_capacity: 10_000,
            model_path: PathBuf::from("models/quality-predictor-v3-advanced.json"),
            fine_tuned_dir: None,
            state_dir: PathBuf::from("models/online"),
            log_dir: Some(PathBuf::from("models/feedback-log")),
            max_log_bytes: 16 << 20,
            keep_log_files: 8,
            fsync_interval_ms: 100,
            validation_fraction: 0.2,
            online: OnlineConfig::default(),
            timer_enabled: true,
        }
    }
}

/// What serves predictions. Immutable once published.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub weights: Vec<f64>,
    pub bias: f64,
    pub version: u64,
    pub source: String,
}

impl Snapshot {
    pub fn predict(&self, x: &[f64]) -> Option<f64> {
        if x.len() != self.weights.len() || self.weights.is_empty() {
            return None;
        }
        Some(self.bias + self.weights.iter().zip(x).map(|(w, v)| w * v).sum::<f64>())
    }
}

/// Counters readable from any thread. `accepted = processed + buffered + queued` holds
/// whenever the worker is between groups.
#[derive(Default)]
pub struct Counters {
    pub received: AtomicU64,
    pub accepted: AtomicU64,
    pub rejected_invalid: AtomicU64,
    pub rejected_closed: AtomicU64,
    pub dropped: AtomicU64,
    pub dequeued: AtomicU64,
    pub processed: AtomicU64,
    pub buffered: AtomicU64,
    pub swaps: AtomicU64,
    pub rollbacks: AtomicU64,
    pub drifts: AtomicU64,
    pub replayed: AtomicU64,
    pub updates: AtomicU64,
    pub updates_accepted: AtomicU64,
    pub updates_rejected: AtomicU64,
    pub durable_seq: AtomicU64,
    pub last_update_time: AtomicU64,
    pub corrupt_log_lines: AtomicU64,
}

pub struct Shared {
    pub current: ArcSwap<Snapshot>,
    pub counters: Counters,
    pub next_seq: AtomicU64,
    pub is_updating: AtomicBool,
    pub closed: AtomicBool,
    pub last_error: Mutex<Option<String>>,
    pub recent_updates: Mutex<VecDeque<Value>>,
    pub current_path: Mutex<String>,
}

/// Worker → caller notifications (the napi layer forwards them to JS).
pub trait Notifier: Send + 'static {
    /// `kind`: "durable" (id = highest durable seq), "reply" (id = request id, payload =
    /// result JSON or `{"error": …}`), "update", "rejected", "drift", "error", "ready".
    fn notify(&self, kind: &'static str, id: u64, payload: Value);
}

pub enum Request {
    /// Run an update cycle now (force: even below `minSamplesForUpdate`).
    Update {
        force: bool,
    },
    HotSwap(PathBuf),
    Rollback,
    SetTimer(bool),
    /// Make everything logged durable (fsync) and write the watermark.
    Flush,
    Shutdown,
    /// Test only: makes the worker panic, to check that callers are released.
    #[cfg(test)]
    Panic,
}

enum Msg {
    Feedback {
        seq: u64,
        features: Vec<f64>,
        prediction: f64,
        actual: f64,
    },
    Batch {
        first_seq: u64,
        d: usize,
        x: Vec<f64>,
        predictions: Vec<f64>,
        actuals: Vec<f64>,
    },
    Request {
        id: u64,
        req: Request,
    },
}

impl Msg {
    /// Every feedback event the message carries, as (seq, features, prediction, actual):
    /// one for a `Feedback`, one per row for a `Batch`, none for a request.
    fn for_each_event(&self, mut f: impl FnMut(u64, &[f64], f64, f64)) {
        match self {
            Msg::Feedback {
                seq,
                features,
                prediction,
                actual,
            } => f(*seq, features, *prediction, *actual),
            Msg::Batch {
                first_seq,
                d,
                x,
                predictions,
                actuals,
            } => {
                for i in 0..actuals.len() {
                    f(
                        first_seq + i as u64,
                        &x[i * d..(i + 1) * d],
                        predictions[i],
                        actuals[i],
                    );
                }
            }
            Msg::Request { .. } => {}
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    Full,
    Closed,
}

pub struct StreamHandle {
    tx: SyncSender<Msg>,
    /// Capacity in events (the channel bounds messages; a batch is one message).
    capacity: u64,
    pub shared: Arc<Shared>,
    join: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Watermark {
    processed_seq: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OnlineState {
    format: String,
    /// The model file this learner started from (resumed only while it still serves).
    base: String,
    version: u64,
    learner: OnlineLinear,
}

/// A log line borrowed from a queued event: serialised without copying its features.
#[derive(Serialize)]
struct LogLineRef<'a> {
    seq: u64,
    t: f64,
    features: &'a [f64],
    prediction: f64,
    actual: f64,
}

fn push_line(out: &mut Vec<u8>, l: &LogLineRef) {
    if serde_json::to_writer(&mut *out, l).is_ok() {
        out.push(b'\n');
    }
}

#[derive(Serialize, Deserialize)]
struct LogLine {
    seq: u64,
    t: f64,
    features: Vec<f64>,
    prediction: f64,
    actual: f64,
}

fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

impl StreamHandle {
    /// Starts the worker. Loading the model, the saved learner and the log replay happen
    /// on the worker; "ready" is notified when it serves.
    pub fn start(config: StreamConfig, notifier: Box<dyn Notifier + Sync>) -> Result<Self, String> {
        let capacity = config.queue_capacity.max(1) as u64;
        let (tx, rx) = sync_channel(config.queue_capacity.max(1));
        let shared = Arc::new(Shared {
            current: ArcSwap::from_pointee(Snapshot {
                weights: vec![],
                bias: 0.0,
                version: 0,
                source: String::new(),
            }),
            counters: Counters::default(),
            next_seq: AtomicU64::new(1),
            is_updating: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            last_error: Mutex::new(None),
            recent_updates: Mutex::new(VecDeque::new()),
            current_path: Mutex::new(config.model_path.display().to_string()),
        });
        // Sequence numbers continue after what the log already holds, before any new
        // feedback can be numbered.
        if let Some(dir) = &config.log_dir {
            let (max, _) = scan_log(dir, 0, &mut |_| {});
            shared.next_seq.store(max + 1, Ordering::SeqCst);
        }
        let worker_shared = shared.clone();
        let notifier: Arc<dyn Notifier + Sync> = Arc::from(notifier);
        let join = std::thread::Builder::new()
            .name("mlops-realtime".into())
            .spawn(move || {
                let fatal = notifier.clone();
                let fatal_shared = worker_shared.clone();
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                    let mut w = Worker::new(config, worker_shared, notifier);
                    w.run(rx);
                }));
                // A bug in the worker must not leave callers waiting forever: close the
                // stream and tell the JS side, which settles everything still pending.
                if let Err(p) = run {
                    let msg = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".into());
                    fatal_shared.closed.store(true, Ordering::Release);
                    *fatal_shared.last_error.lock() = Some(format!("worker stopped: {msg}"));
                    fatal.notify(
                        "fatal",
                        0,
                        json!({ "message": format!("worker stopped: {msg}") }),
                    );
                }
            })
            .map_err(|e| format!("cannot start the worker thread: {e}"))?;
        Ok(Self {
            tx,
            shared,
            join: Mutex::new(Some(join)),
            capacity,
        })
    }

    /// Events accepted but not yet taken by the worker.
    pub fn queued(&self) -> u64 {
        let c = &self.shared.counters;
        c.accepted
            .load(Ordering::Acquire)
            .saturating_sub(c.dequeued.load(Ordering::Acquire))
    }

    /// Queues one feedback; returns its sequence number.
    pub fn send_feedback(
        &self,
        features: Vec<f64>,
        prediction: f64,
        actual: f64,
    ) -> Result<u64, SendError> {
        let c = &self.shared.counters;
        c.received.fetch_add(1, Ordering::Relaxed);
        if self.shared.closed.load(Ordering::Acquire) {
            c.rejected_closed.fetch_add(1, Ordering::Relaxed);
            return Err(SendError::Closed);
        }
        if self.queued() >= self.capacity {
            c.dropped.fetch_add(1, Ordering::Relaxed);
            return Err(SendError::Full);
        }
        let seq = self.shared.next_seq.fetch_add(1, Ordering::Relaxed);
        // Counted before the send so a fast worker never sees dequeued > accepted.
        c.accepted.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(Msg::Feedback {
            seq,
            features,
            prediction,
            actual,
        }) {
            Ok(()) => Ok(seq),
            Err(e) => {
                c.accepted.fetch_sub(1, Ordering::Relaxed);
                match e {
                    TrySendError::Full(_) => {
                        c.dropped.fetch_add(1, Ordering::Relaxed);
                        Err(SendError::Full)
                    }
                    TrySendError::Disconnected(_) => {
                        c.rejected_closed.fetch_add(1, Ordering::Relaxed);
                        Err(SendError::Closed)
                    }
                }
            }
        }
    }

    /// Queues many events as one message (row-major `x`, `d` features each).
    pub fn send_batch(
        &self,
        d: usize,
        x: Vec<f64>,
        predictions: Vec<f64>,
        actuals: Vec<f64>,
    ) -> Result<u64, SendError> {
        let n = actuals.len() as u64;
        let c = &self.shared.counters;
        c.received.fetch_add(n, Ordering::Relaxed);
        if self.shared.closed.load(Ordering::Acquire) {
            c.rejected_closed.fetch_add(n, Ordering::Relaxed);
            return Err(SendError::Closed);
        }
        if self.queued() + n > self.capacity {
            c.dropped.fetch_add(n, Ordering::Relaxed);
            return Err(SendError::Full);
        }
        let first_seq = self.shared.next_seq.fetch_add(n, Ordering::Relaxed);
        c.accepted.fetch_add(n, Ordering::Relaxed);
        match self.tx.try_send(Msg::Batch {
            first_seq,
            d,
            x,
            predictions,
            actuals,
        }) {
            Ok(()) => Ok(first_seq + n - 1),
            Err(e) => {
                c.accepted.fetch_sub(n, Ordering::Relaxed);
                match e {
                    TrySendError::Full(_) => {
                        c.dropped.fetch_add(n, Ordering::Relaxed);
                        Err(SendError::Full)
                    }
                    TrySendError::Disconnected(_) => {
                        c.rejected_closed.fetch_add(n, Ordering::Relaxed);
                        Err(SendError::Closed)
                    }
                }
            }
        }
    }

    /// Control requests wait for room (they are rare); the reply comes as a "reply" notice.
    pub fn request(&self, id: u64, req: Request) -> Result<(), SendError> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(SendError::Closed);
        }
        let shutdown = matches!(req, Request::Shutdown);
        if shutdown {
            self.shared.closed.store(true, Ordering::Release);
        }
        self.tx
            .send(Msg::Request { id, req })
            .map_err(|_| SendError::Closed)
    }

    pub fn predict(&self, x: &[f64]) -> Option<f64> {
        self.shared.current.load().predict(x)
    }

    /// Waits for the worker to exit (after a Shutdown request).
    pub fn join(&self) {
        if let Some(j) = self.join.lock().take() {
            let _ = j.join();
        }
    }
}

/// Reads every log file in `dir`, calling `f` for each line with seq > `after`; returns
/// (highest seq seen, corrupt lines). A torn last line (a crash mid-write) is skipped.
fn scan_log(dir: &Path, after: u64, f: &mut dyn FnMut(LogLine)) -> (u64, u64) {
    let mut max = 0;
    let mut corrupt = 0;
    for file in log_files(dir) {
        let Ok(text) = read_text(&file, 1 << 30) else {
            corrupt += 1;
            continue;
        };
        for line in text.lines() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<LogLine>(line) {
                Ok(l) => {
                    max = max.max(l.seq);
                    if l.seq > after {
                        f(l);
                    }
                }
                Err(_) => corrupt += 1,
            }
        }
    }
    (max, corrupt)
}

fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("feedback-") && n.ends_with(".jsonl"))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

struct Sample {
    seq: u64,
    x: Vec<f64>,
    y: f64,
}

struct Worker {
    cfg: StreamConfig,
    shared: Arc<Shared>,
    notifier: Arc<dyn Notifier + Sync>,
    learner: Option<OnlineLinear>,
    previous: Option<(Option<OnlineLinear>, Arc<Snapshot>)>,
    buffer: Vec<Sample>,
    drift: PageHinkley,
    log: Option<File>,
    log_bytes: u64,
    dirty: bool,
    last_fsync: Instant,
    next_tick: Instant,
    timer: bool,
    max_seq: u64,
    base_path: PathBuf,
    registry_version: Option<u32>,
    version: u64,
}

impl Worker {
    fn new(cfg: StreamConfig, shared: Arc<Shared>, notifier: Arc<dyn Notifier + Sync>) -> Self {
        let tick = Duration::from_millis(cfg.update_interval_ms.max(1));
        Self {
            timer: cfg.timer_enabled,
            base_path: cfg.model_path.clone(),
            cfg,
            shared,
            notifier,
            learner: None,
            previous: None,
            buffer: Vec::new(),
            drift: PageHinkley::default(),
            log: None,
            log_bytes: 0,
            dirty: false,
            last_fsync: Instant::now(),
            next_tick: Instant::now() + tick,
            max_seq: 0,
            registry_version: None,
            version: 0,
        }
    }

    fn error(&self, msg: String) {
        *self.shared.last_error.lock() = Some(msg.clone());
        self.notifier.notify("error", 0, json!({ "message": msg }));
    }

    fn registry(&self) -> Option<Registry> {
        self.cfg
            .fine_tuned_dir
            .as_ref()
            .map(|d| Registry::new(d, &self.cfg.model_path))
    }

    fn state_path(&self) -> PathBuf {
        let stem = super::registry::stem_of(&self.cfg.model_path);
        self.cfg.state_dir.join(format!("{stem}.online.json"))
    }

    fn watermark_path(&self) -> Option<PathBuf> {
        self.cfg.log_dir.as_ref().map(|d| d.join("watermark.json"))
    }

    fn publish(&mut self, source: String) {
        let Some(l) = &self.learner else { return };
        let (weights, bias) = l.to_raw();
        self.version += 1;
        let snap = Snapshot {
            weights,
            bias,
            version: self.version,
            source,
        };
        self.shared.current.store(Arc::new(snap));
    }

    /// Loads what should serve: the registry's production version, else the model file;
    /// resumes the saved online learner when it was built on that same model.
    fn load_initial(&mut self) {
        let mut path = self.cfg.model_path.clone();
        if let Some(reg) = self.registry() {
            match reg.production() {
                Ok(Some(e)) => {
                    self.registry_version = Some(e.version);
                    path = PathBuf::from(e.model_path);
                }
                Ok(None) => {}
                Err(e) => self.error(format!("registry: {e}")),
            }
        }
        self.base_path = path.clone();
        match LinearModel::load(&path) {
            Ok(m) => {
                self.learner = Some(OnlineLinear::from_model(&m, self.cfg.online.clone()));
                *self.shared.current_path.lock() = path.display().to_string();
            }
            Err(e) => self.error(format!("model: {e}; starting from an empty model")),
        }
        if let Ok(text) = read_text(&self.state_path(), 256 << 20) {
            match serde_json::from_str::<OnlineState>(&text) {
                Ok(s) if s.base == path.display().to_string() && s.learner.check().is_ok() => {
                    if self
                        .learner
                        .as_ref()
                        .is_none_or(|l| l.features() == s.learner.features())
                    {
                        self.version = s.version;
                        self.learner = Some(s.learner);
                    }
                }
                Ok(_) => {}
                Err(e) => self.error(format!(
                    "{}: saved online state ignored ({e})",
                    self.state_path().display()
                )),
            }
        }
        self.publish(path.display().to_string());
    }

    fn save_learner(&self) {
        let Some(l) = &self.learner else { return };
        let s = OnlineState {
            format: "mlops-native/online-state@1".into(),
            base: self.base_path.display().to_string(),
            version: self.version,
            learner: l.clone(),
        };
        match serde_json::to_vec(&s) {
            Ok(b) => {
                if let Err(e) = write_atomic(&self.state_path(), &b) {
                    self.error(format!("cannot save the online state: {e}"));
                }
            }
            Err(e) => self.error(e.to_string()),
        }
    }

    fn replay(&mut self) {
        let Some(dir) = self.cfg.log_dir.clone() else {
            return;
        };
        if let Err(e) = fs::create_dir_all(&dir) {
            self.error(format!("cannot create {}: {e}", dir.display()));
            return;
        }
        let after = self
            .watermark_path()
            .and_then(|p| read_text(&p, 1 << 20).ok())
            .and_then(|t| serde_json::from_str::<Watermark>(&t).ok())
            .map_or(0, |w| w.processed_seq);
        let mut lines = Vec::new();
        let (max, corrupt) = scan_log(&dir, after, &mut |l| lines.push(l));
        self.max_seq = max;
        let c = &self.shared.counters;
        c.corrupt_log_lines.fetch_add(corrupt, Ordering::Relaxed);
        let n = lines.len() as u64;
        c.replayed.fetch_add(n, Ordering::Relaxed);
        c.accepted.fetch_add(n, Ordering::Relaxed);
        c.dequeued.fetch_add(n, Ordering::Relaxed);
        c.durable_seq.store(max, Ordering::Release);
        for l in lines {
            self.ingest(l.seq, &l.features, l.prediction, l.actual);
        }
    }

    fn open_log(&mut self) -> Option<&mut File> {
        let dir = self.cfg.log_dir.clone()?;
        if self.log.is_none() || self.log_bytes >= self.cfg.max_log_bytes {
            if let Some(f) = self.log.take() {
                let _ = f.sync_data();
            }
            let name = dir.join(format!("feedback-{:016}.jsonl", self.max_seq + 1));
            match OpenOptions::new().create(true).append(true).open(&name) {
                Ok(f) => {
                    self.log_bytes = f.metadata().map_or(0, |m| m.len());
                    self.log = Some(f);
                    self.prune_logs();
                }
                Err(e) => {
                    self.error(format!("cannot open {}: {e}", name.display()));
                    return None;
                }
            }
        }
        self.log.as_mut()
    }

    /// Deletes old log files, keeping `keep_log_files` and anything not yet processed.
    fn prune_logs(&self) {
        let Some(dir) = &self.cfg.log_dir else { return };
        let files = log_files(dir);
        if files.len() <= self.cfg.keep_log_files {
            return;
        }
        let watermark = self.watermark();
        let start_of = |p: &Path| -> u64 {
            p.file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.strip_prefix("feedback-"))
                .and_then(|s| s.parse().ok())
                .unwrap_or(u64::MAX)
        };
        let excess = files.len() - self.cfg.keep_log_files;
        for i in 0..excess {
            // A file is fully processed when the next file starts at or below the watermark.
            if start_of(&files[i + 1]) <= watermark + 1 {
                let _ = fs::remove_file(&files[i]);
            }
        }
    }

    /// Highest seq such that every seq ≤ it has been processed.
    fn watermark(&self) -> u64 {
        match self.buffer.iter().map(|s| s.seq).min() {
            Some(m) => m - 1,
            None => self.max_seq,
        }
    }

    fn write_watermark(&self) {
        if let Some(p) = self.watermark_path() {
            let w = Watermark {
                processed_seq: self.watermark(),
            };
            if let Ok(b) = serde_json::to_vec(&w) {
                if let Err(e) = write_atomic(&p, &b) {
                    self.error(format!("cannot write the watermark: {e}"));
                }
            }
        }
    }

    fn fsync(&mut self) {
        if self.dirty {
            if let Some(f) = &self.log {
                if let Err(e) = f.sync_data() {
                    self.error(format!("log fsync failed: {e}"));
                }
            }
            self.dirty = false;
        }
        self.last_fsync = Instant::now();
    }

    /// Appends a group of feedback to the log in one write and reports it durable.
    fn log_group(&mut self, lines: &[u8], max_seq: u64) {
        if lines.is_empty() {
            return;
        }
        if self.cfg.log_dir.is_some() {
            let ok = match self.open_log() {
                Some(f) => f.write_all(lines).map_err(|e| e.to_string()),
                None => Err("log unavailable".into()),
            };
            match ok {
                Ok(()) => {
                    self.log_bytes += lines.len() as u64;
                    self.dirty = true;
                }
                Err(e) => {
                    // Not durable: do not acknowledge; the caller's Promise resolves false.
                    self.error(format!("feedback log write failed: {e}"));
                    self.notifier.notify("durable-failed", max_seq, Value::Null);
                    return;
                }
            }
        }
        self.shared
            .counters
            .durable_seq
            .fetch_max(max_seq, Ordering::AcqRel);
        self.notifier.notify("durable", max_seq, Value::Null);
    }

    /// Appends every feedback event of `msgs` to the log in one write, counts them as
    /// taken from the queue, and reports the highest sequence number durable.
    fn log_events(&mut self, msgs: &[Msg], lines: &mut Vec<u8>) {
        lines.clear();
        let (mut max_seq, mut n) = (0u64, 0u64);
        let t = now_ms();
        let logging = self.cfg.log_dir.is_some();
        for m in msgs {
            m.for_each_event(|seq, features, prediction, actual| {
                n += 1;
                max_seq = max_seq.max(seq);
                if logging {
                    push_line(
                        lines,
                        &LogLineRef {
                            seq,
                            t,
                            features,
                            prediction,
                            actual,
                        },
                    );
                }
            });
        }
        self.shared
            .counters
            .dequeued
            .fetch_add(n, Ordering::Relaxed);
        if n > 0 {
            self.log_group(lines, max_seq);
        }
    }

    /// Scores one feedback against what serves (error statistics and drift), then buffers
    /// it for learning when it has usable features.
    fn ingest(&mut self, seq: u64, features: &[f64], prediction: f64, actual: f64) {
        self.max_seq = self.max_seq.max(seq);
        let served = self.shared.current.load().predict(features);
        let residual = served.unwrap_or(prediction) - actual;
        if self.drift.update(residual) {
            self.shared.counters.drifts.fetch_add(1, Ordering::Relaxed);
            self.notifier.notify(
                "drift",
                seq,
                json!({ "seq": seq, "bufferSize": self.buffer.len() }),
            );
            self.cycle("drift", true);
        }
        let dims = self.learner.as_ref().map(|l| l.features());
        let usable = !features.is_empty() && dims.is_none_or(|d| d == features.len());
        if usable {
            if self.learner.is_none() {
                self.learner = Some(OnlineLinear::new(features.len(), self.cfg.online.clone()));
            }
            self.buffer.push(Sample {
                seq,
                x: features.to_vec(),
                y: actual,
            });
            self.shared
                .counters
                .buffered
                .store(self.buffer.len() as u64, Ordering::Relaxed);
            if self.buffer.len() >= self.cfg.buffer_size {
                self.cycle("buffer-full", false);
            }
        } else {
            self.shared
                .counters
                .processed
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One update cycle; returns its report (None when there was nothing to learn from).
    fn cycle(&mut self, reason: &str, force: bool) -> Option<Value> {
        if self.buffer.is_empty() || (!force && self.buffer.len() < self.cfg.min_samples_for_update)
        {
            return None;
        }
        self.shared.is_updating.store(true, Ordering::Release);
        let started = Instant::now();
        let all = std::mem::take(&mut self.buffer);
        let consumed = all.len() as u64;
        let keep = all.len().min(self.cfg.max_samples_per_update);
        let samples = &all[all.len() - keep..];
        let report = match (&self.learner, samples.len() >= 2) {
            (Some(cur), true) => {
                let n_val = ((samples.len() as f64 * self.cfg.validation_fraction).round()
                    as usize)
                    .clamp(1, samples.len() - 1);
                let (train, val) = samples.split_at(samples.len() - n_val);
                let mut cand = cur.clone();
                for s in train {
                    cand.learn(&s.x, s.y);
                }
                let mse = |m: &OnlineLinear| {
                    val.iter()
                        .map(|s| (m.predict(&s.x) - s.y).powi(2))
                        .sum::<f64>()
                        / val.len() as f64
                };
                let (cur_mse, cand_mse) = (mse(cur), mse(&cand));
                let improvement = if cur_mse > 0.0 {
                    (cur_mse - cand_mse) / cur_mse
                } else {
                    0.0
                };
                let accepted = improvement.is_finite()
                    && improvement >= self.cfg.update_threshold
                    && cand.check().is_ok();
                let mut report = json!({
                    "reason": reason,
                    "accepted": accepted,
                    "samples": keep,
                    "trainSamples": train.len(),
                    "validationSamples": val.len(),
                    "currentMse": cur_mse,
                    "candidateMse": cand_mse,
                    "improvement": improvement,
                    "threshold": self.cfg.update_threshold,
                    "time": now_ms(),
                });
                if accepted {
                    let prev_snap = self.shared.current.load_full();
                    self.previous = Some((self.learner.take(), prev_snap));
                    self.learner = Some(cand);
                    if self.cfg.enable_hot_swap {
                        self.publish("online".into());
                        self.shared.counters.swaps.fetch_add(1, Ordering::Relaxed);
                    }
                    report["modelVersion"] = self.version.into();
                    report["durationMs"] = (started.elapsed().as_secs_f64() * 1000.0).into();
                    self.save_learner();
                    self.shared
                        .counters
                        .updates_accepted
                        .fetch_add(1, Ordering::Relaxed);
                } else {
                    report["durationMs"] = (started.elapsed().as_secs_f64() * 1000.0).into();
                    self.shared
                        .counters
                        .updates_rejected
                        .fetch_add(1, Ordering::Relaxed);
                }
                Some(report)
            }
            _ => None,
        };
        let c = &self.shared.counters;
        c.processed.fetch_add(consumed, Ordering::Relaxed);
        c.buffered.store(0, Ordering::Relaxed);
        c.updates.fetch_add(1, Ordering::Relaxed);
        c.last_update_time.store(now_ms() as u64, Ordering::Relaxed);
        if let Some(r) = &report {
            let mut recent = self.shared.recent_updates.lock();
            recent.push_back(r.clone());
            while recent.len() > 10 {
                recent.pop_front();
            }
        }
        self.fsync();
        self.write_watermark();
        self.shared.is_updating.store(false, Ordering::Release);
        // Listeners hear of the cycle once every counter already reflects it.
        if let Some(r) = &report {
            let kind = if r["accepted"] == true {
                "update"
            } else {
                "rejected"
            };
            self.notifier.notify(kind, 0, r.clone());
        }
        report
    }

    fn hot_swap(&mut self, path: &Path, source: String) -> Result<Value, String> {
        let m = LinearModel::load(path)?;
        if let Some(l) = &self.learner {
            if l.features() != m.weights.len() {
                return Err(format!(
                    "{} has {} weights but the serving model has {}",
                    path.display(),
                    m.weights.len(),
                    l.features()
                ));
            }
        }
        let prev_snap = self.shared.current.load_full();
        self.previous = Some((self.learner.take(), prev_snap));
        self.learner = Some(OnlineLinear::from_model(&m, self.cfg.online.clone()));
        self.base_path = path.to_path_buf();
        self.publish(source);
        *self.shared.current_path.lock() = path.display().to_string();
        self.shared.counters.swaps.fetch_add(1, Ordering::Relaxed);
        self.save_learner();
        Ok(
            json!({ "swapped": true, "modelVersion": self.version, "path": path.display().to_string() }),
        )
    }

    /// Picks up a production version another process promoted.
    fn poll_registry(&mut self) {
        let Some(reg) = self.registry() else { return };
        match reg.production() {
            Ok(Some(e)) if Some(e.version) != self.registry_version => {
                self.registry_version = Some(e.version);
                match self.hot_swap(Path::new(&e.model_path), format!("registry v{}", e.version)) {
                    Ok(mut r) => {
                        r["reason"] = "registry".into();
                        r["registryVersion"] = e.version.into();
                        self.notifier.notify("update", 0, r);
                    }
                    Err(err) => self.error(format!("registry production v{}: {err}", e.version)),
                }
            }
            Ok(_) => {}
            Err(e) => self.error(format!("registry: {e}")),
        }
    }

    fn handle(&mut self, id: u64, req: Request) -> bool {
        let reply: Result<Value, String> = match req {
            Request::Update { force } => {
                let r = self.cycle(if force { "forced" } else { "requested" }, force);
                Ok(r.unwrap_or(Value::Null))
            }
            Request::HotSwap(p) => {
                let src = p.display().to_string();
                match self.hot_swap(&p, src) {
                    Ok(v) => Ok(v),
                    Err(e) => {
                        *self.shared.last_error.lock() = Some(e.clone());
                        Ok(json!({ "swapped": false, "error": e }))
                    }
                }
            }
            Request::Rollback => match self.previous.take() {
                Some((learner, snap)) => {
                    self.learner = learner;
                    self.shared.current.store(snap);
                    self.shared
                        .counters
                        .rollbacks
                        .fetch_add(1, Ordering::Relaxed);
                    self.save_learner();
                    Ok(json!(true))
                }
                None => Ok(json!(false)),
            },
            Request::SetTimer(on) => {
                self.timer = on;
                self.next_tick =
                    Instant::now() + Duration::from_millis(self.cfg.update_interval_ms.max(1));
                Ok(json!(on))
            }
            Request::Flush => {
                self.fsync();
                self.write_watermark();
                Ok(json!(true))
            }
            #[cfg(test)]
            Request::Panic => panic!("injected"),
            Request::Shutdown => {
                self.fsync();
                self.write_watermark();
                self.save_learner();
                self.notifier.notify("reply", id, json!(true));
                return false;
            }
        };
        let payload = match reply {
            Ok(v) => v,
            Err(e) => json!({ "error": e }),
        };
        self.notifier.notify("reply", id, payload);
        true
    }

    fn run(&mut self, rx: Receiver<Msg>) {
        self.load_initial();
        self.replay();
        self.notifier.notify("ready", 0, json!({ "modelVersion": self.version, "replayed": self.shared.counters.replayed.load(Ordering::Relaxed) }));
        let fsync_every = Duration::from_millis(self.cfg.fsync_interval_ms.max(1));
        let tick_every = Duration::from_millis(self.cfg.update_interval_ms.max(1));
        let mut group: Vec<Msg> = Vec::with_capacity(1024);
        let mut lines: Vec<u8> = Vec::new();
        loop {
            let now = Instant::now();
            let mut wait = if self.timer {
                self.next_tick.saturating_duration_since(now)
            } else {
                Duration::from_secs(3600)
            };
            if self.dirty {
                wait = wait.min((self.last_fsync + fsync_every).saturating_duration_since(now));
            }
            match rx.recv_timeout(wait) {
                Ok(m) => {
                    group.push(m);
                    while group.len() < 4096 {
                        match rx.try_recv() {
                            Ok(m) => group.push(m),
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.fsync();
                    self.write_watermark();
                    self.save_learner();
                    return;
                }
            }
            // 1. Log every feedback of the group in one append, then acknowledge it.
            self.log_events(&group, &mut lines);
            // 2. Learn, and answer requests, in arrival order.
            let mut keep_running = true;
            for m in group.drain(..) {
                match m {
                    Msg::Request { id, req } => {
                        if !self.handle(id, req) {
                            keep_running = false;
                        }
                    }
                    m => m.for_each_event(|seq, x, p, y| self.ingest(seq, x, p, y)),
                }
            }
            if !keep_running {
                // Anything that raced in behind the shutdown — single events and batches —
                // is logged and buffered (so replayed on the next start), not lost.
                let rest: Vec<Msg> = rx.try_iter().collect();
                self.log_events(&rest, &mut lines);
                for m in &rest {
                    m.for_each_event(|seq, x, _, y| {
                        self.buffer.push(Sample {
                            seq,
                            x: x.to_vec(),
                            y,
                        })
                    });
                }
                self.fsync();
                self.shared
                    .counters
                    .buffered
                    .store(self.buffer.len() as u64, Ordering::Relaxed);
                return;
            }
            // 3. Timers.
            let now = Instant::now();
            if self.dirty && now >= self.last_fsync + fsync_every {
                self.fsync();
            }
            if self.timer && now >= self.next_tick {
                self.next_tick = now + tick_every;
                self.poll_registry();
                if self.buffer.len() >= self.cfg.min_samples_for_update {
                    self.cycle("timer", false);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::{channel, Sender};

    struct ChanNotifier(Mutex<Sender<(String, u64, Value)>>);
    impl Notifier for ChanNotifier {
        fn notify(&self, kind: &'static str, id: u64, payload: Value) {
            let _ = self.0.lock().send((kind.to_owned(), id, payload));
        }
    }

    fn setup(name: &str) -> (PathBuf, StreamConfig) {
        let dir = std::env::temp_dir().join(format!("mlops-stream-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let model = dir.join("m.json");
        fs::write(&model, r#"{"weights":[0,0],"bias":0,"note":"kept"}"#).unwrap();
        let cfg = StreamConfig {
            model_path: model,
            state_dir: dir.join("online"),
            log_dir: Some(dir.join("log")),
            update_interval_ms: 3_600_000,
            buffer_size: 200,
            min_samples_for_update: 20,
            ..Default::default()
        };
        (dir, cfg)
    }

    fn wait_for(rx: &std::sync::mpsc::Receiver<(String, u64, Value)>, kind: &str) -> (u64, Value) {
        loop {
            let (k, id, v) = rx.recv_timeout(Duration::from_secs(10)).expect("notice");
            if k == kind {
                return (id, v);
            }
        }
    }

    #[test]
    fn learns_swaps_and_the_counts_add_up() {
        let (dir, cfg) = setup("learn");
        let (tx, rx) = channel();
        let h = StreamHandle::start(cfg, Box::new(ChanNotifier(Mutex::new(tx)))).unwrap();
        wait_for(&rx, "ready");
        for i in 0..200 {
            let a = (i % 10) as f64;
            let b = (i % 7) as f64;
            h.send_feedback(vec![a, b], 0.0, 1.0 + 2.0 * a - b).unwrap();
        }
        let (_, report) = wait_for(&rx, "update");
        assert_eq!(report["accepted"], true);
        h.request(5, Request::Flush).unwrap();
        while wait_for(&rx, "reply").0 != 5 {}
        let p = h.predict(&[3.0, 2.0]).unwrap();
        assert!(
            p > 1.0 && p < 6.0,
            "served prediction moved from 0 toward 5: {p}"
        );
        let c = &h.shared.counters;
        assert_eq!(
            c.accepted.load(Ordering::SeqCst),
            c.processed.load(Ordering::SeqCst) + c.buffered.load(Ordering::SeqCst)
        );
        h.request(1, Request::Rollback).unwrap();
        let (_, v) = wait_for(&rx, "reply");
        assert_eq!(v, json!(true));
        assert_eq!(h.predict(&[3.0, 2.0]), Some(0.0));
        h.request(2, Request::Shutdown).unwrap();
        h.join();
        assert!(h.send_feedback(vec![1.0, 1.0], 0.0, 1.0) == Err(SendError::Closed));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn logged_but_unprocessed_feedback_is_replayed_after_a_restart() {
        let (dir, cfg) = setup("replay");
        {
            let (tx, rx) = channel();
            let h =
                StreamHandle::start(cfg.clone(), Box::new(ChanNotifier(Mutex::new(tx)))).unwrap();
            wait_for(&rx, "ready");
            for i in 0..30 {
                h.send_feedback(vec![i as f64, 1.0], 0.0, i as f64).unwrap();
            }
            let (seq, _) = wait_for(&rx, "durable");
            assert!(seq >= 1);
            // No cleanup: drop the handle as a killed process would leave things.
            loop {
                if h.shared.counters.durable_seq.load(Ordering::SeqCst) >= 30 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let (tx, rx) = channel();
        let h = StreamHandle::start(cfg, Box::new(ChanNotifier(Mutex::new(tx)))).unwrap();
        let (_, ready) = wait_for(&rx, "ready");
        assert_eq!(ready["replayed"], 30);
        assert_eq!(h.shared.counters.buffered.load(Ordering::SeqCst), 30);
        let seq = h.send_feedback(vec![1.0, 1.0], 0.0, 1.0).unwrap();
        assert_eq!(seq, 31, "sequence numbers continue after the log");
        h.request(9, Request::Shutdown).unwrap();
        h.join();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_worker_panic_closes_the_stream_and_says_so() {
        let (dir, cfg) = setup("panic");
        let (tx, rx) = channel();
        let h = StreamHandle::start(cfg, Box::new(ChanNotifier(Mutex::new(tx)))).unwrap();
        wait_for(&rx, "ready");
        h.request(1, Request::Panic).unwrap();
        let (_, v) = wait_for(&rx, "fatal");
        assert!(v["message"].as_str().unwrap().contains("injected"));
        h.join();
        assert_eq!(
            h.send_feedback(vec![1.0, 2.0], 0.0, 1.0),
            Err(SendError::Closed)
        );
        assert!(h
            .shared
            .last_error
            .lock()
            .as_deref()
            .unwrap()
            .contains("worker stopped"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_batch_queued_behind_a_shutdown_is_logged_and_replayed() {
        let (dir, cfg) = setup("drain");
        let (tx, rx) = channel();
        let h = StreamHandle::start(cfg.clone(), Box::new(ChanNotifier(Mutex::new(tx)))).unwrap();
        wait_for(&rx, "ready");
        // Bypass the closed flag, as a send racing with cleanup() can.
        h.tx.send(Msg::Request {
            id: 1,
            req: Request::Shutdown,
        })
        .unwrap();
        let batch = Msg::Batch {
            first_seq: 1,
            d: 2,
            x: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            predictions: vec![0.0; 3],
            actuals: vec![1.0, 2.0, 3.0],
        };
        h.tx.send(batch).unwrap();
        h.join();
        let (tx2, rx2) = channel();
        let again = StreamHandle::start(cfg, Box::new(ChanNotifier(Mutex::new(tx2)))).unwrap();
        let (_, ready) = wait_for(&rx2, "ready");
        assert_eq!(
            ready["replayed"], 3,
            "all three batch events reached the log"
        );
        again.request(2, Request::Shutdown).unwrap();
        again.join();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_full_queue_refuses_and_counts() {
        let (dir, mut cfg) = setup("full");
        cfg.queue_capacity = 1;
        cfg.log_dir = None;
        let (tx, _rx) = channel();
        let h = StreamHandle::start(cfg, Box::new(ChanNotifier(Mutex::new(tx)))).unwrap();
        let mut full = 0;
        for _ in 0..10_000 {
            if h.send_feedback(vec![1.0, 2.0], 0.0, 1.0) == Err(SendError::Full) {
                full += 1;
            }
        }
        assert!(full > 0);
        assert_eq!(h.shared.counters.dropped.load(Ordering::SeqCst), full);
        h.request(1, Request::Shutdown).unwrap();
        h.join();
        fs::remove_dir_all(&dir).unwrap();
    }
}
