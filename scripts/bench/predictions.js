'use strict'
// ExpandedPredictions: ns per call of predictAllSync / recordOutcomeSync (and the compat
// Promise form) next to a plain-JS implementation of the old fixed formulas; then the
// learning figures on the documented synthetic stream (scripts/lib/request-stream.js).

const { ExpandedPredictions } = require('../..')
const { requestStream } = require('../lib/request-stream.js')
const { nsPerCall, nsPerAwait, table } = require('./harness.js')

const BASES = { 'ai-gm': 80, oracle: 60, 'code-roach': 70, 'daisy-chain': 65, 'first-mate': 40, 'game-app': 50 }
/** The old module's predictAll, in plain JS. */
function oldPredictAll(c = {}) {
  const latency = Math.round((BASES[c.serviceName] || 50) * (c.cacheHit ? 0.1 : 1) + (c.inputSize || 0) * 0.01)
  const base = 0.001
  const inputTokens = (c.inputTokens || 0) * 0.000001
  const outputTokens = (c.outputTokens || 0) * 0.000002
  let cost = base + inputTokens + outputTokens
  const cacheDiscount = c.cacheHit ? cost * 0.9 : 0
  if (c.cacheHit) cost *= 0.1
  const s = ((c.quality || 0) / 10) * 0.4 + Math.max(0, 1 - (c.latency || 0) / 1000) * 0.2 + (c.relevance ?? 0.5) * 0.2 + (c.coherence ?? 0.5) * 0.2
  return {
    latency: { latency, confidence: 0.7, unit: 'ms', factors: { baseLatency: BASES[c.serviceName] || 50, cacheHit: !!c.cacheHit, inputSize: c.inputSize || 0 } },
    cost: { cost, confidence: 0.8, unit: 'credits', breakdown: { base, inputTokens, outputTokens, cacheDiscount } },
    satisfaction: { satisfaction: Math.min(5, Math.max(1, 1 + 4 * s)), confidence: 0.75, scale: '1-5', factors: { quality: c.quality || 0, latency: c.latency || 0, relevance: c.relevance ?? 0.5, coherence: c.coherence ?? 0.5 } },
    resources: { cpu: Math.min(100, Math.round(20 + (c.inputSize || 0) * 0.1)), memory: Math.min(100, Math.round(30 + (c.batchSize || 1) * 5)), network: Math.min(100, Math.round(5 + (c.inputSize || 0) * 0.01)), confidence: 0.7, unit: 'percentage' },
    timestamp: Date.now(),
  }
}

async function run() {
  console.log('\n## ExpandedPredictions: ns per call (median of rounds)\n')
  const stream = requestStream(12000, 11)
  const p = new ExpandedPredictions()
  for (const { context, outcome } of stream.slice(0, 2000)) p.recordOutcomeSync(context, outcome)
  const ctxs = stream.slice(2000, 2064).map((r) => r.context)
  const outs = stream.slice(2000, 2064).map((r) => r.outcome)
  const N = 200_000
  const all = nsPerCall((i) => p.predictAllSync(ctxs[i & 63]), N)
  const allP = await nsPerAwait((i) => p.predictAll(ctxs[i & 63]), N / 4)
  const lat = nsPerCall((i) => p.predictLatencySync(ctxs[i & 63]), N)
  const old = nsPerCall((i) => oldPredictAll(ctxs[i & 63]), N)
  const rec = nsPerCall((i) => p.recordOutcomeSync(ctxs[i & 63], outs[i & 63]), N)
  const batchCtx = stream.slice(0, 1000).map((r) => r.context)
  const batch = nsPerCall(() => p.predictAllBatch(batchCtx), 50) / 1000
  table(
    [
      ['predictAllSync', all.toFixed(0), `${(all / old).toFixed(2)}× old JS`],
      ['predictAll (Promise)', allP.toFixed(0), `+${(allP - all).toFixed(0)} over Sync`],
      ['predictLatencySync', lat.toFixed(0), ''],
      ['predictAllBatch (per context)', batch.toFixed(0), '1000 contexts per call'],
      ['recordOutcomeSync', rec.toFixed(0), 'all 8 outcome fields'],
      ['old JS predictAll (fixed formulas)', old.toFixed(0), ''],
    ],
    ['method', 'ns/call', 'note'],
  )

  // Learning figures on the synthetic stream: 10k outcomes, then 2k held out.
  const q = new ExpandedPredictions()
  for (const { context, outcome } of stream.slice(0, 10000)) q.recordOutcomeSync({ ...context, latency: outcome.latencyMs }, outcome)
  let known = 0, blind = 0, cold = 0, cover = 0
  const held = stream.slice(10000)
  for (const { context, outcome } of held) {
    const k = q.predictLatencySync({ ...context, outputTokens: outcome.outputTokens })
    known += Math.abs(k.latency - outcome.latencyMs)
    blind += Math.abs(q.predictLatencySync(context).latency - outcome.latencyMs)
    cold += Math.abs(oldPredictAll({ ...context, outputTokens: outcome.outputTokens }).latency.latency - outcome.latencyMs)
    cover += outcome.latencyMs <= k.p95 ? 1 : 0
    q.recordOutcomeSync({ ...context, latency: outcome.latencyMs }, outcome)
  }
  const n = held.length
  console.log(`\nlatency MAE on ${n} held-out requests after 10k outcomes: ${(known / n).toFixed(0)} ms with output tokens known (${(cold / known).toFixed(1)}× below the cold-start rule's ${(cold / n).toFixed(0)} ms), ${(blind / n).toFixed(0)} ms with them unknown (${(cold / blind).toFixed(1)}×); p95 coverage ${((100 * cover) / n).toFixed(1)} %`)
  const hard = hardData()
  return { all, allP, rec, old, batch, ratio: cold / known, coverage: cover / n, hard }
}

/**
 * Issue 11's cases (scripts/lib/prediction-experiments.js documents the streams), after
 * and, with PREDICTIONS_BEFORE=<path of an older checkout, built>, before. Without it the
 * point-estimate rows still compare against `forgetting: 1`, the old never-forgetting
 * corrections.
 */
function hardData() {
  const ex = require('../lib/prediction-experiments.js')
  const Before = process.env.PREDICTIONS_BEFORE ? require(process.env.PREDICTIONS_BEFORE).ExpandedPredictions : null
  const pct = (x) => `${(100 * x).toFixed(1)} %`
  const trip = (r) => `${pct(r.p50)} / ${pct(r.p95)} / ${pct(r.p99)}`
  console.log('\n## ExpandedPredictions on hard data (issue 11): p50 / p95 / p99 coverage, target 50 / 93-97 / ≥ 98 %\n')
  const rows = []
  const add = (name, run, pick) => {
    const now = run(ExpandedPredictions)
    const before = Before ? run(Before) : null
    rows.push([name, pick(now), before ? pick(before) : 'set PREDICTIONS_BEFORE'])
    return now
  }
  for (const [name, run] of [['synthetic day', ex.syntheticDay], ['one key, i.i.d.', ex.iid]]) {
    add(`${name}, outputTokens known`, run, (r) => trip(r.known))
    add(`${name}, outputTokens unknown`, run, (r) => trip(r.unknown))
  }
  const shift = (E) => ex.levelShift(E)
  add('level shift: first 100 after, known', shift, (r) => trip(r.first100.known))
  add('level shift: first 100 after, unknown', shift, (r) => trip(r.first100.unknown))
  const small = (E) => ex.smallWindows(E)
  add('below 20 residuals, known', small, (r) => trip(r.below20.known))
  add('below 20 residuals, unknown', small, (r) => trip(r.below20.unknown))
  add('20-98 residuals, known', small, (r) => trip(r.from20to98.known))
  add('20-98 residuals, unknown', small, (r) => trip(r.from20to98.unknown))
  table(rows, ['case', 'after', 'before'])

  console.log('\nPoint estimate after latency doubles (bias = Σ(predicted − actual) / Σ actual; target |bias| ≤ 10 % within 1,000) and stationary MAE (target within 5 %):\n')
  const now = ex.levelShift(ExpandedPredictions)
  const never = ex.levelShift(ExpandedPredictions, { forgetting: 1 })
  const b = (r, k) => pct(r.bias[k])
  const prow = ['400-1000', '900-1000', '2000-5000'].map((k) => [`bias ${k} outcomes after the shift`, b(now, k), b(never, k)])
  for (const [name, run] of [['one key, i.i.d.', ex.iid], ['synthetic day', ex.syntheticDay]]) {
    const a = run(ExpandedPredictions)
    const o = run(ExpandedPredictions, { forgetting: 1 })
    prow.push([`stationary MAE, ${name}, known`, `${a.known.mae.toFixed(0)} ms (${(a.known.mae / o.known.mae).toFixed(3)}×)`, `${o.known.mae.toFixed(0)} ms`])
    prow.push([`stationary MAE, ${name}, unknown`, `${a.unknown.mae.toFixed(0)} ms (${(a.unknown.mae / o.unknown.mae).toFixed(3)}×)`, `${o.unknown.mae.toFixed(0)} ms`])
  }
  table(prow, ['', 'forgetting 0.997 (default)', 'forgetting 1 (before)'])
  return rows
}

module.exports = { run }
if (require.main === module) run()
