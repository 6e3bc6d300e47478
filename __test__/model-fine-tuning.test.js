'use strict'
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { execFile } = require('node:child_process')
const { ModelFineTuning, getModelFineTuning } = require('..')
const shim = require('../lib/mlops/modelFineTuning')

const ROOT = path.join(__dirname, '..')
const BASE = 'quality-predictor-v3-advanced.json'
const ROWS = fs.readFileSync(path.join(ROOT, 'data', 'production-sample.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l))

function sandbox() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlops-ft-'))
  fs.copyFileSync(path.join(ROOT, 'models', BASE), path.join(dir, BASE))
  return dir
}

function listAll(dir) {
  return fs.readdirSync(dir, { recursive: true }).map(String).sort()
}

test('the shim and the package root export the same pair; config has the old defaults', () => {
  assert.equal(shim.ModelFineTuning, ModelFineTuning)
  assert.equal(shim.getModelFineTuning, getModelFineTuning)
  assert.equal(getModelFineTuning(), getModelFineTuning())
  const ft = new ModelFineTuning({ modelsDir: '/tmp/x' })
  assert.deepEqual(
    { ...ft.config, adamLearningRate: undefined },
    { learningRate: 0.001, batchSize: 32, epochs: 10, validationSplit: 0.2, minSamples: 100, maxSamples: 10000, adamLearningRate: undefined },
  )
  assert.equal(ft.fineTunedDir, '/tmp/x/fine-tuned')
})

test('fine-tuning the bundled model on the bundled data improves it, validated on held-out rows', async () => {
  const dir = sandbox()
  const ft = new ModelFineTuning({ modelsDir: dir })
  assert.equal(await ft.initialize(), true)
  assert.equal(ft.getNextVersion(BASE), 'v1')
  const progress = []
  const r = await ft.fineTuneModel(BASE, ROWS, { onProgress: (p) => progress.push(p), seed: 1 })
  assert.equal(r.success, true, r.error)
  assert.equal(r.version, 'v1')
  assert.ok(fs.existsSync(r.modelPath))
  for (const k of ['mse', 'mae', 'r2']) assert.equal(typeof r.metrics[k], 'number')
  assert.ok(r.metrics.mse < 0.6 * r.baseMetrics.mse, `fine-tuned ${r.metrics.mse} vs base ${r.baseMetrics.mse}`)
  assert.ok(r.improvement > 0.4 && r.accepted)
  assert.equal(r.samples.validation, 800)
  assert.ok(r.epochs.length >= 1 && r.epochs.every((e) => e.trainLoss > 0 && e.valLoss > 0))
  assert.equal(progress.length, r.epochs.length, 'one progress call per epoch, on the JS thread')
  assert.equal(typeof r.durationMs, 'number')
  // The saved model is the old format, extra keys kept, and predicts as the metrics say.
  const saved = JSON.parse(fs.readFileSync(r.modelPath, 'utf8'))
  assert.equal(saved.name, 'quality-predictor-v3-advanced')
  assert.deepEqual(saved.features.length, 8)
  const held = ROWS.slice(0, 200)
  const mse = ft.calculateMSE(ft.predictBatch(saved, held.map((x) => x.features)), held.map((x) => x.quality))
  assert.ok(mse < r.baseMetrics.mse)
  assert.equal(ft.getNextVersion(BASE), 'v2')
  const again = await ft.fineTuneModel(BASE, ROWS, { promote: true, seed: 2 })
  assert.equal(again.version, 'v2')
  assert.equal(again.status, 'production')
  const history = await ft.getFineTuningHistory(BASE)
  assert.deepEqual(history.map((h) => [h.version, h.status]), [['v2', 'production'], ['v1', 'candidate']])
  assert.equal(typeof history[0].created, 'string', 'created is a value, not a Promise')
  assert.ok(!Number.isNaN(Date.parse(history[0].created)))
  assert.equal(history[0].data.rows, 4000)
  assert.match(history[0].data.hash, /^[0-9a-f]{16}$/)
  assert.deepEqual(listAll(dir).filter((f) => f.endsWith('.tmp')), [], 'no temp files left')
  fs.rmSync(dir, { recursive: true })
})

test('promote, roll back and look up the production version', async () => {
  const dir = sandbox()
  const ft = new ModelFineTuning({ modelsDir: dir, epochs: 2 })
  for (let i = 0; i < 3; i++) assert.equal((await ft.fineTuneModel(BASE, ROWS, { seed: i })).success, true)
  assert.equal(await ft.getProductionVersion(BASE), null)
  assert.equal(await ft.getProductionModelPath(BASE), path.join(dir, BASE))
  await ft.promoteVersion(BASE, 'v1')
  const p3 = await ft.promoteVersion(BASE, 3)
  assert.equal(p3.status, 'production')
  assert.equal((await ft.getProductionVersion(BASE)).version, 'v3')
  assert.equal((await ft.rollback(BASE)).version, 'v1')
  assert.equal(await ft.rollback(BASE), null)
  await assert.rejects(ft.rollback(BASE), /no production version/)
  await assert.rejects(ft.promoteVersion(BASE, 'v9'), /no version 9/)
  await assert.rejects(ft.promoteVersion(BASE, 'latest'), RangeError)
  fs.rmSync(dir, { recursive: true })
})

test('strict: true fails on the first bad row, naming the row and field, and writes nothing', async () => {
  // Issue 9 changed the default to lenient (skip and count); strict keeps the old refusal.
  const dir = sandbox()
  const ft = new ModelFineTuning({ modelsDir: dir })
  const rows = ROWS.slice(0, 300).map((r) => ({ features: [...r.features], quality: r.quality }))
  const cases = [
    [rows.slice(0, 50), /fewer than minSamples \(100\)/],
    [rows.map((r, i) => (i === 7 ? { features: r.features.slice(1), quality: r.quality } : r)), /newData\[7\]\.features has 7 values, the model has 8/],
    [rows.map((r, i) => (i === 9 ? { features: r.features.map((x, j) => (j === 2 ? NaN : x)), quality: r.quality } : r)), /newData\[9\]\.features\[2\]/],
    [rows.map((r, i) => (i === 11 ? { features: r.features } : r)), /newData\[11\]\.quality is missing/],
    [rows.map((r, i) => (i === 12 ? { features: r.features, quality: 'seven' } : r)), /newData\[12\]\.quality must be a number/],
    [rows.map((r) => ({ features: r.features.slice(0, 5), quality: r.quality })), /newData\[0\]\.features has 5 values, the model has 8/],
    ['nope', /newData must be/],
    [[], /newData must not be empty/],
    [{ X: new Float64Array(10), y: new Float64Array(2), features: 8 }, /newData\.X has 10 values/],
  ]
  for (const [data, msg] of cases) {
    const r = await ft.fineTuneModel(BASE, data, { strict: true })
    assert.equal(r.success, false)
    assert.match(r.error, msg)
  }
  for (const [opts, msg] of [
    [{ epochs: 0 }, /options\.epochs/],
    [{ learningRate: -1 }, /options\.learningRate/],
    [{ validationSplit: 1 }, /options\.validationSplit/],
    [{ optimizer: 'lbfgs' }, /options\.optimizer/],
    [{ onProgress: 5 }, /options\.onProgress/],
    [{ batchSize: 2.5 }, /options\.batchSize/],
  ]) {
    const r = await ft.fineTuneModel(BASE, rows, opts)
    assert.equal(r.success, false)
    assert.match(r.error, msg)
  }
  const missing = await ft.fineTuneModel('does-not-exist.json', rows)
  assert.match(missing.error, /cannot read/)
  assert.ok(missing.error.includes(`models folder ${dir}`), missing.error)
  assert.deepEqual(listAll(dir), [BASE], 'nothing was written')
  fs.rmSync(dir, { recursive: true })
})

test('a corrupt or truncated base model is a clear error; loadModel gives null', async () => {
  const dir = sandbox()
  const text = fs.readFileSync(path.join(dir, BASE), 'utf8')
  fs.writeFileSync(path.join(dir, 'truncated.json'), text.slice(0, text.length / 2))
  fs.writeFileSync(path.join(dir, 'wrong.json'), '{"weights":"x","bias":1}')
  fs.writeFileSync(path.join(dir, 'binary.json'), Buffer.from([0xff, 0xfe, 0, 1, 2]))
  const ft = new ModelFineTuning({ modelsDir: dir })
  assert.match((await ft.fineTuneModel('truncated.json', ROWS)).error, /truncated\.json: not valid JSON/)
  assert.match((await ft.fineTuneModel('wrong.json', ROWS)).error, /weights must be an array/)
  assert.match((await ft.fineTuneModel('binary.json', ROWS)).error, /not UTF-8/)
  assert.match((await ft.fineTuneModel(dir, ROWS)).error, /directory/)
  assert.equal(await ft.loadModel('truncated.json'), null)
  assert.equal(await ft.loadModel('missing.json'), null)
  fs.rmSync(dir, { recursive: true })
})

test('old model files load with their extra keys and survive a save round trip', async () => {
  const dir = sandbox()
  const ft = new ModelFineTuning({ modelsDir: dir })
  const old = { weights: [0.5, -2], bias: 1, trainedBy: 'legacy', nested: { a: [1, 2] } }
  fs.writeFileSync(path.join(dir, 'legacy.json'), JSON.stringify(old))
  const loaded = await ft.loadModel('legacy.json')
  assert.deepEqual(loaded, old)
  const p = await ft.saveModel(loaded, 'legacy.json', 'v7')
  assert.equal(p, path.join(dir, 'fine-tuned', 'legacy', 'legacy-v7.json'))
  assert.deepEqual(JSON.parse(fs.readFileSync(p, 'utf8')), old)
  await assert.rejects(ft.saveModel({ weights: [NaN], bias: 0 }, 'legacy.json', 'v8'), /model\.weights\[0\]/)
  await assert.rejects(ft.saveModel(old, 'legacy.json', '../escape'), /not a plain name/)
  assert.equal(ft.predictSingle(old, [2, 1]), 0)
  assert.deepEqual(ft.evaluateModel(old, [[2, 1], [0, 0]], [0, 1]), { mse: 0, mae: 0, r2: 1 })
  fs.rmSync(dir, { recursive: true })
})

test('typed-array input and save: false train and evaluate without writing anything', async () => {
  const dir = sandbox()
  const ft = new ModelFineTuning({ modelsDir: dir })
  const X = new Float64Array(ROWS.flatMap((r) => r.features))
  const y = new Float64Array(ROWS.map((r) => r.quality))
  const r = await ft.fineTuneModel(BASE, { X, y, features: 8 }, { save: false, optimizer: 'ridge' })
  assert.equal(r.success, true, r.error)
  assert.equal(r.modelPath, null)
  assert.equal(r.model.weights.length, 8)
  assert.ok(r.improvement > 0.4)
  const sgd = await ft.fineTuneModel(BASE, { X, y, features: 8 }, { save: false, optimizer: 'sgd', epochs: 3, learningRate: 1e-9 })
  assert.equal(sgd.epochs.length, 3, 'sgd runs every epoch: no early stopping unless asked')
  assert.equal(sgd.success, true, sgd.error)
  const diverged = await ft.fineTuneModel(BASE, { X, y, features: 8 }, { save: false, optimizer: 'sgd', learningRate: 1 })
  assert.match(diverged.error, /diverged/, 'raw features with a large SGD rate: a clear error, not NaN weights')
  assert.deepEqual(listAll(dir), [BASE])
  fs.rmSync(dir, { recursive: true })
})

test('typed input: a NaN row is skipped (lenient) or named (strict), and a missing base is named', async () => {
  const dir = sandbox()
  const ft = new ModelFineTuning({ modelsDir: dir })
  const rows = ROWS.slice(0, 400)
  const X = new Float64Array(rows.flatMap((r) => r.features))
  const y = new Float64Array(rows.map((r) => r.quality))
  const opts = { save: false, optimizer: 'sgd', epochs: 2, seed: 3 }
  const clean = await ft.fineTuneModel(BASE, { X, y, features: 8 }, opts)
  assert.equal(clean.success, true, clean.error)
  assert.equal(clean.skipped.count, 0)
  const X2 = X.slice()
  X2[17 * 8 + 3] = NaN
  const y2 = y.slice()
  y2[30] = Infinity
  const lenient = await ft.fineTuneModel(BASE, { X: X2, y: y2, features: 8 }, opts)
  assert.equal(lenient.success, true, lenient.error)
  assert.deepEqual(lenient.skipped.reasons, { badFeature: 1, badQuality: 1 })
  assert.deepEqual(lenient.skipped.first.map((s) => s.row), [17, 30])
  assert.equal(lenient.samples.total, 400)
  assert.equal(lenient.samples.used, 398)
  const strict = await ft.fineTuneModel(BASE, { X: X2, y: y2, features: 8 }, { ...opts, strict: true })
  assert.match(strict.error, /newData\[17\]\.features\[3\] must be a finite number/)
  const few = await ft.fineTuneModel(BASE, { X: X2.subarray(0, 120 * 8), y: y2.subarray(0, 120), features: 8 }, { ...opts, minSamples: 119 })
  assert.match(few.error, /118 usable rows of 120, fewer than minSamples \(119\); 2 skipped/)
  const missing = await ft.fineTuneModel('nope.json', { X, y, features: 8 }, opts)
  assert.match(missing.error, /cannot read .*nope\.json: no such file \(models folder /)
  // Array-of-objects runs reuse their arrays: a smaller run after a larger one, then a
  // larger one again, train on exactly their own rows (same result as a fresh instance).
  for (const n of [400, 150, 300]) {
    const a = await ft.fineTuneModel(BASE, ROWS.slice(0, n), opts)
    const b = await new ModelFineTuning({ modelsDir: dir }).fineTuneModel(BASE, ROWS.slice(0, n), opts)
    assert.equal(a.success, true, a.error)
    assert.deepEqual(a.model, b.model, `${n} rows`)
    assert.equal(a.data.hash, b.data.hash)
  }
  assert.deepEqual(listAll(dir), [BASE])
  fs.rmSync(dir, { recursive: true })
})

test('concurrent runs, in-process and across processes, get distinct versions', async () => {
  const dir = sandbox()
  const ft = new ModelFineTuning({ modelsDir: dir, epochs: 2 })
  const child = `
    const { ModelFineTuning } = require(${JSON.stringify(ROOT)})
    const rows = require('fs').readFileSync(${JSON.stringify(path.join(ROOT, 'data', 'production-sample.jsonl'))}, 'utf8').trim().split('\\n').map((l) => JSON.parse(l))
    const ft = new ModelFineTuning({ modelsDir: ${JSON.stringify(dir)}, epochs: 2 })
    Promise.all([1, 2, 3].map((s) => ft.fineTuneModel(${JSON.stringify(BASE)}, rows, { seed: s }))).then((rs) => console.log(JSON.stringify(rs.map((r) => r.version))))`
  const spawnOne = () => new Promise((resolve, reject) => execFile(process.execPath, ['-e', child], (err, out) => (err ? reject(err) : resolve(JSON.parse(out)))))
  const [a, b, local] = await Promise.all([spawnOne(), spawnOne(), Promise.all([4, 5, 6].map((s) => ft.fineTuneModel(BASE, ROWS, { seed: s })))])
  const versions = [...a, ...b, ...local.map((r) => r.version)].map((v) => Number(v.slice(1))).sort((x, y) => x - y)
  assert.deepEqual(versions, [1, 2, 3, 4, 5, 6, 7, 8, 9])
  const history = await ft.getFineTuningHistory(BASE)
  assert.equal(history.length, 9, 'no manifest entry lost')
  for (const h of history) assert.ok(fs.existsSync(h.modelPath))
  fs.rmSync(dir, { recursive: true })
})

test('a script that fine-tunes with onProgress exits by itself', async () => {
  const dir = sandbox()
  const script = `
    const { ModelFineTuning } = require(${JSON.stringify(ROOT)})
    const rows = require('fs').readFileSync(${JSON.stringify(path.join(ROOT, 'data', 'production-sample.jsonl'))}, 'utf8').trim().split('\\n').map((l) => JSON.parse(l))
    let n = 0
    new ModelFineTuning({ modelsDir: ${JSON.stringify(dir)} }).fineTuneModel(${JSON.stringify(BASE)}, rows, { onProgress: () => { n++; throw new Error('callback bug') } })
      .then((r) => console.log(r.success, n > 0))`
  const out = await new Promise((resolve, reject) =>
    execFile(process.execPath, ['-e', script], { timeout: 30_000 }, (err, stdout) => (err ? reject(err) : resolve(stdout.trim()))),
  )
  assert.equal(out, 'true true', 'a throwing progress callback does not kill the run or the host')
  fs.rmSync(dir, { recursive: true })
})

test('npm run fine-tune: exit 0 with the report; exit 1 with a one-line reason', async () => {
  const dir = sandbox()
  const run = (args) =>
    new Promise((resolve) =>
      execFile(process.execPath, [path.join(ROOT, 'scripts', 'fine-tune-model.js'), ...args], { timeout: 60_000 }, (err, stdout, stderr) =>
        resolve({ code: err ? err.code : 0, stdout, stderr }),
      ),
    )
  const ok = await run([path.join(dir, BASE), '--epochs', '3', '--json'])
  assert.equal(ok.code, 0, ok.stderr)
  assert.equal(JSON.parse(ok.stdout).version, 'v1')
  const csv = path.join(dir, 'rows.csv')
  fs.writeFileSync(csv, 'a,b,c,d,e,f,g,h,quality\n' + ROWS.map((r) => [...r.features, r.quality].join(',')).join('\n'))
  const fromCsv = await run([path.join(dir, BASE), '--data', csv, '--epochs', '2'])
  assert.equal(fromCsv.code, 0, fromCsv.stderr)
  assert.match(fromCsv.stdout, /accepted: version v2/)
  const bad = await run([path.join(dir, BASE), '--data', path.join(dir, 'nope.jsonl')])
  assert.equal(bad.code, 1)
  assert.equal(bad.stderr.trim().split('\n').length, 1)
  assert.match(bad.stderr, /cannot read/)
  fs.rmSync(dir, { recursive: true })
})

test('a worker terminated while its fine-tunes run does not crash the process', async () => {
  // The runs read the worker's typed arrays on the addon's pool; terminating the worker
  // disposes of its memory, so teardown must wait for the runs to let go of the arrays
  // (src/js/finetune.rs, EnvHold). In a child process, so that a crash fails this test
  // instead of the runner.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlops-ft-worker-'))
  fs.writeFileSync(path.join(dir, 'base.json'), JSON.stringify({ weights: Array(8).fill(0), bias: 0 }))
  const script = `
    const { Worker } = require('node:worker_threads')
    const src = \`
      const { parentPort, workerData } = require('node:worker_threads')
      const { ModelFineTuning } = require(${JSON.stringify(ROOT)})
      const n = 20000, d = 8
      const X = new Float64Array(n * d).map((_, i) => (i * 7919 % 1000) / 1000)
      const y = new Float64Array(n).map((_, i) => X[i * d] - X[i * d + 1])
      const ft = new ModelFineTuning({ modelsDir: workerData })
      for (let i = 0; i < 3; i++) ft.fineTuneModel('base.json', { X, y, features: d }, { epochs: 30, save: false, onProgress() {} })
      parentPort.postMessage('started')
    \`
    ;(async () => {
      for (let i = 0; i < 20; i++) {
        const w = new Worker(src, { eval: true, workerData: ${JSON.stringify(dir)} })
        await new Promise((r) => w.once('message', r))
        await new Promise((r) => setTimeout(r, i % 4))
        await w.terminate()
      }
      console.log('ok')
    })()`
  try {
    const out = await new Promise((resolve, reject) => {
      execFile(process.execPath, ['-e', script], { timeout: 120_000 }, (err, stdout, stderr) => {
        if (err) reject(new Error(`${err.message} (signal ${err.signal}) ${stderr}`))
        else resolve(stdout)
      })
    })
    assert.equal(out.trim(), 'ok')
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
})
