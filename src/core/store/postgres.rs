//! PostgreSQL as the shared feedback log, model registry and swap signal.
//!
//! Everything lives in one schema (`mlops` unless told otherwise), created on first use and
//! migrated forward by [`PgStore::connect`] (versioned, idempotent, serialised across
//! processes by an advisory lock).
//!
//! * **Feedback** — `feedback`, keyed by `(instance_id, seq)`: each process (instance)
//!   numbers its own events; [`PgStore::append_feedback`] sends a whole group in one
//!   `INSERT … SELECT FROM unnest(…) ON CONFLICT DO NOTHING` (one round trip, one commit,
//!   re-sending a group is harmless). Each row also records the id of the transaction that
//!   wrote it (`txid`).
//! * **Consuming by a watermark** — the trainer reads rows in `(txid, instance_id, seq)`
//!   order, but only rows whose transaction id is below the oldest transaction still
//!   running (`pg_snapshot_xmin`). Every such transaction has finished, so no row can later
//!   appear behind the watermark: a group that committed late is never skipped, and none
//!   is read twice. The watermark is that position, stored in `watermarks`.
//! * **Training lease** — `leases`: one holder per model key, with an expiry and an
//!   epoch that every takeover increments. Publishing ([`PgStore::commit_cycle`]) locks
//!   the lease row and checks the epoch in the same transaction that moves the watermark
//!   and writes the version, so a trainer that lost its lease (paused, partitioned) can
//!   never publish or move the watermark: the epoch is a fencing token.
//! * **Registry** — `models` (version counter, production pointer and its history) and
//!   `versions` (family, parent, metrics, data fingerprint, status, the model JSON).
//!   Promote and roll back are transactions that `NOTIFY <schema>_production`;
//!   [`PgStore::listen`] keeps a `LISTEN` connection with reconnect and backoff and says
//!   when it (re)connected, so the caller re-reads the pointer and a missed notification
//!   never leaves it on an old model.
//!
//! Every error says what failed, with the connection string's password replaced by `***`.

use super::redact_conn_str;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Client, Config};
use tokio_postgres_rustls::MakeRustlsConnect;

/// The schema version this build creates and understands.
pub const SCHEMA_VERSION: i32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The connection string cannot be parsed, names no host, or the database does not exist.
    BadUrl,
    /// Wrong user or password, or the server refuses this client.
    Auth,
    /// No server answers (refused, unreachable, shutting down, too many connections).
    Unreachable,
    /// Connecting took longer than `connectTimeoutMs`, or a statement hit `statement_timeout`.
    Timeout,
    /// The connection dropped while a request was in flight (its outcome is unknown).
    Closed,
    /// TLS was required but the server does not offer it, or its certificate was not
    /// accepted (`sslmode=verify-ca|verify-full`).
    Tls,
    /// The database schema is newer than this build, or the schema name is not usable.
    Schema,
    /// The training lease was taken over: nothing was written.
    LeaseLost,
    NotFound,
    Invalid,
    /// Any other database error.
    Db,
}

#[derive(Clone, Debug)]
pub struct StoreError {
    pub kind: ErrorKind,
    pub message: String,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StoreError {}

impl StoreError {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// Worth retrying later (and spooling what could not be written meanwhile).
    pub fn is_transient(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Unreachable | ErrorKind::Timeout | ErrorKind::Closed
        )
    }
}

/// Store options (the connection string carries host, user, password and database).
#[derive(Clone, Debug)]
pub struct PgOptions {
    pub schema: String,
    pub pool_size: usize,
    pub connect_timeout: Duration,
    /// Server-side `statement_timeout` for every pooled connection (zero: none).
    pub statement_timeout: Duration,
    pub application_name: String,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            schema: "mlops".into(),
            pool_size: 4,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(10),
            application_name: "mlops-native".into(),
        }
    }
}

/// One group of feedback events of one instance, column by column (the shape the
/// single-statement insert sends).
#[derive(Clone, Debug, Default)]
pub struct FeedbackBatch {
    pub seqs: Vec<i64>,
    pub times_ms: Vec<f64>,
    /// Features as little-endian f64 bytes, one entry per event.
    pub features: Vec<Vec<u8>>,
    pub predictions: Vec<f64>,
    pub actuals: Vec<f64>,
}

impl FeedbackBatch {
    pub fn push(&mut self, seq: u64, t_ms: f64, features: &[f64], prediction: f64, actual: f64) {
        self.seqs.push(seq as i64);
        self.times_ms.push(t_ms);
        self.features.push(encode_features(features));
        self.predictions.push(prediction);
        self.actuals.push(actual);
    }

    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    pub fn clear(&mut self) {
        self.seqs.clear();
        self.times_ms.clear();
        self.features.clear();
        self.predictions.clear();
        self.actuals.clear();
    }
}

/// A group in `COPY … (FORMAT binary)` form: signature, flags, header extension, then per
/// row the field count and each field as (length, big-endian value), then the trailer.
fn encode_copy(model_key: &str, instance_id: &str, b: &FeedbackBatch) -> bytes::Bytes {
    let per_row = 2 + 7 * 4 + model_key.len() + instance_id.len() + 4 * 8;
    let feats: usize = b.features.iter().map(Vec::len).sum();
    let mut out = Vec::with_capacity(19 + b.len() * per_row + feats + 2);
    out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
    let field = |out: &mut Vec<u8>, bytes: &[u8]| {
        out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
        out.extend_from_slice(bytes);
    };
    for i in 0..b.len() {
        out.extend_from_slice(&7i16.to_be_bytes());
        field(&mut out, model_key.as_bytes());
        field(&mut out, instance_id.as_bytes());
        field(&mut out, &b.seqs[i].to_be_bytes());
        field(&mut out, &b.times_ms[i].to_be_bytes());
        field(&mut out, &b.features[i]);
        field(&mut out, &b.predictions[i].to_be_bytes());
        field(&mut out, &b.actuals[i].to_be_bytes());
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out.into()
}

pub fn encode_features(x: &[f64]) -> Vec<u8> {
    let mut b = Vec::with_capacity(x.len() * 8);
    for v in x {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b
}

pub fn decode_features(b: &[u8]) -> Vec<f64> {
    b.chunks_exact(8)
        .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect()
}

/// A position in the consumption order `(txid, instance_id, seq)`. The default is before
/// every event.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Watermark {
    pub txid: i64,
    pub instance_id: String,
    pub seq: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FeedbackRecord {
    pub pos: Watermark,
    pub t_ms: f64,
    pub features: Vec<f64>,
    pub prediction: f64,
    pub actual: f64,
}

/// A held training lease. `epoch` is the fencing token checked by every publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub model_key: String,
    pub holder: String,
    pub epoch: i64,
}

#[derive(Clone, Debug, Default)]
pub struct NewVersion {
    pub family: String,
    pub parent: Option<u32>,
    pub metrics: Value,
    pub base_metrics: Value,
    pub improvement: Option<f64>,
    pub accepted: Option<bool>,
    pub options: Value,
    /// What it was trained on; `data.fingerprint` (else `data.hash`), a string, is also kept
    /// in its own column.
    pub data: Value,
    /// The family's settings (trees: depth, count…; null for linear).
    pub hyperparameters: Value,
    pub model: Value,
    pub created_by: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct VersionRow {
    pub model_key: String,
    pub version: u32,
    pub family: String,
    pub parent: Option<u32>,
    pub status: String,
    pub metrics: Value,
    pub base_metrics: Value,
    pub improvement: Option<f64>,
    pub accepted: Option<bool>,
    pub options: Value,
    pub data: Value,
    pub fingerprint: Option<String>,
    pub hyperparameters: Value,
    /// Left out by listings that ask for metadata only.
    pub model: Option<Value>,
    pub created_ms: f64,
    pub created_by: Option<String>,
}

/// What [`PgStore::commit_cycle`] publishes besides the watermark.
pub struct Publish {
    pub version: NewVersion,
    /// Also make it the production version (and notify every listener).
    pub promote: bool,
}

/// What a listener hears.
#[derive(Clone, Debug, PartialEq)]
pub enum Notice {
    /// The LISTEN connection is (again) up: re-read the production pointer now, a
    /// notification may have been missed while it was down.
    Connected,
    Disconnected(String),
    /// The production pointer of `model_key` moved (to `version`, or to none).
    Production {
        model_key: String,
        version: Option<u32>,
    },
}

type PgResult<T> = Result<T, tokio_postgres::Error>;

/// Rendered SQL: the schema name is fixed per store, so statements are built once.
struct Sql {
    schema: String,
    channel: String,
    append: String,
    copy_in: String,
    read: String,
    acquire: String,
    renew: String,
    release: String,
    lease_info: String,
    lock_lease: String,
    get_watermark: String,
    put_watermark: String,
    alloc_version: String,
    insert_version: String,
    lock_model: String,
    version_exists: String,
    archive_production: String,
    set_status: String,
    set_pointer: String,
    production: String,
    history: String,
    version: String,
    next_version: String,
    all_next_versions: String,
    count_feedback: String,
}

const VERSION_COLS: &str = "v.model_key, v.version, v.family, v.parent, v.status, v.metrics, \
     v.base_metrics, v.improvement, v.accepted, v.options, v.data, v.fingerprint, v.created_ms, v.created_by, \
     v.hyperparameters";

impl Sql {
    fn new(schema: &str) -> Self {
        let s = format!("\"{schema}\"");
        let ms = "$ms::float8 * interval '1 millisecond'";
        let lease_ms = |n: usize| ms.replace("$ms", &format!("${n}"));
        Self {
            schema: s.clone(),
            channel: format!("{schema}_production"),
            append: format!(
                "INSERT INTO {s}.feedback (model_key, instance_id, seq, created_ms, features, prediction, actual) \
                 SELECT $1, $2, u.seq, u.t, u.f, u.p, u.a \
                 FROM unnest($3::int8[], $4::float8[], $5::bytea[], $6::float8[], $7::float8[]) AS u(seq, t, f, p, a) \
                 ON CONFLICT (instance_id, seq) DO NOTHING"
            ),
            copy_in: format!(
                "COPY {s}.feedback (model_key, instance_id, seq, created_ms, features, prediction, actual) \
                 FROM STDIN (FORMAT binary)"
            ),
            // One statement, one snapshot: the bound is the oldest transaction still
            // running when the statement started, so every row below it is final.
            read: format!(
                "WITH b AS (SELECT (pg_snapshot_xmin(pg_current_snapshot())::text)::int8 AS bound) \
                 SELECT f.txid, f.instance_id, f.seq, f.created_ms, f.features, f.prediction, f.actual \
                 FROM {s}.feedback f, b \
                 WHERE f.model_key = $1 AND (f.txid, f.instance_id, f.seq) > ($2, $3, $4) AND f.txid < b.bound \
                 ORDER BY f.txid, f.instance_id, f.seq LIMIT $5"
            ),
            acquire: format!(
                "INSERT INTO {s}.leases AS l (model_key, holder, epoch, expires_at, acquired_at) \
                 VALUES ($1, $2, 1, clock_timestamp() + {}, clock_timestamp()) \
                 ON CONFLICT (model_key) DO UPDATE \
                 SET holder = excluded.holder, epoch = l.epoch + 1, expires_at = excluded.expires_at, acquired_at = excluded.acquired_at \
                 WHERE l.expires_at < clock_timestamp() OR l.holder = excluded.holder \
                 RETURNING epoch",
                lease_ms(3)
            ),
            renew: format!(
                "UPDATE {s}.leases SET expires_at = clock_timestamp() + {} \
                 WHERE model_key = $1 AND holder = $2 AND epoch = $3",
                lease_ms(4)
            ),
            release: format!(
                "UPDATE {s}.leases SET expires_at = clock_timestamp() - interval '1 millisecond' \
                 WHERE model_key = $1 AND holder = $2 AND epoch = $3"
            ),
            lease_info: format!(
                "SELECT holder, epoch, expires_at > clock_timestamp() FROM {s}.leases WHERE model_key = $1"
            ),
            lock_lease: format!(
                "SELECT holder, epoch FROM {s}.leases WHERE model_key = $1 FOR UPDATE"
            ),
            get_watermark: format!(
                "SELECT txid, instance_id, seq, consumed FROM {s}.watermarks WHERE model_key = $1"
            ),
            put_watermark: format!(
                "INSERT INTO {s}.watermarks AS w (model_key, txid, instance_id, seq, consumed, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, now()) \
                 ON CONFLICT (model_key) DO UPDATE \
                 SET txid = excluded.txid, instance_id = excluded.instance_id, seq = excluded.seq, \
                     consumed = w.consumed + excluded.consumed, updated_at = now() \
                 WHERE (w.txid, w.instance_id, w.seq) <= (excluded.txid, excluded.instance_id, excluded.seq)"
            ),
            alloc_version: format!(
                "INSERT INTO {s}.models AS m (model_key, next_version) VALUES ($1, 2) \
                 ON CONFLICT (model_key) DO UPDATE SET next_version = m.next_version + 1 \
                 RETURNING next_version - 1"
            ),
            insert_version: format!(
                "INSERT INTO {s}.versions (model_key, version, family, parent, status, metrics, base_metrics, \
                 improvement, accepted, options, data, fingerprint, model, created_ms, created_by, hyperparameters) \
                 VALUES ($1, $2, $3, $4, 'candidate', $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
                 RETURNING created_ms"
            ),
            lock_model: format!(
                "SELECT production, history FROM {s}.models WHERE model_key = $1 FOR UPDATE"
            ),
            version_exists: format!(
                "SELECT 1 FROM {s}.versions WHERE model_key = $1 AND version = $2"
            ),
            archive_production: format!(
                "UPDATE {s}.versions SET status = 'archived' WHERE model_key = $1 AND status = 'production'"
            ),
            set_status: format!(
                "UPDATE {s}.versions SET status = $3 WHERE model_key = $1 AND version = $2"
            ),
            set_pointer: format!(
                "UPDATE {s}.models SET production = $2, history = $3, updated_at = now() WHERE model_key = $1"
            ),
            production: format!(
                "SELECT {VERSION_COLS}, v.model FROM {s}.models m JOIN {s}.versions v \
                 ON v.model_key = m.model_key AND v.version = m.production WHERE m.model_key = $1"
            ),
            history: format!(
                "SELECT {VERSION_COLS}, CASE WHEN $2 THEN v.model END FROM {s}.versions v \
                 WHERE v.model_key = $1 ORDER BY v.version DESC"
            ),
            version: format!(
                "SELECT {VERSION_COLS}, v.model FROM {s}.versions v WHERE v.model_key = $1 AND v.version = $2"
            ),
            next_version: format!("SELECT next_version FROM {s}.models WHERE model_key = $1"),
            all_next_versions: format!("SELECT model_key, next_version FROM {s}.models"),
            count_feedback: format!("SELECT count(*) FROM {s}.feedback WHERE model_key = $1"),
        }
    }

    /// Forward migrations: entry `i` takes the schema from version `i` to `i + 1`.
    fn migrations(&self) -> Vec<String> {
        let s = &self.schema;
        vec![format!(
            "CREATE TABLE IF NOT EXISTS {s}.feedback (
                model_key text NOT NULL,
                instance_id text COLLATE \"C\" NOT NULL,
                seq bigint NOT NULL,
                txid bigint NOT NULL DEFAULT ((pg_current_xact_id()::text)::bigint),
                created_ms double precision NOT NULL,
                features bytea NOT NULL,
                prediction double precision NOT NULL,
                actual double precision NOT NULL,
                PRIMARY KEY (instance_id, seq)
            );
            CREATE INDEX IF NOT EXISTS feedback_consume_order ON {s}.feedback (model_key, txid, instance_id, seq);
            CREATE TABLE IF NOT EXISTS {s}.watermarks (
                model_key text PRIMARY KEY,
                txid bigint NOT NULL,
                instance_id text COLLATE \"C\" NOT NULL,
                seq bigint NOT NULL,
                consumed bigint NOT NULL DEFAULT 0,
                updated_at timestamptz NOT NULL DEFAULT now()
            );
            CREATE TABLE IF NOT EXISTS {s}.leases (
                model_key text PRIMARY KEY,
                holder text NOT NULL,
                epoch bigint NOT NULL,
                expires_at timestamptz NOT NULL,
                acquired_at timestamptz NOT NULL
            );
            CREATE TABLE IF NOT EXISTS {s}.models (
                model_key text PRIMARY KEY,
                next_version integer NOT NULL DEFAULT 1,
                production integer,
                history integer[] NOT NULL DEFAULT '{{}}',
                updated_at timestamptz
            );
            CREATE TABLE IF NOT EXISTS {s}.versions (
                model_key text NOT NULL REFERENCES {s}.models (model_key),
                version integer NOT NULL,
                family text NOT NULL,
                parent integer,
                status text NOT NULL CHECK (status IN ('candidate', 'production', 'archived')),
                metrics jsonb,
                base_metrics jsonb,
                improvement double precision,
                accepted boolean,
                options jsonb,
                data jsonb,
                fingerprint text,
                hyperparameters jsonb,
                model jsonb NOT NULL,
                created_ms double precision NOT NULL,
                created_by text,
                PRIMARY KEY (model_key, version)
            );"
        )]
    }
}

struct Inner {
    pg: Config,
    /// Used only when `sslmode` asks for TLS (see `pg_tls`).
    tls: MakeRustlsConnect,
    opts: PgOptions,
    /// The connection string with its password replaced, for messages.
    shown: String,
    password: Option<String>,
    idle: Mutex<Vec<Client>>,
    sem: Arc<Semaphore>,
    sql: Sql,
    next_versions: Mutex<NextVersions>,
}

/// The version counters as last read, for callers that must not wait (see
/// [`PgStore::cached_next_version`]).
#[derive(Default)]
struct NextVersions {
    by_key: std::collections::HashMap<String, u32>,
    /// A full read has completed (a key missing from it has no version yet).
    loaded: bool,
    refreshing: bool,
}

impl NextVersions {
    /// Counters only grow: a read that started before a registration never moves one back.
    fn raise(&mut self, key: &str, next: u32) {
        let e = self.by_key.entry(key.to_owned()).or_insert(next);
        *e = (*e).max(next);
    }
}

/// How often the version counters are re-read once someone asked for one.
pub const NEXT_VERSION_REFRESH: Duration = Duration::from_secs(1);

/// A connection pool plus everything the package keeps in PostgreSQL. Cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

/// A pooled connection; back to the pool on drop unless it is broken.
struct Pooled {
    client: Option<Client>,
    inner: Arc<Inner>,
    _permit: OwnedSemaphorePermit,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PgStore({}, schema {})",
            self.inner.shown, self.inner.opts.schema
        )
    }
}

impl Deref for Pooled {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().expect("pooled client")
    }
}

impl DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().expect("pooled client")
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            if !c.is_closed() {
                self.inner.idle.lock().push(c);
            }
        }
    }
}

fn valid_schema(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 40
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !s.starts_with("pg_")
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = String::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

impl Inner {
    fn redact(&self, msg: String) -> String {
        let mut m = redact_conn_str(&msg);
        if let Some(p) = &self.password {
            if p.len() >= 4 {
                m = m.replace(p.as_str(), "***");
            }
        }
        m
    }

    fn err(&self, ctx: &str, e: &tokio_postgres::Error) -> StoreError {
        let (kind, detail) = match e.as_db_error() {
            Some(db) => {
                let code = db.code();
                let kind = if *code == SqlState::INVALID_PASSWORD
                    || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
                    || *code == SqlState::INSUFFICIENT_PRIVILEGE && ctx.starts_with("connect")
                {
                    ErrorKind::Auth
                } else if *code == SqlState::QUERY_CANCELED || *code == SqlState::LOCK_NOT_AVAILABLE
                {
                    ErrorKind::Timeout
                } else if *code == SqlState::INVALID_CATALOG_NAME {
                    ErrorKind::BadUrl
                } else if *code == SqlState::ADMIN_SHUTDOWN
                    || *code == SqlState::CRASH_SHUTDOWN
                    || *code == SqlState::CANNOT_CONNECT_NOW
                    || *code == SqlState::TOO_MANY_CONNECTIONS
                    || code.code().starts_with("08")
                {
                    ErrorKind::Unreachable
                } else {
                    ErrorKind::Db
                };
                let mut d = format!("{}: {} ({})", db.severity(), db.message(), code.code());
                if let Some(x) = db.detail() {
                    d.push_str(&format!("; {x}"));
                }
                (kind, d)
            }
            None => {
                let s = e.to_string();
                let kind = if e.is_closed() {
                    ErrorKind::Closed
                } else if s.starts_with("error connecting") || s.starts_with("error communicating")
                {
                    ErrorKind::Unreachable
                } else if s.starts_with("error performing TLS handshake") {
                    ErrorKind::Tls
                } else if s.starts_with("timeout") {
                    ErrorKind::Timeout
                } else if s.starts_with("authentication") {
                    ErrorKind::Auth
                } else if s.starts_with("invalid connection string")
                    || s.starts_with("invalid configuration")
                {
                    ErrorKind::BadUrl
                } else {
                    ErrorKind::Db
                };
                (kind, format!("{s}{}", source_chain(e)))
            }
        };
        StoreError::new(
            kind,
            self.redact(format!("PostgreSQL {}: {ctx}: {detail}", self.shown)),
        )
    }

    async fn connect_one(self: &Arc<Self>) -> Result<Client, StoreError> {
        let t = self.opts.connect_timeout;
        match tokio::time::timeout(t, self.pg.connect(self.tls.clone())).await {
            Ok(Ok((client, conn))) => {
                // The connection task ends when the server or the network goes away;
                // the client then reports is_closed() and the pool drops it.
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Ok(client)
            }
            Ok(Err(e)) => Err(self.err("connect", &e)),
            Err(_) => Err(StoreError::new(
                ErrorKind::Timeout,
                format!(
                    "PostgreSQL {}: connect: no answer within connectTimeoutMs ({} ms)",
                    self.shown,
                    t.as_millis()
                ),
            )),
        }
    }

    async fn get(self: &Arc<Self>) -> Result<Pooled, StoreError> {
        let t = self.opts.connect_timeout;
        let permit = match tokio::time::timeout(t, self.sem.clone().acquire_owned()).await {
            Ok(Ok(p)) => p,
            _ => {
                return Err(StoreError::new(
                    ErrorKind::Timeout,
                    format!(
                        "PostgreSQL {}: all {} pooled connections stayed busy for {} ms",
                        self.shown,
                        self.opts.pool_size,
                        t.as_millis()
                    ),
                ))
            }
        };
        loop {
            let c = self.idle.lock().pop();
            match c {
                Some(c) if !c.is_closed() => {
                    return Ok(Pooled {
                        client: Some(c),
                        inner: self.clone(),
                        _permit: permit,
                    })
                }
                Some(_) => continue,
                None => break,
            }
        }
        let c = self.connect_one().await?;
        Ok(Pooled {
            client: Some(c),
            inner: self.clone(),
            _permit: permit,
        })
    }
}

/// Runs `$body` (an expression using the pooled connection `$c`) and maps its error.
/// When the connection turns out to be dead (a pooled connection the server closed while
/// idle, e.g. after a restart) and `$retry` says the operation may run twice, it runs once
/// more on a fresh connection.
macro_rules! on_client {
    ($store:expr, $ctx:expr, $retry:expr, $c:ident => $body:expr) => {{
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            #[allow(unused_mut)]
            let mut $c = $store.inner.get().await?;
            let r: PgResult<_> = $body;
            match r {
                Ok(v) => break Ok::<_, StoreError>(v),
                Err(e) => {
                    let err = $store.inner.err($ctx, &e);
                    let dead = $c.is_closed()
                        || matches!(err.kind, ErrorKind::Closed | ErrorKind::Unreachable);
                    if $retry && dead && attempt < 2 {
                        continue;
                    }
                    break Err(err);
                }
            }
        }
    }};
}

impl PgStore {
    /// Parses the connection string, connects (within `connect_timeout`), and creates or
    /// migrates the schema.
    pub async fn connect(url: &str, opts: PgOptions) -> Result<PgStore, StoreError> {
        if !valid_schema(&opts.schema) {
            return Err(StoreError::new(
                ErrorKind::Schema,
                format!(
                    "schema {:?} is not usable: lower-case letters, digits and _ only, at most 40, not pg_*",
                    opts.schema
                ),
            ));
        }
        let shown = redact_conn_str(url);
        let bad = |e: String| {
            StoreError::new(
                ErrorKind::BadUrl,
                redact_conn_str(&format!("PostgreSQL {shown}: {e}")),
            )
        };
        let (conn_str, tls) = super::pg_tls::split_params(url).map_err(bad)?;
        let tls = super::pg_tls::connector(&tls).map_err(bad)?;
        let mut pg: Config = conn_str.parse().map_err(|e: tokio_postgres::Error| {
            StoreError::new(
                ErrorKind::BadUrl,
                redact_conn_str(&format!(
                    "PostgreSQL {shown}: {e}{} (expected postgres://user:password@host:port/database)",
                    source_chain(&e)
                )),
            )
        })?;
        if pg.get_hosts().is_empty() {
            return Err(StoreError::new(
                ErrorKind::BadUrl,
                format!("PostgreSQL {shown}: the connection string names no host"),
            ));
        }
        let password = pg
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        pg.connect_timeout(opts.connect_timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .tcp_user_timeout(opts.connect_timeout.max(Duration::from_secs(10)));
        if pg.get_application_name().is_none() {
            pg.application_name(opts.application_name.clone());
        }
        let mut options = pg.get_options().unwrap_or("").to_owned();
        options.push_str(&format!(
            " -c statement_timeout={}",
            opts.statement_timeout.as_millis()
        ));
        pg.options(options.trim().to_owned());
        let sql = Sql::new(&opts.schema);
        let store = PgStore {
            inner: Arc::new(Inner {
                pg,
                tls,
                sem: Arc::new(Semaphore::new(opts.pool_size.max(1))),
                opts,
                shown,
                password,
                idle: Mutex::new(Vec::new()),
                sql,
                next_versions: Mutex::new(NextVersions::default()),
            }),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// The connection string as it may be shown (password replaced).
    pub fn display_url(&self) -> &str {
        &self.inner.shown
    }

    pub fn schema(&self) -> &str {
        &self.inner.opts.schema
    }

    /// The NOTIFY channel promotions are announced on.
    pub fn channel(&self) -> &str {
        &self.inner.sql.channel
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let sql = &self.inner.sql;
        let version_q = format!("SELECT version FROM {}.schema_version", sql.schema);
        let mut c = self.inner.get().await?;
        // Fast path: already current (no lock, no DDL).
        if let Ok(Some(row)) = c.query_opt(version_q.as_str(), &[]).await {
            let v: i32 = row.get(0);
            if v == SCHEMA_VERSION {
                return Ok(());
            }
        }
        let migrations = sql.migrations();
        let schema = self.inner.opts.schema.clone();
        let res: PgResult<Result<(), StoreError>> = async {
            let tx = c.transaction().await?;
            // Processes starting together take turns; the loser then sees the work done.
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtext($1)::bigint)",
                &[&format!("mlops-migrate:{schema}")],
            )
            .await?;
            tx.batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {s};
                 CREATE TABLE IF NOT EXISTS {s}.schema_version (
                     id integer PRIMARY KEY CHECK (id = 1),
                     version integer NOT NULL,
                     updated_at timestamptz NOT NULL DEFAULT now());
                 INSERT INTO {s}.schema_version (id, version) VALUES (1, 0) ON CONFLICT DO NOTHING;",
                s = sql.schema
            ))
            .await?;
            let v: i32 = tx.query_one(version_q.as_str(), &[]).await?.get(0);
            if v > SCHEMA_VERSION {
                return Ok(Err(StoreError::new(
                    ErrorKind::Schema,
                    format!(
                        "PostgreSQL schema {schema} is at version {v}, newer than this package understands ({SCHEMA_VERSION}); upgrade the package"
                    ),
                )));
            }
            for m in migrations.iter().skip(v.max(0) as usize) {
                tx.batch_execute(m).await?;
            }
            tx.execute(
                format!(
                    "UPDATE {}.schema_version SET version = $1, updated_at = now()",
                    sql.schema
                )
                .as_str(),
                &[&SCHEMA_VERSION],
            )
            .await?;
            tx.commit().await?;
            Ok(Ok(()))
        }
        .await;
        match res {
            Ok(r) => r,
            Err(e) => Err(self.inner.err("creating the schema", &e)),
        }
    }

    /// The schema version recorded in the database.
    pub async fn schema_version(&self) -> Result<i32, StoreError> {
        let q = format!(
            "SELECT version FROM {}.schema_version",
            self.inner.sql.schema
        );
        on_client!(self, "reading the schema version", true, c => async { Ok(c.query_one(q.as_str(), &[]).await?.get(0)) }.await)
    }

    // ---------------------------------------------------------------- feedback

    /// Appends one group in one statement (one round trip, one commit). Returns how many
    /// rows were new; rows already there (same instance and seq) are skipped, so sending a
    /// group again after an unknown outcome is safe. `Ok` means committed.
    pub async fn append_feedback(
        &self,
        model_key: &str,
        instance_id: &str,
        batch: &FeedbackBatch,
    ) -> Result<u64, StoreError> {
        if batch.is_empty() {
            return Ok(0);
        }
        let q = self.inner.sql.append.as_str();
        on_client!(self, "appending feedback", true, c => async { c.execute(
                    q,
                    &[
                        &model_key,
                        &instance_id,
                        &batch.seqs,
                        &batch.times_ms,
                        &batch.features,
                        &batch.predictions,
                        &batch.actuals,
                    ],
                )
                .await }.await)
    }

    /// Appends a group that was never sent before with a binary `COPY` (one commit; the
    /// server does about a third less work per row than the de-duplicating `INSERT`).
    /// `COPY` cannot skip rows already stored, so when some are (an earlier attempt
    /// committed after all, e.g. the connection dropped after COMMIT), the whole `COPY` is
    /// refused and the group is sent again through [`PgStore::append_feedback`], which
    /// skips them. Same contract: `Ok` means committed, nothing is stored twice.
    pub async fn append_new_feedback(
        &self,
        model_key: &str,
        instance_id: &str,
        batch: &FeedbackBatch,
    ) -> Result<u64, StoreError> {
        if batch.is_empty() {
            return Ok(0);
        }
        let data = encode_copy(model_key, instance_id, batch);
        let q = self.inner.sql.copy_in.as_str();
        // In an explicit transaction: `COPY` answers CommandComplete *before* the implicit
        // transaction of the extended protocol commits (at Sync), so its answer alone is
        // not an acknowledgement; COMMIT's is.
        let copied = on_client!(self, "appending feedback", true, c => async {
            use futures_util::SinkExt;
            let tx = c.transaction().await?;
            let sent = async {
                let sink = tx.copy_in::<_, bytes::Bytes>(q).await?;
                futures_util::pin_mut!(sink);
                sink.send(data.clone()).await?;
                sink.as_mut().finish().await
            }
            .await;
            match sent {
                Ok(n) => {
                    tx.commit().await?;
                    Ok(Some(n))
                }
                // Dropping the transaction rolls it back.
                Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => Ok(None),
                Err(e) => Err(e),
            }
        }
        .await)?;
        match copied {
            Some(n) => Ok(n),
            None => self.append_feedback(model_key, instance_id, batch).await,
        }
    }

    /// Up to `limit` events after `after`, in consumption order, among those that can no
    /// longer be preceded by a late commit (see the module comment).
    pub async fn read_feedback(
        &self,
        model_key: &str,
        after: &Watermark,
        limit: usize,
    ) -> Result<Vec<FeedbackRecord>, StoreError> {
        let q = self.inner.sql.read.as_str();
        let limit = limit.min(i64::MAX as usize) as i64;
        let rows = on_client!(self, "reading feedback", true, c => async { c.query(
                        q,
                        &[
                            &model_key,
                            &after.txid,
                            &after.instance_id,
                            &after.seq,
                            &limit,
                        ],
                    )
                    .await }.await)?;
        Ok(rows
            .iter()
            .map(|r| FeedbackRecord {
                pos: Watermark {
                    txid: r.get(0),
                    instance_id: r.get(1),
                    seq: r.get(2),
                },
                t_ms: r.get(3),
                features: decode_features(r.get::<_, &[u8]>(4)),
                prediction: r.get(5),
                actual: r.get(6),
            })
            .collect())
    }

    pub async fn count_feedback(&self, model_key: &str) -> Result<u64, StoreError> {
        let q = self.inner.sql.count_feedback.as_str();
        let n: i64 = on_client!(self, "counting feedback", true, c => async { Ok(c.query_one(q, &[&model_key]).await?.get(0)) }.await)?;
        Ok(n as u64)
    }

    /// The committed watermark and how many events were consumed up to it.
    pub async fn watermark(&self, model_key: &str) -> Result<(Watermark, u64), StoreError> {
        let q = self.inner.sql.get_watermark.as_str();
        let row = on_client!(self, "reading the watermark", true, c => async { c.query_opt(q, &[&model_key]).await }.await)?;
        Ok(match row {
            Some(r) => (
                Watermark {
                    txid: r.get(0),
                    instance_id: r.get(1),
                    seq: r.get(2),
                },
                r.get::<_, i64>(3) as u64,
            ),
            None => (Watermark::default(), 0),
        })
    }

    // ---------------------------------------------------------------- lease

    /// Takes the training lease of `model_key` when it is free or expired (or already ours).
    /// `None`: someone else holds it.
    pub async fn try_acquire_lease(
        &self,
        model_key: &str,
        holder: &str,
        lease: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        let q = self.inner.sql.acquire.as_str();
        let ms = lease.as_secs_f64() * 1000.0;
        let row = on_client!(self, "taking the training lease", false, c => async { c.query_opt(q, &[&model_key, &holder, &ms]).await }.await)?;
        Ok(row.map(|r| Lease {
            model_key: model_key.to_owned(),
            holder: holder.to_owned(),
            epoch: r.get(0),
        }))
    }

    /// Extends a held lease. `false`: it was taken over (stop training; nothing the old
    /// holder publishes will be accepted).
    pub async fn renew_lease(&self, lease: &Lease, duration: Duration) -> Result<bool, StoreError> {
        let q = self.inner.sql.renew.as_str();
        let ms = duration.as_secs_f64() * 1000.0;
        let n = on_client!(self, "renewing the training lease", true, c => async { c.execute(q, &[&lease.model_key, &lease.holder, &lease.epoch, &ms])
                        .await }.await)?;
        Ok(n == 1)
    }

    /// Gives the lease up now so another process can take over at once.
    pub async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        let q = self.inner.sql.release.as_str();
        on_client!(self, "releasing the training lease", true, c => async { c.execute(q, &[&lease.model_key, &lease.holder, &lease.epoch])
                    .await }.await)?;
        Ok(())
    }

    /// (holder, epoch, still valid) of `model_key`'s lease, if anyone ever held it.
    pub async fn lease_info(
        &self,
        model_key: &str,
    ) -> Result<Option<(String, i64, bool)>, StoreError> {
        let q = self.inner.sql.lease_info.as_str();
        let row = on_client!(self, "reading the training lease", true, c => async { c.query_opt(q, &[&model_key]).await }.await)?;
        Ok(row.map(|r| (r.get(0), r.get(1), r.get(2))))
    }

    /// One transaction: checks the lease (fencing), moves the watermark to `to` (adding
    /// `consumed` to the count), optionally writes a version and promotes it (NOTIFY
    /// goes out at COMMIT), and extends the lease by `extend`. `LeaseLost`: nothing was
    /// written.
    pub async fn commit_cycle(
        &self,
        lease: &Lease,
        extend: Duration,
        to: &Watermark,
        consumed: u64,
        publish: Option<Publish>,
    ) -> Result<Option<VersionRow>, StoreError> {
        let inner = self.inner.clone();
        let mut c = inner.get().await?;
        let consumed = consumed as i64;
        let ms = extend.as_secs_f64() * 1000.0;
        let res: PgResult<Result<Option<VersionRow>, StoreError>> = async {
            let sql = &inner.sql;
            let tx = c.transaction().await?;
            let row = tx.query_opt(sql.lock_lease.as_str(), &[&lease.model_key]).await?;
            let ours = row.is_some_and(|r| {
                r.get::<_, String>(0) == lease.holder && r.get::<_, i64>(1) == lease.epoch
            });
            if !ours {
                return Ok(Err(StoreError::new(
                    ErrorKind::LeaseLost,
                    format!(
                        "the training lease of {} was taken over (epoch {} is stale); nothing was published",
                        lease.model_key, lease.epoch
                    ),
                )));
            }
            let moved = tx
                .execute(
                    sql.put_watermark.as_str(),
                    &[&lease.model_key, &to.txid, &to.instance_id, &to.seq, &consumed],
                )
                .await?;
            if moved != 1 {
                return Ok(Err(StoreError::new(
                    ErrorKind::Invalid,
                    format!(
                        "the watermark of {} would move backwards; nothing was published",
                        lease.model_key
                    ),
                )));
            }
            let mut out = None;
            if let Some(p) = publish {
                let mut v = insert_version(&tx, sql, &lease.model_key, p.version).await?;
                if p.promote {
                    promote_in(&tx, sql, &lease.model_key, v.version).await?;
                    v.status = "production".into();
                }
                out = Some(v);
            }
            tx.execute(
                sql.renew.as_str(),
                &[&lease.model_key, &lease.holder, &lease.epoch, &ms],
            )
            .await?;
            tx.commit().await?;
            Ok(Ok(out))
        }
        .await;
        let out = match res {
            Ok(r) => r,
            Err(e) => Err(inner.err("publishing a training cycle", &e)),
        }?;
        if let Some(v) = &out {
            inner
                .next_versions
                .lock()
                .raise(&v.model_key, v.version + 1);
        }
        Ok(out)
    }

    // ---------------------------------------------------------------- registry

    /// Records a new candidate version (numbers never repeat: the counter row is locked
    /// by the inserting transaction).
    pub async fn register(
        &self,
        model_key: &str,
        version: NewVersion,
    ) -> Result<VersionRow, StoreError> {
        let inner = self.inner.clone();
        let mut c = inner.get().await?;
        let res: PgResult<VersionRow> = async {
            let tx = c.transaction().await?;
            let v = insert_version(&tx, &inner.sql, model_key, version).await?;
            tx.commit().await?;
            Ok(v)
        }
        .await;
        let v = res.map_err(|e| inner.err("registering a version", &e))?;
        inner.next_versions.lock().raise(model_key, v.version + 1);
        Ok(v)
    }

    /// Makes `version` production (the previous one is archived) and notifies every
    /// listener, in one transaction.
    pub async fn promote(&self, model_key: &str, version: u32) -> Result<VersionRow, StoreError> {
        let inner = self.inner.clone();
        let mut c = inner.get().await?;
        let res: PgResult<Result<(), StoreError>> = async {
            let tx = c.transaction().await?;
            let exists = tx
                .query_opt(
                    inner.sql.version_exists.as_str(),
                    &[&model_key, &(version as i32)],
                )
                .await?
                .is_some();
            if !exists {
                return Ok(Err(StoreError::new(
                    ErrorKind::NotFound,
                    format!("{model_key} has no version {version}"),
                )));
            }
            promote_in(&tx, &inner.sql, model_key, version).await?;
            tx.commit().await?;
            Ok(Ok(()))
        }
        .await;
        res.map_err(|e| inner.err("promoting a version", &e))??;
        drop(c);
        self.version(model_key, version)
            .await?
            .ok_or_else(|| StoreError::new(ErrorKind::NotFound, format!("{model_key} v{version}")))
    }

    /// Moves production back to the version promoted before the current one (or to none).
    /// Returns the version now in production.
    pub async fn rollback(&self, model_key: &str) -> Result<Option<u32>, StoreError> {
        let inner = self.inner.clone();
        let mut c = inner.get().await?;
        let res: PgResult<Result<Option<u32>, StoreError>> = async {
            let sql = &inner.sql;
            let tx = c.transaction().await?;
            let row = tx.query_opt(sql.lock_model.as_str(), &[&model_key]).await?;
            let mut history: Vec<i32> = row.map(|r| r.get(1)).unwrap_or_default();
            if history.pop().is_none() {
                return Ok(Err(StoreError::new(
                    ErrorKind::NotFound,
                    format!("{model_key} has no production version to roll back"),
                )));
            }
            let prev = history.last().copied();
            tx.execute(sql.archive_production.as_str(), &[&model_key])
                .await?;
            if let Some(p) = prev {
                tx.execute(sql.set_status.as_str(), &[&model_key, &p, &"production"])
                    .await?;
            }
            tx.execute(sql.set_pointer.as_str(), &[&model_key, &prev, &history])
                .await?;
            notify(&tx, sql, model_key, prev.map(|p| p as u32), "rollback").await?;
            tx.commit().await?;
            Ok(Ok(prev.map(|p| p as u32)))
        }
        .await;
        res.map_err(|e| inner.err("rolling back", &e))?
    }

    /// The production version with its model, or `None` while the base model serves.
    pub async fn production(&self, model_key: &str) -> Result<Option<VersionRow>, StoreError> {
        let q = self.inner.sql.production.as_str();
        let row = on_client!(self, "reading the production version", true, c => async { c.query_opt(q, &[&model_key]).await }.await)?;
        Ok(row.map(|r| version_row(&r)))
    }

    pub async fn version(
        &self,
        model_key: &str,
        version: u32,
    ) -> Result<Option<VersionRow>, StoreError> {
        let q = self.inner.sql.version.as_str();
        let v = version as i32;
        let row = on_client!(self, "reading a version", true, c => async { c.query_opt(q, &[&model_key, &v]).await }.await)?;
        Ok(row.map(|r| version_row(&r)))
    }

    /// Every version, newest first (`with_models`: include each model's JSON).
    pub async fn history(
        &self,
        model_key: &str,
        with_models: bool,
    ) -> Result<Vec<VersionRow>, StoreError> {
        let q = self.inner.sql.history.as_str();
        let rows = on_client!(self, "reading the version history", true, c => async { c.query(q, &[&model_key, &with_models]).await }.await)?;
        Ok(rows.iter().map(version_row).collect())
    }

    /// The number the next registered version of `model_key` will get.
    pub async fn next_version(&self, model_key: &str) -> Result<u32, StoreError> {
        let q = self.inner.sql.next_version.as_str();
        let row = on_client!(self, "reading the version counter", true, c => async { c.query_opt(q, &[&model_key]).await }.await)?;
        let n = row.map_or(1, |r| r.get::<_, i32>(0) as u32);
        self.inner.next_versions.lock().raise(model_key, n);
        Ok(n)
    }

    /// Reads every model key's version counter into the cache.
    pub async fn refresh_next_versions(&self) -> Result<(), StoreError> {
        let q = self.inner.sql.all_next_versions.as_str();
        let rows = on_client!(self, "reading the version counters", true, c => async { c.query(q, &[]).await }.await)?;
        let mut cache = self.inner.next_versions.lock();
        for r in rows {
            let key: String = r.get(0);
            cache.raise(&key, r.get::<_, i32>(1) as u32);
        }
        cache.loaded = true;
        Ok(())
    }

    /// The number the next registered version of `model_key` will get, without waiting:
    /// from a cache that a background task re-reads every [`NEXT_VERSION_REFRESH`] (started
    /// by the first call, for the life of the store) and that this process's own
    /// registrations move at once. So a registration by another process shows after at
    /// most about that long. `None` until the first read has completed. (The number a
    /// registration gets is allocated in its own transaction; this is a preview.)
    pub fn cached_next_version(&self, model_key: &str) -> Option<u32> {
        let mut cache = self.inner.next_versions.lock();
        if !cache.refreshing {
            let weak = Arc::downgrade(&self.inner);
            let started = super::super::runtime::spawn(async move {
                let mut tick = tokio::time::interval(NEXT_VERSION_REFRESH);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(inner) = weak.upgrade() else { return };
                    // A failed read keeps the last figures; the next tick tries again.
                    let _ = PgStore { inner }.refresh_next_versions().await;
                }
            });
            cache.refreshing = started.is_ok();
        }
        if !cache.loaded {
            return None;
        }
        Some(cache.by_key.get(model_key).copied().unwrap_or(1))
    }

    // ---------------------------------------------------------------- listening

    /// Keeps one connection LISTENing for production changes until the returned
    /// [`Listener`] is dropped. `on` hears [`Notice::Connected`] after every (re)connect,
    /// [`Notice::Disconnected`] when the connection is lost (then it reconnects with
    /// backoff: 50 ms doubling up to 2 s), and every promotion or rollback. A heartbeat
    /// query every `heartbeat` notices a connection that died silently.
    pub fn listen(
        &self,
        heartbeat: Duration,
        on: impl Fn(Notice) + Send + Sync + 'static,
    ) -> Result<Listener, String> {
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let inner = self.inner.clone();
        let on = Arc::new(on);
        let task = super::super::runtime::spawn(async move {
            let mut backoff = Duration::from_millis(50);
            loop {
                let session = listen_once(&inner, heartbeat, &*on, &mut stop_rx, &mut backoff);
                let err = session.await;
                if *stop_rx.borrow() {
                    return;
                }
                on(Notice::Disconnected(err));
                // Jitter so a fleet does not reconnect in lock-step after a restart.
                let jitter = Duration::from_micros(
                    (std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.subsec_nanos()) as u64)
                        % (backoff.as_micros() as u64 / 2 + 1),
                );
                tokio::select! {
                    _ = tokio::time::sleep(backoff + jitter) => {}
                    _ = stop_rx.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        })?;
        Ok(Listener {
            stop: stop_tx,
            task: Some(task),
        })
    }
}

/// One LISTEN session: returns why it ended.
async fn listen_once(
    inner: &Arc<Inner>,
    heartbeat: Duration,
    on: &(dyn Fn(Notice) + Send + Sync),
    stop: &mut watch::Receiver<bool>,
    backoff: &mut Duration,
) -> String {
    let t = inner.opts.connect_timeout;
    let (client, mut conn) =
        match tokio::time::timeout(t, inner.pg.connect(inner.tls.clone())).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return inner.err("listen: connect", &e).message,
            Err(_) => {
                return format!(
                    "PostgreSQL {}: listen: no answer within connectTimeoutMs ({} ms)",
                    inner.shown,
                    t.as_millis()
                )
            }
        };
    let (msg_tx, mut msg_rx) = tokio::sync::mpsc::unbounded_channel();
    // Drives the connection and forwards notifications; ends when the connection does.
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if msg_tx.send(Ok(n.payload().to_owned())).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    let _ = msg_tx.send(Err(e));
                    return;
                }
                None => {
                    return;
                }
            }
        }
    });
    let _abort = AbortOnDrop(driver);
    if let Err(e) = client
        .batch_execute(&format!("LISTEN \"{}\"", inner.sql.channel))
        .await
    {
        return inner.err("listen", &e).message;
    }
    *backoff = Duration::from_millis(50);
    on(Notice::Connected);
    let mut beat = tokio::time::interval(heartbeat.max(Duration::from_millis(50)));
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            m = msg_rx.recv() => match m {
                Some(Ok(payload)) => {
                    if let Some(n) = parse_notice(&payload) {
                        on(n);
                    }
                }
                Some(Err(e)) => return inner.err("listen", &e).message,
                None => return format!("PostgreSQL {}: listen: connection closed", inner.shown),
            },
            _ = beat.tick() => {
                match tokio::time::timeout(t, client.simple_query("SELECT 1")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return inner.err("listen: heartbeat", &e).message,
                    Err(_) => return format!("PostgreSQL {}: listen: heartbeat unanswered for {} ms", inner.shown, t.as_millis()),
                }
            }
            _ = stop.changed() => return String::new(),
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn parse_notice(payload: &str) -> Option<Notice> {
    let v: Value = serde_json::from_str(payload).ok()?;
    Some(Notice::Production {
        model_key: v.get("modelKey")?.as_str()?.to_owned(),
        version: v.get("version").and_then(Value::as_u64).map(|n| n as u32),
    })
}

/// Stops listening when dropped.
pub struct Listener {
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Listener {
    pub fn stop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn insert_version(
    tx: &tokio_postgres::Transaction<'_>,
    sql: &Sql,
    model_key: &str,
    v: NewVersion,
) -> PgResult<VersionRow> {
    let n: i32 = tx
        .query_one(sql.alloc_version.as_str(), &[&model_key])
        .await?
        .get(0);
    // `fingerprint`, else the fine-tuner's `hash` of the rows it trained on.
    let fingerprint = ["fingerprint", "hash"]
        .iter()
        .find_map(|k| v.data.get(*k).and_then(Value::as_str))
        .map(str::to_owned);
    let parent = v.parent.map(|p| p as i32);
    let created = now_ms();
    let nullable = |x: &Value| if x.is_null() { None } else { Some(x.clone()) };
    let (metrics, base_metrics, options, data, hyper) = (
        nullable(&v.metrics),
        nullable(&v.base_metrics),
        nullable(&v.options),
        nullable(&v.data),
        nullable(&v.hyperparameters),
    );
    tx.query_one(
        sql.insert_version.as_str(),
        &[
            &model_key,
            &n,
            &v.family,
            &parent,
            &metrics,
            &base_metrics,
            &v.improvement,
            &v.accepted,
            &options,
            &data,
            &fingerprint,
            &v.model,
            &created,
            &v.created_by,
            &hyper,
        ],
    )
    .await?;
    Ok(VersionRow {
        model_key: model_key.to_owned(),
        version: n as u32,
        family: v.family,
        parent: v.parent,
        status: "candidate".into(),
        metrics: v.metrics,
        base_metrics: v.base_metrics,
        improvement: v.improvement,
        accepted: v.accepted,
        options: v.options,
        data: v.data,
        fingerprint,
        hyperparameters: v.hyperparameters,
        model: Some(v.model),
        created_ms: created,
        created_by: v.created_by,
    })
}

async fn promote_in(
    tx: &tokio_postgres::Transaction<'_>,
    sql: &Sql,
    model_key: &str,
    version: u32,
) -> PgResult<()> {
    let row = tx.query_opt(sql.lock_model.as_str(), &[&model_key]).await?;
    let mut history: Vec<i32> = row.map(|r| r.get(1)).unwrap_or_default();
    let v = version as i32;
    if history.last() != Some(&v) {
        history.push(v);
    }
    tx.execute(sql.archive_production.as_str(), &[&model_key])
        .await?;
    tx.execute(sql.set_status.as_str(), &[&model_key, &v, &"production"])
        .await?;
    tx.execute(sql.set_pointer.as_str(), &[&model_key, &Some(v), &history])
        .await?;
    notify(tx, sql, model_key, Some(version), "promote").await
}

/// Queued by PostgreSQL and delivered to every listener at COMMIT (never on rollback).
async fn notify(
    tx: &tokio_postgres::Transaction<'_>,
    sql: &Sql,
    model_key: &str,
    version: Option<u32>,
    action: &str,
) -> PgResult<()> {
    let payload =
        json!({ "modelKey": model_key, "version": version, "action": action }).to_string();
    tx.execute("SELECT pg_notify($1, $2)", &[&sql.channel, &payload])
        .await?;
    Ok(())
}

fn version_row(r: &tokio_postgres::Row) -> VersionRow {
    let json = |i: usize| r.get::<_, Option<Value>>(i).unwrap_or(Value::Null);
    VersionRow {
        model_key: r.get(0),
        version: r.get::<_, i32>(1) as u32,
        family: r.get(2),
        parent: r.get::<_, Option<i32>>(3).map(|p| p as u32),
        status: r.get(4),
        metrics: json(5),
        base_metrics: json(6),
        improvement: r.get(7),
        accepted: r.get(8),
        options: json(9),
        data: json(10),
        fingerprint: r.get(11),
        created_ms: r.get(12),
        created_by: r.get(13),
        hyperparameters: json(14),
        model: r.get::<_, Option<Value>>(15),
    }
}

fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
#[path = "postgres_tests.rs"]
mod tests;
