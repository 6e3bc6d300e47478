//! The streaming worker on PostgreSQL (`new RealTimeModelUpdates({ store: 'postgres://…' })`).
//!
//! What changes against the file mode, and why:
//! * **Feedback** goes to the shared `feedback` table (one statement per group; the
//!   Promise resolves after COMMIT), or to the local spool while the database cannot take
//!   it (`core::store::pg_stream`). Local events are not learned from locally: the fleet's
//!   one trainer learns from everyone's events, each exactly once.
//! * **Training**: one process per model key holds the lease and consumes the feedback of
//!   every process from the committed watermark. An accepted cycle is published as a
//!   registry version (family `online`) and promoted in the same transaction that moves the
//!   watermark; a rejected one moves only the watermark.
//! * **Serving**: every process serves the production version. A `NOTIFY` on promotion (or
//!   a reconnect of the LISTEN connection, or a check every 2 s as a backstop) makes the
//!   worker re-read the pointer and hot-swap. Serving processes keep no local correction:
//!   a local one would learn from a subset of the traffic and drift from what the fleet
//!   serves, and the leader's model already includes their feedback.
//! * **Leadership changes**: a process that becomes the trainer starts its learner from
//!   the production model; one that loses the lease drops what it learned but did not
//!   publish (its events are re-read by the new trainer from the watermark).

use super::super::store::connect_shared;
use super::super::store::pg_registry::PgRegistry;
use super::super::store::pg_stream::{
    new_instance_id, Durable, LeaseChange, PgFeedbackWriter, PgTrainer, PipelinedWriter,
    WriterEvent, WriterFigures,
};
use super::super::store::postgres::{
    FeedbackBatch, Listener, NewVersion, Notice, PgOptions, PgStore, Publish,
};
use super::{now_ms, Msg, Notifier, Shared, Worker};
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct PgStreamConfig {
    pub url: String,
    pub options: PgOptions,
    /// Lease duration: a dead trainer is replaced within this time.
    pub lease_ms: u64,
    /// How often the trainer reads new feedback.
    pub poll_ms: u64,
    /// Where groups go while the database cannot take them.
    pub spool_dir: PathBuf,
    /// Where production models are cached as files (`<modelsDir>/fine-tuned`).
    pub cache_dir: PathBuf,
    /// False: this process serves and forwards feedback but never trains.
    pub train: bool,
}

pub(super) struct PgSide {
    cfg: PgStreamConfig,
    store: PgStore,
    writer: PipelinedWriter,
    /// The writer's counters and the events it acknowledged (for statistics).
    figures: Arc<Mutex<(WriterFigures, u64)>>,
    trainer: PgTrainer,
    registry: PgRegistry,
    _listener: Option<Listener>,
    instance_id: String,
    /// Set by the LISTEN connection: re-read the production pointer.
    sync_flag: Arc<AtomicBool>,
    listener_errors: Arc<Mutex<Vec<String>>>,
    next_poll: Instant,
    next_sync: Instant,
    last_swap_ms: Option<f64>,
}

/// Groups written at once: one commits (WAL flush) while the next is being sent.
const WRITES_IN_FLIGHT: usize = 2;

fn report_error(shared: &Shared, notifier: &dyn Notifier, msg: String) {
    *shared.last_error.lock() = Some(msg.clone());
    notifier.notify("error", 0, json!({ "message": msg }));
}

/// The writer's report on a group or a forward, on a runtime thread: statistics first
/// (a caller that reads them after its await sees its events counted), then the answer.
fn on_writer_event(
    shared: &Shared,
    notifier: &dyn Notifier,
    figures: &Mutex<(WriterFigures, u64)>,
    ev: WriterEvent,
    fig: WriterFigures,
) {
    let handed_off = {
        let mut f = figures.lock();
        f.0 = fig;
        if let WriterEvent::Group {
            events,
            result: Ok(_),
            ..
        } = &ev
        {
            f.1 += events;
        }
        f.1
    };
    if let Some(v) = shared.pg_stats.lock().as_mut() {
        v["online"] = fig.online.into();
        v["handedOff"] = handed_off.into();
        v["writtenToDatabase"] = fig.db_total.into();
        v["spooled"] = fig.spooled_total.into();
        v["spoolPending"] = fig.spool_pending.into();
        v["forwarded"] = fig.forwarded_total.into();
    }
    let c = &shared.counters;
    match ev {
        WriterEvent::Group {
            max_ticket,
            events,
            result,
            db_error,
        } => match result {
            Ok(d) => {
                if let Some(e) = db_error {
                    let spooled = d == Durable::Spool;
                    report_error(
                        shared,
                        notifier,
                        format!(
                            "{e}{}",
                            if spooled {
                                "; feedback is spooled locally and forwarded when the database is back"
                            } else {
                                ""
                            }
                        ),
                    );
                }
                c.durable_ticket.fetch_max(max_ticket, Ordering::AcqRel);
                notifier.notify("durable", max_ticket, Value::Null);
            }
            Err(e) => {
                c.log_failed.fetch_add(events, Ordering::Relaxed);
                report_error(
                    shared,
                    notifier,
                    format!("postgres: {e}; {events} event(s) are not durable anywhere (answered false, not used)"),
                );
                notifier.notify("durable-failed", max_ticket, Value::Null);
            }
        },
        WriterEvent::Forwarded(Ok(n)) if n > 0 => notifier.notify(
            "forwarded",
            n,
            json!({ "forwarded": n, "message": format!("{n} spooled event(s) forwarded to PostgreSQL") }),
        ),
        WriterEvent::Forwarded(Ok(_)) => {}
        WriterEvent::Forwarded(Err(e)) => report_error(
            shared,
            notifier,
            format!("postgres: spool not forwarded yet ({e})"),
        ),
    }
}

impl Worker {
    /// Connects (within `connectTimeoutMs`), creates the schema if needed, starts listening.
    pub(super) fn pg_start(&mut self) -> Result<(), String> {
        let Some(cfg) = self.cfg.postgres.clone() else {
            return Ok(());
        };
        let store = connect_shared(&cfg.url, cfg.options.clone()).map_err(|e| e.message)?;
        let model_key = super::super::registry::stem_of(&self.cfg.model_path);
        let instance_id = new_instance_id();
        let timeout = cfg.options.connect_timeout + cfg.options.statement_timeout;
        let writer = PgFeedbackWriter::new(
            store.clone(),
            &model_key,
            &instance_id,
            &cfg.spool_dir,
            timeout,
        );
        let trainer = PgTrainer::new(
            store.clone(),
            &model_key,
            &instance_id,
            Duration::from_millis(cfg.lease_ms.max(100)),
            timeout,
        );
        let figures = Arc::new(Mutex::new((WriterFigures::default(), 0u64)));
        let (shared, notifier, figs) =
            (self.shared.clone(), self.notifier.clone(), figures.clone());
        let writer = PipelinedWriter::start(writer, WRITES_IN_FLIGHT, move |ev, fig| {
            on_writer_event(&shared, &*notifier, &figs, ev, fig)
        })?;
        let registry = PgRegistry::new(store.clone(), &cfg.cache_dir, &self.cfg.model_path);
        let sync_flag = Arc::new(AtomicBool::new(true));
        let listener_errors = Arc::new(Mutex::new(Vec::new()));
        let (flag, errs, key) = (
            sync_flag.clone(),
            listener_errors.clone(),
            model_key.clone(),
        );
        let listener = store.listen(Duration::from_secs(1), move |n| match n {
            Notice::Connected => flag.store(true, Ordering::Release),
            Notice::Production { model_key, .. } if model_key == key => {
                flag.store(true, Ordering::Release)
            }
            Notice::Production { .. } => {}
            Notice::Disconnected(e) => errs.lock().push(e),
        })?;
        self.pg = Some(PgSide {
            cfg,
            store: store.clone(),
            writer,
            figures,
            trainer,
            registry,
            _listener: Some(listener),
            instance_id,
            sync_flag,
            listener_errors,
            next_poll: Instant::now(),
            next_sync: Instant::now(),
            last_swap_ms: None,
        });
        self.pg_stats();
        Ok(())
    }

    /// Hands a group to the PostgreSQL writer; its events are answered (durable or
    /// false) when the writer reports the group, in order (see `PipelinedWriter`).
    pub(super) fn pg_log(&mut self, msgs: &[Msg], base: u64, n: u64, max_ticket: u64) {
        let Some(pg) = self.pg.as_mut() else { return };
        let mut batch = FeedbackBatch::default();
        let t = now_ms();
        for m in msgs {
            m.for_each_event(|ticket, x, p, y| batch.push(base + ticket, t, x, p, y));
        }
        if pg.writer.submit(batch, max_ticket).is_err() {
            self.shared
                .counters
                .log_failed
                .fetch_add(n, Ordering::Relaxed);
            self.error(format!(
                "postgres: the feedback writer stopped; {n} event(s) are not durable anywhere (answered false, not used)"
            ));
            self.notifier
                .notify("durable-failed", max_ticket, Value::Null);
        }
    }

    /// Waits until every group handed to the writer is answered (a flush request).
    pub(super) fn pg_drain(&mut self) {
        if let Some(pg) = self.pg.as_ref() {
            let t = pg.cfg.options.connect_timeout + pg.cfg.options.statement_timeout;
            pg.writer.drain(t * 2, false);
        }
    }

    /// Production pointer → what serves (when it moved).
    pub(super) fn pg_sync(&mut self) {
        let Some(pg) = self.pg.as_mut() else { return };
        pg.sync_flag.store(false, Ordering::Release);
        pg.next_sync = Instant::now() + Duration::from_secs(2);
        let t0 = Instant::now();
        let prod = pg.registry.production();
        match prod {
            Ok(Some(e)) if Some(e.version) != self.registry_version => {
                let before = self.registry_version;
                self.registry_version = Some(e.version);
                match self.hot_swap(Path::new(&e.model_path), format!("postgres v{}", e.version)) {
                    Ok(mut r) => {
                        if let Some(pg) = self.pg.as_mut() {
                            pg.last_swap_ms = Some(t0.elapsed().as_secs_f64() * 1000.0);
                        }
                        r["reason"] = "registry".into();
                        r["registryVersion"] = e.version.into();
                        self.notifier.notify("update", 0, r);
                    }
                    Err(err) => {
                        self.registry_version = before;
                        self.error(format!(
                            "postgres production v{}: {err}; still serving {}",
                            e.version,
                            self.base_path.display()
                        ))
                    }
                }
            }
            Ok(None) if self.registry_version.is_some() => {
                // Rolled back to no version: the base model serves again.
                self.registry_version = None;
                let base = self.cfg.model_path.clone();
                if let Err(err) = self.hot_swap(&base, base.display().to_string()) {
                    self.error(format!(
                        "postgres: rolled back to the base model, but {err}"
                    ));
                }
            }
            Ok(_) => {}
            Err(e) => self.error(format!("postgres: {e}")),
        }
    }

    /// Drops unpublished learning and serves the production model again.
    pub(super) fn pg_reset(&mut self) {
        self.buffer.clear();
        self.shared.counters.buffered.store(0, Ordering::Relaxed);
        self.registry_version = Some(u32::MAX);
        self.pg_sync();
        if self.registry_version == Some(u32::MAX) {
            // No production version: start again from the base model.
            self.registry_version = None;
            let base = self.cfg.model_path.clone();
            if let Ok(m) = super::Model::load(&base) {
                self.install(m);
                self.publish(base.display().to_string());
            }
        }
    }

    /// Called every loop: listener news, spool forwarding, lease, and (as trainer) new
    /// feedback into the buffer.
    pub(super) fn pg_tick(&mut self) {
        let Some(pg) = self.pg.as_mut() else { return };
        let errs: Vec<String> = std::mem::take(&mut *pg.listener_errors.lock());
        let now = Instant::now();
        let sync = pg.sync_flag.load(Ordering::Acquire) || now >= pg.next_sync;
        for e in errs {
            self.error(e);
        }
        if sync {
            self.pg_sync();
        }
        let Some(pg) = self.pg.as_mut() else { return };
        if now < pg.next_poll {
            return;
        }
        pg.next_poll = now + Duration::from_millis(pg.cfg.poll_ms.max(1));
        if pg.cfg.train {
            match pg.trainer.tick() {
                Ok(LeaseChange::Acquired) => {
                    self.pg_reset();
                    self.notifier.notify(
                        "leader",
                        0,
                        json!({ "leader": true, "message": "this process trains now" }),
                    );
                }
                Ok(LeaseChange::Lost) => {
                    self.pg_reset();
                    self.notifier.notify(
                        "leader",
                        0,
                        json!({ "leader": false, "message": "another process took over training" }),
                    );
                }
                Ok(LeaseChange::None) => {}
                Err(e) => self.error(format!("postgres: training lease: {e}")),
            }
        }
        self.pg_consume();
        self.pg_stats();
    }

    /// As trainer: everyone's new feedback → the buffer (cycles run as in file mode).
    fn pg_consume(&mut self) {
        let limit = self
            .cfg
            .buffer_size
            .max(self.cfg.max_samples_per_update)
            .clamp(64, 10_000);
        for _ in 0..8 {
            let Some(pg) = self.pg.as_mut() else { return };
            if !pg.trainer.leading() {
                return;
            }
            let rows = match pg.trainer.poll(limit) {
                Ok(r) => r,
                Err(e) => {
                    self.error(format!("postgres: reading feedback: {e}"));
                    return;
                }
            };
            let n = rows.len();
            for r in rows {
                if let Some(pg) = self.pg.as_mut() {
                    if !pg.trainer.leading() {
                        return;
                    }
                    pg.trainer.taken(&r.pos);
                }
                self.ingest(r.pos.seq.max(0) as u64, &r.features, r.prediction, r.actual);
            }
            if n < limit {
                return;
            }
        }
    }

    /// After a cycle decided (`accepted`): publish the version and move the watermark in
    /// one transaction. Adds `registryVersion` to the report when a version was published.
    pub(super) fn pg_after_cycle(&mut self, report: Option<&mut Value>, accepted: bool) {
        let Some(pg) = self.pg.as_mut() else { return };
        if !pg.trainer.leading() {
            return;
        }
        // A tree family's corrector is not a model on its own: it serves here, unpublished.
        let publish = match (&self.learner, accepted && self.trees.is_none()) {
            (Some(l), true) => {
                let (weights, bias) = l.to_raw();
                let mut model = json!({ "weights": weights, "bias": bias, "family": "online" });
                if let Some(names) = &self.names {
                    model["featureNames"] = json!(names.as_slice());
                }
                let r = report.as_deref();
                let get = |k: &str| r.and_then(|r| r.get(k)).cloned().unwrap_or(Value::Null);
                Some(Publish {
                    version: NewVersion {
                        family: "online".into(),
                        parent: self.registry_version.filter(|v| *v != u32::MAX),
                        metrics: json!({ "mse": get("candidateMse") }),
                        base_metrics: json!({ "mse": get("currentMse") }),
                        improvement: get("improvement").as_f64(),
                        accepted: Some(true),
                        options: json!({ "reason": get("reason"), "threshold": get("threshold") }),
                        // The feedback it was trained on ends at this watermark position.
                        data: json!({
                            "rows": get("samples"),
                            "consumed": pg.trainer.uncommitted(),
                            "fingerprint": pg.trainer.cursor().map(|w| format!("watermark:{}:{}:{}", w.txid, w.instance_id, w.seq)),
                        }),
                        hyperparameters: Value::Null,
                        model,
                        created_by: Some(pg.instance_id.clone()),
                    },
                    promote: true,
                })
            }
            _ => None,
        };
        match pg.trainer.commit(publish) {
            Ok(Some(v)) => {
                self.registry_version = Some(v.version);
                if let Some(r) = report {
                    r["registryVersion"] = v.version.into();
                }
            }
            Ok(None) => {}
            Err(e) => {
                let lost = !pg.trainer.leading();
                self.error(format!("postgres: publishing a cycle: {e}"));
                if lost {
                    self.pg_reset();
                }
            }
        }
        self.pg_stats();
    }

    /// Clean stop: give the lease up (another process takes over at once) and try to
    /// forward what is spooled.
    pub(super) fn pg_finish(&mut self) {
        if let Some(pg) = self.pg.as_mut() {
            pg.trainer.release();
            // Every group answered, then one attempt to forward the spool.
            let t = pg.cfg.options.connect_timeout + pg.cfg.options.statement_timeout;
            pg.writer.drain(t * 2, true);
        }
        self.pg_stats();
        self.pg = None;
    }

    pub(super) fn pg_stats(&self) {
        let Some(pg) = &self.pg else { return };
        // Held while the writer's figures are read: the writer updates them, then these
        // statistics, so a figure written here is never older than one it wrote.
        let mut out = self.shared.pg_stats.lock();
        let (fig, handed_off) = *pg.figures.lock();
        let v = json!({
            "url": pg.store.display_url(),
            "schema": pg.store.schema(),
            "instanceId": pg.instance_id,
            "modelKey": pg.trainer.model_key,
            "leader": pg.trainer.leading(),
            "online": fig.online,
            "handedOff": handed_off,
            "writtenToDatabase": fig.db_total,
            "spooled": fig.spooled_total,
            "spoolPending": fig.spool_pending,
            "forwarded": fig.forwarded_total,
            "consumed": pg.trainer.committed_consumed,
            "uncommitted": pg.trainer.uncommitted(),
            "productionVersion": self.registry_version.filter(|v| *v != u32::MAX),
            "lastSwapFetchMs": pg.last_swap_ms,
        });
        *out = Some(v);
    }
}
