//! The addon's one tokio runtime.
//!
//! Everything that waits on the network (PostgreSQL) and every `RealTimeModelUpdates`
//! stream runs here, never on the JS thread and never on a thread or runtime per object:
//! one multi-thread pool, built on first use. Its size is, in this order: the first
//! [`set_worker_threads`] before the pool was built (`new RealTimeModelUpdates({
//! runtimeThreads })`), `MLOPS_RUNTIME_THREADS` (1..=256), the core count. Once built it
//! keeps its size for the life of the process.
//!
//! Blocking work (file writes and fsyncs, learning, model loads) must not sit on a worker
//! thread, or every task queued behind it waits: it goes through [`run_blocking`], tokio's
//! blocking side, at most [`blocking_slots`] jobs at a time — so 50 busy streams use a
//! handful of threads, not 50.
//!
//! Nothing in here panics into the caller: building the runtime can fail (no threads left),
//! and that is an `Err` every caller sees; a future that panics is caught by tokio's task
//! machinery and reported as an `Err` by [`block_on`].

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::runtime::{Builder, Handle, Runtime};
use tokio::sync::Semaphore;

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();
/// Worker count asked for before the runtime was built (0: none).
static REQUESTED: AtomicUsize = AtomicUsize::new(0);
/// The worker count the runtime was built with (0: not built yet).
static BUILT: AtomicUsize = AtomicUsize::new(0);
static SLOTS: OnceLock<Arc<Semaphore>> = OnceLock::new();

/// Asks for `n` worker threads (1..=256). Takes effect only while the runtime is not built
/// yet: the first setting wins. Returns the worker count the runtime has or will have.
pub fn set_worker_threads(n: usize) -> Result<usize, String> {
    if !(1..=256).contains(&n) {
        return Err(format!(
            "runtimeThreads must be an integer in 1..=256, got {n}"
        ));
    }
    if RUNTIME.get().is_none() {
        let _ = REQUESTED.compare_exchange(0, n, Ordering::AcqRel, Ordering::Acquire);
    }
    Ok(worker_threads())
}

/// Worker threads: the built runtime's count; else the first [`set_worker_threads`]; else
/// `MLOPS_RUNTIME_THREADS` when it is an integer in 1..=256; else the core count (≥ 1).
pub fn worker_threads() -> usize {
    let built = BUILT.load(Ordering::Acquire);
    if built > 0 {
        return built;
    }
    let asked = REQUESTED.load(Ordering::Acquire);
    if asked > 0 {
        return asked;
    }
    std::env::var("MLOPS_RUNTIME_THREADS")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .filter(|n| (1..=256).contains(n))
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
}

/// The runtime, built on first call.
pub fn runtime() -> Result<&'static Runtime, String> {
    RUNTIME
        .get_or_init(|| {
            let n = worker_threads();
            let rt = Builder::new_multi_thread()
                .worker_threads(n)
                .thread_name("mlops-rt")
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the async runtime: {e}"))?;
            BUILT.store(n, Ordering::Release);
            Ok(rt)
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// A handle to the runtime (cheap to clone, usable from any thread).
pub fn handle() -> Result<Handle, String> {
    runtime().map(|r| r.handle().clone())
}

/// Runs `fut` on the pool without waiting for it.
pub fn spawn<F>(fut: F) -> Result<tokio::task::JoinHandle<F::Output>, String>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    Ok(runtime()?.spawn(fut))
}

/// Blocking jobs [`run_blocking`] runs at once: twice the worker count, at least 4. Enough
/// that one stream's long update cycle does not hold up the others' fsyncs, few enough that
/// the thread count does not follow the number of streams.
pub fn blocking_slots() -> usize {
    (2 * worker_threads()).max(4)
}

/// Runs blocking `f` on the runtime's blocking side once one of [`blocking_slots`] is free,
/// and returns its result (`Err` carries a panic of `f`; nothing else fails). Await it
/// from a task on the runtime.
pub async fn run_blocking<F, R>(f: F) -> Result<R, tokio::task::JoinError>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let slots = SLOTS
        .get_or_init(|| Arc::new(Semaphore::new(blocking_slots())))
        .clone();
    // The semaphore is never closed, so acquiring cannot fail.
    let permit = slots.acquire_owned().await.ok();
    tokio::task::spawn_blocking(move || {
        let _slot = permit;
        f()
    })
    .await
}

/// Starts a long blocking job (a refit, a fine-tune) on the runtime's blocking side,
/// outside the [`blocking_slots`], so it cannot hold up the streams' short jobs. Callable
/// from any thread; poll `is_finished()` from a timer and take the result then.
pub fn spawn_long<F, R>(f: F) -> Result<tokio::task::JoinHandle<R>, String>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    Ok(runtime()?.spawn_blocking(f))
}

/// Runs `a` on this thread and `b` on the runtime's blocking side at the same time, and
/// returns both results (a fork–join over two cores for one training run). `b` may borrow
/// from the caller: this function never returns or unwinds while the pool is running `b`.
/// Whichever thread gets to `b` first runs it, so when the pool is busy this thread runs
/// `b` itself after `a` instead of waiting for a free pool thread (the queued job then
/// finds nothing to do). A panic in either is resumed here, after both are over.
pub fn join<A, B, RA, RB>(a: A, b: B) -> (RA, RB)
where
    A: FnOnce() -> RA,
    B: FnOnce() -> RB + Send,
    RB: Send,
{
    type Slot<B, RB> = parking_lot::Mutex<(Option<B>, Option<std::thread::Result<RB>>)>;
    let slot: Arc<Slot<B, RB>> = Arc::new(parking_lot::Mutex::new((Some(b), None)));
    let done = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    /// Whoever takes `b` out of the slot runs it and leaves its result there.
    fn take_and_run<B: FnOnce() -> RB, RB>(slot: &Slot<B, RB>) -> bool {
        let b = slot.lock().0.take();
        match b {
            Some(b) => {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(b));
                slot.lock().1 = Some(r);
                true
            }
            None => false,
        }
    }
    let job: Box<dyn FnOnce() + Send + '_> = {
        let (slot, done) = (slot.clone(), done.clone());
        Box::new(move || {
            take_and_run(&slot);
            drop(slot);
            let (m, cv) = &*done;
            *m.lock().unwrap_or_else(|e| e.into_inner()) = true;
            cv.notify_all();
        })
    };
    // SAFETY: the job reaches `b` (and what it borrows) only through `slot`, which it
    // shares by `Arc` (so the slot itself outlives this frame). `b` is run either here or
    // by the job; in the second case the `Wait` guard keeps this frame alive until the job
    // has finished running it. A job that finds the slot empty touches nothing borrowed.
    let job: Box<dyn FnOnce() + Send + 'static> = unsafe { std::mem::transmute(job) };
    let spawned = runtime().map(|rt| rt.spawn_blocking(job)).is_ok();
    struct Wait<'a, B, RB> {
        slot: &'a Slot<B, RB>,
        done: &'a (std::sync::Mutex<bool>, std::sync::Condvar),
        spawned: bool,
        ran_here: bool,
    }
    impl<B, RB> Drop for Wait<'_, B, RB> {
        fn drop(&mut self) {
            // Not started yet (or `a` panicked first): take `b` back, and the job will find
            // nothing to run.
            let not_started = self.slot.lock().0.take().is_some();
            if self.spawned && !not_started && !self.ran_here {
                let (m, cv) = self.done;
                let mut finished = m.lock().unwrap_or_else(|e| e.into_inner());
                while !*finished {
                    finished = cv.wait(finished).unwrap_or_else(|e| e.into_inner());
                }
            }
        }
    }
    let mut guard = Wait {
        slot: &slot,
        done: &done,
        spawned,
        ran_here: false,
    };
    let ra = a();
    guard.ran_here = take_and_run(&slot);
    drop(guard);
    let rb = slot.lock().1.take().expect("b ran: here or on the pool");
    match rb {
        Ok(rb) => (ra, rb),
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// Runs `fut` on the pool and waits for its result on the calling thread. Callable from
/// any thread, including a runtime worker (it then yields that worker's slot while it
/// waits, so the pool cannot deadlock on itself). A panic inside `fut` is an `Err`.
pub fn block_on<F>(fut: F) -> Result<F::Output, String>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let rt = runtime()?;
    let task = rt.spawn(fut);
    let wait = async move {
        task.await.map_err(|e| {
            if e.is_panic() {
                let p = e.into_panic();
                let msg = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                format!("internal error: {msg}")
            } else {
                "task cancelled".to_string()
            }
        })
    };
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| h.block_on(wait))
        }
        // Inside some other single-threaded runtime: wait on a plain channel instead.
        Ok(_) => {
            let (tx, rx) = std::sync::mpsc::channel();
            rt.spawn(async move {
                let _ = tx.send(wait.await);
            });
            rx.recv()
                .map_err(|_| "task cancelled".to_string())
                .and_then(|r| r)
        }
        Err(_) => rt.block_on(wait),
    }
}

/// [`block_on`] with a deadline: `Err("timed out after …")` when `fut` takes longer.
pub fn block_on_timeout<F>(fut: F, timeout: Duration) -> Result<F::Output, String>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    block_on(async move { tokio::time::timeout(timeout, fut).await })?
        .map_err(|_| format!("timed out after {} ms", timeout.as_millis()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_futures_and_reports_panics_as_errors() {
        assert_eq!(block_on(async { 6 * 7 }).unwrap(), 42);
        let e = block_on(async {
            if true {
                panic!("boom");
            }
            1
        })
        .unwrap_err();
        assert!(e.contains("boom"), "{e}");
        // Still usable after a task panicked.
        assert_eq!(block_on(async { 1 }).unwrap(), 1);
    }

    #[test]
    fn block_on_from_inside_the_pool_does_not_deadlock() {
        let r = block_on(async { block_on(async { 5 }).unwrap() + 1 }).unwrap();
        assert_eq!(r, 6);
    }

    #[test]
    fn blocking_jobs_return_results_and_panics_and_the_size_is_fixed_once_built() {
        assert_eq!(
            block_on(async { run_blocking(|| 7).await.ok() }).unwrap(),
            Some(7)
        );
        let panicked = block_on(async {
            run_blocking(|| {
                if true {
                    panic!("job");
                }
            })
            .await
            .is_err()
        })
        .unwrap();
        assert!(panicked);
        let long = spawn_long(|| 3).unwrap();
        assert_eq!(block_on(long).unwrap().unwrap(), 3);
        runtime().unwrap();
        let n = worker_threads();
        assert_eq!(set_worker_threads(if n == 1 { 2 } else { 1 }).unwrap(), n);
        assert!(set_worker_threads(0)
            .unwrap_err()
            .contains("runtimeThreads"));
        assert!(set_worker_threads(257).is_err());
    }

    #[test]
    fn join_runs_both_with_borrowed_data_and_carries_panics() {
        let data: Vec<u64> = (1..=1000).collect();
        let (a, b) = join(
            || data[..500].iter().sum::<u64>(),
            || data[500..].iter().sum::<u64>(),
        );
        assert_eq!(a + b, 500_500);
        let mut out = vec![0u64; 4];
        let (left, right) = out.split_at_mut(2);
        join(|| left.fill(1), || right.fill(2));
        assert_eq!(out, [1, 1, 2, 2]);
        let r = std::panic::catch_unwind(|| join(|| 1, || -> u32 { panic!("in b") }));
        assert!(r.is_err());
        let r = std::panic::catch_unwind(|| join(|| -> u32 { panic!("in a") }, || 2));
        assert!(r.is_err());
        // Many at once (more than the pool would start at once): none waits forever.
        let handles: Vec<_> = (0..64)
            .map(|i| std::thread::spawn(move || join(|| i, || i * 2)))
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            assert_eq!(h.join().unwrap(), (i, i * 2));
        }
    }

    #[test]
    fn timeouts_are_errors() {
        let e = block_on_timeout(
            async { tokio::time::sleep(Duration::from_secs(5)).await },
            Duration::from_millis(20),
        )
        .unwrap_err();
        assert!(e.contains("timed out"), "{e}");
    }
}
