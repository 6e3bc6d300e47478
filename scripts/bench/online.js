'use strict'
// OnlineLinearModel: accuracy against River and speed against AdaGrad, in one run.
//
// Accuracy: progressive MAE (predict, then learn; every row scored before it is learned)
// with defaults on River's own public real-world streams, TrumpApproval (1,001 days: a
// growing date feature and five poll averages) and ChickWeights (578 growth-curve rows),
// read from the River package installed here, and on seeded synthetic streams with abrupt
// and gradual drift. River runs in the same bench run, on the same rows, in a venv this
// script creates in `.bench-venv/` (git-ignored; `pip install river` on first use):
// its default `StandardScaler | LinearRegression`, and the best tuned linear setup River
// publishes for TrumpApproval (its `ensemble.EWARegressor` docs: `StandardScaler |
// LinearRegression(optimizer=AdaGrad(), intercept_lr=.1)`, MAE 0.477289), run again
// here. The datasets are never copied into the repository.
//
// Speed: `learnOne` with 8 features, default (RLS bank) against an `optimizer: 'adagrad'`
// instance (the previous default) in the same process, through JS and in Rust alone; and
// Rust-alone cost by feature count, which is where `optimizer: 'auto'` switches to AdaGrad.
//   node scripts/bench/run.js online        (BENCH_NO_RIVER=1 skips the River part)

const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { execFileSync } = require('node:child_process')
const { OnlineLinearModel } = require('../..')
const native = require('../../index.js')
const { nsPerCall, median, table } = require('./harness.js')

const ROOT = path.join(__dirname, '..', '..')
const VENV = path.join(ROOT, '.bench-venv')
const PY = process.platform === 'win32' ? path.join(VENV, 'Scripts', 'python.exe') : path.join(VENV, 'bin', 'python')

/** The bench venv with River, created on first use. Returns null (and why) when impossible. */
function venv() {
  try {
    if (!fs.existsSync(PY)) {
      console.log('creating .bench-venv (python3 -m venv) and installing river from PyPI…')
      execFileSync(process.env.PYTHON || 'python3', ['-m', 'venv', VENV], { stdio: 'inherit' })
    }
    try {
      execFileSync(PY, ['-c', 'import river'], { stdio: 'ignore' })
    } catch {
      execFileSync(PY, ['-m', 'pip', 'install', '--quiet', 'river'], { stdio: 'inherit' })
    }
    return { python: PY }
  } catch (e) {
    return { error: e.message.split('\n')[0] }
  }
}

/** Seeded synthetic streams: 4 features of mixed scales, noise σ = 1. */
function synthetic(kind, n = 4000) {
  let s = kind === 'abrupt' ? 7 : 8
  const u = () => ((s = (s * 1664525 + 1013904223) >>> 0) / 4294967296)
  const normal = () => Math.sqrt(-2 * Math.log(Math.max(u(), 1e-300))) * Math.cos(2 * Math.PI * u())
  const before = [3, -0.02, 40, 1]
  const after = [-2, 0.05, 10, -3]
  const rows = []
  for (let t = 0; t < n; t++) {
    const x = [normal(), 100 + 50 * normal(), u(), 5 * normal()]
    const a = kind === 'abrupt' ? (t >= n / 2 ? 1 : 0) : Math.min(1, Math.max(0, (t - n / 4) / (n / 2)))
    let y = 10 + normal()
    for (let i = 0; i < 4; i++) y += ((1 - a) * before[i] + a * after[i]) * x[i]
    rows.push([x, y])
  }
  return rows
}

const PY_SCRIPT = String.raw`
import json, sys
from river import datasets, evaluate, linear_model, metrics, optim, preprocessing

def default():
    return preprocessing.StandardScaler() | linear_model.LinearRegression()

def published_best():
    # river/ensemble/ewa.py docs: best of the linear setups River publishes for TrumpApproval.
    return preprocessing.StandardScaler() | linear_model.LinearRegression(optimizer=optim.AdaGrad(), intercept_lr=.1)

def mae(model, rows):
    m = metrics.MAE()
    for x, y in rows:
        m.update(y, model.predict_one(x))
        model.learn_one(x, y)
    return m.get()

out = {}
for name, ds in [('TrumpApproval', datasets.TrumpApproval()), ('ChickWeights', datasets.ChickWeights())]:
    rows = list(ds)
    keys = list(rows[0][0].keys())
    out[name] = {
        'source': str(ds.path),
        'features': keys,
        'X': [[float(x[k]) for k in keys] for x, _ in rows],
        'y': [float(y) for _, y in rows],
        'riverDefault': mae(default(), rows),
        'riverTuned': mae(published_best(), rows),
        'published': name == 'TrumpApproval',
    }
synth = json.load(open(sys.argv[1]))
for name, rows in synth.items():
    rows = [({i: v for i, v in enumerate(x)}, y) for x, y in rows]
    out[name] = {'riverDefault': mae(default(), rows), 'riverTuned': mae(published_best(), rows), 'published': False}
print(json.dumps(out))
`

function progressive(model, X, y) {
  let ae = 0
  for (let i = 0; i < y.length; i++) ae += Math.abs(model.learnOne(X[i], y[i]) - y[i])
  return ae / y.length
}

function accuracy() {
  console.log('\n### Progressive MAE with defaults (predict, then learn)\n')
  const synth = { 'synthetic abrupt drift': synthetic('abrupt'), 'synthetic gradual drift': synthetic('gradual') }
  let river = null
  let why = 'BENCH_NO_RIVER set'
  if (!process.env.BENCH_NO_RIVER) {
    const env = venv()
    if (env.error) why = env.error
    else {
      const tmp = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'mlops-bench-online-')), 'synth.json')
      fs.writeFileSync(tmp, JSON.stringify(synth))
      try {
        river = JSON.parse(execFileSync(env.python, ['-c', PY_SCRIPT, tmp], { maxBuffer: 64 << 20 }).toString())
      } catch (e) {
        why = e.message.split('\n')[0]
      }
      fs.rmSync(path.dirname(tmp), { recursive: true, force: true })
    }
  }
  if (!river) console.log(`River comparison skipped: ${why}\n`)
  const sets = []
  if (river) {
    for (const name of ['TrumpApproval', 'ChickWeights']) {
      const r = river[name]
      sets.push({ name, X: r.X, y: r.y, river: r, note: `${r.y.length} rows, features ${r.features.join(', ')}` })
    }
  }
  for (const [name, rows] of Object.entries(synth)) {
    sets.push({ name, X: rows.map((r) => r[0]), y: rows.map((r) => r[1]), river: river && river[name], note: `${rows.length} rows` })
  }
  const rows = []
  const verdicts = []
  for (const s of sets) {
    const ours = progressive(new OnlineLinearModel(), s.X, s.y)
    const ada = progressive(new OnlineLinearModel({ optimizer: 'adagrad' }), s.X, s.y)
    const rd = s.river ? s.river.riverDefault : NaN
    const rt = s.river ? s.river.riverTuned : NaN
    const f = (v) => (Number.isFinite(v) ? v.toFixed(4) : 'n/a')
    rows.push([s.name, f(ours), f(ada), f(rd), s.river ? `${f(rt)}${s.river.published ? ' (published)' : ''}` : 'n/a', Number.isFinite(rd) ? `${(rd / ours).toFixed(2)}×` : 'n/a'])
    if (s.river) {
      verdicts.push(`${s.name}: default ${ours < rd ? 'beats' : 'does NOT beat'} River's default (${f(ours)} vs ${f(rd)})`)
      if (s.river.published) verdicts.push(`${s.name}: default ${ours < rt ? 'beats' : 'does NOT beat'} River's best published linear setup (${f(ours)} vs ${f(rt)})`)
      if (s.name === 'TrumpApproval') verdicts.push(`${s.name} (trending date feature): ${(rd / ours).toFixed(2)}× lower than River's default (target ≥ 2.5×: ${rd / ours >= 2.5 ? 'met' : 'NOT met'})`)
    }
  }
  table(rows, ['stream', 'ours (default)', "optimizer 'adagrad'", 'River default', 'River tuned', 'River default / ours'])
  console.log('')
  for (const v of verdicts) console.log(`- ${v}`)
  if (river) console.log(`\n(River datasets read from ${path.dirname(river.TrumpApproval.source)})`)
}

function speed() {
  console.log('\n### learnOne cost (median of rounds)\n')
  const D = 8
  let s = 3
  const u = () => ((s = (s * 1664525 + 1013904223) >>> 0) / 4294967296)
  const X = Array.from({ length: 1024 }, () => Float64Array.from({ length: D }, () => u() * 100))
  const Y = X.map((x) => x.reduce((a, b) => a + b, 0) + u())
  const rls = new OnlineLinearModel()
  const ada = new OnlineLinearModel({ optimizer: 'adagrad' })
  // Interleaved rounds so both see the same machine load.
  const jsR = []
  const jsA = []
  for (let r = 0; r < 3; r++) {
    jsA.push(nsPerCall((i) => ada.learnOne(X[i & 1023], Y[i & 1023]), 200_000))
    jsR.push(nsPerCall((i) => rls.learnOne(X[i & 1023], Y[i & 1023]), 200_000))
  }
  const rR = []
  const rA = []
  for (let r = 0; r < 7; r++) {
    rA.push(native.OnlineLinearModel._benchLearnOne(D, 300_000, 'adagrad'))
    rR.push(native.OnlineLinearModel._benchLearnOne(D, 300_000, 'rls'))
  }
  const [rustR, rustA] = [median(rR), median(rA)]
  const [a, b] = [median(jsA), median(jsR)]
  table(
    [
      ['learnOne, 8 features, JS (Float64Array)', `${b.toFixed(0)} ns`, `${a.toFixed(0)} ns`, `${(b / a).toFixed(2)}× (target ≤ 3×: ${b / a <= 3 ? 'met' : 'NOT met'})`],
      ['learnOne, 8 features, Rust alone', `${rustR.toFixed(0)} ns`, `${rustA.toFixed(0)} ns`, `${(rustR / rustA).toFixed(2)}×`],
    ],
    ['', 'RLS bank (default)', "AdaGrad (previous default)", 'ratio'],
  )

  console.log("\n### Where O(d²) stops paying: Rust-alone learnOne by feature count (optimizer 'auto' uses RLS up to 48)\n")
  const out = []
  for (const d of [8, 16, 24, 32, 48, 64, 96, 128]) {
    const it = Math.max(2000, Math.round(4_000_000 / (d * d)))
    const r = median([1, 2, 3].map(() => native.OnlineLinearModel._benchLearnOne(d, it, 'rls')))
    const g = median([1, 2, 3].map(() => native.OnlineLinearModel._benchLearnOne(d, 200_000, 'adagrad')))
    out.push([d, `${(r / 1000).toFixed(2)} µs`, `${(g / 1000).toFixed(2)} µs`, `${(r / g).toFixed(0)}×`, `${Math.round(1e9 / r).toLocaleString('en-US')}`])
  }
  table(out, ['features', 'RLS bank', 'AdaGrad', 'ratio', 'RLS samples/s'])
}

async function run() {
  console.log('\n## OnlineLinearModel\n')
  accuracy()
  speed()
}

module.exports = { run }
if (require.main === module) run()
