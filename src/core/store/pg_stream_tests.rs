//! Writer and trainer against a real PostgreSQL (throwaway cluster).

use super::super::postgres::{NewVersion, PgOptions, PgStore, Publish};
use super::super::testpg::TestCluster;
use super::*;
use serde_json::json;

#[test]
fn spool_while_down_forward_once_back_and_hand_over_training() {
    let pg = TestCluster::start();
    let url = pg.url();
    let o = PgOptions {
        connect_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let store = runtime::block_on(async move { PgStore::connect(&url, o).await })
        .unwrap()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("mlops-pgw-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let mut w = PgFeedbackWriter::new(store.clone(), "q", "inst-1", &dir, Duration::from_secs(2));
    assert_eq!(w.write(batch(1..101)).unwrap().0, Durable::Database);

    // Database down: groups are spooled (and acknowledged), quickly.
    pg.stop_server("immediate");
    let t = Instant::now();
    let (d, why) = w.write(batch(101..201)).unwrap();
    assert_eq!(d, Durable::Spool);
    assert!(why.is_some());
    assert_eq!(w.write(batch(201..301)).unwrap().0, Durable::Spool);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(!w.online());
    std::thread::sleep(Duration::from_millis(150));
    assert!(matches!(w.tick(), Some(Err(_))), "still down");

    // Back: the next due tick forwards the spool; the sum is exact, nothing twice.
    assert!(pg.start_server());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(Ok(n)) = w.tick() {
            assert_eq!(n, 200);
            break;
        }
        assert!(Instant::now() < deadline, "spool was not forwarded");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(w.online());
    assert_eq!(w.write(batch(301..311)).unwrap().0, Durable::Database);
    // Re-sending a group (an unknown outcome retried) stores nothing twice.
    assert_eq!(w.write(batch(290..311)).unwrap().0, Durable::Database);
    let s = store.clone();
    let n = runtime::block_on(async move { s.count_feedback("q").await })
        .unwrap()
        .unwrap();
    assert_eq!(n, 310);

    // Training: one leader; a takeover continues from the committed watermark.
    let mut a = PgTrainer::new(
        store.clone(),
        "q",
        "A",
        Duration::from_millis(400),
        Duration::from_secs(3),
    );
    let mut b = PgTrainer::new(
        store.clone(),
        "q",
        "B",
        Duration::from_millis(400),
        Duration::from_secs(3),
    );
    assert_eq!(a.tick().unwrap(), LeaseChange::Acquired);
    assert_eq!(b.tick().unwrap(), LeaseChange::None);
    assert!(b.poll(100).unwrap().is_empty(), "a follower reads nothing");
    let rows = a.poll(120).unwrap();
    assert_eq!(rows.len(), 120);
    for r in &rows[..100] {
        a.taken(&r.pos);
    }
    let v = a
        .commit(Some(Publish {
            version: NewVersion {
                family: "online".into(),
                model: json!({"weights": [1.0, 0.0], "bias": 0.0}),
                ..Default::default()
            },
            promote: true,
        }))
        .unwrap()
        .unwrap();
    assert_eq!(v.version, 1);
    // 20 were read but not consumed when A dies (no release, no renewal).
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(b.tick().unwrap(), LeaseChange::Acquired);
    assert_eq!(b.committed_consumed, 100);
    let mut seen = 0;
    loop {
        let rows = b.poll(64).unwrap();
        if rows.is_empty() {
            break;
        }
        for r in &rows {
            b.taken(&r.pos);
            seen += 1;
        }
    }
    assert_eq!(
        seen, 210,
        "the 20 read-but-unconsumed events are consumed by the new leader"
    );
    b.commit(None).unwrap();
    assert_eq!(b.committed_consumed, 310);
    // The old leader wakes up: its commit is refused and it knows it lost the lease.
    a.taken(&rows[110].pos);
    assert!(a.commit(None).unwrap_err().contains("taken over"));
    assert!(!a.leading());
    b.release();
    assert_eq!(
        a.tick().unwrap(),
        LeaseChange::Acquired,
        "released: free at once"
    );
    drop(w);
    let _ = fs::remove_dir_all(&dir);
}

fn batch(r: std::ops::Range<u64>) -> FeedbackBatch {
    let mut b = FeedbackBatch::default();
    for s in r {
        b.push(s, s as f64, &[s as f64, 1.0], 0.5, s as f64 * 2.0);
    }
    b
}

#[test]
fn pipelined_groups_are_answered_in_order_after_commit_and_spooled_when_down() {
    let pg = TestCluster::start();
    let url = pg.url();
    let o = PgOptions {
        connect_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let store = runtime::block_on(async move { PgStore::connect(&url, o).await })
        .unwrap()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("mlops-pgp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let w = PgFeedbackWriter::new(store.clone(), "p", "inst-p", &dir, Duration::from_secs(2));
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = parking_lot::Mutex::new(tx);
    let p = PipelinedWriter::start(w, 2, move |ev, fig| {
        let _ = tx.lock().send((ev, fig));
    })
    .unwrap();
    let count = |s: &PgStore| {
        let s = s.clone();
        runtime::block_on(async move { s.count_feedback("p").await })
            .unwrap()
            .unwrap()
    };
    // Many groups at once: answered in submission order, each only once it is stored.
    for g in 0..20u64 {
        p.submit(batch(g * 100 + 1..g * 100 + 101), g * 100 + 100)
            .unwrap();
    }
    let mut last = 0;
    let mut events = 0;
    while events < 2000 {
        let (ev, fig) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        if let WriterEvent::Group {
            max_ticket,
            events: n,
            result,
            ..
        } = ev
        {
            assert!(max_ticket > last, "in order: {max_ticket} after {last}");
            assert_eq!(result.unwrap(), Durable::Database);
            last = max_ticket;
            events += n;
            assert!(fig.db_total >= events);
            assert!(count(&store) >= events, "answered after COMMIT");
        }
    }
    assert_eq!(last, 2000);
    assert!(p.drain(Duration::from_secs(5), false));
    assert_eq!(count(&store), 2000);

    // Down: the groups are spooled (still answered in order), forwarded once it is back.
    pg.stop_server("immediate");
    for g in 20..25u64 {
        p.submit(batch(g * 100 + 1..g * 100 + 101), g * 100 + 100)
            .unwrap();
    }
    let mut spooled = 0;
    while spooled < 500 {
        let (ev, _) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        if let WriterEvent::Group {
            max_ticket,
            events: n,
            result,
            ..
        } = ev
        {
            assert!(max_ticket > last);
            last = max_ticket;
            assert_eq!(result.unwrap(), Durable::Spool);
            spooled += n;
        }
    }
    assert!(pg.start_server());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok((WriterEvent::Forwarded(Ok(n)), fig)) = rx.recv_timeout(Duration::from_secs(1)) {
            if n > 0 {
                assert_eq!(n, 500);
                assert!(fig.online);
                break;
            }
        }
        assert!(Instant::now() < deadline, "the spool was not forwarded");
    }
    assert_eq!(count(&store), 2500, "every event once");
    drop(p);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_commit_that_went_through_unseen_is_not_counted_twice() {
    let pg = TestCluster::start();
    let url = pg.url();
    let store =
        runtime::block_on(async move { PgStore::connect(&url, PgOptions::default()).await })
            .unwrap()
            .unwrap();
    let dir = std::env::temp_dir().join(format!("mlops-pgd-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let mut w = PgFeedbackWriter::new(store.clone(), "d", "inst-d", &dir, Duration::from_secs(2));
    w.write(batch(1..31)).unwrap();
    let mut t = PgTrainer::new(
        store.clone(),
        "d",
        "T",
        Duration::from_secs(5),
        Duration::from_secs(3),
    );
    assert_eq!(t.tick().unwrap(), LeaseChange::Acquired);
    let rows = t.poll(20).unwrap();
    for r in &rows {
        t.taken(&r.pos);
    }
    // The commit reaches the database, but its answer is lost (a connection dropped
    // after COMMIT): the trainer records it as in doubt and keeps its count.
    let (lease, to) = (t.lease.clone().unwrap(), t.cursor().cloned().unwrap());
    let s = store.clone();
    runtime::block_on(async move {
        s.commit_cycle(&lease, Duration::from_secs(5), &to, 20, None)
            .await
    })
    .unwrap()
    .unwrap();
    t.in_doubt = Some((t.cursor().cloned().unwrap(), 20));
    for r in &t.poll(20).unwrap() {
        t.taken(&r.pos);
    }
    t.commit(None).unwrap();
    let s = store.clone();
    let (_, consumed) = runtime::block_on(async move { s.watermark("d").await })
        .unwrap()
        .unwrap();
    assert_eq!(consumed, 30, "20 + 10, not 20 + 30");
    assert_eq!(t.committed_consumed, 30);
    drop(w);
    let _ = fs::remove_dir_all(&dir);
}
