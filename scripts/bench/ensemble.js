'use strict'
const { AdvancedEnsemble } = require('../..')
const { OldAdvancedEnsemble } = require('./old-ensemble.js')
const { nsPerCall, nsPerAwait, table } = require('./harness.js')

function makePredictions(n) {
  return Array.from({ length: n }, (_, i) => ({ value: 5 + i * 0.1, confidence: 0.5 + (i % 5) * 0.1, model: `model-${i}` }))
}

async function run() {
  console.log('\n## AdvancedEnsemble: ns per call (median of rounds), native vs plain-JS old rules\n')
  const rows = []
  const N = 200_000
  const results = {}
  for (const n of [3, 10]) {
    const preds = makePredictions(n)
    const ctx = { serviceName: 'ai-gm', predictionType: 'quality' }
    const e = new AdvancedEnsemble()
    const old = new OldAdvancedEnsemble()
    // Give both some history so the learned paths (not the cold start) are measured.
    for (let i = 0; i < 200; i++) {
      e.updateWithFeedbackSync(preds, 5 + (i % 3), ctx)
      old.updateWithFeedbackSync(preds, 5 + (i % 3), ctx)
    }
    for (const m of ['stackingEnsemble', 'dynamicSelection', 'confidenceWeightedVoting']) {
      const sync = nsPerCall(() => e[`${m}Sync`](preds, ctx), N)
      const prom = await nsPerAwait(() => e[m](preds, ctx), N / 4)
      const js = nsPerCall(() => old[`${m}Sync`](preds, ctx), N)
      results[`${m}Sync/${n}`] = sync
      results[`${m}/${n}`] = prom
      rows.push([`${m}Sync`, n, sync.toFixed(0), prom.toFixed(0), (prom - sync).toFixed(0), js.toFixed(0), (sync / js).toFixed(2)])
    }
    let a = 0
    const fb = nsPerCall(() => e.updateWithFeedbackSync(preds, 5 + (a++ % 3), ctx), N)
    let b = 0
    const fbp = await nsPerAwait(() => e.updateWithFeedback(preds, 5 + (b++ % 3), ctx), N / 4)
    let c = 0
    const fbjs = nsPerCall(() => old.updateWithFeedbackSync(preds, 5 + (c++ % 3), ctx), N)
    results[`updateWithFeedbackSync/${n}`] = fb
    rows.push(['updateWithFeedbackSync', n, fb.toFixed(0), fbp.toFixed(0), (fbp - fb).toFixed(0), fbjs.toFixed(0), (fb / fbjs).toFixed(2)])
  }
  table(rows, ['method', 'preds', 'Sync ns', 'Promise ns', 'Promise-Sync', 'old JS ns', 'native/JS'])

  // Batch path: one context, 3 models, 100k rows per call.
  const e = new AdvancedEnsemble()
  const models = ['a', 'b', 'c']
  for (let i = 0; i < 200; i++) e.updateWithFeedbackSync([{ value: i % 7, model: 'a' }, { value: (i % 7) + 1, model: 'b' }, { value: 2 * (i % 7), model: 'c' }], i % 7)
  const rowsN = 100_000
  const X = new Float64Array(rowsN * 3).map((_, i) => i % 11)
  const perCall = nsPerCall(() => e.stackingBatch(X, models), 20)
  const perSec = rowsN / (perCall / 1e9)
  let jsOut = new Float64Array(rowsN)
  const w = [0.3, 0.3, 0.4]
  const jsPer = nsPerCall(() => {
    for (let r = 0; r < rowsN; r++) jsOut[r] = 0.1 + X[3 * r] * w[0] + X[3 * r + 1] * w[1] + X[3 * r + 2] * w[2]
  }, 20)
  console.log(`\nstackingBatch: ${(perSec / 1e6).toFixed(1)} M combined predictions/s (100k rows × 3 models per call; plain-JS dot-product loop: ${(rowsN / (jsPer / 1e9) / 1e6).toFixed(1)} M/s)`)
  results.batchPerSecond = perSec
  return results
}

module.exports = { run }
if (require.main === module) run()
