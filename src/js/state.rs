//! Loading a learner's whole state from JSON (each class saves its own snapshot form).
//! Loads parse and check off the JS
//! thread and swap on it (in `resolve`), bumping a generation counter so the JS layer's
//! name→id caches can tell they are stale.

use super::plain;
use crate::core::fsutil;
use napi::bindgen_prelude::*;
use parking_lot::Mutex;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// State files larger than this are refused rather than parsed.
const MAX_STATE_BYTES: u64 = 512 << 20;

/// A learner whose state round-trips through JSON.
pub trait Persistent: Clone + Send + Sized + 'static {
    fn to_json(&self) -> std::result::Result<String, String>;
    fn from_json(text: &str) -> std::result::Result<Self, String>;
}

pub struct LoadState<T: Persistent> {
    path: PathBuf,
    target: Arc<Mutex<T>>,
    generation: Arc<AtomicU32>,
    loaded: Option<T>,
}

impl<T: Persistent> LoadState<T> {
    pub fn new(path: String, target: Arc<Mutex<T>>, generation: Arc<AtomicU32>) -> Self {
        Self {
            path: PathBuf::from(path),
            target,
            generation,
            loaded: None,
        }
    }
}

impl<T: Persistent> Task for LoadState<T> {
    type Output = ();
    type JsValue = bool;
    fn compute(&mut self) -> Result<()> {
        let text = fsutil::read_text(&self.path, MAX_STATE_BYTES).map_err(plain)?;
        let state =
            T::from_json(&text).map_err(|m| plain(format!("{}: {m}", self.path.display())))?;
        self.loaded = Some(state);
        Ok(())
    }
    /// The swap happens here, on the JS thread, so no synchronous call can observe a
    /// state whose ids its caller's caches do not match. The old state is freed on a
    /// helper thread: dropping a large state is measurable work.
    fn resolve(&mut self, _env: Env, _: ()) -> Result<bool> {
        if let Some(s) = self.loaded.take() {
            swap_in(&self.target, &self.generation, s);
        }
        Ok(true)
    }
}

/// Replaces the live state with a loaded one and bumps the generation (so the JS layer's
/// name→id caches know they are stale). Called from a task's `resolve`, on the JS thread.
/// Freeing a large old state is measurable work, so it is dropped on a helper thread.
pub fn swap_in<T: Send + 'static>(target: &Mutex<T>, generation: &AtomicU32, loaded: T) {
    let old = std::mem::replace(&mut *target.lock(), loaded);
    generation.fetch_add(1, Ordering::AcqRel);
    let _ = std::thread::Builder::new()
        .name("mlops-drop".into())
        .spawn(move || drop(old));
}
