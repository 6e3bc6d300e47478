'use strict'
// ExpandedPredictions: the old lib/mlops/expandedPredictions.js surface over the Rust
// forecaster (src/core/forecast.rs). This layer validates and packs a context into a
// Float64Array that Rust registered once (strings are interned to ids, so each name
// crosses once), crosses with one number, and builds the result objects from the output
// array. Day one (no outcomes recorded) gives exactly the old formulas' values.

const fs = require('node:fs')
const native = require('../index.js')
const v = require('./validate.js')
const metrics = require('./metrics.js')

// Packed context slots (src/core/forecast.rs `slot`), then outcome slots (`outcome`).
const S = {
  service: 0, provider: 1, model: 2, cacheHit: 3, inputSize: 4, inputTokens: 5, outputTokens: 6,
  cachedInputTokens: 7, maxTokens: 8, quality: 9, latency: 10, relevance: 11, coherence: 12,
  historicalSatisfaction: 13, batchSize: 14, concurrentRequests: 15, hour: 16,
}
const NSLOT = 17
const OUTCOME = ['latencyMs', 'inputTokens', 'outputTokens', 'cost', 'satisfaction', 'cpu', 'memory', 'network']
const OUTCOME_FIELDS = OUTCOME.map((n) => `outcome.${n}`)
// Output layout (`out`).
const O = {
  latency: 0, latencyConf: 1, p50: 2, p95: 3, p99: 4, latencySamples: 5, baseLatency: 6, cost: 7, costConf: 8,
  costUsd: 9, costBase: 10, costInput: 11, costOutput: 12, cacheDiscount: 13, outputTokens: 14,
  outputPredicted: 15, costSamples: 16, satisfaction: 17, satisfactionConf: 18, satisfactionSamples: 19,
  cpu: 20, memory: 21, network: 22, resourcesConf: 23, resourcesSamples: 24,
}
const NOUT = 25

// Numeric context fields: [name, slot, minimum (undefined: any finite number), maximum].
const NUMERIC = [
  ['inputSize', S.inputSize, 0], ['inputTokens', S.inputTokens, 0], ['outputTokens', S.outputTokens, 0],
  ['cachedInputTokens', S.cachedInputTokens, 0], ['maxTokens', S.maxTokens, 0], ['quality', S.quality],
  ['latency', S.latency, 0], ['relevance', S.relevance], ['coherence', S.coherence],
  ['historicalSatisfaction', S.historicalSatisfaction], ['batchSize', S.batchSize, 0],
  ['concurrentRequests', S.concurrentRequests, 0], ['hour', S.hour, 0, 23],
].map(([name, slot, min, max]) => [name, slot, min, max, `context.${name}`])
// Learned-from magnitudes stop at 1e100, as everywhere in the package (README, Robustness):
// squares of larger values overflow the learners' statistics.
const OUTCOME_RANGES = { latencyMs: [0, 1e100], inputTokens: [0, 1e100], outputTokens: [0, 1e100], cost: [0, 1e100], satisfaction: [1, 5], cpu: [0, 100], memory: [0, 100], network: [0, 100] }

// Numbers, or numeric strings as databases return them ('100' → 100; see validate.js).
function checkNumber(x, field, min, max) {
  if (typeof x !== 'number') x = v.finite(x, field)
  else if (!Number.isFinite(x)) throw v.rangeError(field, 'a finite number', x)
  if (min !== undefined && x < min) throw v.rangeError(field, `≥ ${min}`, x)
  if (max !== undefined && x > max) throw v.rangeError(field, `≤ ${max}`, x)
  return x
}

// Which predictions read which context field (bits: latency, cost, satisfaction,
// resources), so the compat forms' per-field warnings land on the predictions a bad field
// could have changed. Fields no learner reads (maxTokens, historicalSatisfaction) warn on
// every prediction, so a wrong input is never silent.
const L = 1
const C = 2
const SAT = 4
const R = 8
const ALL = L | C | SAT | R
const AFFECTS = {
  context: ALL, serviceName: ALL, provider: L | C, model: L | C, cacheHit: L | C, inputSize: L | R,
  inputTokens: L | C, outputTokens: L | C, cachedInputTokens: C, maxTokens: ALL, quality: SAT, latency: SAT,
  relevance: SAT, coherence: SAT, historicalSatisfaction: ALL, batchSize: R, concurrentRequests: L | R, hour: L,
}

/** A packed slot's value, or `d` when absent (NaN). */
function or(x, d) {
  return x === x ? x : d
}

function readPriceTable(table, field) {
  if (typeof table === 'string') {
    let text
    try {
      text = fs.readFileSync(table, 'utf8')
    } catch (e) {
      throw new Error(`${field}: cannot read ${table}: ${e.code || e.message}`)
    }
    try {
      return JSON.parse(text)
    } catch {
      throw new Error(`${field}: ${table} is not valid JSON`)
    }
  }
  if (table === null || typeof table !== 'object' || Array.isArray(table)) throw v.typeError(field, 'an object or a file path', table)
  return table
}

class ExpandedPredictions extends native.ExpandedPredictions {
  #input = new Float64Array(NSLOT + OUTCOME.length)
  #output = new Float64Array(NOUT)
  #names = [new Map(), new Map(), new Map()]
  #generation = 0
  // The last packed context's names, to re-intern them after a loadState.
  #packed = ['', '', '']

  constructor(options) {
    const o = v.optionalObject(options, 'options') ?? {}
    const priceTable = v.prop(o, 'priceTable', 'options.priceTable')
    super(v.numericOptions(o, {
      quantileWindow: { min: 1, max: 100_000, integer: true },
      minKeyResiduals: { min: 0, max: 4_294_967_295, integer: true },
      outputDecay: { min: 0, minExclusive: true, max: 1 },
      forgetting: { min: 0, minExclusive: true, max: 1 },
      maxKeys: { min: 1, max: 16_777_214, integer: true },
      maxMemoryMb: { min: 0, minExclusive: true, max: 1e9 },
    }))
    const [ns, no, nout] = this._layout()
    if (ns !== NSLOT || no !== OUTCOME.length || nout !== NOUT) throw new Error('mlops-native: JS and native layouts differ; rebuild the addon')
    this._setBuffers(this.#input, this.#output)
    this.#maxNames = this._maxNames()
    if (priceTable !== undefined && priceTable !== null) this.setPriceTable(priceTable, 'options.priceTable')
  }

  // Name → id caches, bounded like Rust's name tables (maxKeys per kind): a full cache is
  // cleared and refills from the names in use. An id Rust has since evicted is caught
  // there (ids carry a generation) and answered with a resync, never misread.
  #maxNames = 0

  #id(kind, name) {
    const map = this.#names[kind]
    let id = map.get(name)
    if (id === undefined) {
      if (map.size >= this.#maxNames) map.clear()
      id = this._intern(kind, name)
      map.set(name, id)
    }
    return id
  }

  // The field being read, so that a caller's throwing getter is reported by name without
  // wrapping every single read (this path runs millions of times).
  #at = 'context'
  // Lenient packing (the compat Promise forms): null = strict (throw), otherwise the
  // warnings of this call as [message, affected-predictions mask] pairs.
  #warn = null

  /**
   * Validates `context` and writes it into the packed input. Strict (the Sync forms): the
   * first bad field throws a TypeError/RangeError naming it. Lenient (`lenient` true, the
   * compat Promise forms): a bad field is packed as absent, so that field alone takes its
   * default, and a warning naming it is kept for the predictions it affects.
   */
  #pack(context, lenient = false) {
    this.#at = 'context'
    this.#warn = lenient ? [] : null
    try {
      return this.#packFields(context)
    } catch (e) {
      if (e instanceof TypeError || e instanceof RangeError) throw e
      throw new TypeError(`${this.#at} could not be read: ${e && e.message ? e.message : String(e)}`)
    }
  }

  /** Lenient mode: records why `name` fell back to its default; strict mode: rethrows. */
  #bad(name, e) {
    if (this.#warn === null) throw e
    const field = name === 'context' ? 'context' : `context.${name}`
    const msg = e instanceof TypeError || e instanceof RangeError ? e.message : `${field} could not be read: ${e && e.message ? e.message : String(e)}`
    this.#warn.push([`${msg}; ${name === 'context' ? 'the empty context' : 'its default'} was used`, AFFECTS[name] ?? ALL, name])
  }

  #name(c, key, kind) {
    const field = `context.${key}`
    this.#at = field
    let name
    try {
      name = v.optionalName(v.prop(c, key, field), field)
    } catch (e) {
      this.#bad(key, e)
      name = ''
    }
    this.#packed[kind] = name
    return name === '' ? 0 : this.#id(kind, name)
  }

  #packFields(context) {
    let c
    try {
      c = v.optionalObject(context, 'context') ?? {}
    } catch (e) {
      this.#bad('context', e)
      c = {}
    }
    const input = this.#input
    input[S.service] = this.#name(c, 'serviceName', 0)
    input[S.provider] = this.#name(c, 'provider', 1)
    input[S.model] = this.#name(c, 'model', 2)
    this.#at = 'context.cacheHit'
    try {
      const cache = v.prop(c, 'cacheHit', 'context.cacheHit')
      if (cache === undefined || cache === null) input[S.cacheHit] = NaN
      else if (typeof cache === 'boolean') input[S.cacheHit] = cache ? 1 : 0
      else if (typeof cache === 'number' && (cache === 0 || cache === 1)) input[S.cacheHit] = cache
      else throw v.typeError('context.cacheHit', 'a boolean', cache)
    } catch (e) {
      this.#bad('cacheHit', e)
      input[S.cacheHit] = NaN
    }
    for (let i = 0; i < NUMERIC.length; i++) {
      const [name, slot, min, max, field] = NUMERIC[i]
      this.#at = field
      try {
        const x = c[name]
        input[slot] = x === undefined || x === null ? NaN : checkNumber(x, field, min, max)
      } catch (e) {
        this.#bad(name, e)
        input[slot] = NaN
      }
    }
    return c
  }

  /** The warnings of the last lenient pack that concern `mask`, or undefined. */
  #warnings(mask) {
    const w = this.#warn
    if (w === null || w.length === 0) return undefined
    const out = []
    for (const [msg, m] of w) if (m & mask) out.push(msg)
    return out.length ? out : undefined
  }

  /** Adds `warnings` (and `error` when the context as a whole was unusable) to `r`. */
  #annotate(r, mask) {
    const w = this.#warnings(mask)
    if (w !== undefined) r.warnings = w
    return r
  }

  #resync() {
    for (const m of this.#names) m.clear()
    this.#generation = this._generation
    for (let k = 0; k < 3; k++) this.#input[k] = this.#packed[k] === '' ? 0 : this.#id(k, this.#packed[k])
  }

  /** Packs and predicts one context; the results are in #input/#output/#packed. */
  #run(context, lenient = false) {
    this.#pack(context, lenient)
    if (!this._predictAll(this.#generation)) {
      // State replaced by loadState, or one of these names evicted since it was cached.
      this.#resync()
      if (!this._predictAll(this.#generation)) throw new Error('mlops-native: name ids stale after a resync')
    }
  }

  // Result builders: `names` are the [service, provider, model] used, `p` the packed
  // context (so factors show the values really used: numbers, not the strings given, and
  // a field's default when it fell back), `o` the output.
  #latency(names, p, o) {
    return this.#annotate({
      latency: o[O.latency],
      confidence: o[O.latencyConf],
      unit: 'ms',
      factors: {
        serviceName: names[0] || null,
        baseLatency: o[O.baseLatency],
        cacheHit: p[S.cacheHit] === 1,
        inputSize: or(p[S.inputSize], 0),
        provider: names[1] || null,
        model: names[2] || null,
        learned: o[O.latencySamples] > 0,
        samples: o[O.latencySamples],
      },
      p50: o[O.p50],
      p95: o[O.p95],
      p99: o[O.p99],
    }, L)
  }

  #cost(names, p, o) {
    const usd = o[O.costUsd] === 1
    return this.#annotate({
      cost: o[O.cost],
      confidence: o[O.costConf],
      unit: usd ? 'usd' : 'credits',
      breakdown: { base: o[O.costBase], inputTokens: o[O.costInput], outputTokens: o[O.costOutput], cacheDiscount: o[O.cacheDiscount] },
      model: names[2] || null,
      provider: names[1] || null,
      priced: usd,
      outputTokens: o[O.outputTokens],
      outputTokensPredicted: o[O.outputPredicted] === 1,
      samples: o[O.costSamples],
    }, C)
  }

  #satisfaction(p, o) {
    return this.#annotate({
      satisfaction: o[O.satisfaction],
      confidence: o[O.satisfactionConf],
      scale: '1-5',
      factors: {
        quality: or(p[S.quality], 0),
        latency: or(p[S.latency], 0),
        relevance: or(p[S.relevance], 0.5),
        coherence: or(p[S.coherence], 0.5),
        learned: o[O.satisfactionSamples] > 0,
        samples: o[O.satisfactionSamples],
      },
    }, SAT)
  }

  #resources(o) {
    return this.#annotate({
      cpu: o[O.cpu],
      memory: o[O.memory],
      network: o[O.network],
      confidence: o[O.resourcesConf],
      unit: 'percentage',
      samples: o[O.resourcesSamples],
    }, R)
  }

  #all(names, p, o, now) {
    const r = { latency: this.#latency(names, p, o), cost: this.#cost(names, p, o), satisfaction: this.#satisfaction(p, o), resources: this.#resources(o), timestamp: now }
    return this.#annotate(r, ALL)
  }

  #latencyOf(context, lenient) {
    this.#run(context, lenient)
    return this.#latency(this.#packed, this.#input, this.#output)
  }

  #costOf(context, lenient) {
    this.#run(context, lenient)
    return this.#cost(this.#packed, this.#input, this.#output)
  }

  #satisfactionOf(context, lenient) {
    this.#run(context, lenient)
    return this.#satisfaction(this.#input, this.#output)
  }

  #resourcesOf(context, lenient) {
    this.#run(context, lenient)
    return this.#resources(this.#output)
  }

  #allOf(context, lenient) {
    this.#run(context, lenient)
    return this.#all(this.#packed, this.#input, this.#output, Date.now())
  }

  // ---- Sync forms: throw TypeError/RangeError naming the field ----

  predictLatencySync(context) {
    return this.#latencyOf(context, false)
  }

  predictCostSync(context) {
    return this.#costOf(context, false)
  }

  predictSatisfactionSync(context) {
    return this.#satisfactionOf(context, false)
  }

  predictResourcesSync(context) {
    return this.#resourcesOf(context, false)
  }

  predictAllSync(context) {
    return this.#allOf(context, false)
  }

  /** predictAll for many contexts in one crossing (strict, like the Sync forms). */
  predictAllBatch(contexts) {
    if (!Array.isArray(contexts)) throw v.typeError('contexts', 'an array of contexts', contexts)
    const n = contexts.length
    const packed = new Float64Array(n * NSLOT)
    const names = new Array(n)
    const packAll = () => {
      for (let i = 0; i < n; i++) {
        try {
          this.#pack(contexts[i])
        } catch (e) {
          e.message = e.message.replace(/^context/, `contexts[${i}]`)
          throw e
        }
        names[i] = [this.#packed[0], this.#packed[1], this.#packed[2]]
        packed.set(this.#input.subarray(0, NSLOT), i * NSLOT)
      }
    }
    packAll()
    let res = this._predictBatch(this.#generation, packed)
    if (res === null) {
      // State replaced by loadState (or a name evicted): re-intern every name, retry once.
      this.#resync()
      packAll()
      res = this._predictBatch(this.#generation, packed)
    }
    if (res === null) {
      // More distinct names in this batch than the name tables hold: interning the later
      // ones evicted earlier ones. One context at a time then (each interns its own).
      const now = Date.now()
      return contexts.map((c) => ({ ...this.predictAllSync(c), timestamp: now }))
    }
    const now = Date.now()
    const out = new Array(n)
    for (let i = 0; i < n; i++) {
      const o = res.subarray(i * NOUT, (i + 1) * NOUT)
      out[i] = this.#all(names[i], packed.subarray(i * NSLOT, (i + 1) * NSLOT), o, now)
    }
    return out
  }

  /**
   * Learns from what actually happened to a request. `outcome` fields are all optional:
   * `{latencyMs, inputTokens, outputTokens, cost, satisfaction, cpu, memory, network}`.
   */
  recordOutcomeSync(context, outcome) {
    this.#pack(context)
    const oc = v.optionalObject(outcome, 'outcome')
    if (oc === undefined) throw new TypeError('outcome is required (an object)')
    const input = this.#input
    let any = false
    for (let i = 0; i < OUTCOME.length; i++) {
      const name = OUTCOME[i]
      const x = v.prop(oc, name, OUTCOME_FIELDS[i])
      if (x === undefined || x === null) {
        input[NSLOT + i] = NaN
      } else {
        const [min, max] = OUTCOME_RANGES[name]
        input[NSLOT + i] = checkNumber(x, OUTCOME_FIELDS[i], min, max)
        any = true
      }
    }
    if (!any) throw new TypeError(`outcome must hold at least one of ${OUTCOME.join(', ')}`)
    if (!this._record(this.#generation)) {
      this.#resync()
      if (!this._record(this.#generation)) throw new Error('mlops-native: name ids stale after a resync')
    }
    return true
  }

  /** Prometheus text exposition (see README, Monitoring); O(1) in the number of keys. */
  metrics() {
    return metrics.render(this.#collect())
  }

  /** Adds these metrics to a prom-client registry: `p.registerMetrics(promClient.register)`. */
  registerMetrics(register, labels) {
    metrics.registerMetrics(register, this, () => this.#collect(), labels)
  }

  #collect() {
    const s = this.getStatistics()
    const f = new metrics.Families()
    f.counter('mlops_predictions_outcomes_total', 'Request outcomes learned from.', s.outcomes)
    f.gauge('mlops_predictions_keys', 'Learned (service, provider, model) keys held now.', s.keys)
    f.gauge('mlops_predictions_services', 'Learned services held now.', s.services)
    f.gauge('mlops_predictions_memory_bytes', 'Estimated bytes of learned state (bounded by maxMemoryMb).', s.memoryBytes)
    for (const [kind, n] of Object.entries(s.evictions || {})) f.counter('mlops_predictions_evictions_total', 'Least-recently-used entries evicted by the bounds.', n, { kind })
    const cov = s.latencyCoverage95 || {}
    for (const kind of ['informed', 'blind']) {
      const c = cov[kind]
      if (!c) continue
      f.counter('mlops_latency_p95_scored_total', 'Latency outcomes scored against the p95 that was served.', c.scored, { kind })
      f.counter('mlops_latency_p95_covered_total', 'Latency outcomes that fell within the served p95.', c.covered, { kind })
      f.gauge('mlops_latency_p95_coverage_ratio', 'Share of scored latency outcomes within the served p95 (target 0.95).', c.scored ? c.covered / c.scored : 0, { kind })
    }
    return f
  }

  recordOutcome(context, outcome) {
    try {
      return Promise.resolve(this.recordOutcomeSync(context, outcome))
    } catch (e) {
      return Promise.reject(e)
    }
  }

  /** Replaces the price table: an object in LiteLLM's format, or a path to such a file. */
  setPriceTable(table, field = 'table') {
    const t = readPriceTable(table, field)
    // Through JSON first: a getter that throws, a BigInt or a cycle is a TypeError here,
    // not an error from deep inside the conversion.
    let plain
    try {
      plain = JSON.parse(JSON.stringify(t))
    } catch (e) {
      throw new TypeError(`${field} is not plain JSON data: ${e.message}`)
    }
    return this._setPriceTable(plain)
  }

  // ---- compat Promise forms: never reject. Lenient: a bad field falls back to that
  //      field's default alone, and each prediction it could have changed carries
  //      `warnings: ['context.inputSize must be …; its default was used']` (predictAll also
  //      lists them all at the top). A context that is not an object is the empty context,
  //      with the warning on every prediction. ----

  initialize() {
    return Promise.resolve(true)
  }

  /** The compat form of a prediction: lenient packing, never rejects. */
  #compat(of, context) {
    try {
      const r = of.call(this, context, true)
      // A context that is not an object also sets `error`, as the old fallback did.
      const whole = this.#warn.find((w) => w[2] === 'context')
      if (whole !== undefined) r.error = whole[0]
      return Promise.resolve(r)
    } catch (e) {
      // Only an internal fault gets here (lenient packing takes every input): answer the
      // empty context's cold start with the error, as the old module never rejected.
      let r
      try {
        r = of.call(this, {}, true)
      } catch {
        return Promise.reject(e)
      }
      r.error = e && e.message ? e.message : String(e)
      return Promise.resolve(r)
    }
  }

  predictLatency(context) {
    return this.#compat(this.#latencyOf, context)
  }

  predictCost(context) {
    return this.#compat(this.#costOf, context)
  }

  predictSatisfaction(context) {
    return this.#compat(this.#satisfactionOf, context)
  }

  predictResources(context) {
    return this.#compat(this.#resourcesOf, context)
  }

  predictAll(context) {
    return this.#compat(this.#allOf, context)
  }

  loadState(path) {
    return v.stateFile(path, (p) => super.loadState(p))
  }

  saveState(path) {
    return v.stateFile(path, (p) => super.saveState(p))
  }
}

let singleton = null
function getExpandedPredictions() {
  if (singleton === null) singleton = new ExpandedPredictions()
  return singleton
}

module.exports = { ExpandedPredictions, getExpandedPredictions }
