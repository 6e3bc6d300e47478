'use strict'
// OnlineLinearModel as a user sees it: seeded synthetic streams (abrupt and gradual drift,
// a trending feature, stationary noise, covariance wind-up), persistence (a restored model
// continues bit for bit; a state saved by the AdaGrad-only version still loads and
// continues exactly as that version would), and option validation.

const test = require('node:test')
const assert = require('node:assert/strict')
const { OnlineLinearModel } = require('..')

function rng(seed) {
  let s = seed >>> 0
  const u = () => ((s = (s * 1664525 + 1013904223) >>> 0) / 4294967296)
  const normal = () => Math.sqrt(-2 * Math.log(Math.max(u(), 1e-300))) * Math.cos(2 * Math.PI * u())
  return { u, normal }
}

/** 4 features of mixed scales, noise σ = 1; weights jump at `change` or turn over `ramp`. */
function drifting(seed, n, change, ramp = 0) {
  const r = rng(seed)
  const before = [3, -0.02, 40, 1]
  const after = [-2, 0.05, 10, -3]
  const rows = []
  for (let t = 0; t < n; t++) {
    const x = [r.normal(), 100 + 50 * r.normal(), r.u(), 5 * r.normal()]
    const a = Math.min(1, Math.max(0, (t - change) / Math.max(ramp, 1)))
    let y = 10 + r.normal()
    for (let i = 0; i < 4; i++) y += ((1 - a) * before[i] + a * after[i]) * x[i]
    rows.push([x, y])
  }
  return rows
}

/** Progressive (predict-then-learn) MAE over rows [from, to). */
function progressive(m, rows, from = 0, to = rows.length) {
  let ae = 0
  rows.forEach(([x, y], t) => {
    const p = m.learnOne(x, y)
    assert.ok(Number.isFinite(p), `prediction at ${t}`)
    if (t >= from && t < to) ae += Math.abs(p - y)
  })
  return ae / (to - from)
}

test('default learner is RLS with a forgetting bank; AdaGrad on request and above 48 features', () => {
  const m = new OnlineLinearModel()
  assert.equal(m.optimizer, 'auto', 'resolved once the feature count is known')
  m.learnOne([1, 2], 3)
  assert.equal(m.optimizer, 'rls')
  assert.deepEqual(m.bank().map((b) => b.forgetting), [0.95, 0.99, 1])
  assert.ok(Math.abs(m.bank().reduce((a, b) => a + b.weight, 0) - 1) < 1e-12)
  assert.equal(new OnlineLinearModel({ features: 48 }).optimizer, 'rls')
  assert.equal(new OnlineLinearModel({ features: 49 }).optimizer, 'adagrad')
  assert.equal(new OnlineLinearModel({ features: 49, optimizer: 'rls' }).optimizer, 'rls')
  assert.equal(new OnlineLinearModel({ optimizer: 'adagrad', features: 2 }).optimizer, 'adagrad')
  assert.deepEqual(new OnlineLinearModel({ optimizer: 'adagrad', features: 2 }).bank(), [])
  const fixed = new OnlineLinearModel({ forgetting: '0.98', features: 2 })
  assert.deepEqual(fixed.bank(), [{ forgetting: 0.98, weight: 1 }], 'numeric strings coerced')
})

test('after an abrupt drift the default recovers far faster than AdaGrad and than no forgetting', () => {
  const rows = drifting(1, 3000, 1500)
  const bank = progressive(new OnlineLinearModel(), rows, 1500, 1800)
  const ada = progressive(new OnlineLinearModel({ optimizer: 'adagrad' }), rows, 1500, 1800)
  const stiff = progressive(new OnlineLinearModel({ forgetting: 1 }), rows, 1500, 1800)
  assert.ok(bank < 0.5 * ada, `bank ${bank} vs AdaGrad ${ada}`)
  assert.ok(bank < 0.5 * stiff, `bank ${bank} vs λ = 1 ${stiff}`)
  const late = progressive(new OnlineLinearModel(), rows, 2500, 3000)
  assert.ok(late < 1.0, `settled MAE ${late} (noise alone ≈ 0.8)`)
})

test('a gradual drift is tracked', () => {
  const rows = drifting(2, 5000, 1000, 3000)
  const bank = progressive(new OnlineLinearModel(), rows, 1000, 4000)
  const ada = progressive(new OnlineLinearModel({ optimizer: 'adagrad' }), rows, 1000, 4000)
  const stiff = progressive(new OnlineLinearModel({ forgetting: 1 }), rows, 1000, 4000)
  assert.ok(bank < 1.2, `bank ${bank} (noise alone ≈ 0.8)`)
  assert.ok(bank < 0.6 * ada && bank < 0.3 * stiff, `bank ${bank}, AdaGrad ${ada}, λ=1 ${stiff}`)
})

test('a trending date feature in raw units is followed from the first rows', () => {
  const r = rng(3)
  const rows = []
  for (let t = 0; t < 1000; t++) {
    const a = 40 + 3 * r.normal()
    const b = 45 + 3 * r.normal()
    rows.push([[736389 + t, a, b], 0.01 * t + 0.3 * a + 0.2 * b + 0.2 * r.normal()])
  }
  const bank = progressive(new OnlineLinearModel(), rows)
  const ada = progressive(new OnlineLinearModel({ optimizer: 'adagrad' }), rows)
  assert.ok(bank < 0.5, `bank ${bank}`)
  assert.ok(bank * 10 < ada, `bank ${bank} vs AdaGrad ${ada}`)
})

test('stationary noise: error within 8% of the optimum, mostly carried by the λ = 1 learner', () => {
  const rows = drifting(4, 6000, Infinity)
  const m = new OnlineLinearModel()
  let se = 0
  const weight = [0, 0, 0]
  rows.forEach(([x, y], t) => {
    const p = m.learnOne(x, y)
    if (t >= 1000) {
      se += (p - y) ** 2
      m.bank().forEach((b, i) => (weight[i] += b.weight / 5000))
    }
  })
  const mse = se / 5000
  assert.ok(mse < 1.08, `MSE ${mse}, optimum 1`)
  assert.ok(weight[2] > 0.45 && weight[2] > 2 * weight[0], `mean mixing weights (λ = 0.95, 0.99, 1): ${weight}`)
})

test('no covariance wind-up: 100,000 identical samples, then a change, recovered within 300', () => {
  const r = rng(5)
  const m = new OnlineLinearModel()
  for (let i = 0; i < 200; i++) {
    const x = [r.normal(), 10 * r.normal(), r.u()]
    m.learnOne(x, 1 + x[0] - 0.1 * x[1] + 2 * x[2] + 0.1 * r.normal())
  }
  const N = 100_000
  const X = new Float64Array(N * 3)
  for (let i = 0; i < N; i++) X.set([0.5, 3, 0.25], i * 3)
  m.learnBatch(X, new Float64Array(N).fill(1.2))
  assert.equal(m.samples, N + 200)
  const state = JSON.stringify(m.toJSON())
  assert.ok(!/null|Infinity|NaN/.test(state), 'every number in the state is finite')
  const errs = []
  for (let i = 0; i < 600; i++) {
    const x = [r.normal(), 10 * r.normal(), r.u()]
    const y = -3 + 2 * x[0] + 0.3 * x[1] - x[2] + 0.1 * r.normal()
    errs.push(Math.abs(m.learnOne(x, y) - y))
  }
  const tail = errs.slice(300).reduce((a, b) => a + b, 0) / 300
  assert.ok(tail < 0.2, `MAE after 300 samples ${tail} (noise ≈ 0.08)`)
})

test('toJSON/fromJSON carry the whole state: a restored model continues bit for bit', () => {
  for (const options of [undefined, { optimizer: 'adagrad' }, { forgetting: 0.97 }]) {
    const rows = drifting(6, 600, 300)
    const m = new OnlineLinearModel(options)
    for (const [x, y] of rows.slice(0, 350)) m.learnOne(x, y)
    const copy = OnlineLinearModel.fromJSON(JSON.parse(JSON.stringify(m.toJSON())))
    assert.equal(copy.optimizer, m.optimizer)
    assert.equal(copy.samples, m.samples)
    for (const [x, y] of rows.slice(350)) assert.equal(copy.learnOne(x, y), m.learnOne(x, y))
    assert.deepEqual(copy.toModel(), m.toModel())
    assert.deepEqual(copy.bank(), m.bank())
  }
})

test('a state saved by the AdaGrad-only version loads and continues exactly as it would have', () => {
  // Written by the previous release (`toJSON()` after 40 samples), and what that release
  // returned for the next 10 `learnOne` calls and `toModel()` afterwards.
  const saved = {
    format: 'mlops-native/online-linear@1',
    config: { learningRate: 0.2, clip: 3, l2: 0 },
    state: {
      config: { learningRate: 0.2, clip: 3, l2: 0 },
      w: [0.7191101914912558, -0.0057558439786736144],
      b: 1.7798711386782315,
      mean: [1.9999999999999998, 97.50000000000001],
      sq: [1.8387554826270422, 6151.536308840554],
      g: [160.6738203212252, 120.21310826887972],
      gb: 104.50010820158181,
      yMean: 3.0250000000000004,
      yVar: 2.724375,
      n: 40,
    },
  }
  const expected = [0.9028455436163977, 1.3387946758114204, 2.3661829351314156, 2.805006149250438, 0.9842264847387862, 1.5722260975051272, 2.714549738710047, 3.0755300914165202, 1.6608626659400283, 2.1009761737158277]
  const m = OnlineLinearModel.fromJSON(saved)
  assert.equal(m.optimizer, 'adagrad')
  assert.equal(m.samples, 40)
  const got = []
  for (let i = 0; i < 10; i++) got.push(m.learnOne([i % 4, (i % 2) * 50], 1 + i))
  assert.deepEqual(got, expected)
  assert.deepEqual(m.toModel(), { weights: [0.5428635634713869, -0.011232962409726426], bias: 2.28554648326568 })
})

test('fromModel keeps the function; options are validated with the field named', () => {
  const raw = { weights: [2, -1], bias: 0.5 }
  for (const options of [undefined, { optimizer: 'adagrad' }, { forgetting: 0.9 }]) {
    const m = OnlineLinearModel.fromModel(raw, options)
    assert.equal(m.predictOne([3, 4]), 0.5 + 6 - 4)
  }
  assert.throws(() => new OnlineLinearModel({ optimizer: 'sgd' }), (e) => e instanceof RangeError && /options\.optimizer/.test(e.message))
  assert.throws(() => new OnlineLinearModel({ optimizer: 3 }), (e) => e instanceof TypeError && /options\.optimizer/.test(e.message))
  assert.throws(() => new OnlineLinearModel({ forgetting: 0.2 }), (e) => e instanceof RangeError && /options\.forgetting/.test(e.message))
  assert.throws(() => new OnlineLinearModel({ forgetting: 1.5 }), (e) => e instanceof RangeError && /options\.forgetting/.test(e.message))
  assert.throws(() => new OnlineLinearModel({ forgetting: 'x' }), /options\.forgetting/)
  assert.throws(() => OnlineLinearModel.fromModel(raw, { optimizer: 'nope' }), /options\.optimizer/)
  const bad = new OnlineLinearModel().toJSON()
  assert.throws(() => OnlineLinearModel.fromJSON({ ...bad, config: { optimizer: 'sgd' } }), /json\.config/)
})
