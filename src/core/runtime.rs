//! The addon's one tokio runtime.
//!
//! Everything that waits on the network (PostgreSQL today) runs here, never on the JS
//! thread and never on a runtime per object: one multi-thread pool, built on first use.
//! Its size is the core count unless `MLOPS_RUNTIME_THREADS` says otherwise (1..=256).
//!
//! Nothing in here panics into the caller: building the runtime can fail (no threads left),
//! and that is an `Err` every caller sees; a future that panics is caught by tokio's task
//! machinery and reported as an `Err` by [`block_on`].

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::runtime::{Builder, Handle, Runtime};

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

/// Worker threads: `MLOPS_RUNTIME_THREADS` when it is an integer in 1..=256, else the core
/// count (at least 1).
pub fn worker_threads() -> usize {
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
            Builder::new_multi_thread()
                .worker_threads(worker_threads())
                .thread_name("mlops-rt")
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the async runtime: {e}"))
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

/// Runs blocking work (a model fit) on the pool's blocking threads, never on a worker
/// that drives async tasks, without waiting for it.
pub fn spawn_blocking<F, R>(f: F) -> Result<tokio::task::JoinHandle<R>, String>
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
    fn timeouts_are_errors() {
        let e = block_on_timeout(
            async { tokio::time::sleep(Duration::from_secs(5)).await },
            Duration::from_millis(20),
        )
        .unwrap_err();
        assert!(e.contains("timed out"), "{e}");
    }
}
