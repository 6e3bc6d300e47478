//! napi binding of `core::ensemble`. The object-shaped compat API lives in `mlops.js`
//! (reading three small JS objects there and crossing once with a `Float64Array` measured
//! ~10× cheaper than `#[napi(object)]` conversion); this file is the packed protocol.

use super::state::{LoadState, Persistent};
use super::{plain, range};
use crate::core::ensemble::Snapshot;
use crate::core::ensemble::{
    Combined, ContextState, Ensemble, EnsembleConfig, Entry, Error as EnsError,
    PERFORMANCE_WEIGHTS_SHOWN, STRATEGIES,
};
use crate::core::fsutil;
use napi::bindgen_prelude::*;
use napi_derive::napi;
use parking_lot::Mutex;
use serde::Serialize;
use std::sync::Arc;

/// Entry stride of the packed input: `[modelId, value, confidence, flags]`, flags bit 0
/// type match, bit 1 the old module's type match, bit 2 confidence given, bit 3 model given.
const STRIDE: usize = 4;
/// Fixed header of the packed output before the per-entry arrays.
const OUT_HEAD: usize = 8;

#[napi(object)]
#[derive(Default)]
pub struct AdvancedEnsembleOptions {
    /// Feedback entries kept for statistics (default 1000).
    pub history_size: Option<u32>,
    /// Feedback a context needs before its own meta-learner is used (default 10).
    pub min_samples: Option<u32>,
    /// Weight kept by the past per new sample in the meta-learner, in (0, 1] (default 0.995).
    pub forgetting: Option<f64>,
    /// Prior precision pulling meta-weights toward equal weights (default 5).
    pub ridge_prior: Option<f64>,
    /// Weight kept by the past in per-model competence, in (0, 1] (default 0.95).
    pub competence_decay: Option<f64>,
    /// Relative score bonus when an entry's predictionType matches the context (default 0.1).
    pub type_match_bonus: Option<f64>,
    /// How many latest errors `getStatistics().recentErrors` lists (default 10).
    pub recent_errors: Option<u32>,
    /// Contexts (serviceName × predictionType) kept, least recently used evicted (default
    /// 10000: ~1 KB each with three models, ~2 KB with ten, so ~10-20 MB).
    pub max_contexts: Option<u32>,
    /// Model names kept, least recently used evicted (default 20000, at least 10000).
    pub max_models: Option<u32>,
    /// Estimated memory the contexts may hold, in MB; least recently used contexts are
    /// evicted beyond it, and with `maxContexts` the tighter bound wins (default 32: with
    /// the model names, performance weights and JS caches it leaves out, an instance stays
    /// under 50 MB; a context that saw three models is ~750 bytes, one that saw 64 up to
    /// ~80 KB).
    pub max_memory_mb: Option<f64>,
}

/// Ensemble strategies over base-model predictions that learn from feedback: trained
/// stacking per context, competence-based dynamic selection, confidence-weighted voting.
#[napi]
pub struct AdvancedEnsemble {
    inner: Arc<Mutex<Ensemble>>,
    /// Bumped whenever the state is replaced, so the JS layer's name→id caches can tell
    /// they are stale (ids are only meaningful within one generation).
    generation: Arc<std::sync::atomic::AtomicU32>,
    /// The JS layer's packed input and output buffers, registered once (and again when
    /// they grow) so that each hot call crosses with plain numbers only.
    io: Mutex<Option<(Float64Array, Float64Array)>>,
}

fn unpack(input: &[f64], n: usize) -> std::result::Result<Vec<Entry>, String> {
    if input.len() < n * STRIDE {
        return Err(format!(
            "packed input holds {} values, {} needed",
            input.len(),
            n * STRIDE
        ));
    }
    (0..n)
        .map(|i| {
            let s = &input[i * STRIDE..(i + 1) * STRIDE];
            let id = s[0];
            if !(id >= 0.0 && id < 9.007_199_254_740_992e15 && id.fract() == 0.0) {
                return Err(format!("predictions[{i}]: malformed model id {id}"));
            }
            let flags = s[3] as u32;
            Ok(Entry {
                model: id as u64,
                value: s[1],
                confidence: s[2],
                type_match: flags & 1 != 0,
                old_type_match: flags & 2 != 0,
                has_confidence: flags & 4 != 0,
                has_model: flags & 8 != 0,
            })
        })
        .collect()
}

fn pack(c: &Combined, out: &mut [f64]) -> std::result::Result<(), String> {
    let n = c.weights.len();
    if out.len() < OUT_HEAD + 3 * n {
        return Err(format!(
            "packed output holds {} values, {} needed",
            out.len(),
            OUT_HEAD + 3 * n
        ));
    }
    out[0] = c.prediction;
    out[1] = c.confidence;
    out[2] = c.intercept;
    out[3] = c.samples as f64;
    out[4] = c.source.map_or(-1.0, |s| s as u8 as f64);
    out[5] = c.selected.len() as f64;
    out[OUT_HEAD..OUT_HEAD + n].copy_from_slice(&c.weights);
    out[OUT_HEAD + n..OUT_HEAD + 2 * n].copy_from_slice(&c.raw);
    // Third block: selection's chosen indices, or voting's confidences used.
    for (j, &i) in c.selected.iter().enumerate() {
        out[OUT_HEAD + 2 * n + j] = i as f64;
    }
    if c.extra.len() == n {
        out[OUT_HEAD + 2 * n..OUT_HEAD + 3 * n].copy_from_slice(&c.extra);
    }
    Ok(())
}

fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

#[napi]
impl AdvancedEnsemble {
    #[napi(constructor, catch_unwind)]
    pub fn new(env: Env, options: Option<AdvancedEnsembleOptions>) -> Result<Self> {
        let o = options.unwrap_or_default();
        let d = EnsembleConfig::default();
        let config = EnsembleConfig {
            history_size: o.history_size.map_or(d.history_size, |v| v as usize),
            min_samples: o.min_samples.map_or(d.min_samples, u64::from),
            forgetting: o.forgetting.unwrap_or(d.forgetting),
            ridge_prior: o.ridge_prior.unwrap_or(d.ridge_prior),
            competence_decay: o.competence_decay.unwrap_or(d.competence_decay),
            type_match_bonus: o.type_match_bonus.unwrap_or(d.type_match_bonus),
            recent_errors: o.recent_errors.map_or(d.recent_errors, |v| v as usize),
            max_contexts: o.max_contexts.map_or(d.max_contexts, |v| v as usize),
            max_models: o.max_models.map_or(d.max_models, |v| v as usize),
            max_memory_mb: o.max_memory_mb.unwrap_or(d.max_memory_mb),
        };
        let e = Ensemble::new(config).map_err(|m| range(&env, format!("options.{m}")))?;
        Ok(Self {
            inner: Arc::new(Mutex::new(e)),
            generation: Default::default(),
            io: Mutex::new(None),
        })
    }

    #[napi(js_name = "_generation", getter, skip_typescript)]
    pub fn generation(&self) -> u32 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    #[napi(js_name = "_internModel", skip_typescript, catch_unwind)]
    pub fn intern_model(&self, env: Env, name: String) -> Result<f64> {
        self.inner
            .lock()
            .intern_model(&name)
            .map(|id| id as f64)
            .map_err(|m| range(&env, m))
    }

    #[napi(js_name = "_internContext", skip_typescript, catch_unwind)]
    pub fn intern_context(
        &self,
        env: Env,
        service: String,
        prediction_type: String,
    ) -> Result<f64> {
        self.inner
            .lock()
            .intern_context(&service, &prediction_type)
            .map(|id| id as f64)
            .map_err(|m| range(&env, m))
    }

    #[napi(js_name = "_setBuffers", skip_typescript, catch_unwind)]
    pub fn set_buffers(&self, input: Float64Array, output: Float64Array) {
        *self.io.lock() = Some((input, output));
    }

    /// Packed combine. `strategy`: 0 stacking, 1 dynamic selection, 2 voting,
    /// 3 calibrated voting. Returns false when `generation` is stale (the JS layer then
    /// re-interns and retries), or when the context or a model id was evicted since the
    /// JS layer cached it (the JS layer then re-interns this call's names and retries).
    #[napi(js_name = "_combine", skip_typescript, catch_unwind)]
    pub fn combine(
        &self,
        env: Env,
        strategy: u32,
        generation: u32,
        ctx: f64,
        n: u32,
    ) -> Result<bool> {
        if generation != self.generation() {
            return Ok(false);
        }
        let mut io = self.io.lock();
        let (input, out) = io
            .as_mut()
            .ok_or_else(|| plain("packed buffers not registered"))?;
        let mut e = self.inner.lock();
        let entries = unpack(input, n as usize).map_err(|m| range(&env, m))?;
        // SAFETY: the buffer is private to the JS layer and JS is not running while this
        // synchronous call executes, so nothing else reads or writes it.
        let out = unsafe { out.as_mut() };
        let ctx = ctx as u64;
        let r = match strategy {
            0 => e.stacking(ctx, &entries),
            1 => e.dynamic_selection(ctx, &entries),
            2 => e.voting(ctx, &entries, false),
            3 => e.voting(ctx, &entries, true),
            _ => Err(EnsError::Invalid(format!("unknown strategy {strategy}"))),
        };
        let r = match r {
            Ok(r) => r,
            Err(EnsError::Stale) => return Ok(false),
            Err(EnsError::Invalid(m)) => return Err(range(&env, m)),
        };
        pack(&r, out).map_err(|m| range(&env, m))?;
        Ok(true)
    }

    /// Packed feedback; writes each strategy's prequential prediction then error to `out`.
    #[napi(js_name = "_feedback", skip_typescript, catch_unwind)]
    pub fn feedback(
        &self,
        env: Env,
        generation: u32,
        ctx: f64,
        n: u32,
        actual: f64,
    ) -> Result<bool> {
        if generation != self.generation() {
            return Ok(false);
        }
        let mut io = self.io.lock();
        let (input, out) = io
            .as_mut()
            .ok_or_else(|| plain("packed buffers not registered"))?;
        // SAFETY: as in `_combine`.
        let out = unsafe { out.as_mut() };
        let mut e = self.inner.lock();
        let entries = unpack(input, n as usize).map_err(|m| range(&env, m))?;
        let r = match e.feedback(ctx as u64, &entries, actual, now_ms()) {
            Ok(r) => r,
            Err(EnsError::Stale) => return Ok(false),
            Err(EnsError::Invalid(m)) => return Err(range(&env, m)),
        };
        if out.len() >= 8 {
            out[..4].copy_from_slice(&r.predictions);
            out[4..8].copy_from_slice(&r.errors);
        }
        Ok(true)
    }

    /// Batch stacking for many requests sharing one model set and context: `predictions`
    /// is row-major (`rows × models.length`), `confidences` (optional) the same shape.
    #[napi(js_name = "_stackingBatch", skip_typescript, catch_unwind)]
    pub fn stacking_batch(
        &self,
        env: Env,
        ctx: f64,
        models: Vec<String>,
        predictions: &[f64],
        confidences: Option<&[f64]>,
    ) -> Result<Option<Float64Array>> {
        let mut e = self.inner.lock();
        let ids = models
            .iter()
            .map(|m| e.intern_model(m))
            .collect::<std::result::Result<Vec<u64>, String>>()
            .map_err(|m| range(&env, m))?;
        let rows = if ids.is_empty() {
            0
        } else {
            predictions.len() / ids.len()
        };
        let mut out = vec![0.0; rows];
        match e.stacking_batch(ctx as u64, &ids, predictions, confidences, &mut out) {
            Ok(()) => Ok(Some(Float64Array::new(out))),
            // The JS layer's cached context id was evicted: it re-interns and retries.
            Err(EnsError::Stale) => Ok(None),
            Err(EnsError::Invalid(m)) => Err(range(&env, m)),
        }
    }

    /// Statistics in O(1) whatever the number of contexts: the old fields
    /// (`performanceWeights` limited to the 20 most recently updated keys, `historySize`,
    /// `recentErrors`, `avgError`), global per-strategy errors, the top contexts by
    /// volume, totals and eviction counters. Per-context detail:
    /// `getContextStatistics` / `getContextStatisticsPage`.
    #[napi(catch_unwind, ts_return_type = "EnsembleStatistics")]
    pub fn get_statistics(&self) -> Result<serde_json::Value> {
        Ok(statistics(&self.inner.lock()))
    }

    /// `getStatistics()` as JSON text: the JS layer parses it, which measured ~5× cheaper
    /// than building the same object property by property through napi.
    #[napi(js_name = "_statisticsJson", skip_typescript, catch_unwind)]
    pub fn statistics_json(&self) -> Result<String> {
        serde_json::to_string(&Statistics(&self.inner.lock())).map_err(|e| plain(e.to_string()))
    }
    /// Everything known about one context, or null when it is unknown (never seen, or
    /// evicted). Reading it does not count as a use.
    #[napi(
        catch_unwind,
        ts_return_type = "EnsembleContextStatistics | null",
        ts_args_type = "serviceName?: string, predictionType?: string"
    )]
    pub fn get_context_statistics(
        &self,
        service_name: Option<String>,
        prediction_type: Option<String>,
    ) -> Result<serde_json::Value> {
        let e = self.inner.lock();
        let c = e.find_context(
            service_name.as_deref().unwrap_or(""),
            prediction_type.as_deref().unwrap_or(""),
        );
        Ok(c.map_or(serde_json::Value::Null, |c| context_detail(&e, c)))
    }

    /// One page of per-context statistics, most recently used first, for exporting every
    /// context without one huge call: `{total, offset, contexts}`; ask again with
    /// `offset + contexts.length` until it reaches `total`. `limit` is capped at 1000.
    #[napi(catch_unwind, ts_return_type = "EnsembleContextPage")]
    pub fn get_context_statistics_page(
        &self,
        offset: Option<u32>,
        limit: Option<u32>,
    ) -> Result<serde_json::Value> {
        let e = self.inner.lock();
        let offset = offset.unwrap_or(0) as usize;
        let limit = limit.unwrap_or(100).min(1000) as usize;
        let page: Vec<serde_json::Value> = e
            .contexts_page(offset, limit)
            .into_iter()
            .map(|c| context_detail(&e, c))
            .collect();
        Ok(serde_json::json!({"total": e.contexts.len(), "offset": offset, "contexts": page}))
    }

    /// The whole learned state as a plain object (what `saveState` writes).
    #[napi(
        js_name = "toJSON",
        catch_unwind,
        ts_return_type = "Record<string, unknown>"
    )]
    pub fn to_json(&self) -> Result<serde_json::Value> {
        let text = self.inner.lock().to_json().map_err(plain)?;
        serde_json::from_str(&text).map_err(|e| plain(e.to_string()))
    }

    /// Writes the learned state to `path` as JSON, atomically (temp file, fsync, rename),
    /// off the JS thread. Resolves when the file is durable.
    #[napi(catch_unwind, ts_return_type = "Promise<boolean>")]
    pub fn save_state(&self, path: String) -> Result<AsyncTask<SaveSnapshot>> {
        Ok(AsyncTask::new(SaveSnapshot {
            path: std::path::PathBuf::from(path),
            snapshot: Some(self.inner.lock().snapshot()),
        }))
    }

    /// Replaces the learned state with the one saved at `path`. The file is read and
    /// checked off the JS thread; a missing, corrupt or foreign file rejects and leaves
    /// the current state untouched.
    #[napi(catch_unwind, ts_return_type = "Promise<boolean>")]
    pub fn load_state(&self, path: String) -> AsyncTask<LoadState<Ensemble>> {
        AsyncTask::new(LoadState::new(
            path,
            self.inner.clone(),
            self.generation.clone(),
        ))
    }
}

/// The `getStatistics()` object, serialised straight from the tables (no intermediate
/// `serde_json::Value`, so no allocation per key): O(1) in the number of contexts.
struct Statistics<'a>(&'a Ensemble);

/// Contexts listed with their strategy errors in `getStatistics().contexts` (the top of
/// `topContexts`).
const CONTEXTS_DETAILED: usize = 3;

struct StrategyBlock<'a>(&'a ContextState);
impl Serialize for StrategyBlock<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        #[derive(Serialize)]
        struct Errors {
            mae: f64,
            rmse: f64,
            count: u64,
        }
        let mut m = s.serialize_map(Some(4))?;
        for (name, st) in STRATEGIES.iter().zip(&self.0.strategies) {
            m.serialize_entry(
                name,
                &Errors {
                    mae: st.mae,
                    rmse: st.rmse(),
                    count: st.count,
                },
            )?;
        }
        m.end()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Summary<'a> {
    service_name: &'a str,
    prediction_type: &'a str,
    samples: u64,
    meta_samples: u64,
    best_strategy: Option<&'static str>,
    strategies: StrategyBlock<'a>,
}

fn summary(c: &ContextState) -> Summary<'_> {
    Summary {
        service_name: c.service(),
        prediction_type: c.prediction_type(),
        samples: c.samples,
        meta_samples: c.meta_samples(),
        best_strategy: Ensemble::best_strategy(c),
        strategies: StrategyBlock(c),
    }
}

impl Serialize for Statistics<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeStruct};
        let e = self.0;
        struct Perf<'a>(&'a Ensemble);
        impl Serialize for Perf<'_> {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(None)?;
                for (k, w) in self
                    .0
                    .performance
                    .iter_mru()
                    .take(PERFORMANCE_WEIGHTS_SHOWN)
                {
                    m.serialize_entry(&**k, w)?;
                }
                m.end()
            }
        }
        struct Contexts<'a>(&'a Ensemble);
        impl Serialize for Contexts<'_> {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(None)?;
                for (id, _) in self.0.top.iter().take(CONTEXTS_DETAILED) {
                    if let Some(c) = self.0.contexts.peek(id) {
                        m.serialize_entry(&Ensemble::context_key(c), &summary(c))?;
                    }
                }
                m.end()
            }
        }
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Top<'a> {
            service_name: &'a str,
            prediction_type: &'a str,
            samples: u64,
        }
        let top: Vec<Top> = e
            .top
            .iter()
            .filter_map(|(id, _)| e.contexts.peek(id))
            .map(|c| Top {
                service_name: c.service(),
                prediction_type: c.prediction_type(),
                samples: c.samples,
            })
            .collect();
        let k = &e.counters;
        let mut st = s.serialize_struct("EnsembleStatistics", 12)?;
        st.serialize_field("performanceWeights", &Perf(e))?;
        st.serialize_field("historySize", &e.history.len())?;
        st.serialize_field("recentErrors", &e.recent)?;
        st.serialize_field("avgError", &e.avg_error())?;
        st.serialize_field("feedbackCount", &e.feedback_count)?;
        st.serialize_field("bestStrategy", &Ensemble::best_strategy(&e.global))?;
        st.serialize_field("strategies", &StrategyBlock(&e.global))?;
        st.serialize_field("contexts", &Contexts(e))?;
        st.serialize_field("topContexts", &top)?;
        st.serialize_field(
            "totals",
            &serde_json::json!({
                "contexts": e.contexts.len(),
                "models": e.models.len(),
                "performanceKeys": e.performance.len(),
                "contextsCreated": k.contexts_created,
                "modelsCreated": k.models_created,
                "performanceKeysCreated": k.performance_created,
                "memoryBytes": e.memory_bytes(),
            }),
        )?;
        st.serialize_field(
            "evictions",
            &serde_json::json!({
                "contexts": k.contexts_evicted,
                "models": k.models_evicted,
                "performanceKeys": k.performance_evicted,
            }),
        )?;
        st.serialize_field(
            "limits",
            &serde_json::json!({
                "maxContexts": e.config.max_contexts,
                "maxModels": e.config.max_models,
                "maxMemoryMb": e.config.max_memory_mb,
                "maxPerformanceKeys": e.config.max_performance_keys(),
                "performanceWeightsShown": PERFORMANCE_WEIGHTS_SHOWN,
            }),
        )?;
        st.end()
    }
}

fn statistics(e: &Ensemble) -> serde_json::Value {
    serde_json::to_value(Statistics(e)).unwrap_or(serde_json::Value::Null)
}

fn strategy_block(c: &ContextState) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for (name, s) in STRATEGIES.iter().zip(&c.strategies) {
        m.insert(
            (*name).into(),
            serde_json::json!({"mae": s.mae, "rmse": s.rmse(), "count": s.count}),
        );
    }
    serde_json::Value::Object(m)
}

fn context_summary(c: &ContextState) -> serde_json::Value {
    serde_json::json!({
        "serviceName": c.service(),
        "predictionType": c.prediction_type(),
        "samples": c.samples,
        "metaSamples": c.meta_samples(),
        "bestStrategy": Ensemble::best_strategy(c),
        "strategies": strategy_block(c),
    })
}

fn context_detail(e: &Ensemble, c: &ContextState) -> serde_json::Value {
    let mut v = context_summary(c);
    let name = |id: &u64| e.model_name(*id).map(str::to_owned);
    let models: serde_json::Map<String, serde_json::Value> = c
        .competence
        .iter()
        .filter_map(|m| {
            name(&m.model).map(|n| {
                (
                    n,
                    serde_json::json!({"mae": m.stats.mae, "rmse": m.stats.rmse(), "count": m.stats.count}),
                )
            })
        })
        .collect();
    let sets: Vec<serde_json::Value> = c
        .sets
        .iter()
        .map(|l| {
            serde_json::json!({
                "models": l.models.iter().map(|m| name(m).unwrap_or_else(|| format!("#{m}"))).collect::<Vec<_>>(),
                "samples": l.count,
                "confidence": l.confidence(),
            })
        })
        .collect();
    if let Some(o) = v.as_object_mut() {
        o.insert("models".into(), models.into());
        o.insert("modelSets".into(), sets.into());
    }
    v
}

/// `saveState`: the snapshot is taken on the JS thread (pointer copies of the contexts,
/// which are copy-on-write, plus the small tables), serialised and written atomically on
/// a worker.
pub struct SaveSnapshot {
    path: std::path::PathBuf,
    snapshot: Option<Snapshot>,
}

impl Task for SaveSnapshot {
    type Output = ();
    type JsValue = bool;
    fn compute(&mut self) -> Result<()> {
        let snapshot = self
            .snapshot
            .take()
            .ok_or_else(|| plain("state already saved"))?;
        let text = snapshot.to_json(true).map_err(plain)?;
        // Dropping the snapshot's references here, off the JS thread.
        drop(snapshot);
        fsutil::write_atomic(&self.path, text.as_bytes())
            .map_err(|e| plain(format!("cannot write {}: {e}", self.path.display())))
    }
    fn resolve(&mut self, _env: Env, _: ()) -> Result<bool> {
        Ok(true)
    }
}

impl Persistent for Ensemble {
    fn to_json(&self) -> std::result::Result<String, String> {
        Ensemble::to_json(self)
    }
    fn from_json(text: &str) -> std::result::Result<Self, String> {
        Ensemble::from_json(text)
    }
}
