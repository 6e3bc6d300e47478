'use strict'
// Issue 13 for AdvancedEnsemble: bounded per-key state with least-recently-used eviction,
// no valid call ever refused, O(1) statistics, paged per-context detail, state files that
// hold only the live keys.
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { AdvancedEnsemble } = require('..')

const preds = (y) => [{ value: y + 0.1, confidence: 0.8, model: 'a' }, { value: y - 0.3, confidence: 0.6, model: 'b' }]

function feed(e, ctx, n, y0 = 5) {
  for (let t = 0; t < n; t++) e.updateWithFeedbackSync(preds(y0 + (t % 5)), y0 + (t % 5), ctx)
}

test('the least recently used context is evicted first; using a context keeps it', () => {
  const e = new AdvancedEnsemble({ maxContexts: 3 })
  for (const s of ['A', 'B', 'C']) feed(e, { serviceName: s }, 3)
  e.stackingEnsembleSync(preds(5), { serviceName: 'A' }) // A is now the most recent
  feed(e, { serviceName: 'D' }, 1)
  assert.equal(e.getContextStatistics('B'), null, 'B was the least recently used')
  for (const s of ['A', 'C', 'D']) assert.ok(e.getContextStatistics(s), s)
  assert.equal(e.getContextStatistics('A').samples, 3)
  feed(e, { serviceName: 'E' }, 1)
  assert.equal(e.getContextStatistics('C'), null, 'then C')
  const st = e.getStatistics()
  assert.equal(st.totals.contexts, 3)
  assert.equal(st.evictions.contexts, 2)
})

test('an evicted context falls back to the global learner and returns neutral', () => {
  const e = new AdvancedEnsemble({ maxContexts: 2 })
  // Model b reads 0.3 low everywhere: the learners find that out.
  feed(e, { serviceName: 'tenant-1' }, 100)
  const before = e.stackingEnsembleSync(preds(6), { serviceName: 'tenant-1' })
  assert.equal(before.source, 'context')
  feed(e, { serviceName: 'tenant-2' }, 20)
  feed(e, { serviceName: 'tenant-3' }, 20)
  assert.equal(e.getContextStatistics('tenant-1'), null)
  const after = e.stackingEnsembleSync(preds(6), { serviceName: 'tenant-1' })
  assert.equal(after.source, 'global', 'served by the global learner, not refused')
  assert.ok(Math.abs(after.prediction - 6) < 0.2, `a sensible answer: ${after.prediction}`)
  assert.equal(e.getContextStatistics('tenant-1').samples, 0, 'the returning key starts neutral')
  assert.equal(e.dynamicSelectionSync(preds(6), { serviceName: 'tenant-1' }).selectedCount, 1)
})

test('maxMemoryMb bounds the estimated context state: evicts, never refuses, counters add up', async () => {
  // Contexts that see 12 models hold a few KB each: 0.05 MB keeps a handful, far fewer
  // than maxContexts, so the memory bound is the tighter one and binds.
  const e = new AdvancedEnsemble({ maxContexts: 10_000, maxMemoryMb: 0.05 })
  const wide = (i) => Array.from({ length: 12 }, (_, j) => ({ value: (i % 5) + j / 10, confidence: 0.7, model: `m${j}` }))
  let peak = 0
  for (let i = 0; i < 400; i++) {
    const ctx = { serviceName: `tenant-${i}` }
    assert.equal(e.stackingEnsembleSync(wide(i), ctx).strategy, 'stacking')
    assert.equal(await e.updateWithFeedback(wide(i), i % 5, ctx), true)
    const t = e.getStatistics().totals
    peak = Math.max(peak, t.memoryBytes)
  }
  const st = e.getStatistics()
  assert.equal(st.limits.maxMemoryMb, 0.05)
  assert.ok(peak <= 0.05e6, `estimate ${peak} B stays under the bound`)
  assert.ok(st.totals.contexts > 1 && st.totals.contexts < 100, `memory binds before maxContexts: ${st.totals.contexts} live`)
  assert.ok(st.evictions.contexts >= 300)
  assert.equal(st.totals.contextsCreated, st.totals.contexts + st.evictions.contexts)
  assert.ok(e.getContextStatistics('tenant-399'), 'the latest context is live')
  assert.equal(e.getContextStatistics('tenant-0'), null, 'the oldest was evicted')
  // With the tighter count bound, the count wins.
  const f = new AdvancedEnsemble({ maxContexts: 3, maxMemoryMb: 1000 })
  for (let i = 0; i < 10; i++) f.updateWithFeedbackSync(wide(i), 1, { serviceName: `s${i}` })
  assert.equal(f.getStatistics().totals.contexts, 3)
  assert.ok(f.getStatistics().totals.memoryBytes > 0)
  // A single context larger than the whole budget is still served and learns.
  const g = new AdvancedEnsemble({ maxMemoryMb: 0.001 })
  for (let i = 0; i < 20; i++) assert.equal(g.updateWithFeedbackSync(wide(i), 2, { serviceName: 'big' }), true)
  assert.equal(g.getContextStatistics('big').samples, 20)
  for (const bad of [0, -1, Infinity, NaN, 'lots', 2e9]) {
    assert.throws(() => new AdvancedEnsemble({ maxMemoryMb: bad }), /maxMemoryMb/)
  }
})

test('no refusal at 10× the bound, on every entry point, and counters that add up', async () => {
  const bound = 200
  const e = new AdvancedEnsemble({ maxContexts: bound })
  for (let i = 0; i < 10 * bound; i++) {
    const ctx = { serviceName: `tenant-${i}`, predictionType: i % 2 ? 'quality' : 'latency' }
    const p = [{ value: 5, confidence: 0.8, model: `model-${i % 37}` }, { value: 6, model: 'shared' }]
    assert.equal(e.stackingEnsembleSync(p, ctx).strategy, 'stacking')
    assert.equal((await e.dynamicSelection(p, ctx)).strategy, 'dynamic-selection')
    assert.equal(e.confidenceWeightedVotingSync(p, { ...ctx, calibrate: true }).strategy, 'confidence-weighted')
    assert.equal(await e.updateWithFeedback(p, 5.5, ctx), true)
  }
  const out = e.stackingBatch(new Float64Array([1, 2]), ['shared', 'model-1'], { serviceName: 'tenant-0', predictionType: 'latency' })
  assert.ok(Number.isFinite(out[0]))
  const st = e.getStatistics()
  assert.equal(st.totals.contexts, bound)
  assert.equal(st.totals.contextsCreated, st.totals.contexts + st.evictions.contexts)
  assert.equal(st.totals.contextsCreated, 10 * bound + 1, 'every distinct key once, plus the evicted one that came back')
  assert.equal(st.totals.modelsCreated, st.totals.models + st.evictions.models)
  assert.equal(st.totals.performanceKeysCreated, st.totals.performanceKeys + st.evictions.performanceKeys)
  assert.equal(st.feedbackCount, 10 * bound)
  assert.ok(Object.keys(st.performanceWeights).length <= st.limits.performanceWeightsShown)
  assert.ok(Object.keys(st.contexts).length <= 3)
})

test('model names are bounded too, and an evicted name is re-interned transparently', () => {
  const e = new AdvancedEnsemble({ maxModels: 10_000 })
  for (let i = 0; i < 25_000; i++) {
    e.updateWithFeedbackSync([{ value: 1, model: `v${i}` }, { value: 2, model: 'stable' }], 1.5)
  }
  // `v0` was evicted long ago (and was in the JS name cache once): still served.
  assert.equal(e.stackingEnsembleSync([{ value: 1, model: 'v0' }]).basePredictions[0].model, 'v0')
  const st = e.getStatistics()
  assert.equal(st.totals.models, 10_000)
  assert.equal(st.totals.modelsCreated, st.totals.models + st.evictions.models)
  assert.ok(st.evictions.models >= 15_000)
})

test('getStatistics stays small: recent performance weights, top contexts by volume, totals', () => {
  const e = new AdvancedEnsemble()
  for (let i = 0; i < 300; i++) feed(e, { serviceName: `s${i}` }, 1 + (i % 17))
  const st = e.getStatistics()
  for (const k of ['performanceWeights', 'historySize', 'recentErrors', 'avgError']) assert.ok(k in st, k)
  assert.equal(Object.keys(st.performanceWeights).length, 20, 'the 20 most recently updated keys')
  assert.ok('s299_a' in st.performanceWeights && !('s0_a' in st.performanceWeights))
  assert.equal(st.topContexts.length, 10)
  for (let i = 1; i < st.topContexts.length; i++) assert.ok(st.topContexts[i - 1].samples >= st.topContexts[i].samples)
  assert.equal(st.topContexts[0].samples, 17)
  assert.equal(st.totals.contexts, 300)
  assert.deepEqual(Object.keys(st.contexts).length, 3, 'the top 3 in detail')
})

test('per-context detail and a paged export of every context', () => {
  const e = new AdvancedEnsemble()
  for (let i = 0; i < 250; i++) feed(e, { serviceName: `s${i}`, predictionType: 'q' }, 2)
  const one = e.getContextStatistics('s7', 'q')
  assert.equal(one.samples, 2)
  assert.deepEqual(Object.keys(one.models).sort(), ['a', 'b'])
  assert.deepEqual(one.modelSets[0].models, ['a', 'b'])
  assert.equal(e.getContextStatistics('s7'), null, 'predictionType is part of the key')
  const seen = new Set()
  let offset = 0
  for (;;) {
    const page = e.getContextStatisticsPage(offset, 100)
    assert.equal(page.total, 250)
    for (const c of page.contexts) seen.add(`${c.serviceName}/${c.predictionType}`)
    offset += page.contexts.length
    if (page.contexts.length === 0 || offset >= page.total) break
  }
  assert.equal(seen.size, 250)
  assert.equal(e.getContextStatisticsPage(0, 1).contexts[0].serviceName, 's249', 'most recently used first')
})

test('saved state holds only the live keys and loads back to the same answers', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlops-ens-card-'))
  const file = path.join(dir, 'state.json')
  const e = new AdvancedEnsemble({ maxContexts: 50 })
  for (let i = 0; i < 500; i++) feed(e, { serviceName: `s${i}` }, 12)
  assert.equal(await e.saveState(file), true)
  const saved = JSON.parse(fs.readFileSync(file, 'utf8'))
  assert.equal(saved.formatVersion, 3)
  assert.equal(saved.contexts.length, 50, 'evicted keys are not saved')
  const f = new AdvancedEnsemble()
  assert.equal(await f.loadState(file), true)
  const ctx = { serviceName: 's480' }
  assert.deepEqual(f.stackingEnsembleSync(preds(5), ctx), e.stackingEnsembleSync(preds(5), ctx))
  assert.deepEqual(f.getStatistics().totals, e.getStatistics().totals)
  assert.equal(f.getContextStatistics('s10'), null)
  fs.rmSync(dir, { recursive: true })
})

test('property: any stream of calls over many keys is served, bounded, and its counters add up', () => {
  const fc = require('fast-check')
  const RUNS = Number(process.env.FUZZ_RUNS || 40)
  const op = fc.record({
    kind: fc.constantFrom('stack', 'select', 'vote', 'calibrated', 'feedback', 'batch'),
    service: fc.oneof(fc.integer({ min: 0, max: 1_000_000 }).map((i) => `tenant-${i}`), fc.constantFrom('', 'ai-gm')),
    type: fc.constantFrom(undefined, 'quality', 'latency'),
    models: fc.array(fc.oneof(fc.integer({ min: 0, max: 1_000_000 }), fc.constantFrom('a', 'b')), { minLength: 1, maxLength: 4 }),
    y: fc.double({ min: -1e6, max: 1e6, noNaN: true }),
  })
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 20 }), fc.array(op, { minLength: 1, maxLength: 120 }), (maxContexts, ops) => {
      const e = new AdvancedEnsemble({ maxContexts, maxModels: 10_000 })
      for (const o of ops) {
        const ctx = { serviceName: o.service, predictionType: o.type }
        const p = o.models.map((m, i) => ({ value: o.y + i, confidence: 0.5, model: m }))
        let r
        if (o.kind === 'stack') r = e.stackingEnsembleSync(p, ctx).prediction
        else if (o.kind === 'select') r = e.dynamicSelectionSync(p, ctx).prediction
        else if (o.kind === 'vote') r = e.confidenceWeightedVotingSync(p, ctx).prediction
        else if (o.kind === 'calibrated') r = e.confidenceWeightedVotingSync(p, { ...ctx, calibrate: true }).prediction
        else if (o.kind === 'batch') r = e.stackingBatch(new Float64Array(p.map((x) => x.value)), o.models, ctx)[0]
        else r = e.updateWithFeedbackSync(p, o.y, ctx) ? 0 : NaN
        assert.ok(Number.isFinite(r), `${o.kind} answered ${r}`)
      }
      const st = e.getStatistics()
      assert.ok(st.totals.contexts <= maxContexts)
      assert.equal(st.totals.contextsCreated, st.totals.contexts + st.evictions.contexts)
      assert.equal(st.totals.performanceKeysCreated, st.totals.performanceKeys + st.evictions.performanceKeys)
      let paged = 0
      for (let off = 0; off < st.totals.contexts; off += 7) paged += e.getContextStatisticsPage(off, 7).contexts.length
      assert.equal(paged, st.totals.contexts)
    }),
    { numRuns: RUNS, seed: process.env.FUZZ_SEED ? Number(process.env.FUZZ_SEED) : undefined },
  )
})

test('the batch path after a loadState uses the loaded context, not a stale cached id', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlops-ens-batch-'))
  const file = path.join(dir, 'state.json')
  const a = new AdvancedEnsemble()
  feed(a, { serviceName: 'other' }, 60, 100) // a's first context id: what b will cache for 'loaded'
  feed(a, { serviceName: 'loaded' }, 60)
  await a.saveState(file)
  const b = new AdvancedEnsemble()
  feed(b, { serviceName: 'loaded' }, 1) // interns a, b, then 'loaded': the id a gave 'other'
  for (let i = 0; i < 5; i++) feed(b, { serviceName: `mine-${i}` }, 12, 100)
  await b.loadState(file)
  const rows = new Float64Array([5.1, 4.7, 6.1, 5.7])
  const got = b.stackingBatch(rows, ['a', 'b'], { serviceName: 'loaded' })
  const want = a.stackingBatch(rows, ['a', 'b'], { serviceName: 'loaded' })
  assert.deepEqual([...got], [...want])
  assert.equal(b.stackingBatch(rows, ['a', 'b'], { serviceName: 'mine-0' }).length, 2, 'a key the file lacks is served')
  fs.rmSync(dir, { recursive: true })
})
