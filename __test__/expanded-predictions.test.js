'use strict'
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { ExpandedPredictions, getExpandedPredictions } = require('..')
const shim = require('../lib/mlops/expandedPredictions')
const { requestStream } = require('../scripts/lib/request-stream.js')

// The contract's cold-start rules, transcribed.
const BASES = { 'ai-gm': 80, oracle: 60, 'code-roach': 70, 'daisy-chain': 65, 'first-mate': 40, 'game-app': 50 }
function oldLatency(c) {
  return Math.round((BASES[c.serviceName] ?? 50) * (c.cacheHit ? 0.1 : 1) + 0.01 * (c.inputSize || 0))
}
function oldCost(c) {
  const sum = 0.001 + 1e-6 * (c.inputTokens || 0) + 2e-6 * (c.outputTokens || 0)
  return c.cacheHit ? sum * 0.1 : sum
}
function oldSatisfaction(c) {
  const s = (0.4 * (c.quality || 0)) / 10 + 0.2 * Math.max(0, 1 - (c.latency || 0) / 1000) + 0.2 * (c.relevance ?? 0.5) + 0.2 * (c.coherence ?? 0.5)
  return Math.min(5, Math.max(1, 1 + 4 * s))
}
function oldResources(c) {
  const size = c.inputSize || 0
  return { cpu: Math.min(100, Math.round(20 + 0.1 * size)), memory: Math.min(100, Math.round(30 + 5 * (c.batchSize || 1))), network: Math.min(100, Math.round(5 + 0.01 * size)) }
}

const CONTEXTS = [
  {},
  { serviceName: 'ai-gm', cacheHit: true, inputSize: 250, inputTokens: 1000, outputTokens: 500, quality: 8, latency: 200, batchSize: 4 },
  { serviceName: 'oracle', inputSize: 1200, inputTokens: 30, quality: 3, relevance: 0.9, coherence: 0.1, latency: 1500 },
  { serviceName: 'code-roach', provider: 'openai', inputSize: 5000, batchSize: 30 },
  { serviceName: 'first-mate', cacheHit: false, quality: 10, relevance: 1, coherence: 1 },
  { serviceName: 'unknown-service', inputSize: 99 },
  // issue 9: memory is 30 + 5 × (batchSize || 1), so 35 here, not 30.
  { serviceName: 'test', inputSize: 100 },
  { inputSize: 100 },
  { serviceName: 'game-app', provider: 'anthropic', batchSize: 0, cacheHit: true, inputSize: 10 },
  { provider: 'openai', batchSize: 3, cacheHit: true, inputTokens: 10, outputTokens: 20 },
  { serviceName: 'daisy-chain', batchSize: 20, inputSize: 2000, quality: 0 },
]

test('shim, root and singleton export the same pair', () => {
  assert.equal(shim.ExpandedPredictions, ExpandedPredictions)
  assert.equal(shim.getExpandedPredictions, getExpandedPredictions)
  assert.equal(getExpandedPredictions(), getExpandedPredictions())
})

test('before any outcome: exactly the contract cold-start values and shapes', async () => {
  const p = new ExpandedPredictions()
  assert.equal(await p.initialize(), true)
  for (const c of CONTEXTS) {
    const lat = await p.predictLatency(c)
    assert.equal(lat.latency, oldLatency(c), JSON.stringify(c))
    assert.equal(lat.confidence, 0.7)
    assert.equal(lat.unit, 'ms')
    assert.equal(typeof lat.factors, 'object')
    const cost = await p.predictCost(c)
    assert.equal(cost.cost, oldCost(c), JSON.stringify(c))
    assert.equal(cost.confidence, 0.8)
    assert.equal(cost.unit, 'credits')
    assert.deepEqual(Object.keys(cost.breakdown), ['base', 'inputTokens', 'outputTokens', 'cacheDiscount'])
    const sat = await p.predictSatisfaction(c)
    assert.ok(Math.abs(sat.satisfaction - oldSatisfaction(c)) < 1e-12, `${sat.satisfaction} vs ${oldSatisfaction(c)}`)
    assert.equal(sat.confidence, 0.75)
    assert.equal(sat.scale, '1-5')
    const res = await p.predictResources(c)
    assert.deepEqual({ cpu: res.cpu, memory: res.memory, network: res.network }, oldResources(c))
    assert.equal(res.confidence, 0.7)
    assert.equal(res.unit, 'percentage')
    const t0 = Date.now()
    const all = await p.predictAll(c)
    assert.deepEqual(Object.keys(all), ['latency', 'cost', 'satisfaction', 'resources', 'timestamp'])
    assert.ok(all.timestamp >= t0 && all.timestamp <= Date.now())
    assert.equal(all.latency.latency, lat.latency)
    assert.deepEqual(p.predictAllSync(c).cost, cost)
  }
})

test('price table: exact cost with cache reads; provider/model keys; unknown models fall back', () => {
  const p = new ExpandedPredictions()
  const c = p.predictCostSync({ model: 'gpt-4o', provider: 'openai', inputTokens: 1000, cachedInputTokens: 400, outputTokens: 200 })
  assert.equal(c.unit, 'usd')
  assert.equal(c.confidence, 0.99)
  assert.ok(Math.abs(c.cost - (600 * 2.5e-6 + 400 * 1.25e-6 + 200 * 1e-5)) < 1e-15)
  assert.ok(Math.abs(c.breakdown.cacheDiscount - 400 * (2.5e-6 - 1.25e-6)) < 1e-15)
  const gem = p.predictCostSync({ provider: 'gemini', model: 'gemini-2.0-flash', inputTokens: 1000, outputTokens: 1000 })
  assert.equal(gem.unit, 'usd', '"gemini/gemini-2.0-flash" is found through provider/model')
  assert.ok(Math.abs(gem.cost - (1000 * 1e-7 + 1000 * 4e-7)) < 1e-15)
  const unknown = p.predictCostSync({ model: 'my-finetune', inputTokens: 1000, outputTokens: 100 })
  assert.equal(unknown.unit, 'credits')
  assert.equal(unknown.cost, oldCost({ inputTokens: 1000, outputTokens: 100 }))
  assert.ok(unknown.confidence < 0.8, 'a named but unpriced model is less certain than the old rule claimed')
  // Replace the table: LiteLLM's format, as an object or a file.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlops-prices-'))
  const file = path.join(dir, 'prices.json')
  fs.writeFileSync(file, JSON.stringify({ sample_spec: { max_tokens: 'n' }, 'my-finetune': { input_cost_per_token: 1e-6, output_cost_per_token: 2e-6, litellm_provider: 'custom' } }))
  assert.equal(p.setPriceTable(file), 1)
  assert.equal(p.predictCostSync({ model: 'my-finetune', inputTokens: 1000, outputTokens: 100 }).cost, 1000 * 1e-6 + 100 * 2e-6)
  assert.equal(p.predictCostSync({ model: 'gpt-4o', inputTokens: 1 }).unit, 'credits', 'the old table is gone')
  assert.throws(() => p.setPriceTable({ x: { input_cost_per_token: -1, output_cost_per_token: 0 } }), /priceTable\["x"\]\.input_cost_per_token/)
  assert.throws(() => p.setPriceTable(path.join(dir, 'missing.json')), /cannot read/)
  assert.throws(() => p.setPriceTable(42), TypeError)
  const q = new ExpandedPredictions({ priceTable: { 'm1': { input_cost_per_token: 0, output_cost_per_token: 1 } } })
  assert.equal(q.predictCostSync({ model: 'm1', outputTokens: 3 }).cost, 3)
  fs.rmSync(dir, { recursive: true })
})

test('learning: latency MAE ≥ 3× below the cold-start rule after 10k outcomes, p95 covers 93-97 % on a held-out stream', () => {
  const p = new ExpandedPredictions()
  const stream = requestStream(14000, 3)
  for (const { context, outcome } of stream.slice(0, 10000)) p.recordOutcomeSync({ ...context, latency: outcome.latencyMs }, outcome)
  let learned = 0
  let cold = 0
  let covered = 0
  const held = stream.slice(10000)
  for (const { context, outcome } of held) {
    const c = { ...context, outputTokens: outcome.outputTokens }
    const r = p.predictLatencySync(c)
    learned += Math.abs(r.latency - outcome.latencyMs)
    cold += Math.abs(oldLatency(c) - outcome.latencyMs)
    covered += outcome.latencyMs <= r.p95 ? 1 : 0
    p.recordOutcomeSync({ ...context, latency: outcome.latencyMs }, outcome)
  }
  const ratio = cold / learned
  const coverage = covered / held.length
  assert.ok(ratio >= 3, `latency MAE ${learned / held.length} vs cold ${cold / held.length}: ${ratio.toFixed(2)}×`)
  assert.ok(coverage >= 0.93 && coverage <= 0.97, `p95 coverage ${coverage}`)
  const r = p.predictLatencySync({ serviceName: 'oracle', provider: 'openai', model: 'gpt-4o-mini', inputTokens: 500, outputTokens: 60 })
  assert.ok(r.confidence > 0.7 && r.factors.learned && r.factors.samples > 100)
  assert.ok(r.p50 <= r.p95 && r.p95 <= r.p99)
  // Output tokens are learned per service/model and used for cost when not given.
  const cost = p.predictCostSync({ serviceName: 'ai-gm', provider: 'openai', model: 'gpt-4o', inputTokens: 800 })
  assert.equal(cost.outputTokensPredicted, true)
  assert.ok(cost.outputTokens > 200 && cost.outputTokens < 500, `${cost.outputTokens}`)
  // Satisfaction and resources moved from the prior toward the recorded outcomes.
  const sat = p.predictSatisfactionSync({ serviceName: 'ai-gm', quality: 9, latency: 8000 })
  assert.ok(sat.satisfaction < oldSatisfaction({ quality: 9, latency: 8000 }), 'slow answers were recorded as less satisfying')
  assert.ok(sat.factors.learned)
  const res = p.predictResourcesSync({ serviceName: 'code-roach', inputSize: 6000, batchSize: 8 })
  assert.ok(res.samples > 0 && res.cpu !== oldResources({ inputSize: 6000 }).cpu)
})

test('bad input: TypeError/RangeError naming the field from Sync forms and recordOutcome; Promise predictions resolve a fallback with error', async () => {
  const p = new ExpandedPredictions()
  const cases = [
    [() => p.predictLatencySync('x'), TypeError, /context must be an object/],
    [() => p.predictCostSync({ inputTokens: -5 }), RangeError, /context\.inputTokens must be ≥ 0/],
    [() => p.predictCostSync({ inputTokens: NaN }), RangeError, /context\.inputTokens/],
    [() => p.predictAllSync({ latency: '100ms' }), TypeError, /context\.latency must be a number/],
    [() => p.predictAllSync({ serviceName: [7] }), TypeError, /context\.serviceName/],
    [() => p.predictAllSync({ model: 'x'.repeat(1000) }), RangeError, /context\.model must be at most 256 characters/],
    [() => p.predictAllSync({ cacheHit: 'yes' }), TypeError, /context\.cacheHit/],
    [() => p.predictAllSync({ hour: 25 }), RangeError, /context\.hour/],
    [() => p.recordOutcomeSync({}, { latencyMs: -1 }), RangeError, /outcome\.latencyMs/],
    [() => p.recordOutcomeSync({}, { satisfaction: 9 }), RangeError, /outcome\.satisfaction must be ≤ 5/],
    [() => p.recordOutcomeSync({}, {}), TypeError, /at least one of/],
    [() => p.recordOutcomeSync({}), TypeError, /outcome is required/],
    [() => p.predictAllBatch([{}, { inputTokens: Infinity }]), RangeError, /contexts\[1\]\.inputTokens/],
    [() => p.predictAllBatch('x'), TypeError, /contexts/],
    [() => new ExpandedPredictions({ outputDecay: 2 }), RangeError, /options\.outputDecay/],
  ]
  for (const [fn, type, msg] of cases) assert.throws(fn, (e) => e instanceof type && msg.test(e.message), String(fn))
  await assert.rejects(p.recordOutcome({}, { cost: -1 }), RangeError)
  // issue 9 changed this: one bad field falls back alone, with a warning on the
  // predictions it affects (it used to drop the whole context and set `error`).
  const fb = await p.predictAll({ outputTokens: -1 })
  assert.match(fb.warnings[0], /context\.outputTokens must be ≥ 0/)
  assert.match(fb.latency.warnings[0], /context\.outputTokens/)
  assert.equal(fb.error, undefined)
  assert.equal(fb.latency.latency, 50, 'outputTokens falls back to its default')
  const whole = await p.predictAll('not a context')
  assert.match(whole.error, /context must be an object/)
  assert.match(whole.resources.warnings[0], /the empty context was used/)
  const c = await p.predictCost(null)
  assert.equal(c.error, undefined, 'null context is the empty context, not an error')
  assert.equal(p.getStatistics().outcomes, 0, 'nothing bad was learned')
  assert.equal(p.predictLatencySync({ serviceName: 'ai-gm' }).latency, 80, 'still answers correctly after bad calls')
})

test('predictAllBatch matches single calls; state survives save/load; corrupt state is refused', async () => {
  const p = new ExpandedPredictions()
  for (const { context, outcome } of requestStream(500, 5)) p.recordOutcomeSync(context, outcome)
  const cs = requestStream(20, 6).map((r) => r.context)
  const batch = p.predictAllBatch(cs)
  cs.forEach((c, i) => {
    const one = p.predictAllSync(c)
    assert.deepEqual({ ...batch[i], timestamp: 0 }, { ...one, timestamp: 0 })
  })
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlops-pred-'))
  const file = path.join(dir, 'predictions.json')
  assert.equal(await p.saveState(file), true)
  const q = new ExpandedPredictions()
  q.predictAllSync({ serviceName: 'zzz', model: 'other' }) // different ids than p
  assert.equal(await q.loadState(file), true)
  for (const c of cs) assert.deepEqual({ ...q.predictAllSync(c), timestamp: 0 }, { ...p.predictAllSync(c), timestamp: 0 })
  assert.deepEqual(q.predictAllBatch(cs).map((r) => r.latency), batch.map((r) => r.latency))
  fs.writeFileSync(file, '{"format":"mlops-native/expanded-predictions","keys":[[[9,9,9],{}]]}')
  await assert.rejects(q.loadState(file), /schema|unknown/)
  await assert.rejects(q.loadState(path.join(dir, 'nope.json')), /cannot read/)
  for (const c of cs) assert.deepEqual({ ...q.predictAllSync(c), timestamp: 0 }, { ...p.predictAllSync(c), timestamp: 0 }, 'unchanged after a refused load')
  fs.rmSync(dir, { recursive: true })
})

test('quantiles keep the fixed band until enough residuals exist to be conformal', () => {
  const p = new ExpandedPredictions()
  const ctx = { serviceName: 'ai-gm', provider: 'openai', model: 'gpt-4o', inputTokens: 800 }
  p.recordOutcomeSync(ctx, { latencyMs: 5400 })
  const r = p.predictLatencySync(ctx)
  assert.ok(r.latency > 1000, 'one outcome already moves the estimate')
  assert.equal(r.p95, Math.round(r.latency * 1.5))
  assert.equal(r.p99, Math.round(r.latency * 2))
})
