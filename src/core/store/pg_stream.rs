//! The streaming worker's PostgreSQL side: feedback writer with a local spool, and the
//! training lease holder. Both are driven from the worker thread (sync calls that run on
//! the addon's runtime and wait with a deadline).
//!
//! **Writer.** A group of events goes to PostgreSQL in one statement; when that commits
//! the group is acknowledged. When the database is unreachable, slow past its statement
//! timeout, or refuses the write, the group is appended to the local spool file instead
//! (checksummed records, fsynced before the acknowledgement), and further groups go
//! straight to the spool until a retry (with backoff) gets through; then the spool is
//! forwarded and emptied. Forwarding re-sends whole groups: rows already stored are
//! skipped by the `(instance_id, seq)` key, so nothing is stored twice. When the spool
//! cannot be written either (full disk), the group is not acknowledged.
//!
//! Each run of a process has its own instance id and spool file
//! (`<spoolDir>/spool-<instance>.bin`), locked while it runs. Spool files left by a run
//! that died are forwarded by the next process that uses the folder.
//!
//! **Trainer.** One process per model key holds the lease and consumes everyone's
//! feedback from the committed watermark; see `postgres.rs` for the fencing rules.

use super::postgres::{
    FeedbackBatch, FeedbackRecord, Lease, PgStore, Publish, StoreError, VersionRow, Watermark,
};
use crate::core::runtime;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ------------------------------------------------------------------ crc32 (IEEE)

const fn crc_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

static CRC: [u32; 256] = crc_table();

pub fn crc32(b: &[u8]) -> u32 {
    let mut c = !0u32;
    for &x in b {
        c = CRC[((c ^ x as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

/// A new instance id: host, pid, start time and randomness (unique per process run).
pub fn new_instance_id() -> String {
    let host: String = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| fs::read_to_string("/etc/hostname").ok())
        .unwrap_or_else(|| "host".into())
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(24)
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    // Randomness without a crate: the address of a fresh allocation mixed with the clock.
    let salt = Box::new(0u8);
    let mix = (now.as_nanos() as u64) ^ ((&*salt as *const u8 as u64).rotate_left(17));
    let mut x = mix ^ 0x9E37_79B9_7F4A_7C15;
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    format!(
        "{}-{}-{:x}-{:08x}",
        if host.is_empty() { "host" } else { &host },
        std::process::id(),
        now.as_millis(),
        x as u32
    )
}

// ------------------------------------------------------------------ spool

/// Record: `[len u32][crc32 u32][seq u64][t f64][prediction f64][actual f64][d u32][d × f64]`,
/// little-endian; `len` and `crc` cover everything after them.
fn encode_record(out: &mut Vec<u8>, seq: i64, t: f64, features: &[u8], p: f64, a: f64) {
    let d = (features.len() / 8) as u32;
    let len = 8 + 8 + 8 + 8 + 4 + features.len();
    let start = out.len();
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&t.to_le_bytes());
    out.extend_from_slice(&p.to_le_bytes());
    out.extend_from_slice(&a.to_le_bytes());
    out.extend_from_slice(&d.to_le_bytes());
    out.extend_from_slice(features);
    let crc = crc32(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes every whole, intact record; stops at a torn or corrupt one. Returns the
/// events and how many bytes were good.
fn decode_records(b: &[u8]) -> (FeedbackBatch, usize) {
    let mut out = FeedbackBatch::default();
    let mut i = 0;
    let f64_at = |b: &[u8], i: usize| f64::from_le_bytes(b[i..i + 8].try_into().unwrap());
    while i + 8 <= b.len() {
        let len = u32::from_le_bytes(b[i..i + 4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(b[i + 4..i + 8].try_into().unwrap());
        if len < 36 || i + 8 + len > b.len() {
            break;
        }
        let body = &b[i + 8..i + 8 + len];
        if crc32(body) != crc {
            break;
        }
        let d = u32::from_le_bytes(body[32..36].try_into().unwrap()) as usize;
        if 36 + d * 8 != len {
            break;
        }
        out.seqs
            .push(i64::from_le_bytes(body[0..8].try_into().unwrap()));
        out.times_ms.push(f64_at(body, 8));
        out.predictions.push(f64_at(body, 16));
        out.actuals.push(f64_at(body, 24));
        out.features.push(body[36..].to_vec());
        i += 8 + len;
    }
    (out, i)
}

pub struct Spool {
    pub dir: PathBuf,
    pub instance_id: String,
    file: Option<File>,
    /// Events in our own file not yet forwarded.
    pub pending: u64,
}

impl Spool {
    pub fn new(dir: &Path, instance_id: &str) -> Self {
        Self {
            dir: dir.to_path_buf(),
            instance_id: instance_id.to_owned(),
            file: None,
            pending: 0,
        }
    }

    fn own_path(&self) -> PathBuf {
        self.dir.join(format!("spool-{}.bin", self.instance_id))
    }

    fn open(&mut self) -> Result<&mut File, String> {
        if self.file.is_none() {
            fs::create_dir_all(&self.dir).map_err(|e| {
                format!("cannot create the spool folder {}: {e}", self.dir.display())
            })?;
            let p = self.own_path();
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
                .map_err(|e| format!("cannot open the spool {}: {e}", p.display()))?;
            // Held for the life of this run: another process forwarding orphans skips it.
            let _ = f.try_lock();
            self.file = Some(f);
        }
        Ok(self.file.as_mut().expect("spool file"))
    }

    /// Appends a group and makes it durable (fsync) before returning Ok. On failure the
    /// file is cut back to where it was, so a half-written group never counts.
    pub fn append(&mut self, batch: &FeedbackBatch) -> Result<(), String> {
        let mut buf = Vec::with_capacity(batch.len() * 80);
        for i in 0..batch.len() {
            encode_record(
                &mut buf,
                batch.seqs[i],
                batch.times_ms[i],
                &batch.features[i],
                batch.predictions[i],
                batch.actuals[i],
            );
        }
        let path = self.own_path();
        let f = self.open()?;
        let before = f.metadata().map(|m| m.len()).unwrap_or(0);
        let res = f.write_all(&buf).and_then(|_| f.sync_data());
        if let Err(e) = res {
            let _ = f.set_len(before);
            return Err(format!("cannot write the spool {}: {e}", path.display()));
        }
        self.pending += batch.len() as u64;
        Ok(())
    }

    /// Spool files to forward: ours, and those of runs that are gone (unlocked).
    fn files(&self) -> Vec<(String, PathBuf, bool)> {
        let mut v = vec![];
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return v;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(id) = name
                .strip_prefix("spool-")
                .and_then(|s| s.strip_suffix(".bin"))
            else {
                continue;
            };
            v.push((id.to_owned(), e.path(), id == self.instance_id));
        }
        v.sort();
        v
    }

    /// True when anything (ours or an orphan) may be waiting.
    pub fn has_backlog(&self) -> bool {
        self.pending > 0
            || self
                .files()
                .iter()
                .any(|(_, p, own)| !own && fs::metadata(p).is_ok_and(|m| m.len() > 0))
    }

    /// Sends every spooled group through `send` (instance id, batch of ≤ `chunk` events),
    /// then empties our file and deletes orphan files. Stops at the first failure (the
    /// files stay; sending again later is harmless). Returns events sent.
    pub fn forward(
        &mut self,
        chunk: usize,
        mut send: impl FnMut(&str, &FeedbackBatch) -> Result<(), String>,
    ) -> Result<u64, String> {
        let mut sent = 0u64;
        for (id, path, own) in self.files() {
            let lock = if own {
                None
            } else {
                // A live run holds its own file locked: leave it to that run.
                match OpenOptions::new().read(true).write(true).open(&path) {
                    Ok(f) => match f.try_lock() {
                        Ok(()) => Some(f),
                        Err(_) => continue,
                    },
                    Err(_) => continue,
                }
            };
            let mut bytes = vec![];
            File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(|e| format!("cannot read the spool {}: {e}", path.display()))?;
            let (all, _good) = decode_records(&bytes);
            let mut i = 0;
            while i < all.len() {
                let j = (i + chunk.max(1)).min(all.len());
                let part = FeedbackBatch {
                    seqs: all.seqs[i..j].to_vec(),
                    times_ms: all.times_ms[i..j].to_vec(),
                    features: all.features[i..j].to_vec(),
                    predictions: all.predictions[i..j].to_vec(),
                    actuals: all.actuals[i..j].to_vec(),
                };
                send(&id, &part)?;
                sent += part.len() as u64;
                i = j;
            }
            if own {
                if let Some(f) = &self.file {
                    f.set_len(0)
                        .and_then(|_| f.sync_data())
                        .map_err(|e| format!("cannot empty the spool {}: {e}", path.display()))?;
                }
                self.pending = 0;
            } else {
                let _ = fs::remove_file(&path);
                drop(lock);
            }
        }
        Ok(sent)
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        // An empty spool of a cleanly finished run is not worth keeping.
        if self.pending == 0 && self.file.take().is_some() {
            let p = self.own_path();
            if fs::metadata(&p).is_ok_and(|m| m.len() == 0) {
                let _ = fs::remove_file(p);
            }
        }
    }
}

// ------------------------------------------------------------------ writer

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durable {
    /// Committed in PostgreSQL.
    Database,
    /// fsynced in the local spool; forwarded later.
    Spool,
}

pub struct PgFeedbackWriter {
    pub store: PgStore,
    pub model_key: String,
    pub instance_id: String,
    pub spool: Spool,
    /// How long one database write may take before the group is spooled instead.
    pub write_timeout: Duration,
    offline_until: Option<Instant>,
    backoff: Duration,
    /// Spool files of dead runs are looked for at most this often (a directory read).
    next_orphan_scan: Instant,
    pub spooled_total: u64,
    pub forwarded_total: u64,
    pub db_total: u64,
}

impl PgFeedbackWriter {
    pub fn new(
        store: PgStore,
        model_key: &str,
        instance_id: &str,
        spool_dir: &Path,
        write_timeout: Duration,
    ) -> Self {
        Self {
            store,
            model_key: model_key.to_owned(),
            instance_id: instance_id.to_owned(),
            spool: Spool::new(spool_dir, instance_id),
            write_timeout,
            offline_until: None,
            backoff: Duration::from_millis(100),
            next_orphan_scan: Instant::now(),
            spooled_total: 0,
            forwarded_total: 0,
            db_total: 0,
        }
    }

    pub fn online(&self) -> bool {
        self.offline_until.is_none()
    }

    /// A first write of a new group (binary COPY, see [`PgStore::append_new_feedback`]),
    /// bounded by `write_timeout`. Runs anywhere: it owns what it needs.
    pub fn append_new(
        &self,
        batch: Arc<FeedbackBatch>,
    ) -> impl std::future::Future<Output = Result<u64, String>> + Send + 'static {
        let store = self.store.clone();
        let key = self.model_key.clone();
        let inst = self.instance_id.clone();
        let timeout = self.write_timeout;
        async move {
            match tokio::time::timeout(timeout, store.append_new_feedback(&key, &inst, &batch))
                .await
            {
                Ok(r) => r.map_err(|e| e.message),
                Err(_) => Err(format!("timed out after {} ms", timeout.as_millis())),
            }
        }
    }

    /// Makes a group durable: in PostgreSQL when it answers, else in the spool. `Err`
    /// (with both reasons): neither worked, do not acknowledge. The second value is the
    /// database error that sent the group to the spool, if any.
    pub fn write(&mut self, batch: FeedbackBatch) -> Result<(Durable, Option<String>), String> {
        if batch.is_empty() {
            return Ok((Durable::Database, None));
        }
        // Shared with the database task, not copied: groups are thousands of events.
        let batch = Arc::new(batch);
        let db = if self.online() {
            Some(runtime::block_on(self.append_new(batch.clone())).and_then(|r| r))
        } else {
            None
        };
        self.settle(&batch, db)
    }

    /// Settles a group after its database write (`db`; `None`: not tried, the database is
    /// known to be down): counted as stored, or spooled. A failed write takes the writer
    /// offline until the next retry is due.
    pub fn settle(
        &mut self,
        batch: &FeedbackBatch,
        db: Option<Result<u64, String>>,
    ) -> Result<(Durable, Option<String>), String> {
        let db_error = match db {
            Some(Ok(_)) => {
                self.db_total += batch.len() as u64;
                return Ok((Durable::Database, None));
            }
            Some(Err(e)) => {
                if self.offline_until.is_none() {
                    self.offline_until = Some(Instant::now() + self.backoff);
                }
                Some(e)
            }
            None => None,
        };
        match self.spool.append(batch) {
            Ok(()) => {
                self.spooled_total += batch.len() as u64;
                Ok((Durable::Spool, db_error))
            }
            Err(e) => Err(match db_error {
                Some(d) => format!("{d}; and {e}"),
                None => format!("the database is unreachable and {e}"),
            }),
        }
    }

    /// When the retry time has come: forwards the spool (ours and orphans). Returns
    /// `Some(Ok(n))` after forwarding n events, `Some(Err)` when the database still fails
    /// (the next retry waits twice as long, up to 5 s), `None` when nothing was due.
    pub fn tick(&mut self) -> Option<Result<u64, String>> {
        let due = self.offline_until.is_none_or(|t| Instant::now() >= t);
        if !due {
            return None;
        }
        if self.offline_until.is_none() && self.spool.pending == 0 {
            let now = Instant::now();
            if now < self.next_orphan_scan {
                return None;
            }
            self.next_orphan_scan = now + Duration::from_secs(5);
            if !self.spool.has_backlog() {
                return None;
            }
        }
        let store = self.store.clone();
        let key = self.model_key.clone();
        let timeout = self.write_timeout;
        let r = self.spool.forward(10_000, |inst, b| {
            let store = store.clone();
            let key = key.clone();
            let inst = inst.to_owned();
            let b = b.clone();
            runtime::block_on_timeout(
                async move { store.append_feedback(&key, &inst, &b).await },
                timeout,
            )
            .and_then(|r| r.map_err(|e| e.message))
            .map(|_| ())
        });
        match r {
            Ok(n) => {
                self.forwarded_total += n;
                self.offline_until = None;
                self.backoff = Duration::from_millis(100);
                Some(Ok(n))
            }
            Err(e) => {
                self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
                self.offline_until = Some(Instant::now() + self.backoff);
                Some(Err(e))
            }
        }
    }
}

// ------------------------------------------------------------------ pipelined writer

/// What became of groups handed to [`PipelinedWriter::submit`]; groups are reported in
/// the order they were submitted, so "durable up to ticket N" stays true.
#[derive(Debug)]
pub enum WriterEvent {
    Group {
        /// The highest ticket of the group (its events are answered together).
        max_ticket: u64,
        events: u64,
        /// Where it is durable, or why it is nowhere (answer false).
        result: Result<Durable, String>,
        /// The database error that sent it to the spool.
        db_error: Option<String>,
    },
    /// A retry forwarded the spool (`Ok(n)`), or the database still fails.
    Forwarded(Result<u64, String>),
}

/// The writer's counters after an event (read by statistics).
#[derive(Clone, Copy, Debug, Default)]
pub struct WriterFigures {
    pub online: bool,
    pub db_total: u64,
    pub spooled_total: u64,
    pub spool_pending: u64,
    pub forwarded_total: u64,
}

impl PgFeedbackWriter {
    fn figures(&self) -> WriterFigures {
        WriterFigures {
            online: self.online(),
            db_total: self.db_total,
            spooled_total: self.spooled_total,
            spool_pending: self.spool.pending,
            forwarded_total: self.forwarded_total,
        }
    }
}

enum Cmd {
    Group(FeedbackBatch, u64),
    /// Answered once everything submitted before it is settled; `true`: and after one
    /// attempt to forward the spool.
    Drain(std::sync::mpsc::SyncSender<()>, bool),
}

/// Groups that queue while `depth` writes are in flight are merged, up to this many
/// events: the slower the database, the bigger (and fewer) the commits.
const MAX_MERGED_EVENTS: usize = 65_536;

/// [`PgFeedbackWriter`] as a task on the addon's runtime, so that the caller never waits
/// for the database: it submits groups and hears about each one in order through `on`.
/// Up to `depth` groups are written at once, each in its own transaction on its own
/// pooled connection: the next group is already being sent while the previous one
/// commits (its WAL flush). Acknowledgements stay "after COMMIT" and in order: a group is
/// reported only when it and every group before it are settled. When a write fails the
/// writer goes offline: groups still in flight settle one by one (stored, or spooled with
/// the error), and what queues meanwhile goes to the spool, as with one group at a time.
pub struct PipelinedWriter {
    tx: tokio::sync::mpsc::UnboundedSender<Cmd>,
    task: Option<tokio::task::JoinHandle<()>>,
    backlog: Arc<Backlog>,
}

/// Events submitted and not yet reported. Past [`MAX_BACKLOG`] a submission waits, so a
/// database slower than the producers pushes back on the caller's queue (which then
/// refuses events, as it did when every write was waited for) instead of growing memory.
#[derive(Default)]
struct Backlog {
    events: parking_lot::Mutex<u64>,
    settled: parking_lot::Condvar,
}

const MAX_BACKLOG: u64 = 4 * MAX_MERGED_EVENTS as u64;

impl Backlog {
    fn settle(&self, n: u64) {
        let mut e = self.events.lock();
        *e = e.saturating_sub(n);
        self.settled.notify_all();
    }
}

impl PipelinedWriter {
    pub fn start(
        writer: PgFeedbackWriter,
        depth: usize,
        on: impl Fn(WriterEvent, WriterFigures) + Send + Sync + 'static,
    ) -> Result<Self, String> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let backlog = Arc::new(Backlog::default());
        let task = runtime::spawn(pipeline(writer, depth.max(1), rx, backlog.clone(), on))?;
        Ok(Self {
            tx,
            task: Some(task),
            backlog,
        })
    }

    /// Hands a group over; waits only while [`MAX_BACKLOG`] events are unsettled. `Err`
    /// gives it back when the writer is gone.
    pub fn submit(&self, batch: FeedbackBatch, max_ticket: u64) -> Result<(), FeedbackBatch> {
        let wait = || {
            let mut e = self.backlog.events.lock();
            while *e >= MAX_BACKLOG && !self.tx.is_closed() {
                self.backlog
                    .settled
                    .wait_for(&mut e, Duration::from_millis(100));
            }
            *e += batch.len() as u64;
        };
        blocking(wait);
        self.tx
            .send(Cmd::Group(batch, max_ticket))
            .map_err(|e| match e.0 {
                Cmd::Group(b, _) => b,
                Cmd::Drain(..) => unreachable!(),
            })
    }

    /// Waits (at most `timeout`) until every group submitted so far is reported
    /// (`forward`: then tries once to forward the spool, as a clean stop does).
    pub fn drain(&self, timeout: Duration, forward: bool) -> bool {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        if self.tx.send(Cmd::Drain(tx, forward)).is_err() {
            return true;
        }
        let wait = || rx.recv_timeout(timeout).is_ok();
        // On a runtime worker, let the pool run the writer meanwhile.
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        }
    }
}

impl Drop for PipelinedWriter {
    fn drop(&mut self) {
        // Closing the channel lets the task settle what it holds, then end by itself:
        // aborting it could leave a submitted group unanswered.
        drop(self.task.take());
    }
}

type InFlight = (
    tokio::task::JoinHandle<Result<u64, String>>,
    Arc<FeedbackBatch>,
    u64,
);

/// Takes queued groups, merged, up to [`MAX_MERGED_EVENTS`] (at least one group).
fn merge(queue: &mut std::collections::VecDeque<(FeedbackBatch, u64)>) -> (FeedbackBatch, u64) {
    let (mut out, mut max) = queue.pop_front().expect("a queued group");
    while let Some((b, _)) = queue.front() {
        if out.len() + b.len() > MAX_MERGED_EVENTS {
            break;
        }
        let (b, m) = queue.pop_front().expect("a queued group");
        out.seqs.extend(b.seqs);
        out.times_ms.extend(b.times_ms);
        out.features.extend(b.features);
        out.predictions.extend(b.predictions);
        out.actuals.extend(b.actuals);
        max = max.max(m);
    }
    (out, max)
}

/// Blocking file work (spool fsync, forwarding) from inside the runtime.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

async fn pipeline(
    mut w: PgFeedbackWriter,
    depth: usize,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Cmd>,
    backlog: Arc<Backlog>,
    on: impl Fn(WriterEvent, WriterFigures) + Send + Sync + 'static,
) {
    use std::collections::VecDeque;
    let mut queue: VecDeque<(FeedbackBatch, u64)> = VecDeque::new();
    let mut inflight: VecDeque<InFlight> = VecDeque::new();
    let mut drains: Vec<(std::sync::mpsc::SyncSender<()>, bool)> = Vec::new();
    let mut open = true;
    // Spool retries and orphan scans are due-checked this often (tick() is cheap when
    // nothing is due).
    let mut retry = tokio::time::interval(Duration::from_millis(50));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let report = |w: &PgFeedbackWriter, batch: &FeedbackBatch, max_ticket, r| {
        let (result, db_error) = match r {
            Ok((d, e)) => (Ok(d), e),
            Err(e) => (Err(e), None),
        };
        on(
            WriterEvent::Group {
                max_ticket,
                events: batch.len() as u64,
                result,
                db_error,
            },
            w.figures(),
        );
        backlog.settle(batch.len() as u64);
    };
    loop {
        while w.online() && inflight.len() < depth && !queue.is_empty() {
            let (batch, max) = merge(&mut queue);
            let batch = Arc::new(batch);
            let write = tokio::spawn(w.append_new(batch.clone()));
            inflight.push_back((write, batch, max));
        }
        if !w.online() && inflight.is_empty() {
            // Offline: straight to the spool, one fsync per merged group.
            while !queue.is_empty() {
                let (batch, max) = merge(&mut queue);
                let r = blocking(|| w.settle(&batch, None));
                report(&w, &batch, max, r);
            }
        }
        if inflight.is_empty() && queue.is_empty() && !drains.is_empty() {
            if drains.iter().any(|d| d.1) {
                if let Some(r) = blocking(|| w.tick()) {
                    on(WriterEvent::Forwarded(r), w.figures());
                }
            }
            for (d, _) in drains.drain(..) {
                let _ = d.send(());
            }
        }
        if !open && inflight.is_empty() && queue.is_empty() {
            return;
        }
        tokio::select! {
            biased;
            done = async { (&mut inflight.front_mut().expect("in flight").0).await }, if !inflight.is_empty() => {
                let (_, batch, max) = inflight.pop_front().expect("in flight");
                let db = done.unwrap_or_else(|e| Err(format!("internal error: {e}")));
                let r = blocking(|| w.settle(&batch, Some(db)));
                report(&w, &batch, max, r);
            }
            // While every write slot is busy the channel is left alone: submissions then
            // cost the caller no wake-up of this task, and they are merged when a slot frees.
            cmd = rx.recv(), if open && (inflight.len() < depth || !w.online()) => match cmd {
                Some(Cmd::Group(b, max)) => {
                    queue.push_back((b, max));
                    // Take whatever else is waiting, so one wake-up merges it all.
                    while let Ok(c) = rx.try_recv() {
                        match c {
                            Cmd::Group(b, max) => queue.push_back((b, max)),
                            Cmd::Drain(d, f) => drains.push((d, f)),
                        }
                    }
                }
                Some(Cmd::Drain(d, f)) => drains.push((d, f)),
                None => open = false,
            },
            _ = retry.tick() => {
                if inflight.is_empty() {
                    if let Some(r) = blocking(|| w.tick()) {
                        on(WriterEvent::Forwarded(r), w.figures());
                    }
                }
            }
        }
    }
}

// ------------------------------------------------------------------ trainer

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseChange {
    None,
    /// Just became the trainer: reset the learner to what is in production and consume
    /// from the committed watermark.
    Acquired,
    /// Lost the lease: drop unpublished learning.
    Lost,
}

pub struct PgTrainer {
    pub store: PgStore,
    pub model_key: String,
    pub holder: String,
    pub lease_duration: Duration,
    pub timeout: Duration,
    pub lease: Option<Lease>,
    /// Next read starts after this.
    read_pos: Watermark,
    /// The last event handed to the learner, and how many were since the last commit.
    cursor: Option<Watermark>,
    uncommitted: u64,
    last_renew: Option<Instant>,
    /// Total consumed (as committed) when the lease was last read.
    pub committed_consumed: u64,
    /// A commit whose outcome is unknown (the connection dropped around COMMIT): its
    /// target and count. Settled against the stored watermark before the next commit, so
    /// a commit that did go through is not counted again.
    in_doubt: Option<(Watermark, u64)>,
}

impl PgTrainer {
    pub fn new(
        store: PgStore,
        model_key: &str,
        holder: &str,
        lease_duration: Duration,
        timeout: Duration,
    ) -> Self {
        Self {
            store,
            model_key: model_key.to_owned(),
            holder: holder.to_owned(),
            lease_duration,
            timeout,
            lease: None,
            read_pos: Watermark::default(),
            cursor: None,
            uncommitted: 0,
            last_renew: None,
            committed_consumed: 0,
            in_doubt: None,
        }
    }

    fn run<T: Send + 'static>(
        &self,
        f: impl std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        match runtime::block_on_timeout(f, self.timeout) {
            Ok(r) => r,
            Err(e) => Err(StoreError {
                kind: super::postgres::ErrorKind::Timeout,
                message: e,
            }),
        }
    }

    pub fn leading(&self) -> bool {
        self.lease.is_some()
    }

    fn drop_lease(&mut self) {
        self.in_doubt = None;
        self.lease = None;
        self.cursor = None;
        self.uncommitted = 0;
        self.last_renew = None;
    }

    /// Takes the lease when free, renews it every third of its duration. Call often.
    pub fn tick(&mut self) -> Result<LeaseChange, String> {
        let store = self.store.clone();
        let key = self.model_key.clone();
        let dur = self.lease_duration;
        match self.lease.clone() {
            Some(lease) => {
                if self
                    .last_renew
                    .is_some_and(|t| t.elapsed() < self.lease_duration / 3)
                {
                    return Ok(LeaseChange::None);
                }
                match self.run(async move { store.renew_lease(&lease, dur).await }) {
                    Ok(true) => {
                        self.last_renew = Some(Instant::now());
                        Ok(LeaseChange::None)
                    }
                    Ok(false) => {
                        self.drop_lease();
                        Ok(LeaseChange::Lost)
                    }
                    // Not renewed this time; the lease may still be ours (the epoch decides
                    // at the next commit or renewal).
                    Err(e) => Err(e.message),
                }
            }
            None => {
                let holder = self.holder.clone();
                let got = self
                    .run(async move { store.try_acquire_lease(&key, &holder, dur).await })
                    .map_err(|e| e.message)?;
                let Some(lease) = got else {
                    return Ok(LeaseChange::None);
                };
                let store = self.store.clone();
                let key = self.model_key.clone();
                let (wm, consumed) = self
                    .run(async move { store.watermark(&key).await })
                    .map_err(|e| e.message)?;
                self.read_pos = wm;
                self.committed_consumed = consumed;
                self.cursor = None;
                self.uncommitted = 0;
                self.lease = Some(lease);
                self.last_renew = Some(Instant::now());
                Ok(LeaseChange::Acquired)
            }
        }
    }

    /// The next events to learn from (only while leading; empty otherwise).
    pub fn poll(&mut self, limit: usize) -> Result<Vec<FeedbackRecord>, String> {
        if self.lease.is_none() {
            return Ok(vec![]);
        }
        let store = self.store.clone();
        let key = self.model_key.clone();
        let after = self.read_pos.clone();
        let rows = self
            .run(async move { store.read_feedback(&key, &after, limit).await })
            .map_err(|e| e.message)?;
        if let Some(last) = rows.last() {
            self.read_pos = last.pos.clone();
        }
        Ok(rows)
    }

    /// Records that the learner has taken the event at `pos` (call before learning it).
    pub fn taken(&mut self, pos: &Watermark) {
        self.cursor = Some(pos.clone());
        self.uncommitted += 1;
    }

    /// Everything taken so far was consumed by a cycle: commit the watermark (and the
    /// version, if any) in one transaction. `Ok(None)` with nothing to commit. A lost lease
    /// is `Err` and leadership ends; a transient failure keeps the count for next time.
    pub fn commit(&mut self, publish: Option<Publish>) -> Result<Option<VersionRow>, String> {
        if let Some((tried, n)) = self.in_doubt.clone() {
            let store = self.store.clone();
            let key = self.model_key.clone();
            let (stored, _) = self
                .run(async move { store.watermark(&key).await })
                .map_err(|e| e.message)?;
            self.in_doubt = None;
            // Only the lease holder moves the watermark: at or past what was tried, the
            // earlier commit went through.
            if stored >= tried {
                self.committed_consumed += n;
                self.uncommitted -= n.min(self.uncommitted);
            }
        }
        let (Some(lease), Some(to)) = (self.lease.clone(), self.cursor.clone()) else {
            return Ok(None);
        };
        let store = self.store.clone();
        let n = self.uncommitted;
        let dur = self.lease_duration;
        match self.run(async move { store.commit_cycle(&lease, dur, &to, n, publish).await }) {
            Ok(v) => {
                self.committed_consumed += n;
                self.uncommitted = 0;
                self.last_renew = Some(Instant::now());
                Ok(v)
            }
            Err(e) if e.kind == super::postgres::ErrorKind::LeaseLost => {
                self.drop_lease();
                Err(e.message)
            }
            Err(e) => {
                self.in_doubt = Some((self.cursor.clone().unwrap_or_default(), n));
                Err(e.message)
            }
        }
    }

    /// Lets another process take over at once (clean shutdown).
    pub fn release(&mut self) {
        if let Some(lease) = self.lease.clone() {
            let store = self.store.clone();
            let _ = self.run(async move { store.release_lease(&lease).await });
        }
        self.drop_lease();
    }

    /// The position of the last event handed to the learner (what a commit would store).
    pub fn cursor(&self) -> Option<&Watermark> {
        self.cursor.as_ref()
    }

    pub fn uncommitted(&self) -> u64 {
        self.uncommitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(r: std::ops::Range<u64>) -> FeedbackBatch {
        let mut b = FeedbackBatch::default();
        for s in r {
            b.push(s, s as f64, &[s as f64, 1.0], 0.5, s as f64 * 2.0);
        }
        b
    }

    #[test]
    fn spool_records_round_trip_and_a_torn_tail_is_ignored() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        let dir = std::env::temp_dir().join(format!("mlops-spool-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut s = Spool::new(&dir, "a");
        s.append(&batch(1..4)).unwrap();
        s.append(&batch(4..6)).unwrap();
        let p = dir.join("spool-a.bin");
        let mut bytes = fs::read(&p).unwrap();
        let (all, good) = decode_records(&bytes);
        assert_eq!(all.seqs, vec![1, 2, 3, 4, 5]);
        assert_eq!(good, bytes.len());
        assert_eq!(
            super::super::postgres::decode_features(&all.features[2]),
            vec![3.0, 1.0]
        );
        bytes.truncate(bytes.len() - 3);
        assert_eq!(decode_records(&bytes).0.seqs, vec![1, 2, 3, 4]);
        // Forwarding hands out everything and empties the file.
        let mut got = vec![];
        let n = s
            .forward(2, |id, b| {
                got.push((id.to_owned(), b.seqs.clone()));
                Ok(())
            })
            .unwrap();
        assert_eq!(n, 5);
        assert_eq!(got.len(), 3);
        assert_eq!(fs::metadata(&p).unwrap().len(), 0);
        // A failed send keeps the file for the next attempt.
        s.append(&batch(6..8)).unwrap();
        assert!(s.forward(10, |_, _| Err("down".into())).is_err());
        assert!(s.has_backlog());
        // An orphan of a dead run (unlocked) is forwarded under its own instance id.
        let mut orphan = Spool::new(&dir, "dead");
        orphan.append(&batch(1..3)).unwrap();
        orphan.file = None; // the run died: its lock is gone
        std::mem::forget(orphan);
        let mut ids = vec![];
        s.forward(10, |id, b| {
            ids.push((id.to_owned(), b.len()));
            Ok(())
        })
        .unwrap();
        assert_eq!(ids, vec![("a".to_string(), 2), ("dead".to_string(), 2)]);
        assert!(!dir.join("spool-dead.bin").exists());
        drop(s);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_full_disk_is_an_error_and_leaves_no_partial_group() {
        let dir = std::env::temp_dir().join(format!("mlops-spool-full-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink("/dev/full", dir.join("spool-x.bin")).unwrap();
        let mut s = Spool::new(&dir, "x");
        let e = s.append(&batch(1..10)).unwrap_err();
        assert!(e.contains("No space left"), "{e}");
        assert_eq!(s.pending, 0);
        drop(s);
        fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
#[path = "pg_stream_tests.rs"]
mod pg_tests;
