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
    fn timeouts_are_errors() {
        let e = block_on_timeout(
            async { tokio::time::sleep(Duration::from_secs(5)).await },
            Duration::from_millis(20),
        )
        .unwrap_err();
        assert!(e.contains("timed out"), "{e}");
    }
}
