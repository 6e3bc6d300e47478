'use strict'
// RealTimeModelUpdates serving tree families (issue 12, item 3): any family loads and
// serves, a residual corrector learns online on top of the trees, and a background refit
// of the trees is validated on unseen feedback before it swaps in.
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { RealTimeModelUpdates, ModelFineTuning, Model } = require('..')

const BASE = 'quality-predictor-v3-advanced.json'
const NAMES = ['a', 'b', 'c']

// Steps and a threshold: what trees fit and a line cannot.
const before = (x) => (x[0] > 5 ? 3 : 0) + 0.5 * x[1] + (x[2] > 0.5 ? 1 : 0)
const after = (x) => (x[0] < 3 ? 4 : -1) + (x[1] > 6 ? -3 : 2) + (x[2] > 0.5 ? 0 : 2)

function rng(seed) {
  let s = seed >>> 0
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0
    return s / 2 ** 32
  }
}
function points(n, seed) {
  const u = rng(seed)
  return Array.from({ length: n }, () => [u() * 10, u() * 10, u()])
}

function sandbox() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlops-rt-trees-'))
  fs.writeFileSync(path.join(dir, BASE), JSON.stringify({ weights: [0, 0, 0], bias: 0, featureNames: NAMES }))
  return dir
}

/** A small gbm fitted by ModelFineTuning on `truth`; resolves the fine-tune result. */
async function fitGbm(dir, truth = before, extra = {}) {
  const ft = new ModelFineTuning({ modelsDir: dir })
  const rows = points(800, 7).map((x) => ({ features: x, quality: truth(x) }))
  const r = await ft.fineTuneModel(BASE, rows, { model: 'gbm', trees: 40, maxDepth: 3, seed: 1, save: 'always', ...extra })
  assert.equal(r.success, true, r.error)
  assert.equal(r.family, 'gbm')
  return { ft, r }
}

// Events do not keep the process alive: a test waiting for one holds the loop open itself.
function waitFor(rt, event, pred = () => true, ms = 30_000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      rt.off(event, h)
      reject(new Error(`no ${event} event in ${ms} ms`))
    }, ms)
    function h(x) {
      if (!pred(x)) return
      clearTimeout(timer)
      rt.off(event, h)
      resolve(x)
    }
    rt.on(event, h)
  })
}

test('a gbm file serves: predictSync equals Model.predict (arrays and named features), then rollback', async () => {
  const dir = sandbox()
  const { r } = await fitGbm(dir)
  const m = await Model.load(r.modelPath)
  const rt = new RealTimeModelUpdates({ modelsDir: dir, followRegistry: false })
  assert.equal(await rt.initialize(), true)
  assert.equal(rt.getModelInfo().family, 'linear')
  assert.equal(await rt.hotSwapModel(r.modelPath), true)
  const info = rt.getModelInfo()
  assert.equal(info.family, 'gbm')
  assert.equal(info.features, 3)
  assert.deepEqual(info.featureNames, NAMES)
  assert.equal(rt.getStatistics().family, 'gbm')
  assert.equal(rt.getCurrentModelPath(), r.modelPath)
  for (const x of points(50, 99)) {
    assert.equal(rt.predictSync(x), m.predict(x))
    assert.equal(rt.predictSync({ a: x[0], b: x[1], c: x[2] }), m.predict(x))
  }
  assert.throws(() => rt.predictSync([1, 2]), /3/)
  assert.equal(await rt.rollback(), true)
  assert.equal(rt.getModelInfo().family, 'linear')
  assert.equal(rt.predictSync([1, 2, 3]), 0)
  await rt.cleanup()

  // The same file as the stream's own model: served from initialize() on.
  const direct = new RealTimeModelUpdates({ modelsDir: dir, modelPath: r.modelPath, feedbackLogDir: false, followRegistry: false })
  assert.equal(await direct.initialize(), true)
  assert.equal(direct.getStatistics().family, 'gbm')
  for (const x of points(20, 5)) assert.equal(direct.predictSync(x), m.predict(x))
  await direct.cleanup()
  fs.rmSync(dir, { recursive: true, force: true })
})

test('the residual corrector learns a systematic offset, is gated like the linear learner, and survives a restart', async () => {
  const dir = sandbox()
  const { r } = await fitGbm(dir)
  const m = await Model.load(r.modelPath)
  const opts = { modelsDir: dir, modelPath: r.modelPath, followRegistry: false, bufferSize: 100, minSamplesForUpdate: 20, refitEvery: 0, refitIntervalMs: 0 }
  const rt = new RealTimeModelUpdates(opts)
  assert.equal(await rt.initialize(), true)
  const probe = points(10, 1234)
  const updated = waitFor(rt, 'update')
  const acks = points(200, 3).map((x) => rt.addFeedback({ features: x, prediction: m.predict(x), actual: m.predict(x) + 3 }))
  assert.ok((await Promise.all(acks)).every(Boolean))
  const ev = await updated
  // Every event has been learned from once a flush (queued behind them) is answered.
  assert.equal(await rt.flush(), true)
  assert.equal(ev.family, 'gbm')
  assert.equal(ev.accepted, true)
  assert.ok(ev.improvement > 0.5, `improvement ${ev.improvement}`)
  for (const x of probe) {
    const moved = rt.predictSync(x) - m.predict(x)
    assert.ok(Math.abs(moved - 3) < 0.3, `served − trees = ${moved}, expected ≈ 3`)
  }
  const served = probe.map((x) => rt.predictSync(x))
  const s = rt.getStatistics()
  assert.equal(s.family, 'gbm')
  assert.equal(s.recentUpdates.at(-1).family, 'gbm')
  await rt.cleanup()

  // The corrector's state is saved with the trees' family and resumed on the same file.
  const saved = JSON.parse(fs.readFileSync(path.join(dir, 'online', 'quality-predictor-v3-advanced.online.json'), 'utf8'))
  assert.equal(saved.family, 'gbm')
  assert.equal(saved.base, r.modelPath)
  const again = new RealTimeModelUpdates(opts)
  assert.equal(await again.initialize(), true)
  assert.deepEqual(probe.map((x) => again.predictSync(x)), served)
  await again.cleanup()
  fs.rmSync(dir, { recursive: true, force: true })
})

test('refit under load: a distribution shift is refit in the background, validated, swapped in and kept across a restart', async () => {
  const dir = sandbox()
  const { r } = await fitGbm(dir)
  const opts = { modelsDir: dir, modelPath: r.modelPath, followRegistry: false, bufferSize: 100, minSamplesForUpdate: 20, refitEvery: 400, refitWindow: 400, refitIntervalMs: 0 }
  const rt = new RealTimeModelUpdates(opts)
  assert.equal(await rt.initialize(), true)
  const original = await Model.load(r.modelPath)
  const refit = waitFor(rt, 'update', (e) => e.reason === 'refit')
  let ev = null
  void refit.then((e) => (ev = e))
  const stream = points(6000, 11)
  let ackedWhileRefitting = 0
  let i = 0
  while (ev === null && i < stream.length) {
    const refitting = rt.getStatistics().refitting
    const batch = stream.slice(i, i + 20).map((x) => rt.addFeedback({ features: x, prediction: original.predict(x), actual: after(x) }))
    i += 20
    const ok = await Promise.all(batch)
    assert.ok(ok.every(Boolean), 'every event is acknowledged durable')
    if (refitting) ackedWhileRefitting += ok.length
    await new Promise((res) => setImmediate(res))
  }
  await refit
  assert.equal(await rt.flush(), true)
  assert.ok(ackedWhileRefitting > 0, 'acknowledgements kept flowing while a refit was fitted and validated')
  assert.equal(ev.family, 'gbm')
  assert.equal(ev.accepted, true)
  assert.ok(ev.candidateMse < ev.currentMse, `${ev.candidateMse} < ${ev.currentMse}`)
  assert.ok(ev.validationSamples >= 20)
  const s = rt.getStatistics()
  assert.ok(s.refitsAccepted >= 1)
  const served = rt.getCurrentModelPath()
  assert.notEqual(served, r.modelPath)
  assert.equal(path.dirname(served), path.join(dir, 'online'))
  const swapped = await Model.load(served)
  assert.equal(swapped.family, 'gbm')
  // What serves now is the refit (plus whatever its fresh corrector learned since), and it
  // fits the new distribution far better than the original trees.
  const probe = points(300, 77)
  const mse = (f) => probe.reduce((a, x) => a + (f(x) - after(x)) ** 2, 0) / probe.length
  const servedMse = mse((x) => rt.predictSync(x))
  assert.ok(servedMse < 0.5 * mse((x) => original.predict(x)), `served ${servedMse} vs original ${mse((x) => original.predict(x))}`)
  if (rt.getStatistics().modelVersion === ev.modelVersion) {
    for (const x of probe.slice(0, 20)) assert.equal(rt.predictSync(x), swapped.predict(x))
  }
  const before = probe.map((x) => rt.predictSync(x))
  await rt.cleanup()

  // A restart serves the refit with its corrector, not the file it was refit from.
  const again = new RealTimeModelUpdates(opts)
  assert.equal(await again.initialize(), true)
  assert.equal(again.getCurrentModelPath(), served)
  assert.deepEqual(probe.map((x) => again.predictSync(x)), before)
  await again.cleanup()
  fs.rmSync(dir, { recursive: true, force: true })
})

test('a corrupt, unknown or mismatched tree file is refused and the current model keeps serving', async () => {
  const dir = sandbox()
  const { r } = await fitGbm(dir)
  const text = fs.readFileSync(r.modelPath, 'utf8')
  const env = JSON.parse(text)
  const write = (name, body) => {
    const p = path.join(dir, name)
    fs.writeFileSync(p, typeof body === 'string' ? body : JSON.stringify(body))
    return p
  }
  const bad = {
    truncated: [write('truncated.json', text.slice(0, text.length / 2)), /not valid JSON/],
    unknown: [write('unknown.json', { ...env, format: 'mlops-native/xgboost@7' }), /unknown model format/],
    badTrees: [write('bad-trees.json', { ...env, model: { regressors: [{ left: {}, right: {} }] } }), /smartcore|gbm/],
    twoFeatures: [write('two.json', { ...env, features: ['a', 'b'] }), /feature/],
    missing: [path.join(dir, 'missing-gbm.json'), /cannot read/],
  }
  const rt = new RealTimeModelUpdates({ modelsDir: dir, modelPath: r.modelPath, feedbackLogDir: false, followRegistry: false })
  assert.equal(await rt.initialize(), true)
  const x = [4, 2, 0.7]
  const want = rt.predictSync(x)
  for (const [kind, [file, msg]] of Object.entries(bad)) {
    assert.equal(await rt.hotSwapModel(file), false, kind)
    const err = rt.getStatistics().lastError
    assert.ok(err.includes(file), `${kind}: ${err}`)
    assert.match(err, msg, kind)
    assert.equal(rt.predictSync(x), want, `${kind}: still serving`)
    assert.equal(rt.getCurrentModelPath(), r.modelPath)
  }
  await rt.cleanup()
  fs.rmSync(dir, { recursive: true, force: true })
})

test('a promoted tree version serves after initialize(), and a promotion is followed while running', async () => {
  const dir = sandbox()
  const { ft, r } = await fitGbm(dir)
  const m = await Model.load(r.modelPath)
  assert.equal((await ft.promoteVersion(BASE, r.version)).status, 'production')
  const rt = new RealTimeModelUpdates({ modelsDir: dir, feedbackLogDir: false })
  assert.equal(await rt.initialize(), true)
  assert.equal(rt.getCurrentModelPath(), r.modelPath)
  assert.equal(rt.getModelInfo().family, 'gbm')
  for (const x of points(20, 8)) assert.equal(rt.predictSync(x), m.predict(x))
  await rt.cleanup()

  // Following: a random forest promoted while the stream runs is picked up at a tick.
  const rf = await ft.fineTuneModel(BASE, points(600, 9).map((x) => ({ features: x, quality: after(x) })), { model: 'random_forest', trees: 20, seed: 3, save: 'always' })
  assert.equal(rf.success, true, rf.error)
  const follower = new RealTimeModelUpdates({ modelsDir: dir, feedbackLogDir: false, updateIntervalMs: 50 })
  assert.equal(await follower.initialize(), true)
  const swapped = waitFor(follower, 'update', (e) => e.reason === 'registry')
  await ft.promoteVersion(BASE, rf.version)
  const ev = await swapped
  assert.equal(ev.family, 'random_forest')
  const forest = await Model.load(rf.modelPath)
  assert.equal(follower.getStatistics().family, 'random_forest')
  for (const x of points(20, 10)) assert.equal(follower.predictSync(x), forest.predict(x))
  await follower.cleanup()
  fs.rmSync(dir, { recursive: true, force: true })
})
