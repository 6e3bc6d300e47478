#!/usr/bin/env node
'use strict'
// Exercises every AdvancedEnsemble strategy, feedback and statistics on a small example,
// then shows learning on a stream where each service has a different best model and one
// model is biased. Errors are prequential: each strategy predicts *before* the label is
// fed back. Exits non-zero unless stacking and dynamic selection beat every single model
// and the plain average.
//
//   node scripts/test-advanced-ensemble.js [--events N] [--seed N]

const { parseArgs } = require('node:util')
const { AdvancedEnsemble } = require('../lib/mlops/advancedEnsemble')

const { values: args } = parseArgs({
  options: { events: { type: 'string', default: '3000' }, seed: { type: 'string', default: '7' } },
})
const events = Number(args.events)
const seed = Number(args.seed)
if (!Number.isInteger(events) || events < 100) {
  console.error('--events must be an integer ≥ 100')
  process.exit(1)
}

function rng(s) {
  s >>>= 0
  const u = () => ((s = (s * 1664525 + 1013904223) >>> 0) / 4294967296)
  return { u, normal: () => { let t = 0; for (let i = 0; i < 12; i++) t += u(); return t - 6 } }
}
const fmt = (x) => (typeof x === 'number' ? x.toFixed(3) : String(x))

async function demo() {
  console.log('== One request, three base models (cold start) ==')
  const e = new AdvancedEnsemble()
  await e.initialize()
  const preds = [
    { value: 7.2, confidence: 0.9, model: 'quality-v3' },
    { value: 6.1, confidence: 0.6, model: 'quality-lite' },
    { prediction: 8.0, confidence: 0.8, model: 'llm-judge' },
  ]
  const ctx = { serviceName: 'ai-gm', predictionType: 'quality' }
  const s = await e.stackingEnsemble(preds, ctx)
  console.log(`stacking            ${fmt(s.prediction)} (confidence ${fmt(s.confidence)}, source ${s.source}, weights ${s.metaWeights.map(fmt).join(' ')})`)
  const d = await e.dynamicSelection(preds, ctx)
  console.log(`dynamic selection   ${fmt(d.prediction)} (selected ${d.selectedModels.map((m) => `${m.model}:${fmt(m.score)}`).join(', ')})`)
  const v = await e.confidenceWeightedVoting(preds)
  console.log(`confidence voting   ${fmt(v.prediction)} (weights ${v.weights.map((w) => `${w.model}:${fmt(w.weight)}`).join(', ')})`)
  console.log(`feedback accepted   ${await e.updateWithFeedback(preds, 7.0, ctx)}`)
  const st = e.getStatistics()
  console.log(`statistics          historySize ${st.historySize}, avgError ${fmt(st.avgError)}, performanceWeights ${JSON.stringify(st.performanceWeights)}`)
}

async function learning() {
  console.log(`\n== Learning: ${events} feedback events, 2 services, 3 models (seed ${seed}) ==`)
  console.log('alpha is precise for ai-gm and noisy for oracle, beta the reverse; biased = 0.6·y + 3.')
  const e = new AdvancedEnsemble()
  const r = rng(seed)
  const names = ['alpha', 'beta', 'biased', 'average', 'stacking', 'dynamicSelection', 'confidenceWeighted']
  const err = Object.fromEntries(names.map((n) => [n, 0]))
  const late = Object.fromEntries(names.map((n) => [n, 0]))
  for (let t = 0; t < events; t++) {
    const service = r.u() < 0.5 ? 'ai-gm' : 'oracle'
    const y = 10 * r.u()
    const preds = [
      { value: y + (service === 'ai-gm' ? 0.2 : 2.0) * r.normal(), confidence: 0.8, model: 'alpha' },
      { value: y + (service === 'ai-gm' ? 2.0 : 0.2) * r.normal(), confidence: 0.8, model: 'beta' },
      { value: 0.6 * y + 3 + 0.3 * r.normal(), confidence: 0.9, model: 'biased' },
    ]
    const ctx = { serviceName: service, predictionType: 'quality' }
    const out = {
      alpha: preds[0].value,
      beta: preds[1].value,
      biased: preds[2].value,
      average: (preds[0].value + preds[1].value + preds[2].value) / 3,
      stacking: e.stackingEnsembleSync(preds, ctx).prediction,
      dynamicSelection: e.dynamicSelectionSync(preds, ctx).prediction,
      confidenceWeighted: e.confidenceWeightedVotingSync(preds, ctx).prediction,
    }
    for (const n of names) {
      err[n] += Math.abs(out[n] - y)
      if (t >= events / 2) late[n] += Math.abs(out[n] - y)
    }
    e.updateWithFeedbackSync(preds, y, ctx)
  }
  console.log('\n' + 'predictor'.padEnd(22) + 'MAE (all)'.padStart(10) + 'MAE (2nd half)'.padStart(16))
  for (const n of names) {
    console.log(n.padEnd(22) + fmt(err[n] / events).padStart(10) + fmt(late[n] / (events - Math.ceil(events / 2))).padStart(16))
  }
  const st = e.getStatistics()
  console.log('\nbest strategy per context (decayed error):')
  for (const [k, c] of Object.entries(st.contexts)) console.log(`  ${k.padEnd(20)} ${c.bestStrategy} (${c.samples} samples)`)
  const w = e.stackingEnsembleSync([{ value: 5, model: 'alpha' }, { value: 5, model: 'beta' }, { value: 6, model: 'biased' }], { serviceName: 'ai-gm', predictionType: 'quality' })
  console.log(`ai-gm meta-weights alpha/beta/biased: ${w.metaWeights.map(fmt).join(' / ')}, intercept ${fmt(w.intercept)}, from ${w.samples} samples`)

  const singles = ['alpha', 'beta', 'biased', 'average']
  const failures = []
  for (const strategy of ['stacking', 'dynamicSelection']) {
    for (const s of singles) if (!(err[strategy] < err[s])) failures.push(`${strategy} (${fmt(err[strategy] / events)}) does not beat ${s} (${fmt(err[s] / events)})`)
  }
  if (failures.length) {
    console.error('\nFAIL: ' + failures.join('; '))
    process.exit(1)
  }
  console.log('\nPASS: stacking and dynamic selection beat every single model and the average.')
}

demo()
  .then(learning)
  .catch((e) => {
    console.error(`test-advanced-ensemble failed: ${e.message}`)
    process.exit(1)
  })
