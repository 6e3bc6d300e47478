'use strict'
// Prometheus metrics: an HTTP server in the test serves /metrics from the four classes, a
// scrape is parsed with the official Python client's parser (prometheus_client, in the
// test venv that scripts/lib/mlflow-server.js owns), and the values move with the traffic.
// The prom-client bridge exposes the same families through a prom-client registry. The
// `logger` option receives the lines the old modules logged, with secrets redacted.
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const http = require('node:http')
const { parsePrometheus } = require('../scripts/lib/mlflow-server.js')
const promClient = require('prom-client')
const mlops = require('..')

const ROOT = path.join(__dirname, '..')
const BASE = 'quality-predictor-v3-advanced.json'

function serve(render) {
  return new Promise((resolve) => {
    const server = http.createServer((req, res) => {
      if (req.url !== '/metrics') return res.writeHead(404).end()
      Promise.resolve(render()).then((text) => res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' }).end(text))
    })
    server.listen(0, '127.0.0.1', () => resolve(server))
  })
}

async function scrape(server) {
  const r = await fetch(`http://127.0.0.1:${server.address().port}/metrics`)
  assert.equal(r.status, 200)
  return parsePrometheus(await r.text())
}

/** A sample's value; `family` is the name without `_total` (the parser's convention). */
function sample(fams, family, sampleName, labels = {}) {
  const f = fams[family]
  assert.ok(f, `${family} is exposed`)
  const m = f.samples.find((x) => x.name === sampleName && Object.entries(labels).every(([k, v]) => x.labels[k] === v))
  assert.ok(m, `${sampleName}${JSON.stringify(labels)} is exposed`)
  return m.value
}

function value(fams, name, labels = {}) {
  return name.endsWith('_total') ? sample(fams, name.slice(0, -6), name, labels) : sample(fams, name, name, labels)
}

function histogramCount(fams, name, labels = {}) {
  assert.equal(fams[name] && fams[name].type, 'histogram', `${name} is a histogram`)
  const count = sample(fams, name, `${name}_count`, labels)
  assert.equal(sample(fams, name, `${name}_bucket`, { ...labels, le: '+Inf' }), count, 'the +Inf bucket holds every observation')
  return count
}

test('every class serves /metrics in the text format, and the values move with the traffic', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlops-metrics-'))
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }))
  fs.writeFileSync(path.join(dir, BASE), JSON.stringify({ weights: [0, 0], bias: 0 }))
  const e = new mlops.AdvancedEnsemble()
  const p = new mlops.ExpandedPredictions()
  const ft = new mlops.ModelFineTuning({ modelsDir: dir })
  const rt = new mlops.RealTimeModelUpdates({ modelsDir: dir, bufferSize: 200, minSamplesForUpdate: 100, updateThreshold: 0, updateIntervalMs: 3_600_000 })
  t.after(() => rt.cleanup())
  assert.equal(await rt.initialize(), true)
  const server = await serve(() => [e, p, ft, rt].map((x) => x.metrics()).join(''))
  t.after(() => {
    server.closeAllConnections()
    server.close()
  })

  const before = await scrape(server)
  assert.equal(value(before, 'mlops_ensemble_feedback_total'), 0)
  assert.equal(value(before, 'mlops_feedback_accepted_total'), 0)
  assert.equal(value(before, 'mlops_finetune_runs_total', { result: 'accepted' }), 0)

  for (let i = 0; i < 30; i++) {
    e.updateWithFeedbackSync(
      [
        { value: i % 5, model: 'a' },
        { value: (i % 5) + 1, model: 'b' },
      ],
      i % 5,
      { serviceName: 'svc' },
    )
  }
  for (let i = 0; i < 300; i++) assert.equal(await rt.addFeedback({ prediction: 0, actual: 1 + (i % 10) - (i % 7), features: [i % 10, i % 7] }), true)
  assert.equal(await rt.addFeedback({ prediction: 1 }), false)
  await rt.forceUpdate()
  for (let i = 0; i < 20; i++) p.recordOutcomeSync({ serviceName: 'ai-gm', inputTokens: 100 + i }, { latencyMs: 900 + 10 * i, outputTokens: 50 })
  const rows = Array.from({ length: 200 }, (_, i) => ({ features: [i % 10, i % 7], quality: 1 + (i % 10) - (i % 7) }))
  const r = await ft.fineTuneModel(BASE, rows, { seed: 1, optimizer: 'ridge' })
  assert.equal(r.success, true, r.error)

  const after = await scrape(server)
  assert.equal(value(after, 'mlops_ensemble_feedback_total'), 30)
  assert.equal(histogramCount(after, 'mlops_ensemble_error_absolute', { strategy: 'stacking' }), 30)
  assert.ok(value(after, 'mlops_ensemble_strategy_mae', { strategy: 'stacking' }) >= 0)
  assert.equal(value(after, 'mlops_feedback_accepted_total'), 300)
  assert.equal(value(after, 'mlops_feedback_rejected_total', { reason: 'missing' }), 1)
  assert.equal(value(after, 'mlops_feedback_received_total'), 301)
  assert.equal(histogramCount(after, 'mlops_served_error_absolute'), 300)
  assert.ok(value(after, 'mlops_update_cycles_total', { result: 'accepted' }) >= 1)
  assert.ok(value(after, 'mlops_model_swaps_total') >= 1)
  assert.ok(value(after, 'mlops_model_version') > value(before, 'mlops_model_version'))
  assert.equal(value(after, 'mlops_predictions_outcomes_total'), 20)
  assert.ok(value(after, 'mlops_latency_p95_scored_total', { kind: 'blind' }) >= value(before, 'mlops_latency_p95_scored_total', { kind: 'blind' }))
  assert.equal(value(after, 'mlops_finetune_runs_total', { result: r.accepted ? 'accepted' : r.reason === 'no change' ? 'no_change' : 'rejected' }), 1)
  assert.equal(histogramCount(after, 'mlops_finetune_duration_milliseconds'), 1)
})

test('registerMetrics bridges into a prom-client registry', async () => {
  const register = new promClient.Registry()
  const e = new mlops.AdvancedEnsemble()
  const e2 = new mlops.AdvancedEnsemble()
  e.registerMetrics(register, { instance: 'a' })
  e.registerMetrics(register, { instance: 'a' }) // the same owner twice: no-op
  e2.registerMetrics(register, { instance: 'b' }) // same names on one registry: told apart by a label
  e.updateWithFeedbackSync([1, 2], 1.5)
  const fams = parsePrometheus(await register.metrics())
  assert.equal(value(fams, 'mlops_ensemble_feedback_total', { instance: 'a' }), 1)
  assert.equal(value(fams, 'mlops_ensemble_feedback_total', { instance: 'b' }), 0)
  assert.equal(fams.mlops_ensemble_feedback.samples.length, 2)
  assert.equal(histogramCount(fams, 'mlops_ensemble_error_absolute', { instance: 'a', strategy: 'stacking' }), 1)
  assert.throws(() => e.registerMetrics({}), TypeError)
})

test('collecting costs microseconds', () => {
  const e = new mlops.AdvancedEnsemble()
  for (let i = 0; i < 2000; i++) e.updateWithFeedbackSync([1, 2], 1.5, { serviceName: `tenant-${i}` })
  const t0 = process.hrtime.bigint()
  for (let i = 0; i < 50; i++) e.metrics()
  const us = Number(process.hrtime.bigint() - t0) / 50 / 1000
  // Generous (a shared machine); the point is that it does not grow with 2,000 contexts.
  assert.ok(us < 5000, `metrics() took ${us} µs`)
})

test('logger: swaps, rejected updates and fine-tune results reach the service logger, secrets redacted', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlops-log-'))
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }))
  fs.copyFileSync(path.join(ROOT, 'models', BASE), path.join(dir, BASE))
  const lines = []
  const pinoLike = {
    info: (fields, msg) => lines.push({ level: 'info', fields, msg }),
    warn: (fields, msg) => lines.push({ level: 'warn', fields, msg }),
    error: (fields, msg) => lines.push({ level: 'error', fields, msg }),
    debug: () => {},
  }
  const ft = new mlops.ModelFineTuning({ modelsDir: dir, logger: pinoLike })
  const rows = fs
    .readFileSync(path.join(ROOT, 'data', 'production-sample.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l))
  const r = await ft.fineTuneModel(BASE, rows, { seed: 1 })
  assert.equal(r.success, true)
  const done = lines.find((l) => /fine-tune accepted/.test(l.msg))
  assert.ok(done, JSON.stringify(lines))
  assert.equal(done.fields.version, r.version)
  assert.equal(done.fields.component, 'mlops-native/ModelFineTuning')
  await ft.fineTuneModel('postgres://svc:s3cret@db/x.json', rows)
  const failed = lines.find((l) => /fine-tune failed/.test(l.msg))
  assert.ok(failed)
  assert.doesNotMatch(JSON.stringify(failed), /s3cret/)

  // winston's call shape (message first), detected by its levels table.
  const winstonLines = []
  const winstonLike = { levels: { error: 0, warn: 1, info: 2 }, log() {}, info: (msg, meta) => winstonLines.push([msg, meta]), warn: (msg, meta) => winstonLines.push([msg, meta]), error: (msg, meta) => winstonLines.push([msg, meta]) }
  fs.writeFileSync(path.join(dir, 'two.json'), JSON.stringify({ weights: [0, 0], bias: 0 }))
  const rt = new mlops.RealTimeModelUpdates({ modelsDir: dir, modelPath: 'two.json', bufferSize: 200, minSamplesForUpdate: 100, updateThreshold: 0, updateIntervalMs: 3_600_000, logger: winstonLike })
  t.after(() => rt.cleanup())
  await rt.initialize()
  for (let i = 0; i < 300; i++) await rt.addFeedback({ prediction: 0, actual: 1 + (i % 10) - (i % 7), features: [i % 10, i % 7] })
  await rt.forceUpdate()
  assert.ok(winstonLines.some(([msg, meta]) => /hot-swapped/.test(msg) && typeof meta.version === 'number'), JSON.stringify(winstonLines))

  // A logger that throws never breaks the call; a malformed one is refused up front.
  const throwing = new mlops.ModelFineTuning({ modelsDir: dir, logger: { info() { throw new Error('x') }, warn() { throw new Error('x') }, error() {} } })
  assert.equal((await throwing.fineTuneModel(BASE, rows, { seed: 2, save: false })).success, true)
  assert.throws(() => new mlops.ModelFineTuning({ logger: { info: 1 } }), /options\.logger/)
  assert.throws(() => new mlops.RealTimeModelUpdates({ logger: 'console' }), /options\.logger/)
})
