'use strict'
// Issue 11, the ExpandedPredictions cases, on seeded streams (scripts/lib/
// prediction-experiments.js documents each): intervals calibrated for what is served
// (with and without `outputTokens`), a point estimate that follows a level shift, and
// exact small-window quantiles. `npm run bench -- predictions` prints the same figures.
const test = require('node:test')
const assert = require('node:assert/strict')
const { ExpandedPredictions } = require('..')
const ex = require('../scripts/lib/prediction-experiments.js')

const pct = (x) => `${(100 * x).toFixed(1)} %`

function coverage(row, name) {
  for (const kind of ['known', 'unknown']) {
    const r = row[kind]
    assert.ok(r.p95 >= 0.93 && r.p95 <= 0.97, `${name}, outputTokens ${kind}: p95 coverage ${pct(r.p95)} (target 93-97 %)`)
    assert.ok(r.p99 >= 0.98, `${name}, outputTokens ${kind}: p99 coverage ${pct(r.p99)} (target ≥ 98 %)`)
    assert.ok(r.p50 >= 0.45 && r.p50 <= 0.55, `${name}, outputTokens ${kind}: p50 coverage ${pct(r.p50)}`)
  }
}

test('synthetic day: p95 within 93-97 % and p99 ≥ 98 % with and without outputTokens (before: 84.2 / 91.0 % without)', () => {
  coverage(ex.syntheticDay(ExpandedPredictions), 'synthetic day')
})

test('one key, i.i.d.: p95 within 93-97 % and p99 ≥ 98 % with and without outputTokens (before: 72.3 / 76.7 % without)', () => {
  coverage(ex.iid(ExpandedPredictions), 'i.i.d.')
})

test('level shift (latency doubles): p95 coverage ≥ 85 % in the first 100 outcomes, point bias ≤ 10 % within 1,000', () => {
  const r = ex.levelShift(ExpandedPredictions)
  for (const kind of ['known', 'unknown']) assert.ok(r.first100[kind].p95 >= 0.85, `outputTokens ${kind}: ${pct(r.first100[kind].p95)}`)
  assert.ok(Math.abs(r.bias['900-1000']) <= 0.1, `bias 900-1000 outcomes after: ${pct(r.bias['900-1000'])} (before: −43 %)`)
  assert.ok(Math.abs(r.bias['400-1000']) <= 0.1, `bias 400-1000 outcomes after: ${pct(r.bias['400-1000'])}`)
  // Without forgetting (the old behaviour, still available as forgetting: 1) it stays biased.
  const old = ex.levelShift(ExpandedPredictions, { forgetting: 1 })
  assert.ok(old.bias['400-1000'] < -0.3, `without forgetting: ${pct(old.bias['400-1000'])}`)
})

test('forgetting keeps stationary accuracy within 5 % of no forgetting', () => {
  for (const run of [ex.iid, ex.syntheticDay]) {
    const now = run(ExpandedPredictions)
    const before = run(ExpandedPredictions, { forgetting: 1 })
    for (const kind of ['known', 'unknown']) {
      const ratio = now[kind].mae / before[kind].mae
      assert.ok(ratio <= 1.05, `${run.name}, outputTokens ${kind}: MAE ${now[kind].mae.toFixed(0)} vs ${before[kind].mae.toFixed(0)} ms (${ratio.toFixed(3)}×)`)
    }
  }
})

test('small windows: the band below 20 residuals reaches nominal p95; p99 below 99 residuals is not the window maximum', () => {
  const r = ex.smallWindows(ExpandedPredictions, 120)
  for (const kind of ['known', 'unknown']) {
    assert.ok(r.below20[kind].p95 >= 0.95, `below 20, outputTokens ${kind}: p95 ${pct(r.below20[kind].p95)} (before: 78.4 % without)`)
    assert.ok(r.from20to98[kind].p95 >= 0.93, `20-98, outputTokens ${kind}: p95 ${pct(r.from20to98[kind].p95)}`)
    assert.ok(r.from20to98[kind].p99 >= 0.98, `20-98, outputTokens ${kind}: p99 ${pct(r.from20to98[kind].p99)}`)
  }
})
