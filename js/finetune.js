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
const { makeLog } = require('./log.js')
const { mlflowFrom, warning: mlflowWarning } = require('./mlflow.js')
const metrics = require('./metrics.js')

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
const FAMILIES = ['linear', 'gbm', 'random_forest', 'extra_trees', 'auto']

const tick = () => new Promise((resolve) => setImmediate(resolve))

function int(o, key, min, field = `options.${key}`) {
  // Numeric strings ('10') count: hyperparameters often come from a database job row.
  const x = v.finite(o[key], field)
  if (!Number.isInteger(x) || x < min) throw v.rangeError(field, `an integer ≥ ${min}`, o[key])
  if (x > 4294967295) throw v.rangeError(field, 'at most 4294967295', x)
  return x
}

function optionalInt(o, key, min) {
  const x = o[key]
  return x === undefined || x === null ? undefined : int(o, key, min)
}

/** Reasons a row is skipped (lenient mode), in the order they are checked. */
const SKIP_REASONS = [
  'notAnObject', // the row is not an object
  'missingFeatures', // no `features`, or not an array / object of named numbers
  'emptyFeatures', // `features: []` or `{}`
  'wrongLength', // an array with more or fewer values than the model has features
  'unknownFeature', // a named feature the model does not have
  'missingFeature', // a feature of the model absent from the named features
  'badFeature', // a value that is not a finite number or numeric string
  'missingQuality', // no `quality` (undefined or null)
  'badQuality', // `quality` is not a finite number or numeric string
]
const FIRST_SKIPPED = 10

class RowError extends Error {
  constructor(reason, message, ErrorType = RangeError) {
    super(message)
    this.reason = reason
    this.ErrorType = ErrorType
  }
}

/** `x` as a finite number (numeric strings included), or a RowError. */
function rowNumber(x, field, badReason) {
  if (typeof x === 'number') {
    if (Number.isFinite(x)) return x
    throw new RowError(badReason, `${field} must be a finite number, got ${x}`)
  }
  const n = v.numberFrom(x)
  if (n === undefined) throw new RowError(badReason, `${field} must be a number, got ${describe(x)}`, TypeError)
  if (!Number.isFinite(n)) throw new RowError(badReason, `${field} must be a finite number, got ${describe(x)}`)
  return n
}

function describe(x) {
  try {
    return v.typeError('x', '', x).message.replace(/^x must be , got /, '')
  } catch {
    return typeof x
  }
}

/** One row into `X[i*d..]` and `y[i]`; throws a RowError naming the field and the reason. */
function readRow(r, i, d, names, nameIndex, X, y, k) {
  if (r === null || typeof r !== 'object' || Array.isArray(r)) {
    throw new RowError('notAnObject', `newData[${i}] must be an object with features and quality, got ${describe(r)}`, TypeError)
  }
  const f = v.prop(r, 'features', `newData[${i}].features`)
  const base = k * d
  if (Array.isArray(f) || (ArrayBuffer.isView(f) && !(f instanceof DataView))) {
    if (f.length === 0) throw new RowError('emptyFeatures', `newData[${i}].features must not be empty`)
    if (f.length !== d) throw new RowError('wrongLength', `newData[${i}].features has ${f.length} values, the model has ${d} features`)
    for (let j = 0; j < d; j++) {
      const x = f[j]
      // The field name is built only for a value that fails (the common case is ~1 ns).
      X[base + j] = typeof x === 'number' && Number.isFinite(x) ? x : rowNumber(x, `newData[${i}].features[${j}]`, 'badFeature')
    }
  } else if (f !== null && typeof f === 'object') {
    // Named features: {promptTokens: 120, …} mapped through the model's feature names.
    const keys = Object.keys(f)
    if (keys.length === 0) throw new RowError('emptyFeatures', `newData[${i}].features must not be empty`)
    if (!names) {
      throw new TypeError(`newData[${i}].features is an object of named features, but the model file has no featureNames: pass options.featureNames`)
    }
    for (const key of keys) {
      if (!nameIndex.has(key)) throw new RowError('unknownFeature', `newData[${i}].features.${key} is not a feature of the model (${names.join(', ')})`)
    }
    for (let j = 0; j < d; j++) {
      const x = f[names[j]]
      if (x === undefined || x === null) throw new RowError('missingFeature', `newData[${i}].features.${names[j]} is missing`)
      X[base + j] = rowNumber(x, `newData[${i}].features.${names[j]}`, 'badFeature')
    }
  } else {
    throw new RowError('missingFeatures', `newData[${i}].features must be an array of numbers or an object of named numbers, got ${describe(f)}`, TypeError)
  }
  const q = v.prop(r, 'quality', `newData[${i}].quality`)
  if (q === undefined || q === null) throw new RowError('missingQuality', `newData[${i}].quality is missing`, TypeError)
  y[k] = typeof q === 'number' && Number.isFinite(q) ? q : rowNumber(q, `newData[${i}].quality`, 'badQuality')
}

/**
 * `newData` as an array of `{features, quality}` → row-major typed arrays of the usable
 * rows. Lenient (default): a row that cannot be used is skipped and its reason counted;
 * strict: the first such row throws. `d` is the model's feature count: a row with more or
 * fewer values is `wrongLength` (its values cannot be matched to the model's weights).
 */
async function rowsToArrays(rows, d, names, strict, spare) {
  const n = rows.length
  if (n === 0) throw new RangeError('newData must not be empty')
  const nameIndex = names ? new Map(names.map((name, j) => [name, j])) : null
  // The last run's arrays when they are large enough: a fresh 2.5 MB matrix per run is
  // external memory V8 answers with full collections, which pause the event loop.
  const reuse = spare && spare.X.length >= n * d && spare.y.length >= n
  const buffers = reuse ? spare : { X: new Float64Array(n * d), y: new Float64Array(n) }
  let X = reuse ? spare.X.subarray(0, n * d) : buffers.X
  let y = reuse ? spare.y.subarray(0, n) : buffers.y
  const reasons = {}
  const first = []
  let count = 0
  let k = 0
  const rowsPerSlice = Math.max(1, Math.floor(VALUES_PER_SLICE / d))
  for (let start = 0; start < n; start += rowsPerSlice) {
    if (start > 0) await tick()
    const end = Math.min(n, start + rowsPerSlice)
    for (let i = start; i < end; i++) {
      try {
        readRow(rows[i], i, d, names, nameIndex, X, y, k)
        k++
      } catch (e) {
        if (!(e instanceof RowError)) throw e
        if (strict) throw new e.ErrorType(e.message)
        count++
        reasons[e.reason] = (reasons[e.reason] ?? 0) + 1
        if (first.length < FIRST_SKIPPED) first.push({ row: i, reason: e.reason, message: e.message })
      }
    }
  }
  if (k < n) {
    X = X.slice(0, k * d)
    y = y.slice(0, k)
  }
  return { X, y, d, skipped: { count, reasons, first }, buffers }
}

/** Values of the largest row matrix kept for reuse between runs (16 MB). */
const SPARE_VALUES = 2 * 1024 * 1024

/**
 * `{X, y, features}` checked for shape. The values are not read here: Rust proves them
 * finite in the pass that fingerprints the data (one read of the matrix instead of two, and
 * none on the JS thread). Lenient input (`unscanned`) that Rust refuses for a non-finite
 * value comes back through `dropNonFinite`; so does input too small to train, whose error
 * counts the skipped rows.
 */
function typedInput(data, strict, minSamples) {
  v.float64Array(data.X, 'newData.X')
  v.float64Array(data.y, 'newData.y')
  const d = int(data, 'features', 1, 'newData.features')
  if (data.X.length !== data.y.length * d) {
    throw new RangeError(`newData.X has ${data.X.length} values, expected y.length × features = ${data.y.length} × ${d}`)
  }
  const skipped = { count: 0, reasons: {}, first: [] }
  if (strict) return { X: data.X, y: data.y, d, skipped }
  if (data.y.length >= minSamples && data.y.length > 0) return { X: data.X, y: data.y, d, skipped, unscanned: true }
  return dropNonFinite(data.X, data.y, d)
}

/** Rust's refusal of a NaN/±Infinity value (check_data in src/core/finetune.rs). */
const NON_FINITE = /^newData\[\d+\]\.(features\[\d+\]|quality) must be a finite number$/

/** Lenient typed input without the rows holding NaN/±Infinity, counted like skipped rows. */
function dropNonFinite(X, y, d) {
  const skipped = { count: 0, reasons: {}, first: [] }
  const keep = []
  for (let i = 0; i < y.length; i++) {
    let ok = Number.isFinite(y[i])
    for (let j = 0; ok && j < d; j++) ok = Number.isFinite(X[i * d + j])
    if (ok) keep.push(i)
    else {
      const reason = Number.isFinite(y[i]) ? 'badFeature' : 'badQuality'
      skipped.count++
      skipped.reasons[reason] = (skipped.reasons[reason] ?? 0) + 1
      if (skipped.first.length < FIRST_SKIPPED) skipped.first.push({ row: i, reason, message: `newData row ${i} holds a value that is not finite` })
    }
  }
  if (skipped.count === 0) return { X, y, d, skipped }
  const X2 = new Float64Array(keep.length * d)
  const y2 = new Float64Array(keep.length)
  keep.forEach((i, k) => {
    X2.set(X.subarray(i * d, (i + 1) * d), k * d)
    y2[k] = y[i]
  })
  return { X: X2, y: y2, d, skipped }
}

function skippedSummary(s) {
  return Object.entries(s.reasons).map(([k, n]) => `${n} ${k}`).join(', ')
}

/** Buckets of fine-tune wall time (ms) and of relative MSE improvement. */
const DURATION_BUCKETS = [10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000]
const IMPROVEMENT_BUCKETS = [-0.5, -0.1, -0.01, 0, 0.01, 0.05, 0.1, 0.25, 0.5, 1]

class ModelFineTuning {
  #core
  #initialized = false
  #log
  #mlflow
  // Counted here, where every run's result passes: runs by outcome and their distributions.
  #runs = { accepted: 0, rejected: 0, noChange: 0, failed: 0 }
  #duration = new metrics.Histogram(DURATION_BUCKETS)
  #improvement = new metrics.Histogram(IMPROVEMENT_BUCKETS)
  #promotions = 0
  #rollbacks = 0
  #mlflowFailures = 0
  /** Where `modelsDir` came from, named in the missing-base-model error. */
  #modelsDirFrom
  /** Row arrays of the last array-of-objects run, taken (so never shared) by the next. */
  #spare = null

  constructor(options) {
    const o = v.optionalObject(options, 'options') ?? {}
    const givenDir = v.optionalString(v.prop(o, 'modelsDir', 'options.modelsDir'), 'options.modelsDir', '')
    this.modelsDir = path.resolve(givenDir || defaultModelsDir())
    const env = process.env.MLOPS_MODELS_DIR
    this.#modelsDirFrom = givenDir ? 'from options.modelsDir' : typeof env === 'string' && env.trim() !== '' ? 'from MLOPS_MODELS_DIR' : "the project root's models folder"
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
    this.#log = makeLog(v.prop(o, 'logger', 'options.logger'), 'mlops-native/ModelFineTuning')
    this.#mlflow = mlflowFrom(v.prop(o, 'mlflow', 'options.mlflow'))
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
    const given = v.optionalObject(options, 'options') ?? {}
    const o = { ...this.config, ...given }
    const optimizer = o.optimizer ?? (o.method === 'ridge' ? 'ridge' : 'adam')
    if (!OPTIMIZERS.includes(optimizer)) throw v.rangeError('options.optimizer', `one of ${OPTIMIZERS.join(', ')}`, optimizer)
    const explicitRate = given.learningRate !== undefined && given.learningRate !== null
    const learningRate = v.finite(optimizer === 'adam' && !explicitRate ? o.adamLearningRate : o.learningRate, 'options.learningRate')
    if (learningRate <= 0) throw v.rangeError('options.learningRate', 'a positive number', learningRate)
    const validationSplit = v.finite(o.validationSplit, 'options.validationSplit')
    if (!(validationSplit > 0 && validationSplit < 1)) throw v.rangeError('options.validationSplit', 'in (0, 1)', validationSplit)
    const testSplit = o.testSplit === undefined || o.testSplit === null ? 0.2 : v.finite(o.testSplit, 'options.testSplit')
    if (!(testSplit > 0 && validationSplit + testSplit < 1)) throw v.rangeError('options.testSplit', 'in (0, 1 − validationSplit)', o.testSplit)
    const confidence = o.confidence === undefined || o.confidence === null ? 0.95 : v.finite(o.confidence, 'options.confidence')
    if (!(confidence >= 0.5 && confidence < 1)) throw v.rangeError('options.confidence', 'in [0.5, 1)', o.confidence)
    const l2 = o.l2 === undefined || o.l2 === null ? 0 : v.finite(o.l2, 'options.l2')
    if (l2 < 0) throw v.rangeError('options.l2', '≥ 0', l2)
    let patience = -1
    if (o.earlyStopping === false) patience = -1
    else if (o.patience !== undefined && o.patience !== null) patience = int(o, 'patience', 0)
    else if (optimizer === 'adam' || o.earlyStopping === true) patience = 3
    const seed = o.seed === undefined || o.seed === null ? 42 : int(o, 'seed', 0)
    const minImprovement = o.minImprovement === undefined || o.minImprovement === null ? 0 : v.finite(o.minImprovement, 'options.minImprovement')
    if (!(minImprovement < 1)) throw v.rangeError('options.minImprovement', 'below 1', o.minImprovement)
    if (o.onProgress !== undefined && o.onProgress !== null && typeof o.onProgress !== 'function') {
      throw v.typeError('options.onProgress', 'a function', o.onProgress)
    }
    if (o.save !== undefined && o.save !== null && typeof o.save !== 'boolean' && o.save !== 'always') {
      throw v.typeError('options.save', "a boolean or 'always'", o.save)
    }
    const model = o.model === undefined || o.model === null ? undefined : o.model
    if (model !== undefined && !FAMILIES.includes(model)) throw v.rangeError('options.model', `one of ${FAMILIES.join(', ')}`, model)
    let featureNames
    if (o.featureNames !== undefined && o.featureNames !== null) {
      if (!Array.isArray(o.featureNames) || o.featureNames.length === 0 || !o.featureNames.every((x) => typeof x === 'string')) {
        throw v.typeError('options.featureNames', 'a non-empty array of strings', o.featureNames)
      }
      featureNames = o.featureNames
    }
    const subsample = o.subsample === undefined || o.subsample === null ? undefined : v.finite(o.subsample, 'options.subsample')
    if (subsample !== undefined && !(subsample > 0 && subsample <= 1)) throw v.rangeError('options.subsample', 'in (0, 1]', o.subsample)
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
        save: o.save === undefined || o.save === null ? true : o.save !== false,
        saveAlways: o.save === 'always',
        promote: v.optionalBoolean(o.promote, 'options.promote', false),
        testSplit,
        confidence,
        model,
        trees: optionalInt(o, 'trees', 1),
        maxDepth: optionalInt(o, 'maxDepth', 1),
        // gbm's shrinkage is `learningRate` only when given for this run: the config's
        // 0.001 is the old SGD step size, far too small for boosting.
        treeLearningRate: explicitRate ? learningRate : undefined,
        minSamplesLeaf: optionalInt(o, 'minSamplesLeaf', 1),
        mtry: optionalInt(o, 'mtry', 1),
        subsample,
        earlyStoppingRounds: optionalInt(o, 'earlyStoppingRounds', 0),
      },
      strict: v.optionalBoolean(o.strict, 'options.strict', false),
      featureNames,
      onProgress: o.onProgress,
    }
  }

  /**
   * Fine-tunes the base model on `newData` (array of `{features, quality}`, or
   * `{X, y, features}` typed arrays). Never rejects for bad data or a bad base model:
   * resolves `{success: false, error}`. Unusable rows are skipped and counted in
   * `result.skipped` unless `strict: true`, which fails on the first one.
   */
  async fineTuneModel(baseModelPath, newData, options) {
    try {
      const base = this.resolveModelPath(baseModelPath ?? DEFAULT_BASE_MODEL)
      const run = this.#runOptions(options)
      const typed = !Array.isArray(newData) && newData !== null && typeof newData === 'object' && 'X' in newData
      // Typed rows carry their own width, which Rust checks against the base: reading the
      // base's info first would cost a thread-pool round trip per run for nothing.
      const info = typed && !run.featureNames ? null : await this.#baseInfo(base)
      const names = info && (run.featureNames ?? info.featureNames ?? null)
      if (names && names.length !== info.features) {
        throw new RangeError(`options.featureNames has ${names.length} names, the model has ${info.features} features`)
      }
      let input
      if (Array.isArray(newData)) {
        const spare = this.#spare
        this.#spare = null
        input = await rowsToArrays(newData, info.features, names, run.strict, spare)
      }
      else if (typed) input = typedInput(newData, run.strict, run.native.minSamples)
      else throw v.typeError('newData', 'an array of {features, quality} or {X, y, features}', newData)
      const user = run.onProgress
      // A throwing progress callback must not become an uncaught exception in the host.
      const progress = user ? (info) => { try { user(info) } catch {} } : undefined
      const train = (input) => {
        const total = input.y.length + input.skipped.count
        if (input.y.length < run.native.minSamples || input.y.length === 0) {
          const why = input.skipped.count > 0 ? `; ${input.skipped.count} skipped (${skippedSummary(input.skipped)}), first: ${input.skipped.first[0].message}` : ''
          throw new RangeError(`newData has ${input.y.length} usable rows of ${total}, fewer than minSamples (${run.native.minSamples})${why}`)
        }
        return this.#core.fineTune(base, input.X, input.y, input.d, run.native, progress).then(JSON.parse)
      }
      let result
      try {
        result = await train(input)
      } catch (e) {
        if (info === null && /^base model: /.test(e && e.message)) this.#missingBase(base)
        if (!input.unscanned || !NON_FINITE.test(e && e.message)) throw e
        input = dropNonFinite(input.X, input.y, input.d)
        result = await train(input)
      }
      result.samples.total = input.y.length + input.skipped.count
      result.skipped = input.skipped
      // Rust let go of the arrays when the run resolved; the result holds none of them.
      if (input.buffers && input.buffers.X.length <= SPARE_VALUES) this.#spare = input.buffers
      await this.#report(base, result, run.native)
      return result
    } catch (e) {
      const error = redact(e && e.message ? e.message : String(e))
      this.#runs.failed++
      this.#log.warn('fine-tune failed', { baseModel: typeof baseModelPath === 'string' ? baseModelPath : DEFAULT_BASE_MODEL, error })
      return { success: false, error }
    }
  }

  /** `{family, features, featureNames}` of the base model file. */
  async #baseInfo(base) {
    try {
      return await this.#core.modelInfo(base)
    } catch (e) {
      this.#missingBase(base)
      throw e
    }
  }

  /** Throws the error that names the models folder when the base file does not exist. */
  #missingBase(base) {
    if (!fs.existsSync(base)) {
      throw new Error(`base model: cannot read ${base}: no such file (models folder ${this.modelsDir}, ${this.#modelsDirFrom})`)
    }
  }

  /** Counts, logs and (when configured) tracks a finished run in MLflow; never throws. */
  async #report(base, result, params) {
    const outcome = result.reason === 'no change' ? 'noChange' : result.accepted ? 'accepted' : 'rejected'
    this.#runs[outcome]++
    if (result.promoted) this.#promotions++
    this.#duration.observe(result.durationMs)
    this.#improvement.observe(result.improvement)
    const fields = {
      baseModel: path.basename(base),
      version: result.version ?? null,
      family: result.family ?? null,
      accepted: result.accepted,
      reason: result.reason ?? null,
      improvement: result.improvement,
      mse: result.metrics && result.metrics.mse,
      baseMse: result.baseMetrics && result.baseMetrics.mse,
      durationMs: result.durationMs,
      skipped: result.skipped ? result.skipped.count : 0,
    }
    if (result.accepted) this.#log.info('fine-tune accepted', fields)
    else this.#log.warn('fine-tune not accepted', fields)
    if (!this.#mlflow) return
    try {
      const { onProgress, ...loggable } = params
      void onProgress
      result.mlflow = await this.#mlflow.logFineTune({ baseModel: base, result, params: loggable, modelFile: result.modelPath || null })
      if (result.promoted && result.version) await this.#mlflow.setProduction(base, result.version)
    } catch (e) {
      this.#mlflowFailures++
      const w = mlflowWarning(e)
      result.warnings = [...(result.warnings || []), w]
      this.#log.warn('MLflow tracking failed; the fine-tune result stands', { error: w })
    }
  }

  /** Points MLflow's `production` alias at `version`; failures are warnings, never errors. */
  async #mlflowProduction(base, version) {
    if (!this.#mlflow || !version) return undefined
    try {
      await this.#mlflow.setProduction(base, version)
      return undefined
    } catch (e) {
      this.#mlflowFailures++
      const w = mlflowWarning(e)
      this.#log.warn('MLflow alias update failed', { error: w })
      return w
    }
  }

  /** Prometheus text exposition of this instance's fine-tune runs (see README, Monitoring). */
  metrics() {
    return metrics.render(this.#collect())
  }

  /** Adds this instance's metrics to a prom-client registry: `ft.registerMetrics(promClient.register)`. */
  registerMetrics(register, labels) {
    metrics.registerMetrics(register, this, () => this.#collect(), labels)
  }

  #collect() {
    const f = new metrics.Families()
    for (const [result, n] of Object.entries(this.#runs)) {
      f.counter('mlops_finetune_runs_total', 'Fine-tune runs by outcome.', n, { result: result === 'noChange' ? 'no_change' : result })
    }
    f.histogram('mlops_finetune_duration_milliseconds', 'Wall time of fine-tune runs (training, validation, writing).', this.#duration)
    f.histogram('mlops_finetune_improvement_ratio', 'Relative MSE improvement over the base on the held-out test rows.', this.#improvement)
    f.counter('mlops_finetune_promotions_total', 'Versions promoted to production.', this.#promotions)
    f.counter('mlops_finetune_rollbacks_total', 'Rollbacks of the production pointer.', this.#rollbacks)
    f.counter('mlops_finetune_mlflow_failures_total', 'MLflow calls that failed (runs kept, warnings attached).', this.#mlflowFailures)
    return f
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
    // Envelopes (tree families) and the services' nested shapes are checked in Rust.
    if (v.prop(model, 'format', 'model.format') === undefined && v.prop(model, 'weights', 'model.weights') !== undefined) {
      v.finiteArray(v.prop(model, 'weights', 'model.weights'), 'model.weights', { allowEmpty: false })
      v.finite(v.prop(model, 'bias', 'model.bias'), 'model.bias')
    }
    if (typeof version !== 'string' && typeof version !== 'number') throw v.typeError('version', 'a string', version)
    let plain
    try {
      plain = JSON.parse(JSON.stringify(model))
    } catch (e) {
      throw new TypeError(`model is not plain JSON data: ${e.message}`)
    }
    // A body Rust refuses as a model (checked there for every family) is the caller's input.
    return this.#core.saveModel(plain, this.resolveModelPath(baseModelPath), String(version)).catch((e) => {
      throw /^model: /.test(e.message) ? new TypeError(e.message) : e
    })
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
    const base = this.resolveModelPath(baseModelPath)
    const entry = toHistoryEntry(await this.#core.promote(base, n))
    this.#promotions++
    this.#log.info('version promoted to production', { baseModel: path.basename(base), version: entry.version })
    const w = await this.#mlflowProduction(base, entry.version)
    if (w) entry.warnings = [w]
    return entry
  }

  /** Moves production back to the previously promoted version; resolves its entry or null. */
  async rollback(baseModelPath) {
    const base = this.resolveModelPath(baseModelPath)
    await this.#core.rollback(base)
    this.#rollbacks++
    const now = await this.getProductionVersion(base)
    this.#log.info('production rolled back', { baseModel: path.basename(base), version: now ? now.version : null })
    if (now) await this.#mlflowProduction(base, now.version)
    return now
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
    let maxAbs = 0
    for (let i = 0; i < actual.length; i++) {
      res += (pred[i] - actual[i]) ** 2
      tot += (actual[i] - mean) ** 2
      maxAbs = Math.max(maxAbs, Math.abs(actual[i]))
    }
    // A constant target has no variance to explain: R² is 1 for an exact fit (up to
    // rounding relative to the target's size), 0 otherwise (scikit-learn's definition).
    const tiny = actual.length * (1e-12 * Math.max(maxAbs, 1e-300)) ** 2
    if (tot > tiny) return 1 - res / tot
    return res <= Math.max(tiny, Number.MIN_VALUE) ? 1 : 0
  }

  evaluateModel(model, X, y) {
    const pred = this.predictBatch(model, X)
    return { mse: this.calculateMSE(pred, y), mae: this.calculateMAE(pred, y), r2: this.calculateR2(pred, y) }
  }
}

/**
 * `{weights, bias}` of a linear model object in any of its shapes: flat, the services'
 * nested `{model: {weights, bias}}` or exported `{model: {coefficients, intercept}}`.
 */
function checkModel(model) {
  if (model === null || typeof model !== 'object') throw v.typeError('model', 'an object with weights and bias', model)
  const inner = v.prop(model, 'weights', 'model.weights') === undefined ? v.prop(model, 'model', 'model.model') : undefined
  if (inner !== null && typeof inner === 'object') {
    const coef = v.prop(inner, 'coefficients', 'model.model.coefficients') !== undefined
    const [wk, bk] = coef ? ['coefficients', 'intercept'] : ['weights', 'bias']
    return {
      weights: v.finiteArray(v.prop(inner, wk, `model.model.${wk}`), `model.model.${wk}`),
      bias: v.finite(v.prop(inner, bk, `model.model.${bk}`), `model.model.${bk}`),
    }
  }
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
    // Versions registered before families existed were all linear.
    family: e.family ?? 'linear',
    hyperparameters: e.hyperparameters ?? null,
  }
}

// Model: a thin JS face over the native class (src/js/finetune.rs). napi's own argument
// conversion fails with a plain Error ("Failed to convert JavaScript value …"), and the
// native statics cannot be redefined, so this wrapper checks arguments first and names the
// field in a TypeError, as everywhere else in the package. predict skips it: its native
// fast path throws the TypeError itself.
function wrapNative(fn, field, expected) {
  try {
    return fn()
  } catch (e) {
    if (e instanceof TypeError || e instanceof RangeError) throw e
    if (e && /Failed to convert|expect|none of these types/i.test(String(e.message))) throw new TypeError(`${field} must be ${expected}`)
    throw e
  }
}

// A bare Node-API function for the hot path (napi-rs's method glue costs more than the
// walk of 200 trees); it throws the TypeError/RangeError itself.
const nativePredict = native.Model._predictFn()

class Model {
  #m
  constructor(nativeModel) {
    if (!(nativeModel instanceof native.Model)) throw new TypeError('use Model.load(path) or Model.fromJSON(json)')
    this.#m = nativeModel
  }

  /** Loads a model file of any family off the JS thread. */
  static async load(path) {
    if (typeof path !== 'string') throw v.typeError('path', 'a string', path)
    return new Model(await native.Model.load(path))
  }

  /** A model from the parsed content of a model file. */
  static fromJSON(json) {
    if (json === null || typeof json !== 'object' || Array.isArray(json)) throw v.typeError('json', 'a model object', json)
    let plain
    try {
      plain = JSON.parse(JSON.stringify(json))
    } catch (e) {
      throw new TypeError(`json is not plain JSON data: ${e.message}`)
    }
    return new Model(wrapNative(() => native.Model.fromJSON(plain), 'json', 'a model object'))
  }

  get family() {
    return this.#m.family
  }

  get features() {
    return this.#m.features
  }

  predict(features) {
    return nativePredict(this.#m, features)
  }

  predictBatch(x, rows) {
    if (!(x instanceof Float64Array)) throw v.typeError('x', 'a Float64Array', x)
    if (!Number.isInteger(rows) || rows < 0 || rows > 4294967295) throw v.typeError('rows', 'a non-negative integer', rows)
    return this.#m.predictBatch(x, rows)
  }

  toJSON() {
    return this.#m.toJSON()
  }
}

let singleton = null
function getModelFineTuning() {
  if (singleton === null) singleton = new ModelFineTuning()
  return singleton
}

module.exports = { ModelFineTuning, getModelFineTuning, Model, DEFAULT_BASE_MODEL, DEFAULT_CONFIG }
