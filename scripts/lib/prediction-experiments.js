'use strict'
// The "hard data" experiments of issue 11 for ExpandedPredictions, shared by the node:test
// suite (__test__/predictions-hard-data.test.js, which asserts the targets) and the bench
// (scripts/bench/predictions.js, which prints the figures). Every stream is seeded.
//
// - synthetic day: scripts/lib/request-stream.js, 14,000 requests; learn on the first
//   10,000, then measure on the last 4,000 (each request predicted, then recorded).
// - one key, i.i.d.: latency = (300 + 20·out)·lognormal(σ 0.1), out ~ lognormal(median
//   200, σ 0.6); 6,000 outcomes, measured on the last 3,000.
// - level shift: the i.i.d. stream whose latency doubles at outcome 5,000.
// - small windows: 200 fresh instances × 100 outcomes of the i.i.d. stream, coverage
//   grouped by how many residuals the serving window held.
// Coverage is measured for the prediction served with `outputTokens` in the context
// ("known") and without it ("unknown"); outcomes are recorded with the context as served
// without it, plus the observed `outputTokens` in the outcome.

const { requestStream, rng } = require('./request-stream.js')

function counter() {
  return { n: 0, p50: 0, p95: 0, p99: 0, err: 0, bias: 0, actual: 0 }
}
function score(c, r, actual) {
  c.n++
  c.p50 += actual <= r.p50 ? 1 : 0
  c.p95 += actual <= r.p95 ? 1 : 0
  c.p99 += actual <= r.p99 ? 1 : 0
  c.err += Math.abs(r.latency - actual)
  c.bias += r.latency - actual
  c.actual += actual
}
function summary(c) {
  return { n: c.n, p50: c.p50 / c.n, p95: c.p95 / c.n, p99: c.p99 / c.n, mae: c.err / c.n, bias: c.bias / c.actual }
}

/** Seeded i.i.d. one-key stream: [{out, latency}] with latency ×`shift` from `shiftAt`. */
function iidStream(n, seed, { shiftAt = Infinity, shift = 2 } = {}) {
  const r = rng(seed)
  const rows = []
  for (let i = 0; i < n; i++) {
    const out = Math.max(1, Math.round(200 * Math.exp(0.6 * r.normal())))
    const latency = (300 + 20 * out) * Math.exp(0.1 * r.normal()) * (i >= shiftAt ? shift : 1)
    rows.push({ out, latency })
  }
  return rows
}

const KEY = { serviceName: 'svc', provider: 'p', model: 'm', hour: 12, inputTokens: 500 }

/** Runs one key's stream; `measure(i)` picks the outcomes scored. */
function runKey(ExpandedPredictions, rows, measure, options = {}) {
  const p = new ExpandedPredictions(options)
  const known = counter()
  const blind = counter()
  rows.forEach(({ out, latency }, i) => {
    if (measure(i)) {
      score(known, p.predictLatencySync({ ...KEY, outputTokens: out }), latency)
      score(blind, p.predictLatencySync(KEY), latency)
    }
    p.recordOutcomeSync(KEY, { latencyMs: latency, outputTokens: out })
  })
  return { known: summary(known), unknown: summary(blind) }
}

function syntheticDay(ExpandedPredictions, options = {}) {
  const p = new ExpandedPredictions(options)
  const stream = requestStream(14000, 3)
  const known = counter()
  const blind = counter()
  stream.forEach(({ context, outcome }, i) => {
    if (i >= 10000) {
      score(known, p.predictLatencySync({ ...context, outputTokens: outcome.outputTokens }), outcome.latencyMs)
      score(blind, p.predictLatencySync(context), outcome.latencyMs)
    }
    p.recordOutcomeSync(context, outcome)
  })
  return { known: summary(known), unknown: summary(blind) }
}

function iid(ExpandedPredictions, options = {}) {
  return runKey(ExpandedPredictions, iidStream(6000, 17), (i) => i >= 3000, options)
}

/** Coverage in the first 100 outcomes after the shift, and the point bias after it. */
function levelShift(ExpandedPredictions, options = {}) {
  const rows = iidStream(11000, 23, { shiftAt: 5000 })
  const first100 = runKey(ExpandedPredictions, rows, (i) => i >= 5000 && i < 5100, options)
  const bias = {}
  for (const [name, a, b] of [['400-1000', 400, 1000], ['900-1000', 900, 1000], ['2000-5000', 2000, 5000]]) {
    bias[name] = runKey(ExpandedPredictions, rows, (i) => i >= 5000 + a && i < 5000 + b, options).known.bias
  }
  return { first100, bias }
}

/**
 * Fresh instances: p95/p99 coverage of the predictions served while the window held
 * fewer than 20 residuals (the first prediction, the old rule alone, is not counted:
 * nothing has been learned to calibrate), and while it held 20-98.
 */
function smallWindows(ExpandedPredictions, instances = 200) {
  const small = { known: counter(), unknown: counter() }
  const mid = { known: counter(), unknown: counter() }
  for (let s = 0; s < instances; s++) {
    const p = new ExpandedPredictions()
    iidStream(100, 1000 + s).forEach(({ out, latency }, i) => {
      // Residuals held before outcome i: i − 1 (the first outcome is not scored).
      const held = i - 1
      const g = held >= 1 && held < 20 ? small : held >= 20 && held < 99 ? mid : null
      if (g) {
        score(g.known, p.predictLatencySync({ ...KEY, outputTokens: out }), latency)
        score(g.unknown, p.predictLatencySync(KEY), latency)
      }
      p.recordOutcomeSync(KEY, { latencyMs: latency, outputTokens: out })
    })
  }
  return {
    below20: { known: summary(small.known), unknown: summary(small.unknown) },
    from20to98: { known: summary(mid.known), unknown: summary(mid.unknown) },
  }
}

module.exports = { syntheticDay, iid, levelShift, smallWindows, iidStream }
