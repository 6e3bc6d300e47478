'use strict'
// The services' real calls, replayed: what the old lib/mlops modules answered for the inputs
// the services really send (numbers from the database, strings from numeric columns, their
// own prediction objects, bad rows, restarts, scripts started from a subfolder), and what
// this package answers now. Expected values are the old module's (the rules in the API
// contract), or the documented intended difference.
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { execFileSync } = require('node:child_process')
const mlops = require('..')

const ROOT = path.join(__dirname, '..')
const BASE = 'quality-predictor-v3-advanced.json'
const close = (a, b, eps = 1e-9) => assert.ok(Math.abs(a - b) <= eps, `${a} ≉ ${b}`)

function tmp(prefix) {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix))
}

// ---- AdvancedEnsemble ----

test('ensemble: numeric model ids from the database are served (as their decimal string)', async () => {
  const e = new mlops.AdvancedEnsemble()
  const preds = [
    { value: 7.5, confidence: 0.9, model: 101 },
    { value: 7.0, confidence: 0.8, model: 102 },
  ]
  const s = await e.stackingEnsemble(preds, { serviceName: 'ai-gm' })
  assert.deepEqual(
    s.basePredictions.map((b) => b.model),
    ['101', '102'],
  )
  assert.equal((await e.dynamicSelection(preds)).selectedModels[0].model, '101')
  assert.equal(await e.updateWithFeedback(preds, 7.4, { serviceName: 'ai-gm' }), true)
  assert.ok('ai-gm_101' in e.getStatistics().performanceWeights)
})

test('ensemble: numbers as strings (numeric columns) give the same answers as numbers', async () => {
  const a = new mlops.AdvancedEnsemble()
  const b = new mlops.AdvancedEnsemble()
  const nums = [
    { value: 7.5, confidence: 0.9, model: 'm1' },
    { value: 6.5, confidence: 0.6, model: 'm2' },
  ]
  const strs = [
    { value: '7.5', confidence: '0.9', model: 'm1' },
    { value: ' 6.5 ', confidence: '0.6', model: 'm2' },
  ]
  assert.deepEqual(await b.stackingEnsemble(strs), await a.stackingEnsemble(nums))
  assert.equal(await b.updateWithFeedback(strs, '7.8', { serviceName: 's' }), true)
  assert.equal(b.getStatistics().historySize, 1)
  // Junk is still refused, naming the field.
  await assert.rejects(b.stackingEnsemble([{ value: '7.5abc' }]), (err) => err instanceof TypeError && /predictions\[0\]\.value/.test(err.message))
  assert.equal(await b.updateWithFeedback(strs, 'n/a'), false)
})

test('ensemble: cold-start values are the old module\'s exactly (old test script inputs)', async () => {
  const e = new mlops.AdvancedEnsemble()
  const preds = [
    { value: 7.5, confidence: 0.9, model: 'model1' },
    { value: 8.0, confidence: 0.8, model: 'model2' },
    { value: 7.2, confidence: 0.7, model: 'model3' },
  ]
  const s = await e.stackingEnsemble(preds)
  close(s.confidence, (0.81 + 0.64 + 0.49) / 2.4) // Σc²/Σc = 0.808
  close(s.prediction, (0.9 * 7.5 + 0.8 * 8 + 0.7 * 7.2) / 2.4)
  // The old script passed a context with a predictionType its entries did not carry.
  const d = await e.dynamicSelection(preds, { serviceName: 'ai-gm', predictionType: 'quality' })
  assert.deepEqual(
    d.selectedModels.map((m) => m.model),
    ['model1', 'model2'],
  )
  close(d.selectedModels[0].score, 0.77)
  close(d.selectedModels[1].score, 0.74)
  close(d.confidence, 0.85)
  close(d.prediction, (0.77 * 7.5 + 0.74 * 8) / (0.77 + 0.74))
  const v = await e.confidenceWeightedVoting(preds)
  close(v.weights[0].weight, 0.81) // confidence², not normalised
  close(v.prediction, (0.81 * 7.5 + 0.64 * 8 + 0.49 * 7.2) / 1.94)
  close(v.confidence, 0.8)
})

test('ensemble: a learned stacking result states the terms that sum to its prediction', () => {
  const e = new mlops.AdvancedEnsemble({ minSamples: 5 })
  const ctx = { serviceName: 'svc', predictionType: 'quality' }
  for (let i = 0; i < 200; i++) {
    const y = (i % 13) / 2
    e.updateWithFeedbackSync(
      [
        { value: y + 1, model: 'a' },
        { value: 2 * y, model: 'b' },
      ],
      y,
      ctx,
    )
  }
  const s = e.stackingEnsembleSync(
    [
      { value: 5, model: 'a' },
      { value: 6, model: 'b' },
    ],
    ctx,
  )
  assert.notEqual(s.source, 'prior')
  const terms = s.intercept + s.rawWeights.reduce((acc, w, i) => acc + w * s.basePredictions[i].value, 0)
  close(terms, s.prediction, 1e-9 * Math.max(1, Math.abs(s.prediction)))
  close(
    s.metaWeights.reduce((a, b) => a + b, 0),
    1,
    1e-9,
  )
})

// ---- ModelFineTuning ----

function rowsFor(n, d, seed = 1) {
  let s = seed
  const u = () => ((s = (s * 1664525 + 1013904223) >>> 0) / 4294967296)
  return Array.from({ length: n }, () => {
    const features = Array.from({ length: d }, () => u() * 4)
    return { features, quality: 1 + features.reduce((a, x, j) => a + (j % 2 ? -0.5 : 0.7) * x, 0) + 0.05 * (u() - 0.5) }
  })
}

test('fine-tune: hyperparameters from a database job row (strings) are used', async () => {
  const dir = tmp('mlops-real-ft-')
  fs.writeFileSync(path.join(dir, BASE), JSON.stringify({ weights: [0, 0, 0], bias: 0 }))
  const ft = new mlops.ModelFineTuning({ modelsDir: dir })
  const r = await ft.fineTuneModel(BASE, rowsFor(300, 3), { epochs: '10', learningRate: '0.05', batchSize: '16', seed: '3', save: false })
  assert.equal(r.success, true, r.error)
  assert.equal(r.epochs.length <= 10, true)
  const bad = await ft.fineTuneModel(BASE, rowsFor(300, 3), { epochs: 'ten', save: false })
  assert.equal(bad.success, false)
  assert.match(bad.error, /epochs/)
  fs.rmSync(dir, { recursive: true, force: true })
})

test('fine-tune: bad production rows are skipped and counted, not fatal', async () => {
  const dir = tmp('mlops-real-ft-')
  fs.writeFileSync(path.join(dir, BASE), JSON.stringify({ weights: [0, 0, 0], bias: 0 }))
  const ft = new mlops.ModelFineTuning({ modelsDir: dir })
  const rows = rowsFor(300, 3)
  rows[5] = { features: [1, 2, 3] } // no quality
  rows[6] = { features: [], quality: 3 } // empty features
  rows[7] = { features: [1, 2], quality: 3 } // short row
  rows[8] = { features: [1, 2, 3, 4], quality: 3 } // more features than the model has weights
  rows[9] = { features: ['1', '2', '3'], quality: '4.5' } // strings are fine
  const r = await ft.fineTuneModel(BASE, rows, { save: false, seed: 1 })
  assert.equal(r.success, true, r.error)
  assert.equal(r.skipped.count, 4)
  assert.equal(
    Object.values(r.skipped.reasons).reduce((a, b) => a + b, 0),
    4,
  )
  assert.ok(r.skipped.first.some((f) => f.row === 5))
  // strict: the old fail-on-first-bad-row behaviour, naming the row.
  const strict = await ft.fineTuneModel(BASE, rows, { save: false, strict: true })
  assert.equal(strict.success, false)
  assert.match(strict.error, /newData\[5\]/)
  fs.rmSync(dir, { recursive: true, force: true })
})

test('fine-tune: a script started from a subfolder finds <project root>/models', () => {
  const out = execFileSync(process.execPath, ['-e', "const { ModelFineTuning, RealTimeModelUpdates } = require('..'); console.log(JSON.stringify([new ModelFineTuning().modelsDir, new RealTimeModelUpdates().modelsDir]))"], {
    cwd: path.join(ROOT, 'scripts'),
    env: { ...process.env, MLOPS_MODELS_DIR: '' },
  }).toString()
  assert.deepEqual(JSON.parse(out), [path.join(ROOT, 'models'), path.join(ROOT, 'models')])
  const env = execFileSync(process.execPath, ['-e', "console.log(new (require('..').ModelFineTuning)().modelsDir)"], {
    cwd: path.join(ROOT, 'scripts'),
    env: { ...process.env, MLOPS_MODELS_DIR: '/srv/models' },
  })
    .toString()
    .trim()
  assert.equal(env, '/srv/models')
})

test('fine-tune: a missing base model names the folder it was looked for in', async () => {
  const dir = tmp('mlops-real-ft-')
  const ft = new mlops.ModelFineTuning({ modelsDir: dir })
  const r = await ft.fineTuneModel('nope.json', rowsFor(200, 3), { save: false })
  assert.equal(r.success, false)
  assert.ok(r.error.includes(dir), r.error)
  fs.rmSync(dir, { recursive: true, force: true })
})

// ---- ExpandedPredictions ----

test('predictions: a numeric string in the context is a number; a bad field falls back alone', async () => {
  const p = new mlops.ExpandedPredictions()
  const l = await p.predictLatency({ serviceName: 'ai-gm', inputSize: '100' })
  assert.equal(l.latency, 81)
  assert.equal(l.warnings, undefined)
  const bad = await p.predictLatency({ serviceName: 'ai-gm', inputSize: 'lots' })
  assert.equal(bad.latency, 80) // base of ai-gm kept; only inputSize fell back
  assert.ok(bad.warnings.some((w) => w.includes('context.inputSize')))
  const all = await p.predictAll({ serviceName: 'ai-gm', inputSize: 'lots', batchSize: 2 })
  assert.ok(all.latency.warnings.some((w) => w.includes('context.inputSize')))
  assert.equal(all.resources.memory, 40)
})

test('predictions: resources use batchSize 1 when absent (the old rule)', async () => {
  const p = new mlops.ExpandedPredictions()
  const r = await p.predictResources({ serviceName: 'test', inputSize: 100 })
  assert.deepEqual([r.cpu, r.memory, r.network], [30, 35, 6])
  const r4 = await p.predictResources({ serviceName: 'test', inputSize: 100, batchSize: 4 })
  assert.equal(r4.memory, 50)
})

// ---- RealTimeModelUpdates ----

test('realtime: the feedback loop\'s object prediction (predicted quality 0) is kept, not dropped', async () => {
  const dir = tmp('mlops-real-rt-')
  fs.writeFileSync(path.join(dir, BASE), JSON.stringify({ weights: [0, 0], bias: 0 }))
  const rt = new mlops.RealTimeModelUpdates({ modelsDir: dir, bufferSize: 1000, minSamplesForUpdate: 1000 })
  try {
    assert.equal(await rt.initialize(), true)
    const prediction = { predictedQuality: 0 }
    const sent = prediction.predictedQuality || prediction.quality || prediction
    assert.equal(await rt.addFeedback({ prediction: sent, actual: 6, features: [] }), true)
    assert.equal(await rt.addFeedback({ prediction: '5.5', actual: '6', features: ['1', '2'] }), true)
    assert.equal(await rt.addFeedback({ prediction: { junk: 1 }, actual: 6, features: [] }), false)
    await rt.flush()
    const st = rt.getStatistics()
    // Both were learned from: the featureless one counts for error statistics (processed at
    // once), the other waits in the buffer for the next update cycle.
    assert.equal(st.accepted, 2)
    assert.equal(st.processed + st.bufferSize, 2)
    assert.equal(st.rejected.total, 1)
  } finally {
    await rt.cleanup()
    fs.rmSync(dir, { recursive: true, force: true })
  }
})

test('realtime: cleanup() then initialize() serves again on the same log and replays it', async () => {
  const dir = tmp('mlops-real-rt-')
  fs.writeFileSync(path.join(dir, BASE), JSON.stringify({ weights: [0, 0], bias: 0 }))
  const rt = new mlops.RealTimeModelUpdates({ modelsDir: dir, bufferSize: 1000, minSamplesForUpdate: 1000 })
  try {
    assert.equal(await rt.initialize(), true)
    for (let i = 0; i < 10; i++) assert.equal(await rt.addFeedback({ prediction: 1, actual: 2, features: [i, 1] }), true)
    await rt.cleanup()
    assert.equal(await rt.initialize(), true)
    assert.equal(rt.getStatistics().replayed, 10)
    assert.equal(await rt.addFeedback({ prediction: 1, actual: 2, features: [1, 1] }), true)
    await rt.flush()
    assert.equal(rt.getStatistics().bufferSize, 11)
  } finally {
    await rt.cleanup()
    fs.rmSync(dir, { recursive: true, force: true })
  }
})
