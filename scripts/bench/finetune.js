'use strict'
// Fine-tuning: 10,000 × 32 rows, 10 epochs, batch 32, optimizer 'sgd', save: false.
// Native (typed-array path and array-of-objects path, conversion included) against a
// plain-JS implementation of the same algorithm in the same process; then the event-loop
// p99 delay while runs go on, next to the same measurement idle.

const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { monitorEventLoopDelay } = require('node:perf_hooks')
const { ModelFineTuning } = require('../..')
const { msPerRun } = require('./harness.js')

const ROWS = 10_000
const D = 32
const OPTS = { optimizer: 'sgd', epochs: 10, batchSize: 32, learningRate: 0.001, validationSplit: 0.2, save: false, seed: 1, minSamples: 1 }

function data() {
  let s = 12345
  const u = () => ((s = (s * 1664525 + 1013904223) >>> 0) / 4294967296)
  const X = new Float64Array(ROWS * D)
  const y = new Float64Array(ROWS)
  for (let i = 0; i < ROWS; i++) {
    let t = 0.5
    for (let j = 0; j < D; j++) {
      X[i * D + j] = u()
      t += (j % 3 - 1) * X[i * D + j]
    }
    y[i] = t + 0.1 * (u() - 0.5)
  }
  return { X, y }
}

/** The same algorithm in plain JS: seeded split, mini-batch gradient descent, val loss per epoch. */
function jsSgd(X, y, d, w0, b0, o) {
  const n = y.length
  const idx = Array.from({ length: n }, (_, i) => i)
  let s = o.seed
  const u = () => ((s = (s * 1664525 + 1013904223) >>> 0) / 4294967296)
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(u() * (i + 1))
    ;[idx[i], idx[j]] = [idx[j], idx[i]]
  }
  const nVal = Math.floor(n * o.validationSplit)
  const train = idx.slice(0, n - nVal)
  const val = idx.slice(n - nVal)
  const w = Float64Array.from(w0)
  let b = b0
  const gw = new Float64Array(d)
  const losses = []
  for (let e = 0; e < o.epochs; e++) {
    for (let start = 0; start < train.length; start += o.batchSize) {
      const end = Math.min(train.length, start + o.batchSize)
      gw.fill(0)
      let gb = 0
      for (let k = start; k < end; k++) {
        const r = train[k] * d
        let p = b
        for (let j = 0; j < d; j++) p += w[j] * X[r + j]
        const err = p - y[train[k]]
        for (let j = 0; j < d; j++) gw[j] += err * X[r + j]
        gb += err
      }
      const m = end - start
      for (let j = 0; j < d; j++) w[j] -= (o.learningRate * gw[j]) / m
      b -= (o.learningRate * gb) / m
    }
    let se = 0
    for (const i of val) {
      let p = b
      for (let j = 0; j < d; j++) p += w[j] * X[i * d + j]
      se += (p - y[i]) ** 2
    }
    losses.push(se / val.length)
  }
  return { w, b, losses }
}

/**
 * The same algorithm written the way the old lib/mlops/modelFineTuning.js wrote it:
 * rows as arrays, batches by slice, map/reduce for predictions and gradients.
 */
function oldStyleSgd(rows, w0, b0, o) {
  const X = rows.map((r) => r.features)
  const Y = rows.map((r) => r.quality)
  const nVal = Math.floor(X.length * o.validationSplit)
  const trainX = X.slice(0, X.length - nVal)
  const trainY = Y.slice(0, Y.length - nVal)
  const valX = X.slice(X.length - nVal)
  const valY = Y.slice(Y.length - nVal)
  let weights = [...w0]
  let bias = b0
  const predictSingle = (x) => bias + x.reduce((s, v, k) => s + v * weights[k], 0)
  const losses = []
  for (let epoch = 0; epoch < o.epochs; epoch++) {
    for (let i = 0; i < trainX.length; i += o.batchSize) {
      const batchX = trainX.slice(i, i + o.batchSize)
      const batchY = trainY.slice(i, i + o.batchSize)
      const errors = batchX.map((x, j) => predictSingle(x) - batchY[j])
      const gw = weights.map((_, k) => batchX.reduce((s, x, j) => s + errors[j] * x[k], 0) / batchX.length)
      const gb = errors.reduce((a, b) => a + b, 0) / errors.length
      weights = weights.map((w, k) => w - o.learningRate * gw[k])
      bias -= o.learningRate * gb
    }
    losses.push(valX.reduce((s, x, j) => s + (predictSingle(x) - valY[j]) ** 2, 0) / valX.length)
  }
  return { weights, bias, losses }
}

async function eventLoopP99(work, ms = 1500) {
  const h = monitorEventLoopDelay({ resolution: 1 })
  h.enable()
  const end = Date.now() + ms
  while (Date.now() < end) await work()
  h.disable()
  return h.percentile(99) / 1e6
}

async function run() {
  console.log('\n## ModelFineTuning: 10,000 × 32 rows, 10 epochs, batch 32, sgd, save: false (median ms)\n')
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlops-bench-'))
  fs.writeFileSync(path.join(dir, 'base.json'), JSON.stringify({ weights: Array(D).fill(0), bias: 0 }))
  const ft = new ModelFineTuning({ modelsDir: dir })
  const { X, y } = data()
  const rows = Array.from({ length: ROWS }, (_, i) => ({ features: Array.from(X.subarray(i * D, (i + 1) * D)), quality: y[i] }))
  const check = await ft.fineTuneModel('base.json', { X, y, features: D }, OPTS)
  if (!check.success) throw new Error(check.error)
  const typed = await msPerRun(() => ft.fineTuneModel('base.json', { X, y, features: D }, OPTS))
  const objects = await msPerRun(() => ft.fineTuneModel('base.json', rows, OPTS))
  const js = await msPerRun(() => jsSgd(X, y, D, Array(D).fill(0), 0, OPTS))
  const old = await msPerRun(() => oldStyleSgd(rows, Array(D).fill(0), 0, OPTS))
  console.log(`native, typed arrays             ${typed.toFixed(2).padStart(7)} ms   ${(old / typed).toFixed(1)}× old-style JS, ${(js / typed).toFixed(1)}× tuned JS`)
  console.log(`native, array of objects         ${objects.toFixed(2).padStart(7)} ms   ${(old / objects).toFixed(1)}× old-style JS, ${(js / objects).toFixed(1)}× tuned JS (conversion included)`)
  console.log(`plain JS, old module's style     ${old.toFixed(2).padStart(7)} ms   (arrays of rows, slice/map/reduce)`)
  console.log(`plain JS, tuned typed-array loop ${js.toFixed(2).padStart(7)} ms   (same algorithm, hand-optimised)`)
  console.log(`native val MSE after 10 epochs ${check.metrics.mse.toFixed(5)}, plain JS ${jsSgd(X, y, D, Array(D).fill(0), 0, OPTS).losses.at(-1).toFixed(5)}`)

  const idle = await eventLoopP99(() => new Promise((r) => setTimeout(r, 5)))
  const busyTyped = await eventLoopP99(() => ft.fineTuneModel('base.json', { X, y, features: D }, OPTS))
  const busyObjects = await eventLoopP99(() => ft.fineTuneModel('base.json', rows, OPTS))
  console.log(`\nevent-loop p99 delay: idle ${idle.toFixed(2)} ms, during typed runs ${busyTyped.toFixed(2)} ms (+${(busyTyped - idle).toFixed(2)}), during object runs ${busyObjects.toFixed(2)} ms (+${(busyObjects - idle).toFixed(2)})`)
  fs.rmSync(dir, { recursive: true })
  return { typed, objects, js, old, idle, busyTyped, busyObjects }
}

module.exports = { run, jsSgd, oldStyleSgd, data, ROWS, D, OPTS }
if (require.main === module) run()
