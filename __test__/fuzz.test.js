'use strict'
// Property-based hostile-input testing of every exported constructor and method, Sync and
// Promise forms. Each generated call must end in a correct result, a TypeError/RangeError
// (or, for file inputs, a clear Error), or the documented false / {success: false}; never
// an abort, a hang or an uncaught exception; and a valid call right after must still give
// the right answer. Runs per entry point: FUZZ_RUNS (npm test: 40; npm run test:fuzz: 1500).

const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const fc = require('fast-check')
const mlops = require('..')

const RUNS = Number(process.env.FUZZ_RUNS || 40)
const SEED = process.env.FUZZ_SEED ? Number(process.env.FUZZ_SEED) : undefined
const counts = {}

function throwingGetter(key) {
  return Object.defineProperty({}, key, {
    enumerable: true,
    get() {
      throw new Error(`getter ${key} exploded`)
    },
  })
}

const special = fc.constantFrom(NaN, Infinity, -Infinity, -0, 0, 1e308, -1e308, Number.MIN_VALUE, 2 ** 53, -1, 0.5, 1, 5, 7, 23, 25, 101)
const junkLeaf = fc.oneof(
  special,
  fc.double(),
  fc.integer(),
  fc.string({ maxLength: 20 }),
  fc.constantFrom('', 'x'.repeat(100_000), '__proto__', 'constructor', 'sgd', 'adam', 'ridge', 'update', 'drift', 'gpt-4o', 'ai-gm'),
  fc.constantFrom(null, undefined, true, false),
  fc.constant(Symbol('s')),
  fc.bigInt(),
  fc.constantFrom(() => 1, () => { throw new Error('fn') }),
)
const hostileObject = fc.oneof(
  fc.constantFrom('value', 'prediction', 'confidence', 'model', 'features', 'quality', 'actual', 'serviceName', 'inputTokens', 'weights', 'bias', 'predict', 'trained', 'X', 'y').map(throwingGetter),
  fc.constant(null).map(() => JSON.parse('{"__proto__": {"polluted": 1}, "constructor": {"prototype": {"polluted": 2}}, "value": 1}')),
  fc.constant(null).map(() => Object.create(null)),
  // Throws on every string-keyed read (symbol reads stay quiet so fast-check can inspect it).
  fc.constant(null).map(() => new Proxy({}, { get(_, k) { if (typeof k === 'string') throw new Error(`proxy read ${k}`) } })),
)
const typed = fc.constantFrom(
  () => new Float64Array(0),
  () => new Float64Array(7),
  () => new Float64Array([NaN, 1]),
  () => new Float64Array([1, 2, 3, 4]),
  () => new Float32Array(4),
  () => new Int8Array(3),
  () => new Uint8Array(8),
  () => new BigInt64Array(2),
  () => new DataView(new ArrayBuffer(8)),
).map((f) => f())
const huge = fc.constantFrom(() => new Array(200_001).fill(1), () => Array.from({ length: 5000 }, (_, i) => ({ value: i, model: `m${i}` })), () => new Float64Array(1 << 20)).map((f) => f())
const { junk } = fc.letrec((tie) => ({
  junk: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    junkLeaf,
    hostileObject,
    typed,
    fc.array(tie('junk'), { maxLength: 4 }),
    fc.dictionary(fc.constantFrom('value', 'prediction', 'confidence', 'model', 'predictionType', 'features', 'quality', 'actual', 'serviceName', 'provider', 'inputTokens', 'outputTokens', 'cacheHit', 'latencyMs', 'satisfaction', 'weights', 'bias', 'trained', 'predict', 'X', 'y', '__proto__', 'constructor'), tie('junk'), { maxKeys: 5 }),
  ),
}))
// Junk that looks more like what each argument expects, so checks deeper in are reached.
const entry = fc.oneof(junk, fc.record({ value: fc.oneof(fc.double(), special), confidence: fc.oneof(fc.double(), special, junk), model: fc.oneof(fc.string({ maxLength: 5 }), junk) }, { requiredKeys: [] }))
const predictions = fc.oneof(junk, huge, fc.array(entry, { maxLength: 6 }))
const context = fc.oneof(junk, fc.record({ serviceName: fc.oneof(fc.constantFrom('ai-gm', 'oracle'), junk), predictionType: junk, features: fc.oneof(fc.array(special, { maxLength: 3 }), junk), calibrate: junk, inputTokens: fc.oneof(special, junk), outputTokens: special, cacheHit: junk, hour: special, model: fc.oneof(fc.constantFrom('gpt-4o', 'nope'), junk) }, { requiredKeys: [] }))
const rows = fc.oneof(junk, huge, fc.array(fc.record({ features: fc.oneof(fc.array(special, { minLength: 8, maxLength: 8 }), junk), quality: fc.oneof(special, junk) }, { requiredKeys: [] }), { maxLength: 150 }))
const feedback = fc.oneof(junk, fc.record({ prediction: fc.oneof(special, junk), actual: fc.oneof(special, junk), features: fc.oneof(fc.array(special, { maxLength: 4 }), typed, junk) }, { requiredKeys: [] }))

const DIR = fs.mkdtempSync(path.join(os.tmpdir(), 'mlops-fuzz-'))
// Generated strings reach file APIs: any relative one must land in the sandbox, never in
// the working tree the suite was started from.
process.chdir(DIR)
const BASE = 'quality-predictor-v3-advanced.json'
fs.copyFileSync(path.join(__dirname, '..', 'models', BASE), path.join(DIR, BASE))
fs.writeFileSync(path.join(DIR, 'two.json'), JSON.stringify({ weights: [1, 1], bias: 0 }))
// Paths for APIs that write: junk that is not a string (rejected before any I/O), or a
// generated name inside the sandbox.
const writePath = (sub) => fc.oneof(junk.filter((x) => typeof x !== 'string'), fc.string({ maxLength: 8 }).map((s) => path.join(DIR, sub, s.replace(/\0/g, '') || 'x')))
const fileArg = fc.oneof(junk, fc.constantFrom(BASE, 'two.json', 'missing.json', '', DIR, path.join(DIR, 'fine-tuned'), '../../../../etc/hostname', 'x'.repeat(5000), '\0bad'))

function isAllowed(err, { files = false } = {}) {
  if (err instanceof TypeError || err instanceof RangeError) return true
  // File inputs may fail as I/O does, with a message that says so.
  if (files && err instanceof Error && /cannot read|cannot write|not valid JSON|directory|UTF-8|not an? |no version|no production|larger than|schema|nul byte|File name too long|unknown/i.test(err.message)) return true
  return false
}

async function settle(v) {
  if (v && typeof v.then === 'function') {
    let timer
    const timeout = new Promise((_, reject) => (timer = setTimeout(() => reject(new Error('HANG: no settlement in 10 s')), 10_000)))
    try {
      return await Promise.race([v, timeout])
    } finally {
      clearTimeout(timer)
    }
  }
  return v
}

/** Runs `call(args)`; asserts an allowed ending, then `valid()` still answers correctly. */
function property(name, arbs, call, valid, opts = {}) {
  return fc.asyncProperty(...arbs, async (...args) => {
    counts[name] = (counts[name] ?? 0) + 1
    let result
    try {
      result = await settle(call(...args))
    } catch (err) {
      if (!isAllowed(err, opts)) {
        throw new Error(`${name}: disallowed ${err && err.constructor && err.constructor.name}: ${err && err.message}`)
      }
      await valid()
      return
    }
    if (opts.result) opts.result(result)
    await valid()
  })
}

function short(x) {
  let t
  try {
    t = fc.stringify(x)
  } catch {
    try {
      t = String(x)
    } catch {
      t = '(an unprintable value: a hostile Proxy or getter)'
    }
  }
  return t.length > 300 ? `${t.slice(0, 300)}… (${t.length} chars)` : t
}

async function check(p) {
  const r = await fc.check(p, { numRuns: RUNS, seed: SEED, endOnFailure: true })
  if (r.failed) {
    const err = r.errorInstance
    throw new Error(`${err && err.message ? err.message.slice(0, 500) : String(err)}\n  seed ${r.seed}, counterexample ${short(r.counterexample)}`)
  }
}

test('AdvancedEnsemble: every entry point against hostile input', async () => {
  const e = new mlops.AdvancedEnsemble()
  const valid = () => {
    assert.equal(e.confidenceWeightedVotingSync([{ value: 2, confidence: 1 }, { value: 4, confidence: 1 }]).prediction, 3)
    assert.equal(e.stackingEnsembleSync([{ value: 3, model: 'solo-check' }], { serviceName: 'fuzz-check' }).basePredictions[0].value, 3)
  }
  await check(property('new AdvancedEnsemble', [junk], (o) => new mlops.AdvancedEnsemble(o), valid))
  for (const m of ['stackingEnsemble', 'dynamicSelection', 'confidenceWeightedVoting']) {
    await check(property(`${m}Sync`, [predictions, context], (p, c) => e[`${m}Sync`](p, c), valid))
    await check(property(m, [predictions, context], (p, c) => e[m](p, c), valid))
  }
  await check(property('updateWithFeedbackSync', [predictions, fc.oneof(special, junk), context], (p, a, c) => e.updateWithFeedbackSync(p, a, c), valid))
  await check(property('updateWithFeedback', [predictions, fc.oneof(special, junk), context], (p, a, c) => e.updateWithFeedback(p, a, c), valid, { result: (r) => assert.equal(typeof r, 'boolean') }))
  await check(property('stackingBatch', [fc.oneof(typed, junk), fc.oneof(fc.constant(['a', 'b']), junk), context, fc.oneof(typed, junk)], (p, m, c, k) => e.stackingBatch(p, m, c, k), valid))
  for (const m of ['registerNeuralNetwork', 'registerTransformer']) {
    await check(property(m, [junk], (x) => e[m](x), () => {
      valid()
      // A registered junk model must not break stacking with features.
      assert.equal(typeof e.stackingEnsembleSync([1], { features: [1] }).prediction, 'number')
    }))
  }
  await check(property('saveState/loadState', [writePath('ens')], async (p) => {
    await e.saveState(p)
    await e.loadState(p)
  }, valid, { files: true }))
  await check(property('getStatistics/toJSON', [junk], () => [e.getStatistics(), e.toJSON()], valid))
})

test('ModelFineTuning: every entry point against hostile input', async () => {
  const ft = new mlops.ModelFineTuning({ modelsDir: DIR, epochs: 2 })
  const valid = async () => {
    assert.equal(ft.predictSingle({ weights: [1, 2], bias: 1 }, [1, 1]), 4)
    assert.equal(ft.getNextVersion(BASE).startsWith('v'), true)
    assert.deepEqual(Object.keys(await ft.loadModel('two.json')), ['weights', 'bias'])
  }
  await check(property('new ModelFineTuning', [junk], (o) => new mlops.ModelFineTuning(o), valid))
  await check(property('fineTuneModel', [fileArg, rows, fc.oneof(junk, fc.record({ epochs: fc.oneof(special, junk), optimizer: junk, save: fc.constant(false), learningRate: fc.oneof(special, junk), onProgress: junk, validationSplit: special, minSamples: fc.constantFrom(0, 1, 5) }, { requiredKeys: ['save'] }))], (b, d, o) => ft.fineTuneModel(b, d, o), valid, {
    result: (r) => assert.ok(r && typeof r.success === 'boolean' && (r.success || typeof r.error === 'string'), JSON.stringify(r)),
  }))
  await check(property('loadModel', [fileArg], (p) => ft.loadModel(p), valid, { files: true }))
  await check(property('saveModel', [fc.oneof(junk, fc.constant({ weights: [1], bias: 0 })), fileArg, junk], (m, b, v) => ft.saveModel(m, b, v), valid, { files: true }))
  await check(property('getNextVersion', [fileArg], (p) => ft.getNextVersion(p), valid, { files: true }))
  await check(property('getFineTuningHistory', [fileArg], (p) => ft.getFineTuningHistory(p), valid, { files: true }))
  await check(property('promoteVersion', [fileArg, junk], (p, v) => ft.promoteVersion(p, v), valid, { files: true }))
  await check(property('rollback/getProductionVersion', [fileArg], async (p) => [await ft.getProductionVersion(p), await ft.rollback(p)], valid, { files: true }))
  for (const m of ['predictSingle', 'predictBatch', 'calculateMSE', 'calculateMAE', 'calculateR2']) {
    await check(property(m, [junk, junk], (a, b) => ft[m](a, b), valid))
  }
  await check(property('evaluateModel', [junk, junk, junk], (a, b, c) => ft.evaluateModel(a, b, c), valid))
})

test('ExpandedPredictions: every entry point against hostile input', async () => {
  const p = new mlops.ExpandedPredictions()
  const valid = () => {
    assert.equal(p.predictLatencySync({ serviceName: 'ai-gm', cacheHit: true, inputSize: 100 }).latency >= 0, true)
    assert.equal(p.predictCostSync({ model: 'gpt-4o', inputTokens: 1000, outputTokens: 0 }).cost, 1000 * 2.5e-6)
  }
  await check(property('new ExpandedPredictions', [junk], (o) => new mlops.ExpandedPredictions(o), valid, { files: true }))
  for (const m of ['predictLatency', 'predictCost', 'predictSatisfaction', 'predictResources', 'predictAll']) {
    await check(property(`${m}Sync`, [context], (c) => p[`${m}Sync`](c), valid))
    // The compat Promise forms never reject.
    await check(property(m, [context], async (c) => {
      const r = await p[m](c)
      assert.equal(typeof r, 'object')
    }, valid, { result: () => {} }))
  }
  await check(property('recordOutcomeSync', [context, fc.oneof(junk, fc.record({ latencyMs: fc.oneof(special, junk), satisfaction: special, cost: special }, { requiredKeys: [] }))], (c, o) => p.recordOutcomeSync(c, o), valid))
  await check(property('recordOutcome', [context, junk], (c, o) => p.recordOutcome(c, o), valid))
  await check(property('predictAllBatch', [fc.oneof(junk, fc.array(context, { maxLength: 4 }))], (cs) => p.predictAllBatch(cs), valid))
  await check(property('setPriceTable', [fileArg], (t) => p.setPriceTable(t), () => {
    p.setPriceTable({ 'gpt-4o': { input_cost_per_token: 2.5e-6, output_cost_per_token: 1e-5 } })
    valid()
  }, { files: true }))
  await check(property('saveState/loadState', [writePath('pred')], async (x) => {
    await p.saveState(x)
    await p.loadState(x)
  }, valid, { files: true }))
})

test('RealTimeModelUpdates and OnlineLinearModel: every entry point against hostile input', async () => {
  const rt = new mlops.RealTimeModelUpdates({ modelsDir: DIR, modelPath: 'two.json', feedbackLogDir: path.join(DIR, 'fuzz-log'), bufferSize: 50, minSamplesForUpdate: 10 })
  assert.equal(await rt.initialize(), true)
  const valid = async () => {
    assert.equal(typeof rt.predictSync([1, 1]), 'number')
    assert.equal(await rt.addFeedback({ prediction: 1, actual: 2, features: [1, 1] }), true)
    const s = rt.getStatistics()
    assert.equal(s.received, s.accepted + s.rejected.total + s.dropped)
  }
  await check(property('new RealTimeModelUpdates', [junk], (o) => new mlops.RealTimeModelUpdates(o), valid))
  await check(property('new RealTimeModelUpdates (refit options)', [fc.record({ refitEvery: fc.oneof(special, junk), refitIntervalMs: fc.oneof(special, junk), refitWindow: fc.oneof(special, junk) }, { requiredKeys: [] })], (o) => new mlops.RealTimeModelUpdates({ modelsDir: DIR, feedbackLogDir: false, ...o }), valid))
  await check(property('getModelInfo', [junk], () => rt.getModelInfo(), valid, { result: (r) => assert.equal(r.family, 'linear') }))
  await check(property('addFeedbackSync', [feedback], (f) => rt.addFeedbackSync(f), valid, { result: (r) => assert.equal(typeof r, 'boolean') }))
  await check(property('addFeedback', [feedback], (f) => rt.addFeedback(f), valid, { result: (r) => assert.equal(typeof r, 'boolean') }))
  await check(property('addFeedbackBatch', [fc.oneof(typed, junk), fc.oneof(typed, junk), fc.oneof(typed, junk)], (a, b, c) => rt.addFeedbackBatch(a, b, c), valid))
  await check(property('predictSync', [junk], (x) => rt.predictSync(x), valid))
  await check(property('predict', [junk], (x) => rt.predict(x), valid))
  await check(property('hotSwapModel', [fc.oneof(fileArg, fc.constantFrom(BASE))], (x) => rt.hotSwapModel(x), valid, { result: (r) => assert.equal(typeof r, 'boolean') }))
  await check(property('validateImprovement', [junk], (x) => rt.validateImprovement(x), valid, { result: (r) => assert.equal(typeof r, 'boolean') }))
  await check(property('on/off', [junk, junk], (a, b) => { rt.on(a, b); rt.off(a, b) }, valid))
  await check(property('processBuffer/forceUpdate/rollback', [junk], async () => [await rt.processBuffer(), await rt.forceUpdate(), await rt.rollback()], async () => {
    await rt.hotSwapModel('two.json')
    await valid()
  }))
  await rt.cleanup()

  const m = new mlops.OnlineLinearModel()
  m.learnOne([1, 2], 3)
  const validM = () => assert.equal(typeof m.predictOne([1, 2]), 'number') || assert.ok(Number.isFinite(m.predictOne([1, 2])))
  await check(property('new OnlineLinearModel', [junk], (o) => new mlops.OnlineLinearModel(o), validM))
  await check(property('learnOne', [fc.oneof(junk, fc.array(special, { maxLength: 3 })), fc.oneof(special, junk)], (x, y) => m.learnOne(x, y), validM))
  await check(property('predictOne', [fc.oneof(junk, fc.array(special, { maxLength: 3 }))], (x) => m.predictOne(x), validM))
  await check(property('learnBatch/predictBatch', [fc.oneof(typed, junk), fc.oneof(typed, junk)], (x, y) => [m.learnBatch(x, y), m.predictBatch(x)], validM))
  await check(property('fromJSON', [fc.oneof(junk, fc.constant(null).map(() => ({ ...m.toJSON(), state: { w: 'x' } })))], (j) => mlops.OnlineLinearModel.fromJSON(j), validM))
  await check(property('fromModel', [junk, junk], (a, b) => mlops.OnlineLinearModel.fromModel(a, b), validM))
})

test('Model: load, fromJSON, predict, predictBatch', async () => {
  const m = await mlops.Model.load(BASE)
  const x = [100, 200, 1500, 2, 0.7, 0, 0, 12]
  const expected = m.predict(x)
  const valid = () => assert.equal(m.predict(x), expected)
  await check(property('Model.load', [fileArg], (p) => mlops.Model.load(p), valid, { files: true }))
  await check(property('Model.fromJSON', [fc.oneof(junk, fc.constant(null).map(() => ({ ...m.toJSON(), weights: [1, 'x'] })), fc.constant(null).map(() => ({ format: 'mlops-native/gbm@1', features: ['a'], model: { regressors: [{ left: {}, right: {} }] } })))], (j) => mlops.Model.fromJSON(j), valid))
  await check(property('Model.predict', [fc.oneof(junk, fc.array(special, { minLength: 8, maxLength: 8 }))], (f) => m.predict(f), valid))
  await check(property('Model.predictBatch', [fc.oneof(typed, junk), fc.oneof(special, junk)], (a, n) => m.predictBatch(a, n), valid))
})

test('report', () => {
  const cwdJunk = fs.readdirSync(path.join(__dirname, '..')).filter((f) => !/^(\.|__test__|build\.rs|Cargo|README|crates|data|docs|examples|index\.|js|lib|mlops|models|node_modules|npm|package|scripts|src|target|types)/.test(f))
  assert.deepEqual(cwdJunk, [], 'the suite wrote nothing into the repository')
  const total = Object.values(counts).reduce((a, b) => a + b, 0)
  console.log(`# fuzz: ${total} generated calls over ${Object.keys(counts).length} entry points (FUZZ_RUNS=${RUNS})`)
  fs.rmSync(DIR, { recursive: true, force: true })
})
