'use strict'
// RealTimeModelUpdates serving a gbm: addFeedback's acknowledgement latency (serial awaits,
// log on) while a background refit of the trees is being fitted, next to the same stream's
// latency before the refit started. The refit runs on the tokio runtime's blocking pool,
// not on the stream's worker, so acknowledgements should not wait for it; on this 2-core
// machine the fit still takes a core, which is what the ratio shows.
//   node scripts/bench/run.js refit

const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { RealTimeModelUpdates, ModelFineTuning } = require('../..')
const { median, table } = require('./harness.js')

const D = 8
const WINDOW = 6000
const BASE = 'quality-predictor-v3-advanced.json'

function rows(n, seed) {
  let s = seed >>> 0
  const u = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 4294967296)
  return Array.from({ length: n }, () => {
    const x = Array.from({ length: D }, () => u() * 10)
    return { features: x, quality: (x[0] > 5 ? 3 : 0) + 0.3 * x[1] + (x[2] > 4 && x[3] < 6 ? 2 : -1) + 0.1 * u() }
  })
}

const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.floor(p * s.length))]
}

async function round(seed) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlops-bench-refit-'))
  fs.writeFileSync(path.join(dir, BASE), JSON.stringify({ weights: Array(D).fill(0), bias: 0 }))
  const ft = new ModelFineTuning({ modelsDir: dir })
  const fit = await ft.fineTuneModel(BASE, rows(3000, seed), { model: 'gbm', trees: 100, maxDepth: 5, earlyStoppingRounds: 0, save: 'always' })
  if (!fit.success) throw new Error(fit.error)
  const rt = new RealTimeModelUpdates({
    modelsDir: dir, modelPath: fit.modelPath, followRegistry: false, bufferSize: 1000, minSamplesForUpdate: 500,
    refitEvery: WINDOW, refitWindow: WINDOW, refitIntervalMs: 0,
  })
  await rt.initialize()
  let report = null
  rt.on('update', (r) => r.reason === 'refit' && (report = r))
  rt.on('rejected', (r) => r.reason === 'refit' && (report = r))
  // Shifted feedback, so the refit has something to win.
  const evs = rows(WINDOW + 20_000, seed + 1).map((r) => ({ features: r.features, prediction: 0, actual: 10 - r.quality }))
  const deadline = performance.now() + 300_000
  const sent = []
  const lat = []
  let refitStart = null
  for (let i = 0; report === null && performance.now() < deadline; i++) {
    const t0 = performance.now()
    if (i === WINDOW - 1) refitStart = t0 // this event completes the window and starts the refit
    const ok = await rt.addFeedback(evs[i % evs.length])
    if (!ok) throw new Error('an event was not acknowledged')
    sent.push(t0)
    lat.push(performance.now() - t0)
  }
  await rt.cleanup()
  fs.rmSync(dir, { recursive: true, force: true })
  if (report === null) throw new Error('no refit was decided')
  const idle = lat.filter((_, i) => i >= 1000 && i < WINDOW - 1)
  const during = lat.filter((_, i) => sent[i] >= refitStart && sent[i] <= refitStart + report.fitMs)
  return { fitMs: report.fitMs, idleP50: pct(idle, 0.5), idleP99: pct(idle, 0.99), p50: pct(during, 0.5), p99: pct(during, 0.99), n: during.length, accepted: report.accepted }
}

async function run() {
  console.log('\n## RealTimeModelUpdates serving gbm: addFeedback ack latency during a background refit (median of 3 rounds)\n')
  const rs = []
  for (let k = 0; k < 3; k++) rs.push(await round(11 + k))
  const m = (f) => median(rs.map(f))
  table(
    [
      ['refit fit time (100 trees, depth 5, 4,800 rows)', `${m((r) => r.fitMs).toFixed(0)} ms`],
      ['ack p50 idle / during the fit', `${m((r) => r.idleP50).toFixed(3)} / ${m((r) => r.p50).toFixed(3)} ms`],
      ['ack p99 idle / during the fit', `${m((r) => r.idleP99).toFixed(3)} / ${m((r) => r.p99).toFixed(3)} ms`],
      ['p99 ratio during / idle (median of rounds)', `${m((r) => r.p99 / r.idleP99).toFixed(2)}×`],
      ['acks measured during the fit (per round)', `${m((r) => r.n)}`],
      ['refits swapped in', `${rs.filter((r) => r.accepted).length} / ${rs.length}`],
    ],
    ['figure', 'value'],
  )
}

module.exports = { run }
