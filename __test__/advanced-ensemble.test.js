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
    [() => e.stackingEnsembleSync([{ value: '1' }]), TypeError, /predictions\[0\]\.value/],
    [() => e.stackingEnsembleSync([{ value: 1, model: 3 }]), TypeError, /predictions\[0\]\.model/],
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
