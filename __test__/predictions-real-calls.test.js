'use strict'
// Issue 9: the calls the services really make to ExpandedPredictions (numbers from the
// database as strings, numeric names, one bad field among good ones), each checked
// against the old module's answer (the contract's cold-start rules) or the documented
// intended difference.
const test = require('node:test')
const assert = require('node:assert/strict')
const { ExpandedPredictions } = require('..')

const BASES = { 'ai-gm': 80, oracle: 60, 'code-roach': 70, 'daisy-chain': 65, 'first-mate': 40, 'game-app': 50 }
// The old module's arithmetic, with JS coercion of numeric strings as it happened there.
const num = (x) => (x === undefined || x === null ? 0 : Number(x))
const oldLatency = (c) => Math.round((BASES[c.serviceName] ?? 50) * (c.cacheHit ? 0.1 : 1) + 0.01 * num(c.inputSize))
const oldCost = (c) => (0.001 + 1e-6 * num(c.inputTokens) + 2e-6 * num(c.outputTokens)) * (c.cacheHit ? 0.1 : 1)
const oldResources = (c) => ({
  cpu: Math.min(100, Math.round(20 + 0.1 * num(c.inputSize))),
  memory: Math.min(100, Math.round(30 + 5 * (num(c.batchSize) || 1))),
  network: Math.min(100, Math.round(5 + 0.01 * num(c.inputSize))),
})

test('numeric strings in every context number give the same answers as numbers', async () => {
  const p = new ExpandedPredictions()
  const lat = await p.predictLatency({ serviceName: 'ai-gm', inputSize: '100' })
  assert.equal(lat.latency, 81, 'the old module answered 81; this package used to answer 50')
  assert.equal(lat.warnings, undefined)
  assert.equal(lat.factors.inputSize, 100, 'factors report the number used')
  const asNumbers = { serviceName: 'oracle', inputSize: 1200, inputTokens: 30, outputTokens: 7, quality: 3, relevance: 0.9, coherence: 0.1, latency: 1500, batchSize: 4, concurrentRequests: 2, hour: 5, cachedInputTokens: 10, maxTokens: 50, historicalSatisfaction: 4 }
  const asStrings = Object.fromEntries(Object.entries(asNumbers).map(([k, x]) => [k, typeof x === 'number' ? ` ${x} ` : x]))
  const a = p.predictAllSync(asNumbers)
  const b = p.predictAllSync(asStrings)
  assert.deepEqual({ ...b, timestamp: 0 }, { ...a, timestamp: 0 })
  assert.deepEqual({ ...(await p.predictAll(asStrings)), timestamp: 0 }, { ...a, timestamp: 0 })
  assert.equal(p.recordOutcomeSync(asStrings, { latencyMs: '900', outputTokens: '40', satisfaction: '4.5' }), true)
  assert.equal(p.getStatistics().outcomes, 1)
})

test('numeric model and service names become their decimal strings', () => {
  const p = new ExpandedPredictions()
  const r = p.predictAllSync({ serviceName: 101, model: 7, provider: 3 })
  assert.equal(r.latency.factors.serviceName, '101')
  assert.equal(r.cost.model, '7')
  p.recordOutcomeSync({ serviceName: 101, model: 7 }, { latencyMs: 4000 })
  assert.equal(p.predictLatencySync({ serviceName: '101', model: '7' }).factors.samples, 1, '101 and "101" are one key')
})

test('one bad field falls back alone, with a warning on each prediction it affects', async () => {
  const p = new ExpandedPredictions()
  const r = await p.predictAll({ serviceName: 'ai-gm', inputSize: 'a lot', quality: 8, batchSize: 2 })
  assert.equal(r.latency.latency, 80, 'serviceName still counts; inputSize takes its default 0')
  assert.match(r.latency.warnings[0], /^context\.inputSize must be a number, got the string "a lot"; its default was used$/)
  assert.match(r.resources.warnings[0], /context\.inputSize/)
  assert.equal(r.resources.memory, 40, 'batchSize 2 still used')
  assert.equal(r.cost.warnings, undefined, 'cost does not read inputSize')
  assert.equal(r.satisfaction.warnings, undefined)
  assert.deepEqual(r.warnings, r.latency.warnings)
  // Each single form carries the warnings it is affected by, never `error`.
  const cost = await p.predictCost({ inputTokens: -3, outputTokens: '200', model: { id: 1 } })
  assert.equal(cost.cost, oldCost({ outputTokens: 200 }))
  assert.equal(cost.warnings.length, 2)
  assert.match(cost.warnings.join('\n'), /context\.inputTokens must be ≥ 0/)
  assert.match(cost.warnings.join('\n'), /context\.model must be a string/)
  assert.equal(cost.error, undefined)
  const sat = await p.predictSatisfaction({ quality: 10, relevance: 'high', coherence: 1 })
  assert.equal(sat.factors.relevance, 0.5)
  assert.equal(sat.warnings.length, 1)
  // A throwing getter is one bad field too.
  const ctx = { serviceName: 'oracle', get inputSize() { throw new Error('db closed') } }
  const lat = await p.predictLatency(ctx)
  assert.equal(lat.latency, 60)
  assert.match(lat.warnings[0], /context\.inputSize could not be read: db closed/)
  // The Sync forms stay strict: the first bad field throws, naming it.
  assert.throws(() => p.predictLatencySync({ inputSize: 'a lot' }), /context\.inputSize must be a number/)
})

test('cold-start parity: resources.memory = 30 + 5 × (batchSize || 1), and the other old values', async () => {
  const p = new ExpandedPredictions()
  const r = await p.predictResources({ serviceName: 'test', inputSize: 100 })
  assert.deepEqual([r.cpu, r.memory, r.network], [30, 35, 6])
  const contexts = []
  for (const serviceName of [undefined, 'ai-gm', 'first-mate', 'test']) {
    for (const batchSize of [undefined, 0, 1, 4, '8', 30]) {
      for (const cacheHit of [undefined, true, false]) {
        for (const provider of [undefined, 'openai']) contexts.push({ serviceName, batchSize, cacheHit, provider, inputSize: 100 * contexts.length, inputTokens: 10 * contexts.length, outputTokens: 3 * contexts.length })
      }
    }
  }
  for (const c of contexts) {
    const all = await p.predictAll(c)
    assert.equal(all.warnings, undefined)
    assert.deepEqual([all.resources.cpu, all.resources.memory, all.resources.network], Object.values(oldResources(c)), JSON.stringify(c))
    assert.equal(all.latency.latency, oldLatency(c), JSON.stringify(c))
    assert.equal(all.cost.cost, oldCost(c), JSON.stringify(c))
    assert.equal(all.resources.confidence, 0.7)
    assert.equal(all.latency.confidence, 0.7)
  }
})
