//! Against a real PostgreSQL (a throwaway cluster per test, see `testpg.rs`).

use super::super::testpg::TestCluster;
use super::*;
use crate::core::runtime::block_on;
use std::sync::mpsc;
use std::time::Instant;
use tokio_postgres::NoTls;

fn opts(schema: &str) -> PgOptions {
    PgOptions {
        schema: schema.into(),
        connect_timeout: Duration::from_secs(3),
        ..Default::default()
    }
}

fn connect(url: &str, o: PgOptions) -> Result<PgStore, StoreError> {
    let url = url.to_owned();
    block_on(async move { PgStore::connect(&url, o).await }).unwrap()
}

fn batch(range: std::ops::Range<u64>) -> FeedbackBatch {
    let mut b = FeedbackBatch::default();
    for s in range {
        b.push(s, 1000.0 + s as f64, &[s as f64, 0.5], 0.0, 2.0 * s as f64);
    }
    b
}

fn model(w: f64) -> Value {
    json!({ "weights": [w, 0.0], "bias": 0.0 })
}

/// Every `Notice` the listener hears, with when it arrived.
fn listener(store: &PgStore) -> (Listener, mpsc::Receiver<(Instant, Notice)>) {
    let (tx, rx) = mpsc::channel();
    let tx = parking_lot::Mutex::new(tx);
    let l = store
        .listen(Duration::from_millis(200), move |n| {
            let _ = tx.lock().send((Instant::now(), n));
        })
        .unwrap();
    (l, rx)
}

fn wait_notice(
    rx: &mpsc::Receiver<(Instant, Notice)>,
    want: impl Fn(&Notice) -> bool,
) -> (Instant, Notice) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (t, n) = rx.recv_timeout(left).expect("an expected notice");
        if want(&n) {
            return (t, n);
        }
    }
}

#[test]
fn feedback_watermark_lease_and_registry_on_one_database() {
    let pg = TestCluster::start();
    let url = pg.url();
    // Two processes starting at once both migrate without tripping over each other.
    let (a, b) = std::thread::scope(|s| {
        let h1 = s.spawn(|| connect(&url, opts("mlops")));
        let h2 = s.spawn(|| connect(&url, opts("mlops")));
        (h1.join().unwrap().unwrap(), h2.join().unwrap().unwrap())
    });
    assert_eq!(
        block_on({
            let a = a.clone();
            async move { a.schema_version().await }
        })
        .unwrap()
        .unwrap(),
        SCHEMA_VERSION
    );
    assert_eq!(pg.psql("SELECT count(*) FROM mlops.schema_version"), "1");

    // ---- append: group commit, de-duplicated by (instance, seq)
    let st = a.clone();
    let (n1, n2, total) = block_on(async move {
        let n1 = st
            .append_feedback("q", "inst-a", &batch(1..101))
            .await
            .unwrap();
        let n2 = st
            .append_feedback("q", "inst-a", &batch(50..151))
            .await
            .unwrap();
        (n1, n2, st.count_feedback("q").await.unwrap())
    })
    .unwrap();
    assert_eq!(
        (n1, n2, total),
        (100, 50, 150),
        "re-sent events are not stored twice"
    );

    // ---- reading after a watermark; a late commit is never skipped
    let raw_url = url.clone();
    let st = b.clone();
    block_on(async move {
        let all = st.read_feedback("q", &Watermark::default(), 1000).await.unwrap();
        assert_eq!(all.len(), 150);
        assert!(all.windows(2).all(|w| w[0].pos < w[1].pos), "consumption order");
        assert_eq!(all[9].features, vec![10.0, 0.5]);
        assert_eq!(all[9].actual, 20.0);
        let wm = all.last().unwrap().pos.clone();
        // An open transaction writes an event first (smaller txid) but commits last.
        let (mut raw, conn) = raw_url.parse::<Config>().unwrap().connect(NoTls).await.unwrap();
        tokio::spawn(conn);
        let tx = raw.transaction().await.unwrap();
        tx.execute(
            "INSERT INTO mlops.feedback (model_key, instance_id, seq, created_ms, features, prediction, actual) \
             VALUES ('q', 'inst-b', 1, 0, '\\x', 0, 1)",
            &[],
        )
        .await
        .unwrap();
        st.append_feedback("q", "inst-a", &batch(151..152)).await.unwrap();
        let before = st.read_feedback("q", &wm, 1000).await.unwrap();
        assert!(
            before.is_empty(),
            "nothing past a still-open transaction is handed out: {before:?}"
        );
        tx.commit().await.unwrap();
        let after = st.read_feedback("q", &wm, 1000).await.unwrap();
        let ids: Vec<(String, i64)> = after.iter().map(|r| (r.pos.instance_id.clone(), r.pos.seq)).collect();
        assert_eq!(ids, vec![("inst-b".to_string(), 1), ("inst-a".to_string(), 151)]);
        // Paging with a limit walks the same order.
        let page = st.read_feedback("q", &Watermark::default(), 40).await.unwrap();
        let next = st.read_feedback("q", &page[39].pos, 1000).await.unwrap();
        assert_eq!(page.len() + next.len(), 152);
    })
    .unwrap();

    // ---- lease, fencing, and the watermark in the same transaction as the version
    let (sa, sb) = (a.clone(), b.clone());
    block_on(async move {
        let lease_a = sa
            .try_acquire_lease("q", "proc-a", Duration::from_millis(300))
            .await
            .unwrap()
            .expect("a free lease is taken");
        assert!(sb
            .try_acquire_lease("q", "proc-b", Duration::from_secs(5))
            .await
            .unwrap()
            .is_none());
        let rows = sa
            .read_feedback("q", &Watermark::default(), 100)
            .await
            .unwrap();
        let to = rows.last().unwrap().pos.clone();
        let v = sa
            .commit_cycle(
                &lease_a,
                Duration::from_millis(300),
                &to,
                rows.len() as u64,
                Some(Publish {
                    version: NewVersion {
                        family: "online".into(),
                        model: model(1.0),
                        data: json!({ "fingerprint": "abc", "rows": 100 }),
                        created_by: Some("proc-a".into()),
                        ..Default::default()
                    },
                    promote: true,
                }),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!((v.version, v.status.as_str()), (1, "production"));
        assert_eq!(sb.watermark("q").await.unwrap(), (to.clone(), 100));
        // The holder stops renewing (killed); after expiry another process takes over.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let lease_b = sb
            .try_acquire_lease("q", "proc-b", Duration::from_secs(5))
            .await
            .unwrap()
            .expect("an expired lease is taken over");
        assert_eq!(lease_b.epoch, lease_a.epoch + 1);
        // The old holder wakes up and tries to publish: fenced off, nothing written.
        let rest = sa.read_feedback("q", &to, 1000).await.unwrap();
        let e = sa
            .commit_cycle(
                &lease_a,
                Duration::from_secs(1),
                &rest.last().unwrap().pos,
                rest.len() as u64,
                Some(Publish {
                    version: NewVersion {
                        family: "online".into(),
                        model: model(9.0),
                        ..Default::default()
                    },
                    promote: true,
                }),
            )
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::LeaseLost, "{e}");
        assert!(!sa
            .renew_lease(&lease_a, Duration::from_secs(1))
            .await
            .unwrap());
        assert_eq!(
            sb.watermark("q").await.unwrap().0,
            to,
            "watermark untouched"
        );
        assert_eq!(sb.production("q").await.unwrap().unwrap().version, 1);
        assert_eq!(
            sb.next_version("q").await.unwrap(),
            2,
            "the fenced version left no trace"
        );
        // The new holder continues from the stored watermark: 52 left, none twice.
        let (wm, consumed) = sb.watermark("q").await.unwrap();
        let rest = sb.read_feedback("q", &wm, 1000).await.unwrap();
        assert_eq!(consumed as usize + rest.len(), 152);
        sb.commit_cycle(
            &lease_b,
            Duration::from_secs(5),
            &rest.last().unwrap().pos,
            rest.len() as u64,
            None,
        )
        .await
        .unwrap();
        assert_eq!(sb.watermark("q").await.unwrap().1, 152);
        // A watermark never moves backwards.
        let e = sb
            .commit_cycle(
                &lease_b,
                Duration::from_secs(5),
                &Watermark::default(),
                0,
                None,
            )
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Invalid);
        sb.release_lease(&lease_b).await.unwrap();
        let again = sa
            .try_acquire_lease("q", "proc-a", Duration::from_secs(5))
            .await
            .unwrap();
        assert!(again.is_some(), "a released lease is free at once");
    })
    .unwrap();

    // ---- registry: promote → NOTIFY reaches every listener; rollback; history
    let (_la, rxa) = listener(&a);
    let (_lb, rxb) = listener(&b);
    wait_notice(&rxa, |n| *n == Notice::Connected);
    wait_notice(&rxb, |n| *n == Notice::Connected);
    let (sa, sb) = (a.clone(), b.clone());
    let promoted_at = block_on(async move {
        let v2 = sa
            .register(
                "q",
                NewVersion {
                    family: "linear".into(),
                    parent: Some(1),
                    metrics: json!({ "mse": 0.5 }),
                    model: model(2.0),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!((v2.version, v2.status.as_str()), (2, "candidate"));
        let t = Instant::now();
        let p = sb.promote("q", 2).await.unwrap();
        assert_eq!(p.status, "production");
        assert_eq!(p.model, Some(model(2.0)));
        assert_eq!(
            sb.promote("q", 77).await.unwrap_err().kind,
            ErrorKind::NotFound
        );
        t
    })
    .unwrap();
    for rx in [&rxa, &rxb] {
        let (t, n) = wait_notice(rx, |n| matches!(n, Notice::Production { .. }));
        assert_eq!(
            n,
            Notice::Production {
                model_key: "q".into(),
                version: Some(2)
            }
        );
        assert!(t.duration_since(promoted_at) < Duration::from_secs(2));
    }
    let sa = a.clone();
    block_on(async move {
        let h = sa.history("q", false).await.unwrap();
        assert_eq!(h.iter().map(|v| v.version).collect::<Vec<_>>(), vec![2, 1]);
        assert_eq!(h[1].status, "archived");
        assert_eq!(h[1].fingerprint.as_deref(), Some("abc"));
        assert!(h[0].model.is_none(), "metadata-only listing");
        assert_eq!(h[0].parent, Some(1));
        assert_eq!(sa.rollback("q").await.unwrap(), Some(1));
        assert_eq!(
            sa.production("q").await.unwrap().unwrap().model,
            Some(model(1.0))
        );
        assert_eq!(sa.rollback("q").await.unwrap(), None);
        assert!(sa.production("q").await.unwrap().is_none());
        assert_eq!(
            sa.rollback("q").await.unwrap_err().kind,
            ErrorKind::NotFound
        );
    })
    .unwrap();
    wait_notice(&rxb, |n| {
        *n == Notice::Production {
            model_key: "q".into(),
            version: Some(1),
        }
    });
    wait_notice(&rxb, |n| {
        *n == Notice::Production {
            model_key: "q".into(),
            version: None,
        }
    });

    // ---- version numbers never repeat across processes
    let mut handles = vec![];
    for s in [a.clone(), b.clone(), a.clone(), b.clone()] {
        handles.push(std::thread::spawn(move || {
            block_on(async move {
                let mut got = vec![];
                for _ in 0..5 {
                    let v = s
                        .register(
                            "r",
                            NewVersion {
                                family: "linear".into(),
                                model: model(0.0),
                                ..Default::default()
                            },
                        )
                        .await
                        .unwrap();
                    got.push(v.version);
                }
                got
            })
            .unwrap()
        }));
    }
    let mut all: Vec<u32> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    all.sort();
    assert_eq!(all, (1..=20).collect::<Vec<_>>());
}

#[test]
fn faults_are_errors_that_name_the_cause_and_never_leak_the_password() {
    // Unparseable: no server needed.
    let e = connect("postgres://app:hunter22@/db?port=notaport", opts("mlops")).unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadUrl, "{e}");
    assert!(!e.message.contains("hunter22"), "{e}");
    let e = connect("postgres://app:hunter22@h/db", opts("Bad-Schema")).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Schema);

    // Nothing listening on the port: refused, quickly.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let t = Instant::now();
    let e = connect(
        &format!("postgres://app:hunter22@127.0.0.1:{port}/db"),
        opts("mlops"),
    )
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unreachable, "{e}");
    assert!(e.message.contains("app:***@127.0.0.1"), "{e}");
    assert!(!e.message.contains("hunter22"));
    assert!(t.elapsed() < Duration::from_secs(3));

    // A server that accepts but never answers: bounded by connect_timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sport = silent.local_addr().unwrap().port();
    let t = Instant::now();
    let e = connect(
        &format!("postgres://app:hunter22@127.0.0.1:{sport}/db"),
        PgOptions {
            connect_timeout: Duration::from_millis(300),
            ..opts("mlops")
        },
    )
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Timeout, "{e}");
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    drop(silent);

    let pg = TestCluster::start();
    // Wrong password.
    let e = connect(&pg.url_as("postgres", "wrong-password-x"), opts("mlops")).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Auth, "{e}");
    assert!(e.message.contains("password authentication failed"), "{e}");
    assert!(!e.message.contains("wrong-password-x"), "{e}");
    // Database that does not exist.
    let e = connect(
        &format!("{}/nosuchdb", pg.url().rsplit_once('/').unwrap().0),
        opts("mlops"),
    )
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadUrl, "{e}");

    // A slow database: statement_timeout turns a stuck write into a Timeout error.
    let store = connect(
        &pg.url(),
        PgOptions {
            statement_timeout: Duration::from_millis(300),
            ..opts("faults")
        },
    )
    .unwrap();
    let raw_url = pg.url();
    let st = store.clone();
    block_on(async move {
        let (mut raw, conn) = raw_url
            .parse::<Config>()
            .unwrap()
            .connect(NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let tx = raw.transaction().await.unwrap();
        tx.batch_execute("LOCK TABLE faults.feedback IN ACCESS EXCLUSIVE MODE")
            .await
            .unwrap();
        let t = Instant::now();
        let e = st
            .append_feedback("q", "i", &batch(1..5))
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Timeout, "{e}");
        assert!(e.is_transient());
        assert!(t.elapsed() < Duration::from_secs(2));
        tx.rollback().await.unwrap();
        assert_eq!(st.append_feedback("q", "i", &batch(1..5)).await.unwrap(), 4);
    })
    .unwrap();

    // A database restart: the listener reports the loss, reconnects by itself and says so
    // (the caller then re-reads the pointer); pooled connections recover.
    let (_l, rx) = listener(&store);
    wait_notice(&rx, |n| *n == Notice::Connected);
    pg.stop_server("immediate");
    wait_notice(&rx, |n| matches!(n, Notice::Disconnected(_)));
    let st = store.clone();
    let e = block_on(async move { st.append_feedback("q", "i", &batch(5..9)).await })
        .unwrap()
        .unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(!e.message.contains(super::super::testpg::PASSWORD), "{e}");
    assert!(pg.start_server());
    wait_notice(&rx, |n| *n == Notice::Connected);
    let st = store.clone();
    block_on(async move {
        assert_eq!(st.append_feedback("q", "i", &batch(1..9)).await.unwrap(), 4);
        let v = st
            .register(
                "q",
                NewVersion {
                    family: "linear".into(),
                    model: model(3.0),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        st.promote("q", v.version).await.unwrap();
    })
    .unwrap();
    wait_notice(&rx, |n| {
        matches!(
            n,
            Notice::Production {
                version: Some(1),
                ..
            }
        )
    });
}
