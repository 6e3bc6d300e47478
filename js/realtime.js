'use strict'
// RealTimeModelUpdates: the old lib/mlops/realTimeModelUpdates.js surface over the Rust
// streaming worker (src/core/stream.rs). On the JS thread this layer only validates,
// packs features into a buffer Rust registered once, and enqueues (one crossing). The
// worker logs, learns, validates and swaps; it answers through one unref'd threadsafe
// function: "durable up to seq N" (resolving every addFeedback Promise ≤ N at once),
// request replies, and events. A keep-alive timer is ref'd only while Promises are
// pending, so a script that never calls cleanup() still exits by itself.

const path = require('node:path')
const native = require('../index.js')
const v = require('./validate.js')
const { makeLog } = require('./log.js')
const metrics = require('./metrics.js')
const { defaultModelsDir } = require('./paths.js')
const { redact } = require('./redact.js')

const MAX_FEATURES = 4096
const EVENTS = ['update', 'rejected', 'drift', 'error', 'leader', 'forwarded']
/** Buckets of |actual − prediction| and of an update's relative MSE improvement. */
const ERROR_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 100]
const IMPROVEMENT_BUCKETS = [-0.5, -0.1, -0.05, 0, 0.01, 0.05, 0.1, 0.25, 0.5, 1]
const REQ = { update: 0, force: 1, hotSwap: 2, rollback: 3, timerOn: 4, timerOff: 5, flush: 6, shutdown: 7 }
const DEFAULT_MODEL = 'quality-predictor-v3-advanced.json'

const OPTIONS = {
  bufferSize: { min: 1, max: 10_000_000, integer: true },
  updateIntervalMs: { min: 1, max: 2_147_483_647 },
  minSamplesForUpdate: { min: 0, max: 10_000_000, integer: true },
  maxSamplesPerUpdate: { min: 2, max: 10_000_000, integer: true },
  updateThreshold: { min: -1e9 },
  queueCapacity: { min: 1, max: 100_000_000, integer: true },
  maxLogBytes: { min: 1024 },
  keepLogFiles: { min: 1, max: 1_000_000, integer: true },
  fsyncIntervalMs: { min: 1, max: 3_600_000 },
  learningRate: { min: 0, minExclusive: true },
  leaseMs: { min: 100, max: 3_600_000 },
  pollMs: { min: 1, max: 60_000 },
  connectTimeoutMs: { min: 1, max: 600_000 },
  statementTimeoutMs: { min: 0, max: 3_600_000 },
  runtimeThreads: { min: 1, max: 256, integer: true },
  refitEvery: { min: 0, max: 1_000_000_000, integer: true },
  refitIntervalMs: { min: 0, max: 2_147_483_647 },
  refitWindow: { min: 50, max: 10_000_000, integer: true },
}

class RealTimeModelUpdates {
  #core
  #io = new Float64Array(MAX_FEATURES)
  #started = false
  #closed = false
  #ready = null
  #readyResolve = null
  // addFeedback Promises waiting for their sequence number to be durable, in seq order.
  #acks = []
  #ackHead = 0
  #replies = new Map()
  #nextId = 1
  #listeners = Object.fromEntries(EVENTS.map((e) => [e, []]))
  #keepAlive = null
  #rejected = { missing: 0, invalid: 0, closed: 0, queueFull: 0 }
  #logEnabled
  #lastDurable = 0
  #packed = [0, 0]
  #waitingReady = false
  #lastError = null
  #startFailed = false
  #featureNames = null
  #log
  #servedError = new metrics.Histogram(ERROR_BUCKETS)
  #improvement = new metrics.Histogram(IMPROVEMENT_BUCKETS)
  // The serving model's feature names, cached per served version.
  #namesVersion = -1
  #names = null

  constructor(options) {
    const raw = v.optionalObject(options, 'options') ?? {}
    this.#log = makeLog(v.prop(raw, 'logger', 'options.logger'), 'mlops-native/RealTimeModelUpdates')
    // One read of every option, so a throwing getter is a TypeError naming it.
    const o = {}
    for (const k of [...Object.keys(OPTIONS), 'modelsDir', 'modelPath', 'feedbackLogDir', 'enableHotSwap', 'followRegistry', 'featureNames', 'store', 'schema', 'train']) o[k] = v.prop(raw, k, `options.${k}`)
    const n = v.numericOptions(o, OPTIONS)
    this.modelsDir = path.resolve(v.optionalString(o.modelsDir, 'options.modelsDir', '') || defaultModelsDir())
    this.modelPath = v.optionalString(o.modelPath, 'options.modelPath', DEFAULT_MODEL)
    if (this.modelPath === '') throw new RangeError('options.modelPath must not be empty')
    if (o.featureNames !== undefined && o.featureNames !== null) {
      if (!Array.isArray(o.featureNames)) throw v.typeError('options.featureNames', 'an array of strings', o.featureNames)
      this.#featureNames = o.featureNames.map((x, i) => {
        if (typeof x !== 'string' || x === '') throw v.typeError(`options.featureNames[${i}]`, 'a non-empty string', x)
        return x
      })
      if (new Set(this.#featureNames).size !== this.#featureNames.length) throw new RangeError('options.featureNames must not repeat a name')
    }
    let logDir = o.feedbackLogDir
    if (logDir === undefined || logDir === null) logDir = path.join(this.modelsDir, 'feedback-log')
    else if (logDir === false) logDir = null
    else if (typeof logDir !== 'string' || logDir === '') throw v.typeError('options.feedbackLogDir', 'a path or false', logDir)
    this.config = {
      bufferSize: n.bufferSize ?? 100,
      updateIntervalMs: n.updateIntervalMs ?? 60_000,
      minSamplesForUpdate: n.minSamplesForUpdate ?? 50,
      maxSamplesPerUpdate: n.maxSamplesPerUpdate ?? 500,
      updateThreshold: n.updateThreshold ?? 0.05,
      enableHotSwap: v.optionalBoolean(o.enableHotSwap, 'options.enableHotSwap', true),
      queueCapacity: n.queueCapacity ?? 10_000,
      feedbackLogDir: logDir === null ? null : path.resolve(logDir),
      maxLogBytes: n.maxLogBytes ?? 16 * 1024 * 1024,
      keepLogFiles: n.keepLogFiles ?? 8,
      fsyncIntervalMs: n.fsyncIntervalMs ?? 100,
      learningRate: n.learningRate ?? 0.1,
      // Tree families only (a linear model is its own online learner and is never refit).
      refitEvery: n.refitEvery ?? 5000,
      refitIntervalMs: n.refitIntervalMs ?? 600_000,
      refitWindow: n.refitWindow ?? 10_000,
      followRegistry: v.optionalBoolean(o.followRegistry, 'options.followRegistry', true),
      // Old defaults, kept for callers that read them.
      learningRateIncremental: 0.0005,
      epochs: 5,
      batchSize: 32,
    }
    // PostgreSQL (`store`, else MLOPS_DATABASE_URL; `store: false` keeps local files).
    let store = o.store
    if (store === undefined || store === null) store = process.env.MLOPS_DATABASE_URL || null
    else if (store === false) store = null
    else if (typeof store !== 'string') throw v.typeError('options.store', 'a postgres:// connection string or false', store)
    else if (store === '') throw new RangeError('options.store must not be empty')
    const pg = store === null ? null : {
      schema: v.optionalString(o.schema, 'options.schema', 'mlops'),
      connectTimeoutMs: n.connectTimeoutMs ?? 5000,
      statementTimeoutMs: n.statementTimeoutMs ?? 10_000,
    }
    Object.assign(this.config, {
      store: store === null ? null : redact(store),
      ...(pg ? { ...pg, leaseMs: n.leaseMs ?? 5000, pollMs: n.pollMs ?? 100, train: v.optionalBoolean(o.train, 'options.train', true) } : {}),
    })
    this.#logEnabled = this.config.feedbackLogDir !== null || store !== null
    const c = this.config
    this.#core = new native.RealTimeModelUpdatesCore({
      bufferSize: c.bufferSize,
      updateIntervalMs: c.updateIntervalMs,
      minSamplesForUpdate: c.minSamplesForUpdate,
      maxSamplesPerUpdate: c.maxSamplesPerUpdate,
      updateThreshold: c.updateThreshold,
      enableHotSwap: c.enableHotSwap,
      queueCapacity: c.queueCapacity,
      modelPath: this.#resolve(this.modelPath),
      fineTunedDir: c.followRegistry && !pg ? path.join(this.modelsDir, 'fine-tuned') : undefined,
      stateDir: path.join(this.modelsDir, 'online'),
      // On PostgreSQL the log folder holds only the spool (used while the database is down).
      feedbackLogDir: pg ? undefined : (c.feedbackLogDir ?? undefined),
      maxLogBytes: c.maxLogBytes,
      keepLogFiles: c.keepLogFiles,
      fsyncIntervalMs: c.fsyncIntervalMs,
      learningRate: c.learningRate,
      refitEvery: c.refitEvery,
      refitIntervalMs: c.refitIntervalMs,
      refitWindow: c.refitWindow,
      timerEnabled: true,
      runtimeThreads: n.runtimeThreads ?? undefined,
      ...(pg
        ? {
            storeUrl: store,
            pg: { schema: pg.schema, connectTimeoutMs: pg.connectTimeoutMs, statementTimeoutMs: pg.statementTimeoutMs },
            leaseMs: c.leaseMs,
            pollMs: c.pollMs,
            train: c.train,
            spoolDir: c.feedbackLogDir ?? path.join(this.modelsDir, 'feedback-log'),
            cacheDir: path.join(this.modelsDir, 'fine-tuned'),
          }
        : {}),
    })
    // The runtime is one per process, built on first use: the first setting wins.
    this.config.runtimeThreads = this.#core._runtimeThreads()
  }

  #resolve(p) {
    return path.isAbsolute(p) ? p : path.resolve(this.modelsDir, p)
  }

  /** Starts the worker on first use. After a refused start only initialize() tries again. */
  #start(retry = false) {
    if (this.#started) return true
    if (this.#closed) return false
    if (this.#startFailed && !retry) return false
    this.#ready = new Promise((resolve) => (this.#readyResolve = resolve))
    try {
      this.#core._start((notice) => this.#onNotice(notice), this.#io)
    } catch (e) {
      // Typically: another instance owns the feedback log folder. Nothing started, nothing
      // written; a later initialize() may try again.
      this.#lastError = e.message
      this.#startFailed = true
      this.#readyResolve(false)
      this.#emit('error', { message: e.message })
      return false
    }
    this.#lastError = null
    this.#startFailed = false
    // Tickets (what acknowledgements refer to) count from 1 in every stream.
    this.#lastDurable = 0
    this.#namesVersion = -1
    this.#started = true
    this.#waitingReady = true
    this.#holdAlive()
    return true
  }

  #holdAlive() {
    const pending = this.#acks.length - this.#ackHead + this.#replies.size + (this.#waitingReady ? 1 : 0)
    if (pending > 0) {
      if (this.#keepAlive === null) this.#keepAlive = setInterval(() => {}, 1 << 30)
      else this.#keepAlive.ref()
    } else if (this.#keepAlive !== null) {
      this.#keepAlive.unref()
    }
  }

  #settleAcks(upTo, value) {
    const acks = this.#acks
    while (this.#ackHead < acks.length && acks[this.#ackHead].seq <= upTo) {
      acks[this.#ackHead].resolve(value)
      acks[this.#ackHead++] = null
    }
    if (this.#ackHead > 1024 && this.#ackHead * 2 > acks.length) {
      this.#acks = acks.slice(this.#ackHead)
      this.#ackHead = 0
    }
  }

  #onNotice({ kind, id, payload }) {
    switch (kind) {
      case 'durable':
        this.#lastDurable = Math.max(this.#lastDurable, id)
        this.#settleAcks(id, true)
        break
      case 'durable-failed':
        this.#settleAcks(id, false)
        break
      case 'reply': {
        const r = this.#replies.get(id)
        if (r) {
          this.#replies.delete(id)
          r(payload === null || payload === undefined ? null : JSON.parse(payload))
        }
        break
      }
      case 'ready': {
        // true only when a model serves and the log (if any) can be written.
        const r = payload ? JSON.parse(payload) : {}
        this.#waitingReady = false
        if (r.postgres === false) {
          // The database it was told to use did not answer: nothing ran. What was queued
          // meanwhile is refused, and a later initialize() tries again.
          this.#started = false
          this.#startFailed = true
          this.#lastError = r.lastError ?? this.#lastError
          this.#settleAcks(Number.MAX_SAFE_INTEGER, false)
          for (const reply of this.#replies.values()) reply(null)
          this.#replies.clear()
          this.#readyResolve(false)
          break
        }
        this.#readyResolve(r.serving !== false && r.logHealthy !== false)
        break
      }
      case 'fatal': {
        // The worker stopped on an internal bug: settle everything, refuse what follows.
        this.#closed = true
        this.#waitingReady = false
        this.#readyResolve(false)
        this.#settleAcks(this.#lastDurable, true)
        this.#settleAcks(Number.MAX_SAFE_INTEGER, false)
        for (const r of this.#replies.values()) r(null)
        this.#replies.clear()
        this.#emit('error', payload ? JSON.parse(payload) : null)
        break
      }
      default:
        this.#emit(kind, payload ? JSON.parse(payload) : null)
    }
    this.#holdAlive()
  }

  #emit(kind, data) {
    this.#note(kind, data)
    for (const cb of this.#listeners[kind] ?? []) {
      try {
        cb(data)
      } catch {
        // A listener's bug must not become an uncaught exception in the host.
      }
    }
  }

  /** What the old modules logged (swaps, rejected updates, failures), and the histograms. */
  #note(kind, d) {
    const o = d && typeof d === 'object' ? d : {}
    if (kind === 'update' || kind === 'rejected') this.#improvement.observe(o.improvement)
    if (!this.#log.enabled) return
    const fields = { modelPath: o.modelPath, version: o.modelVersion ?? o.version, family: o.family, improvement: o.improvement, currentMse: o.currentMse, candidateMse: o.candidateMse, samples: o.samples, reason: o.reason }
    for (const k of Object.keys(fields)) if (fields[k] === undefined) delete fields[k]
    if (kind === 'update') this.#log.info('model updated and hot-swapped', fields)
    else if (kind === 'rejected') this.#log.info('update rejected; the current model keeps serving', fields)
    else if (kind === 'drift') this.#log.warn('drift detected; running an update cycle', { seq: o.seq, ...fields })
    else if (kind === 'error') this.#log.error(o.message || 'error', { error: o.message })
  }

  /** Prometheus text exposition of this stream (see README, Monitoring). */
  metrics() {
    return metrics.render(this.#collect())
  }

  /** Adds this stream's metrics to a prom-client registry: `rt.registerMetrics(promClient.register)`. */
  registerMetrics(register, labels) {
    metrics.registerMetrics(register, this, () => this.#collect(), labels)
  }

  #collect() {
    const s = this.getStatistics()
    const f = new metrics.Families({ model: path.basename(s.currentModelPath || this.modelPath) })
    f.counter('mlops_feedback_received_total', 'Feedback events offered to addFeedback/addFeedbackSync/addFeedbackBatch.', s.received)
    f.counter('mlops_feedback_accepted_total', 'Feedback events accepted into the stream.', s.accepted)
    for (const reason of ['missing', 'invalid', 'closed']) f.counter('mlops_feedback_rejected_total', 'Feedback events refused, by reason.', s.rejected[reason] ?? 0, { reason })
    f.counter('mlops_feedback_dropped_total', 'Feedback events refused because the queue was full.', s.dropped)
    f.counter('mlops_feedback_processed_total', 'Feedback events consumed by update cycles.', s.processed)
    f.counter('mlops_feedback_replayed_total', 'Logged feedback replayed into the buffer at start.', s.replayed)
    f.gauge('mlops_feedback_queue_depth', 'Events queued for the worker.', s.queueDepth)
    f.gauge('mlops_feedback_buffer_size', 'Events buffered for the next update cycle.', s.bufferSize)
    f.gauge('mlops_feedback_buffer_capacity', 'Buffer size that triggers an update cycle.', s.bufferCapacity)
    f.gauge('mlops_feedback_log_healthy', '1 while the feedback log can be written.', s.logHealthy === false ? 0 : 1)
    f.counter('mlops_feedback_log_corrupt_records_total', 'Damaged log records skipped on replay.', s.corruptLogRecords ?? 0)
    f.counter('mlops_update_cycles_total', 'Update cycles, by outcome.', s.updatesAccepted ?? s.updateCount, { result: 'accepted' })
    f.counter('mlops_update_cycles_total', 'Update cycles, by outcome.', s.updatesRejected ?? 0, { result: 'rejected' })
    f.counter('mlops_model_swaps_total', 'Models hot-swapped in (updates and hotSwapModel).', s.swaps)
    f.counter('mlops_model_rollbacks_total', 'Rollbacks to the previous model.', s.rollbacks)
    f.counter('mlops_drift_alarms_total', 'Drift alarms raised by the detector.', s.drifts)
    f.gauge('mlops_model_version', 'Version number of the model serving now.', s.modelVersion)
    f.histogram('mlops_served_error_absolute', 'Absolute error of served predictions, |actual − prediction|, as fed back.', this.#servedError)
    f.histogram('mlops_update_improvement_ratio', 'Relative MSE improvement of update candidates on held-out feedback.', this.#improvement)
    return f
  }

  #request(kind, arg) {
    if (!this.#start()) return Promise.resolve(null)
    const id = this.#nextId++
    return new Promise((resolve) => {
      if (!this.#core._request(kind, id, arg)) return resolve(null)
      this.#replies.set(id, resolve)
      this.#holdAlive()
    })
  }

  /**
   * Starts the worker (loads the model, replays the log). Idempotent. Resolves true when a
   * model serves and the feedback log can be written; false otherwise (another instance
   * owns the log folder, no readable model, unwritable log — lastError says which).
   * After cleanup() it starts a fresh stream on the same log (replaying what is unprocessed).
   */
  initialize() {
    if (this.#closed && this.#started) {
      this.#closed = false
      this.#started = false
    }
    if (!this.#start(true)) return Promise.resolve(false)
    return this.#ready
  }

  /** The serving model's feature names (its file's featureNames), else the featureNames option. */
  #currentNames() {
    if (this.#started) {
      const [version] = this.#core._modelInfo()
      if (version !== this.#namesVersion) {
        this.#namesVersion = version
        this.#names = this.#core._featureNames()
      }
      if (this.#names) return this.#names
    }
    return this.#featureNames
  }

  /** Named features → the io buffer, in the serving model's order; missing names are 0. */
  #packNamed(obj, field) {
    const names = this.#currentNames()
    if (!names) throw new TypeError(`${field} is an object of named features, but the serving model has no featureNames and no featureNames option was given`)
    if (names.length > MAX_FEATURES) throw new RangeError(`${field}: the serving model has ${names.length} features, at most ${MAX_FEATURES} are supported`)
    const index = new Map(names.map((n, i) => [n, i]))
    const io = this.#io
    io.fill(0, 0, names.length)
    for (const k of Object.keys(obj)) {
      const i = index.get(k)
      if (i === undefined) throw new RangeError(`${field}.${k} is not a feature of the serving model (known: ${names.slice(0, 20).join(', ')}${names.length > 20 ? ', …' : ''})`)
      io[i] = v.finite(v.prop(obj, k, `${field}.${k}`), `${field}.${k}`)
    }
    return names.length
  }

  /** Validates and packs one feedback; returns the feature count, or a reason string. */
  #pack(fb) {
    if (fb === null || typeof fb !== 'object') throw v.typeError('feedback', 'an object', fb)
    const prediction = v.prop(fb, 'prediction', 'feedback.prediction')
    const actual = v.prop(fb, 'actual', 'feedback.actual')
    let features = v.prop(fb, 'features', 'feedback.features')
    let field = 'feedback.features'
    if (features === undefined || features === null) {
      // The services put named features in the context.
      const ctx = v.prop(fb, 'context', 'feedback.context')
      if (ctx !== null && typeof ctx === 'object') {
        features = v.prop(ctx, 'features', 'feedback.context.features')
        field = 'feedback.context.features'
      }
    }
    if (prediction === undefined || prediction === null || actual === undefined || actual === null) return 'missing'
    this.#packed[0] = v.predictionValue(prediction, 'feedback.prediction')
    this.#packed[1] = v.finite(actual, 'feedback.actual')
    return this.#packFeatures(features, field)
  }

  #packFeatures(features, field) {
    if (features === undefined || features === null) return 0
    const isTyped = features instanceof Float64Array
    if (!Array.isArray(features) && !isTyped) {
      if (typeof features === 'object' && !ArrayBuffer.isView(features)) return this.#packNamed(features, field)
      throw v.typeError(field, 'an array of numbers or an object of named numbers', features)
    }
    const n = features.length
    if (n > MAX_FEATURES) throw new RangeError(`${field} must have at most ${MAX_FEATURES} values, got ${n}`)
    const io = this.#io
    for (let i = 0; i < n; i++) {
      const x = isTyped ? features[i] : v.prop(features, i, `${field}[${i}]`)
      io[i] = typeof x === 'number' && Number.isFinite(x) ? x : v.finite(x, `${field}[${i}]`)
    }
    return n
  }

  #enqueue(fb) {
    const n = this.#pack(fb)
    if (n === 'missing') {
      this.#rejected.missing++
      return -3
    }
    if (!this.#start()) {
      this.#rejected.closed++
      return -2
    }
    const seq = this.#core._push(n, this.#packed[0], this.#packed[1])
    if (seq === -1) this.#rejected.queueFull++
    // The served prediction's error as the caller reports it: the distribution a dashboard
    // watches for "is the model getting worse".
    else if (seq >= 0) this.#servedError.observe(Math.abs(this.#packed[1] - this.#packed[0]))
    return seq
  }

  /**
   * Fast path: true once queued (what is still queued when the process is killed is lost).
   * false when prediction or actual is missing, the queue is full, or after cleanup().
   * Wrong types and non-finite numbers throw TypeError/RangeError naming the field.
   */
  addFeedbackSync(feedback) {
    try {
      return this.#enqueue(feedback) > 0
    } catch (e) {
      this.#rejected.invalid++
      throw e
    }
  }

  /**
   * Durable path: resolves true once the event is in the feedback log (it then survives
   * the process being killed); false for missing or invalid fields, a full queue, or
   * after cleanup(). Never rejects.
   */
  addFeedback(feedback) {
    let seq
    try {
      seq = this.#enqueue(feedback)
    } catch {
      this.#rejected.invalid++
      return Promise.resolve(false)
    }
    if (seq <= 0) return Promise.resolve(false)
    if (!this.#logEnabled || seq <= this.#lastDurable) return Promise.resolve(true)
    return new Promise((resolve) => {
      this.#acks.push({ seq, resolve })
      this.#holdAlive()
    })
  }

  /**
   * Bulk producers: row-major `features` (events × d), one prediction and one actual per
   * event. Returns how many events were queued (all or none).
   */
  addFeedbackBatch(features, predictions, actuals) {
    v.float64Array(features, 'features')
    v.float64Array(predictions, 'predictions')
    v.float64Array(actuals, 'actuals')
    // Lengths and finiteness are checked in Rust (a scan there is several times cheaper).
    if (!this.#start()) return 0
    const r = this.#core._pushBatch(features, predictions, actuals)
    if (r === -1) this.#rejected.queueFull += actuals.length
    return r > 0 ? actuals.length : 0
  }

  /** Runs an update cycle on what is buffered (if ≥ minSamplesForUpdate); resolves its report or null. */
  processBuffer() {
    return this.#request(REQ.update)
  }

  /** Runs an update cycle on whatever is buffered; resolves its report or null. */
  forceUpdate() {
    return this.#request(REQ.force)
  }

  /**
   * Compat: whether an update result improves enough (relative MSE ≥ updateThreshold).
   * Takes a cycle report ({improvement} or {currentMse, candidateMse}) or a fine-tune
   * result ({metrics, baseMetrics}).
   */
  validateImprovement(result) {
    try {
      return Promise.resolve(this.#improves(result))
    } catch {
      return Promise.resolve(false)
    }
  }

  #improves(result) {
    const t = this.config.updateThreshold
    if (result === null || typeof result !== 'object') return false
    const num = (x) => typeof x === 'number' && Number.isFinite(x)
    let imp
    if (num(result.improvement)) imp = result.improvement
    else if (num(result.currentMse) && num(result.candidateMse) && result.currentMse > 0) imp = (result.currentMse - result.candidateMse) / result.currentMse
    else if (result.metrics && result.baseMetrics && num(Number(result.metrics.mse)) && Number(result.baseMetrics.mse) > 0) {
      imp = (Number(result.baseMetrics.mse) - Number(result.metrics.mse)) / Number(result.baseMetrics.mse)
    }
    return imp !== undefined && imp >= t
  }

  /**
   * Loads `modelPath` (relative to modelsDir), checks it (finite weights, same feature
   * count) and swaps it in atomically. Resolves false and keeps serving the old model
   * otherwise (the reason is in getStatistics().lastError).
   */
  async hotSwapModel(modelPath) {
    if (typeof modelPath !== 'string' || modelPath === '') return false
    const r = await this.#request(REQ.hotSwap, this.#resolve(modelPath))
    return Boolean(r && r.swapped)
  }

  /** Serves the model before the last swap again. Resolves false when there is none. */
  async rollback() {
    return (await this.#request(REQ.rollback)) === true
  }

  getCurrentModelPath() {
    if (!this.#started) return this.modelPath
    const s = this.#core._stats()
    return s && s.currentModelPath ? s.currentModelPath : this.modelPath
  }

  /**
   * What serves now: `{family, modelPath, modelVersion, features, featureNames}` (family
   * and features are null before initialize() has loaded a model).
   */
  getModelInfo() {
    if (!this.#started || this.#closed) {
      return { family: null, modelPath: this.getCurrentModelPath(), modelVersion: 0, features: null, featureNames: this.#featureNames }
    }
    const s = this.#core._stats()
    const [version, d] = this.#core._modelInfo()
    return {
      family: d > 0 ? s.family : null,
      modelPath: s.currentModelPath || this.modelPath,
      modelVersion: version,
      features: d > 0 ? d : null,
      featureNames: this.#currentNames(),
    }
  }

  /** Prediction of the model serving now (never waits for training). */
  predictSync(features) {
    if (this.#closed) throw new Error('RealTimeModelUpdates is cleaned up')
    if (!this.#start()) throw new Error(`RealTimeModelUpdates did not start: ${this.#lastError}`)
    const n = this.#packFeatures(features, 'features')
    const y = this.#core._predict(n)
    if (Number.isNaN(y)) {
      const [, d] = this.#core._modelInfo()
      if (d === 0) throw new Error('no model is serving yet (initialize() has not finished, or no model file and no feedback)')
      throw new RangeError(`features has ${n} values, the serving model has ${d}`)
    }
    return y
  }

  predict(features) {
    try {
      return Promise.resolve(this.predictSync(features))
    } catch (e) {
      return Promise.reject(e)
    }
  }

  startUpdateTimer() {
    if (this.#start()) this.#core._request(REQ.timerOn, 0, undefined)
  }

  stopUpdateTimer() {
    if (this.#started && !this.#closed) this.#core._request(REQ.timerOff, 0, undefined)
  }

  /** Makes everything logged durable (fsync) now; resolves false while the log cannot be written. */
  flush() {
    return this.#request(REQ.flush).then((r) => r === true)
  }

  /**
   * Drains the queue (everything in it is logged), fsyncs, saves the learner and stops
   * the worker. Later calls: addFeedback → false, others → a clear error or false.
   */
  async cleanup() {
    if (this.#closed) return true
    if (!this.#started) {
      this.#closed = true
      return true
    }
    await this.#ready
    const done = this.#request(REQ.shutdown)
    this.#closed = true
    await done
    const s = this.#core._stats()
    this.#settleAcks(s ? s.durableTicket : 0, true)
    this.#settleAcks(Number.MAX_SAFE_INTEGER, false)
    for (const r of this.#replies.values()) r(null)
    this.#replies.clear()
    this.#holdAlive()
    return true
  }

  on(event, listener) {
    if (!EVENTS.includes(event)) throw v.rangeError('event', `one of ${EVENTS.join(', ')}`, event)
    if (typeof listener !== 'function') throw v.typeError('listener', 'a function', listener)
    this.#listeners[event].push(listener)
    return this
  }

  off(event, listener) {
    const l = this.#listeners[event]
    if (l) {
      const i = l.indexOf(listener)
      if (i >= 0) l.splice(i, 1)
    }
    return this
  }

  getStatistics() {
    const s = this.#started ? this.#core._stats() : null
    const rej = this.#rejected
    const base = s ?? {
      family: null, refits: 0, refitsAccepted: 0, refitsRejected: 0, refitting: false,
      bufferSize: 0, isUpdating: false, lastUpdateTime: null, updateCount: 0, recentUpdates: [], received: 0, accepted: 0,
      rejected: { closed: 0 }, dropped: 0, processed: 0, queueDepth: 0, modelVersion: 0, swaps: 0, rollbacks: 0, drifts: 0,
      replayed: 0, updatesAccepted: 0, updatesRejected: 0, updateCycles: 0, durableSeq: 0, durableTicket: 0,
      logHealthy: this.#logEnabled ? null : true, corruptLogRecords: 0, corruptLogLines: 0, tornLogRecords: 0, logFailed: 0, postgres: null,
      lastError: null, currentModelPath: this.modelPath,
    }
    const closed = (base.rejected.closed ?? 0) + rej.closed
    const rejectedTotal = rej.missing + rej.invalid + closed
    return {
      ...base,
      bufferCapacity: this.config.bufferSize,
      received: base.received + rej.missing + rej.invalid + rej.closed,
      rejected: { missing: rej.missing, invalid: rej.invalid, closed, total: rejectedTotal },
      queueFull: base.dropped,
      lastError: base.lastError ?? this.#lastError,
      pendingAcks: this.#acks.length - this.#ackHead,
      closed: this.#closed,
      runtimeThreads: this.#core._runtimeThreads(),
    }
  }
}

let singleton = null
function getRealTimeModelUpdates() {
  if (singleton === null) singleton = new RealTimeModelUpdates()
  return singleton
}

/** A caller's object as plain JSON data (getters run once, here, under a clear error). */
function plainJson(x, field) {
  try {
    return JSON.parse(JSON.stringify(x))
  } catch (e) {
    throw new TypeError(`${field} is not plain JSON data: ${e.message}`)
  }
}

/** OnlineLinearModel accepts number arrays as well as Float64Arrays. */
const toF64 = (x, field) => {
  if (x instanceof Float64Array) return x
  if (Array.isArray(x)) {
    const out = new Float64Array(x.length)
    for (let i = 0; i < x.length; i++) {
      const e = v.prop(x, i, `${field}[${i}]`)
      if (typeof e !== 'number') throw v.typeError(`${field}[${i}]`, 'a number', e)
      out[i] = e
    }
    return out
  }
  throw v.typeError(field, 'an array of numbers or a Float64Array', x)
}

const ONLINE_NUMERIC = {
  features: { min: 1, max: 1_000_000, integer: true },
  learningRate: { min: 0, minExclusive: true },
  clip: { min: 0, minExclusive: true },
  l2: { min: 0 },
  forgetting: { min: 0.5, max: 1 },
}
const OPTIMIZERS = ['auto', 'rls', 'adagrad']

/** OnlineLinearModel options: numbers coerced and range-checked, `optimizer` one of OPTIMIZERS. */
function onlineOptions(options) {
  const out = v.numericOptions(options, ONLINE_NUMERIC)
  const o = v.optionalObject(options, 'options')
  const opt = o ? v.prop(o, 'optimizer', 'options.optimizer') : undefined
  if (opt !== undefined && opt !== null) {
    if (typeof opt !== 'string') throw v.typeError('options.optimizer', `one of ${OPTIMIZERS.map((x) => `'${x}'`).join(', ')}`, opt)
    if (!OPTIMIZERS.includes(opt)) throw v.rangeError('options.optimizer', `one of ${OPTIMIZERS.map((x) => `'${x}'`).join(', ')}`, opt)
    out.optimizer = opt
  }
  return out
}

class OnlineLinearModel extends native.OnlineLinearModel {
  learnOne(features, target) {
    if (typeof target !== 'number') throw v.typeError('target', 'a number', target)
    return super.learnOne(toF64(features, 'features'), target)
  }

  predictOne(features) {
    return super.predictOne(toF64(features, 'features'))
  }

  learnBatch(X, y) {
    return super.learnBatch(v.float64Array(X, 'X'), v.float64Array(y, 'y'))
  }

  predictBatch(X) {
    return super.predictBatch(v.float64Array(X, 'X'))
  }

  static fromJSON(json) {
    v.optionalObject(json, 'json')
    if (json === undefined || json === null) throw new TypeError('json is required')
    const m = native.OnlineLinearModel.fromJSON(plainJson(json, 'json'))
    Object.setPrototypeOf(m, OnlineLinearModel.prototype)
    return m
  }

  static fromModel(model, options) {
    if (model === null || typeof model !== 'object') throw v.typeError('model', 'an object with weights and bias', model)
    const m = native.OnlineLinearModel.fromModel(plainJson(model, 'model'), onlineOptions(options))
    Object.setPrototypeOf(m, OnlineLinearModel.prototype)
    return m
  }

  constructor(options) {
    super(onlineOptions(options))
  }
}

module.exports = { RealTimeModelUpdates, getRealTimeModelUpdates, OnlineLinearModel }
