//! napi binding of `core::forecast`. Contexts and outcomes cross packed into a
//! Float64Array the JS layer (`js/predictions.js`) registered once; names are interned to
//! ids so strings cross once each.

use super::{plain, range};
use crate::core::forecast::{
    out, outcome, parse_price_table, slot, ForecastConfig, Forecaster, NameKind, STALE,
};
use napi::bindgen_prelude::*;
use napi_derive::napi;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// The price table bundled with the package (a LiteLLM-format subset).
const BUNDLED_PRICES: &str = include_str!("../../data/model-prices.json");

#[napi(object)]
#[derive(Default)]
pub struct ExpandedPredictionsOptions {
    /// Latency residuals kept per service/provider/model key for quantiles (default 400).
    pub quantile_window: Option<u32>,
    /// Residuals a key needs before its own quantiles replace the global ones (default 40).
    pub min_key_residuals: Option<u32>,
    /// Weight of the past in the learned output-token mean, in (0, 1) (default 0.98).
    pub output_decay: Option<f64>,
    /// Forgetting factor of the learned corrections, in (0, 1]: an outcome `a` outcomes
    /// old weighs λ^a, so a level change is followed within ~1/(1−λ) outcomes (default
    /// 0.997; 1 never forgets).
    pub forgetting: Option<f64>,
    /// Keys (service × provider × model) kept at most, least recently used evicted first;
    /// services and names per kind are bounded by the same number (default 20000).
    pub max_keys: Option<u32>,
    /// Estimated memory the learned keys and services may hold, in MB; least recently
    /// used keys are evicted beyond it (default 32: with the name tables and caches it
    /// leaves out, an instance stays under 50 MB; a key with its service is ~1.7 KB).
    pub max_memory_mb: Option<f64>,
}

/// Latency, cost, satisfaction and resource predictions learned from outcomes.
#[napi]
pub struct ExpandedPredictions {
    inner: Arc<Mutex<Forecaster>>,
    generation: Arc<AtomicU32>,
    io: Mutex<Option<(Float64Array, Float64Array)>>,
}

/// Saving runs wholly on a worker: the snapshot is gathered a chunk of slab slots at a
/// time, each under the lock for a moment (pointer copies; values are shared copy on
/// write), so a JS call waits at most for one chunk; then it is serialised and written
/// atomically without the lock.
pub struct SavePredictions {
    inner: Arc<Mutex<Forecaster>>,
    path: std::path::PathBuf,
}

/// State files larger than this are refused rather than read.
const MAX_STATE_BYTES: u64 = 512 << 20;

/// Reads, checks and rebuilds a state on a worker; swaps it in on the JS thread (in
/// `resolve`), bumping the generation so the JS layer's name caches know to refill; frees
/// the old state on a helper thread.
pub struct LoadPredictions {
    path: std::path::PathBuf,
    target: Arc<Mutex<Forecaster>>,
    generation: Arc<AtomicU32>,
    loaded: Option<Forecaster>,
}

impl Task for LoadPredictions {
    type Output = ();
    type JsValue = bool;
    fn compute(&mut self) -> Result<()> {
        let p = &self.path;
        let meta =
            std::fs::metadata(p).map_err(|e| plain(format!("cannot read {}: {e}", p.display())))?;
        if meta.is_dir() {
            return Err(plain(format!("{} is a directory, not a file", p.display())));
        }
        if meta.len() > MAX_STATE_BYTES {
            return Err(plain(format!(
                "{} is {} bytes, larger than the {MAX_STATE_BYTES} bytes allowed",
                p.display(),
                meta.len()
            )));
        }
        let bytes =
            std::fs::read(p).map_err(|e| plain(format!("cannot read {}: {e}", p.display())))?;
        let mut state =
            Forecaster::from_bytes(&bytes).map_err(|m| plain(format!("{}: {m}", p.display())))?;
        // The instance's own bounds and learning options win over the file's.
        state.adopt_config(&self.target.lock().config);
        self.loaded = Some(state);
        Ok(())
    }
    fn resolve(&mut self, _env: Env, _: ()) -> Result<bool> {
        if let Some(s) = self.loaded.take() {
            super::state::swap_in(&self.target, &self.generation, s);
        }
        Ok(true)
    }
}

/// Slab slots per locked chunk of a save (≈ 0.1-0.3 ms each).
const SAVE_CHUNK: usize = 2048;

impl Task for SavePredictions {
    type Output = ();
    type JsValue = bool;
    fn compute(&mut self) -> Result<()> {
        let mut snap = self.inner.lock().snapshot_header();
        let mut at = 0;
        loop {
            let next = self.inner.lock().snapshot_chunk(&mut snap, at, SAVE_CHUNK);
            match next {
                Some(n) => at = n,
                None => break,
            }
        }
        let bytes = snap.to_bytes().map_err(plain)?;
        crate::core::fsutil::write_atomic(&self.path, &bytes)
            .map_err(|e| plain(format!("cannot write {}: {e}", self.path.display())))
    }
    fn resolve(&mut self, _env: Env, _: ()) -> Result<bool> {
        Ok(true)
    }
}

/// Input buffer layout: context slots, then outcome slots.
pub const IN_LEN: usize = slot::COUNT + outcome::COUNT;

#[napi]
impl ExpandedPredictions {
    /// `options.priceTable` (an object or a file path) is taken by the JS layer.
    #[napi(
        constructor,
        catch_unwind,
        ts_args_type = "options?: ExpandedPredictionsConstructorOptions"
    )]
    pub fn new(env: Env, options: Option<ExpandedPredictionsOptions>) -> Result<Self> {
        let o = options.unwrap_or_default();
        let d = ForecastConfig::default();
        let config = ForecastConfig {
            quantile_window: o.quantile_window.map_or(d.quantile_window, |v| v as usize),
            min_key_residuals: o
                .min_key_residuals
                .map_or(d.min_key_residuals, |v| v as usize),
            output_decay: o.output_decay.unwrap_or(d.output_decay),
            forgetting: o.forgetting.unwrap_or(d.forgetting),
            max_keys: o.max_keys.map_or(d.max_keys, |v| v as usize),
            max_memory_mb: o.max_memory_mb.unwrap_or(d.max_memory_mb),
        };
        if config.max_keys == 0 || config.max_keys > crate::core::forecast::MAX_NAMES {
            return Err(range(
                &env,
                format!(
                    "options.maxKeys must be in [1, {}], got {}",
                    crate::core::forecast::MAX_NAMES,
                    config.max_keys
                ),
            ));
        }
        if !(config.max_memory_mb > 0.0 && config.max_memory_mb.is_finite()) {
            return Err(range(
                &env,
                format!(
                    "options.maxMemoryMb must be a number > 0, got {}",
                    config.max_memory_mb
                ),
            ));
        }
        if !(config.forgetting > 0.0 && config.forgetting <= 1.0) {
            return Err(range(
                &env,
                format!(
                    "options.forgetting must be in (0, 1], got {}",
                    config.forgetting
                ),
            ));
        }
        if !(config.output_decay > 0.0 && config.output_decay < 1.0) {
            return Err(range(
                &env,
                format!(
                    "options.outputDecay must be in (0, 1), got {}",
                    config.output_decay
                ),
            ));
        }
        if config.quantile_window == 0 || config.quantile_window > 100_000 {
            return Err(range(
                &env,
                "options.quantileWindow must be in [1, 100000]".into(),
            ));
        }
        let v: serde_json::Value =
            serde_json::from_str(BUNDLED_PRICES).map_err(|e| plain(e.to_string()))?;
        let prices = parse_price_table(&v).map_err(plain)?;
        Ok(Self {
            inner: Arc::new(Mutex::new(Forecaster::new(config, prices))),
            generation: Default::default(),
            io: Mutex::new(None),
        })
    }

    /// Slot counts of the packed layout, checked by the JS layer once at load.
    #[napi(js_name = "_layout", skip_typescript)]
    pub fn layout(&self) -> Vec<u32> {
        vec![slot::COUNT as u32, outcome::COUNT as u32, out::COUNT as u32]
    }

    #[napi(js_name = "_generation", getter, skip_typescript)]
    pub fn generation(&self) -> u32 {
        self.generation.load(Ordering::Acquire)
    }

    #[napi(js_name = "_setBuffers", skip_typescript, catch_unwind)]
    pub fn set_buffers(&self, env: Env, input: Float64Array, output: Float64Array) -> Result<()> {
        if input.len() < IN_LEN || output.len() < out::COUNT {
            return Err(range(&env, "packed buffers are too short".into()));
        }
        *self.io.lock() = Some((input, output));
        Ok(())
    }

    /// The bound on names per kind (the JS layer's name caches use the same).
    #[napi(js_name = "_maxNames", skip_typescript)]
    pub fn max_names(&self) -> u32 {
        self.inner.lock().config.max_keys as u32
    }

    /// kind: 0 service, 1 provider, 2 model. The id is tagged with the slot's generation
    /// (see `forecast::NameId`), so it stays below 2^53 and exact as a JS number.
    #[napi(js_name = "_intern", skip_typescript, catch_unwind)]
    pub fn intern(&self, env: Env, kind: u32, name: String) -> Result<f64> {
        let k = match kind {
            0 => NameKind::Service,
            1 => NameKind::Provider,
            _ => NameKind::Model,
        };
        self.inner
            .lock()
            .intern(k, &name)
            .map(|id| id as f64)
            .map_err(|m| range(&env, m))
    }

    #[napi(js_name = "_predictAll", skip_typescript, catch_unwind)]
    pub fn predict_all(&self, env: Env, generation: u32) -> Result<bool> {
        if generation != self.generation() {
            return Ok(false);
        }
        let mut io = self.io.lock();
        let (input, output) = io
            .as_mut()
            .ok_or_else(|| plain("packed buffers not registered"))?;
        // SAFETY: the buffer is private to the JS layer, and JS does not run during this
        // synchronous call.
        let o = unsafe { output.as_mut() };
        match self.inner.lock().predict_all(&input[..slot::COUNT], o) {
            Ok(()) => Ok(true),
            // A name was evicted since the JS layer cached its id: it re-interns, retries.
            Err(m) if m == STALE => Ok(false),
            Err(m) => Err(range(&env, m)),
        }
    }

    #[napi(js_name = "_record", skip_typescript, catch_unwind)]
    pub fn record(&self, env: Env, generation: u32) -> Result<bool> {
        if generation != self.generation() {
            return Ok(false);
        }
        let io = self.io.lock();
        let (input, _) = io
            .as_ref()
            .ok_or_else(|| plain("packed buffers not registered"))?;
        match self
            .inner
            .lock()
            .record(&input[..slot::COUNT], &input[slot::COUNT..IN_LEN])
        {
            Ok(()) => Ok(true),
            Err(m) if m == STALE => Ok(false),
            Err(m) => Err(range(&env, m)),
        }
    }

    /// Many packed contexts (`n × slot::COUNT`) → `n × out::COUNT` values in one crossing.
    #[napi(js_name = "_predictBatch", skip_typescript, catch_unwind)]
    pub fn predict_batch(
        &self,
        env: Env,
        generation: u32,
        contexts: &[f64],
    ) -> Result<Option<Float64Array>> {
        if generation != self.generation() {
            return Ok(None);
        }
        let n = contexts.len() / slot::COUNT;
        let mut res = vec![0.0; n * out::COUNT];
        let mut f = self.inner.lock();
        for i in 0..n {
            match f.predict_all(
                &contexts[i * slot::COUNT..(i + 1) * slot::COUNT],
                &mut res[i * out::COUNT..(i + 1) * out::COUNT],
            ) {
                Ok(()) => {}
                Err(m) if m == STALE => return Ok(None),
                Err(m) => return Err(range(&env, format!("contexts[{i}]: {m}"))),
            }
        }
        Ok(Some(Float64Array::new(res)))
    }

    /// Replaces the price table (LiteLLM `model_prices_and_context_window.json` format).
    #[napi(js_name = "_setPriceTable", skip_typescript, catch_unwind)]
    pub fn set_price_table(&self, env: Env, table: serde_json::Value) -> Result<u32> {
        let prices = parse_price_table(&table).map_err(|m| range(&env, m))?;
        let n = prices.len() as u32;
        self.inner.lock().set_prices(prices);
        Ok(n)
    }

    /// Counts of what has been learned and what the bounds evicted; O(1).
    #[napi(
        catch_unwind,
        ts_return_type = "{ outcomes: number; keys: number; services: number; names: { services: number; providers: number; models: number }; pricedModels: number; maxKeys: number; maxMemoryMb: number; memoryBytes: number; evictions: { keys: number; services: number; names: number }; latencyCoverage95: { informed: { scored: number; covered: number }; blind: { scored: number; covered: number } } }"
    )]
    pub fn get_statistics(&self) -> serde_json::Value {
        let f = self.inner.lock();
        let (keys, services, names) = f.counts();
        serde_json::json!({
            "outcomes": f.outcomes,
            "keys": keys,
            "services": services,
            "names": {"services": names[0], "providers": names[1], "models": names[2]},
            "pricedModels": f.prices.len(),
            "maxKeys": f.config.max_keys,
            "maxMemoryMb": f.config.max_memory_mb,
            "memoryBytes": f.memory_bytes(),
            "evictions": f.evictions,
            // Live p95 coverage of served latency intervals, per kind of prediction served.
            "latencyCoverage95": {
                "informed": {"scored": f.coverage95[0].0, "covered": f.coverage95[0].1},
                "blind": {"scored": f.coverage95[1].0, "covered": f.coverage95[1].1},
            },
        })
    }

    /// Writes the learned state to `path` as JSON, atomically, off the JS thread. The JS
    /// thread only copies pointers to the live keys (their values are shared copy-on-
    /// write); serialising and writing run on a worker. Evicted keys are not written.
    #[napi(catch_unwind, ts_return_type = "Promise<boolean>")]
    pub fn save_state(&self, path: String) -> AsyncTask<SavePredictions> {
        AsyncTask::new(SavePredictions {
            inner: self.inner.clone(),
            path: std::path::PathBuf::from(path),
        })
    }

    /// Replaces the learned state with the one saved at `path`; a missing, corrupt or
    /// foreign file rejects and leaves the current state untouched.
    #[napi(catch_unwind, ts_return_type = "Promise<boolean>")]
    pub fn load_state(&self, path: String) -> AsyncTask<LoadPredictions> {
        AsyncTask::new(LoadPredictions {
            path: std::path::PathBuf::from(path),
            target: self.inner.clone(),
            generation: self.generation.clone(),
            loaded: None,
        })
    }
}
