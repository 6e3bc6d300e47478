'use strict'
// Prometheus metrics for the four classes: the text exposition format (0.0.4) that a
// `/metrics` endpoint serves, and a bridge into a prom-client registry.
//
// Each class builds its families from what it already counts (statistics read on the
// calling thread, never a round trip to a worker), so collecting costs microseconds and
// never waits for learning. Distributions that Prometheus should aggregate across processes
// are histograms kept here in JS, observed where the value is already in hand.

/** Fixed-bucket histogram; `observe` is O(buckets) with no allocation. */
class Histogram {
  constructor(buckets) {
    this.buckets = buckets
    this.counts = new Float64Array(buckets.length)
    this.sum = 0
    this.count = 0
  }

  observe(v) {
    if (typeof v !== 'number' || !Number.isFinite(v)) return
    this.sum += v
    this.count++
    const b = this.buckets
    for (let i = 0; i < b.length; i++) {
      if (v <= b[i]) {
        this.counts[i]++
        return
      }
    }
  }
}

/** Histograms keyed by a label set (e.g. per strategy), created on first use. */
class HistogramVec {
  constructor(buckets, maxSeries = 1000) {
    this.buckets = buckets
    this.maxSeries = maxSeries
    this.series = new Map()
  }

  get(key, labels) {
    let h = this.series.get(key)
    if (!h) {
      // A label set per key: bounded, so hostile cardinality cannot grow a scrape forever.
      if (this.series.size >= this.maxSeries) return undefined
      h = new Histogram(this.buckets)
      h.labels = labels
      this.series.set(key, h)
    }
    return h
  }
}

/** A collection of metric families, filled by a class's `#collect`. */
class Families {
  constructor(constLabels = {}) {
    this.list = []
    this.byName = new Map()
    this.constLabels = constLabels
  }

  #family(name, type, help) {
    let f = this.byName.get(name)
    if (!f) {
      f = { name, type, help, samples: [] }
      this.byName.set(name, f)
      this.list.push(f)
    }
    return f
  }

  counter(name, help, value, labels) {
    this.#sample(name, 'counter', help, value, labels)
  }

  gauge(name, help, value, labels) {
    this.#sample(name, 'gauge', help, value, labels)
  }

  #sample(name, type, help, value, labels) {
    const f = this.#family(name, type, help)
    if (typeof value === 'boolean') value = value ? 1 : 0
    if (typeof value !== 'number') return
    f.samples.push({ name, labels: { ...this.constLabels, ...labels }, value })
  }

  histogram(name, help, h, labels) {
    const f = this.#family(name, 'histogram', help)
    if (!h) return
    const base = { ...this.constLabels, ...labels }
    let cum = 0
    for (let i = 0; i < h.buckets.length; i++) {
      cum += h.counts[i]
      f.samples.push({ name: `${name}_bucket`, labels: { ...base, le: formatNumber(h.buckets[i]) }, value: cum })
    }
    f.samples.push({ name: `${name}_bucket`, labels: { ...base, le: '+Inf' }, value: h.count })
    f.samples.push({ name: `${name}_sum`, labels: base, value: h.sum })
    f.samples.push({ name: `${name}_count`, labels: base, value: h.count })
  }
}

function formatNumber(v) {
  if (v === Infinity) return '+Inf'
  if (v === -Infinity) return '-Inf'
  if (Number.isNaN(v)) return 'NaN'
  return String(v)
}

function escapeLabel(v) {
  return String(v).replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"')
}

function escapeHelp(v) {
  return String(v).replace(/\\/g, '\\\\').replace(/\n/g, '\\n')
}

function labelString(labels) {
  const keys = Object.keys(labels)
  if (keys.length === 0) return ''
  return `{${keys.map((k) => `${k}="${escapeLabel(labels[k])}"`).join(',')}}`
}

/** The text exposition format of `families` (one HELP/TYPE block each). */
function render(families) {
  let out = ''
  for (const f of families.list) {
    out += `# HELP ${f.name} ${escapeHelp(f.help)}\n# TYPE ${f.name} ${f.type}\n`
    for (const s of f.samples) out += `${s.name}${labelString(s.labels)} ${formatNumber(s.value)}\n`
  }
  return out
}

// ---- prom-client bridge ----

// One pseudo-metric per family name and registry, collecting from every instance that was
// registered on that registry (two RealTimeModelUpdates on one registry share the names,
// distinguished by their labels, as prom-client requires).
const bridges = new WeakMap()

/**
 * Registers `owner`'s families (from `collect()`) on a prom-client registry. Several owners
 * may share a registry: their samples are merged under each name, and `labels` (for
 * example `{instance: 'eu-1'}`) tell them apart. Registering the same owner twice is a no-op.
 */
function registerMetrics(register, owner, collect, labels) {
  if (register === null || typeof register !== 'object' || typeof register.registerMetric !== 'function') {
    throw new TypeError('register must be a prom-client Registry (an object with registerMetric), e.g. promClient.register')
  }
  if (labels !== undefined && labels !== null) {
    if (typeof labels !== 'object' || Array.isArray(labels)) throw new TypeError('labels must be an object of label names to values')
    for (const [k, val] of Object.entries(labels)) {
      if (!/^[a-zA-Z_][a-zA-Z0-9_]*$/.test(k)) throw new RangeError(`labels: ${JSON.stringify(k)} is not a valid Prometheus label name`)
      if (typeof val !== 'string' && typeof val !== 'number') throw new TypeError(`labels.${k} must be a string or a number`)
    }
    const inner = collect
    const extra = { ...labels }
    collect = () => {
      const f = inner()
      for (const fam of f.list) for (const smp of fam.samples) smp.labels = { ...smp.labels, ...extra }
      return f
    }
  }
  let state = bridges.get(register)
  if (!state) {
    state = { owners: new Map(), names: new Map(), cache: null, cacheAt: 0 }
    bridges.set(register, state)
  }
  if (state.owners.has(owner)) return
  state.owners.set(owner, collect)
  state.cache = null
  const gather = () => {
    // A scrape asks every family in turn; one collection serves the whole scrape.
    const now = Date.now()
    if (state.cache && now - state.cacheAt < 50) return state.cache
    const byName = new Map()
    for (const c of state.owners.values()) {
      for (const f of c().list) {
        const into = byName.get(f.name)
        if (into) into.samples.push(...f.samples)
        else byName.set(f.name, { ...f, samples: [...f.samples] })
      }
    }
    state.cache = byName
    state.cacheAt = now
    return byName
  }
  for (const f of collect().list) {
    if (state.names.has(f.name)) continue
    const metric = {
      name: f.name,
      help: f.help,
      type: f.type,
      aggregator: 'sum',
      get: async () => {
        const fam = gather().get(f.name) || { samples: [] }
        return {
          name: f.name,
          help: f.help,
          type: f.type,
          aggregator: 'sum',
          values: fam.samples.map((s) => ({ metricName: s.name, labels: s.labels, value: s.value })),
        }
      },
      reset() {},
    }
    state.names.set(f.name, metric)
    register.registerMetric(metric)
  }
}

module.exports = { Histogram, HistogramVec, Families, render, registerMetrics }
