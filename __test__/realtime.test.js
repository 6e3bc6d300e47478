'use strict'
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { execFile, spawn } = require('node:child_process')
const { RealTimeModelUpdates, getRealTimeModelUpdates, OnlineLinearModel, ModelFineTuning } = require('..')
const shim = require('../lib/mlops/realTimeModelUpdates')

const ROOT = path.join(__dirname, '..')
const BASE = 'quality-predictor-v3-advanced.json'

function sandbox(model = { weights: [0, 0], bias: 0, name: 'two-feature' }) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlops-rt-'))
  fs.writeFileSync(path.join(dir, BASE), JSON.stringify(model))
  return dir
}

// Events do not keep the process alive (by design); a test waiting for one holds the
// loop open itself, as a server's listening socket would.
const once = (rt, event) => {
  const hold = setInterval(() => {}, 1000)
  return new Promise((resolve) =>
    rt.on(event, function h(x) {
      rt.off(event, h)
      clearInterval(hold)
      resolve(x)
    }),
  )
}
const truth = (a, b) => 1 + 2 * a - b
function feedback(i) {
  const a = i % 10
  const b = i % 7
  return { features: [a, b], prediction: 0, actual: truth(a, b) }
}

function runChild(script, { kill = false, timeout = 30_000 } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    let err = ''
    child.stdout.on('data', (d) => (out += d))
    child.stderr.on('data', (d) => (err += d))
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`child did not exit in ${timeout} ms: ${err}`))
    }, timeout)
    child.on('exit', (code, signal) => {
      clearTimeout(timer)
      resolve({ code, signal, out, err })
    })
    void kill
  })
}

test('shim and root export the same pair; old defaults', () => {
  assert.equal(shim.RealTimeModelUpdates, RealTimeModelUpdates)
  assert.equal(shim.getRealTimeModelUpdates, getRealTimeModelUpdates)
  const rt = new RealTimeModelUpdates({ modelsDir: os.tmpdir() })
  assert.equal(rt.getCurrentModelPath(), BASE)
  const s = rt.getStatistics()
  for (const k of ['bufferSize', 'bufferCapacity', 'isUpdating', 'lastUpdateTime', 'updateCount', 'recentUpdates']) assert.ok(k in s, k)
  assert.equal(s.bufferCapacity, 100)
  assert.equal(rt.config.minSamplesForUpdate, 50)
  assert.equal(rt.config.updateThreshold, 0.05)
})

test('an accepted update is visible to the very next prediction; counts add up', async () => {
  const dir = sandbox()
  const rt = new RealTimeModelUpdates({ modelsDir: dir, minSamplesForUpdate: 20 })
  assert.equal(await rt.initialize(), true)
  assert.equal(await rt.initialize(), true, 'idempotent')
  assert.equal(rt.predictSync([3, 2]), 0)
  const updated = once(rt, 'update')
  const acks = await Promise.all(Array.from({ length: 100 }, (_, i) => rt.addFeedback(feedback(i))))
  assert.ok(acks.every((x) => x === true))
  const report = await updated
  assert.equal(report.accepted, true)
  assert.ok(report.improvement >= 0.05)
  const p = rt.predictSync([3, 2])
  assert.ok(p > 1 && p < 8, `served model moved toward ${truth(3, 2)}: ${p}`)
  assert.equal(await rt.predict([3, 2]), p)
  await rt.flush()
  const s = rt.getStatistics()
  assert.equal(s.modelVersion, report.modelVersion)
  assert.equal(s.swaps, 1)
  assert.equal(s.accepted, s.processed + s.bufferSize + s.queueDepth)
  assert.equal(s.received, s.accepted + s.rejected.total + s.dropped)
  assert.equal(s.updateCount, 1)
  assert.equal(s.recentUpdates.length, 1)
  assert.ok(await rt.rollback())
  assert.equal(rt.predictSync([3, 2]), 0, 'rollback serves the previous model again')
  assert.equal(await rt.rollback(), false, 'nothing further to roll back to')
  await rt.cleanup()
  fs.rmSync(dir, { recursive: true })
})

test('a rejected candidate leaves the old model serving', async () => {
  const dir = sandbox({ weights: [2, -1], bias: 1 }) // already the truth
  const rt = new RealTimeModelUpdates({ modelsDir: dir, updateThreshold: 0.5, bufferSize: 60, minSamplesForUpdate: 10 })
  await rt.initialize()
  const before = rt.predictSync([4, 4])
  const rejected = once(rt, 'rejected')
  for (let i = 0; i < 60; i++) rt.addFeedbackSync({ ...feedback(i), actual: feedback(i).actual + (i % 2 ? 0.3 : -0.3) })
  const r = await rejected
  assert.equal(r.accepted, false)
  assert.ok(r.improvement < 0.5)
  assert.equal(rt.predictSync([4, 4]), before)
  assert.equal(rt.getStatistics().updatesRejected, 1)
  assert.equal(rt.validateImprovement(r).constructor, Promise)
  assert.equal(await rt.validateImprovement(r), false)
  assert.equal(await rt.validateImprovement({ improvement: 0.6 }), true)
  assert.equal(await rt.validateImprovement({ metrics: { mse: '0.5' }, baseMetrics: { mse: '1.0' } }), true, 'old string metrics work')
  assert.equal(await rt.validateImprovement(null), false)
  await rt.cleanup()
  fs.rmSync(dir, { recursive: true })
})

test('feedback acknowledged by addFeedback survives SIGKILL and is replayed on restart', async () => {
  const dir = sandbox()
  const script = `
    const { RealTimeModelUpdates } = require(${JSON.stringify(ROOT)})
    const rt = new RealTimeModelUpdates({ modelsDir: ${JSON.stringify(dir)}, bufferSize: 100000, minSamplesForUpdate: 100000 })
    rt.initialize().then(async () => {
      const acks = await Promise.all(Array.from({ length: 250 }, (_, i) => rt.addFeedback({ features: [i % 10, i % 7], prediction: 0, actual: i })))
      console.log(acks.filter(Boolean).length)
      for (let i = 0; i < 1000; i++) rt.addFeedbackSync({ features: [1, 2], prediction: 0, actual: 1 }) // queued, maybe lost
      process.kill(process.pid, 'SIGKILL')
    })`
  const r = await runChild(script)
  assert.equal(r.signal, 'SIGKILL')
  const acked = Number(r.out.trim())
  assert.equal(acked, 250)
  // A drift alarm may have run a cycle before the kill: what it consumed is below the
  // watermark; everything acknowledged above it must be replayed.
  const { processedSeq } = require('../scripts/lib/feedback-log.js').readWatermark(path.join(dir, 'feedback-log'))
  const rt = new RealTimeModelUpdates({ modelsDir: dir, bufferSize: 100000, minSamplesForUpdate: 100000 })
  await rt.initialize()
  const s = rt.getStatistics()
  assert.ok(processedSeq + s.replayed >= acked, `consumed ${processedSeq} + replayed ${s.replayed} ≥ acknowledged ${acked}`)
  assert.equal(s.bufferSize, s.replayed, 'replayed feedback is buffered for learning')
  assert.equal(s.accepted, s.processed + s.bufferSize + s.queueDepth)
  // Sequence numbers continue after the log, and a clean shutdown leaves nothing to replay twice.
  assert.equal(await rt.addFeedback(feedback(1)), true)
  await rt.forceUpdate()
  await rt.cleanup()
  const again = new RealTimeModelUpdates({ modelsDir: dir })
  await again.initialize()
  assert.equal(again.getStatistics().replayed, 0)
  await again.cleanup()
  fs.rmSync(dir, { recursive: true })
})

test('a script that never calls cleanup() exits by itself', async () => {
  const dir = sandbox()
  const script = `
    const { RealTimeModelUpdates } = require(${JSON.stringify(ROOT)})
    const rt = new RealTimeModelUpdates({ modelsDir: ${JSON.stringify(dir)}, updateIntervalMs: 50 })
    rt.on('update', () => {})
    rt.initialize().then(async () => {
      for (let i = 0; i < 300; i++) rt.addFeedbackSync({ features: [i % 10, i % 7], prediction: 0, actual: i % 5 })
      console.log(await rt.addFeedback({ features: [1, 1], prediction: 0, actual: 1 }), rt.predictSync([1, 1]) !== undefined)
    })`
  const t0 = Date.now()
  const r = await runChild(script, { timeout: 15_000 })
  assert.equal(r.code, 0, r.err)
  assert.equal(r.out.trim(), 'true true')
  assert.ok(Date.now() - t0 < 10_000)
  // The exit hook flushed the log: a new process replays the events that were not processed.
  const rt = new RealTimeModelUpdates({ modelsDir: dir, bufferSize: 100000, minSamplesForUpdate: 100000 })
  await rt.initialize()
  const s = rt.getStatistics()
  assert.equal(s.replayed + 0, s.bufferSize)
  await rt.cleanup()
  fs.rmSync(dir, { recursive: true })
})

test('hotSwapModel checks the file and keeps serving the old model on failure', async () => {
  const dir = sandbox({ weights: [1, 1], bias: 0 })
  fs.writeFileSync(path.join(dir, 'good.json'), JSON.stringify({ weights: [2, 3], bias: 1, extra: 'ok' }))
  fs.writeFileSync(path.join(dir, 'three.json'), JSON.stringify({ weights: [1, 2, 3], bias: 0 }))
  fs.writeFileSync(path.join(dir, 'corrupt.json'), '{"weights":[1,')
  fs.writeFileSync(path.join(dir, 'nonfinite.json'), '{"weights":[1,"NaN"],"bias":0}')
  const rt = new RealTimeModelUpdates({ modelsDir: dir })
  await rt.initialize()
  assert.equal(rt.predictSync([1, 1]), 2)
  for (const bad of ['three.json', 'corrupt.json', 'nonfinite.json', 'missing.json', dir, '', 42]) {
    assert.equal(await rt.hotSwapModel(bad), false, String(bad))
    assert.equal(rt.predictSync([1, 1]), 2)
  }
  assert.match(rt.getStatistics().lastError, /weights|JSON|cannot read|directory/)
  assert.equal(await rt.hotSwapModel('good.json'), true)
  assert.equal(rt.predictSync([1, 1]), 6, 'the swap is visible to the next prediction')
  assert.equal(rt.getCurrentModelPath(), path.join(dir, 'good.json'))
  assert.equal(await rt.rollback(), true)
  assert.equal(rt.predictSync([1, 1]), 2)
  await rt.cleanup()
  fs.rmSync(dir, { recursive: true })
})

test('a production version promoted by another process is picked up within updateIntervalMs', async () => {
  const dir = sandbox({ weights: [0, 0], bias: 5 })
  const rt = new RealTimeModelUpdates({ modelsDir: dir, updateIntervalMs: 100 })
  await rt.initialize()
  assert.equal(rt.predictSync([1, 1]), 5)
  const ft = new ModelFineTuning({ modelsDir: dir })
  const rows = Array.from({ length: 200 }, (_, i) => ({ features: [i % 10, i % 7], quality: truth(i % 10, i % 7) }))
  const r = await ft.fineTuneModel(BASE, rows, { optimizer: 'ridge', promote: true })
  assert.equal(r.success, true, r.error)
  const ev = await once(rt, 'update')
  assert.equal(ev.reason, 'registry')
  assert.ok(Math.abs(rt.predictSync([3, 2]) - truth(3, 2)) < 0.1)
  // A new instance starts on the production version (once the first one has released the
  // log folder: one owner per folder, issue 10).
  await rt.cleanup()
  const rt2 = new RealTimeModelUpdates({ modelsDir: dir })
  assert.equal(await rt2.initialize(), true)
  assert.equal(rt2.getCurrentModelPath(), r.modelPath)
  await rt2.cleanup()
  fs.rmSync(dir, { recursive: true })
})

test('bad input: TypeError/RangeError naming the field (Sync), false (Promise); backpressure counts; after cleanup', async () => {
  const dir = sandbox()
  const rt = new RealTimeModelUpdates({ modelsDir: dir, queueCapacity: 1, feedbackLogDir: false })
  await rt.initialize()
  assert.equal(rt.addFeedbackSync({ prediction: 1 }), false, 'missing actual → false, as before')
  assert.equal(await rt.addFeedback({ actual: 1 }), false)
  const cases = [
    [() => rt.addFeedbackSync(null), TypeError, /feedback must be an object/],
    [() => rt.addFeedbackSync({ prediction: NaN, actual: 1 }), RangeError, /feedback\.prediction/],
    [() => rt.addFeedbackSync({ prediction: 1, actual: 'two' }), TypeError, /feedback\.actual/],
    [() => rt.addFeedbackSync({ prediction: 1, actual: 2, features: 'x' }), TypeError, /feedback\.features/],
    [() => rt.addFeedbackSync({ prediction: 1, actual: 2, features: [1, Infinity] }), RangeError, /feedback\.features\[1\]/],
    [() => rt.addFeedbackBatch([1], new Float64Array(1), new Float64Array(1)), TypeError, /features must be a Float64Array/],
    [() => rt.addFeedbackBatch(new Float64Array(3), new Float64Array(2), new Float64Array(2)), RangeError, /not a multiple/],
    [() => rt.addFeedbackBatch(new Float64Array(2), new Float64Array([1, NaN]), new Float64Array(2)), RangeError, /predictions\[1\]/],
    [() => rt.predictSync([1, 2, 3]), RangeError, /features has 3 values, the serving model has 2/],
    [() => rt.on('nope', () => {}), RangeError, /event/],
    [() => new RealTimeModelUpdates({ bufferSize: 0 }), RangeError, /options\.bufferSize/],
    [() => new RealTimeModelUpdates({ feedbackLogDir: 5 }), TypeError, /options\.feedbackLogDir/],
  ]
  for (const [fn, type, msg] of cases) assert.throws(fn, (e) => e instanceof type && msg.test(e.message), String(fn))
  assert.equal(await rt.addFeedback({ prediction: 1, actual: 2, features: [NaN] }), false)
  // Backpressure: a 1-slot queue refuses what it cannot hold, and counts it.
  let refused = 0
  for (let i = 0; i < 20000; i++) if (!rt.addFeedbackSync({ features: [], prediction: 1, actual: 2 })) refused++
  await rt.flush()
  const s = rt.getStatistics()
  assert.ok(refused > 0 && s.dropped === refused, `refused ${refused}, dropped ${s.dropped}`)
  assert.equal(s.accepted, s.processed + s.bufferSize + s.queueDepth, 'empty features are processed (stats, drift), not buffered')
  assert.equal(s.received, s.accepted + s.rejected.total + s.dropped)
  await rt.cleanup()
  assert.equal(await rt.cleanup(), true, 'cleanup twice is fine')
  assert.equal(rt.addFeedbackSync({ prediction: 1, actual: 2 }), false)
  assert.equal(await rt.addFeedback({ prediction: 1, actual: 2 }), false)
  assert.equal(rt.addFeedbackBatch(new Float64Array(2), new Float64Array(1), new Float64Array(1)), 0)
  assert.throws(() => rt.predictSync([1, 2]), /cleaned up/)
  assert.equal(await rt.hotSwapModel(BASE), false)
  assert.equal(await rt.forceUpdate(), null)
  fs.rmSync(dir, { recursive: true })
})

test('drift in the residuals triggers an update cycle and is reported', async () => {
  const dir = sandbox({ weights: [2, -1], bias: 1 })
  const rt = new RealTimeModelUpdates({ modelsDir: dir, bufferSize: 100000, minSamplesForUpdate: 100000, feedbackLogDir: false })
  await rt.initialize()
  const drift = once(rt, 'drift')
  for (let i = 0; i < 400; i++) rt.addFeedbackSync({ ...feedback(i), actual: feedback(i).actual + (i % 2 ? 0.1 : -0.1) })
  for (let i = 0; i < 200; i++) rt.addFeedbackSync({ ...feedback(i), actual: feedback(i).actual + 25 })
  const d = await drift
  assert.ok(d.seq > 400)
  await rt.flush()
  const s = rt.getStatistics()
  assert.ok(s.drifts >= 1)
  assert.ok(s.recentUpdates.some((u) => u.reason === 'drift'))
  await rt.cleanup()
  fs.rmSync(dir, { recursive: true })
})

test('npm run fine-tune --data reads the feedback log', async () => {
  const dir = sandbox()
  const rt = new RealTimeModelUpdates({ modelsDir: dir, bufferSize: 100000, minSamplesForUpdate: 100000 })
  await rt.initialize()
  await Promise.all(Array.from({ length: 150 }, (_, i) => rt.addFeedback(feedback(i))))
  await rt.cleanup()
  const log = fs.readdirSync(path.join(dir, 'feedback-log')).find((f) => f.endsWith('.jsonl'))
  const out = await new Promise((resolve) =>
    execFile(process.execPath, [path.join(ROOT, 'scripts', 'fine-tune-model.js'), path.join(dir, BASE), '--data', path.join(dir, 'feedback-log', log), '--json', '--optimizer', 'ridge'], (err, stdout, stderr) => resolve({ err, stdout, stderr })),
  )
  assert.equal(out.err, null, out.stderr)
  const r = JSON.parse(out.stdout)
  assert.equal(r.samples.total, 150)
  assert.ok(r.metrics.r2 > 0.99)
  fs.rmSync(dir, { recursive: true })
})

test('OnlineLinearModel: learns, restores exactly where it stopped, refuses bad input', () => {
  const m = new OnlineLinearModel()
  assert.equal(m.features, 0)
  for (let i = 0; i < 3000; i++) m.learnOne([i % 10, (i % 7) * 1000], 1 + 2 * (i % 10) - 0.001 * (i % 7) * 1000)
  assert.equal(m.features, 2, 'feature count taken from the first sample')
  assert.ok(Math.abs(m.predictOne([3, 2000]) - (1 + 6 - 2)) < 0.3)
  const copy = OnlineLinearModel.fromJSON(JSON.parse(JSON.stringify(m.toJSON())))
  assert.ok(copy instanceof OnlineLinearModel)
  for (let i = 0; i < 50; i++) {
    m.learnOne([i % 3, i], i)
    copy.learnOne([i % 3, i], i)
  }
  assert.equal(copy.predictOne([1, 5]), m.predictOne([1, 5]), 'optimiser state restored: identical continuation')
  const X = new Float64Array([1, 1000, 2, 2000])
  assert.deepEqual(Array.from(m.predictBatch(X)), [m.predictOne([1, 1000]), m.predictOne([2, 2000])])
  assert.equal(m.learnBatch(X, new Float64Array([1, 2])), 2)
  const raw = m.toModel()
  assert.ok(Math.abs(raw.bias + raw.weights[0] * 3 + raw.weights[1] * 2000 - m.predictOne([3, 2000])) < 1e-6)
  const from = OnlineLinearModel.fromModel(raw)
  assert.ok(Math.abs(from.predictOne([3, 2000]) - m.predictOne([3, 2000])) < 1e-6)
  assert.throws(() => m.learnOne([1, 2, 3], 1), /features has 3 values, the model has 2/)
  assert.throws(() => m.learnOne([1, NaN], 1), RangeError)
  assert.throws(() => m.learnOne('x', 1), TypeError)
  assert.throws(() => m.learnOne([1, 2], '1'), TypeError)
  assert.throws(() => m.learnBatch(new Float64Array(3), new Float64Array(2)), /not a multiple/)
  assert.throws(() => OnlineLinearModel.fromJSON({ format: 'x' }), /not an OnlineLinearModel state/)
  assert.throws(() => new OnlineLinearModel({ learningRate: -1 }), RangeError)
  assert.throws(() => OnlineLinearModel.fromModel({ weights: 'x', bias: 0 }), /weights/)
  assert.ok(Math.abs(m.predictOne([3, 2000])) < 1e6, 'still a sane model after the bad calls')
})
