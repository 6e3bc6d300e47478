'use strict'
// Issue 13, the ExpandedPredictions part: bounded keys (service × provider × model),
// services and names with least-recently-used eviction; an evicted key answers like a new
// one (the old rule, no learned correction) and is never refused.
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { ExpandedPredictions } = require('..')

const ctx = (i) => ({ serviceName: `tenant-${i}`, provider: 'openai', model: 'm', inputSize: 100, hour: 3 })
const learned = (p, c) => p.predictLatencySync(c).factors.samples

test('eviction order is least recently used; an evicted key answers the cold start and returns neutral', () => {
  const p = new ExpandedPredictions({ maxKeys: 3 })
  for (const i of [0, 1, 2]) p.recordOutcomeSync(ctx(i), { latencyMs: 4000 + i })
  assert.equal(learned(p, ctx(0)), 1, 'touching key 0 makes key 1 the least recently used')
  p.recordOutcomeSync(ctx(3), { latencyMs: 5000 })
  const s = p.getStatistics()
  assert.equal(s.keys, 3)
  assert.equal(s.evictions.keys, 1)
  assert.equal(learned(p, ctx(0)), 1)
  assert.equal(learned(p, ctx(2)), 1)
  assert.equal(learned(p, ctx(3)), 1)
  // Key 1 was evicted: the old rule's answer (base 50 + 0.01 × 100) and its fixed band.
  const back = p.predictLatencySync(ctx(1))
  assert.deepEqual([back.latency, back.factors.samples, back.p95, back.p99], [51, 0, 77, 102])
  assert.notEqual(p.predictLatencySync(ctx(0)).latency, 51, 'a live key keeps its correction')
  // It returns neutral: one outcome is one sample, not its old history.
  p.recordOutcomeSync(ctx(1), { latencyMs: 4001 })
  assert.equal(learned(p, ctx(1)), 1)
})

test('no refusal at 10× the bound, through every entry point; the counters add up', async () => {
  const bound = 200
  const p = new ExpandedPredictions({ maxKeys: bound })
  const n = 10 * bound
  for (let i = 0; i < n; i++) {
    const c = { ...ctx(i), model: `model-${i % 700}` }
    p.predictAllSync(c)
    p.recordOutcomeSync(c, { latencyMs: 1000 + i, satisfaction: 4 })
    if (i % 97 === 0) {
      assert.equal(typeof (await p.predictAll(c)).latency.latency, 'number')
      assert.equal(await p.recordOutcome(c, { cpu: 40 }), true)
    }
  }
  const batch = p.predictAllBatch(Array.from({ length: 3 * bound }, (_, i) => ctx(n + i)))
  assert.equal(batch.length, 3 * bound, 'a batch with more names than the tables hold is still answered')
  assert.equal(batch[0].latency.latency, 51)
  const s = p.getStatistics()
  assert.equal(s.keys, bound)
  assert.equal(s.services, bound)
  assert.ok(s.names.services <= bound && s.names.models <= bound)
  assert.equal(s.keys + s.evictions.keys, n, 'every key created is either live or counted as evicted')
  assert.equal(s.services + s.evictions.services, n)
  // Names: n + 3·bound distinct service names and 700 model names passed through tables
  // of `bound` names each; each eviction is counted (a name can leave and come back).
  assert.ok(s.names.services + s.names.providers + s.names.models + s.evictions.names >= n + 3 * bound + 700 + 1)
  assert.equal(s.names.providers, 1)
  assert.equal(s.outcomes, n + Math.ceil(n / 97))
})

test('the memory bound evicts by estimated bytes', () => {
  const p = new ExpandedPredictions({ maxMemoryMb: 0.1 })
  for (let i = 0; i < 2000; i++) p.recordOutcomeSync(ctx(i), { latencyMs: 900 })
  const s = p.getStatistics()
  assert.ok(s.memoryBytes <= 0.1e6, `${s.memoryBytes} bytes`)
  assert.ok(s.keys > 10 && s.keys < 2000, `${s.keys} keys`)
  assert.equal(s.keys + s.evictions.keys, 2000)
})

test('compact keys: the default 32 MB budget holds ~18,700 tenants that each learned latency, cost, satisfaction and cpu', () => {
  const p = new ExpandedPredictions()
  const n = 20_000
  for (let i = 0; i < n; i++) {
    const c = { ...ctx(i), model: `ft-${i % 50}`, inputTokens: 400 }
    p.predictAllSync(c)
    p.recordOutcomeSync(c, { latencyMs: 800 + (i % 700), outputTokens: 120, satisfaction: 4, cpu: 30 })
  }
  const s = p.getStatistics()
  assert.equal(s.maxMemoryMb, 32)
  assert.ok(s.memoryBytes <= 32e6, `${s.memoryBytes} bytes`)
  // A key with its own service is ~1.7 KB (it was ~2.4 KB: 13,000 of them would have fit).
  assert.ok(s.memoryBytes / s.keys < 1800, `${(s.memoryBytes / s.keys).toFixed(0)} bytes per key`)
  assert.ok(s.keys >= 18_000, `${s.keys} keys live`)
  assert.equal(s.keys + s.evictions.keys, n)
})

test('state: evicted keys are not saved, recency order survives, format-1 files load', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlops-card-'))
  const file = path.join(dir, 'state.json')
  const p = new ExpandedPredictions({ maxKeys: 50 })
  for (let i = 0; i < 500; i++) p.recordOutcomeSync(ctx(i), { latencyMs: 1000 + i })
  assert.equal(await p.saveState(file), true)
  // Format 2: a JSON header line, then binary records.
  const raw = fs.readFileSync(file)
  const saved = JSON.parse(raw.subarray(0, raw.indexOf(10)).toString('utf8'))
  assert.equal(saved.formatVersion, 2)
  assert.equal(saved.keyCount, 50, 'only the live keys are written')
  assert.equal(saved.serviceCount, 50)
  const q = new ExpandedPredictions({ maxKeys: 50 })
  assert.equal(await q.loadState(file), true)
  assert.equal(q.getStatistics().keys, 50)
  for (const i of [450, 475, 499]) assert.equal(q.predictLatencySync(ctx(i)).latency, p.predictLatencySync(ctx(i)).latency)
  assert.equal(q.predictLatencySync(ctx(10)).factors.samples, 0)
  // Loaded least recently used first, and 450 was just used: one more key evicts 451.
  q.recordOutcomeSync(ctx(1000), { latencyMs: 1 })
  assert.equal(q.predictLatencySync(ctx(451)).factors.samples, 0)
  assert.equal(q.predictLatencySync(ctx(450)).factors.samples, 1)
  assert.equal(q.predictLatencySync(ctx(452)).factors.samples, 1)
  // A state file written by the previous release (format 1) loads with the same answers.
  const old = new ExpandedPredictions()
  assert.equal(await old.loadState(path.join(__dirname, 'fixtures', 'predictions-state-v1.json')), true)
  const { requestStream } = require('../scripts/lib/request-stream.js')
  const want = [[4394, 0.006105, 3.2345580186159104, 48], [844, 0.0001029, 3.1142610688446974, 38], [5632, 0.00643, 3.1243787316284437, 48]]
  requestStream(3, 9).forEach(({ context }, i) => {
    const r = old.predictAllSync(context)
    assert.equal(r.latency.latency, want[i][0])
    assert.ok(Math.abs(r.cost.cost - want[i][1]) < 1e-12)
    assert.ok(Math.abs(r.satisfaction.satisfaction - want[i][2]) < 1e-9)
    assert.equal(r.resources.cpu, want[i][3])
  })
  assert.equal(old.getStatistics().outcomes, 200)
  fs.rmSync(dir, { recursive: true })
})

test('property: any stream of calls over many names stays within the bounds and never refuses', () => {
  const fc = require('fast-check')
  const op = fc.record({
    record: fc.boolean(),
    service: fc.integer({ min: 0, max: 5000 }),
    model: fc.oneof(fc.integer({ min: 0, max: 50 }), fc.constant(null)),
    latency: fc.double({ min: 1, max: 1e5, noNaN: true }),
  })
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 12 }), fc.array(op, { maxLength: 150 }), (maxKeys, ops) => {
      const p = new ExpandedPredictions({ maxKeys })
      for (const o of ops) {
        const c = { serviceName: o.service, model: o.model, provider: 'x', hour: 1 }
        if (o.record) {
          assert.equal(p.recordOutcomeSync(c, { latencyMs: o.latency }), true)
          // The key just recorded is live, whatever came before.
          assert.ok(p.predictLatencySync(c).factors.samples >= 1)
        } else {
          assert.ok(Number.isFinite(p.predictAllSync(c).latency.latency))
        }
      }
      const s = p.getStatistics()
      assert.ok(s.keys <= maxKeys && s.services <= maxKeys)
      assert.ok(s.names.services <= maxKeys && s.names.models <= maxKeys)
    }),
    { numRuns: 60, seed: 13 },
  )
})
