'use strict'
// The object-shaped AdvancedEnsemble API over the packed native protocol.
//
// Why a JS layer: reading three small prediction objects through `#[napi(object)]` costs
// ~5-7 µs per call, reading them here and crossing once with numbers costs well under
// 1 µs. So this file reads and validates the objects (numeric strings and numeric model ids
// accepted, see js/validate.js), interns model and context names to integer ids through
// bounded caches (a name crosses again only after it left them), writes
// `[modelId, value, confidence, flags]` per entry into a Float64Array that Rust registered
// once, and builds the result object from the output array. Rust's tables are bounded
// too: when an id this layer cached was evicted there, the call reports it stale and is
// retried once with fresh ids. Voting without calibration has nothing to learn and is
// computed here. All learning is in Rust (src/core/ensemble.rs).

const native = require('../index.js')
const v = require('./validate.js')
const { makeLog } = require('./log.js')
const metrics = require('./metrics.js')

/** Per-strategy |error| buckets; `out[4..8]` after a feedback holds the four strategies' errors. */
const ERROR_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 100]
const STRATEGY_NAMES = ['stacking', 'dynamicSelection', 'confidenceWeighted', 'average']

const STRIDE = 4
const HEAD = 8
const STRATEGY = { stacking: 0, dynamic: 1, voting: 2, calibrated: 3 }
const SOURCES = ['context', 'global', 'prior']
/** Entry flags in the 4th slot (see src/js/ensemble.rs). */
const TYPE_MATCH = 1
const OLD_TYPE_MATCH = 2
const HAS_CONFIDENCE = 4
const HAS_MODEL = 8
/** Values beyond this would overflow the meta-learners' statistics (see src/core/ensemble.rs). */
const MAX_MAGNITUDE = 1e100
/** Entries per call: an ensemble of more base predictions than this is a caller bug. */
const MAX_ENTRIES = 10_000
/**
 * Names cached on the JS side per generation (see NameCache): the caches are only a
 * shortcut to Rust's tables, so their bound is about JS memory, not correctness.
 */
const CACHE_GENERATION = 8192

const OPTIONS = {
  historySize: { min: 0, max: 10_000_000, integer: true },
  minSamples: { min: 0, max: 4_294_967_295, integer: true },
  forgetting: { min: 0, minExclusive: true, max: 1 },
  ridgePrior: { min: 0, minExclusive: true },
  competenceDecay: { min: 0, minExclusive: true, max: 1 },
  typeMatchBonus: { min: 0 },
  recentErrors: { min: 0, max: 10_000, integer: true },
  maxContexts: { min: 1, max: 100_000_000, integer: true },
  maxModels: { min: MAX_ENTRIES, max: 100_000_000, integer: true },
  maxMemoryMb: { min: 0, minExclusive: true, max: 1e9 },
}

/**
 * A bounded name → id cache with two generations: lookups hit the young map, then the old
 * one (promoting the hit); when the young map fills, it becomes the old one and the
 * previous old one is dropped. So the most recently used names always stay, memory is
 * bounded by 2 × CACHE_GENERATION entries, and every operation is O(1) (an approximate
 * LRU). Keys are one string, or a pair (service, type) through nested maps so no key
 * string is built per call.
 */
class NameCache {
  #young = new Map()
  #old = new Map()
  #size = 0

  get(a, b) {
    let m = this.#young.get(a)
    let id = m === undefined ? undefined : b === undefined ? m : m.get(b)
    if (id !== undefined) return id
    m = this.#old.get(a)
    id = m === undefined ? undefined : b === undefined ? m : m.get(b)
    if (id !== undefined) this.set(a, b, id)
    return id
  }

  set(a, b, id) {
    if (b === undefined) {
      this.#young.set(a, id)
    } else {
      let m = this.#young.get(a)
      if (m === undefined) this.#young.set(a, (m = new Map()))
      m.set(b, id)
    }
    if (++this.#size >= CACHE_GENERATION) {
      this.#old = this.#young
      this.#young = new Map()
      this.#size = 0
    }
  }

  delete(a, b) {
    for (const g of [this.#young, this.#old]) {
      if (b === undefined) g.delete(a)
      else g.get(a)?.delete(b)
    }
  }

  clear() {
    this.#young = new Map()
    this.#old = new Map()
    this.#size = 0
  }
}

function checkHybridModel(m, field) {
  if (m === null || (typeof m !== 'object' && typeof m !== 'function')) throw v.typeError(field, 'an object', m)
  const predict = v.prop(m, 'predict', `${field}.predict`)
  if (typeof predict !== 'function') throw v.typeError(`${field}.predict`, 'a function', predict)
  return m
}

/** Runs a registered JS model; a model that throws or returns junk is left out, not fatal. */
function hybridPrediction(model, features) {
  if (!model || !model.trained) return undefined
  try {
    const p = model.predict(features)
    return typeof p === 'number' && Number.isFinite(p) ? p : undefined
  } catch {
    return undefined
  }
}

/**
 * `context.features` for the hybrid models: an array (or typed array) of numbers or
 * numeric strings (converted), or an object of named numbers (values converted, names
 * kept: the registered model decides what the names mean).
 */
function readFeatures(f) {
  if (Array.isArray(f) || ArrayBuffer.isView(f)) return v.finiteArray(f, 'context.features')
  if (typeof f === 'object') {
    const out = {}
    for (const k of Object.keys(f)) out[k] = v.finite(v.prop(f, k, `context.features.${k}`), `context.features.${k}`)
    return out
  }
  throw v.typeError('context.features', 'an array of numbers or an object of named numbers', f)
}

class AdvancedEnsemble extends native.AdvancedEnsemble {
  #models = new NameCache()
  #contexts = new NameCache()
  #generation = 0
  #capacity = 0
  #input = null
  #output = null
  // Parsed entries of the current call, reused to avoid garbage on the hot path.
  #names = []
  #values = []
  #confidences = []
  #flags = []
  #neural = null
  #transformer = null
  #initialized = false

  #log
  #errors = STRATEGY_NAMES.map(() => new metrics.Histogram(ERROR_BUCKETS))
  #feedbackRefused = 0

  constructor(options) {
    super(v.numericOptions(options, OPTIONS))
    this.#log = makeLog(options && typeof options === 'object' ? v.prop(options, 'logger', 'options.logger') : undefined, 'mlops-native/AdvancedEnsemble')
    this.#ensureCapacity(16)
  }

  #ensureCapacity(n) {
    if (n <= this.#capacity) return
    const cap = Math.max(n, this.#capacity * 2)
    this.#input = new Float64Array(cap * STRIDE)
    this.#output = new Float64Array(HEAD + 3 * cap)
    this._setBuffers(this.#input, this.#output)
    this.#capacity = cap
  }

  #modelId(name) {
    let id = this.#models.get(name)
    if (id === undefined) {
      id = this._internModel(name)
      this.#models.set(name, undefined, id)
    }
    return id
  }

  #contextId(service, type) {
    let id = this.#contexts.get(service, type)
    if (id === undefined) {
      id = this._internContext(service, type)
      this.#contexts.set(service, type, id)
    }
    return id
  }

  /**
   * Reads `predictions` into the parsed-entry arrays; returns the entry count.
   * A bare number (or numeric string) is a prediction with confidence 0.5; `prediction`
   * wins over `value`; numeric strings are numbers; a numeric model id is its decimal
   * string; 0 is a real value.
   */
  #parse(predictions, contextType, extra) {
    try {
      return this.#parseEntries(predictions, contextType, extra, this.#mark)
    } catch (e) {
      if (e instanceof TypeError || e instanceof RangeError) throw e
      // A caller's getter or Proxy threw while we read the entry.
      throw new TypeError(`predictions[${this.#at}] could not be read: ${e && e.message ? e.message : String(e)}`)
    }
  }

  #at = 0
  #mark = (i) => {
    this.#at = i
  }

  // The hot path: field names for error messages are only built when an entry is bad
  // (building `predictions[${i}].value` per entry cost more than the arithmetic).
  #parseEntries(predictions, contextType, extra, mark) {
    if (!Array.isArray(predictions)) throw v.typeError('predictions', 'an array', predictions)
    const n = predictions.length
    if (n === 0 && extra === 0) throw new RangeError('predictions must not be empty')
    if (n > MAX_ENTRIES) throw new RangeError(`predictions must hold at most ${MAX_ENTRIES} entries, got ${n}`)
    this.#ensureCapacity(n + extra)
    const names = this.#names
    const values = this.#values
    const confs = this.#confidences
    const flags = this.#flags
    const absentType = contextType === '' ? OLD_TYPE_MATCH : 0
    for (let i = 0; i < n; i++) {
      mark(i)
      const p = predictions[i]
      let value
      let confidence = 0.5
      let model = ''
      let flag = absentType
      if (typeof p === 'number' || typeof p === 'string') {
        value = typeof p === 'number' ? p : v.finite(p, `predictions[${i}]`)
        if (!(Math.abs(value) <= MAX_MAGNITUDE)) throw v.rangeError(`predictions[${i}]`, 'a finite number within ±1e100', p)
      } else if (p !== null && typeof p === 'object') {
        const pred = p.prediction
        const usePred = pred !== undefined && pred !== null
        const raw = usePred ? pred : p.value
        value = typeof raw === 'number' ? raw : v.finite(raw, `predictions[${i}].${usePred ? 'prediction' : 'value'}`)
        if (!(Math.abs(value) <= MAX_MAGNITUDE)) throw v.rangeError(`predictions[${i}].${usePred ? 'prediction' : 'value'}`, 'a finite number within ±1e100', raw)
        const c = p.confidence
        if (c !== undefined && c !== null) {
          confidence = typeof c === 'number' ? c : v.finite(c, `predictions[${i}].confidence`)
          if (!(confidence >= 0 && confidence <= 1)) throw v.rangeError(`predictions[${i}].confidence`, 'a number in [0, 1]', c)
          flag |= HAS_CONFIDENCE
        }
        const m = p.model
        if (m !== undefined && m !== null) model = typeof m === 'string' && m.length <= v.MAX_NAME ? m : v.optionalName(m, `predictions[${i}].model`)
        const t = p.predictionType
        if (t !== undefined && t !== null) {
          const type = typeof t === 'string' && t.length <= v.MAX_NAME ? t : v.optionalName(t, `predictions[${i}].predictionType`)
          // The old module compared with ===, so two absent types matched; the learned
          // bonus needs a type on both sides.
          flag = (flag & ~OLD_TYPE_MATCH) | (type === contextType ? OLD_TYPE_MATCH | (type !== '' ? TYPE_MATCH : 0) : 0)
        }
      } else {
        throw v.typeError(`predictions[${i}]`, 'a number or an object', p)
      }
      if (model === '') model = `model_${i}`
      else flag |= HAS_MODEL
      // Written by index and trimmed once: `length = 0` then push would drop and
      // re-allocate the four backing stores on every call.
      names[i] = model
      values[i] = value
      confs[i] = confidence
      flags[i] = flag
    }
    if (names.length !== n) names.length = values.length = confs.length = flags.length = n
    return n
  }

  #push(model, value, confidence) {
    this.#names.push(model)
    this.#values.push(value)
    this.#confidences.push(confidence)
    this.#flags.push(HAS_CONFIDENCE | HAS_MODEL)
  }

  /** Writes the parsed entries into the packed input, interning model names. */
  #pack() {
    const input = this.#input
    const names = this.#names
    for (let i = 0; i < names.length; i++) {
      const o = i * STRIDE
      input[o] = this.#modelId(names[i])
      input[o + 1] = this.#values[i]
      input[o + 2] = this.#confidences[i]
      input[o + 3] = this.#flags[i]
    }
  }

  /**
   * Called when Rust reported a stale id. After a loadState every cached id is stale;
   * otherwise only this call's names can be (evicted from Rust's bounded tables since
   * they were cached), so only those are dropped and interned again.
   */
  #refresh(ctx, pack = true) {
    if (this._generation !== this.#generation) {
      this.#models.clear()
      this.#contexts.clear()
      this.#generation = this._generation
      if (!pack) return
    } else {
      for (const name of this.#names) this.#models.delete(name)
      this.#contexts.delete(ctx.service, ctx.type)
    }
    this.#pack()
  }

  #context(context) {
    const c = v.optionalObject(context, 'context')
    if (c === undefined) return { service: '', type: '', features: undefined, calibrate: false }
    return {
      service: v.optionalName(v.prop(c, 'serviceName', 'context.serviceName'), 'context.serviceName'),
      type: v.optionalName(v.prop(c, 'predictionType', 'context.predictionType'), 'context.predictionType'),
      features: v.prop(c, 'features', 'context.features'),
      calibrate: v.optionalBoolean(v.prop(c, 'calibrate', 'context.calibrate'), 'context.calibrate'),
    }
  }

  /** One native call with the packed entries; re-interns and retries once on a stale id. */
  #native(ctx, call) {
    this.#pack()
    if (call(this.#contextId(ctx.service, ctx.type))) return
    this.#refresh(ctx)
    if (!call(this.#contextId(ctx.service, ctx.type))) throw new Error('AdvancedEnsemble: ids still stale after re-interning (internal error)')
  }

  #combine(strategy, ctx) {
    const n = this.#names.length
    this.#native(ctx, (id) => this._combine(strategy, this.#generation, id, n))
    return n
  }

  // ---- compat API: Promise forms compute at once and return a settled Promise ----

  initialize() {
    this.#initialized = true
    return Promise.resolve(true)
  }

  /** The Promise form of a Sync method: settled at once, rejected on bad input. */
  #settled(sync, predictions, context) {
    try {
      return Promise.resolve(sync.call(this, predictions, context))
    } catch (e) {
      return Promise.reject(e)
    }
  }

  stackingEnsemble(predictions, context) {
    return this.#settled(this.stackingEnsembleSync, predictions, context)
  }

  dynamicSelection(predictions, context) {
    return this.#settled(this.dynamicSelectionSync, predictions, context)
  }

  confidenceWeightedVoting(predictions, context) {
    return this.#settled(this.confidenceWeightedVotingSync, predictions, context)
  }

  /** Resolves false on bad input, as the old module did; the Sync twin throws. */
  updateWithFeedback(predictions, actual, context) {
    try {
      return Promise.resolve(this.updateWithFeedbackSync(predictions, actual, context))
    } catch (e) {
      this.#feedbackRefused++
      this.#log.warn('feedback refused', { error: e && e.message })
      return Promise.resolve(false)
    }
  }

  // ---- Sync twins ----

  stackingEnsembleSync(predictions, context) {
    const ctx = this.#context(context)
    let hybrid = 0
    let features
    if (ctx.features !== undefined && ctx.features !== null && (this.#neural || this.#transformer)) {
      features = readFeatures(ctx.features)
      hybrid = 2
    }
    this.#parse(predictions, ctx.type, hybrid)
    let hybridModels = false
    if (hybrid) {
      const nn = hybridPrediction(this.#neural, features)
      if (nn !== undefined) {
        this.#push('neural_network', nn, 0.85)
        hybridModels = true
      }
      const tf = hybridPrediction(this.#transformer, features)
      if (tf !== undefined) {
        this.#push('transformer', tf, 0.85)
        hybridModels = true
      }
      if (this.#names.length === 0) throw new RangeError('predictions must not be empty')
    }
    const n = this.#combine(STRATEGY.stacking, ctx)
    const out = this.#output
    const basePredictions = new Array(n)
    const metaWeights = new Array(n)
    const rawWeights = new Array(n)
    const values = new Array(n)
    for (let i = 0; i < n; i++) {
      values[i] = this.#values[i]
      basePredictions[i] = { value: values[i], confidence: this.#confidences[i], model: this.#names[i] }
      metaWeights[i] = out[HEAD + i]
      rawWeights[i] = out[HEAD + n + i]
    }
    return {
      prediction: out[0],
      confidence: out[1],
      strategy: 'stacking',
      basePredictions,
      metaWeights,
      hybridModels,
      intercept: out[2],
      rawWeights,
      values,
      samples: out[3],
      source: SOURCES[out[4]],
    }
  }

  dynamicSelectionSync(predictions, context) {
    const ctx = this.#context(context)
    this.#parse(predictions, ctx.type, 0)
    const n = this.#combine(STRATEGY.dynamic, ctx)
    const out = this.#output
    const k = out[5]
    const selectedModels = new Array(k)
    for (let j = 0; j < k; j++) {
      const i = out[HEAD + 2 * n + j]
      selectedModels[j] = {
        model: this.#names[i],
        score: out[HEAD + n + i],
        prediction: this.#values[i],
        weight: out[HEAD + i],
      }
    }
    return {
      prediction: out[0],
      confidence: out[1],
      strategy: 'dynamic-selection',
      selectedModels,
      totalModels: n,
      selectedCount: k,
    }
  }

  confidenceWeightedVotingSync(predictions, context) {
    const ctx = this.#context(context)
    const n = this.#parse(predictions, ctx.type, 0)
    const weights = new Array(n)
    if (!ctx.calibrate) {
      // Nothing to learn: the old rule computed here, without crossing into Rust.
      const values = this.#values
      const confs = this.#confidences
      let total = 0
      let num = 0
      let sumC = 0
      for (let i = 0; i < n; i++) {
        const c = confs[i]
        total += c * c
        num += c * c * values[i]
        sumC += c
      }
      const ok = total > 0 && Number.isFinite(total)
      let prediction = num / total
      if (!ok) {
        prediction = 0
        for (let i = 0; i < n; i++) prediction += values[i]
        prediction /= n
      }
      for (let i = 0; i < n; i++) {
        const w = confs[i] * confs[i]
        weights[i] = { model: this.#names[i], confidence: confs[i], weight: w, normalizedWeight: ok ? w / total : 1 / n }
      }
      return { prediction, confidence: sumC / n, strategy: 'confidence-weighted', weights }
    }
    this.#combine(STRATEGY.calibrated, ctx)
    const out = this.#output
    for (let i = 0; i < n; i++) {
      weights[i] = { model: this.#names[i], confidence: out[HEAD + 2 * n + i], weight: out[HEAD + n + i], normalizedWeight: out[HEAD + i] }
    }
    return { prediction: out[0], confidence: out[1], strategy: 'confidence-weighted', weights }
  }

  updateWithFeedbackSync(predictions, actual, context) {
    const ctx = this.#context(context)
    if (actual === undefined || actual === null) throw new TypeError('actual is required (a finite number)')
    const y = v.finite(actual, 'actual')
    if (Math.abs(y) > MAX_MAGNITUDE) throw v.rangeError('actual', 'within ±1e100', actual)
    const n = this.#parse(predictions, ctx.type, 0)
    this.#native(ctx, (id) => this._feedback(this.#generation, id, n, y))
    const out = this.#output
    for (let i = 0; i < 4; i++) this.#errors[i].observe(out[4 + i])
    return true
  }

  /** Prometheus text exposition of this ensemble (see README, Monitoring). O(1) in contexts. */
  metrics() {
    return metrics.render(this.#collect())
  }

  /** Adds this ensemble's metrics to a prom-client registry: `e.registerMetrics(promClient.register)`. */
  registerMetrics(register, labels) {
    metrics.registerMetrics(register, this, () => this.#collect(), labels)
  }

  #collect() {
    const s = this.getStatistics()
    const f = new metrics.Families()
    f.counter('mlops_ensemble_feedback_total', 'Feedback events learned from.', s.feedbackCount)
    f.counter('mlops_ensemble_feedback_refused_total', 'updateWithFeedback calls resolved false (bad input).', this.#feedbackRefused)
    STRATEGY_NAMES.forEach((name, i) => {
      f.histogram('mlops_ensemble_error_absolute', 'Prequential |error| per strategy (predicted before the label was learned).', this.#errors[i], { strategy: name })
    })
    for (const name of STRATEGY_NAMES) {
      const st = s.strategies && s.strategies[name]
      if (st) f.gauge('mlops_ensemble_strategy_mae', 'Decayed mean absolute error per strategy.', st.mae, { strategy: name })
    }
    const t = s.totals || {}
    f.gauge('mlops_ensemble_contexts', 'Contexts (serviceName × predictionType) held now.', t.contexts)
    f.gauge('mlops_ensemble_models', 'Model names held now.', t.models)
    f.gauge('mlops_ensemble_memory_bytes', 'Estimated bytes of context state (bounded by maxMemoryMb).', t.memoryBytes)
    for (const [kind, n] of Object.entries(s.evictions || {})) f.counter('mlops_ensemble_evictions_total', 'Least-recently-used entries evicted by the bounds.', n, { kind })
    for (const c of s.topContexts || []) {
      f.gauge('mlops_ensemble_context_samples', 'Feedback samples of the busiest contexts (top 10).', c.samples, { service: c.serviceName ?? '', prediction_type: c.predictionType ?? '' })
    }
    return f
  }

  /**
   * Stacking for many requests at once: `predictions` row-major (rows × models.length),
   * optional `confidences` of the same shape; returns one combined prediction per row.
   */
  stackingBatch(predictions, models, context, confidences) {
    v.float64Array(predictions, 'predictions')
    if (!Array.isArray(models)) throw v.typeError('models', 'an array of strings', models)
    if (models.length === 0) throw new RangeError('models must not be empty')
    const names = new Array(models.length)
    for (let i = 0; i < models.length; i++) names[i] = v.optionalName(v.prop(models, i, `models[${i}]`) ?? 0, `models[${i}]`)
    if (confidences !== undefined && confidences !== null) v.float64Array(confidences, 'confidences')
    const ctx = this.#context(context)
    // Ids are only meaningful within one generation: after a loadState, re-intern.
    if (this._generation !== this.#generation) this.#refresh(ctx, false)
    const out = this._stackingBatch(this.#contextId(ctx.service, ctx.type), names, predictions, confidences ?? undefined)
    if (out !== null) return out
    this.#contexts.delete(ctx.service, ctx.type)
    return this._stackingBatch(this.#contextId(ctx.service, ctx.type), names, predictions, confidences ?? undefined)
  }

  /** O(1) in the number of contexts; parsed from JSON text (see `_statisticsJson`). */
  getStatistics() {
    return JSON.parse(this._statisticsJson())
  }

  registerNeuralNetwork(model) {
    this.#neural = checkHybridModel(model, 'model')
  }

  registerTransformer(model) {
    this.#transformer = checkHybridModel(model, 'model')
  }

  loadState(path) {
    return v.stateFile(path, (p) => super.loadState(p))
  }

  saveState(path) {
    return v.stateFile(path, (p) => super.saveState(p))
  }
}

let singleton = null
function getAdvancedEnsemble() {
  if (singleton === null) singleton = new AdvancedEnsemble()
  return singleton
}

module.exports = { AdvancedEnsemble, getAdvancedEnsemble }
