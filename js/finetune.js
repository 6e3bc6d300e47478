'use strict'
// ModelFineTuning: the old lib/mlops/modelFineTuning.js surface over the Rust trainer and
// registry (src/core/finetune.rs, src/core/registry.rs). This layer merges `config` with
// per-run options, turns rows into Float64Arrays (in slices, yielding to the event loop,
// so a large array of objects never blocks it for long), and maps every failure of a run
// to the old `{success: false, error}` result. Training and file I/O run off the JS thread.

const fs = require('node:fs')
const path = require('node:path')
const native = require('../index.js')
const v = require('./validate.js')
const { defaultModelsDir } = require('./paths.js')
const { redact } = require('./redact.js')

const DEFAULT_CONFIG = Object.freeze({
  learningRate: 0.001,
  batchSize: 32,
  epochs: 10,
  validationSplit: 0.2,
  minSamples: 100,
  maxSamples: 10000,
})
const DEFAULT_BASE_MODEL = 'quality-predictor-v3-advanced.json'
/** Values converted per slice before yielding to the event loop (~0.1 ms of work). */
const VALUES_PER_SLICE = 8000
const OPTIMIZERS = ['adam', 'sgd', 'ridge']

const tick = () => new Promise((resolve) => setImmediate(resolve))

function int(o, key, min, field = `options.${key}`) {
  const x = o[key]
  v.finite(x, field)
  if (!Number.isInteger(x) || x < min) throw v.rangeError(field, `an integer ≥ ${min}`, x)
  if (x > 4294967295) throw v.rangeError(field, 'at most 4294967295', x)
  return x
}

/** `newData` as an array of `{features, quality}` → row-major typed arrays. */
async function rowsToArrays(rows) {
  const n = rows.length
  if (n === 0) throw new RangeError('newData must not be empty')
  const first = rows[0]
  if (first === null || typeof first !== 'object') throw v.typeError('newData[0]', 'an object with features and quality', first)
  if (!Array.isArray(first.features)) throw v.typeError('newData[0].features', 'an array of numbers', first.features)
  const d = first.features.length
  if (d === 0) throw new RangeError('newData[0].features must not be empty')
  const X = new Float64Array(n * d)
  const y = new Float64Array(n)
  const rowsPerSlice = Math.max(1, Math.floor(VALUES_PER_SLICE / d))
  for (let start = 0; start < n; start += rowsPerSlice) {
    if (start > 0) await tick()
    const end = Math.min(n, start + rowsPerSlice)
    for (let i = start; i < end; i++) {
      const r = rows[i]
      if (r === null || typeof r !== 'object') throw v.typeError(`newData[${i}]`, 'an object with features and quality', r)
      const f = r.features
      if (!Array.isArray(f)) throw v.typeError(`newData[${i}].features`, 'an array of numbers', f)
      if (f.length !== d) throw new RangeError(`newData[${i}].features has ${f.length} values, newData[0] has ${d}`)
      for (let j = 0; j < d; j++) {
        const x = f[j]
        if (typeof x !== 'number') throw v.typeError(`newData[${i}].features[${j}]`, 'a number', x)
        if (!Number.isFinite(x)) throw v.rangeError(`newData[${i}].features[${j}]`, 'a finite number', x)
        X[i * d + j] = x
      }
      const q = r.quality
      if (q === undefined || q === null) throw new TypeError(`newData[${i}].quality is missing`)
      if (typeof q !== 'number') throw v.typeError(`newData[${i}].quality`, 'a number', q)
      if (!Number.isFinite(q)) throw v.rangeError(`newData[${i}].quality`, 'a finite number', q)
      y[i] = q
    }
  }
  return { X, y, d }
}

function typedInput(data) {
  v.float64Array(data.X, 'newData.X')
  v.float64Array(data.y, 'newData.y')
  const d = int(data, 'features', 1, 'newData.features')
  if (data.X.length !== data.y.length * d) {
    throw new RangeError(`newData.X has ${data.X.length} values, expected y.length × features = ${data.y.length} × ${d}`)
  }
  return { X: data.X, y: data.y, d }
}

class ModelFineTuning {
  #core
  #initialized = false

  constructor(options) {
    const o = v.optionalObject(options, 'options') ?? {}
    this.modelsDir = path.resolve(v.optionalString(v.prop(o, 'modelsDir', 'options.modelsDir'), 'options.modelsDir', '') || defaultModelsDir())
    this.fineTunedDir = path.resolve(v.optionalString(v.prop(o, 'fineTunedDir', 'options.fineTunedDir'), 'options.fineTunedDir', path.join(this.modelsDir, 'fine-tuned')))
    this.config = { ...DEFAULT_CONFIG, adamLearningRate: 0.01 }
    for (const key of Object.keys(this.config)) {
      const x = v.prop(o, key, `options.${key}`)
      if (x !== undefined && x !== null) this.config[key] = v.finite(x, `options.${key}`)
    }
    // PostgreSQL registry (`registry`, else MLOPS_DATABASE_URL; `registry: false` keeps files).
    let registry = v.prop(o, 'registry', 'options.registry')
    if (registry === undefined || registry === null) registry = process.env.MLOPS_DATABASE_URL || null
    else if (registry === false) registry = null
    else if (typeof registry !== 'string') throw v.typeError('options.registry', 'a postgres:// connection string or false', registry)
    else if (registry === '') throw new RangeError('options.registry must not be empty')
    let pg
    if (registry !== null) {
      const n = v.numericOptions({ connectTimeoutMs: v.prop(o, 'connectTimeoutMs', 'options.connectTimeoutMs'), statementTimeoutMs: v.prop(o, 'statementTimeoutMs', 'options.statementTimeoutMs') }, {
        connectTimeoutMs: { min: 1, max: 600_000 },
        statementTimeoutMs: { min: 0, max: 3_600_000 },
      })
      pg = {
        schema: v.optionalString(v.prop(o, 'schema', 'options.schema'), 'options.schema', 'mlops'),
        connectTimeoutMs: n.connectTimeoutMs ?? 5000,
        statementTimeoutMs: n.statementTimeoutMs ?? 10_000,
      }
    }
    /** The registry's connection string without its password, or null (a folder). */
    this.registry = registry === null ? null : redact(registry)
    /** Why the last initialize() resolved false (null when it did not). */
    this.lastError = null
    this.#core = new native.ModelFineTuningCore(this.fineTunedDir, registry ?? undefined, pg)
  }

  /**
   * Creates the fine-tuned models folder and, with a PostgreSQL registry, connects and
   * creates its schema. Idempotent; resolves false if it cannot (`lastError` says why).
   */
  async initialize() {
    try {
      await fs.promises.mkdir(this.fineTunedDir, { recursive: true })
    } catch (e) {
      this.lastError = e.message
      return false
    }
    if (this.registry !== null) {
      const err = await this.#core.connect()
      if (err) {
        this.lastError = err
        return false
      }
    }
    this.lastError = null
    this.#initialized = true
    return true
  }

  /** Relative paths resolve against the models folder. */
  resolveModelPath(p = DEFAULT_BASE_MODEL) {
    if (typeof p !== 'string' || p === '') throw v.typeError('baseModelPath', 'a non-empty string', p)
    return path.isAbsolute(p) ? p : path.resolve(this.modelsDir, p)
  }

  #runOptions(options) {
    const o = { ...this.config, ...(v.optionalObject(options, 'options') ?? {}) }
    const optimizer = o.optimizer ?? (o.method === 'ridge' ? 'ridge' : 'adam')
    if (!OPTIMIZERS.includes(optimizer)) throw v.rangeError('options.optimizer', `one of ${OPTIMIZERS.join(', ')}`, optimizer)
    const explicitRate = options && options.learningRate !== undefined && options.learningRate !== null
    const learningRate = v.finite(optimizer === 'adam' && !explicitRate ? o.adamLearningRate : o.learningRate, 'options.learningRate')
    if (learningRate <= 0) throw v.rangeError('options.learningRate', 'a positive number', learningRate)
    const validationSplit = v.finite(o.validationSplit, 'options.validationSplit')
    if (!(validationSplit > 0 && validationSplit < 1)) throw v.rangeError('options.validationSplit', 'in (0, 1)', validationSplit)
    const l2 = o.l2 === undefined || o.l2 === null ? 0 : v.finite(o.l2, 'options.l2')
    if (l2 < 0) throw v.rangeError('options.l2', '≥ 0', l2)
    let patience = -1
    if (o.earlyStopping === false) patience = -1
    else if (o.patience !== undefined && o.patience !== null) patience = int(o, 'patience', 0)
    else if (optimizer === 'adam' || o.earlyStopping === true) patience = 3
    const seed = o.seed === undefined || o.seed === null ? 42 : int(o, 'seed', 0)
    const minImprovement = o.minImprovement === undefined || o.minImprovement === null ? 0 : v.finite(o.minImprovement, 'options.minImprovement')
    if (o.onProgress !== undefined && o.onProgress !== null && typeof o.onProgress !== 'function') {
      throw v.typeError('options.onProgress', 'a function', o.onProgress)
    }
    return {
      native: {
        learningRate,
        batchSize: int(o, 'batchSize', 1),
        epochs: int(o, 'epochs', 1),
        validationSplit,
        minSamples: int(o, 'minSamples', 0),
        maxSamples: int(o, 'maxSamples', 1),
        seed,
        optimizer,
        l2,
        patience,
        minImprovement,
        save: v.optionalBoolean(o.save, 'options.save', true),
        promote: v.optionalBoolean(o.promote, 'options.promote', false),
      },
      onProgress: o.onProgress,
    }
  }

  /**
   * Fine-tunes the base model on `newData` (array of `{features, quality}`, or
   * `{X, y, features}` typed arrays). Never rejects for bad data or a bad base model:
   * resolves `{success: false, error}` naming the first bad row and field.
   */
  async fineTuneModel(baseModelPath, newData, options) {
    try {
      const base = this.resolveModelPath(baseModelPath ?? DEFAULT_BASE_MODEL)
      const run = this.#runOptions(options)
      let input
      if (Array.isArray(newData)) input = await rowsToArrays(newData)
      else if (newData !== null && typeof newData === 'object' && 'X' in newData) input = typedInput(newData)
      else throw v.typeError('newData', 'an array of {features, quality} or {X, y, features}', newData)
      if (input.y.length < run.native.minSamples) {
        throw new RangeError(`newData has ${input.y.length} rows, fewer than minSamples (${run.native.minSamples})`)
      }
      const user = run.onProgress
      // A throwing progress callback must not become an uncaught exception in the host.
      const progress = user ? (info) => { try { user(info) } catch {} } : undefined
      const result = await this.#core.fineTune(base, input.X, input.y, input.d, run.native, progress)
      return result
    } catch (e) {
      return { success: false, error: e && e.message ? e.message : String(e) }
    }
  }

  /** The model object (extra keys included), or null when missing or unreadable. */
  async loadModel(modelPath) {
    try {
      return await this.#core.loadModel(this.resolveModelPath(modelPath))
    } catch {
      return null
    }
  }

  /** Writes `model` as a version file of `baseModelPath` atomically; resolves its path. */
  async saveModel(model, baseModelPath, version) {
    v.optionalObject(model, 'model')
    if (model === undefined || model === null) throw new TypeError('model is required')
    v.finiteArray(v.prop(model, 'weights', 'model.weights'), 'model.weights', { allowEmpty: false })
    v.finite(v.prop(model, 'bias', 'model.bias'), 'model.bias')
    if (typeof version !== 'string' && typeof version !== 'number') throw v.typeError('version', 'a string', version)
    let plain
    try {
      plain = JSON.parse(JSON.stringify(model))
    } catch (e) {
      throw new TypeError(`model is not plain JSON data: ${e.message}`)
    }
    return this.#core.saveModel(plain, this.resolveModelPath(baseModelPath), String(version))
  }

  /** The version the next run of this base will get, as `v<N>`. */
  getNextVersion(baseModelPath) {
    return `v${this.#core.nextVersion(this.resolveModelPath(baseModelPath))}`
  }

  /** Registry entries of this base, newest first, as plain values. */
  async getFineTuningHistory(baseModelPath) {
    const entries = await this.#core.history(this.resolveModelPath(baseModelPath))
    return entries.map(toHistoryEntry)
  }

  /** Marks `version` (`3` or `'v3'`) as production; the previous one is archived. */
  async promoteVersion(baseModelPath, version) {
    const n = typeof version === 'string' ? Number(version.replace(/^v/, '')) : version
    if (!Number.isInteger(n) || n < 1) throw v.rangeError('version', 'a version number or "v<N>"', version)
    return toHistoryEntry(await this.#core.promote(this.resolveModelPath(baseModelPath), n))
  }

  /** Moves production back to the previously promoted version; resolves its entry or null. */
  async rollback(baseModelPath) {
    const base = this.resolveModelPath(baseModelPath)
    await this.#core.rollback(base)
    return this.getProductionVersion(base)
  }

  /** The production entry of this base, or null while the base model itself serves. */
  async getProductionVersion(baseModelPath) {
    const e = await this.#core.production(this.resolveModelPath(baseModelPath))
    return e ? toHistoryEntry(e) : null
  }

  /**
   * Path of what serves for this base: the production version when its file is readable,
   * else the newest readable version its gate did not refuse, else the base file — the
   * same fallback RealTimeModelUpdates serves (issue 10).
   */
  async getProductionModelPath(baseModelPath) {
    const e = await this.getProductionVersion(baseModelPath)
    if (!e) return this.resolveModelPath(baseModelPath)
    if (await this.loadModel(e.modelPath)) return e.modelPath
    for (const h of await this.getFineTuningHistory(baseModelPath)) {
      if (h.accepted !== false && h.modelPath !== e.modelPath && (await this.loadModel(h.modelPath))) return h.modelPath
    }
    return this.resolveModelPath(baseModelPath)
  }

  // ---- the old helpers: plain arithmetic on plain objects, cheaper here than a crossing ----

  predictSingle(model, features) {
    const { weights: w, bias } = checkModel(model)
    features = v.finiteArray(features, 'features')
    if (features.length !== w.length) throw new RangeError(`features has ${features.length} values, the model has ${w.length} weights`)
    let s = bias
    for (let i = 0; i < w.length; i++) s += w[i] * features[i]
    return s
  }

  predictBatch(model, X) {
    checkModel(model)
    if (!Array.isArray(X)) throw v.typeError('X', 'an array of feature arrays', X)
    return X.map((x, i) => v.reading(`X[${i}]`, () => this.predictSingle(model, x)))
  }

  calculateMSE(pred, actual) {
    ;[pred, actual] = checkPair(pred, actual)
    let s = 0
    for (let i = 0; i < actual.length; i++) s += (pred[i] - actual[i]) ** 2
    return actual.length ? s / actual.length : 0
  }

  calculateMAE(pred, actual) {
    ;[pred, actual] = checkPair(pred, actual)
    let s = 0
    for (let i = 0; i < actual.length; i++) s += Math.abs(pred[i] - actual[i])
    return actual.length ? s / actual.length : 0
  }

  calculateR2(pred, actual) {
    ;[pred, actual] = checkPair(pred, actual)
    if (actual.length === 0) return 0
    const mean = actual.reduce((a, b) => a + b, 0) / actual.length
    let res = 0
    let tot = 0
    for (let i = 0; i < actual.length; i++) {
      res += (pred[i] - actual[i]) ** 2
      tot += (actual[i] - mean) ** 2
    }
    return tot > 0 ? 1 - res / tot : 0
  }

  evaluateModel(model, X, y) {
    const pred = this.predictBatch(model, X)
    return { mse: this.calculateMSE(pred, y), mae: this.calculateMAE(pred, y), r2: this.calculateR2(pred, y) }
  }
}

function checkModel(model) {
  if (model === null || typeof model !== 'object') throw v.typeError('model', 'an object with weights and bias', model)
  const weights = v.finiteArray(v.prop(model, 'weights', 'model.weights'), 'model.weights')
  const bias = v.finite(v.prop(model, 'bias', 'model.bias'), 'model.bias')
  return { weights, bias }
}

function checkPair(pred, actual) {
  pred = v.finiteArray(pred, 'pred')
  actual = v.finiteArray(actual, 'actual')
  if (pred.length !== actual.length) throw new RangeError(`pred has ${pred.length} values, actual has ${actual.length}`)
  return [pred, actual]
}

function toHistoryEntry(e) {
  return {
    version: e.name,
    versionNumber: e.version,
    filename: e.filename,
    path: e.modelPath,
    modelPath: e.modelPath,
    created: new Date(e.created).toISOString(),
    createdMs: e.created,
    status: e.status,
    parent: e.parent ?? null,
    metrics: e.metrics,
    baseMetrics: e.baseMetrics,
    improvement: e.improvement ?? null,
    accepted: e.accepted ?? null,
    options: e.options,
    data: e.data,
  }
}

let singleton = null
function getModelFineTuning() {
  if (singleton === null) singleton = new ModelFineTuning()
  return singleton
}

module.exports = { ModelFineTuning, getModelFineTuning, DEFAULT_BASE_MODEL, DEFAULT_CONFIG }
