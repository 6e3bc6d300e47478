//! napi binding of `core::forecast`. Contexts and outcomes cross packed into a
//! Float64Array the JS layer (`js/predictions.js`) registered once; names are interned to
//! ids so strings cross once each.

use super::state::{LoadState, Persistent, SaveState};
use super::{plain, range};
use crate::core::forecast::{
    out, outcome, parse_price_table, slot, ForecastConfig, Forecaster, NameKind,
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
}

/// Latency, cost, satisfaction and resource predictions learned from outcomes.
#[napi]
pub struct ExpandedPredictions {
    inner: Arc<Mutex<Forecaster>>,
    generation: Arc<AtomicU32>,
    io: Mutex<Option<(Float64Array, Float64Array)>>,
}

impl Persistent for Forecaster {
    fn to_json(&self) -> std::result::Result<String, String> {
        Forecaster::to_json(self)
    }
    fn from_json(text: &str) -> std::result::Result<Self, String> {
        Forecaster::from_json(text)
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
        };
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

    /// kind: 0 service, 1 provider, 2 model.
    #[napi(js_name = "_intern", skip_typescript, catch_unwind)]
    pub fn intern(&self, env: Env, kind: u32, name: String) -> Result<u32> {
        let k = match kind {
            0 => NameKind::Service,
            1 => NameKind::Provider,
            _ => NameKind::Model,
        };
        self.inner
            .lock()
            .intern(k, &name)
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
        self.inner
            .lock()
            .predict_all(&input[..slot::COUNT], o)
            .map_err(|m| range(&env, m))?;
        Ok(true)
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
        self.inner
            .lock()
            .record(&input[..slot::COUNT], &input[slot::COUNT..IN_LEN])
            .map_err(|m| range(&env, m))?;
        Ok(true)
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
            f.predict_all(
                &contexts[i * slot::COUNT..(i + 1) * slot::COUNT],
                &mut res[i * out::COUNT..(i + 1) * out::COUNT],
            )
            .map_err(|m| range(&env, format!("contexts[{i}]: {m}")))?;
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

    /// Counts of what has been learned.
    #[napi(
        catch_unwind,
        ts_return_type = "{ outcomes: number; keys: number; services: number; pricedModels: number }"
    )]
    pub fn get_statistics(&self) -> serde_json::Value {
        let f = self.inner.lock();
        serde_json::json!({
            "outcomes": f.outcomes,
            "keys": f.keys.len(),
            "services": f.per_service.len(),
            "pricedModels": f.prices.len(),
        })
    }

    /// Writes the learned state to `path` as JSON, atomically, off the JS thread.
    #[napi(catch_unwind, ts_return_type = "Promise<boolean>")]
    pub fn save_state(&self, path: String) -> Result<AsyncTask<SaveState<Forecaster>>> {
        Ok(AsyncTask::new(SaveState::new(&*self.inner, path)))
    }

    /// Replaces the learned state with the one saved at `path`; a missing, corrupt or
    /// foreign file rejects and leaves the current state untouched.
    #[napi(catch_unwind, ts_return_type = "Promise<boolean>")]
    pub fn load_state(&self, path: String) -> AsyncTask<LoadState<Forecaster>> {
        AsyncTask::new(LoadState::new(
            path,
            self.inner.clone(),
            self.generation.clone(),
        ))
    }
}
