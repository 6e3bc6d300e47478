'use strict'
// Fine-tuning on the data and calls services really send (issue 9), a promotion gate that
// does not promote noise (issue 11) and model families (issue 12).
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { ModelFineTuning, Model } = require('..')

const ROOT = path.join(__dirname, '..')
const BASE = 'quality-predictor-v3-advanced.json'
const ROWS = fs.readFileSync(path.join(ROOT, 'data', 'production-sample.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l))
const NAMES = JSON.parse(fs.readFileSync(path.join(ROOT, 'models', BASE), 'utf8')).features

function sandbox() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlops-ft-hard-'))
  fs.copyFileSync(path.join(ROOT, 'models', BASE), path.join(dir, BASE))
  return dir
}

/** Seeded normal deviates. */
function rng(seed) {
  let s = seed >>> 0 || 1
  const u = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) + 0.5) / 4294967296
  return () => Math.sqrt(-2 * Math.log(u())) * Math.cos(2 * Math.PI * u())
}

function linearRows(n, w, b, noise, seed, scale = 1) {
  const g = rng(seed)
  return Array.from({ length: n }, () => {
    const features = w.map(() => g())
    return { features, quality: scale * (b + features.reduce((s, x, j) => s + w[j] * x, 0) + noise * g()) }
  })
}

const listFiles = (dir) => fs.readdirSync(dir, { recursive: true }).map(String).filter((f) => f.endsWith('.json')).sort()

// ------------------------------------------------------------------ issue 9: real inputs

test('numeric strings in options and rows are numbers (database job rows and columns)', async () => {
  const dir = sandbox()
  const ft = new ModelFineTuning({ modelsDir: dir })
  const rows = ROWS.slice(0, 1000).map((r) => ({ features: r.features.map(String), quality: String(r.quality) }))
  const r = await ft.fineTuneModel(BASE, rows, { epochs: '10', learningRate: '0.01', batchSize: '32', save: false, seed: '3' })
  assert.equal(r.success, true, r.error)
  const same = await ft.fineTuneModel(BASE, ROWS.slice(0, 1000), { epochs: 10, learningRate: 0.01, batchSize: 32, save: false, seed: 3 })
  assert.deepEqual(r.model, same.model, 'strings and numbers train the same model')
  assert.equal(r.skipped.count, 0)
  const bad = await ft.fineTuneModel(BASE, rows, { epochs: 'ten' })
  assert.equal(bad.success, false)
  assert.match(bad.error, /options\.epochs must be a number, got the string "ten"/)
  fs.rmSync(dir, { recursive: true })
})

test('lenient by default: unusable rows are skipped, counted by reason, and the first ones listed', async () => {
  const dir = sandbox()
  const ft = new ModelFineTuning({ modelsDir: dir })
  const rows = ROWS.slice(0, 400).map((r) => ({ features: [...r.features], quality: r.quality }))
  rows[3] = { features: rows[3].features } // missingQuality
  rows[5] = { features: [], quality: 5 } // emptyFeatures
  rows[8] = { features: rows[8].features.slice(0, 6), quality: 4 } // fewer values than weights
  rows[9] = { features: [...rows[9].features, 1, 2], quality: 4 } // more values than weights
  rows[11] = { features: rows[11].features.map((x, j) => (j === 1 ? 'n/a' : x)), quality: 4 }
  rows[13] = null
  rows[17] = { features: rows[17].features, quality: 'NaN' }
  const r = await ft.fineTuneModel(BASE, rows, { save: false })
  assert.equal(r.success, true, r.error)
  assert.deepEqual(r.skipped.reasons, { missingQuality: 1, emptyFeatures: 1, wrongLength: 2, badFeature: 1, notAnObject: 1, badQuality: 1 })
  assert.equal(r.skipped.count, 7)
  assert.deepEqual(r.skipped.first.map((s) => [s.row, s.reason]), [
    [3, 'missingQuality'], [5, 'emptyFeatures'], [8, 'wrongLength'], [9, 'wrongLength'], [11, 'badFeature'], [13, 'notAnObject'], [17, 'badQuality'],
  ])
  assert.match(r.skipped.first[3].message, /newData\[9\]\.features has 10 values, the model has 8 features/)
  assert.deepEqual([r.samples.total, r.samples.used], [400, 393])
  // strict: the old refusal of the whole run, naming the first bad row.
  const strict = await ft.fineTuneModel(BASE, rows, { save: false, strict: true })
  assert.equal(strict.success, false)
  assert.match(strict.error, /newData\[3\]\.quality is missing/)
  fs.rmSync(dir, { recursive: true })
})

test('a run fails only when fewer usable rows than minSamples remain, and says why', async () => {
  const dir = sandbox()
  const ft = new ModelFineTuning({ modelsDir: dir })
  const rows = ROWS.slice(0, 150).map((r, i) => (i % 3 === 0 ? { features: r.features } : r))
  const r = await ft.fineTuneModel(BASE, rows, { save: false })
  assert.equal(r.success, true, '100 usable rows meet minSamples 100')
  assert.equal(r.skipped.count, 50)
  const r2 = await ft.fineTuneModel(BASE, rows, { minSamples: 120 })
  assert.equal(r2.success, false)
  assert.match(r2.error, /100 usable rows of 150, fewer than minSamples \(120\); 50 skipped \(50 missingQuality\), first: newData\[0\]\.quality is missing/)
  assert.deepEqual(listFiles(dir), [BASE])
  fs.rmSync(dir, { recursive: true })
})

test('features as an object of named numbers map through the model file\'s names or options.featureNames', async () => {
  const dir = sandbox()
  const ft = new ModelFineTuning({ modelsDir: dir })
  const named = ROWS.slice(0, 600).map((r) => ({ features: Object.fromEntries(NAMES.map((n, j) => [n, r.features[j]]).reverse()), quality: r.quality }))
  const a = await ft.fineTuneModel(BASE, named, { save: false })
  const b = await ft.fineTuneModel(BASE, ROWS.slice(0, 600), { save: false })
  assert.equal(a.success, true, a.error)
  assert.deepEqual(a.model, b.model, 'named and positional rows train the same model')
  // An unknown name: a skip reason in lenient mode, an error naming it in strict mode.
  named[4].features.promptTokenz = 1
  const lenient = await ft.fineTuneModel(BASE, named, { save: false })
  assert.deepEqual(lenient.skipped.reasons, { unknownFeature: 1 })
  assert.match(lenient.skipped.first[0].message, /newData\[4\]\.features\.promptTokenz is not a feature of the model/)
  const strict = await ft.fineTuneModel(BASE, named, { save: false, strict: true })
  assert.match(strict.error, /newData\[4\]\.features\.promptTokenz is not a feature/)
  // A model file without names: options.featureNames, or a clear error.
  fs.writeFileSync(path.join(dir, 'plain.json'), JSON.stringify({ weights: [0, 0], bias: 0 }))
  const rows = linearRows(300, [2, -1], 1, 0.1, 5).map((r) => ({ features: { a: r.features[0], b: r.features[1] }, quality: r.quality }))
  const noNames = await ft.fineTuneModel('plain.json', rows, { save: false })
  assert.match(noNames.error, /no featureNames: pass options\.featureNames/)
  const withNames = await ft.fineTuneModel('plain.json', rows, { save: false, featureNames: ['a', 'b'], optimizer: 'ridge' })
  assert.equal(withNames.success, true, withNames.error)
  assert.ok(Math.abs(withNames.model.weights[0] - 2) < 0.05 && Math.abs(withNames.model.weights[1] + 1) < 0.05)
  fs.rmSync(dir, { recursive: true })
})

test('the services\' nested linear files load, fine-tune, and are written back in their own shape', async () => {
  const dir = sandbox()
  const ft = new ModelFineTuning({ modelsDir: dir })
  const rows = linearRows(600, [2, -1], 1, 0.1, 6).map((r) => ({ features: { a: r.features[0], b: r.features[1] }, quality: r.quality }))
  const nested = { model: { weights: [0, 0], bias: 0, featureNames: ['a', 'b'] }, metrics: { mse: 9 }, featureNames: ['a', 'b'] }
  const exported = { model: { type: 'linear_regression', coefficients: [0, 0], intercept: 0, featureNames: ['a', 'b'] } }
  fs.writeFileSync(path.join(dir, 'nested.json'), JSON.stringify(nested))
  fs.writeFileSync(path.join(dir, 'exported.json'), JSON.stringify(exported))
  for (const [file, weightsKey, biasKey] of [['nested.json', 'weights', 'bias'], ['exported.json', 'coefficients', 'intercept']]) {
    const r = await ft.fineTuneModel(file, rows, { optimizer: 'ridge' })
    assert.equal(r.success, true, r.error)
    assert.equal(r.accepted, true)
    const saved = JSON.parse(fs.readFileSync(r.modelPath, 'utf8'))
    assert.equal(saved.weights, undefined, 'no flat copy added')
    assert.ok(Math.abs(saved.model[weightsKey][0] - 2) < 0.05, JSON.stringify(saved))
    assert.ok(Math.abs(saved.model[biasKey] - 1) < 0.05)
    assert.deepEqual(saved.model.featureNames, ['a', 'b'])
    const m = await Model.load(r.modelPath)
    assert.equal(m.family, 'linear')
    assert.deepEqual(m.features, ['a', 'b'])
    // The old helpers read these shapes too.
    const loaded = await ft.loadModel(r.modelPath)
    assert.ok(Math.abs(ft.predictSingle(loaded, [1, 2]) - m.predict([1, 2])) < 1e-12)
  }
  fs.rmSync(dir, { recursive: true })
})

test('a missing base model names the resolved models folder', async () => {
  const dir = sandbox()
  const ft = new ModelFineTuning({ modelsDir: dir })
  const r = await ft.fineTuneModel('nope.json', ROWS)
  assert.equal(r.success, false)
  assert.ok(r.error.includes(path.join(dir, 'nope.json')) && r.error.includes(`models folder ${dir}`), r.error)
  fs.rmSync(dir, { recursive: true })
})

// ------------------------------------------------------------------ issue 11: the gate

test('the bundled drifted sample is accepted on the test split, with its statistic and p-value', async () => {
  const dir = sandbox()
  const ft = new ModelFineTuning({ modelsDir: dir })
  const r = await ft.fineTuneModel(BASE, ROWS, { seed: 1 })
  assert.equal(r.success, true, r.error)
  assert.equal(r.accepted, true)
  assert.equal(r.reason, null)
  assert.deepEqual([r.samples.train, r.samples.validation, r.samples.test], [2400, 800, 800])
  assert.equal(r.test.rows, 800)
  assert.deepEqual(r.test.metrics, r.metrics)
  assert.ok(r.test.metrics.mse < 0.5 * r.test.baseMetrics.mse)
  assert.ok(r.statistic > 5 && r.pValue < 1e-6, `t ${r.statistic}, p ${r.pValue}`)
  assert.equal(r.test.pValue, r.pValue)
  assert.equal(typeof r.validation.metrics.mse, 'number')
  fs.rmSync(dir, { recursive: true })
})

test('a run that returns the base unchanged is "no change" and writes no version unless save: "always"', async () => {
  const dir = sandbox()
  fs.writeFileSync(path.join(dir, 'truth.json'), JSON.stringify({ weights: [2, -1], bias: 1 }))
  const ft = new ModelFineTuning({ modelsDir: dir })
  // The base is the exact truth: no epoch can beat it on validation.
  const rows = linearRows(300, [2, -1], 1, 0, 8)
  const r = await ft.fineTuneModel('truth.json', rows)
  assert.equal(r.success, true, r.error)
  assert.deepEqual([r.accepted, r.reason, r.saved, r.modelPath, r.version, r.bestEpoch], [false, 'no change', false, null, null, 0])
  assert.deepEqual(r.model, { weights: [2, -1], bias: 1 })
  assert.deepEqual(listFiles(dir), [BASE, 'truth.json'])
  const always = await ft.fineTuneModel('truth.json', rows, { save: 'always' })
  assert.deepEqual([always.accepted, always.reason, always.saved, always.version], [false, 'no change', true, 'v1'])
  assert.ok(fs.existsSync(always.modelPath))
  fs.rmSync(dir, { recursive: true })
})

test('with the base equal to the truth, noise is promoted in at most 5 % of runs', async () => {
  // Issue 11: the old gate accepted 290 of 300 such runs. 60 seeded runs here (300 in the
  // cargo test `the_gate_promotes_noise_in_at_most_five_percent_of_runs`).
  const dir = sandbox()
  fs.writeFileSync(path.join(dir, 'truth.json'), JSON.stringify({ weights: [1.5, -2, 0.5], bias: 1 }))
  const ft = new ModelFineTuning({ modelsDir: dir })
  let promoted = 0
  let noChange = 0
  const runs = 60
  for (let run = 0; run < runs; run++) {
    const rows = linearRows(150, [1.5, -2, 0.5], 1, 1, 1000 + run)
    const r = await ft.fineTuneModel('truth.json', rows, { save: false, seed: run })
    assert.equal(r.success, true, r.error)
    if (r.accepted) promoted++
    if (r.reason === 'no change') noChange++
    assert.ok(r.pValue >= 0 && r.pValue <= 1)
  }
  assert.ok(promoted <= runs * 0.05, `${promoted} of ${runs} promoted`)
  assert.ok(noChange > 0, 'some runs keep the base')
  fs.rmSync(dir, { recursive: true })
})

test('Adam is scale-free in the target: y in milliseconds fits as well as y in seconds', async () => {
  const dir = sandbox()
  fs.writeFileSync(path.join(dir, 'zero.json'), JSON.stringify({ weights: [0, 0], bias: 0 }))
  const ft = new ModelFineTuning({ modelsDir: dir })
  for (const scale of [1, 1000]) {
    const r = await ft.fineTuneModel('zero.json', linearRows(1000, [3, -1], 0, 0.1, 9, scale), { save: false })
    assert.equal(r.success, true, r.error)
    assert.ok(r.metrics.r2 >= 0.97, `y×${scale}: R² ${r.metrics.r2}`)
    assert.ok(Math.abs(r.model.weights[0] / scale - 3) < 0.15, `y×${scale}: w ${r.model.weights}`)
  }
  fs.rmSync(dir, { recursive: true })
})

test('R² is defined for a constant target: 1 for a perfect fit, 0 otherwise', () => {
  const ft = new ModelFineTuning({ modelsDir: os.tmpdir() })
  assert.equal(ft.calculateR2([7, 7, 7], [7, 7, 7]), 1)
  assert.equal(ft.calculateR2([7.5, 7, 7], [7, 7, 7]), 0)
  assert.equal(ft.calculateR2([1, 2, 3], [1, 2, 3]), 1)
})

// ------------------------------------------------------------------ issue 12: families

/** A plain-JS reading of the envelope, to check that Rust and the file agree. */
function jsPredict(envelope, x) {
  const m = envelope.model
  if (envelope.format === 'mlops-native/gbm@1') {
    const walk = (n) => (n.left === null ? n.value : walk(x[n.split_feature_idx] <= n.threshold ? n.left : n.right))
    return m.regressors.reduce((s, t) => s + m.parameters.learning_rate * walk(t), m.parameters.base_score)
  }
  const trees = m.forest_regressor.trees
  const walk = (nodes) => {
    let i = 0
    while (nodes[i].true_child !== null) i = x[nodes[i].split_feature] <= nodes[i].split_value ? nodes[i].true_child : nodes[i].false_child
    return nodes[i].output
  }
  return trees.reduce((s, t) => s + walk(t.nodes), 0) / trees.length
}

for (const family of ['gbm', 'random_forest', 'extra_trees']) {
  test(`${family}: fit, save as a versioned envelope, load, predict like the file says, promote and roll back`, async () => {
    const dir = sandbox()
    const ft = new ModelFineTuning({ modelsDir: dir })
    const rows = ROWS.slice(0, 1500)
    const r = await ft.fineTuneModel(BASE, rows, { model: family, trees: 30, seed: 2 })
    assert.equal(r.success, true, r.error)
    assert.equal(r.family, family)
    assert.equal(r.baseFamily, 'linear')
    assert.equal(r.accepted, true, `trees beat the drifted linear base (p ${r.pValue})`)
    const file = JSON.parse(fs.readFileSync(r.modelPath, 'utf8'))
    assert.equal(file.format, `mlops-native/${family}@1`)
    assert.deepEqual(file.features, NAMES)
    assert.deepEqual(file.metrics, r.metrics)
    assert.equal(file.hyperparameters.seed, 2)
    const m = await Model.load(r.modelPath)
    assert.equal(m.family, family)
    assert.deepEqual(m.features, NAMES)
    const X = new Float64Array(ROWS.slice(3000, 3100).flatMap((x) => x.features))
    const batch = m.predictBatch(X, 100)
    for (let i = 0; i < 100; i++) {
      const x = ROWS[3000 + i].features
      assert.ok(Math.abs(m.predict(x) - batch[i]) < 1e-12)
      assert.ok(Math.abs(jsPredict(file, x) - batch[i]) < 1e-9, `row ${i}: ${jsPredict(file, x)} vs ${batch[i]}`)
    }
    assert.deepEqual(m.toJSON(), file)
    // Through JS and back: loadModel → saveModel → Model.load predicts the same.
    const copy = await ft.saveModel(await ft.loadModel(r.modelPath), BASE, 'v99')
    assert.deepEqual((await Model.load(copy)).predictBatch(X, 100), batch)
    assert.deepEqual(Model.fromJSON(file).predictBatch(X, 100), batch)
    // The registry records the family and hyperparameters; promote/rollback work.
    const [entry] = await ft.getFineTuningHistory(BASE)
    assert.equal(entry.family, family)
    assert.equal(entry.hyperparameters.seed, 2)
    assert.equal((await ft.promoteVersion(BASE, entry.version)).status, 'production')
    assert.equal(await ft.getProductionModelPath(BASE), r.modelPath)
    // Without `model`, the base file's family decides: a tree base refits its own family.
    const again = await ft.fineTuneModel(r.modelPath, ROWS.slice(1500, 3000), { trees: 20, save: false })
    assert.equal(again.success, true, again.error)
    assert.equal(again.family, family)
    assert.equal(await ft.rollback(BASE), null)
    // Corrupt or unknown files are refused, naming the file.
    const text = fs.readFileSync(r.modelPath, 'utf8')
    const truncated = path.join(dir, `${family}-truncated.json`)
    fs.writeFileSync(truncated, text.slice(0, text.length / 2))
    await assert.rejects(Model.load(truncated), (e) => e.message.includes(truncated) && /not valid JSON/.test(e.message))
    const future = path.join(dir, `${family}-future.json`)
    fs.writeFileSync(future, JSON.stringify({ ...file, format: `mlops-native/${family}@9` }))
    await assert.rejects(Model.load(future), (e) => e.message.includes(future) && /unknown model format/.test(e.message))
    const broken = path.join(dir, `${family}-broken.json`)
    fs.writeFileSync(broken, JSON.stringify({ ...file, model: { nope: 1 } }))
    await assert.rejects(Model.load(broken), new RegExp(`not a smartcore ${family}`))
    assert.match((await ft.fineTuneModel(broken, rows)).error, /not a smartcore/)
    fs.rmSync(dir, { recursive: true })
  })
}

test("model: 'auto' fits every family, chooses on validation, and reports the winner on the test rows", async () => {
  const dir = sandbox()
  const ft = new ModelFineTuning({ modelsDir: dir })
  const r = await ft.fineTuneModel(BASE, ROWS, { model: 'auto' })
  assert.equal(r.success, true, r.error)
  assert.deepEqual(r.candidates.map((c) => c.family), ['linear', 'gbm', 'random_forest', 'extra_trees'])
  for (const c of r.candidates) assert.ok(c.metrics.mse > 0 && c.testMetrics.mse > 0 && c.trainMs >= 0)
  const best = r.candidates.reduce((a, b) => (b.metrics.mse < a.metrics.mse ? b : a))
  assert.equal(r.family, best.family, 'chosen on validation')
  assert.deepEqual(r.metrics, best.testMetrics, 'reported on the test rows')
  assert.ok(r.metrics.mse <= 0.235, `held-out MSE ${r.metrics.mse} (Python xgboost: 0.2245)`)
  assert.equal(r.accepted, true)
  fs.rmSync(dir, { recursive: true })
})

test('Model: old flat files load; bad input is a RangeError naming the field', async () => {
  const dir = sandbox()
  const m = await Model.load(path.join(dir, BASE))
  assert.equal(m.family, 'linear')
  assert.deepEqual(m.features, NAMES)
  const ft = new ModelFineTuning({ modelsDir: dir })
  const raw = JSON.parse(fs.readFileSync(path.join(dir, BASE), 'utf8'))
  assert.ok(Math.abs(m.predict(ROWS[0].features) - ft.predictSingle(raw, ROWS[0].features)) < 1e-9)
  assert.equal(m.predict(Float64Array.from(ROWS[0].features)), m.predict(ROWS[0].features))
  assert.deepEqual(m.toJSON(), raw)
  assert.throws(() => m.predict([1, 2]), { name: 'RangeError', message: /features has 2 values, the model has 8/ })
  assert.throws(() => m.predict([1, 2, 3, 4, 5, 6, 7, NaN]), { name: 'RangeError', message: /features\[7\]/ })
  assert.throws(() => m.predictBatch(new Float64Array(7), 1), RangeError)
  // Anything but numbers in an array or a Float64Array is a TypeError naming the field.
  for (const bad of [Int32Array.from(ROWS[0].features), [1, 2, 3, 4, 5, 6, 7, '8'], 'x', null, undefined, { length: 8 }]) {
    assert.throws(() => m.predict(bad), { name: 'TypeError', message: /features must be an array of numbers or a Float64Array/ })
  }
  assert.throws(() => m.predict(new Float64Array(3)), { name: 'RangeError', message: /features has 3 values/ })
  // More features than the array path's stack buffer holds.
  const wide = Model.fromJSON({ weights: Array.from({ length: 100 }, (_, i) => i), bias: 1 })
  const x = Array.from({ length: 100 }, (_, i) => i / 100)
  const expected = 1 + x.reduce((s, v, i) => s + v * i, 0)
  assert.ok(Math.abs(wide.predict(x) - expected) < 1e-9)
  assert.equal(wide.predict(Float64Array.from(x)), wide.predict(x))
  await assert.rejects(Model.load(path.join(dir, 'missing.json')), /cannot read/)
  fs.rmSync(dir, { recursive: true })
})
