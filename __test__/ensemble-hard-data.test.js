'use strict'
// Issue 11, item 3: the stacker on inputs services really send. Each case reproduces the
// experiment that broke the previous stacker and asserts its target. The streams and the
// figures are in scripts/bench/ensemble-hard-data.js (the bench prints the same numbers).
const test = require('node:test')
const assert = require('node:assert/strict')
const hard = require('../scripts/bench/ensemble-hard-data.js')

test('a model present in only some calls is not imputed: calls with it are as good as it alone', () => {
  const r = hard.missingModel()
  // Before: 0.148 (the absent model was filled in with the mean of the others).
  assert.ok(r.stackingWithC <= 1.5 * r.cAlone, `stacking ${r.stackingWithC} vs c alone ${r.cAlone}`)
  assert.ok(r.stackingWithC <= 1.5 * r.stackingCAlways, `stacking ${r.stackingWithC} vs c always present ${r.stackingCAlways}`)
})

test('the same model name twice in one call is one input (their mean) for learning and prediction alike', () => {
  const r = hard.duplicateNames()
  // Before: mean error -1.88 (learning used the last entry, prediction split the weight).
  assert.ok(Math.abs(r.meanError) < 0.02, `mean error ${r.meanError}`)
})

test('a large common offset costs no precision (centred statistics)', () => {
  const base = hard.offset({ offset: 0 })
  for (const off of [3e7, 1e8]) {
    const r = hard.offset({ offset: off })
    // Before: 0.34 at 3·10⁷ and 52 at 10⁸, against 0.081 at 0.
    assert.ok(Math.abs(r.mae / base.mae - 1) <= 0.1, `offset ${off}: MAE ${r.mae} vs ${base.mae} at 0`)
  }
  assert.ok(base.mae <= 1.05 * base.bestSingle, `${base.mae} vs best single ${base.bestSingle}`)
})

test('one wild label costs at most ~100 samples of degraded accuracy (clipped residuals)', () => {
  const r = hard.outlier()
  // Before: MAE 39 / 13 / 1.5 / 0.35 over the four windows, against 0.08 clean.
  r.windows.forEach(([a, b], i) => {
    const limit = a >= 100 ? 1.1 : 1.5
    assert.ok(r.withOutlier[i] <= limit * r.clean[i], `samples ${a}-${b} after the outlier: ${r.withOutlier[i]} vs clean ${r.clean[i]}`)
  })
})

test('a model in other units is rescaled (scale-aware prior)', () => {
  const r = hard.scale()
  // Before: 1.56 against 0.081 achievable.
  assert.ok(r.mae <= 1.5 * r.bestAchievable, `MAE ${r.mae} vs best achievable ${r.bestAchievable}`)
})

test('a target with spread 1e-8 is learned like any other (noise floor relative to the spread)', () => {
  const r = hard.tinySpread()
  // Before: 4.2e-9 (weights frozen near equal), against 8.2e-10 for the precise model.
  assert.ok(r.mae <= 1.5 * r.bestSingle, `MAE ${r.mae} vs precise model ${r.bestSingle}`)
})
