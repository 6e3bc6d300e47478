'use strict'
// Issue 9, for RealTimeModelUpdates: the calls the services really make.
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { execFile } = require('node:child_process')
const { RealTimeModelUpdates } = require('..')

const ROOT = path.join(__dirname, '..')
const BASE = 'quality-predictor-v3-advanced.json'

function sandbox(model = { weights: [0, 0], bias: 0 }) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlops-callers-'))
  fs.writeFileSync(path.join(dir, BASE), JSON.stringify(model))
  return dir
}
const truth = (a, b) => 1 + 2 * a - b

test('cleanup() then initialize() starts a fresh stream on the same log and replays what it should', async () => {
  const dir = sandbox()
  const rt = new RealTimeModelUpdates({ modelsDir: dir, bufferSize: 1e6, minSamplesForUpdate: 1e6 })
  assert.equal(await rt.initialize(), true)
  assert.equal(await rt.addFeedback({ features: [1, 2], prediction: 0, actual: 1 }), true)
  await rt.cleanup()
  assert.equal(await rt.addFeedback({ features: [1, 2], prediction: 0, actual: 1 }), false, 'refused between cleanup and initialize')
  assert.equal(await rt.initialize(), true, 'the same instance starts again')
  assert.equal(rt.getStatistics().replayed, 1, 'the unprocessed event is replayed')
  assert.equal(await rt.addFeedback({ features: [3, 4], prediction: 0, actual: 2 }), true, 'before: refused for good')
  assert.equal(rt.addFeedbackSync({ features: [3, 4], prediction: 0, actual: 2 }), true)
  assert.equal(typeof rt.predictSync([1, 1]), 'number')
  await rt.cleanup()
  assert.equal(await rt.initialize(), true, 'and again')
  assert.equal(rt.getStatistics().replayed, 3)
  await rt.cleanup()
  fs.rmSync(dir, { recursive: true })
})

test('the singleton survives cleanup() + initialize() (a script run with MLOPS_MODELS_DIR)', async () => {
  const dir = sandbox()
  const script = `
    const { getRealTimeModelUpdates } = require(${JSON.stringify(ROOT)})
    ;(async () => {
      const rt = getRealTimeModelUpdates()
      const out = [await rt.initialize(), await rt.addFeedback({ features: [1, 1], prediction: 0, actual: 1 })]
      await rt.cleanup()
      const again = getRealTimeModelUpdates()
      out.push(again === rt, await again.initialize(), await again.addFeedback({ features: [1, 1], prediction: { predictedQuality: 0 }, actual: '7.8' }))
      await again.cleanup()
      console.log(JSON.stringify(out))
    })()`
  const out = await new Promise((resolve, reject) =>
    execFile(process.execPath, ['-e', script], { env: { ...process.env, MLOPS_MODELS_DIR: dir }, timeout: 30_000 }, (e, stdout, stderr) => (e ? reject(new Error(stderr)) : resolve(stdout))),
  )
  assert.deepEqual(JSON.parse(out), [true, true, true, true, true])
  fs.rmSync(dir, { recursive: true })
})

test('recentUpdates entries carry the old fields; updateCount counts accepted updates only', async () => {
  const dir = sandbox({ weights: [2, -1], bias: 1 }) // already the truth: candidates cannot improve much
  const rt = new RealTimeModelUpdates({ modelsDir: dir, bufferSize: 1e6, minSamplesForUpdate: 1e6, updateThreshold: 0.5, feedbackLogDir: false })
  await rt.initialize()
  for (let i = 0; i < 100; i++) rt.addFeedbackSync({ features: [i % 10, i % 7], prediction: 0, actual: truth(i % 10, i % 7) + (i % 2 ? 0.2 : -0.2) })
  const rejected = await rt.forceUpdate()
  assert.equal(rejected.accepted, false)
  let s = rt.getStatistics()
  assert.equal(s.updateCount, 0, 'before: 1 with 0 swaps')
  assert.equal(s.updatesRejected, 1)
  assert.equal(s.updateCycles, 1)
  const e = s.recentUpdates[0]
  for (const k of ['timestamp', 'metrics', 'modelPath', 'version', 'time', 'currentMse', 'candidateMse', 'improvement', 'reason', 'accepted']) assert.ok(k in e, k)
  assert.equal(typeof e.timestamp, 'number')
  assert.ok(Math.abs(e.timestamp - Date.now()) < 60_000)
  assert.equal(e.modelPath, path.join(dir, BASE))
  assert.match(e.version, /^v\d+$/)
  assert.equal(e.metrics.mse, e.currentMse, 'rejected: the serving model’s error')
  // An accepted one counts.
  fs.writeFileSync(path.join(dir, 'zero.json'), JSON.stringify({ weights: [0, 0], bias: 0 }))
  await rt.hotSwapModel('zero.json')
  for (let i = 0; i < 200; i++) rt.addFeedbackSync({ features: [i % 10, i % 7], prediction: 0, actual: truth(i % 10, i % 7) })
  const accepted = await rt.forceUpdate()
  assert.equal(accepted.accepted, true)
  s = rt.getStatistics()
  assert.equal(s.updateCount, 1)
  assert.equal(s.recentUpdates[1].modelPath, path.join(dir, 'zero.json'))
  assert.equal(s.recentUpdates[1].version, `v${s.modelVersion}`)
  assert.equal(s.recentUpdates[1].metrics.mse, accepted.candidateMse)
  await rt.cleanup()
  fs.rmSync(dir, { recursive: true })
})

test('features as an object of named numbers, through the model file’s featureNames or the featureNames option', async () => {
  const dir = sandbox({ weights: [2, -1], bias: 1, featureNames: ['inputTokens', 'latency'] })
  const rt = new RealTimeModelUpdates({ modelsDir: dir, feedbackLogDir: false })
  await rt.initialize()
  assert.equal(rt.predictSync({ inputTokens: 3, latency: 2 }), truth(3, 2))
  assert.equal(rt.predictSync({ latency: 2, inputTokens: 3 }), truth(3, 2), 'order does not matter')
  assert.equal(rt.predictSync({ latency: 2 }), truth(0, 2), 'a missing name is 0')
  assert.equal(rt.predictSync({ inputTokens: '3', latency: 2 }), truth(3, 2), 'numeric strings are numbers')
  assert.equal(await rt.addFeedback({ prediction: 1, actual: 2, features: { inputTokens: 1, latency: 1 } }), true)
  assert.equal(await rt.addFeedback({ prediction: 1, actual: 2, context: { features: { inputTokens: 1, latency: 1 } } }), true, 'context.features too')
  assert.throws(() => rt.addFeedbackSync({ prediction: 1, actual: 2, features: { inputTokens: 1, colour: 3 } }), (e) => e instanceof RangeError && /feedback\.features\.colour is not a feature/.test(e.message))
  assert.throws(() => rt.addFeedbackSync({ prediction: 1, actual: 2, context: { features: { nope: 1 } } }), (e) => e instanceof RangeError && /feedback\.context\.features\.nope/.test(e.message))
  assert.throws(() => rt.addFeedbackSync({ prediction: 1, actual: 2, features: { latency: 'fast' } }), (e) => e instanceof TypeError && /feedback\.features\.latency/.test(e.message))
  assert.equal(await rt.addFeedback({ prediction: 1, actual: 2, features: { colour: 1 } }), false, 'the Promise form resolves false')
  await rt.flush()
  assert.equal(rt.getStatistics().rejected.invalid, 3 + 1)
  await rt.cleanup()

  // A model without names: the option names them.
  fs.writeFileSync(path.join(dir, 'plain.json'), JSON.stringify({ weights: [2, -1], bias: 1 }))
  const noNames = new RealTimeModelUpdates({ modelsDir: dir, modelPath: 'plain.json', feedbackLogDir: false })
  await noNames.initialize()
  assert.throws(() => noNames.predictSync({ a: 1 }), (e) => e instanceof TypeError && /featureNames/.test(e.message))
  await noNames.cleanup()
  const named = new RealTimeModelUpdates({ modelsDir: dir, modelPath: 'plain.json', feedbackLogDir: false, featureNames: ['a', 'b'] })
  await named.initialize()
  assert.equal(named.predictSync({ a: 3, b: 2 }), truth(3, 2))
  await named.cleanup()
  assert.throws(() => new RealTimeModelUpdates({ featureNames: 'a' }), (e) => e instanceof TypeError && /options\.featureNames/.test(e.message))
  assert.throws(() => new RealTimeModelUpdates({ featureNames: ['a', 'a'] }), (e) => e instanceof RangeError && /options\.featureNames/.test(e.message))
  fs.rmSync(dir, { recursive: true })
})

test('object predictions ({predictedQuality: 0}) and numeric strings are accepted', async () => {
  const dir = sandbox()
  const rt = new RealTimeModelUpdates({ modelsDir: dir, bufferSize: 1e6, minSamplesForUpdate: 1e6 })
  await rt.initialize()
  // The feedback loop's `prediction.predictedQuality || prediction.quality || prediction` with a 0.
  assert.equal(await rt.addFeedback({ prediction: { predictedQuality: 0 }, actual: 7.8, features: [1, 2] }), true, 'before: false, dropped')
  assert.equal(await rt.addFeedback({ prediction: { quality: 6 }, actual: '7.8', features: ['1', '2'] }), true)
  assert.equal(rt.addFeedbackSync({ prediction: '6.5', actual: '7', features: [] }), true)
  assert.throws(() => rt.addFeedbackSync({ prediction: { label: 'good' }, actual: 1 }), /feedback\.prediction/)
  assert.throws(() => rt.addFeedbackSync({ prediction: 1, actual: 'seven' }), /feedback\.actual/)
  await rt.cleanup()
  const again = new RealTimeModelUpdates({ modelsDir: dir, bufferSize: 1e6, minSamplesForUpdate: 1e6 })
  await again.initialize()
  assert.equal(again.getStatistics().replayed, 3, 'the coerced events were logged as numbers')
  await again.cleanup()
  const line = fs.readFileSync(path.join(dir, 'feedback-log', fs.readdirSync(path.join(dir, 'feedback-log')).find((f) => f.endsWith('.jsonl'))), 'utf8').split('\n')[1]
  assert.match(line, /"features":\[1\.0,2\.0\],"prediction":6\.0,"actual":7\.8/)
  fs.rmSync(dir, { recursive: true })
})
