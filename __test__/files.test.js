'use strict'
// Hostile files as input: empty, binary, truncated, huge (sparse), wrong-schema model
// files, state files, feedback logs and price tables, and paths that are directories or
// cannot exist. Each must give a clear error (or the documented null/false/{success:false})
// and leave the instance working.
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { ModelFineTuning, AdvancedEnsemble, ExpandedPredictions, RealTimeModelUpdates } = require('..')

const ROOT = path.join(__dirname, '..')
const BASE = 'quality-predictor-v3-advanced.json'

function hostileFiles(dir, validText) {
  const f = (name, data) => {
    const p = path.join(dir, name)
    fs.writeFileSync(p, data)
    return p
  }
  const huge = path.join(dir, 'huge.json')
  fs.writeFileSync(huge, '{')
  fs.truncateSync(huge, 600 * 1024 * 1024) // sparse: no real disk use
  fs.mkdirSync(path.join(dir, 'a-directory.json'))
  return {
    empty: [f('empty.json', ''), /not valid JSON|EOF|format field|schema/],
    binary: [f('binary.json', Buffer.from([0xff, 0xfe, 0x00, 0x01, 0x80])), /UTF-8/],
    truncated: [f('truncated.json', validText.slice(0, Math.floor(validText.length / 2))), /not valid JSON|EOF/],
    wrongSchema: [f('wrong.json', JSON.stringify({ hello: 'world', weights: 'no' })), /weights|format field|schema/],
    huge: [huge, /larger than/],
    directory: [path.join(dir, 'a-directory.json'), /directory/],
    impossible: [path.join(dir, 'empty.json', 'child.json'), /cannot read/],
    missing: [path.join(dir, 'missing.json'), /cannot read/],
  }
}

test('model files: fineTuneModel resolves {success:false} naming the problem; loadModel gives null; hotSwapModel false', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlops-files-'))
  const valid = fs.readFileSync(path.join(ROOT, 'models', BASE), 'utf8')
  fs.writeFileSync(path.join(dir, BASE), valid)
  const rows = fs.readFileSync(path.join(ROOT, 'data', 'production-sample.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l))
  const ft = new ModelFineTuning({ modelsDir: dir })
  const rt = new RealTimeModelUpdates({ modelsDir: dir, feedbackLogDir: false })
  await rt.initialize()
  const before = rt.predictSync(rows[0].features)
  for (const [kind, [file, msg]] of Object.entries(hostileFiles(dir, valid))) {
    const r = await ft.fineTuneModel(file, rows, { epochs: 1 })
    assert.equal(r.success, false, kind)
    assert.match(r.error, msg, `${kind}: ${r.error}`)
    assert.equal(await ft.loadModel(file), null, kind)
    assert.equal(await rt.hotSwapModel(file), false, kind)
    assert.equal(rt.predictSync(rows[0].features), before, `${kind}: still serving the old model`)
  }
  assert.equal((await ft.fineTuneModel(BASE, rows, { epochs: 1, save: false })).success, true, 'still works')
  await rt.cleanup()
  fs.rmSync(dir, { recursive: true, force: true })
})

test('state files: loadState rejects with a clear error and changes nothing', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlops-files-'))
  const e = new AdvancedEnsemble()
  const p = new ExpandedPredictions()
  for (let i = 0; i < 50; i++) e.updateWithFeedbackSync([{ value: i % 5, model: 'a' }, { value: 2, model: 'b' }], i % 5)
  p.recordOutcomeSync({ serviceName: 'ai-gm' }, { latencyMs: 900 })
  await e.saveState(path.join(dir, 'e.json'))
  const validText = fs.readFileSync(path.join(dir, 'e.json'), 'utf8')
  const want = e.stackingEnsembleSync([{ value: 3, model: 'a' }, { value: 2, model: 'b' }])
  const wantLatency = p.predictLatencySync({ serviceName: 'ai-gm' }).latency
  for (const [kind, [file, msg]] of Object.entries(hostileFiles(dir, validText))) {
    await assert.rejects(e.loadState(file), (err) => msg.test(err.message), `ensemble ${kind}`)
    await assert.rejects(p.loadState(file), (err) => msg.test(err.message) || /not an ExpandedPredictions state/.test(err.message), `predictions ${kind}`)
  }
  // A valid file of the other class is refused by its format tag.
  await assert.rejects(p.loadState(path.join(dir, 'e.json')), /not an ExpandedPredictions state/)
  assert.deepEqual(e.stackingEnsembleSync([{ value: 3, model: 'a' }, { value: 2, model: 'b' }]), want)
  assert.equal(p.predictLatencySync({ serviceName: 'ai-gm' }).latency, wantLatency)
  await assert.rejects(e.saveState(path.join(dir, 'empty.json', 'x.json')), /cannot write/)
  await assert.rejects(e.saveState(path.join(dir, 'a-directory.json')), /cannot write/)
  fs.rmSync(dir, { recursive: true, force: true })
})

test('feedback logs: torn, binary and junk lines are skipped and counted; valid ones replay', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlops-files-'))
  fs.writeFileSync(path.join(dir, BASE), JSON.stringify({ weights: [0, 0], bias: 0 }))
  const logDir = path.join(dir, 'feedback-log')
  fs.mkdirSync(logDir)
  const good = (seq) => JSON.stringify({ seq, t: 0, features: [1, 2], prediction: 0, actual: seq })
  fs.writeFileSync(path.join(logDir, 'feedback-0000000000000001.jsonl'), [good(1), good(2), '{"seq":3,"t":0,"feat', 'not json at all', good(4)].join('\n') + '\n')
  fs.writeFileSync(path.join(logDir, 'feedback-0000000000000005.jsonl'), Buffer.from([0xff, 0x00, 0xfe, 0x0a]))
  fs.writeFileSync(path.join(logDir, 'feedback-0000000000000009.jsonl'), '')
  fs.mkdirSync(path.join(logDir, 'feedback-0000000000000010.jsonl'))
  fs.writeFileSync(path.join(logDir, 'watermark.json'), '{"processedSeq": "garbage"}')
  const rt = new RealTimeModelUpdates({ modelsDir: dir, bufferSize: 1000, minSamplesForUpdate: 1000 })
  assert.equal(await rt.initialize(), true)
  const s = rt.getStatistics()
  assert.equal(s.replayed, 3, 'the three valid lines replay')
  assert.ok(s.corruptLogLines >= 3, `corrupt lines counted: ${s.corruptLogLines}`)
  assert.equal(await rt.addFeedback({ features: [1, 1], prediction: 0, actual: 1 }), true, 'and the log keeps working')
  assert.equal(rt.getStatistics().durableSeq, 5, 'new events continue after the highest valid sequence number')
  await rt.cleanup()
  fs.rmSync(dir, { recursive: true, force: true })
})

test('price tables: bad files are clear errors and keep the previous table', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlops-files-'))
  const p = new ExpandedPredictions()
  for (const [kind, [file]] of Object.entries(hostileFiles(dir, '{"m":{"input_cost_per_token":1,"output_cost_per_token":1}}'))) {
    if (kind === 'huge') continue // read by JS: a 600 MB sparse file is simply not JSON; covered by `truncated`
    assert.throws(() => p.setPriceTable(file), (e) => e instanceof Error && /cannot read|not valid JSON|priceTable|price table has no entry|must be|object/.test(e.message), kind)
  }
  assert.equal(p.predictCostSync({ model: 'gpt-4o', inputTokens: 1000 }).unit, 'usd', 'the bundled table is still in place')
  fs.rmSync(dir, { recursive: true, force: true })
})
