#!/usr/bin/env node
'use strict'
// npm run soak -- [--seconds 60]
//
// For a bounded time, many async producers call addFeedback, predictSync, the ensemble
// methods and predictAll, while update cycles, hot-swaps, rollbacks, saveState and
// fine-tuning runs go on; then cleanup(). Reports calls per second per method, the
// event-loop p99 delay, RSS at start and end, errors (must be zero) and whether the
// statistics' counts add up. Exit code 1 otherwise.

const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { parseArgs } = require('node:util')
const { monitorEventLoopDelay } = require('node:perf_hooks')
const { AdvancedEnsemble, ExpandedPredictions, RealTimeModelUpdates, ModelFineTuning } = require('..')
const { requestStream } = require('./lib/request-stream.js')

const { values: a } = parseArgs({ options: { seconds: { type: 'string', default: '60' } } })
const SECONDS = Number(a.seconds)
if (!(SECONDS > 0)) {
  console.error('soak: --seconds must be a positive number')
  process.exit(1)
}

const ROOT = path.join(__dirname, '..')
const BASE = 'quality-predictor-v3-advanced.json'
const tick = () => new Promise((r) => setImmediate(r))
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

async function main() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlops-soak-'))
  fs.copyFileSync(path.join(ROOT, 'models', BASE), path.join(dir, BASE))
  const rows = fs.readFileSync(path.join(ROOT, 'data', 'production-sample.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l))
  const stream = requestStream(5000, 3)

  const ens = new AdvancedEnsemble()
  const pred = new ExpandedPredictions()
  const ft = new ModelFineTuning({ modelsDir: dir, epochs: 3 })
  const rt = new RealTimeModelUpdates({ modelsDir: dir, bufferSize: 300, minSamplesForUpdate: 100, updateIntervalMs: 500, updateThreshold: 0 })
  await rt.initialize()
  let events = { update: 0, rejected: 0, drift: 0, error: 0 }
  for (const e of Object.keys(events)) rt.on(e, () => events[e]++)

  const calls = {}
  const errors = []
  const count = (name, n = 1) => (calls[name] = (calls[name] ?? 0) + n)
  const fail = (name, e) => errors.length < 20 && errors.push(`${name}: ${e && e.message ? e.message : e}`)
  const end = Date.now() + SECONDS * 1000
  const running = () => Date.now() < end

  const rss0 = process.memoryUsage().rss
  const loop = monitorEventLoopDelay({ resolution: 1 })
  loop.enable()
  const t0 = Date.now()

  const feedbackProducer = async (k) => {
    let i = k * 1_000_000
    while (running()) {
      const batch = []
      for (let j = 0; j < 50; j++, i++) {
        const r = rows[i % rows.length]
        batch.push(rt.addFeedback({ features: r.features, prediction: 5, actual: r.quality }))
      }
      const oks = await Promise.all(batch)
      count('addFeedback', oks.length)
      for (let j = 0; j < 50; j++, i++) {
        const r = rows[i % rows.length]
        rt.addFeedbackSync({ features: r.features, prediction: 5, actual: r.quality })
      }
      count('addFeedbackSync', 50)
      await tick()
    }
  }
  const predictor = async () => {
    let i = 0
    while (running()) {
      for (let j = 0; j < 200; j++, i++) {
        try {
          rt.predictSync(rows[i % rows.length].features)
        } catch (e) {
          fail('predictSync', e)
        }
      }
      count('predictSync', 200)
      await tick()
    }
  }
  const ensembler = async () => {
    let i = 0
    while (running()) {
      for (let j = 0; j < 100; j++, i++) {
        const y = (i % 10) + 0.5
        const p = [{ value: y + 0.2, confidence: 0.8, model: 'a' }, { value: y - 1, confidence: 0.6, model: 'b' }, { value: 0.5 * y + 3, confidence: 0.9, model: 'c' }]
        const ctx = { serviceName: i % 2 ? 'ai-gm' : 'oracle', predictionType: 'quality' }
        try {
          ens.stackingEnsembleSync(p, ctx)
          ens.dynamicSelectionSync(p, ctx)
          ens.confidenceWeightedVotingSync(p, ctx)
          ens.updateWithFeedbackSync(p, y, ctx)
        } catch (e) {
          fail('ensemble', e)
        }
      }
      count('ensemble (4 methods)', 100)
      await tick()
    }
  }
  const forecaster = async () => {
    let i = 0
    while (running()) {
      for (let j = 0; j < 100; j++, i++) {
        const { context, outcome } = stream[i % stream.length]
        try {
          pred.predictAllSync(context)
          pred.recordOutcomeSync(context, outcome)
        } catch (e) {
          fail('predictions', e)
        }
      }
      count('predictAll+recordOutcome', 100)
      await tick()
    }
  }
  const operator = async () => {
    let k = 0
    while (running()) {
      try {
        switch (k++ % 6) {
          case 0: {
            const r = await ft.fineTuneModel(BASE, rows, { seed: k, promote: k % 4 === 0 })
            if (!r.success) throw new Error(r.error)
            count('fineTuneModel')
            break
          }
          case 1:
            await rt.hotSwapModel(BASE)
            count('hotSwapModel')
            break
          case 2:
            await rt.rollback()
            count('rollback')
            break
          case 3:
            await ens.saveState(path.join(dir, 'ensemble.json'))
            await pred.saveState(path.join(dir, 'predictions.json'))
            count('saveState')
            break
          case 4:
            await rt.forceUpdate()
            count('forceUpdate')
            break
          default:
            await ens.loadState(path.join(dir, 'ensemble.json'))
            count('loadState')
        }
      } catch (e) {
        fail('operator', e)
      }
      await sleep(100)
    }
  }

  await Promise.all([feedbackProducer(0), feedbackProducer(1), predictor(), ensembler(), forecaster(), operator()])
  const secs = (Date.now() - t0) / 1000
  loop.disable()
  await rt.cleanup()
  const rss1 = process.memoryUsage().rss
  const st = rt.getStatistics()

  console.log(`soak: ${secs.toFixed(1)} s`)
  console.log('calls per second:')
  for (const [k, v] of Object.entries(calls)) console.log(`  ${k.padEnd(28)} ${(v / secs).toFixed(v / secs < 100 ? 2 : 0).padStart(10)}/s   (${v})`)
  console.log(`event-loop delay p99 ${(loop.percentile(99) / 1e6).toFixed(2)} ms, max ${(loop.max / 1e6).toFixed(2)} ms`)
  console.log(`RSS ${(rss0 / 1048576).toFixed(0)} MB at start, ${(rss1 / 1048576).toFixed(0)} MB at end`)
  console.log(`stream: ${st.received} received, ${st.accepted} accepted, ${st.processed} processed, ${st.bufferSize} buffered, ${st.queueDepth} queued, ${st.dropped} refused (queue full), ${st.updateCount} cycles, ${st.swaps} swaps, ${st.rollbacks} rollbacks, ${st.drifts} drifts; events ${JSON.stringify(events)}`)
  const addsUp = st.accepted === st.processed + st.bufferSize + st.queueDepth && st.received === st.accepted + st.rejected.total + st.dropped
  console.log(`counts add up: ${addsUp}`)
  console.log(`errors: ${errors.length}${errors.length ? '\n  ' + errors.join('\n  ') : ''}`)
  fs.rmSync(dir, { recursive: true, force: true })
  if (errors.length || !addsUp) process.exit(1)
}

main().catch((e) => {
  console.error(`soak failed: ${e.stack}`)
  process.exit(1)
})
