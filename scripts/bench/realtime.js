'use strict'
// RealTimeModelUpdates: JS-thread cost of addFeedbackSync (8 features) and of
// addFeedbackBatch, next to a plain-JS baseline doing the same validation and an array
// push (what the old module did); 1M events through addFeedbackSync while update cycles
// run (events/s, event-loop p99 vs idle, RSS growth); learnOne in Rust alone; and the
// time from the event that fills the buffer to the swap being visible to predictSync; and
// addFeedback's ack p99 idle vs while a ~1 s forced update cycle runs for the same stream.

const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { monitorEventLoopDelay } = require('node:perf_hooks')
const { RealTimeModelUpdates } = require('../..')
const native = require('../../index.js')
const { nsPerCall, median, table } = require('./harness.js')

const D = 8
const tick = () => new Promise((r) => setImmediate(r))

function sandbox() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlops-bench-rt-'))
  fs.writeFileSync(path.join(dir, 'quality-predictor-v3-advanced.json'), JSON.stringify({ weights: Array(D).fill(0), bias: 0 }))
  return dir
}

function events(n) {
  let s = 99
  const u = () => ((s = (s * 1664525 + 1013904223) >>> 0) / 4294967296)
  return Array.from({ length: n }, () => {
    const features = Array.from({ length: D }, () => u() * 10)
    return { features, prediction: 5, actual: features.reduce((a, b, i) => a + (i % 2 ? b : -b), 3) }
  })
}

/** The old module's addFeedback, synchronous: validate, push, shift when full. */
function oldAddFeedback(buffer, fb) {
  if (fb.prediction === undefined || fb.actual === undefined) return false
  buffer.push({ prediction: fb.prediction, actual: fb.actual, features: fb.features || [], context: fb.context || {}, timestamp: Date.now() })
  if (buffer.length > 100) buffer.splice(0, buffer.length - 100)
  return true
}

/** Latency of each awaited addFeedback (µs), one at a time, while `more()` says so. */
async function ackLatencies(rt, d, more, max = 200_000) {
  const out = []
  const features = Array.from({ length: d }, (_, i) => i * 0.1)
  while (out.length < max && more()) {
    const t = process.hrtime.bigint()
    const ok = await rt.addFeedback({ features, prediction: 0, actual: 1 })
    out.push(Number(process.hrtime.bigint() - t) / 1e3)
    if (ok !== true) throw new Error('addFeedback was not acknowledged')
  }
  return out
}

const p99 = (xs) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * 0.99))]

/**
 * addFeedback's durable-ack p99 idle, then while a forced update cycle of about a second
 * (an RLS fit over a large buffer) runs on the runtime's blocking side for the same
 * stream. The cycle's size is calibrated once so that it takes ~1 s on this machine.
 */
async function ackDuringCycle(runs = 3) {
  const d = 24
  const X = (n) => Float64Array.from({ length: n * d }, (_, i) => ((i * 7919) % 101) / 10)
  const feed = async (rt, n) => {
    const x = X(n)
    const p = new Float64Array(n)
    const y = Float64Array.from({ length: n }, (_, i) => x[i * d] - 2 * x[i * d + 1] + 1)
    for (let at = 0; at < n;) {
      const k = Math.min(10_000, n - at)
      if (rt.addFeedbackBatch(x.subarray(at * d, (at + k) * d), p.subarray(at, at + k), y.subarray(at, at + k)) > 0) at += k
      else await tick()
    }
    while (rt.getStatistics().queueDepth > 0) await new Promise((r) => setTimeout(r, 5))
  }
  const open = async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlops-bench-ack-'))
    fs.writeFileSync(path.join(dir, 'quality-predictor-v3-advanced.json'), JSON.stringify({ weights: Array(d).fill(0), bias: 0 }))
    const rt = new RealTimeModelUpdates({ modelsDir: dir, bufferSize: 1e7, minSamplesForUpdate: 1e7, maxSamplesPerUpdate: 1e7, updateIntervalMs: 3_600_000, updateThreshold: -1e9, queueCapacity: 1e6 })
    await rt.initialize()
    return { rt, dir }
  }
  // Calibration: cycle time per buffered sample while acks go on (they share the cores),
  // twice (the first guess is far off).
  let n = 50_000
  for (let c = 0; c < 2; c++) {
    const { rt, dir } = await open()
    await feed(rt, n)
    let done = false
    const cycle = rt.forceUpdate().then((r) => ((done = true), r))
    await ackLatencies(rt, d, () => !done)
    const r = await cycle
    n = Math.max(20_000, Math.min(800_000, Math.round((n * 1000) / Math.max(1, r.durationMs))))
    await rt.cleanup()
    fs.rmSync(dir, { recursive: true })
  }
  const rows = []
  for (let k = 0; k < runs; k++) {
    const { rt, dir } = await open()
    const idleEnd = Date.now() + 1000
    const idle = await ackLatencies(rt, d, () => Date.now() < idleEnd)
    await feed(rt, n)
    let done = false
    const cycle = rt.forceUpdate().then((r) => ((done = true), r))
    while (!rt.getStatistics().isUpdating && !done) await tick()
    const during = await ackLatencies(rt, d, () => !done)
    const r = await cycle
    rows.push({ idle: p99(idle), during: p99(during), acks: during.length, cycleMs: r.durationMs })
    await rt.cleanup()
    fs.rmSync(dir, { recursive: true })
  }
  return { n, d, rows, idle: median(rows.map((r) => r.idle)), during: median(rows.map((r) => r.during)), cycleMs: median(rows.map((r) => r.cycleMs)), acks: median(rows.map((r) => r.acks)) }
}

async function run() {
  console.log('\n## RealTimeModelUpdates (median of rounds)\n')
  const learn = median([1, 2, 3, 4, 5].map(() => native.OnlineLinearModel._benchLearnOne(D, 2_000_000)))
  const evs = events(4096)

  // JS-thread cost per event. A queue big enough for the whole measurement, so refusals
  // do not flatter the figure; log on, as by default.
  const dir = sandbox()
  const rt = new RealTimeModelUpdates({ modelsDir: dir, queueCapacity: 5_000_000, bufferSize: 1000, minSamplesForUpdate: 500 })
  await rt.initialize()
  const sync = nsPerCall((i) => rt.addFeedbackSync(evs[i & 4095]), 200_000)
  const buf = []
  const old = nsPerCall((i) => oldAddFeedback(buf, evs[i & 4095]), 200_000)
  await rt.flush()
  while (rt.getStatistics().queueDepth > 0) await tick()

  const B = 10_000
  const X = new Float64Array(B * D).map((_, i) => (i % 13) * 0.5)
  const P = new Float64Array(B).fill(5)
  const Y = new Float64Array(B).map((_, i) => i % 11)
  // Median of single calls, each after the worker drained the previous batch, so the
  // figure is the JS thread's cost and not the other core's backlog.
  const single = []
  for (let k = 0; k < 41; k++) {
    while (rt.getStatistics().queueDepth > 0) await tick()
    const t = process.hrtime.bigint()
    rt.addFeedbackBatch(X, P, Y)
    single.push(Number(process.hrtime.bigint() - t))
  }
  const perBatch = median(single)
  const batchRate = B / (perBatch / 1e9)
  // Sustained: 100 batches back to back, waiting whenever the queue refuses, until the
  // worker has logged and learned all of them.
  const tb = process.hrtime.bigint()
  let pushed = 0
  while (pushed < 100) {
    if (rt.addFeedbackBatch(X, P, Y) > 0) pushed++
    else await tick()
  }
  while (rt.getStatistics().queueDepth > 0) await tick()
  const sustained = (100 * B) / (Number(process.hrtime.bigint() - tb) / 1e9)
  const s1 = rt.getStatistics()
  await rt.cleanup()

  // 1M events through addFeedbackSync while cycles run, with a producer that yields to
  // the event loop every 1000 events and waits when the queue refuses (backpressure).
  const dir2 = sandbox()
  const rt2 = new RealTimeModelUpdates({ modelsDir: dir2, bufferSize: 1000, minSamplesForUpdate: 500, updateThreshold: 0 })
  await rt2.initialize()
  const idleHist = monitorEventLoopDelay({ resolution: 1 })
  idleHist.enable()
  const idleEnd = Date.now() + 1000
  while (Date.now() < idleEnd) await new Promise((r) => setTimeout(r, 5))
  idleHist.disable()
  const rss0 = process.memoryUsage().rss
  const hist = monitorEventLoopDelay({ resolution: 1 })
  hist.enable()
  const TOTAL = 1_000_000
  let sent = 0
  let refusals = 0
  const t0 = process.hrtime.bigint()
  while (sent < TOTAL) {
    for (let k = 0; k < 1000 && sent < TOTAL; k++) {
      if (rt2.addFeedbackSync(evs[sent & 4095])) sent++
      else {
        refusals++
        break
      }
    }
    await tick()
  }
  while (rt2.getStatistics().queueDepth > 0) await tick()
  const secs = Number(process.hrtime.bigint() - t0) / 1e9
  hist.disable()
  const rss1 = process.memoryUsage().rss
  const s2 = rt2.getStatistics()

  await rt2.cleanup()

  // Swap visibility: a zero model and a fresh buffer, so the cycle that the 1000th event
  // triggers is certain to be accepted; rolled back between rounds.
  const dir3 = sandbox()
  const rt3 = new RealTimeModelUpdates({ modelsDir: dir3, bufferSize: 1000, minSamplesForUpdate: 500, feedbackLogDir: false })
  await rt3.initialize()
  const probe = evs[0].features
  const visible = []
  for (let k = 0; k < 7; k++) {
    const before = rt3.predictSync(probe)
    for (let i = 0; i < 999; i++) rt3.addFeedbackSync(evs[(i * 7 + k) & 4095])
    await rt3.flush()
    const t = process.hrtime.bigint()
    rt3.addFeedbackSync(evs[k])
    let spins = 0
    while (rt3.predictSync(probe) === before && spins++ < 1e7);
    if (spins < 1e7) visible.push(Number(process.hrtime.bigint() - t) / 1e3)
    await rt3.rollback()
  }
  await rt3.cleanup()
  fs.rmSync(dir3, { recursive: true })
  fs.rmSync(dir, { recursive: true })
  fs.rmSync(dir2, { recursive: true })

  const ack = await ackDuringCycle()
  for (const [i, r] of ack.rows.entries()) console.log(`ack run ${i + 1}: p99 idle ${r.idle.toFixed(0)} µs, during a ${r.cycleMs.toFixed(0)} ms cycle ${r.during.toFixed(0)} µs (${r.acks} acks)`)

  table(
    [
      ['addFeedbackSync, 8 features (JS thread)', `${sync.toFixed(0)} ns/event`, `old JS array push ${old.toFixed(0)} ns`],
      ['addFeedbackBatch, 10k × 8 (JS thread)', `${(batchRate / 1e6).toFixed(1)} M events/s`, `median single call, worker idle`],
      ['addFeedbackBatch sustained, end to end', `${(sustained / 1e6).toFixed(2)} M events/s`, `worker logs + learns; ${s1.accepted} accepted, ${s1.dropped} refused`],
      ['learnOne in Rust, 8 features', `${learn.toFixed(0)} ns`, 'no JS crossing'],
      ['1M events via addFeedbackSync + cycles', `${(TOTAL / secs / 1e3).toFixed(0)} k events/s`, `${s2.updateCount} cycles, ${s2.swaps} swaps, ${refusals} backpressure waits`],
      ['event-loop p99 during the 1M run', `${(hist.percentile(99) / 1e6).toFixed(2)} ms`, `idle ${(idleHist.percentile(99) / 1e6).toFixed(2)} ms`],
      ['RSS growth over the 1M run', `${((rss1 - rss0) / 1048576).toFixed(1)} MB`, ''],
      ['filling event → swap visible to predictSync', `${median(visible).toFixed(0)} µs`, `median of ${visible.length}; enqueue + 1000-sample cycle + publish`],
      ['addFeedback ack p99, idle', `${ack.idle.toFixed(0)} µs`, `median of ${ack.rows.length} runs; one at a time, awaited`],
      ['addFeedback ack p99, during a forced cycle', `${ack.during.toFixed(0)} µs`, `${(ack.during / ack.idle).toFixed(2)}× idle (target ≤ 2×); cycle ${ack.cycleMs.toFixed(0)} ms over ${ack.n} × ${ack.d}, ${ack.acks} acks`],
    ],
    ['measure', 'value', 'note'],
  )
  return { sync, old, batchRate, sustained, learn, eventsPerSec: TOTAL / secs, p99: hist.percentile(99) / 1e6, idle: idleHist.percentile(99) / 1e6, rssMb: (rss1 - rss0) / 1048576, visibleUs: median(visible), ackP99IdleUs: ack.idle, ackP99DuringCycleUs: ack.during, ackCycleMs: ack.cycleMs }
}

module.exports = { run, ackDuringCycle }
if (require.main === module) run()
