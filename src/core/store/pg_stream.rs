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

    fn append(&self, instance: &str, batch: &Arc<FeedbackBatch>) -> Result<u64, String> {
        let store = self.store.clone();
        let key = self.model_key.clone();
        let inst = instance.to_owned();
        let b = batch.clone();
        runtime::block_on_timeout(
            async move { store.append_feedback(&key, &inst, &b).await },
            self.write_timeout,
        )
        .and_then(|r| r.map_err(|e: StoreError| e.message))
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
        let mut db_error = None;
        if self.offline_until.is_none() {
            match self.append(&self.instance_id, &batch) {
                Ok(_) => {
                    self.db_total += batch.len() as u64;
                    return Ok((Durable::Database, None));
                }
                Err(e) => {
                    self.offline_until = Some(Instant::now() + self.backoff);
                    db_error = Some(e);
                }
            }
        }
        match self.spool.append(&batch) {
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
            Err(e) => Err(e.message),
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
