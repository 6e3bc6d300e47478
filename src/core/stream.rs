//! Streaming feedback → online learning → validated hot-swap, with a durable feedback log.
//!
//! One `Worker` owns everything that learns or touches disk. It lives in a task on the
//! addon's shared tokio runtime (`core::runtime`; a task per stream, not a thread), which
//! logs and acknowledges, and hands learning, update cycles and timer work to the
//! runtime's blocking side — see [`drive`]. Callers talk to it over a bounded tokio
//! channel with `try_send` (full ⇒ the event is refused and counted, never unbounded
//! memory) and read the served model through an `ArcSwap`, so a prediction never waits
//! for learning and never sees a half-updated model.
//!
//! **What an acknowledgement promises.** The worker drains the channel in groups and
//! appends every feedback of a group to the log in one write. A caller's event is reported
//! durable ("durable", by ticket) only once its whole record — newline included — is in
//! the file; a write that fails part-way acknowledges the records that made it and reports
//! the rest failed ("durable-failed"); failed events are neither learned from nor
//! replayed, so `false` always means "not in the log". A file that took a failed or partial
//! write is never appended to again: the next write starts a new file, so a torn record is
//! never continued.
//!
//! **Log format** (`feedback-<firstSeq>.crc.jsonl`): one JSON object per line, its last
//! field a CRC-32C of the bytes before it: `{"seq":…,"t":…,"features":[…],"prediction":…,
//! "actual":…,"crc":"1a2b3c4d"}\n`. Reading is byte-based and per line: a record whose
//! checksum or JSON is bad is skipped and counted (`corruptLogRecords`) and every good
//! record around it is kept; a final line without its newline is a torn write (a kill
//! mid-write, never acknowledged) and is skipped quietly (`tornLogRecords`). Old logs
//! (`feedback-<n>.jsonl`, plain JSON lines) are read the same way, without the checksum.
//! Any JSON-lines reader (the fine-tune script) still reads the new files.
//!
//! **Sequence numbers never go back**: the first new one is max(highest in the log, file
//! names, the watermark, the persisted high-water mark) + 1. Callers get tickets (1, 2, …
//! per start) at once; the worker maps ticket → seq after it has read the log, so nothing
//! is scanned on the caller's thread.
//!
//! **Watermark**: `watermark.json` = `{processedSeq, highWaterSeq}`; every seq ≤
//! processedSeq has been consumed by an update cycle (or needed none). It is computed from
//! what is really buffered, never from what was merely received. On start, logged
//! feedback above it is replayed into the buffer. A watermark ahead of every log record is
//! reported as an error and repaired (the log is replayed in full, numbering continues
//! above the watermark).
//!
//! **One owner per log folder**: `<logDir>/.lock`, held for the life of the stream
//! (`fsutil::FileLock`, the registry's kind of lock). A second instance — same process or
//! another — fails to start with an error naming the holder's pid and never writes.
//!
//! Update cycle: candidate = current learner + the older part of the buffer; current and
//! candidate are scored on the newest part, which neither has seen; the candidate is
//! published when its relative MSE improvement reaches the threshold.
//!
//! **Tree families** serve `trees(x) + corrector(x)`: the learner above is then a residual
//! corrector, learning `actual − trees(x)` through the same cycles and gate. Every
//! `refit_every` events (or `refit_interval_ms`) the trees are refit on the newest
//! `refit_window` events on the runtime's blocking pool; the worker only collects the
//! result, scores it against what serves on feedback that arrives afterwards (which
//! neither has seen), and swaps it in (saved under the state folder) when it wins.

use super::drift::RobustCusum;
use super::fsutil::{crc32c, read_bytes, read_text, write_atomic, FileLock};
use super::linear::LinearModel;
use super::models::{fit_trees, Family, Model, ModelKind, TreeModel, TreeParams};
use super::online::{OnlineConfig, OnlineLinear};
use super::registry::Registry;
use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{self, error::TrySendError};

#[path = "stream_pg.rs"]
mod pg;
pub use pg::PgStreamConfig;

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
    /// Feedback, training lease and registry in PostgreSQL (None: local files only).
    pub postgres: Option<PgStreamConfig>,
    /// Tree families: refit the trees after this many feedback events (0: never by count).
    pub refit_every: usize,
    /// Tree families: refit at least this often while feedback arrives (0: never by time).
    pub refit_interval_ms: u64,
    /// Tree families: how many of the newest feedback events a refit trains on.
    pub refit_window: usize,
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
            postgres: None,
            refit_every: 5000,
            refit_interval_ms: 600_000,
            refit_window: 10_000,
        }
    }
}

/// What serves predictions. Immutable once published.
///
/// Linear family: `bias + w·x` is the model. Tree families: `trees(x) + bias + w·x`, where
/// the linear part is the residual corrector learned online (zero when the trees arrive).
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub weights: Vec<f64>,
    pub bias: f64,
    pub version: u64,
    pub source: String,
    /// Named features map through these: a linear file's top-level `featureNames`, a tree
    /// envelope's `features`.
    pub feature_names: Option<Arc<Vec<String>>>,
    /// The tree ensemble (tree families only); it has `weights.len()` features.
    pub trees: Option<Arc<TreeModel>>,
}

impl Snapshot {
    pub fn predict(&self, x: &[f64]) -> Option<f64> {
        if x.len() != self.weights.len() || self.weights.is_empty() {
            return None;
        }
        let linear = self.bias + self.weights.iter().zip(x).map(|(w, v)| w * v).sum::<f64>();
        Some(match &self.trees {
            Some(t) => t.predict(x) + linear,
            None => linear,
        })
    }

    pub fn family(&self) -> Family {
        self.trees.as_ref().map_or(Family::Linear, |t| t.family)
    }
}

/// Counters readable from any thread. `accepted = processed + buffered + queued +
/// log_failed` holds whenever the worker is between groups.
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
    /// Update cycles run (accepted + rejected).
    pub updates: AtomicU64,
    pub updates_accepted: AtomicU64,
    pub updates_rejected: AtomicU64,
    /// Highest ticket acknowledged durable, and the highest seq in the log.
    pub durable_ticket: AtomicU64,
    pub durable_seq: AtomicU64,
    pub last_update_time: AtomicU64,
    /// Log records skipped on reading because their checksum or JSON was bad.
    pub corrupt_log_records: AtomicU64,
    /// Unterminated last records (a kill mid-write; never acknowledged).
    pub torn_log_records: AtomicU64,
    /// Events whose log write failed: answered `false`, not learned from.
    pub log_failed: AtomicU64,
    /// Tree refits decided (accepted + rejected), and how many were swapped in.
    pub refits: AtomicU64,
    pub refits_accepted: AtomicU64,
    pub refits_rejected: AtomicU64,
}

pub struct Shared {
    pub current: ArcSwap<Snapshot>,
    pub counters: Counters,
    /// Next ticket handed to a caller (1, 2, … per start).
    pub next_ticket: AtomicU64,
    pub is_updating: AtomicBool,
    /// A tree refit is being fitted or validated.
    pub refitting: AtomicBool,
    pub closed: AtomicBool,
    /// False while the log cannot be written (from the last attempt).
    pub log_healthy: AtomicBool,
    pub last_error: Mutex<Option<String>>,
    pub recent_updates: Mutex<VecDeque<Value>>,
    pub current_path: Mutex<String>,
    /// The PostgreSQL side's figures (None in file mode).
    pub pg_stats: Mutex<Option<Value>>,
}

/// Worker → caller notifications (the napi layer forwards them to JS).
pub trait Notifier: Send + 'static {
    /// `kind`: "durable" (id = highest durable ticket), "durable-failed" (id = highest
    /// ticket of a failed write), "reply" (id = request id, payload = result JSON or
    /// `{"error": …}`), "update", "rejected", "drift", "error", "ready".
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
    /// Make everything logged durable (fsync) and write the watermark; replies whether
    /// the log is healthy.
    Flush,
    Shutdown,
    /// Test only: makes the worker panic, to check that callers are released.
    #[cfg(test)]
    Panic,
}

enum Msg {
    Feedback {
        ticket: u64,
        features: Vec<f64>,
        prediction: f64,
        actual: f64,
    },
    Batch {
        first_ticket: u64,
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
    /// Every feedback event the message carries, as (ticket, features, prediction, actual):
    /// one for a `Feedback`, one per row for a `Batch`, none for a request.
    fn for_each_event(&self, mut f: impl FnMut(u64, &[f64], f64, f64)) {
        match self {
            Msg::Feedback {
                ticket,
                features,
                prediction,
                actual,
            } => f(*ticket, features, *prediction, *actual),
            Msg::Batch {
                first_ticket,
                d,
                x,
                predictions,
                actuals,
            } => {
                for i in 0..actuals.len() {
                    f(
                        first_ticket + i as u64,
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
    tx: mpsc::Sender<Msg>,
    /// Capacity in events (the channel bounds messages; a batch is one message).
    capacity: u64,
    pub shared: Arc<Shared>,
    /// Disconnected when the stream's task has ended.
    done: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

#[derive(Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Watermark {
    processed_seq: u64,
    /// Highest sequence number ever handed out (persisted so numbers never go back even
    /// when log files are lost).
    #[serde(default)]
    high_water_seq: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OnlineState {
    format: String,
    /// The model file this learner started from (resumed only while it still serves).
    base: String,
    version: u64,
    /// Linear: the model. Tree families: the residual corrector added to the trees.
    learner: OnlineLinear,
    /// The family of `base` (absent in states from before tree serving: linear).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    family: Option<String>,
    /// When `base` is a refit: the model it was refit from. The refit serves after a
    /// restart only while that model is still the one chosen to serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    origin: Option<String>,
}

/// A log record borrowed from a queued event: serialised without copying its features.
#[derive(Serialize)]
struct LogLineRef<'a> {
    seq: u64,
    t: f64,
    features: &'a [f64],
    prediction: f64,
    actual: f64,
}

const CRC_SUFFIX: &[u8] = b",\"crc\":\"";
/// `,"crc":"` + 8 hex digits + `"}`.
const CRC_TAIL: usize = CRC_SUFFIX.len() + 8 + 2;

/// Appends one checksummed record (newline included).
fn push_record(out: &mut Vec<u8>, l: &LogLineRef) {
    let start = out.len();
    if serde_json::to_writer(&mut *out, l).is_err() {
        out.truncate(start);
        return;
    }
    out.pop(); // the closing brace; the checksum field goes before it
    let crc = crc32c(&out[start..]);
    out.extend_from_slice(CRC_SUFFIX);
    let _ = writeln!(out, "{crc:08x}\"}}");
}

/// Checks a record line written by `push_record`: the checksum covers every byte before
/// `,"crc":"`.
/// Encodes every feedback of a group as log records (when `logging`), with each record's
/// end offset and ticket in `ends`; returns (events, highest ticket). Shared by the worker
/// and by `FastLog`, so both write the same bytes.
fn encode_group(
    msgs: &[Msg],
    base: u64,
    logging: bool,
    lines: &mut Vec<u8>,
    ends: &mut Vec<(usize, u64)>,
) -> (u64, u64) {
    lines.clear();
    ends.clear();
    let (mut max_ticket, mut n) = (0u64, 0u64);
    let t = now_ms();
    for m in msgs {
        m.for_each_event(|ticket, features, prediction, actual| {
            n += 1;
            max_ticket = max_ticket.max(ticket);
            if logging {
                push_record(
                    lines,
                    &LogLineRef {
                        seq: base + ticket,
                        t,
                        features,
                        prediction,
                        actual,
                    },
                );
                ends.push((lines.len(), ticket));
            }
        });
    }
    (n, max_ticket)
}

/// Writes `buf` until done or the first error; returns the bytes written (records wholly
/// inside them are durable-on-fsync, the rest is answered false) and the error.
fn write_all_counted(f: &mut impl Write, buf: &[u8]) -> (usize, Option<String>) {
    let mut written = 0;
    while written < buf.len() {
        match f.write(&buf[written..]) {
            Ok(0) => return (written, Some("the file accepted no more bytes".to_string())),
            Ok(k) => written += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return (written, Some(e.to_string())),
        }
    }
    (written, None)
}

fn record_ok(line: &[u8]) -> bool {
    if line.len() <= CRC_TAIL || !line.ends_with(b"\"}") {
        return false;
    }
    let body = line.len() - CRC_TAIL;
    if &line[body..body + CRC_SUFFIX.len()] != CRC_SUFFIX {
        return false;
    }
    let hex = &line[body + CRC_SUFFIX.len()..line.len() - 2];
    let Some(want) = std::str::from_utf8(hex)
        .ok()
        .and_then(|h| u32::from_str_radix(h, 16).ok())
    else {
        return false;
    };
    crc32c(&line[..body]) == want
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

/// What reading the log found.
#[derive(Default, Debug)]
struct LogScan {
    /// Highest seq of a good record, or implied by a file name.
    max_seq: u64,
    good: u64,
    corrupt: u64,
    torn: u64,
    /// One line per file with damage: which file, how many records, at which offsets.
    damage: Vec<String>,
}

/// `feedback-<n>.jsonl` (old, no checksums) or `feedback-<n>[-k].crc.jsonl` (checksummed).
fn log_file_info(p: &Path) -> Option<(u64, bool)> {
    let name = p.file_name()?.to_str()?;
    let rest = name.strip_prefix("feedback-")?;
    let (stem, crc) = match rest.strip_suffix(".crc.jsonl") {
        Some(s) => (s, true),
        None => (rest.strip_suffix(".jsonl")?, false),
    };
    let digits = stem.split('-').next()?;
    Some((digits.parse().ok()?, crc))
}

/// Log files by starting sequence number (then name).
fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<(u64, PathBuf)> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .filter_map(|p| log_file_info(&p).map(|(n, _)| (n, p)))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v.into_iter().map(|(_, p)| p).collect()
}

/// Reads every log file in `dir`, calling `f` for each good record with seq > `after`.
/// Byte-based: a bad record costs only itself.
fn scan_log(dir: &Path, after: u64, f: &mut dyn FnMut(LogLine)) -> LogScan {
    let mut s = LogScan::default();
    for file in log_files(dir) {
        let Some((start, checksummed)) = log_file_info(&file) else {
            continue;
        };
        s.max_seq = s.max_seq.max(start.saturating_sub(1));
        let bytes = match read_bytes(&file, 1 << 31) {
            Ok(b) => b,
            Err(e) => {
                s.corrupt += 1;
                s.damage.push(e);
                continue;
            }
        };
        let mut bad_at = vec![];
        let mut pos = 0usize;
        while pos < bytes.len() {
            let (line, next, terminated) = match bytes[pos..].iter().position(|&b| b == b'\n') {
                Some(i) => (&bytes[pos..pos + i], pos + i + 1, true),
                None => (&bytes[pos..], bytes.len(), false),
            };
            let at = pos;
            pos = next;
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            if !terminated {
                // The write of this record never finished: it was never acknowledged.
                s.torn += 1;
                s.damage.push(format!(
                    "{}: the last record (byte {at}) is torn — a write cut short, never acknowledged; skipped",
                    file.display()
                ));
                continue;
            }
            let parsed = if checksummed && !record_ok(line) {
                None
            } else {
                serde_json::from_slice::<LogLine>(line).ok()
            };
            match parsed {
                Some(l)
                    if l.features.iter().all(|x| x.is_finite())
                        && l.prediction.is_finite()
                        && l.actual.is_finite() =>
                {
                    s.good += 1;
                    s.max_seq = s.max_seq.max(l.seq);
                    if l.seq > after {
                        f(l);
                    }
                }
                _ => {
                    s.corrupt += 1;
                    bad_at.push(at);
                }
            }
        }
        if !bad_at.is_empty() {
            let shown: Vec<String> = bad_at.iter().take(5).map(|o| o.to_string()).collect();
            s.damage.push(format!(
                "{}: {} damaged record(s) skipped (byte offsets {}{})",
                file.display(),
                bad_at.len(),
                shown.join(", "),
                if bad_at.len() > 5 { ", …" } else { "" }
            ));
        }
    }
    s
}

/// Room in the channel beyond `queueCapacity` messages, for control requests: feedback is
/// bounded by its own event count, so a full feedback queue never makes a request wait.
const REQUEST_ROOM: usize = 1024;

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

impl StreamHandle {
    /// Starts the stream as a task on the shared runtime. Takes the log folder's lock
    /// first: when another instance holds it, nothing starts and the error names the
    /// holder. Loading the model, the saved learner and the log replay happen on the
    /// runtime's blocking side; "ready" is notified when done.
    pub fn start(config: StreamConfig, notifier: Box<dyn Notifier + Sync>) -> Result<Self, String> {
        let mut lock_error = None;
        let lock = match &config.log_dir {
            Some(dir) => match FileLock::try_acquire(&dir.join(".lock")) {
                Ok(l) => Some(l),
                Err(e) if e.contains("is locked") => {
                    return Err(format!(
                        "feedback log folder {} is in use: {e}",
                        dir.display()
                    ))
                }
                // An unwritable folder is an unhealthy log (the worker reports it and the
                // stream writes nothing without the lock), not a refusal to serve.
                Err(e) => {
                    lock_error = Some(e);
                    None
                }
            },
            None => None,
        };
        let rt = super::runtime::handle()?;
        let capacity = config.queue_capacity.max(1) as u64;
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1) + REQUEST_ROOM);
        let shared = Arc::new(Shared {
            current: ArcSwap::from_pointee(Snapshot {
                weights: vec![],
                bias: 0.0,
                version: 0,
                source: String::new(),
                feature_names: None,
                trees: None,
            }),
            counters: Counters::default(),
            next_ticket: AtomicU64::new(1),
            is_updating: AtomicBool::new(false),
            refitting: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            log_healthy: AtomicBool::new(true),
            last_error: Mutex::new(None),
            recent_updates: Mutex::new(VecDeque::new()),
            current_path: Mutex::new(config.model_path.display().to_string()),
            pg_stats: Mutex::new(None),
        });
        let notifier: Arc<dyn Notifier + Sync> = Arc::from(notifier);
        let mut w = Worker::new(config, shared.clone(), notifier.clone(), lock);
        w.lock_error = lock_error;
        let task = rt.spawn(drive(w, rx));
        let (done_tx, done) = std::sync::mpsc::channel::<()>();
        let fatal_shared = shared.clone();
        rt.spawn(async move {
            // A bug in the worker must not leave callers waiting forever: close the stream
            // and tell the JS side, which settles everything still pending. (The worker was
            // dropped while unwinding, so the log folder is already released.)
            if let Err(e) = task.await {
                let msg = if e.is_panic() {
                    panic_message(e.into_panic())
                } else {
                    "cancelled".into()
                };
                fatal_shared.closed.store(true, Ordering::Release);
                *fatal_shared.last_error.lock() = Some(format!("worker stopped: {msg}"));
                notifier.notify(
                    "fatal",
                    0,
                    json!({ "message": format!("worker stopped: {msg}") }),
                );
            }
            drop(done_tx);
        });
        Ok(Self {
            tx,
            shared,
            done: Mutex::new(Some(done)),
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

    /// Queues one feedback; returns its ticket.
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
        let ticket = self.shared.next_ticket.fetch_add(1, Ordering::Relaxed);
        // Counted before the send so a fast worker never sees dequeued > accepted.
        c.accepted.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(Msg::Feedback {
            ticket,
            features,
            prediction,
            actual,
        }) {
            Ok(()) => Ok(ticket),
            Err(e) => {
                c.accepted.fetch_sub(1, Ordering::Relaxed);
                match e {
                    TrySendError::Full(_) => {
                        c.dropped.fetch_add(1, Ordering::Relaxed);
                        Err(SendError::Full)
                    }
                    TrySendError::Closed(_) => {
                        c.rejected_closed.fetch_add(1, Ordering::Relaxed);
                        Err(SendError::Closed)
                    }
                }
            }
        }
    }

    /// Queues many events as one message (row-major `x`, `d` features each); returns the
    /// last ticket.
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
        let first_ticket = self.shared.next_ticket.fetch_add(n, Ordering::Relaxed);
        c.accepted.fetch_add(n, Ordering::Relaxed);
        match self.tx.try_send(Msg::Batch {
            first_ticket,
            d,
            x,
            predictions,
            actuals,
        }) {
            Ok(()) => Ok(first_ticket + n - 1),
            Err(e) => {
                c.accepted.fetch_sub(n, Ordering::Relaxed);
                match e {
                    TrySendError::Full(_) => {
                        c.dropped.fetch_add(n, Ordering::Relaxed);
                        Err(SendError::Full)
                    }
                    TrySendError::Closed(_) => {
                        c.rejected_closed.fetch_add(n, Ordering::Relaxed);
                        Err(SendError::Closed)
                    }
                }
            }
        }
    }

    /// Control requests wait for room only past `REQUEST_ROOM` queued requests (they are
    /// rare); the reply comes as a "reply" notice. Callers are never runtime threads (JS,
    /// the environment's cleanup hook, tests), so the fallback may block.
    pub fn request(&self, id: u64, req: Request) -> Result<(), SendError> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(SendError::Closed);
        }
        let shutdown = matches!(req, Request::Shutdown);
        if shutdown {
            self.shared.closed.store(true, Ordering::Release);
        }
        match self.tx.try_send(Msg::Request { id, req }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Closed(_)) => Err(SendError::Closed),
            Err(TrySendError::Full(m)) => self.tx.blocking_send(m).map_err(|_| SendError::Closed),
        }
    }

    pub fn predict(&self, x: &[f64]) -> Option<f64> {
        self.shared.current.load().predict(x)
    }

    /// Waits for the stream's task to end (after a Shutdown request).
    pub fn join(&self) {
        if let Some(done) = self.done.lock().take() {
            // Ok or Err: either way the task is over (the sender is dropped at its end).
            let _ = done.recv();
        }
    }
}

struct Sample {
    seq: u64,
    x: Vec<f64>,
    y: f64,
}

/// What a swap replaced, so that `rollback` restores all of it (the path and the saved
/// state's label included, not only the weights).
struct Previous {
    learner: Option<OnlineLinear>,
    snap: Arc<Snapshot>,
    base_path: PathBuf,
    names: Option<Arc<Vec<String>>>,
    trees: Option<Arc<TreeModel>>,
    origin: PathBuf,
}

/// Fewest feedback rows a tree refit trains on.
const MIN_REFIT_ROWS: usize = 50;

/// A tree refit in flight. It is fitted on the runtime's blocking pool (the worker keeps
/// logging and acknowledging meanwhile), then scored against what serves on feedback that
/// arrives after its window was taken — rows neither model has seen — before it may swap in.
enum Refit {
    Fitting {
        rx: std::sync::mpsc::Receiver<Result<TreeModel, String>>,
        started: Instant,
        rows: usize,
    },
    Validating {
        model: Arc<TreeModel>,
        rows: usize,
        fit_ms: f64,
        /// Rows to score before deciding, and the squared errors so far.
        need: usize,
        n: usize,
        cur_se: f64,
        cand_se: f64,
    },
}

struct Worker {
    cfg: StreamConfig,
    shared: Arc<Shared>,
    notifier: Arc<dyn Notifier + Sync>,
    learner: Option<OnlineLinear>,
    previous: Option<Previous>,
    buffer: Vec<Sample>,
    drift: RobustCusum,
    /// The log folder's lock, released when the worker stops; nothing is written without it.
    lock: Option<FileLock>,
    lock_error: Option<String>,
    log: Option<File>,
    log_path: Option<PathBuf>,
    log_bytes: u64,
    dirty: bool,
    last_fsync: Instant,
    next_tick: Instant,
    timer: bool,
    /// seq = seq_base + ticket.
    seq_base: u64,
    /// Highest seq ever handed out (persisted as `highWaterSeq`), and the value last written.
    high_water: u64,
    high_water_written: u64,
    /// Highest seq that has been buffered or processed.
    ingested: u64,
    /// The model file the serving learner started from.
    base_path: PathBuf,
    names: Option<Arc<Vec<String>>>,
    registry_version: Option<u32>,
    version: u64,
    replaying: bool,
    pg: Option<pg::PgSide>,
    /// Tree families: the ensemble that serves (the learner is then its residual corrector).
    trees: Option<Arc<TreeModel>>,
    /// The model chosen to serve (registry, file, hot swap); `base_path` differs from it
    /// only while a refit of it serves.
    origin: PathBuf,
    /// Tree families: the newest feedback (features, actual), what a refit trains on.
    window: VecDeque<(Vec<f64>, f64)>,
    refit: Option<Refit>,
    /// Feedback rows since the last refit started, and when it started.
    since_refit: u64,
    last_refit: Instant,
}

fn names_of(m: &LinearModel) -> Option<Arc<Vec<String>>> {
    let a = m.extra.get("featureNames")?.as_array()?;
    let names: Option<Vec<String>> = a.iter().map(|v| v.as_str().map(str::to_owned)).collect();
    names.filter(|n| n.len() == m.weights.len()).map(Arc::new)
}

impl Worker {
    fn new(
        cfg: StreamConfig,
        shared: Arc<Shared>,
        notifier: Arc<dyn Notifier + Sync>,
        lock: Option<FileLock>,
    ) -> Self {
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
            drift: RobustCusum::default(),
            lock,
            lock_error: None,
            log: None,
            log_path: None,
            log_bytes: 0,
            dirty: false,
            last_fsync: Instant::now(),
            next_tick: Instant::now() + tick,
            seq_base: 0,
            high_water: 0,
            high_water_written: 0,
            ingested: 0,
            names: None,
            registry_version: None,
            version: 0,
            replaying: false,
            pg: None,
            trees: None,
            origin: PathBuf::new(),
            window: VecDeque::new(),
            refit: None,
            since_refit: 0,
            last_refit: Instant::now(),
        }
    }

    fn error(&self, msg: String) {
        *self.shared.last_error.lock() = Some(msg.clone());
        self.notifier.notify("error", 0, json!({ "message": msg }));
    }

    fn set_log_healthy(&self, ok: bool) {
        self.shared.log_healthy.store(ok, Ordering::Release);
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
            feature_names: self.names.clone(),
            trees: self.trees.clone(),
        };
        self.shared.current.store(Arc::new(snap));
    }

    /// Loads what should serve: the registry's production version; when its file is
    /// missing or corrupt, the newest readable version; else the model file — each
    /// fallback reported as an error. Resumes the saved online learner when it was built on
    /// the model that serves. Returns whether a model serves.
    fn load_initial(&mut self) -> bool {
        let mut candidates: Vec<PathBuf> = vec![];
        if let Some(reg) = self.registry() {
            self.registry_version = reg.production().ok().flatten().map(|e| e.version);
            match reg.serving() {
                Ok(Some((e, notes))) => {
                    if !notes.is_empty() {
                        self.error(format!(
                            "registry: {}; serving v{} ({}) instead",
                            notes.join("; "),
                            e.version,
                            e.model_path
                        ));
                    }
                    candidates.push(PathBuf::from(e.model_path));
                }
                Ok(None) => {}
                Err(e) => self.error(format!(
                    "registry: no readable version ({e}); serving {} instead",
                    self.cfg.model_path.display()
                )),
            }
        }
        candidates.push(self.cfg.model_path.clone());
        for path in candidates {
            self.base_path = path.clone();
            match Model::load(&path) {
                Ok(m) => {
                    self.install(m);
                    break;
                }
                Err(e) => self.error(format!("model: {e}")),
            }
        }
        let path = self.base_path.clone();
        self.origin = path.clone();
        let here = path.display().to_string();
        if let Ok(text) = read_text(&self.state_path(), 256 << 20) {
            match serde_json::from_str::<OnlineState>(&text) {
                // A corrector never serves alone, nor a linear learner beside trees.
                Ok(s)
                    if s.learner.check().is_ok()
                        && s.family.as_deref().unwrap_or("linear") == self.family().name() =>
                {
                    if s.base == here {
                        if self
                            .learner
                            .as_ref()
                            .is_none_or(|l| l.features() == s.learner.features())
                        {
                            self.version = s.version;
                            self.learner = Some(s.learner);
                        }
                    } else if s.origin.as_deref() == Some(here.as_str()) {
                        self.resume_refit(s);
                    }
                }
                Ok(_) => {}
                Err(e) => self.error(format!(
                    "{}: saved online state ignored ({e})",
                    self.state_path().display()
                )),
            }
        }
        if self.learner.is_some() {
            let serving = self.base_path.display().to_string();
            *self.shared.current_path.lock() = serving.clone();
            self.publish(serving);
            true
        } else {
            self.error(format!(
                "no model serves: {} cannot be loaded and there is no saved online state for it",
                path.display()
            ));
            false
        }
    }

    fn family(&self) -> Family {
        self.trees.as_ref().map_or(Family::Linear, |t| t.family)
    }

    /// Makes a loaded model the one that learns and serves (published by the caller): a
    /// linear model is its own online learner; trees get a fresh, zero residual corrector.
    fn install(&mut self, m: Model) {
        let Model { kind, features, .. } = m;
        let named = |d: usize| features.filter(|n| n.len() == d).map(Arc::new);
        match kind {
            ModelKind::Linear(l) => {
                self.names = names_of(&l).or_else(|| named(l.weights.len()));
                self.learner = Some(OnlineLinear::from_model(&l, self.cfg.online.clone()));
                self.trees = None;
            }
            ModelKind::Trees(t) => {
                self.names = named(t.d);
                self.learner = Some(OnlineLinear::new(t.d, self.cfg.online.clone()));
                self.trees = Some(Arc::new(t));
            }
        }
        // A refit of the model this replaces would be moot.
        self.refit = None;
        self.shared.refitting.store(false, Ordering::Release);
        self.since_refit = 0;
        self.last_refit = Instant::now();
    }

    /// At start: the saved state says a refit of the model chosen to serve was serving.
    fn resume_refit(&mut self, s: OnlineState) {
        let path = PathBuf::from(&s.base);
        let family = self.family();
        match Model::load(&path) {
            Ok(Model {
                kind: ModelKind::Trees(t),
                features,
                ..
            }) if t.family == family && t.d == s.learner.features() => {
                if let Some(n) = features.filter(|n| n.len() == t.d) {
                    self.names = Some(Arc::new(n));
                }
                self.trees = Some(Arc::new(t));
                self.base_path = path;
                self.version = s.version;
                self.learner = Some(s.learner);
            }
            Ok(_) => self.error(format!(
                "{}: not a {} refit with {} features; serving {} with a fresh corrector",
                path.display(),
                family.name(),
                s.learner.features(),
                self.origin.display()
            )),
            Err(e) => self.error(format!(
                "refit model {e}; serving {} with a fresh corrector",
                self.origin.display()
            )),
        }
    }

    fn save_learner(&self) {
        // On PostgreSQL what serves comes from the registry; local learner state is never
        // resumed (see stream_pg.rs), so it is not written either.
        if self.pg.is_some() {
            return;
        }
        let Some(l) = &self.learner else { return };
        let family = self.family();
        let s = OnlineState {
            format: "mlops-native/online-state@1".into(),
            base: self.base_path.display().to_string(),
            version: self.version,
            learner: l.clone(),
            family: (family != Family::Linear).then(|| family.name().to_string()),
            origin: (self.origin != self.base_path && !self.origin.as_os_str().is_empty())
                .then(|| self.origin.display().to_string()),
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

    fn read_watermark(&self) -> Watermark {
        let Some(p) = self.watermark_path() else {
            return Watermark::default();
        };
        if !p.exists() {
            return Watermark::default();
        }
        match read_text(&p, 1 << 20).and_then(|t| {
            serde_json::from_str::<Watermark>(&t).map_err(|e| format!("{}: {e}", p.display()))
        }) {
            Ok(w) => w,
            Err(e) => {
                // Replaying everything is the safe side: duplicates beat losses.
                self.error(format!(
                    "watermark unreadable ({e}): replaying everything the log holds"
                ));
                Watermark::default()
            }
        }
    }

    /// Reads the log: numbers continue above everything ever used, and logged feedback the
    /// watermark does not cover is replayed into the buffer. Then opens a fresh log file
    /// (never appending to one that may end in a torn record).
    fn replay(&mut self) {
        let Some(dir) = self.cfg.log_dir.clone() else {
            return;
        };
        if let Err(e) = fs::create_dir_all(&dir) {
            self.set_log_healthy(false);
            self.error(format!(
                "feedback log: cannot create {}: {e}",
                dir.display()
            ));
            return;
        }
        // Files a start created and never wrote to carry no records.
        for f in log_files(&dir) {
            if fs::metadata(&f).is_ok_and(|m| m.len() == 0) {
                let _ = fs::remove_file(&f);
            }
        }
        let wm = self.read_watermark();
        let mut after = wm.processed_seq;
        let mut records = Vec::new();
        let mut scan = scan_log(&dir, after, &mut |l| records.push(l));
        if after > scan.max_seq {
            records.clear();
            scan = scan_log(&dir, 0, &mut |l| records.push(l));
            self.error(format!(
                "feedback log: watermark.json says every event up to {after} was processed, but the log ends at {} \
                 (log files lost, or the watermark edited): replaying all {} records the log holds; new events are numbered from {}",
                scan.max_seq,
                records.len(),
                after.max(wm.high_water_seq).max(scan.max_seq) + 1
            ));
            after = 0;
        }
        self.seq_base = scan.max_seq.max(wm.processed_seq).max(wm.high_water_seq);
        self.high_water = self.seq_base;
        self.ingested = after;
        let c = &self.shared.counters;
        c.corrupt_log_records
            .fetch_add(scan.corrupt, Ordering::Relaxed);
        c.torn_log_records.fetch_add(scan.torn, Ordering::Relaxed);
        if !scan.damage.is_empty() {
            self.error(format!("feedback log: {}", scan.damage.join("; ")));
        }
        records.sort_by_key(|l| l.seq);
        let n = records.len() as u64;
        c.replayed.fetch_add(n, Ordering::Relaxed);
        c.accepted.fetch_add(n, Ordering::Relaxed);
        c.dequeued.fetch_add(n, Ordering::Relaxed);
        c.durable_seq.store(scan.max_seq, Ordering::Release);
        self.replaying = true;
        for l in records {
            self.ingest(l.seq, &l.features, l.prediction, l.actual);
        }
        self.replaying = false;
        self.write_watermark();
        match self.open_log(self.seq_base + 1) {
            Ok(()) => self.set_log_healthy(true),
            Err(e) => {
                self.set_log_healthy(false);
                self.error(format!("feedback log: {e}"));
            }
        }
    }

    /// Makes sure a log file is open, starting a new one when there is none (at start,
    /// after a failed write) or the current one is full.
    fn open_log(&mut self, first_seq: u64) -> Result<(), String> {
        let Some(dir) = self.cfg.log_dir.clone() else {
            return Ok(());
        };
        if self.log.is_some() && self.log_bytes < self.cfg.max_log_bytes {
            return Ok(());
        }
        if self.lock.is_none() {
            return Err(format!(
                "not writing without the folder's lock ({})",
                self.lock_error.as_deref().unwrap_or("released")
            ));
        }
        if let Some(f) = self.log.take() {
            let _ = f.sync_data();
        }
        fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        for k in 0..10_000u32 {
            let name = if k == 0 {
                format!("feedback-{first_seq:016}.crc.jsonl")
            } else {
                format!("feedback-{first_seq:016}-{k}.crc.jsonl")
            };
            let p = dir.join(name);
            match OpenOptions::new().write(true).create_new(true).open(&p) {
                Ok(f) => {
                    self.log = Some(f);
                    self.log_path = Some(p);
                    self.log_bytes = 0;
                    // The new name must survive a crash before its first fsync.
                    if let Ok(d) = File::open(&dir) {
                        let _ = d.sync_all();
                    }
                    self.prune_logs();
                    return Ok(());
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(format!("cannot create {}: {e}", p.display())),
            }
        }
        Err(format!(
            "cannot find a free log file name in {}",
            dir.display()
        ))
    }

    /// Deletes old log files, keeping `keep_log_files` and anything not yet processed.
    fn prune_logs(&self) {
        let Some(dir) = &self.cfg.log_dir else { return };
        let files = log_files(dir);
        if files.len() <= self.cfg.keep_log_files {
            return;
        }
        let watermark = self.watermark();
        let start_of = |p: &Path| log_file_info(p).map_or(u64::MAX, |(n, _)| n);
        let excess = files.len() - self.cfg.keep_log_files;
        for i in 0..excess {
            // A file is fully processed when the next file starts at or below the watermark.
            if start_of(&files[i + 1]) <= watermark + 1 {
                let _ = fs::remove_file(&files[i]);
            }
        }
    }

    /// Highest seq such that every seq ≤ it has been consumed by a cycle (or needed none):
    /// below the oldest buffered event, and never above what has really been ingested.
    fn watermark(&self) -> u64 {
        match self.buffer.iter().map(|s| s.seq).min() {
            Some(m) => (m - 1).min(self.ingested),
            None => self.ingested,
        }
    }

    fn write_watermark(&mut self) {
        self.high_water_written = self.high_water;
        if self.lock.is_none() {
            return; // the folder is not ours (or not writable): write nothing into it
        }
        if let Some(p) = self.watermark_path() {
            let w = Watermark {
                processed_seq: self.watermark(),
                high_water_seq: self.high_water,
            };
            if let Ok(b) = serde_json::to_vec(&w) {
                if let Err(e) = write_atomic(&p, &b) {
                    self.error(format!("feedback log: cannot write the watermark: {e}"));
                }
            }
        }
    }

    fn fsync(&mut self) {
        if self.dirty {
            if let Some(f) = &self.log {
                if let Err(e) = f.sync_data() {
                    self.set_log_healthy(false);
                    self.error(format!("feedback log fsync failed: {e}"));
                    // Durability of this file is unknown: write the next records elsewhere.
                    self.log = None;
                }
            }
            self.dirty = false;
        }
        self.last_fsync = Instant::now();
    }

    /// Writes `buf` to the log, retrying short writes; returns the bytes written and the
    /// error that stopped it. After any failure the file is closed for good: the next
    /// write starts a new file, so a torn record is never continued.
    fn append(&mut self, buf: &[u8], first_seq: u64) -> (usize, Option<String>) {
        if let Err(e) = self.open_log(first_seq) {
            return (0, Some(e));
        }
        let Some(f) = self.log.as_mut() else {
            return (0, Some("log unavailable".into()));
        };
        let (written, err) = write_all_counted(f, buf);
        self.log_bytes += written as u64;
        if written > 0 {
            self.dirty = true;
        }
        match err {
            None => (written, None),
            Some(e) => {
                let path = self
                    .log_path
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                if let Some(f) = self.log.take() {
                    let _ = f.sync_data();
                }
                (
                    written,
                    Some(format!(
                        "write to {path} failed after {written} of {} bytes: {e}",
                        buf.len()
                    )),
                )
            }
        }
    }

    /// Appends every feedback event of `msgs` to the log in one write and reports which
    /// tickets are durable. Returns the highest ticket whose record is completely in the
    /// log (all of them when logging is off): later events of the group failed, are
    /// answered `false`, and must not be learned from.
    fn log_events(
        &mut self,
        msgs: &[Msg],
        lines: &mut Vec<u8>,
        ends: &mut Vec<(usize, u64)>,
    ) -> u64 {
        let base = self.seq_base;
        let logging = self.cfg.log_dir.is_some();
        let (n, max_ticket) = encode_group(msgs, base, logging, lines, ends);
        let shared = self.shared.clone();
        let c = &shared.counters;
        c.dequeued.fetch_add(n, Ordering::Relaxed);
        if n == 0 {
            return 0;
        }
        self.high_water = self.high_water.max(base + max_ticket);
        if self.pg.is_some() {
            // Answered by the PostgreSQL writer once the group is committed or spooled
            // (stream_pg.rs); local events are not learned from on PostgreSQL.
            self.pg_log(msgs, base, n, max_ticket);
            return u64::MAX;
        }
        if !logging {
            c.durable_ticket.fetch_max(max_ticket, Ordering::AcqRel);
            self.notifier.notify("durable", max_ticket, Value::Null);
            return u64::MAX;
        }
        let first_seq = base + ends.first().map_or(0, |e| e.1);
        let (written, err) = self.append(lines, first_seq);
        let done = ends.partition_point(|&(end, _)| end <= written);
        let ok_through = if done > 0 { ends[done - 1].1 } else { 0 };
        if done > 0 {
            c.durable_ticket.fetch_max(ok_through, Ordering::AcqRel);
            c.durable_seq.fetch_max(base + ok_through, Ordering::AcqRel);
            self.notifier.notify("durable", ok_through, Value::Null);
        }
        match err {
            None => self.set_log_healthy(true),
            Some(e) => {
                self.set_log_healthy(false);
                let failed = (ends.len() - done) as u64;
                c.log_failed.fetch_add(failed, Ordering::Relaxed);
                self.error(format!(
                    "feedback log: {e}; {done} event(s) of this write are logged, {failed} are not (answered false, not learned from)"
                ));
                self.notifier
                    .notify("durable-failed", max_ticket, Value::Null);
            }
        }
        ok_through
    }

    /// Scores one feedback against what serves (error statistics and drift), buffers it
    /// for learning when it has usable features, then runs a cycle when the buffer is full
    /// or drift was detected — after buffering, so a cycle never marks as processed an
    /// event that was not in it.
    fn ingest(&mut self, seq: u64, features: &[f64], prediction: f64, actual: f64) {
        let served = self.shared.current.load().predict(features);
        let residual = served.unwrap_or(prediction) - actual;
        // Replayed events were scored by the process that logged them; drift is about
        // what arrives now.
        let alarm = !self.replaying && self.drift.update(residual);
        let dims = self.learner.as_ref().map(|l| l.features());
        let usable = !features.is_empty() && dims.is_none_or(|d| d == features.len());
        if usable {
            if self.learner.is_none() {
                self.learner = Some(OnlineLinear::new(features.len(), self.cfg.online.clone()));
            }
            if self.trees.is_some() {
                self.observe_for_refit(features, served.unwrap_or(prediction), actual);
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
        } else {
            self.shared
                .counters
                .processed
                .fetch_add(1, Ordering::Relaxed);
        }
        self.ingested = self.ingested.max(seq);
        if alarm {
            self.shared.counters.drifts.fetch_add(1, Ordering::Relaxed);
            self.notifier.notify(
                "drift",
                seq,
                json!({ "seq": seq, "bufferSize": self.buffer.len() }),
            );
            self.cycle("drift", true);
        } else if self.buffer.len() >= self.cfg.buffer_size {
            self.cycle("buffer-full", false);
        }
        self.maybe_refit();
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
        let mut report = match (&self.learner, samples.len() >= 2) {
            (Some(cur), true) => {
                let n_val = ((samples.len() as f64 * self.cfg.validation_fraction).round()
                    as usize)
                    .clamp(1, samples.len() - 1);
                // Linear: the learner is the model. Trees: it corrects them, so it learns
                // and is scored on what the trees leave, `actual − trees(x)`.
                let target = |s: &Sample| match &self.trees {
                    Some(t) => s.y - t.predict(&s.x),
                    None => s.y,
                };
                let (train, val) = samples.split_at(samples.len() - n_val);
                let mut cand = cur.clone();
                for s in train {
                    cand.learn(&s.x, target(s));
                }
                let val_y: Vec<f64> = val.iter().map(target).collect();
                let mse = |m: &OnlineLinear| {
                    val.iter()
                        .zip(&val_y)
                        .map(|(s, y)| (m.predict(&s.x) - y).powi(2))
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
                let time = now_ms();
                let mut report = json!({
                    "reason": reason,
                    "accepted": accepted,
                    "family": self.family().name(),
                    "samples": keep,
                    "trainSamples": train.len(),
                    "validationSamples": val.len(),
                    "currentMse": cur_mse,
                    "candidateMse": cand_mse,
                    "improvement": improvement,
                    "threshold": self.cfg.update_threshold,
                    "time": time,
                    // The old module's fields.
                    "timestamp": time,
                    "metrics": {
                        "mse": if accepted { cand_mse } else { cur_mse },
                        "candidateMse": cand_mse,
                        "baselineMse": cur_mse,
                        "improvement": improvement,
                        "samples": keep,
                    },
                });
                if accepted {
                    self.remember_previous();
                    self.learner = Some(cand);
                    if self.cfg.enable_hot_swap {
                        self.publish("online".into());
                        self.shared.counters.swaps.fetch_add(1, Ordering::Relaxed);
                    }
                    self.save_learner();
                    self.shared
                        .counters
                        .updates_accepted
                        .fetch_add(1, Ordering::Relaxed);
                } else {
                    self.shared
                        .counters
                        .updates_rejected
                        .fetch_add(1, Ordering::Relaxed);
                }
                let serving = self.shared.current.load().version;
                report["modelVersion"] = serving.into();
                report["version"] = format!("v{serving}").into();
                report["modelPath"] = self.shared.current_path.lock().clone().into();
                report["durationMs"] = (started.elapsed().as_secs_f64() * 1000.0).into();
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
        let accepted = report.as_ref().is_some_and(|r| r["accepted"] == true);
        self.pg_after_cycle(report.as_mut(), accepted);
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

    /// Keeps what serves now, so that `rollback` can restore all of it.
    fn remember_previous(&mut self) {
        let prev_snap = self.shared.current.load_full();
        self.previous = Some(Previous {
            learner: self.learner.take(),
            snap: prev_snap,
            base_path: self.base_path.clone(),
            names: self.names.clone(),
            trees: self.trees.clone(),
            origin: self.origin.clone(),
        });
    }

    /// Serves a model file of any family, or refuses it (naming the file and why) and
    /// changes nothing.
    fn hot_swap(&mut self, path: &Path, source: String) -> Result<Value, String> {
        let m = Model::load(path)?;
        if let Some(l) = &self.learner {
            if l.features() != m.n_features() {
                let what = match m.family() {
                    Family::Linear => "weights",
                    _ => "features",
                };
                return Err(format!(
                    "{} has {} {what} but the serving model has {}",
                    path.display(),
                    m.n_features(),
                    l.features()
                ));
            }
        }
        self.remember_previous();
        self.install(m);
        self.base_path = path.to_path_buf();
        self.origin = self.base_path.clone();
        self.publish(source);
        *self.shared.current_path.lock() = path.display().to_string();
        self.shared.counters.swaps.fetch_add(1, Ordering::Relaxed);
        self.save_learner();
        Ok(json!({
            "swapped": true,
            "modelVersion": self.version,
            "path": path.display().to_string(),
            "family": self.family().name(),
        }))
    }

    /// Serves what the last swap or accepted update replaced — its learner, its path and
    /// its label in the saved state — so a restart resumes what really serves.
    fn rollback(&mut self) -> bool {
        let Some(p) = self.previous.take() else {
            return false;
        };
        self.learner = p.learner;
        self.base_path = p.base_path;
        self.names = p.names;
        self.trees = p.trees;
        self.origin = p.origin;
        self.refit = None;
        self.shared.refitting.store(false, Ordering::Release);
        self.shared.current.store(p.snap);
        *self.shared.current_path.lock() = self.base_path.display().to_string();
        self.shared
            .counters
            .rollbacks
            .fetch_add(1, Ordering::Relaxed);
        self.save_learner();
        true
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
                    Err(err) => self.error(format!(
                        "registry production v{}: {err}; still serving {}",
                        e.version,
                        self.base_path.display()
                    )),
                }
            }
            Ok(_) => {}
            Err(e) => self.error(format!("registry: {e}")),
        }
    }

    /// Tree families, per usable feedback: keeps it for the next refit's window and, while
    /// a fitted refit is being validated, scores it against what serves. `served` is what
    /// the serving model predicted before learning anything from this event.
    fn observe_for_refit(&mut self, x: &[f64], served: f64, actual: f64) {
        if self.cfg.refit_window > 0 {
            if self.window.len() >= self.cfg.refit_window {
                self.window.pop_front();
            }
            self.window.push_back((x.to_vec(), actual));
        }
        self.since_refit += 1;
        // Replayed events may predate the refit's window: only live ones validate it.
        if self.replaying {
            return;
        }
        if let Some(Refit::Validating {
            model,
            n,
            cur_se,
            cand_se,
            ..
        }) = &mut self.refit
        {
            if x.len() == model.d {
                *cur_se += (served - actual).powi(2);
                *cand_se += (model.predict(x) - actual).powi(2);
                *n += 1;
            }
        }
    }

    /// Starts a refit of the serving trees when one is due (`refit_every` events or
    /// `refit_interval_ms` since the last one, with at least `MIN_REFIT_ROWS` in the window).
    fn maybe_refit(&mut self) {
        let Some(trees) = self.trees.clone() else {
            return;
        };
        // On PostgreSQL the fleet's trainer decides what serves; without hot swap nothing
        // would serve the refit.
        if self.refit.is_some()
            || self.replaying
            || self.pg.is_some()
            || !self.cfg.enable_hot_swap
            || self.window.len() < MIN_REFIT_ROWS
        {
            return;
        }
        let by_count = self.cfg.refit_every > 0 && self.since_refit >= self.cfg.refit_every as u64;
        let by_time = self.cfg.refit_interval_ms > 0
            && self.since_refit > 0
            && self.last_refit.elapsed() >= Duration::from_millis(self.cfg.refit_interval_ms);
        if !(by_count || by_time) {
            return;
        }
        self.since_refit = 0;
        self.last_refit = Instant::now();
        let d = trees.d;
        let rows: Vec<&(Vec<f64>, f64)> = self.window.iter().filter(|r| r.0.len() == d).collect();
        let n = rows.len();
        let mut x = Vec::with_capacity(n * d);
        let mut y = Vec::with_capacity(n);
        for (rx, ry) in rows {
            x.extend_from_slice(rx);
            y.push(*ry);
        }
        // gbm picks its tree count on the window's newest fifth; forests use every row.
        let family = trees.family;
        let n_stop = if family == Family::Gbm { n / 5 } else { 0 };
        let train: Vec<usize> = (0..n - n_stop).collect();
        let stop: Vec<usize> = (n - n_stop..n).collect();
        let params = TreeParams::from_hyperparameters(&trees.hyperparameters);
        let (tx, rx) = std::sync::mpsc::channel();
        let job = move || {
            let fit = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                fit_trees(family, &x, &y, d, &train, &stop, &params)
            }))
            .unwrap_or_else(|p| {
                Err(p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "the fit panicked".into()))
            });
            // The worker may have moved on (swap, rollback, shutdown): then nobody listens.
            let _ = tx.send(fit);
        };
        match super::runtime::spawn_long(job) {
            Ok(_) => {
                self.refit = Some(Refit::Fitting {
                    rx,
                    started: Instant::now(),
                    rows: n,
                });
                self.shared.refitting.store(true, Ordering::Release);
            }
            Err(e) => self.error(format!("refit not started: {e}")),
        }
    }

    /// Called every loop: takes a finished fit, decides a validated one, or starts the next
    /// refit when its interval has passed.
    fn poll_refit(&mut self) {
        match &mut self.refit {
            Some(Refit::Fitting { rx, started, rows }) => {
                let (rows, fit_ms) = (*rows, started.elapsed().as_secs_f64() * 1000.0);
                match rx.try_recv() {
                    Err(std::sync::mpsc::TryRecvError::Empty) => {}
                    Ok(Ok(t)) => {
                        let need = ((rows as f64 * self.cfg.validation_fraction).round() as usize)
                            .clamp(20, 500);
                        self.refit = Some(Refit::Validating {
                            model: Arc::new(t),
                            rows,
                            fit_ms,
                            need,
                            n: 0,
                            cur_se: 0.0,
                            cand_se: 0.0,
                        });
                    }
                    Ok(Err(e)) => {
                        self.refit = None;
                        self.shared.refitting.store(false, Ordering::Release);
                        self.error(format!(
                            "refit failed: {e}; still serving {}",
                            self.base_path.display()
                        ));
                    }
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        self.refit = None;
                        self.shared.refitting.store(false, Ordering::Release);
                        self.error("refit stopped without a result".into());
                    }
                }
            }
            Some(Refit::Validating { n, need, .. }) if *n >= *need => self.finish_refit(),
            Some(Refit::Validating { .. }) => {}
            None => self.maybe_refit(),
        }
    }

    /// Whether the worker should wake up soon to collect a fit.
    fn refit_fitting(&self) -> bool {
        matches!(self.refit, Some(Refit::Fitting { .. }))
    }

    /// The gate: the refit (fresh trees, zero corrector) against what serves (trees +
    /// corrector) on the same unseen rows; it swaps in when its relative MSE improvement
    /// reaches `update_threshold`, once its file is saved (a restart then serves it too).
    fn finish_refit(&mut self) {
        let Some(Refit::Validating {
            model,
            rows,
            fit_ms,
            n,
            cur_se,
            cand_se,
            ..
        }) = self.refit.take()
        else {
            return;
        };
        self.shared.refitting.store(false, Ordering::Release);
        let started = Instant::now();
        let (cur_mse, cand_mse) = (cur_se / n as f64, cand_se / n as f64);
        let improvement = if cur_mse > 0.0 {
            (cur_mse - cand_mse) / cur_mse
        } else {
            0.0
        };
        let family = model.family;
        let mut accepted = improvement.is_finite() && improvement >= self.cfg.update_threshold;
        let mut error = None;
        if accepted {
            match self.save_refit(&model, cand_mse, n) {
                Ok(path) => {
                    self.remember_previous();
                    self.learner = Some(OnlineLinear::new(model.d, self.cfg.online.clone()));
                    self.trees = Some(model);
                    self.base_path = path;
                    let serving = self.base_path.display().to_string();
                    self.publish("refit".into());
                    *self.shared.current_path.lock() = serving;
                    self.shared.counters.swaps.fetch_add(1, Ordering::Relaxed);
                    self.save_learner();
                    self.prune_refits();
                }
                Err(e) => {
                    accepted = false;
                    self.error(format!("refit not swapped in: {e}"));
                    error = Some(e);
                }
            }
        }
        let c = &self.shared.counters;
        c.refits.fetch_add(1, Ordering::Relaxed);
        if accepted {
            c.refits_accepted.fetch_add(1, Ordering::Relaxed);
        } else {
            c.refits_rejected.fetch_add(1, Ordering::Relaxed);
        }
        let time = now_ms();
        let serving = self.shared.current.load().version;
        let mut report = json!({
            "reason": "refit",
            "accepted": accepted,
            "family": family.name(),
            "samples": rows,
            "trainSamples": rows,
            "validationSamples": n,
            "currentMse": cur_mse,
            "candidateMse": cand_mse,
            "improvement": improvement,
            "threshold": self.cfg.update_threshold,
            "fitMs": fit_ms,
            "time": time,
            "timestamp": time,
            "metrics": {
                "mse": if accepted { cand_mse } else { cur_mse },
                "candidateMse": cand_mse,
                "baselineMse": cur_mse,
                "improvement": improvement,
                "samples": rows,
            },
            "modelVersion": serving,
            "version": format!("v{serving}"),
            "modelPath": self.shared.current_path.lock().clone(),
            "durationMs": fit_ms + started.elapsed().as_secs_f64() * 1000.0,
        });
        if let Some(e) = error {
            report["error"] = e.into();
        }
        {
            let mut recent = self.shared.recent_updates.lock();
            recent.push_back(report.clone());
            while recent.len() > 10 {
                recent.pop_front();
            }
        }
        self.notifier
            .notify(if accepted { "update" } else { "rejected" }, 0, report);
    }

    /// `<stateDir>/<stem>.refit-<ms>.json`: the refit in the family's envelope.
    fn save_refit(
        &self,
        t: &Arc<TreeModel>,
        mse: f64,
        validated: usize,
    ) -> Result<PathBuf, String> {
        let stem = super::registry::stem_of(&self.cfg.model_path);
        let ms = now_ms() as u64;
        let mut path = self.cfg.state_dir.join(format!("{stem}.refit-{ms}.json"));
        for k in 1..1000 {
            if !path.exists() {
                break;
            }
            path = self
                .cfg
                .state_dir
                .join(format!("{stem}.refit-{ms}-{k}.json"));
        }
        let m = Model {
            kind: ModelKind::Trees(TreeModel::clone(t)),
            features: self.names.as_ref().map(|n| n.as_ref().clone()),
            metrics: json!({ "mse": mse, "validationSamples": validated, "refitOf": self.origin.display().to_string() }),
        };
        fs::create_dir_all(&self.cfg.state_dir)
            .map_err(|e| format!("cannot create {}: {e}", self.cfg.state_dir.display()))?;
        write_atomic(&path, m.to_json_pretty().as_bytes())
            .map_err(|e| format!("cannot save {}: {e}", path.display()))?;
        Ok(path)
    }

    /// Keeps the newest refit files, and any that serves or that a rollback would serve.
    fn prune_refits(&self) {
        let stem = super::registry::stem_of(&self.cfg.model_path);
        let prefix = format!("{stem}.refit-");
        let Ok(rd) = fs::read_dir(&self.cfg.state_dir) else {
            return;
        };
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".json"))
            })
            .filter_map(|p| Some((fs::metadata(&p).ok()?.modified().ok()?, p)))
            .collect();
        files.sort();
        let keep = |p: &PathBuf| {
            *p == self.base_path || self.previous.as_ref().is_some_and(|q| q.base_path == *p)
        };
        let excess = files.len().saturating_sub(3);
        for (_, p) in files.into_iter().take(excess) {
            if !keep(&p) {
                let _ = fs::remove_file(p);
            }
        }
    }

    /// Tries to make the log writable again (after a failure nothing is open).
    fn probe_log(&mut self) -> bool {
        if self.cfg.log_dir.is_none() {
            return true;
        }
        if self.log.is_none() {
            match self.open_log(self.high_water + 1) {
                Ok(()) => self.set_log_healthy(true),
                Err(e) => {
                    self.set_log_healthy(false);
                    self.error(format!("feedback log: {e}"));
                }
            }
        }
        self.shared.log_healthy.load(Ordering::Acquire)
    }

    fn handle(&mut self, id: u64, req: Request) {
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
            Request::Rollback => Ok(json!(self.rollback())),
            Request::SetTimer(on) => {
                self.timer = on;
                self.next_tick =
                    Instant::now() + Duration::from_millis(self.cfg.update_interval_ms.max(1));
                Ok(json!(on))
            }
            Request::Flush => {
                self.pg_drain();
                let healthy = self.probe_log();
                self.fsync();
                self.write_watermark();
                Ok(json!(
                    healthy && self.shared.log_healthy.load(Ordering::Acquire)
                ))
            }
            #[cfg(test)]
            Request::Panic => panic!("injected"),
            // Handled by the run loop (it must drain the queue first).
            Request::Shutdown => return,
        };
        let payload = match reply {
            Ok(v) => v,
            Err(e) => json!({ "error": e }),
        };
        self.notifier.notify("reply", id, payload);
    }

    /// Final state to disk, then the folder is released — before the reply, so a caller
    /// that starts a new stream on the same log as soon as `cleanup()` resolves gets it.
    fn finish(&mut self, reply: Option<u64>) {
        self.pg_finish();
        self.fsync();
        self.write_watermark();
        self.save_learner();
        if self.log_bytes == 0 {
            if let (Some(_), Some(p)) = (self.log.take(), &self.log_path) {
                let _ = fs::remove_file(p);
            }
        }
        self.log = None;
        self.lock = None;
        if let Some(id) = reply {
            self.notifier.notify("reply", id, json!(true));
        }
    }

    /// Before serving: the database (when configured), the model, the log replay; then
    /// "ready". False when nothing can start (the database it was told to use is out of
    /// reach): initialize() resolves false with the cause in lastError, and every later
    /// call is refused.
    fn startup(&mut self) -> bool {
        if let Err(e) = self.pg_start() {
            self.error(format!("postgres: {e}"));
            self.shared.closed.store(true, Ordering::Release);
            self.notifier.notify(
                "ready",
                0,
                json!({ "serving": false, "postgres": false, "lastError": self.shared.last_error.lock().clone() }),
            );
            self.lock = None;
            return false;
        }
        let serving = self.load_initial();
        self.replay();
        if self.pg.is_some() {
            // Serve what is in production; never resume unpublished local learning.
            self.pg_reset();
        }
        self.notifier.notify(
            "ready",
            0,
            json!({
                "modelVersion": self.version,
                "replayed": self.shared.counters.replayed.load(Ordering::Relaxed),
                "serving": serving,
                "logHealthy": self.cfg.log_dir.is_none() || self.shared.log_healthy.load(Ordering::Acquire),
                "postgres": self.cfg.postgres.as_ref().map(|_| true),
                "lastError": self.shared.last_error.lock().clone(),
            }),
        );
        true
    }

    /// Learns from logged groups and answers their requests, in arrival order. Events whose
    /// write failed were answered false: they are not learned from. Stops after the group
    /// holding a Shutdown and returns its id; the groups behind it stay in `groups`.
    fn learn(&mut self, groups: &mut VecDeque<Logged>) -> Option<u64> {
        while let Some(g) = groups.pop_front() {
            if g.fast {
                self.shared
                    .counters
                    .dequeued
                    .fetch_add(g.events(), Ordering::Relaxed);
            }
            let (ok, base) = (g.ok, self.seq_base);
            // On PostgreSQL, local events are learned by the fleet's trainer, not here.
            let local = self.pg.is_none();
            let mut shutdown = None;
            for m in g.msgs {
                match m {
                    Msg::Request {
                        id,
                        req: Request::Shutdown,
                    } => shutdown = Some(id),
                    Msg::Request { id, req } => self.handle(id, req),
                    m => m.for_each_event(|t, x, p, y| {
                        if local && t <= ok {
                            self.ingest(base + t, x, p, y)
                        }
                    }),
                }
            }
            if shutdown.is_some() {
                return shutdown;
            }
        }
        None
    }

    /// 3. Timers: the fsync cadence, the database, the registry and the periodic cycle.
    fn on_tick(&mut self, now: Instant) {
        let fsync_every = Duration::from_millis(self.cfg.fsync_interval_ms.max(1));
        let tick_every = Duration::from_millis(self.cfg.update_interval_ms.max(1));
        if self.dirty && now >= self.last_fsync + fsync_every {
            self.fsync();
            // Persist the high-water mark with the log, so that numbers never go back
            // even if the log files are lost before the next cycle writes it.
            if self.high_water > self.high_water_written {
                self.write_watermark();
            }
        }
        self.pg_tick();
        self.poll_refit();
        if self.timer && now >= self.next_tick {
            self.next_tick = now + tick_every;
            self.poll_registry();
            if self.buffer.len() >= self.cfg.min_samples_for_update {
                self.cycle("timer", false);
            }
        }
    }

    /// When `on_tick` has something to do next (`last_tick`: when it last ran).
    fn next_deadline(&self, last_tick: Instant) -> Instant {
        let mut at = Instant::now() + Duration::from_secs(3600);
        if self.timer {
            at = at.min(self.next_tick);
        }
        if self.dirty {
            at = at.min(self.last_fsync + Duration::from_millis(self.cfg.fsync_interval_ms.max(1)));
        }
        if self.pg.is_some() {
            // Swap signals and the trainer's reads are checked at least this often.
            at = at.min(last_tick + Duration::from_millis(10));
        }
        if self.refit_fitting() {
            // A finished fit is collected soon, not at the next event or timer.
            at = at.min(last_tick + Duration::from_millis(20));
        }
        at
    }

    /// After a Shutdown: anything that raced in behind it — single events and batches,
    /// logged already (`logged`) or still queued (`rest`) — is logged and buffered (so
    /// replayed on the next start), not learned from and not lost. Then the final state.
    fn close(&mut self, id: u64, logged: VecDeque<Logged>, rest: Vec<Msg>) {
        let mut lines = Vec::new();
        let mut ends = Vec::new();
        let ok = self.log_events(&rest, &mut lines, &mut ends);
        let base = self.seq_base;
        let local = self.pg.is_none();
        let groups = logged.into_iter().chain(std::iter::once(Logged {
            msgs: rest,
            ok,
            fast: false,
        }));
        for g in groups {
            if g.fast {
                self.shared
                    .counters
                    .dequeued
                    .fetch_add(g.events(), Ordering::Relaxed);
            }
            for m in &g.msgs {
                m.for_each_event(|t, x, _, y| {
                    if local && t <= g.ok {
                        self.buffer.push(Sample {
                            seq: base + t,
                            x: x.to_vec(),
                            y,
                        });
                        self.ingested = self.ingested.max(base + t);
                    }
                });
            }
        }
        self.shared
            .counters
            .buffered
            .store(self.buffer.len() as u64, Ordering::Relaxed);
        self.finish(Some(id));
    }
}

/// Feedback already logged and acknowledged, waiting to be learned from: `ok` is the
/// highest ticket whose record is in the log (later ones failed). `fast`: not yet counted
/// as dequeued (the queue bound covers it until learned); false only for a group logged
/// by `close` itself.
struct Logged {
    msgs: Vec<Msg>,
    ok: u64,
    fast: bool,
}

impl Logged {
    fn events(&self) -> u64 {
        let mut n = 0;
        for m in &self.msgs {
            m.for_each_event(|_, _, _, _| n += 1);
        }
        n
    }
}

/// Moves up to 4096 messages (one group, one log write) behind `first` out of the queue.
fn group_from(first: Msg, rx: &mut mpsc::Receiver<Msg>) -> Vec<Msg> {
    let mut group = Vec::with_capacity(64);
    group.push(first);
    while group.len() < 4096 {
        match rx.try_recv() {
            Ok(m) => group.push(m),
            Err(_) => break,
        }
    }
    group
}

/// A job's result, or its panic carried on to the stream's task (which reports it).
fn resumed<T>(r: Result<T, tokio::task::JoinError>) -> T {
    match r {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => std::panic::resume_unwind(Box::new(format!("blocking job failed: {e}"))),
    }
}

type Away = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<(Worker, VecDeque<Logged>, Option<u64>), tokio::task::JoinError>,
            > + Send,
    >,
>;

/// A [`FastLog`] fsync on the blocking side: when it started, and its outcome.
type Syncing = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<(Instant, std::io::Result<()>), tokio::task::JoinError>,
            > + Send,
    >,
>;

/// The stream's task on the shared runtime. The worker is either *home* (owned here, idle:
/// a new group is logged and acknowledged at once) or *away* on the blocking side,
/// learning what was logged and running the timers — update cycles, fsyncs, registry
/// checks. While it is away, [`FastLog`] keeps logging and acknowledging new groups, so a
/// long cycle never delays a durable ack; they are learned, in order, when it is back.
async fn drive(mut w: Worker, mut rx: mpsc::Receiver<Msg>) {
    let (started, ok) = resumed(
        super::runtime::run_blocking(move || {
            let ok = w.startup();
            (w, ok)
        })
        .await,
    );
    if !ok {
        return;
    }
    let mut fast = FastLog::new(&started);
    let mut home = Some(started);
    let mut away: Option<Away> = None;
    let mut pending: VecDeque<Logged> = VecDeque::new();
    let (mut lines, mut ends) = (Vec::new(), Vec::new());
    let mut shutdown: Option<u64> = None;
    let mut closed = false;
    let mut due = false;
    let mut last_tick = Instant::now();
    let mut syncing: Option<Syncing> = None;
    loop {
        let Some(mut w) = home.take() else {
            let job = away.as_mut().expect("the worker is home or away");
            tokio::select! {
                r = job => {
                    away = None;
                    let (mut w, rest, sd) = resumed(r);
                    if let Some(f) = syncing.take() {
                        fast.fsync_done(resumed(f.await));
                    }
                    fast.settle(&mut w);
                    // Groups behind a Shutdown come before anything logged since.
                    for g in rest.into_iter().rev() {
                        pending.push_front(g);
                    }
                    if sd.is_some() {
                        shutdown = sd;
                    } else {
                        last_tick = Instant::now();
                    }
                    home = Some(w);
                }
                m = rx.recv(), if !closed && fast.ready() => match m {
                    Some(m) => {
                        let group = group_from(m, &mut rx);
                        let ok = fast.log(&group);
                        pending.push_back(Logged { msgs: group, ok, fast: true });
                    }
                    None => closed = true,
                },
                _ = tokio::time::sleep_until(fast.fsync_at().into()), if fast.dirty && syncing.is_none() => {
                    syncing = fast.start_fsync();
                }
                r = async { syncing.as_mut().expect("guarded").await }, if syncing.is_some() => {
                    syncing = None;
                    fast.fsync_done(resumed(r));
                }
            }
            continue;
        };
        if let Some(id) = shutdown {
            // Closed before the drain: a send racing with cleanup() is then either in
            // `rest` (logged, replayed on the next start) or refused (answered false),
            // never accepted and left in a queue nobody reads. `recv` ends only when no
            // send that got in before the close is still in flight.
            rx.close();
            let mut rest = Vec::new();
            while let Some(m) = rx.recv().await {
                rest.push(m);
            }
            let logged = std::mem::take(&mut pending);
            resumed(super::runtime::run_blocking(move || w.close(id, logged, rest)).await);
            return;
        }
        if !pending.is_empty() || due {
            due = false;
            fast.arm(&w);
            let mut groups = std::mem::take(&mut pending);
            away = Some(Box::pin(super::runtime::run_blocking(move || {
                let sd = w.learn(&mut groups);
                if sd.is_none() {
                    w.on_tick(Instant::now());
                }
                (w, groups, sd)
            })));
            continue;
        }
        if closed {
            // Every handle is gone: no shutdown request will come.
            resumed(super::runtime::run_blocking(move || w.finish(None)).await);
            return;
        }
        let deadline = w.next_deadline(last_tick);
        tokio::select! {
            m = rx.recv() => match m {
                Some(m) => {
                    let group = group_from(m, &mut rx);
                    // A write to the page cache, made here: under `block_in_place` (which
                    // hands this thread's other tasks to another thread on every call) 50
                    // busy streams grew by +35 threads instead of +10. On PostgreSQL the
                    // store's `block_on` leaves the worker by itself.
                    let ok = w.log_events(&group, &mut lines, &mut ends);
                    let g = Logged { msgs: group, ok, fast: true };
                    // Counted as dequeued when learned, as FastLog's groups: until then the
                    // queue bound covers them and queueDepth shows them.
                    w.shared.counters.dequeued.fetch_sub(g.events(), Ordering::Relaxed);
                    pending.push_back(g);
                }
                None => closed = true,
            },
            _ = tokio::time::sleep_until(deadline.into()) => due = true,
        }
        home = Some(w);
    }
}

/// Logs and acknowledges feedback while the worker is away, so that a long update cycle
/// never holds up durable acks. It writes through a second handle on the worker's open
/// log file (same open file, same offset), only while the worker cannot write, and hands
/// what it did back when the worker returns ([`FastLog::settle`]). It follows the
/// worker's rules — a record is acknowledged once completely written, a failed write
/// answers the rest false and closes the file for good — and never opens or rotates a
/// file: when the worker has no open file, or on PostgreSQL, new events wait in the queue
/// for the worker.
struct FastLog {
    shared: Arc<Shared>,
    notifier: Arc<dyn Notifier + Sync>,
    logging: bool,
    fsync_every: Duration,
    enabled: bool,
    file: Option<(PathBuf, File)>,
    base: u64,
    high_water: u64,
    bytes: u64,
    dirty: bool,
    last_fsync: Instant,
    synced: Option<Instant>,
    broken: bool,
    lines: Vec<u8>,
    ends: Vec<(usize, u64)>,
}

impl FastLog {
    fn new(w: &Worker) -> Self {
        Self {
            shared: w.shared.clone(),
            notifier: w.notifier.clone(),
            logging: w.cfg.log_dir.is_some(),
            fsync_every: Duration::from_millis(w.cfg.fsync_interval_ms.max(1)),
            enabled: false,
            file: None,
            base: 0,
            high_water: 0,
            bytes: 0,
            dirty: false,
            last_fsync: Instant::now(),
            synced: None,
            broken: false,
            lines: Vec::new(),
            ends: Vec::new(),
        }
    }

    /// Takes over logging while `w` goes away.
    fn arm(&mut self, w: &Worker) {
        self.base = w.seq_base;
        self.high_water = w.high_water;
        self.bytes = 0;
        self.dirty = false;
        self.synced = None;
        self.broken = false;
        self.last_fsync = w.last_fsync;
        self.enabled = w.pg.is_none()
            && (!self.logging
                || match (&w.log, &w.log_path) {
                    (Some(f), Some(p)) => {
                        if self.file.as_ref().map(|(q, _)| q) != Some(p) {
                            self.file = f.try_clone().ok().map(|c| (p.clone(), c));
                        }
                        self.file.is_some()
                    }
                    _ => {
                        self.file = None;
                        false
                    }
                });
    }

    fn ready(&self) -> bool {
        self.enabled
            && !self.broken
            && (!self.logging || self.shared.log_healthy.load(Ordering::Acquire))
    }

    fn fsync_at(&self) -> Instant {
        self.last_fsync + self.fsync_every
    }

    /// Hands the writes back to the returned worker.
    fn settle(&mut self, w: &mut Worker) {
        self.enabled = false;
        w.high_water = w.high_water.max(self.high_water);
        let Some((path, file)) = &self.file else {
            return;
        };
        if w.log.is_some() && w.log_path.as_ref() == Some(path) {
            w.log_bytes += self.bytes;
            if let Some(t) = self.synced.filter(|t| *t > w.last_fsync) {
                w.last_fsync = t;
                w.dirty = false;
            }
            w.dirty |= self.dirty;
            if self.broken {
                // As after the worker's own failed write: the next record starts a new file.
                if let Some(f) = w.log.take() {
                    let _ = f.sync_data();
                }
            }
        } else if self.dirty {
            // The worker moved to another file meanwhile: this one is done, make it durable.
            let _ = file.sync_data();
        }
        if self.broken || w.log.is_none() {
            self.file = None;
        }
    }

    /// Starts an fsync of what was written so far on the blocking side (an fsync can take
    /// milliseconds; the runtime's threads must not wait for it). Writes made meanwhile
    /// count as unsynced again.
    fn start_fsync(&mut self) -> Option<Syncing> {
        let file = self.file.as_ref()?.1.try_clone().ok()?;
        let at = Instant::now();
        self.dirty = false;
        self.last_fsync = at;
        Some(Box::pin(super::runtime::run_blocking(move || {
            (at, file.sync_data())
        })))
    }

    fn fsync_done(&mut self, (at, r): (Instant, std::io::Result<()>)) {
        match r {
            Ok(()) => self.synced = Some(at),
            Err(e) => {
                self.shared.log_healthy.store(false, Ordering::Release);
                self.error(format!("feedback log fsync failed: {e}"));
                self.broken = true;
            }
        }
    }

    fn error(&self, msg: String) {
        *self.shared.last_error.lock() = Some(msg.clone());
        self.notifier.notify("error", 0, json!({ "message": msg }));
    }

    /// `Worker::log_events` for a group that arrives while the worker is away.
    fn log(&mut self, msgs: &[Msg]) -> u64 {
        let (base, logging) = (self.base, self.logging);
        let (n, max_ticket) = encode_group(msgs, base, logging, &mut self.lines, &mut self.ends);
        if n == 0 {
            return 0;
        }
        self.high_water = self.high_water.max(base + max_ticket);
        let c = &self.shared.counters;
        if !logging {
            c.durable_ticket.fetch_max(max_ticket, Ordering::AcqRel);
            self.notifier.notify("durable", max_ticket, Value::Null);
            return u64::MAX;
        }
        let Some((path, file)) = &self.file else {
            return 0; // not reached: ready() is false without a file
        };
        let buf = &self.lines;
        let (written, err) = write_all_counted(&mut &*file, buf);
        self.bytes += written as u64;
        if written > 0 {
            self.dirty = true;
        }
        let ends = &self.ends;
        let done = ends.partition_point(|&(end, _)| end <= written);
        let ok_through = if done > 0 { ends[done - 1].1 } else { 0 };
        if done > 0 {
            c.durable_ticket.fetch_max(ok_through, Ordering::AcqRel);
            c.durable_seq.fetch_max(base + ok_through, Ordering::AcqRel);
            self.notifier.notify("durable", ok_through, Value::Null);
        }
        match err {
            None => self.shared.log_healthy.store(true, Ordering::Release),
            Some(e) => {
                let e = format!(
                    "write to {} failed after {written} of {} bytes: {e}",
                    path.display(),
                    buf.len()
                );
                let failed = (ends.len() - done) as u64;
                self.shared.log_healthy.store(false, Ordering::Release);
                c.log_failed.fetch_add(failed, Ordering::Relaxed);
                self.broken = true;
                self.error(format!(
                    "feedback log: {e}; {done} event(s) of this write are logged, {failed} are not (answered false, not learned from)"
                ));
                self.notifier
                    .notify("durable-failed", max_ticket, Value::Null);
            }
        }
        ok_through
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
            // In one process the worker must exit before the folder's lock is free.
            let StreamHandle { tx, done, .. } = h;
            drop(tx);
            let _ = done.lock().take().unwrap().recv();
        }
        let (tx, rx) = channel();
        let h = StreamHandle::start(cfg, Box::new(ChanNotifier(Mutex::new(tx)))).unwrap();
        let (_, ready) = wait_for(&rx, "ready");
        assert_eq!(ready["replayed"], 30);
        assert_eq!(h.shared.counters.buffered.load(Ordering::SeqCst), 30);
        let ticket = h.send_feedback(vec![1.0, 1.0], 0.0, 1.0).unwrap();
        assert_eq!(ticket, 1, "tickets count per start");
        let (t, _) = wait_for(&rx, "durable");
        assert_eq!(t, 1);
        assert_eq!(
            h.shared.counters.durable_seq.load(Ordering::SeqCst),
            31,
            "sequence numbers continue after the log"
        );
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
        h.tx.blocking_send(Msg::Request {
            id: 1,
            req: Request::Shutdown,
        })
        .unwrap();
        let batch = Msg::Batch {
            first_ticket: 1,
            d: 2,
            x: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            predictions: vec![0.0; 3],
            actuals: vec![1.0, 2.0, 3.0],
        };
        // The worker may take the Shutdown first; then the batch is refused, not lost.
        let sent = h.tx.blocking_send(batch).is_ok();
        h.join();
        let (tx2, rx2) = channel();
        let again = StreamHandle::start(cfg, Box::new(ChanNotifier(Mutex::new(tx2)))).unwrap();
        let (_, ready) = wait_for(&rx2, "ready");
        assert_eq!(
            ready["replayed"],
            if sent { 3 } else { 0 },
            "an accepted batch reaches the log whole (sent: {sent})"
        );
        again.request(2, Request::Shutdown).unwrap();
        again.join();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_send_accepted_while_cleanup_runs_is_replayed() {
        let (dir, cfg) = setup("race");
        let (tx, rx) = channel();
        let h = Arc::new(
            StreamHandle::start(cfg.clone(), Box::new(ChanNotifier(Mutex::new(tx)))).unwrap(),
        );
        wait_for(&rx, "ready");
        // Straight into the channel, past the closed flag, as a caller that checked it
        // just before cleanup() set it.
        let sender = {
            let h = h.clone();
            std::thread::spawn(move || {
                let mut accepted = 0u64;
                loop {
                    let ticket = h.shared.next_ticket.fetch_add(1, Ordering::Relaxed);
                    h.shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
                    let m = Msg::Feedback {
                        ticket,
                        features: vec![1.0, 2.0],
                        prediction: 0.0,
                        actual: 1.0,
                    };
                    match h.tx.try_send(m) {
                        Ok(()) => accepted += 1,
                        Err(TrySendError::Full(_)) => {
                            h.shared.counters.accepted.fetch_sub(1, Ordering::Relaxed);
                            std::thread::yield_now();
                        }
                        Err(TrySendError::Closed(_)) => {
                            h.shared.counters.accepted.fetch_sub(1, Ordering::Relaxed);
                            return accepted;
                        }
                    }
                }
            })
        };
        std::thread::sleep(Duration::from_millis(30));
        h.request(1, Request::Shutdown).unwrap();
        h.join();
        let accepted = sender.join().unwrap();
        assert!(accepted > 0);
        let c = &h.shared.counters;
        assert_eq!(h.queued(), 0, "nothing accepted is left in a dead queue");
        let buffered = c.buffered.load(Ordering::SeqCst);
        assert_eq!(
            c.processed.load(Ordering::SeqCst) + buffered,
            accepted,
            "every accepted send was learned or logged for replay; the rest were refused"
        );
        let (tx2, rx2) = channel();
        let again = StreamHandle::start(cfg, Box::new(ChanNotifier(Mutex::new(tx2)))).unwrap();
        let (_, ready) = wait_for(&rx2, "ready");
        assert_eq!(ready["replayed"].as_u64().unwrap(), buffered);
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

    fn records(dir: &Path) -> (Vec<LogLine>, LogScan) {
        let mut v = vec![];
        let scan = scan_log(dir, 0, &mut |l| v.push(l));
        (v, scan)
    }

    #[test]
    fn records_are_checksummed_and_one_bad_byte_costs_one_record() {
        let dir = std::env::temp_dir().join(format!("mlops-log-fmt-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let mut buf = vec![];
        for seq in 1..=5 {
            push_record(
                &mut buf,
                &LogLineRef {
                    seq,
                    t: 1.0,
                    features: &[seq as f64, 2.0],
                    prediction: 0.5,
                    actual: seq as f64,
                },
            );
        }
        let line1 = buf.iter().position(|&b| b == b'\n').unwrap();
        assert!(record_ok(&buf[..line1]));
        let text = String::from_utf8(buf[..line1].to_vec()).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v["seq"], 1,
            "still a JSON line any reader can parse: {text}"
        );
        // A flipped digit inside record 2 (still valid JSON): only the checksum sees it.
        let mut damaged = buf.clone();
        let second = line1 + 1 + 8; // inside `{"seq":2`'s neighbourhood
        let at = damaged[second..]
            .iter()
            .position(|b| b.is_ascii_digit())
            .unwrap()
            + second;
        damaged[at] = if damaged[at] == b'9' {
            b'8'
        } else {
            damaged[at] + 1
        };
        // Invalid UTF-8 glued to the end, and a torn record after it.
        damaged.extend_from_slice(&[0xff, 0xfe, 0x00, 0xc3, b'\n']);
        damaged.extend_from_slice(b"{\"seq\":6,\"t\":1.0,\"feat");
        fs::write(dir.join("feedback-0000000000000001.crc.jsonl"), &damaged).unwrap();
        let (got, scan) = records(&dir);
        assert_eq!(
            got.iter().map(|l| l.seq).collect::<Vec<_>>(),
            vec![1, 3, 4, 5]
        );
        assert_eq!((scan.corrupt, scan.torn, scan.max_seq), (2, 1, 5));
        assert!(scan
            .damage
            .iter()
            .any(|d| d.contains("2 damaged record(s)")));
        assert!(scan.damage.iter().any(|d| d.contains("torn")));
        // Old JSON-lines logs are still read, line by line, bytes and all.
        let mut old =
            b"{\"seq\":7,\"t\":1,\"features\":[1,2],\"prediction\":0,\"actual\":1}\n".to_vec();
        old.extend_from_slice(&[0xff, 0xfe, 0x00, 0xc3]);
        old.extend_from_slice(
            b"\n{\"seq\":8,\"t\":1,\"features\":[],\"prediction\":0,\"actual\":2}\n",
        );
        fs::write(dir.join("feedback-0000000000000007.jsonl"), &old).unwrap();
        let (got, scan) = records(&dir);
        assert_eq!(
            got.iter().map(|l| l.seq).collect::<Vec<_>>(),
            vec![1, 3, 4, 5, 7, 8]
        );
        assert_eq!(scan.corrupt, 3);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_second_instance_on_the_same_log_folder_is_refused_and_names_the_holder() {
        let (dir, cfg) = setup("lock");
        let (tx, rx) = channel();
        let a = StreamHandle::start(cfg.clone(), Box::new(ChanNotifier(Mutex::new(tx)))).unwrap();
        wait_for(&rx, "ready");
        let (tx2, _rx2) = channel();
        let err = StreamHandle::start(cfg.clone(), Box::new(ChanNotifier(Mutex::new(tx2))))
            .err()
            .expect("refused");
        assert!(
            err.contains(&format!("process {}", std::process::id())),
            "{err}"
        );
        a.request(1, Request::Shutdown).unwrap();
        wait_for(&rx, "reply");
        // Released before the shutdown reply: a new instance starts at once.
        let (tx3, rx3) = channel();
        let b = StreamHandle::start(cfg, Box::new(ChanNotifier(Mutex::new(tx3)))).unwrap();
        wait_for(&rx3, "ready");
        b.request(1, Request::Shutdown).unwrap();
        b.join();
        a.join();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_drift_cycle_never_marks_an_unbuffered_event_processed() {
        let (dir, mut cfg) = setup("drift-wm");
        cfg.buffer_size = 1_000_000;
        cfg.min_samples_for_update = 1_000_000;
        cfg.max_samples_per_update = 10_000;
        let (tx, rx) = channel();
        let h = StreamHandle::start(cfg.clone(), Box::new(ChanNotifier(Mutex::new(tx)))).unwrap();
        wait_for(&rx, "ready");
        for i in 0..400 {
            let noise = if i % 2 == 0 { 0.1 } else { -0.1 };
            h.send_feedback(vec![1.0, 2.0], 0.0, noise).unwrap();
        }
        for _ in 0..200 {
            h.send_feedback(vec![1.0, 2.0], 0.0, 25.0).unwrap();
        }
        let (_, d) = wait_for(&rx, "drift");
        let alarm_seq = d["seq"].as_u64().unwrap();
        // The drift cycle consumed the alarm event itself (it used to run before the event
        // was buffered, then mark it processed).
        let report = loop {
            let (k, _, v) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            if (k == "update" || k == "rejected") && v["reason"] == "drift" {
                break v;
            }
        };
        assert_eq!(report["samples"].as_u64().unwrap(), alarm_seq);
        h.request(2, Request::Flush).unwrap();
        while wait_for(&rx, "reply").0 != 2 {}
        let wm: Watermark =
            serde_json::from_str(&fs::read_to_string(dir.join("log/watermark.json")).unwrap())
                .unwrap();
        let c = &h.shared.counters;
        assert!(wm.processed_seq >= alarm_seq);
        assert_eq!(
            wm.processed_seq + c.buffered.load(Ordering::SeqCst),
            600,
            "everything above the watermark is in the buffer"
        );
        h.request(3, Request::Shutdown).unwrap();
        h.join();
        fs::remove_dir_all(&dir).unwrap();
    }

    // ------------------------------------------------------------ tree families

    fn before(x: &[f64]) -> f64 {
        (if x[0] > 5.0 { 3.0 } else { 0.0 }) + 0.5 * x[1]
    }
    fn after(x: &[f64]) -> f64 {
        (if x[0] < 3.0 { 4.0 } else { -1.0 }) + if x[1] > 6.0 { -3.0 } else { 2.0 }
    }
    fn rows(n: usize, seed: u64) -> Vec<Vec<f64>> {
        let mut r = crate::core::finetune::SplitMix(seed);
        let mut u = move || (r.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 10.0;
        (0..n).map(|_| vec![u(), u()]).collect()
    }

    /// A small gbm file fitted on `before`; returns the stream config serving it.
    fn tree_setup(name: &str) -> (PathBuf, StreamConfig, TreeModel) {
        let (dir, mut cfg) = setup(name);
        let xs = rows(600, 1);
        let x: Vec<f64> = xs.iter().flatten().copied().collect();
        let y: Vec<f64> = xs.iter().map(|r| before(r)).collect();
        let train: Vec<usize> = (0..500).collect();
        let val: Vec<usize> = (500..600).collect();
        let params = TreeParams {
            trees: Some(30),
            max_depth: Some(3),
            ..Default::default()
        };
        let t = fit_trees(Family::Gbm, &x, &y, 2, &train, &val, &params).unwrap();
        let m = Model {
            kind: ModelKind::Trees(t.clone()),
            features: Some(vec!["a".into(), "b".into()]),
            metrics: Value::Null,
        };
        let path = dir.join("gbm.json");
        fs::write(&path, m.to_json_pretty()).unwrap();
        cfg.model_path = path;
        cfg.buffer_size = 100;
        cfg.refit_every = 0;
        cfg.refit_interval_ms = 0;
        (dir, cfg, t)
    }

    #[test]
    fn a_tree_stream_serves_the_trees_and_its_corrector_learns_the_residual() {
        let (dir, cfg, t) = tree_setup("corrector");
        let (tx, rx) = channel();
        let h = StreamHandle::start(cfg.clone(), Box::new(ChanNotifier(Mutex::new(tx)))).unwrap();
        wait_for(&rx, "ready");
        for x in rows(20, 9) {
            assert_eq!(
                h.predict(&x),
                Some(t.predict(&x)),
                "the trees alone at first"
            );
        }
        assert_eq!(h.shared.current.load().family(), Family::Gbm);
        for x in rows(100, 2) {
            let p = t.predict(&x);
            h.send_feedback(x, p, p + 3.0).unwrap();
        }
        let (_, r) = wait_for(&rx, "update");
        assert_eq!(r["family"], "gbm");
        assert_eq!(r["accepted"], true);
        for x in rows(20, 9) {
            let moved = h.predict(&x).unwrap() - t.predict(&x);
            assert!((moved - 3.0).abs() < 0.2, "served − trees = {moved}");
        }
        let served: Vec<f64> = rows(20, 9).iter().map(|x| h.predict(x).unwrap()).collect();
        h.request(1, Request::Shutdown).unwrap();
        h.join();
        // Restart: the corrector resumes on the same trees.
        let (tx, rx) = channel();
        let h = StreamHandle::start(cfg, Box::new(ChanNotifier(Mutex::new(tx)))).unwrap();
        wait_for(&rx, "ready");
        let again: Vec<f64> = rows(20, 9).iter().map(|x| h.predict(x).unwrap()).collect();
        assert_eq!(again, served);
        h.request(1, Request::Shutdown).unwrap();
        h.join();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_linear_state_saved_before_tree_serving_still_resumes_and_never_rides_on_trees() {
        let (dir, cfg) = setup("oldstate");
        // Today's linear state shape: no family, no origin.
        let mut l = OnlineLinear::new(2, cfg.online.clone());
        for i in 0..200 {
            let x = [(i % 10) as f64, (i % 7) as f64];
            l.learn(&x, 1.0 + 2.0 * x[0] - x[1]);
        }
        let old = json!({
            "format": "mlops-native/online-state@1",
            "base": cfg.model_path.display().to_string(),
            "version": 7,
            "learner": l,
        });
        fs::create_dir_all(&cfg.state_dir).unwrap();
        let state = cfg.state_dir.join("m.online.json");
        fs::write(&state, old.to_string()).unwrap();
        let (tx, rx) = channel();
        let h = StreamHandle::start(cfg.clone(), Box::new(ChanNotifier(Mutex::new(tx)))).unwrap();
        wait_for(&rx, "ready");
        let p = h.predict(&[3.0, 2.0]).unwrap();
        assert!((p - l.predict(&[3.0, 2.0])).abs() < 1e-9, "{p}");
        assert_eq!(h.shared.current.load().version, 8);
        h.request(1, Request::Shutdown).unwrap();
        h.join();
        // The same linear state beside a tree file of that name is not resumed.
        let (tdir, mut tcfg, t) = tree_setup("oldstate-trees");
        fs::copy(&tcfg.model_path, &cfg.model_path).unwrap();
        tcfg.model_path = cfg.model_path.clone();
        tcfg.state_dir = cfg.state_dir.clone();
        tcfg.log_dir = None;
        let (tx, rx) = channel();
        let h = StreamHandle::start(tcfg, Box::new(ChanNotifier(Mutex::new(tx)))).unwrap();
        wait_for(&rx, "ready");
        assert_eq!(h.predict(&[3.0, 2.0]), Some(t.predict(&[3.0, 2.0])));
        h.request(1, Request::Shutdown).unwrap();
        h.join();
        fs::remove_dir_all(&dir).unwrap();
        fs::remove_dir_all(&tdir).unwrap();
    }

    #[test]
    fn a_refit_runs_off_the_worker_is_validated_on_unseen_feedback_and_survives_a_restart() {
        let (dir, mut cfg, t) = tree_setup("refit");
        cfg.refit_every = 300;
        cfg.refit_window = 300;
        let (tx, rx) = channel();
        let h = StreamHandle::start(cfg.clone(), Box::new(ChanNotifier(Mutex::new(tx)))).unwrap();
        wait_for(&rx, "ready");
        let stream = rows(3000, 5);
        let mut sent = 0;
        let report = 'outer: loop {
            assert!(sent < stream.len(), "no refit was swapped in");
            for x in &stream[sent..sent + 50] {
                h.send_feedback(x.clone(), t.predict(x), after(x)).unwrap();
            }
            sent += 50;
            h.request(sent as u64, Request::Flush).unwrap();
            loop {
                let (k, id, v) = rx.recv_timeout(Duration::from_secs(20)).unwrap();
                if k == "update" && v["reason"] == "refit" {
                    break 'outer v;
                }
                if k == "reply" && id == sent as u64 {
                    break;
                }
            }
        };
        assert_eq!(report["family"], "gbm");
        assert!(report["candidateMse"].as_f64() < report["currentMse"].as_f64());
        assert!(report["validationSamples"].as_u64().unwrap() >= 20);
        let path = PathBuf::from(h.shared.current_path.lock().clone());
        assert_eq!(path.parent(), Some(cfg.state_dir.as_path()));
        let refit = Model::load(&path).unwrap();
        let probe = rows(200, 77);
        let mse = |f: &dyn Fn(&[f64]) -> f64| {
            probe.iter().map(|x| (f(x) - after(x)).powi(2)).sum::<f64>() / probe.len() as f64
        };
        assert!(mse(&|x| refit.predict(x)) < 0.3 * mse(&|x| t.predict(x)));
        h.request(1, Request::Shutdown).unwrap();
        h.join();
        let served: Vec<f64> = {
            let (tx, rx) = channel();
            let h = StreamHandle::start(cfg, Box::new(ChanNotifier(Mutex::new(tx)))).unwrap();
            wait_for(&rx, "ready");
            assert_eq!(*h.shared.current_path.lock(), path.display().to_string());
            let v = probe.iter().map(|x| h.predict(x).unwrap()).collect();
            h.request(1, Request::Shutdown).unwrap();
            h.join();
            v
        };
        // The restart serves the refit trees (plus the corrector it had).
        let refit_mse = probe
            .iter()
            .zip(&served)
            .map(|(x, p)| (p - after(x)).powi(2))
            .sum::<f64>()
            / probe.len() as f64;
        assert!(refit_mse < 0.3 * mse(&|x| t.predict(x)), "{refit_mse}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hyperparameters_round_trip_into_a_refit() {
        let p = TreeParams::from_hyperparameters(&json!({
            "trees": 12, "treesFitted": 40, "maxDepth": 3, "learningRate": 0.2,
            "minChildWeight": 2, "lambda": 0.5, "subsample": 0.8, "earlyStoppingRounds": 5, "seed": 9
        }));
        assert_eq!(p.trees, Some(40));
        assert_eq!(p.max_depth, Some(3));
        assert_eq!(p.learning_rate, Some(0.2));
        assert_eq!(p.min_samples_leaf, Some(2));
        assert_eq!(p.seed, 9);
        let junk = TreeParams::from_hyperparameters(&json!({ "trees": -1, "maxDepth": "x" }));
        assert_eq!(junk, TreeParams::default());
    }
}
