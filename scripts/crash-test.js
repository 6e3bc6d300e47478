#!/usr/bin/env node
'use strict'
// npm run test:crash -- [--kills N] [--faults N] [--seed N]
//
// Kills child processes with SIGKILL at random moments, many times, and checks what a
// fresh process finds afterwards:
// (a) children fine-tuning with registry writes and promotions: every model file and
//     manifest readable, no version number reused, the production pointer valid;
// (b) children streaming addFeedback at a high rate with the feedback log on: every event
//     whose addFeedback Promise resolved true is in the log, and is either processed
//     (at or below the watermark) or replayed on the next start;
// (c) a randomized fault test of the feedback log: each round a child streams addFeedback
//     and is SIGKILLed at a random moment, about half the rounds under a random file-size
//     limit (`ulimit -f`, a stand-in for a full disk: writes fail part-way), and about half
//     the rounds also damage random bytes of a *copy* of the log and start a stream on the
//     copy. Checked: every event acknowledged true is in the log exactly once (checksum
//     valid, one record per id, no sequence number twice), and is processed (≤ watermark)
//     or replayed on the next start; no event acknowledged false is in the log; on a
//     damaged copy the stream replays exactly the records that are still intact and counts
//     the damaged ones.
// (d) with --postgres only: children stream addFeedback into a throwaway PostgreSQL
//     (scripts/lib/pg-cluster.js) while training under the lease, and are SIGKILLed at
//     random moments; about half the rounds also restart the database mid-stream. Checked:
//     every event acknowledged true is stored exactly once (spooled ones forwarded, by the
//     next process on the same folder when the spooling one died), and a final trainer
//     consumes every stored event exactly once (watermarks.consumed = stored rows).
// Exit code 0 when nothing was lost or broken.

const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { spawn } = require('node:child_process')
const { parseArgs } = require('node:util')
const { ModelFineTuning, RealTimeModelUpdates } = require('..')
const { readLog, readWatermark, expectedReplay } = require('./lib/feedback-log.js')

const ROOT = path.join(__dirname, '..')
const BASE = 'quality-predictor-v3-advanced.json'
const { values: a } = parseArgs({ options: { kills: { type: 'string', default: '20' }, faults: { type: 'string', default: '40' }, seed: { type: 'string', default: '1' }, quiet: { type: 'boolean', default: false }, postgres: { type: 'boolean', default: false } } })
const KILLS = Number(a.kills)
const FAULTS = Number(a.faults)
let s = Number(a.seed) >>> 0
const rand = () => ((s = (s * 1664525 + 1013904223) >>> 0) / 4294967296)
const log = (...x) => a.quiet || console.log(...x)

function runAndKill(script, minMs, maxMs, onLine, { fileLimitKiB = 0 } = {}) {
  return new Promise((resolve) => {
    // Under a file-size limit the child runs in a shell that set it (node ignores SIGXFSZ:
    // an oversized write fails with EFBIG after writing what fits).
    const child = fileLimitKiB
      ? spawn('bash', ['-c', `ulimit -f ${fileLimitKiB}; exec "$0" -e "$1"`, process.execPath, script], { stdio: ['ignore', 'pipe', 'pipe'] })
      : spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'pipe'] })
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
      const rt = new RealTimeModelUpdates({ modelsDir: ${JSON.stringify(dir)}, bufferSize: 500, minSamplesForUpdate: 100, updateIntervalMs: 50, queueCapacity: 100000, keepLogFiles: 100000 })
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
  const found = readLog(logDir)
  const inLog = new Map(found.records.map((e) => [e.actual, e.seq]))
  const corrupt = found.corrupt + found.torn
  const watermark = readWatermark(logDir).processedSeq
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

function damage(file) {
  const b = fs.readFileSync(file)
  if (b.length === 0) return 'empty'
  const op = Math.floor(rand() * 4)
  const at = Math.floor(rand() * b.length)
  if (op === 0) {
    for (let i = 0; i < 1 + Math.floor(rand() * 5); i++) b[Math.floor(rand() * b.length)] ^= 1 + Math.floor(rand() * 255)
    fs.writeFileSync(file, b)
    return 'flipped bytes'
  }
  if (op === 1) {
    fs.writeFileSync(file, Buffer.concat([b.subarray(0, at), Buffer.from([0xff, 0xfe, 0x00, 0xc3]), b.subarray(at)]))
    return 'inserted bytes'
  }
  if (op === 2) {
    fs.writeFileSync(file, b.subarray(0, at))
    return 'truncated'
  }
  fs.writeFileSync(file, Buffer.concat([b, Buffer.from([0xff, 0xfe, 0x00, 0xc3]), rand() < 0.5 ? Buffer.from('\n') : Buffer.alloc(0)]))
  return 'appended bytes'
}

async function faultCrashes(dir) {
  fs.writeFileSync(path.join(dir, BASE), JSON.stringify({ weights: [0, 0], bias: 0 }))
  const scratch = path.join(dir, 'scratch')
  fs.mkdirSync(scratch)
  fs.writeFileSync(path.join(scratch, BASE), JSON.stringify({ weights: [0, 0], bias: 0 }))
  const logDir = path.join(dir, 'feedback-log')
  const acked = new Set()
  const nacked = new Set()
  const counts = { rounds: 0, kills: 0, sizeLimitedRuns: 0, damagedCopies: 0, damagedFiles: 0, damagedCopyReplayed: 0, damagedCopySkipped: 0 }
  const problems = []
  let nextId = 1
  for (let k = 0; k < FAULTS; k++) {
    counts.rounds++
    const start = nextId
    nextId += 1_000_000
    const limit = rand() < 0.5 ? 2 + Math.floor(rand() * 40) : 0
    const script = `
      const { RealTimeModelUpdates } = require(${JSON.stringify(ROOT)})
      const rt = new RealTimeModelUpdates({ modelsDir: ${JSON.stringify(dir)}, bufferSize: ${200 + Math.floor(rand() * 600)}, minSamplesForUpdate: 50, updateIntervalMs: ${20 + Math.floor(rand() * 200)}, queueCapacity: 100000, keepLogFiles: 100000, maxLogBytes: ${rand() < 0.3 ? 4096 : 16777216} })
      if (process.env.CRASH_DEBUG) rt.on('error', (e) => console.error(e.message.slice(0, 200)))
      rt.initialize().then(async (ok) => {
        if (process.env.CRASH_DEBUG) console.error('initialize', ok)
        for (let id = ${start}; ; id += 100) {
          const ids = Array.from({ length: 100 }, (_, i) => id + i)
          const oks = await Promise.all(ids.map((x) => rt.addFeedback({ features: [x % 10, x % 7], prediction: 0, actual: x })))
          const good = ids.filter((_, i) => oks[i] === true)
          const bad = ids.filter((_, i) => oks[i] !== true)
          if (good.length) console.log('ack ' + good.join(','))
          if (bad.length) console.log('nack ' + bad.join(','))
          for (let i = 0; i < 100; i++) rt.addFeedbackSync({ features: [1, 2], prediction: 0, actual: -1 })
        }
      })`
    if (limit) counts.sizeLimitedRuns++
    const r = await runAndKill(script, 250, 1000, (line) => {
      const [tag, list] = line.split(' ')
      const into = tag === 'ack' ? acked : tag === 'nack' ? nacked : null
      if (into && list) for (const x of list.split(',')) into.add(Number(x))
    }, { fileLimitKiB: limit })
    if (process.env.CRASH_DEBUG) console.error(`round ${k}: delay ${Math.round(r.delay)} ms, limit ${limit} KiB, acked ${acked.size}, nacked ${nacked.size}, ${r.signal ?? r.code} ${r.err.slice(0, 300)}`)
    if (r.signal === 'SIGKILL') counts.kills++
    else problems.push(`fault round ${k}: child exited by itself (${r.code}): ${r.err.slice(0, 300)}`)
    if (rand() < 0.5 && fs.existsSync(logDir)) {
      // Damage a copy: the stream on the copy must replay exactly what is intact.
      const copy = path.join(dir, `damaged-${k}`)
      fs.cpSync(logDir, copy, { recursive: true })
      fs.rmSync(path.join(copy, '.lock'), { force: true })
      const files = fs.readdirSync(copy).filter((f) => f.endsWith('.jsonl') && fs.statSync(path.join(copy, f)).size > 0)
      const n = Math.min(files.length, 1 + Math.floor(rand() * 3))
      for (let i = 0; i < n; i++) {
        damage(path.join(copy, files[Math.floor(rand() * files.length)]))
        counts.damagedFiles++
      }
      counts.damagedCopies++
      const want = readLog(copy)
      const wantReplay = expectedReplay(copy)
      const rt = new RealTimeModelUpdates({ modelsDir: scratch, feedbackLogDir: copy, bufferSize: 1e7, minSamplesForUpdate: 1e7, followRegistry: false })
      const ok = await rt.initialize()
      const s = rt.getStatistics()
      await rt.cleanup()
      fs.rmSync(copy, { recursive: true, force: true })
      fs.rmSync(path.join(scratch, 'online'), { recursive: true, force: true })
      counts.damagedCopyReplayed += s.replayed
      counts.damagedCopySkipped += s.corruptLogRecords
      if (!ok) problems.push(`fault round ${k}: a stream on the damaged copy did not start: ${s.lastError}`)
      if (s.replayed !== wantReplay) problems.push(`fault round ${k}: damaged copy replayed ${s.replayed}, ${wantReplay} intact records were above its watermark`)
      if (s.corruptLogRecords !== want.corrupt) problems.push(`fault round ${k}: damaged copy counted ${s.corruptLogRecords} damaged records, the independent reader ${want.corrupt}`)
    }
  }
  // What a fresh process finds in the real (undamaged) log.
  const found = readLog(logDir)
  const byId = new Map()
  const seqs = new Set()
  let duplicateSeqs = 0
  for (const e of found.records) {
    if (seqs.has(e.seq)) duplicateSeqs++
    seqs.add(e.seq)
    if (e.actual >= 0) byId.set(e.actual, (byId.get(e.actual) ?? 0) + 1)
  }
  const watermark = readWatermark(logDir).processedSeq
  const seqOf = new Map(found.records.map((e) => [e.actual, e.seq]))
  let lost = 0
  let twice = 0
  let processed = 0
  let aboveWatermark = 0
  for (const id of acked) {
    const c = byId.get(id) ?? 0
    if (c === 0) lost++
    else if (c > 1) twice++
    else if (seqOf.get(id) <= watermark) processed++
    else aboveWatermark++
  }
  let nackedLogged = 0
  for (const id of nacked) if (byId.has(id)) nackedLogged++
  const wantReplay = expectedReplay(logDir)
  const rt = new RealTimeModelUpdates({ modelsDir: dir, bufferSize: 1e7, minSamplesForUpdate: 1e7 })
  await rt.initialize()
  const replayed = rt.getStatistics().replayed
  await rt.cleanup()
  if (lost) problems.push(`fault test: ${lost} events acknowledged true are not in the log`)
  if (twice) problems.push(`fault test: ${twice} acknowledged events are in the log more than once`)
  if (duplicateSeqs) problems.push(`fault test: ${duplicateSeqs} sequence numbers are used twice`)
  if (nackedLogged) problems.push(`fault test: ${nackedLogged} events acknowledged false are in the log`)
  if (replayed !== wantReplay) problems.push(`fault test: replayed ${replayed}, but ${wantReplay} logged records are above the watermark`)
  return { ...counts, acknowledged: acked.size, acknowledgedFalse: nacked.size, processed, acknowledgedAboveWatermark: aboveWatermark, replayed, lost, duplicates: twice + duplicateSeqs, falseButLogged: nackedLogged, tornRecords: found.torn, problems }
}

async function postgresCrashes(dir) {
  const { startCluster } = require('./lib/pg-cluster.js')
  const pg = await startCluster()
  const problems = []
  try {
    fs.writeFileSync(path.join(dir, BASE), JSON.stringify({ weights: [0, 0], bias: 0 }))
    const opts = { store: pg.url, schema: 'crash', modelsDir: dir, leaseMs: 800, pollMs: 20, updateIntervalMs: 100, minSamplesForUpdate: 1, bufferSize: 2000, maxSamplesPerUpdate: 2000, updateThreshold: -1e9 }
    const script = `
      const { RealTimeModelUpdates } = require(${JSON.stringify(ROOT)})
      const rt = new RealTimeModelUpdates(${JSON.stringify(opts)})
      rt.on('error', () => {})
      ;(async () => {
        // A service retries until its database answers (a restart may be under way).
        while (!(await rt.initialize())) await new Promise((r) => setTimeout(r, 100))
        const id = rt.getStatistics().postgres.instanceId
        let acked = 0
        for (let i = 0; ; i++) {
          const w = []
          for (let j = 0; j < 100; j++) w.push(rt.addFeedback({ features: [j % 7, j % 3], prediction: 0, actual: j % 5 }))
          const r = await Promise.all(w)
          if (r.every(Boolean)) { acked += r.length; console.log('ack ' + id + ' ' + acked) }
          else { console.log('nack ' + id + ' ' + r.filter((x) => !x).length); return }
          await new Promise((r) => setTimeout(r, 5))
        }
      })()`
    const acked = new Map()
    let kills = 0
    let restarts = 0
    let nacked = 0
    for (let k = 0; k < KILLS; k++) {
      const restart = rand() < 0.5
      const rounds = Promise.all([0, 1].map(() => runAndKill(script, 300, 1500, (line) => {
        const [tag, id, n] = line.split(' ')
        if (tag === 'ack') acked.set(id, Number(n))
        else if (tag === 'nack') nacked += Number(n)
      })))
      if (restart) {
        await new Promise((r) => setTimeout(r, 100 + rand() * 400))
        pg.restart('immediate')
        restarts++
      }
      const runs = await rounds
      kills += runs.filter((r) => r.signal === 'SIGKILL').length
      for (const r of runs) if (r.signal !== 'SIGKILL') problems.push(`child exited by itself (${r.code}): ${r.err.slice(0, 200)}`)
    }
    // A fresh process on the same folder forwards what dead ones spooled, and trains.
    const rt = new RealTimeModelUpdates({ ...opts, leaseMs: 800 })
    if (!(await rt.initialize())) problems.push(`final trainer did not start: ${rt.getStatistics().lastError}`)
    const q = (sql) => Number(pg.psql(sql))
    let lost = 0
    const deadline = Date.now() + 120_000
    for (;;) {
      lost = 0
      for (const [id, n] of acked) lost += n - q(`SELECT count(*) FROM crash.feedback WHERE instance_id = '${id}' AND seq <= ${n}`)
      const stored = q('SELECT count(*) FROM crash.feedback')
      const consumed = q("SELECT coalesce((SELECT consumed FROM crash.watermarks WHERE model_key = 'quality-predictor-v3-advanced'), 0)")
      if ((lost === 0 && consumed === stored) || Date.now() > deadline) {
        await rt.cleanup()
        const total = [...acked.values()].reduce((x, y) => x + y, 0)
        if (lost) problems.push(`postgres: ${lost} acknowledged events are not stored`)
        if (consumed !== stored) problems.push(`postgres: ${consumed} consumed but ${stored} stored (a skip or a double)`)
        if (nacked) problems.push(`postgres: ${nacked} events answered false (the local disk was not full)`)
        return { kills, restarts, processes: acked.size, acknowledged: total, stored, consumed, lost, problems }
      }
      await new Promise((r) => setTimeout(r, 100))
    }
  } finally {
    pg.stop()
  }
}

;(async () => {
  if (a.postgres) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlops-crash-pg-'))
    log(`crash test (PostgreSQL): ${KILLS} rounds of two children, seed ${a.seed}, in ${dir}`)
    const r = await postgresCrashes(dir)
    fs.rmSync(dir, { recursive: true, force: true })
    log(`postgres: ${r.kills} SIGKILLs, ${r.restarts} database restarts, ${r.processes} processes; ${r.acknowledged} events acknowledged, ${r.stored} stored, ${r.consumed} consumed by the trainer, ${r.lost} lost`)
    if (r.problems.length) {
      console.error('FAIL:\n  ' + r.problems.slice(0, 20).join('\n  '))
      process.exit(1)
    }
    console.log(JSON.stringify({ postgres: { ...r, problems: undefined } }))
    log('PASS: nothing acknowledged was lost or consumed twice.')
    return
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlops-crash-'))
  fs.mkdirSync(path.join(dir, 'ft'))
  fs.mkdirSync(path.join(dir, 'fb'))
  fs.mkdirSync(path.join(dir, 'faults'))
  log(`crash test: ${KILLS} rounds each, seed ${a.seed}, in ${dir}`)
  const ftRes = await fineTuneCrashes(path.join(dir, 'ft'))
  log(`fine-tuning: ${ftRes.kills} SIGKILLs; ${ftRes.versions} versions on disk, ${ftRes.reported} reported complete, all readable and distinct; ${ftRes.leftoverTempFiles} temp files left by kills mid-write`)
  const fbRes = await feedbackCrashes(path.join(dir, 'fb'))
  log(`feedback: ${fbRes.kills} SIGKILLs; ${fbRes.acknowledged} events acknowledged (addFeedback → true): ${fbRes.processed} processed, ${fbRes.acknowledgedAboveWatermark} above the watermark and ${fbRes.replayed} replayed on restart, ${fbRes.lost} lost; ${fbRes.tornLines} torn unacknowledged lines skipped`)
  const faultRes = await faultCrashes(path.join(dir, 'faults'))
  log(`log faults: ${faultRes.rounds} rounds, ${faultRes.kills} SIGKILLs, ${faultRes.sizeLimitedRuns} under a file-size limit, ${faultRes.damagedFiles} files damaged in ${faultRes.damagedCopies} copies (${faultRes.damagedCopySkipped} damaged records skipped, ${faultRes.damagedCopyReplayed} intact ones replayed); ${faultRes.acknowledged} acknowledged true, ${faultRes.acknowledgedFalse} false; ${faultRes.processed} processed, ${faultRes.replayed} replayed, ${faultRes.lost} lost, ${faultRes.duplicates} duplicates, ${faultRes.falseButLogged} acknowledged false but logged`)
  const problems = [...ftRes.problems, ...fbRes.problems, ...faultRes.problems]
  fs.rmSync(dir, { recursive: true, force: true })
  if (problems.length) {
    console.error('FAIL:\n  ' + problems.slice(0, 20).join('\n  '))
    process.exit(1)
  }
  console.log(JSON.stringify({ fineTuning: { ...ftRes, problems: undefined }, feedback: { ...fbRes, problems: undefined }, faults: { ...faultRes, problems: undefined } }))
  log('PASS: nothing acknowledged was lost, nothing on disk is broken.')
})().catch((e) => {
  console.error(`crash test failed: ${e.stack}`)
  process.exit(1)
})
