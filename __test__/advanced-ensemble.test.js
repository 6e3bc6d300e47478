'use strict'
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { AdvancedEnsemble, getAdvancedEnsemble } = require('..')
const shim = require('../lib/mlops/advancedEnsemble')

// Deterministic noise so the learning assertions cannot flake.
function rng(seed) {
  let s = seed >>> 0
  const u = () => ((s = (s * 1664525 + 1013904223) >>> 0) / 4294967296)
  return { u, normal: () => { let t = 0; for (let i = 0; i < 12; i++) t += u(); return t - 6 } }
}

test('the lib/mlops shim and the package root export the same pair', () => {
  assert.equal(shim.AdvancedEnsemble, AdvancedEnsemble)
  assert.equal(shim.getAdvancedEnsemble, getAdvancedEnsemble)
  assert.equal(getAdvancedEnsemble(), getAdvancedEnsemble())
  assert.ok(getAdvancedEnsemble() instanceof AdvancedEnsemble)
})

test('initialize is idempotent and resolves true', async () => {
  const e = new AdvancedEnsemble()
  assert.equal(await e.initialize(), true)
  assert.equal(await e.initialize(), true)
})

test('cold start keeps the old rules: confidence² voting, confidence × performance stacking', async () => {
  const e = new AdvancedEnsemble()
  const preds = [{ value: 2, confidence: 0.8, model: 'a' }, { prediction: 0, value: 9, confidence: 0.4, model: 'b' }]
  const vote = await e.confidenceWeightedVoting(preds)
  assert.equal(vote.strategy, 'confidence-weighted')
  assert.ok(Math.abs(vote.prediction - (0.64 * 2 + 0.16 * 0) / 0.8) < 1e-12, 'prediction wins over value and 0 is real')
  assert.ok(Math.abs(vote.confidence - 0.6) < 1e-12)
  const st = await e.stackingEnsemble(preds, { serviceName: 'svc' })
  assert.equal(st.source, 'prior')
  assert.ok(Math.abs(st.prediction - (0.8 * 2) / 1.2) < 1e-12)
  assert.ok(Math.abs(st.metaWeights.reduce((a, b) => a + b, 0) - 1) < 1e-12)
  assert.deepEqual(st.basePredictions.map((b) => b.model), ['a', 'b'])
  const dyn = await e.dynamicSelection([1, 2, 3, 4, 5], {})
  assert.equal(dyn.selectedCount, 3, 'top min(3, ceil(n/2))')
  assert.equal(dyn.totalModels, 5)
  const bare = e.stackingEnsembleSync([3])
  assert.equal(bare.basePredictions[0].confidence, 0.5, 'missing confidence means 0.5')
})

function trainTwoServices(e, n = 600) {
  const r = rng(42)
  for (let t = 0; t < n; t++) {
    const service = t % 2 === 0 ? 'ai-gm' : 'oracle'
    const y = 10 * r.u()
    const preds = [
      { value: y + (service === 'ai-gm' ? 0.1 : 2) * r.normal(), confidence: 0.7, model: 'alpha' },
      { value: y + (service === 'ai-gm' ? 2 : 0.1) * r.normal(), confidence: 0.7, model: 'beta' },
      { value: 0.5 * y + 3 + 0.2 * r.normal(), confidence: 0.9, model: 'biased' },
    ]
    e.updateWithFeedbackSync(preds, y, { serviceName: service })
  }
}

test('stacking learns per context: the better model gains weight and the biased one is corrected', () => {
  const e = new AdvancedEnsemble()
  const before = e.stackingEnsembleSync([{ value: 5, model: 'alpha' }, { value: 5, model: 'beta' }, { value: 5.5, model: 'biased' }], { serviceName: 'ai-gm' })
  trainTwoServices(e)
  const q = [{ value: 5, model: 'alpha' }, { value: 5, model: 'beta' }, { value: 5.5, model: 'biased' }]
  const gm = e.stackingEnsembleSync(q, { serviceName: 'ai-gm' })
  const or = e.stackingEnsembleSync(q, { serviceName: 'oracle' })
  assert.equal(gm.source, 'context')
  assert.ok(gm.samples >= 300)
  assert.ok(gm.metaWeights[0] > before.metaWeights[0], 'alpha gains weight in ai-gm')
  assert.ok(gm.rawWeights[0] > 4 * Math.abs(gm.rawWeights[1]), `alpha ≫ beta in ai-gm: ${gm.rawWeights}`)
  assert.ok(or.rawWeights[1] > 4 * Math.abs(or.rawWeights[0]), `beta ≫ alpha in oracle: ${or.rawWeights}`)
  assert.ok(gm.intercept < -0.5, 'intercept absorbs the biased model offset')
  assert.ok(Math.abs(gm.prediction - 5) < 0.3, `prediction ${gm.prediction}`)
  const stats = e.getStatistics()
  assert.ok(stats.avgError > 0, 'avgError is a real error now')
  assert.equal(stats.recentErrors.length, 10)
  assert.equal(stats.historySize, 600)
  assert.ok(stats.contexts['ai-gm'].strategies.stacking.mae < stats.contexts['ai-gm'].strategies.average.mae)
  assert.ok(['stacking', 'dynamicSelection'].includes(stats.contexts.oracle.bestStrategy))
  assert.ok(stats.performanceWeights['ai-gm_alpha'] > stats.performanceWeights['ai-gm_beta'])
})

test('dynamic selection picks the competent model for each context and explains it', () => {
  const e = new AdvancedEnsemble()
  trainTwoServices(e)
  const q = [{ value: 1, model: 'alpha' }, { value: 2, model: 'beta' }, { value: 3, model: 'biased' }]
  const gm = e.dynamicSelectionSync(q, { serviceName: 'ai-gm' })
  const or = e.dynamicSelectionSync(q, { serviceName: 'oracle' })
  assert.equal(gm.selectedModels[0].model, 'alpha')
  assert.equal(or.selectedModels[0].model, 'beta')
  assert.ok(gm.selectedModels[0].score > gm.selectedModels[1].score)
  assert.ok(gm.selectedModels[0].weight > 0.9)
})

test('calibrated voting discounts a model whose confidence is not borne out', () => {
  const e = new AdvancedEnsemble()
  const r = rng(5)
  for (let t = 0; t < 200; t++) {
    const y = r.normal()
    e.updateWithFeedbackSync([{ value: y + 3 * r.normal(), confidence: 0.99, model: 'loud' }, { value: y + 0.05 * r.normal(), confidence: 0.6, model: 'quiet' }], y)
  }
  const q = [{ value: 0, confidence: 0.99, model: 'loud' }, { value: 1, confidence: 0.6, model: 'quiet' }]
  const plain = e.confidenceWeightedVotingSync(q)
  const cal = e.confidenceWeightedVotingSync(q, { calibrate: true })
  assert.ok(plain.weights[0].weight > plain.weights[1].weight)
  assert.ok(cal.weights[1].weight > cal.weights[0].weight)
})

test('models may appear and disappear; a new model starts neutral', () => {
  const e = new AdvancedEnsemble()
  for (let t = 0; t < 60; t++) e.updateWithFeedbackSync([{ value: t % 7, model: 'a' }, { value: (t % 7) + 1, model: 'b' }], t % 7)
  const r = e.stackingEnsembleSync([{ value: 3, model: 'a' }, { value: 50, model: 'newcomer' }])
  assert.ok(Number.isFinite(r.prediction))
  const only = e.stackingEnsembleSync([{ value: 4, model: 'b' }])
  assert.ok(Math.abs(only.prediction - 3) < 0.3, `b alone is de-biased: ${only.prediction}`)
})

test('hybrid models join stacking when features are given', () => {
  const e = new AdvancedEnsemble()
  e.registerNeuralNetwork({ trained: true, predict: (f) => f[0] * 2 })
  e.registerTransformer({ trained: false, predict: () => 1 })
  const r = e.stackingEnsembleSync([{ value: 1, model: 'a' }], { features: [3] })
  assert.equal(r.hybridModels, true)
  assert.deepEqual(r.basePredictions.map((b) => [b.model, b.value, b.confidence]), [['a', 1, 0.5], ['neural_network', 6, 0.85]])
  const without = e.stackingEnsembleSync([{ value: 1, model: 'a' }])
  assert.equal(without.hybridModels, false)
  e.registerTransformer({ trained: true, predict: () => { throw new Error('boom') } })
  assert.equal(e.stackingEnsembleSync([{ value: 1 }], { features: [1] }).basePredictions.length, 2, 'a throwing model is left out')
  assert.throws(() => e.registerNeuralNetwork({ trained: true }), { name: 'TypeError', message: /model\.predict/ })
})

test('bad input gets a TypeError/RangeError naming the field; the Promise forms reject (feedback resolves false)', async () => {
  const e = new AdvancedEnsemble()
  const cases = [
    [() => e.stackingEnsembleSync([]), RangeError, /predictions must not be empty/],
    [() => e.stackingEnsembleSync('x'), TypeError, /predictions must be an array/],
    [() => e.stackingEnsembleSync([{ value: NaN }]), RangeError, /predictions\[0\]\.value/],
    [() => e.stackingEnsembleSync([1, { value: Infinity }]), RangeError, /predictions\[1\]\.value/],
    [() => e.stackingEnsembleSync([{ value: 1, confidence: 2 }]), RangeError, /predictions\[0\]\.confidence/],
    // Numeric strings and numeric model ids are accepted since issue 9; junk is still refused.
    [() => e.stackingEnsembleSync([{ value: '1abc' }]), TypeError, /predictions\[0\]\.value/],
    [() => e.stackingEnsembleSync([{ value: 1, confidence: 'high' }]), TypeError, /predictions\[0\]\.confidence/],
    [() => e.stackingEnsembleSync([{ value: 1, model: {} }]), TypeError, /predictions\[0\]\.model/],
    [() => e.stackingEnsembleSync([{ value: 1, model: NaN }]), RangeError, /predictions\[0\]\.model/],
    [() => e.updateWithFeedbackSync([1], '7.8x'), TypeError, /actual/],
    [() => e.stackingEnsembleSync([{ value: 1, model: 'm'.repeat(257) }]), RangeError, /predictions\[0\]\.model must be at most 256 characters/],
    [() => e.stackingEnsembleSync([1], { serviceName: 'req-' + 'x'.repeat(300) }), RangeError, /context\.serviceName must be at most 256/],
    [() => e.stackingEnsembleSync([null]), TypeError, /predictions\[0\]/],
    [() => e.dynamicSelectionSync([1], { serviceName: {} }), TypeError, /context\.serviceName/],
    [() => e.confidenceWeightedVotingSync([1], 'ctx'), TypeError, /context must be an object/],
    [() => e.updateWithFeedbackSync([1]), TypeError, /actual/],
    [() => e.updateWithFeedbackSync([1], NaN), RangeError, /actual/],
    [() => e.updateWithFeedbackSync([1], 1e200), RangeError, /actual must be within ±1e100/],
    [() => e.updateWithFeedbackSync([{ value: -1e300 }], 1), RangeError, /predictions\[0\]\.value must be a finite number within ±1e100/],
    [() => e.stackingBatch([1, 2], ['a']), TypeError, /predictions must be a Float64Array/],
    [() => e.stackingBatch(new Float64Array(3), ['a', 'b']), RangeError, /multiple of the model count/],
    [() => e.stackingBatch(new Float64Array([NaN]), ['a']), RangeError, /predictions\[0\]/],
    [() => new AdvancedEnsemble({ historySize: -1 }), RangeError, /options\.historySize/],
    [() => new AdvancedEnsemble({ forgetting: 'x' }), TypeError, /options\.forgetting/],
  ]
  for (const [fn, type, msg] of cases) assert.throws(fn, (err) => err instanceof type && msg.test(err.message), String(fn))
  await assert.rejects(e.stackingEnsemble([]), RangeError)
  await assert.rejects(e.dynamicSelection([{ value: NaN }]), RangeError)
  await assert.rejects(e.confidenceWeightedVoting(null), TypeError)
  assert.equal(await e.updateWithFeedback([1], undefined), false)
  assert.equal(await e.updateWithFeedback([], 1), false)
  // After all of that, a valid call still gives the right answer.
  assert.equal(e.confidenceWeightedVotingSync([{ value: 2, confidence: 1 }, { value: 4, confidence: 1 }]).prediction, 3)
  assert.equal(e.getStatistics().historySize, 0, 'rejected feedback left no trace')
})

test('state survives a save/load round trip; a corrupt file is refused and changes nothing', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlops-ens-'))
  const file = path.join(dir, 'ensemble.json')
  const e = new AdvancedEnsemble()
  trainTwoServices(e, 200)
  const q = [{ value: 5, model: 'alpha' }, { value: 6, model: 'beta' }, { value: 5.5, model: 'biased' }]
  const want = e.stackingEnsembleSync(q, { serviceName: 'oracle' })
  assert.equal(await e.saveState(file), true)
  assert.deepEqual(fs.readdirSync(dir), ['ensemble.json'], 'no temp files left behind')
  const f = new AdvancedEnsemble()
  f.stackingEnsembleSync([{ value: 1, model: 'zzz' }], { serviceName: 'other' }) // ids differ from e's
  assert.equal(await f.loadState(file), true)
  assert.deepEqual(f.stackingEnsembleSync(q, { serviceName: 'oracle' }), want)
  assert.deepEqual(f.getStatistics(), e.getStatistics())
  assert.equal(f.toJSON().format, 'mlops-native/advanced-ensemble')

  fs.writeFileSync(file, fs.readFileSync(file, 'utf8').slice(0, 100))
  await assert.rejects(f.loadState(file), /not valid JSON/)
  await assert.rejects(f.loadState(path.join(dir, 'missing.json')), /cannot read/)
  await assert.rejects(f.loadState(dir), /directory/)
  fs.writeFileSync(file, '{"format":"something-else"}')
  await assert.rejects(f.loadState(file), /not an AdvancedEnsemble state/)
  await assert.rejects(f.loadState(42), TypeError)
  assert.deepEqual(f.stackingEnsembleSync(q, { serviceName: 'oracle' }), want, 'a refused load changes nothing')
  fs.rmSync(dir, { recursive: true })
})

test('the batch path matches single calls', () => {
  const e = new AdvancedEnsemble()
  trainTwoServices(e, 200)
  const rows = [[1, 2, 3], [4, 5, 6], [0, 0, 0]]
  const out = e.stackingBatch(new Float64Array(rows.flat()), ['alpha', 'beta', 'biased'], { serviceName: 'ai-gm' })
  assert.ok(out instanceof Float64Array)
  rows.forEach((r, i) => {
    const single = e.stackingEnsembleSync([{ value: r[0], model: 'alpha' }, { value: r[1], model: 'beta' }, { value: r[2], model: 'biased' }], { serviceName: 'ai-gm' })
    assert.ok(Math.abs(single.prediction - out[i]) < 1e-9)
  })
})

test('many prediction entries grow the packed buffers', () => {
  const e = new AdvancedEnsemble()
  const preds = Array.from({ length: 500 }, (_, i) => ({ value: i, confidence: 1, model: `m${i}` }))
  assert.equal(e.confidenceWeightedVotingSync(preds).prediction, 249.5)
  assert.equal(e.dynamicSelectionSync(preds).selectedCount, 3)
})

// ---------------------------------------------------------------- issue 9: real calls

const { OldAdvancedEnsemble } = require('../scripts/bench/old-ensemble.js')
const close = (a, b, tol = 1e-12) => Math.abs(a - b) <= tol * Math.max(1, Math.abs(b))

test('numeric model ids, numeric strings and named features are accepted (the services send them)', () => {
  const e = new AdvancedEnsemble()
  const s = e.stackingEnsembleSync([{ value: 7.5, confidence: 0.9, model: 101 }, { value: '6.5', confidence: '0.8', model: '102' }], { serviceName: 'ai-gm' })
  assert.deepEqual(s.basePredictions, [{ value: 7.5, confidence: 0.9, model: '101' }, { value: 6.5, confidence: 0.8, model: '102' }])
  assert.ok(close(s.prediction, (0.9 * 7.5 + 0.8 * 6.5) / 1.7))
  assert.equal(e.stackingEnsembleSync([' 3 ']).basePredictions[0].value, 3, 'a bare numeric string')
  // A string actual is learned from, not dropped: the history grows and the performance
  // weight of key `${serviceName}_${model}` moves exactly as the old EMA says.
  assert.equal(e.updateWithFeedbackSync([{ value: '7.5', confidence: '0.9', model: 101 }], '7.8', { serviceName: 'ai-gm' }), true)
  const st = e.getStatistics()
  assert.equal(st.historySize, 1)
  assert.ok(close(st.performanceWeights['ai-gm_101'], 0.9 + 0.1 / (1 + 0.3), 1e-9))
  // A numeric id and its decimal string are the same model.
  const v = e.confidenceWeightedVotingSync([{ value: '2', confidence: '1', model: 7 }])
  assert.deepEqual(v.weights[0], { model: '7', confidence: 1, weight: 1, normalizedWeight: 1 })
  // context.features: numeric strings converted; an object of named numbers reaches the model converted.
  const seen = []
  e.registerNeuralNetwork({ trained: true, predict: (f) => (seen.push(f), Array.isArray(f) ? f[0] * 2 : f.inputSize * 2) })
  assert.equal(e.stackingEnsembleSync([1], { features: ['3', 4] }).basePredictions[1].value, 6)
  assert.deepEqual(seen[0], [3, 4])
  assert.equal(e.stackingEnsembleSync([1], { features: { inputSize: '5' } }).basePredictions[1].value, 10)
  assert.deepEqual(seen[1], { inputSize: 5 })
  assert.throws(() => e.stackingEnsembleSync([1], { features: { inputSize: 'big' } }), { name: 'TypeError', message: /context\.features\.inputSize/ })
})

test('updateWithFeedback resolves true for string numbers and false only for junk', async () => {
  const e = new AdvancedEnsemble()
  assert.equal(await e.updateWithFeedback([{ value: '7.5', confidence: '0.9', model: 101 }], '7.8', { serviceName: 's' }), true)
  assert.equal(await e.updateWithFeedback([{ value: 'seven' }], 7), false)
  assert.equal(e.getStatistics().historySize, 1)
})

/** Contexts and entry shapes the parity tests run over. */
const PARITY_CONTEXTS = [undefined, {}, { serviceName: 'ai-gm' }, { predictionType: 'quality' }, { serviceName: 'ai-gm', predictionType: 'quality' }, { serviceName: 'oracle', predictionType: 'latency' }]
const PARITY_PREDICTIONS = [
  // The old test script's request: scores 0.77/0.74, confidence 0.85.
  [{ value: 7.2, confidence: 0.9, model: 'quality-v3' }, { value: 6.1, confidence: 0.8, model: 'quality-lite' }, { value: 5.0, confidence: 0.7, model: 'baseline' }],
  [{ value: 7.2, confidence: 0.9, model: 'quality-v3', predictionType: 'quality' }, { value: 6.1, confidence: 0.6, model: 'quality-lite' }, { prediction: 8.0, confidence: 0.8, model: 'llm-judge', predictionType: 'latency' }],
  [5, { value: 6 }, { value: 7, confidence: 0.3 }, { value: 2, model: 'named' }, { value: 9, confidence: 1, predictionType: 'quality' }],
  [{ value: 3, confidence: 0.2, model: 'a' }, { value: 4, confidence: 0.2, model: 'b' }, { value: 10, confidence: 0.99, model: 'c' }, { value: -1, confidence: 0.5, model: 'd' }, { value: 0, confidence: 0.7, model: 'e' }, { value: 1, confidence: 0.1, model: 'f' }, { value: 2, confidence: 0.4, model: 'g' }],
]

function assertOldStacking(got, want, label) {
  assert.equal(got.source, 'prior', label)
  assert.ok(close(got.prediction, want.prediction), `${label}: prediction ${got.prediction} vs ${want.prediction}`)
  assert.ok(close(got.confidence, want.confidence), `${label}: confidence ${got.confidence} vs ${want.confidence}`)
  got.metaWeights.forEach((w, i) => assert.ok(close(w, want.metaWeights[i]), `${label}: metaWeights[${i}]`))
  assert.deepEqual(got.basePredictions, want.basePredictions, label)
}

test('cold start gives exactly the old answers for every strategy, context and entry shape', () => {
  const e = new AdvancedEnsemble()
  const old = new OldAdvancedEnsemble()
  for (const ctx of PARITY_CONTEXTS) {
    for (const preds of PARITY_PREDICTIONS) {
      const label = `${JSON.stringify(ctx)} ${JSON.stringify(preds)}`
      assertOldStacking(e.stackingEnsembleSync(preds, ctx), old.stackingEnsembleSync(preds, ctx), label)
      const d = e.dynamicSelectionSync(preds, ctx)
      const od = old.dynamicSelectionSync(preds, ctx)
      assert.ok(close(d.prediction, od.prediction), `${label}: selection prediction ${d.prediction} vs ${od.prediction}`)
      assert.ok(close(d.confidence, od.confidence), `${label}: selection confidence ${d.confidence} vs ${od.confidence}`)
      assert.deepEqual(d.selectedModels.map((m) => m.model), od.selectedModels.map((m) => m.model), label)
      d.selectedModels.forEach((m, i) => assert.ok(close(m.score, od.selectedModels[i].score), `${label}: score ${m.score} vs ${od.selectedModels[i].score}`))
      const vo = e.confidenceWeightedVotingSync(preds, ctx)
      const ov = old.confidenceWeightedVotingSync(preds, ctx)
      assert.ok(close(vo.prediction, ov.prediction), label)
      assert.ok(close(vo.confidence, ov.confidence), label)
      vo.weights.forEach((w, i) => {
        assert.equal(w.model, ov.weights[i].model)
        assert.ok(close(w.weight, ov.weights[i].weight), `${label}: voting weight is c² un-normalised`)
      })
      assert.ok(close(vo.weights.reduce((a, w) => a + w.normalizedWeight, 0), 1), 'normalizedWeight sums to 1')
    }
  }
  // The figures from issue 9, by value.
  const req = PARITY_PREDICTIONS[0]
  const ctx = { serviceName: 'ai-gm', predictionType: 'quality' }
  const d = e.dynamicSelectionSync(req, ctx)
  assert.deepEqual(d.selectedModels.map((m) => Math.round(m.score * 100) / 100), [0.77, 0.74])
  assert.ok(close(d.confidence, 0.85))
  assert.ok(close(e.confidenceWeightedVotingSync(req).weights[0].weight, 0.81))
  assert.ok(close(e.stackingEnsembleSync(req, ctx).confidence, (0.81 + 0.64 + 0.49) / 2.4))
})

test('while stacking still answers with the old rule, learned performance weights enter it exactly as before', () => {
  const e = new AdvancedEnsemble({ minSamples: 1000 })
  const old = new OldAdvancedEnsemble()
  const r = rng(9)
  for (let t = 0; t < 40; t++) {
    const y = 5 + r.normal()
    const preds = [{ value: y + 0.1 * r.normal(), confidence: 0.7, model: 'a' }, { value: y + 2 * r.normal(), confidence: 0.9, model: 'b' }, { value: y + 1, model: 'c' }]
    const ctx = t % 3 === 0 ? { serviceName: 'ai-gm' } : t % 3 === 1 ? { serviceName: 'oracle', predictionType: 'quality' } : {}
    e.updateWithFeedbackSync(preds, y, ctx)
    old.updateWithFeedbackSync(preds, y, ctx)
  }
  for (const [k, w] of old.performanceWeights) assert.ok(close(e.getStatistics().performanceWeights[k], w, 1e-9), k)
  for (const ctx of PARITY_CONTEXTS) {
    for (const preds of PARITY_PREDICTIONS.slice(0, 2).concat([[{ value: 1, model: 'a' }, { value: 2, model: 'b' }, { value: 3, model: 'c', confidence: 0.2 }]])) {
      assertOldStacking(e.stackingEnsembleSync(preds, ctx), old.stackingEnsembleSync(preds, ctx), JSON.stringify(ctx))
    }
  }
})

/** The stated terms of a stacking result: intercept + Σ rawWeights[i]·values[i]. */
function assertExplained(s, label) {
  assert.equal(s.values.length, s.rawWeights.length, label)
  s.values.forEach((v, i) => assert.equal(v, s.basePredictions[i].value, label))
  const sum = s.rawWeights.reduce((a, w, i) => a + w * s.values[i], s.intercept)
  assert.ok(Math.abs(sum - s.prediction) <= 1e-9 * Math.max(1, Math.abs(s.prediction)), `${label}: ${sum} vs ${s.prediction}`)
  assert.ok(close(s.metaWeights.reduce((a, b) => a + b, 0), 1, 1e-9), `${label}: metaWeights are display weights summing to 1`)
}

test('stacking states exactly how its prediction was formed, whoever answered', () => {
  const e = new AdvancedEnsemble()
  assertExplained(e.stackingEnsembleSync([{ value: 5, model: 'a', confidence: 0.9 }, { value: 6, model: 'b' }], { serviceName: 'x' }), 'prior')
  trainTwoServices(e, 300)
  const q = [{ value: 5, model: 'alpha' }, { value: 6, model: 'beta' }, { value: 5.5, model: 'biased' }]
  const ctxRes = e.stackingEnsembleSync(q, { serviceName: 'ai-gm' })
  assert.equal(ctxRes.source, 'context')
  assert.ok(Math.abs(ctxRes.intercept) > 0.1, 'the intercept is a real term here')
  assertExplained(ctxRes, 'context')
  const g = e.stackingEnsembleSync(q, { serviceName: 'brand-new' })
  assert.equal(g.source, 'global')
  assertExplained(g, 'global')
  assertExplained(e.stackingEnsembleSync([...q, { value: 50, model: 'newcomer' }], { serviceName: 'ai-gm' }), 'with a model the learner does not know')
  assertExplained(e.stackingEnsembleSync([...q, { value: 7, model: 'alpha' }], { serviceName: 'ai-gm' }), 'with a duplicate name')
})

test('a saved state of the previous format (version 1) still loads and answers', async () => {
  const e = new AdvancedEnsemble()
  assert.equal(await e.loadState(path.join(__dirname, 'fixtures', 'ensemble-v1.json')), true)
  const r = e.stackingEnsembleSync([{ value: 5, model: 'alpha' }, { value: 6, model: 'beta' }, { value: 5.5, model: 'biased' }], { serviceName: 'ai-gm', predictionType: 'quality' })
  assert.equal(r.source, 'context')
  assert.ok(Math.abs(r.prediction - 5.0076) < 0.1, `the v1 learner said 5.0076, got ${r.prediction}`)
  assert.equal(e.getStatistics().feedbackCount, 300)
  assert.equal(e.toJSON().formatVersion, 2)
})
