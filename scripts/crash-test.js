#!/usr/bin/env node
'use strict'
// npm run test:crash -- [--kills N] [--seed N]
//
// Kills child processes with SIGKILL at random moments, many times, and checks what a
// fresh process finds afterwards:
// (a) children fine-tuning with registry writes and promotions: every model file and
//     manifest readable, no version number reused, the production pointer valid;
// (b) children streaming addFeedback at a high rate with the feedback log on: every event
//     whose addFeedback Promise resolved true is in the log, and is either processed
//     (at or below the watermark) or replayed on the next start.
// Exit code 0 when nothing was lost or broken.

const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { spawn } = require('node:child_process')
const { parseArgs } = require('node:util')
const { ModelFineTuning, RealTimeModelUpdates } = require('..')

const ROOT = path.join(__dirname, '..')
const BASE = 'quality-predictor-v3-advanced.json'
const { values: a } = parseArgs({ options: { kills: { type: 'string', default: '20' }, seed: { type: 'string', default: '1' }, quiet: { type: 'boolean', default: false } } })
const KILLS = Number(a.kills)
let s = Number(a.seed) >>> 0
const rand = () => ((s = (s * 1664525 + 1013904223) >>> 0) / 4294967296)
const log = (...x) => a.quiet || console.log(...x)

function runAndKill(script, minMs, maxMs, onLine) {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'pipe'] })
    let buf = ''
    let err = ''
    child.stdout.on('data', (d) => {
      buf += d
      let i
      while ((i = buf.indexOf('\n')) >= 0) {
        onLine(buf.slice(0, i))
        buf = buf.slice(i + 1)
      }
    })
    child.stderr.on('data', (d) => (err += d))
    const delay = minMs + rand() * (maxMs - minMs)
    const timer = setTimeout(() => child.kill('SIGKILL'), delay)
    child.on('exit', (code, signal) => {
      clearTimeout(timer)
      resolve({ code, signal, err, delay })
    })
  })
}

async function fineTuneCrashes(dir) {
  fs.copyFileSync(path.join(ROOT, 'models', BASE), path.join(dir, BASE))
  const reported = new Map() // version → modelPath, as children reported them complete
  const script = `
    const { ModelFineTuning } = require(${JSON.stringify(ROOT)})
    const rows = require('fs').readFileSync(${JSON.stringify(path.join(ROOT, 'data', 'production-sample.jsonl'))}, 'utf8').trim().split('\\n').map((l) => JSON.parse(l))
    const ft = new ModelFineTuning({ modelsDir: ${JSON.stringify(dir)}, epochs: 2 })
    ;(async () => {
      for (let i = 0; ; i++) {
        const r = await ft.fineTuneModel(${JSON.stringify(BASE)}, rows, { seed: i, promote: i % 2 === 0 })
        if (r.success && r.saved) console.log('done', r.version, r.modelPath)
        if (i % 3 === 2) { try { await ft.rollback(${JSON.stringify(BASE)}) } catch {} }
      }
    })()`
  let kills = 0
  const problems = []
  for (let k = 0; k < KILLS; k++) {
    // Two writers at once, so the lock is exercised while kills land.
    const runs = await Promise.all([0, 1].map(() => runAndKill(script, 150, 900, (line) => {
      const [tag, version, p] = line.split(' ')
      if (tag === 'done') reported.set(version, p)
    })))
    kills += runs.filter((r) => r.signal === 'SIGKILL').length
    for (const r of runs) if (r.signal !== 'SIGKILL') problems.push(`child exited by itself (${r.code}): ${r.err.slice(0, 200)}`)
    // A fresh process looks at what is on disk.
    const ft = new ModelFineTuning({ modelsDir: dir })
    let history
    try {
      history = await ft.getFineTuningHistory(BASE)
    } catch (e) {
      problems.push(`after kill ${k}: manifest unreadable: ${e.message}`)
      continue
    }
    const numbers = history.map((h) => h.versionNumber)
    if (new Set(numbers).size !== numbers.length) problems.push(`after kill ${k}: a version number appears twice`)
    for (const h of history) {
      const m = await ft.loadModel(h.modelPath)
      if (!m || !Array.isArray(m.weights)) problems.push(`after kill ${k}: ${h.version} is not readable`)
    }
    for (const [version, p] of reported) {
      const h = history.find((e) => e.version === version)
      if (!h) problems.push(`after kill ${k}: reported ${version} is missing from the manifest`)
      else if (h.modelPath !== p) problems.push(`after kill ${k}: ${version} now points elsewhere (reused)`)
    }
    const prod = await ft.getProductionVersion(BASE)
    if (prod && !(await ft.loadModel(prod.modelPath))) problems.push(`after kill ${k}: production ${prod.version} is not loadable`)
  }
  const history = await new ModelFineTuning({ modelsDir: dir }).getFineTuningHistory(BASE)
  const temps = fs.readdirSync(path.join(dir, 'fine-tuned', path.basename(BASE, '.json'))).filter((f) => f.endsWith('.tmp')).length
  return { kills, versions: history.length, reported: reported.size, leftoverTempFiles: temps, problems }
}

async function feedbackCrashes(dir) {
  fs.writeFileSync(path.join(dir, BASE), JSON.stringify({ weights: [0, 0], bias: 0 }))
  // Each event carries a unique id in `actual`; children print the ids whose Promise resolved true.
  let nextId = 1
  const acked = new Set()
  let kills = 0
  const problems = []
  for (let k = 0; k < KILLS; k++) {
    const start = nextId
    nextId += 1_000_000
    const script = `
      const { RealTimeModelUpdates } = require(${JSON.stringify(ROOT)})
      const rt = new RealTimeModelUpdates({ modelsDir: ${JSON.stringify(dir)}, bufferSize: 500, minSamplesForUpdate: 100, updateIntervalMs: 50, queueCapacity: 100000 })
      rt.initialize().then(async () => {
        for (let id = ${start}; ; id += 200) {
          const ids = Array.from({ length: 200 }, (_, i) => id + i)
          const oks = await Promise.all(ids.map((x) => rt.addFeedback({ features: [x % 10, x % 7], prediction: 0, actual: x })))
          const good = ids.filter((_, i) => oks[i])
          if (good.length) console.log('ack ' + good.join(','))
          for (let i = 0; i < 300; i++) rt.addFeedbackSync({ features: [1, 2], prediction: 0, actual: -1 }) // fast path, may be lost
        }
      })`
    const r = await runAndKill(script, 200, 1200, (line) => {
      if (line.startsWith('ack ')) for (const x of line.slice(4).split(',')) acked.add(Number(x))
    })
    if (r.signal === 'SIGKILL') kills++
    else problems.push(`child exited by itself (${r.code}): ${r.err.slice(0, 200)}`)
  }
  // What a fresh process finds: every acknowledged id must be in the log.
  const logDir = path.join(dir, 'feedback-log')
  const inLog = new Map()
  let corrupt = 0
  for (const f of fs.readdirSync(logDir).filter((x) => x.endsWith('.jsonl'))) {
    for (const line of fs.readFileSync(path.join(logDir, f), 'utf8').split('\n')) {
      if (!line) continue
      try {
        const e = JSON.parse(line)
        inLog.set(e.actual, e.seq)
      } catch {
        corrupt++ // a torn last line from a kill mid-write (never an acknowledged one)
      }
    }
  }
  const watermark = JSON.parse(fs.readFileSync(path.join(logDir, 'watermark.json'), 'utf8')).processedSeq
  let processed = 0
  let toReplay = 0
  let lost = 0
  for (const id of acked) {
    const seq = inLog.get(id)
    if (seq === undefined) lost++
    else if (seq <= watermark) processed++
    else toReplay++
  }
  const rt = new RealTimeModelUpdates({ modelsDir: dir, bufferSize: 1e7, minSamplesForUpdate: 1e7 })
  await rt.initialize()
  const replayed = rt.getStatistics().replayed
  await rt.cleanup()
  if (lost) problems.push(`${lost} acknowledged events are not in the log`)
  if (replayed < toReplay) problems.push(`only ${replayed} replayed, ${toReplay} acknowledged events were above the watermark`)
  return { kills, acknowledged: acked.size, processed, replayed, acknowledgedAboveWatermark: toReplay, lost, tornLines: corrupt, problems }
}

;(async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlops-crash-'))
  fs.mkdirSync(path.join(dir, 'ft'))
  fs.mkdirSync(path.join(dir, 'fb'))
  log(`crash test: ${KILLS} rounds each, seed ${a.seed}, in ${dir}`)
  const ftRes = await fineTuneCrashes(path.join(dir, 'ft'))
  log(`fine-tuning: ${ftRes.kills} SIGKILLs; ${ftRes.versions} versions on disk, ${ftRes.reported} reported complete, all readable and distinct; ${ftRes.leftoverTempFiles} temp files left by kills mid-write`)
  const fbRes = await feedbackCrashes(path.join(dir, 'fb'))
  log(`feedback: ${fbRes.kills} SIGKILLs; ${fbRes.acknowledged} events acknowledged (addFeedback → true): ${fbRes.processed} processed, ${fbRes.acknowledgedAboveWatermark} above the watermark and ${fbRes.replayed} replayed on restart, ${fbRes.lost} lost; ${fbRes.tornLines} torn unacknowledged lines skipped`)
  const problems = [...ftRes.problems, ...fbRes.problems]
  fs.rmSync(dir, { recursive: true, force: true })
  if (problems.length) {
    console.error('FAIL:\n  ' + problems.slice(0, 20).join('\n  '))
    process.exit(1)
  }
  console.log(JSON.stringify({ fineTuning: { ...ftRes, problems: undefined }, feedback: { ...fbRes, problems: undefined } }))
  log('PASS: nothing acknowledged was lost, nothing on disk is broken.')
})().catch((e) => {
  console.error(`crash test failed: ${e.stack}`)
  process.exit(1)
})
