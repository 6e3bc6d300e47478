'use strict'
// The object-shaped AdvancedEnsemble API over the packed native protocol.
//
// Why a JS layer: reading three small prediction objects through `#[napi(object)]` costs
// ~5-7 µs per call, reading them here and crossing once with numbers costs well under
// 1 µs. So this file reads and validates the objects, interns model and context names to
// integer ids (a new name crosses once, ever), writes `[modelId, value, confidence,
// typeMatch]` per entry into a Float64Array that Rust registered once, and builds the
// result object from the output array. All learning is in Rust (src/core/ensemble.rs).

const native = require('../index.js')
const v = require('./validate.js')

const STRIDE = 4
const HEAD = 8
const STRATEGY = { stacking: 0, dynamic: 1, voting: 2, calibrated: 3 }
const SOURCES = ['context', 'global', 'prior']
/** Values beyond this would overflow the meta-learners' statistics (see src/core/ensemble.rs). */
const MAX_MAGNITUDE = 1e100
/** Entries per call: an ensemble of more base predictions than this is a caller bug. */
const MAX_ENTRIES = 10_000

const OPTIONS = {
  historySize: { min: 0, max: 10_000_000, integer: true },
  minSamples: { min: 0, max: 4_294_967_295, integer: true },
  forgetting: { min: 0, minExclusive: true, max: 1 },
  ridgePrior: { min: 0, minExclusive: true },
  competenceDecay: { min: 0, minExclusive: true, max: 1 },
  typeMatchBonus: { min: 0 },
  recentErrors: { min: 0, max: 10_000, integer: true },
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

class AdvancedEnsemble extends native.AdvancedEnsemble {
  #models = new Map()
  #contexts = new Map()
  #generation = 0
  #capacity = 0
  #input = null
  #output = null
  // Parsed entries of the current call, reused to avoid garbage on the hot path.
  #names = []
  #values = []
  #confidences = []
  #neural = null
  #transformer = null
  #initialized = false

  constructor(options) {
    super(v.numericOptions(options, OPTIONS))
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
      this.#models.set(name, id)
    }
    return id
  }

  #contextId(service, type) {
    let byType = this.#contexts.get(service)
    if (byType === undefined) {
      byType = new Map()
      this.#contexts.set(service, byType)
    }
    let id = byType.get(type)
    if (id === undefined) {
      id = this._internContext(service, type)
      byType.set(type, id)
    }
    return id
  }

  /**
   * Reads `predictions` into the parsed-entry arrays; returns the entry count.
   * A bare number is a prediction with confidence 0.5; `prediction` wins over `value`;
   * 0 is a real value.
   */
  #parse(predictions, contextType, extra) {
    let at = 0
    try {
      return this.#parseEntries(predictions, contextType, extra, (i) => (at = i))
    } catch (e) {
      if (e instanceof TypeError || e instanceof RangeError) throw e
      // A caller's getter or Proxy threw while we read the entry.
      throw new TypeError(`predictions[${at}] could not be read: ${e && e.message ? e.message : String(e)}`)
    }
  }

  #parseEntries(predictions, contextType, extra, mark) {
    if (!Array.isArray(predictions)) throw v.typeError('predictions', 'an array', predictions)
    const n = predictions.length
    if (n === 0 && extra === 0) throw new RangeError('predictions must not be empty')
    if (n > MAX_ENTRIES) throw new RangeError(`predictions must hold at most ${MAX_ENTRIES} entries, got ${n}`)
    this.#ensureCapacity(n + extra)
    const names = this.#names
    const values = this.#values
    const confs = this.#confidences
    const input = this.#input
    names.length = values.length = confs.length = 0
    for (let i = 0; i < n; i++) {
      mark(i)
      const p = predictions[i]
      let value
      let confidence = 0.5
      let model
      let typeMatch = 0
      if (typeof p === 'number') {
        value = p
        if (!(Math.abs(p) <= MAX_MAGNITUDE)) throw v.rangeError(`predictions[${i}]`, 'a finite number within ±1e100', p)
      } else if (p !== null && typeof p === 'object') {
        const pred = p.prediction
        value = pred !== undefined && pred !== null ? pred : p.value
        if (typeof value !== 'number') {
          throw v.typeError(`predictions[${i}].${pred !== undefined && pred !== null ? 'prediction' : 'value'}`, 'a number', value)
        }
        if (!(Math.abs(value) <= MAX_MAGNITUDE)) throw v.rangeError(`predictions[${i}].${pred !== undefined && pred !== null ? 'prediction' : 'value'}`, 'a finite number within ±1e100', value)
        const c = p.confidence
        if (c !== undefined && c !== null) {
          if (typeof c !== 'number') throw v.typeError(`predictions[${i}].confidence`, 'a number', c)
          if (!(c >= 0 && c <= 1)) throw v.rangeError(`predictions[${i}].confidence`, 'a number in [0, 1]', c)
          confidence = c
        }
        const m = p.model
        if (m !== undefined && m !== null) {
          if (typeof m !== 'string') throw v.typeError(`predictions[${i}].model`, 'a string', m)
          if (m.length > v.MAX_NAME) throw new RangeError(`predictions[${i}].model must be at most ${v.MAX_NAME} characters, got ${m.length}`)
          model = m
        }
        const t = p.predictionType
        if (t !== undefined && t !== null) {
          if (typeof t !== 'string') throw v.typeError(`predictions[${i}].predictionType`, 'a string', t)
          typeMatch = contextType !== '' && t === contextType ? 1 : 0
        }
      } else {
        throw v.typeError(`predictions[${i}]`, 'a number or an object', p)
      }
      if (model === undefined) model = `model_${i}`
      names.push(model)
      values.push(value)
      confs.push(confidence)
      const o = i * STRIDE
      input[o] = this.#modelId(model)
      input[o + 1] = value
      input[o + 2] = confidence
      input[o + 3] = typeMatch
    }
    return n
  }

  #push(model, value, confidence) {
    const i = this.#names.length
    this.#names.push(model)
    this.#values.push(value)
    this.#confidences.push(confidence)
    const o = i * STRIDE
    this.#input[o] = this.#modelId(model)
    this.#input[o + 1] = value
    this.#input[o + 2] = confidence
    this.#input[o + 3] = 0
  }

  /** Re-writes the model ids after the native state was replaced (loadState). */
  #resync() {
    this.#models.clear()
    this.#contexts.clear()
    this.#generation = this._generation
    for (let i = 0; i < this.#names.length; i++) this.#input[i * STRIDE] = this.#modelId(this.#names[i])
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

  #combine(strategy, ctx) {
    const n = this.#names.length
    let id = this.#contextId(ctx.service, ctx.type)
    if (!this._combine(strategy, this.#generation, id, n)) {
      this.#resync()
      id = this.#contextId(ctx.service, ctx.type)
      this._combine(strategy, this.#generation, id, n)
    }
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
    } catch {
      return Promise.resolve(false)
    }
  }

  // ---- Sync twins ----

  stackingEnsembleSync(predictions, context) {
    const ctx = this.#context(context)
    let hybrid = 0
    if (ctx.features !== undefined && ctx.features !== null && (this.#neural || this.#transformer)) {
      v.finiteArray(ctx.features, 'context.features')
      hybrid = 2
    }
    this.#parse(predictions, ctx.type, hybrid)
    let hybridModels = false
    if (hybrid) {
      const nn = hybridPrediction(this.#neural, ctx.features)
      if (nn !== undefined) {
        this.#push('neural_network', nn, 0.85)
        hybridModels = true
      }
      const tf = hybridPrediction(this.#transformer, ctx.features)
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
    for (let i = 0; i < n; i++) {
      basePredictions[i] = { value: this.#values[i], confidence: this.#confidences[i], model: this.#names[i] }
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
      rawWeights,
      intercept: out[2],
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
    this.#parse(predictions, ctx.type, 0)
    const n = this.#combine(ctx.calibrate ? STRATEGY.calibrated : STRATEGY.voting, ctx)
    const out = this.#output
    const weights = new Array(n)
    for (let i = 0; i < n; i++) {
      weights[i] = { model: this.#names[i], confidence: out[HEAD + n + i], weight: out[HEAD + i] }
    }
    return { prediction: out[0], confidence: out[1], strategy: 'confidence-weighted', weights }
  }

  updateWithFeedbackSync(predictions, actual, context) {
    const ctx = this.#context(context)
    if (actual === undefined || actual === null) throw new TypeError('actual is required (a finite number)')
    v.finite(actual, 'actual')
    if (Math.abs(actual) > MAX_MAGNITUDE) throw v.rangeError('actual', 'within ±1e100', actual)
    this.#parse(predictions, ctx.type, 0)
    const n = this.#names.length
    let id = this.#contextId(ctx.service, ctx.type)
    if (!this._feedback(this.#generation, id, n, actual)) {
      this.#resync()
      id = this.#contextId(ctx.service, ctx.type)
      this._feedback(this.#generation, id, n, actual)
    }
    return true
  }

  /**
   * Stacking for many requests at once: `predictions` row-major (rows × models.length),
   * optional `confidences` of the same shape; returns one combined prediction per row.
   */
  stackingBatch(predictions, models, context, confidences) {
    v.float64Array(predictions, 'predictions')
    if (!Array.isArray(models)) throw v.typeError('models', 'an array of strings', models)
    if (models.length === 0) throw new RangeError('models must not be empty')
    for (let i = 0; i < models.length; i++) v.optionalName(v.prop(models, i, `models[${i}]`) ?? 0, `models[${i}]`)
    if (confidences !== undefined && confidences !== null) v.float64Array(confidences, 'confidences')
    const ctx = this.#context(context)
    const id = this.#contextId(ctx.service, ctx.type)
    return this._stackingBatch(id, models.slice(), predictions, confidences ?? undefined)
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
