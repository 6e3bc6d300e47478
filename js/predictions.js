'use strict'
// ExpandedPredictions: the old lib/mlops/expandedPredictions.js surface over the Rust
// forecaster (src/core/forecast.rs). This layer validates and packs a context into a
// Float64Array that Rust registered once (strings are interned to ids, so each name
// crosses once), crosses with one number, and builds the result objects from the output
// array. Day one (no outcomes recorded) gives exactly the old formulas' values.

const fs = require('node:fs')
const native = require('../index.js')
const v = require('./validate.js')

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
const OUTCOME_RANGES = { latencyMs: [0], inputTokens: [0], outputTokens: [0], cost: [0], satisfaction: [1, 5], cpu: [0, 100], memory: [0, 100], network: [0, 100] }

function checkNumber(x, field, min, max) {
  if (typeof x !== 'number') throw v.typeError(field, 'a number', x)
  if (!Number.isFinite(x)) throw v.rangeError(field, 'a finite number', x)
  if (min !== undefined && x < min) throw v.rangeError(field, `≥ ${min}`, x)
  if (max !== undefined && x > max) throw v.rangeError(field, `≤ ${max}`, x)
  return x
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
    }))
    const [ns, no, nout] = this._layout()
    if (ns !== NSLOT || no !== OUTCOME.length || nout !== NOUT) throw new Error('mlops-native: JS and native layouts differ; rebuild the addon')
    this._setBuffers(this.#input, this.#output)
    if (priceTable !== undefined && priceTable !== null) this.setPriceTable(priceTable, 'options.priceTable')
  }

  #id(kind, name) {
    const map = this.#names[kind]
    let id = map.get(name)
    if (id === undefined) {
      id = this._intern(kind, name)
      map.set(name, id)
    }
    return id
  }

  /** Validates `context` and writes it into the packed input. */
  // The field being read, so that a caller's throwing getter is reported by name without
  // wrapping every single read (this path runs millions of times).
  #at = 'context'

  #pack(context) {
    this.#at = 'context'
    try {
      return this.#packFields(context)
    } catch (e) {
      if (e instanceof TypeError || e instanceof RangeError) throw e
      throw new TypeError(`${this.#at} could not be read: ${e && e.message ? e.message : String(e)}`)
    }
  }

  #packFields(context) {
    const c = v.optionalObject(context, 'context') ?? {}
    const input = this.#input
    this.#at = 'context.serviceName'
    const service = v.optionalName(c.serviceName, 'context.serviceName')
    this.#at = 'context.provider'
    const provider = v.optionalName(c.provider, 'context.provider')
    this.#at = 'context.model'
    const model = v.optionalName(c.model, 'context.model')
    this.#packed[0] = service
    this.#packed[1] = provider
    this.#packed[2] = model
    input[S.service] = service === '' ? 0 : this.#id(0, service)
    input[S.provider] = provider === '' ? 0 : this.#id(1, provider)
    input[S.model] = model === '' ? 0 : this.#id(2, model)
    this.#at = 'context.cacheHit'
    const cache = c.cacheHit
    if (cache === undefined || cache === null) input[S.cacheHit] = NaN
    else if (typeof cache === 'boolean') input[S.cacheHit] = cache ? 1 : 0
    else if (typeof cache === 'number' && (cache === 0 || cache === 1)) input[S.cacheHit] = cache
    else throw v.typeError('context.cacheHit', 'a boolean', cache)
    for (let i = 0; i < NUMERIC.length; i++) {
      const [name, slot, min, max, field] = NUMERIC[i]
      this.#at = field
      const x = c[name]
      input[slot] = x === undefined || x === null ? NaN : checkNumber(x, field, min, max)
    }
    return c
  }

  #resync() {
    for (const m of this.#names) m.clear()
    this.#generation = this._generation
    for (let k = 0; k < 3; k++) this.#input[k] = this.#packed[k] === '' ? 0 : this.#id(k, this.#packed[k])
  }

  #run(context) {
    const c = this.#pack(context)
    if (!this._predictAll(this.#generation)) {
      this.#resync()
      this._predictAll(this.#generation)
    }
    return c
  }

  #latency(c, o) {
    return {
      latency: o[O.latency],
      confidence: o[O.latencyConf],
      unit: 'ms',
      factors: {
        serviceName: c.serviceName ?? null,
        baseLatency: o[O.baseLatency],
        cacheHit: Boolean(c.cacheHit),
        inputSize: c.inputSize ?? 0,
        provider: c.provider ?? null,
        model: c.model ?? null,
        learned: o[O.latencySamples] > 0,
        samples: o[O.latencySamples],
      },
      p50: o[O.p50],
      p95: o[O.p95],
      p99: o[O.p99],
    }
  }

  #cost(c, o) {
    const usd = o[O.costUsd] === 1
    return {
      cost: o[O.cost],
      confidence: o[O.costConf],
      unit: usd ? 'usd' : 'credits',
      breakdown: { base: o[O.costBase], inputTokens: o[O.costInput], outputTokens: o[O.costOutput], cacheDiscount: o[O.cacheDiscount] },
      model: c.model ?? null,
      provider: c.provider ?? null,
      priced: usd,
      outputTokens: o[O.outputTokens],
      outputTokensPredicted: o[O.outputPredicted] === 1,
      samples: o[O.costSamples],
    }
  }

  #satisfaction(c, o) {
    return {
      satisfaction: o[O.satisfaction],
      confidence: o[O.satisfactionConf],
      scale: '1-5',
      factors: {
        quality: c.quality ?? 0,
        latency: c.latency ?? 0,
        relevance: c.relevance ?? 0.5,
        coherence: c.coherence ?? 0.5,
        learned: o[O.satisfactionSamples] > 0,
        samples: o[O.satisfactionSamples],
      },
    }
  }

  #resources(o) {
    return {
      cpu: o[O.cpu],
      memory: o[O.memory],
      network: o[O.network],
      confidence: o[O.resourcesConf],
      unit: 'percentage',
      samples: o[O.resourcesSamples],
    }
  }

  // ---- Sync forms: throw TypeError/RangeError naming the field ----

  predictLatencySync(context) {
    return this.#latency(this.#run(context), this.#output)
  }

  predictCostSync(context) {
    return this.#cost(this.#run(context), this.#output)
  }

  predictSatisfactionSync(context) {
    return this.#satisfaction(this.#run(context), this.#output)
  }

  predictResourcesSync(context) {
    this.#run(context)
    return this.#resources(this.#output)
  }

  predictAllSync(context) {
    const c = this.#run(context)
    const o = this.#output
    return { latency: this.#latency(c, o), cost: this.#cost(c, o), satisfaction: this.#satisfaction(c, o), resources: this.#resources(o), timestamp: Date.now() }
  }

  /** predictAll for many contexts in one crossing. */
  predictAllBatch(contexts) {
    if (!Array.isArray(contexts)) throw v.typeError('contexts', 'an array of contexts', contexts)
    const n = contexts.length
    const packed = new Float64Array(n * NSLOT)
    const cs = new Array(n)
    for (let i = 0; i < n; i++) {
      try {
        cs[i] = this.#pack(contexts[i])
      } catch (e) {
        e.message = e.message.replace(/^context/, `contexts[${i}]`)
        throw e
      }
      packed.set(this.#input.subarray(0, NSLOT), i * NSLOT)
    }
    let res = this._predictBatch(this.#generation, packed)
    if (res === null) {
      // State replaced by loadState: re-intern every name and retry once.
      this.#resync()
      for (let i = 0; i < n; i++) {
        this.#pack(contexts[i])
        packed.set(this.#input.subarray(0, NSLOT), i * NSLOT)
      }
      res = this._predictBatch(this.#generation, packed)
    }
    const now = Date.now()
    const out = new Array(n)
    for (let i = 0; i < n; i++) {
      const o = res.subarray(i * NOUT, (i + 1) * NOUT)
      out[i] = { latency: this.#latency(cs[i], o), cost: this.#cost(cs[i], o), satisfaction: this.#satisfaction(cs[i], o), resources: this.#resources(o), timestamp: now }
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
      this._record(this.#generation)
    }
    return true
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

  // ---- compat Promise forms: never reject; a bad context resolves the cold-start
  //      values of an empty context with `error` set, as the old module did ----

  initialize() {
    return Promise.resolve(true)
  }

  #fallback(sync, e) {
    const r = sync.call(this, {})
    r.error = e && e.message ? e.message : String(e)
    return r
  }

  /** The compat form of a Sync method: never rejects (see #fallback). */
  #compat(sync, context) {
    try {
      return Promise.resolve(sync.call(this, context))
    } catch (e) {
      return Promise.resolve(this.#fallback(sync, e))
    }
  }

  predictLatency(context) {
    return this.#compat(this.predictLatencySync, context)
  }

  predictCost(context) {
    return this.#compat(this.predictCostSync, context)
  }

  predictSatisfaction(context) {
    return this.#compat(this.predictSatisfactionSync, context)
  }

  predictResources(context) {
    return this.#compat(this.predictResourcesSync, context)
  }

  predictAll(context) {
    return this.#compat(this.predictAllSync, context)
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
