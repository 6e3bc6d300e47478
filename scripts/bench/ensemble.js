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
      results[`${m}JS/${n}`] = js
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
  for (const n of [3, 10]) {
    const ratio = results[`confidenceWeightedVotingSync/${n}`] / results[`confidenceWeightedVotingJS/${n}`]
    console.log(`voting without calibration, ${n} preds: ${ratio.toFixed(2)}× the old JS rule (target ≤ 2×): ${ratio <= 2 ? 'met' : 'NOT met'}`)
  }

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
  hardData(results)
  return results
}

/** Issue 11's hard cases for the stacker: each figure next to its target. */
function hardData(results) {
  const hard = require('./ensemble-hard-data.js')
  console.log('\n## AdvancedEnsemble stacking on hard data (scripts/bench/ensemble-hard-data.js)\n')
  const f = (x) => (Math.abs(x) < 1e-3 && x !== 0 ? x.toExponential(2) : x.toFixed(4))
  const rows = []
  const m = hard.missingModel()
  rows.push(['model c in half the calls: MAE on calls with c', f(m.stackingWithC), `≤ 1.5 × c alone (${f(m.cAlone)})`, m.stackingWithC <= 1.5 * m.cAlone])
  const d = hard.duplicateNames()
  rows.push(['same name twice (y, y+4): mean error', f(d.meanError), '≈ 0', Math.abs(d.meanError) < 0.02])
  const o0 = hard.offset({ offset: 0 })
  for (const off of [3e7, 1e8]) {
    const o = hard.offset({ offset: off })
    rows.push([`offset ${off.toExponential(0)}, spread 1: MAE`, f(o.mae), `within 10% of offset 0 (${f(o0.mae)})`, Math.abs(o.mae / o0.mae - 1) <= 0.1])
  }
  const out = hard.outlier()
  out.windows.forEach(([a, b], i) => rows.push([`one 1e4 label: MAE ${a}-${b} samples after`, f(out.withOutlier[i]), `clean ${f(out.clean[i])}`, out.withOutlier[i] <= (a >= 100 ? 1.1 : 1.5) * out.clean[i]]))
  const sc = hard.scale()
  rows.push(['model in ×1e-3 units: MAE after 5000', f(sc.mae), `≤ 1.5 × best (${f(sc.bestAchievable)})`, sc.mae <= 1.5 * sc.bestAchievable])
  const t = hard.tinySpread()
  rows.push(['target spread 1e-8: MAE', f(t.mae), `≤ 1.5 × precise (${f(t.bestSingle)})`, t.mae <= 1.5 * t.bestSingle])
  table(rows.map((r) => [r[0], r[1], r[2], r[3] ? 'met' : 'NOT met']), ['case', 'value', 'target', ''])
  results.hardData = rows
}

module.exports = { run }
if (require.main === module) run()
