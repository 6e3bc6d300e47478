#!/usr/bin/env node
'use strict'
// npm run demo:predictions [-- --requests N --seed N --every N]
// Streams a synthetic day of requests (scripts/lib/request-stream.js, seeded) through
// ExpandedPredictions: predict first (without the output length, which is not known
// before a request runs), then record the outcome. Prints, per slice of the day, the
// latency MAE of the learned model next to the old cold-start rule, the cost error, and
// how often the predicted p95 covered the actual latency.

const { parseArgs } = require('node:util')
const { ExpandedPredictions } = require('../lib/mlops/expandedPredictions')
const { requestStream } = require('./lib/request-stream.js')

const { values: a } = parseArgs({ options: { requests: { type: 'string', default: '12000' }, seed: { type: 'string', default: '7' }, every: { type: 'string', default: '1000' } } })
const n = Number(a.requests)
const every = Number(a.every)
if (!(Number.isInteger(n) && n > 0 && Number.isInteger(every) && every > 0)) {
  console.error('demo:predictions: --requests and --every must be positive integers')
  process.exit(1)
}
const stream = requestStream(n, Number(a.seed))
const p = new ExpandedPredictions()
const cold = new ExpandedPredictions() // never learns: the old rules

const pad = (x, w) => String(x).padStart(w)
console.log(`ExpandedPredictions on ${n} synthetic requests (seed ${a.seed}); each row is the ${every} requests before it`)
console.log(['requests', 'latency MAE', 'no-output MAE', 'cold-start MAE', 'gain', 'p95 cover', 'cost rel.err', 'satisf. MAE'].map((h, i) => pad(h, i ? 15 : 9)).join(''))
console.log(pad('', 9) + pad('(tokens known)', 15) + pad('(output unknown)', 15))
let w = { lat: 0, blind: 0, cold: 0, cov: 0, costRel: 0, sat: 0, n: 0 }
stream.forEach(({ context, outcome }, i) => {
  // Before the request runs: its latency is unknown; the caller may or may not have an
  // output-length estimate (outputTokens). Both are measured.
  const known = { ...context, outputTokens: outcome.outputTokens }
  const all = p.predictAllSync(known)
  const blind = p.predictAllSync(context)
  const c0 = cold.predictLatencySync(known)
  w.lat += Math.abs(all.latency.latency - outcome.latencyMs)
  w.blind += Math.abs(blind.latency.latency - outcome.latencyMs)
  w.cold += Math.abs(c0.latency - outcome.latencyMs)
  w.cov += outcome.latencyMs <= all.latency.p95 ? 1 : 0
  w.costRel += Math.abs(blind.cost.cost - outcome.cost) / outcome.cost
  // After it ran: satisfaction is predicted from the quality and latency it had.
  const after = { ...context, latency: outcome.latencyMs }
  w.sat += Math.abs(p.predictSatisfactionSync(after).satisfaction - outcome.satisfaction)
  w.n++
  p.recordOutcomeSync(after, outcome)
  if ((i + 1) % every === 0 || i === n - 1) {
    const k = w.n
    console.log(
      pad(i + 1, 9) + pad((w.lat / k).toFixed(0) + ' ms', 15) + pad((w.blind / k).toFixed(0) + ' ms', 15) + pad((w.cold / k).toFixed(0) + ' ms', 15) +
        pad((w.cold / w.lat).toFixed(1) + '×', 15) + pad(((100 * w.cov) / k).toFixed(1) + ' %', 15) + pad(((100 * w.costRel) / k).toFixed(1) + ' %', 15) + pad((w.sat / k).toFixed(2), 15),
    )
    w = { lat: 0, blind: 0, cold: 0, cov: 0, costRel: 0, sat: 0, n: 0 }
  }
})
console.log('\ncost rel.err: cost predicted without the output length (learned per service/model) vs the exact bill.')
const last = p.predictAllSync({ serviceName: 'ai-gm', provider: 'openai', model: 'gpt-4o', inputTokens: 800, hour: 14 })
console.log(`\nexample: ai-gm → openai/gpt-4o, 800 input tokens, 14:00: latency ${last.latency.latency} ms (p50 ${last.latency.p50}, p95 ${last.latency.p95}, p99 ${last.latency.p99}, confidence ${last.latency.confidence.toFixed(2)}),`)
console.log(`         cost $${last.cost.cost.toFixed(5)} (${last.cost.outputTokens} output tokens predicted: ${last.cost.outputTokensPredicted}), satisfaction ${last.satisfaction.satisfaction.toFixed(2)}`)
