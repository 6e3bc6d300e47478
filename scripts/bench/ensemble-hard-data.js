'use strict'
// The "hard data" cases of issue 11 for the stacker, each as a function returning the
// figures its target is stated in. Used by __test__/ensemble-hard-data.test.js (which
// asserts the targets) and by `node scripts/bench/run.js ensemble` (which prints them).
// Every stream is seeded, so the figures are reproducible.

const { AdvancedEnsemble } = require('../..')

function rng(seed) {
  let s = seed >>> 0
  const u = () => ((s = (s * 1664525 + 1013904223) >>> 0) / 4294967296)
  // Box-Muller: exact normals (the tails matter for the outlier case).
  const normal = () => Math.sqrt(-2 * Math.log(1 - u())) * Math.cos(2 * Math.PI * u())
  return { u, normal }
}

const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length
const CTX = { serviceName: 'hard-data', predictionType: 'quality' }

/**
 * Model c (sd 0.05) is present in half the calls, a (sd 0.5) and b (sd 1) always.
 * Returns the stacking MAE on calls with c over the second half, c's own MAE on them, and
 * the same stacking MAE when c is always present.
 */
function missingModel({ n = 4000, seed = 1 } = {}) {
  const run = (always) => {
    const e = new AdvancedEnsemble()
    const r = rng(seed)
    const st = []
    const c = []
    for (let t = 0; t < n; t++) {
      const y = 5 + r.normal()
      const preds = [{ value: y + 0.5 * r.normal(), model: 'a' }, { value: y + r.normal(), model: 'b' }]
      const withC = always || r.u() < 0.5
      const cv = y + 0.05 * r.normal()
      if (withC) preds.push({ value: cv, model: 'c' })
      if (withC && t >= n / 2) {
        st.push(Math.abs(e.stackingEnsembleSync(preds, CTX).prediction - y))
        c.push(Math.abs(cv - y))
      }
      e.updateWithFeedbackSync(preds, y, CTX)
    }
    return { stacking: mean(st), c: mean(c) }
  }
  const half = run(false)
  const always = run(true)
  return { stackingWithC: half.stacking, cAlone: half.c, stackingCAlways: always.stacking }
}

/** The same model name twice in one call, at y and y + 4: the mean signed error. */
function duplicateNames({ n = 3000, seed = 2 } = {}) {
  const e = new AdvancedEnsemble()
  const r = rng(seed)
  const errs = []
  for (let t = 0; t < n; t++) {
    const y = 10 * r.u()
    const preds = [{ value: y + 0.1 * r.normal(), model: 'm' }, { value: y + 4 + 0.1 * r.normal(), model: 'm' }, { value: y + r.normal(), model: 'other' }]
    if (t >= n / 2) errs.push(e.stackingEnsembleSync(preds, CTX).prediction - y)
    e.updateWithFeedbackSync(preds, y, CTX)
  }
  return { meanError: mean(errs), mae: mean(errs.map(Math.abs)) }
}

/** y = offset + N(0,1); one model within 0.1, one within 1. Stacking MAE over the second half. */
function offset({ offset: off, n = 3000, seed = 3 } = {}) {
  const e = new AdvancedEnsemble()
  const r = rng(seed)
  const errs = []
  const best = []
  for (let t = 0; t < n; t++) {
    const y = off + r.normal()
    const p1 = y + 0.1 * r.normal()
    const preds = [{ value: p1, model: 'precise' }, { value: y + r.normal(), model: 'rough' }]
    if (t >= n / 2) {
      errs.push(Math.abs(e.stackingEnsembleSync(preds, CTX).prediction - y))
      best.push(Math.abs(p1 - y))
    }
    e.updateWithFeedbackSync(preds, y, CTX)
  }
  return { mae: mean(errs), bestSingle: mean(best) }
}

/**
 * A unit-scale stream with one label of 10⁴ at sample `at`; stacking MAE in windows after
 * it, against the clean stream's MAE over the same samples.
 */
function outlier({ n = 4000, at = 2000, windows = [[0, 100], [100, 500], [500, 1000], [1000, 2000]], seed = 4 } = {}) {
  const run = (withOutlier) => {
    const e = new AdvancedEnsemble()
    const r = rng(seed)
    const errs = []
    for (let t = 0; t < n; t++) {
      const y = r.normal()
      const preds = [{ value: y + 0.1 * r.normal(), model: 'precise' }, { value: y + r.normal(), model: 'rough' }]
      if (t > at) errs.push(Math.abs(e.stackingEnsembleSync(preds, CTX).prediction - y))
      e.updateWithFeedbackSync(preds, withOutlier && t === at ? 1e4 : y, CTX)
    }
    return windows.map(([a, b]) => mean(errs.slice(a, b)))
  }
  return { windows, withOutlier: run(true), clean: run(false) }
}

/**
 * A precise model reporting ×10⁻³ of the target, next to a rough one in the target's
 * units. Stacking MAE over samples [after − 1000, after) against the best achievable
 * (the precise model rescaled).
 */
function scale({ after = 5000, seed = 5 } = {}) {
  const e = new AdvancedEnsemble()
  const r = rng(seed)
  const errs = []
  const best = []
  for (let t = 0; t < after; t++) {
    const y = 50 + 10 * r.normal()
    const precise = y + 0.1 * r.normal()
    const preds = [{ value: precise * 1e-3, model: 'in-thousands' }, { value: y + 2 * r.normal(), model: 'rough' }]
    if (t >= after - 1000) {
      errs.push(Math.abs(e.stackingEnsembleSync(preds, CTX).prediction - y))
      best.push(Math.abs(precise - y))
    }
    e.updateWithFeedbackSync(preds, y, CTX)
  }
  return { mae: mean(errs), bestAchievable: mean(best) }
}

/** A target with spread 10⁻⁸: stacking MAE against the precise model's, second half. */
function tinySpread({ n = 3000, seed = 6 } = {}) {
  const e = new AdvancedEnsemble()
  const r = rng(seed)
  const errs = []
  const best = []
  for (let t = 0; t < n; t++) {
    const y = 1e-8 * r.normal()
    const p1 = y + 1e-9 * r.normal()
    const preds = [{ value: p1, model: 'precise' }, { value: y + 1e-8 * r.normal(), model: 'rough' }]
    if (t >= n / 2) {
      errs.push(Math.abs(e.stackingEnsembleSync(preds, CTX).prediction - y))
      best.push(Math.abs(p1 - y))
    }
    e.updateWithFeedbackSync(preds, y, CTX)
  }
  return { mae: mean(errs), bestSingle: mean(best) }
}

module.exports = { missingModel, duplicateNames, offset, outlier, scale, tinySpread }

if (require.main === module) {
  const t0 = Date.now()
  console.log('missing model', missingModel())
  console.log('duplicates', duplicateNames())
  console.log('offset 0', offset({ offset: 0 }), '3e7', offset({ offset: 3e7 }), '1e8', offset({ offset: 1e8 }))
  console.log('outlier', outlier())
  console.log('scale', scale())
  console.log('tiny spread', tinySpread())
  console.log(`${Date.now() - t0} ms`)
}
