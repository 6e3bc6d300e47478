'use strict'
// Issue 12 item 4: every RealTimeModelUpdates runs on the addon's one tokio runtime (no
// thread per instance), its worker count is an option, and a long update cycle does not
// hold up durable acknowledgements.
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { execFileSync } = require('node:child_process')
const { RealTimeModelUpdates } = require('..')
const { readLog } = require('../scripts/lib/feedback-log.js')

const BASE = 'quality-predictor-v3-advanced.json'
const QUIET = { bufferSize: 1e6, minSamplesForUpdate: 1e6, updateIntervalMs: 3_600_000 }
const tick = () => new Promise((r) => setImmediate(r))
const threads = () => fs.readdirSync('/proc/self/task').length

function sandbox(d = 2) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlops-rtpool-'))
  fs.writeFileSync(path.join(dir, BASE), JSON.stringify({ weights: Array(d).fill(0), bias: 0 }))
  return dir
}

test('50 instances run on the shared pool: the process does not gain a thread per instance', { skip: !fs.existsSync('/proc/self/task') }, async () => {
  // One instance first, so the runtime exists before the baseline is taken.
  const dirs = [sandbox()]
  // Two workers (the first setting in this process wins), so the bound below means the
  // same on any machine: the blocking side then runs at most 4 stream jobs at once.
  const first = new RealTimeModelUpdates({ modelsDir: dirs[0], ...QUIET, runtimeThreads: 2 })
  assert.equal(await first.initialize(), true)
  assert.equal(await first.addFeedback({ features: [1, 2], prediction: 0, actual: 1 }), true)
  const before = threads()
  const many = []
  for (let i = 0; i < 50; i++) {
    dirs.push(sandbox())
    many.push(new RealTimeModelUpdates({ modelsDir: dirs[i + 1], ...QUIET, fsyncIntervalMs: 5 }))
  }
  assert.deepEqual(await Promise.all(many.map((rt) => rt.initialize())), Array(50).fill(true))
  // Every instance logs, acknowledges and learns (and fsyncs on its timer) at once.
  for (let round = 0; round < 5; round++) {
    const acks = await Promise.all(many.flatMap((rt, k) => Array.from({ length: 20 }, (_, j) => rt.addFeedback({ features: [k, j], prediction: 0, actual: k + j }))))
    assert.ok(acks.every((a) => a === true))
  }
  const during = threads()
  // Acknowledged first, learned right after.
  for (const rt of many) while (rt.getStatistics().bufferSize < 100) await new Promise((r) => setTimeout(r, 2))
  for (const rt of many) assert.equal(rt.getStatistics().queueDepth, 0)
  console.log(`threads: ${before} with 1 instance, ${during} with 51 (runtimeThreads ${first.getStatistics().runtimeThreads})`)
  // A thread per instance would be +50. The pool's workers already exist; what may grow is
  // the blocking side (at most 4 stream jobs at once, plus threads tokio keeps idle).
  assert.ok(during - before < 20, `${during - before} threads more for 50 instances`)
  await Promise.all([first, ...many].map((rt) => rt.cleanup()))
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true })
})

test('runtimeThreads: checked, typed, and the first setting before the runtime starts wins', () => {
  assert.throws(() => new RealTimeModelUpdates({ runtimeThreads: 0 }), (e) => e instanceof RangeError && /options\.runtimeThreads/.test(e.message))
  assert.throws(() => new RealTimeModelUpdates({ runtimeThreads: 2.5 }), (e) => e instanceof RangeError && /options\.runtimeThreads/.test(e.message))
  assert.throws(() => new RealTimeModelUpdates({ runtimeThreads: 257 }), (e) => e instanceof RangeError && /options\.runtimeThreads/.test(e.message))
  assert.throws(() => new RealTimeModelUpdates({ runtimeThreads: 'many' }), /options\.runtimeThreads/)
  // In a fresh process (this one's runtime already runs): the option beats the
  // environment, the first setting wins, and the pool really has that many workers.
  const script = `
    const fs = require('node:fs'), os = require('node:os'), path = require('node:path')
    const { RealTimeModelUpdates } = require(${JSON.stringify(path.join(__dirname, '..'))})
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlops-rtpool-'))
    fs.writeFileSync(path.join(dir, ${JSON.stringify(BASE)}), JSON.stringify({ weights: [0, 0], bias: 0 }))
    const a = new RealTimeModelUpdates({ modelsDir: dir, runtimeThreads: 3, feedbackLogDir: false })
    const b = new RealTimeModelUpdates({ modelsDir: dir, runtimeThreads: 5, feedbackLogDir: false })
    const names = () => fs.readdirSync('/proc/self/task').map((t) => { try { return fs.readFileSync('/proc/self/task/' + t + '/comm', 'utf8').trim() } catch { return '' } })
    ;(async () => {
      await a.initialize()
      await b.initialize()
      const out = { a: a.config.runtimeThreads, b: b.config.runtimeThreads, stats: b.getStatistics().runtimeThreads, pool: names().filter((n) => n === 'mlops-rt').length }
      await a.cleanup(); await b.cleanup()
      fs.rmSync(dir, { recursive: true, force: true })
      console.log(JSON.stringify(out))
    })()`
  const out = JSON.parse(execFileSync(process.execPath, ['-e', script], { env: { ...process.env, MLOPS_RUNTIME_THREADS: '2' }, encoding: 'utf8' }).trim())
  assert.equal(out.a, 3)
  assert.equal(out.b, 3, 'a later setting does not resize the runtime')
  assert.equal(out.stats, 3)
  assert.ok(out.pool >= 3, `${out.pool} runtime threads`)
})

test('a long update cycle does not hold up durable acks; what arrived meanwhile is logged, then learned', async () => {
  const D = 24
  const dir = sandbox(D)
  const rt = new RealTimeModelUpdates({ modelsDir: dir, ...QUIET, maxSamplesPerUpdate: 1e6, updateThreshold: -1e9 })
  assert.equal(await rt.initialize(), true)
  // Enough samples that the cycle runs for a while even in an optimised build.
  const N = 60_000
  const X = new Float64Array(N * D).map((_, i) => ((i * 7919) % 101) / 10)
  const P = new Float64Array(N)
  const Y = new Float64Array(N).map((_, i) => X[i * D] - 2 * X[i * D + 1] + 1)
  let pushed = 0
  while (pushed < N) {
    const k = Math.min(5000, N - pushed)
    if (rt.addFeedbackBatch(X.subarray(pushed * D, (pushed + k) * D), P.subarray(pushed, pushed + k), Y.subarray(pushed, pushed + k)) > 0) pushed += k
    else await tick()
  }
  while (rt.getStatistics().bufferSize < N) await new Promise((r) => setTimeout(r, 5))
  let cycleDone = false
  const cycle = rt.forceUpdate().then((r) => ((cycleDone = true), r))
  while (!rt.getStatistics().isUpdating && !cycleDone) await tick()
  const acked = []
  for (let i = 0; i < 20 && !cycleDone; i++) {
    acked.push(await rt.addFeedback({ features: Array(D).fill(i), prediction: 0, actual: i }))
  }
  const acksBeforeCycleEnded = acked.length
  const report = await cycle
  assert.ok(report && report.samples === N, 'the cycle learned from the buffered events only')
  assert.ok(acksBeforeCycleEnded >= 1, 'at least one event was acknowledged while the cycle ran')
  assert.ok(acked.every((a) => a === true))
  // Logged at once, learned after the cycle, in order.
  await rt.flush()
  while (rt.getStatistics().queueDepth > 0) await tick()
  const s = rt.getStatistics()
  assert.equal(s.processed + s.bufferSize, N + acked.length)
  assert.equal(s.accepted, s.processed + s.bufferSize + s.queueDepth + s.logFailed)
  const seqs = readLog(path.join(dir, 'feedback-log')).records.map((r) => r.seq)
  assert.equal(seqs.length, N + acked.length)
  assert.deepEqual(seqs.slice(-acked.length), Array.from({ length: acked.length }, (_, i) => N + 1 + i))
  await rt.cleanup()
  fs.rmSync(dir, { recursive: true, force: true })
})
