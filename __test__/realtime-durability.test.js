'use strict'
// Issue 10: "acknowledged means kept". Each numbered case of the issue, reproduced as it was
// written there, against a fresh feedbackLogDir with bufferSize/minSamplesForUpdate large and
// updateIntervalMs one hour unless stated.
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { spawn } = require('node:child_process')
const { RealTimeModelUpdates, ModelFineTuning } = require('..')
const { readLog, readWatermark, expectedReplay } = require('../scripts/lib/feedback-log.js')

const ROOT = path.join(__dirname, '..')
const BASE = 'quality-predictor-v3-advanced.json'
const QUIET = { bufferSize: 1e6, minSamplesForUpdate: 1e6, updateIntervalMs: 3_600_000 }

function sandbox(model = { weights: [0, 0], bias: 0 }) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlops-dur-'))
  fs.writeFileSync(path.join(dir, BASE), JSON.stringify(model))
  return dir
}
const logDirOf = (dir) => path.join(dir, 'feedback-log')
const logFiles = (dir) => fs.readdirSync(logDirOf(dir)).filter((f) => f.endsWith('.jsonl')).sort()
const fb = (i) => ({ features: [i % 10, i % 7], prediction: 0, actual: i })

async function ackAll(rt, from, n) {
  const acks = await Promise.all(Array.from({ length: n }, (_, i) => rt.addFeedback(fb(from + i))))
  return acks.filter((x) => x === true).length
}

/** Runs `script` in a child (optionally under `ulimit -f` KiB); resolves its stdout lines. */
function child(script, { fileLimitKiB = 0, timeout = 30_000 } = {}) {
  return new Promise((resolve, reject) => {
    const c = fileLimitKiB
      ? spawn('bash', ['-c', `ulimit -f ${fileLimitKiB}; exec "$0" -e "$1"`, process.execPath, script], { stdio: ['ignore', 'pipe', 'pipe'] })
      : spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    let err = ''
    c.stdout.on('data', (d) => (out += d))
    c.stderr.on('data', (d) => (err += d))
    const t = setTimeout(() => {
      c.kill('SIGKILL')
      reject(new Error(`child timed out: ${err}`))
    }, timeout)
    c.on('exit', (code, signal) => {
      clearTimeout(t)
      resolve({ code, signal, lines: out.trim().split('\n'), err })
    })
  })
}
const header = (dir, opts = QUIET) => `
  const { RealTimeModelUpdates } = require(${JSON.stringify(ROOT)})
  const assert = require('node:assert')
  const rt = new RealTimeModelUpdates({ modelsDir: ${JSON.stringify(dir)}, ...${JSON.stringify(opts)} })
  const fb = (i) => ({ features: [i % 10, i % 7], prediction: 0, actual: i })`

async function start(dir, opts = {}) {
  const rt = new RealTimeModelUpdates({ modelsDir: dir, ...QUIET, ...opts })
  const errors = []
  rt.on('error', (e) => errors.push(e.message))
  const ok = await rt.initialize()
  return { rt, ok, errors, s: rt.getStatistics() }
}

function uniqueSeqs(dir) {
  const seqs = readLog(logDirOf(dir)).records.map((r) => r.seq)
  return new Set(seqs).size === seqs.length
}

test('case 1: invalid bytes appended to the log hide nothing, numbering continues, and it is reported', async () => {
  for (const newline of [false, true]) {
    const dir = sandbox()
    let { rt } = await start(dir)
    assert.equal(await ackAll(rt, 1, 50), 50)
    await rt.cleanup()
    const file = path.join(logDirOf(dir), logFiles(dir).pop())
    fs.appendFileSync(file, Buffer.from(newline ? [0xff, 0xfe, 0x00, 0xc3, 0x0a] : [0xff, 0xfe, 0x00, 0xc3]))
    const second = await start(dir)
    rt = second.rt
    assert.equal(second.s.replayed, 50, 'before: 0 of 50')
    assert.equal(second.s.corruptLogRecords + second.s.tornLogRecords, 1)
    assert.match(second.s.lastError, /torn|damaged/, 'before: lastError stayed null')
    assert.ok(second.errors.length >= 1, 'before: no error event')
    assert.equal(await ackAll(rt, 51, 20), 20)
    await rt.flush()
    assert.equal(rt.getStatistics().durableSeq, 70, 'before: numbering restarted at 1')
    await rt.cleanup()
    const third = await start(dir)
    assert.equal(third.s.replayed, 70, 'before: 0 of 70')
    assert.ok(uniqueSeqs(dir), 'before: 19–20 duplicate sequence numbers')
    await third.rt.cleanup()
    fs.rmSync(dir, { recursive: true })
  }
})

test('case 1 (old format): a JSON-lines log from before the checksums still replays around a bad byte', async () => {
  const dir = sandbox()
  fs.mkdirSync(logDirOf(dir))
  const lines = Array.from({ length: 50 }, (_, i) => JSON.stringify({ seq: i + 1, t: 0, features: [i % 10, i % 7], prediction: 0, actual: i }))
  fs.writeFileSync(path.join(logDirOf(dir), 'feedback-0000000000000001.jsonl'), Buffer.concat([Buffer.from(lines.slice(0, 25).join('\n') + '\n'), Buffer.from([0xff, 0xfe, 0x00, 0xc3, 0x0a]), Buffer.from(lines.slice(25).join('\n') + '\n')]))
  const { rt, s } = await start(dir)
  assert.equal(s.replayed, 50)
  assert.equal(s.corruptLogRecords, 1)
  assert.equal(await ackAll(rt, 100, 20), 20)
  await rt.flush()
  assert.equal(rt.getStatistics().durableSeq, 70)
  await rt.cleanup()
  assert.ok(logFiles(dir).some((f) => f.endsWith('.crc.jsonl')), 'new records go to a new, checksummed file')
  const again = await start(dir)
  assert.equal(again.s.replayed, 70)
  await again.rt.cleanup()
  fs.rmSync(dir, { recursive: true })
})

test('case 2: a torn record as the only write of the newest file is never continued', async () => {
  const dir = sandbox()
  let { rt } = await start(dir)
  assert.equal(await ackAll(rt, 1, 14), 14)
  await rt.cleanup()
  // A kill mid-write right after a rotation: the newest file holds one torn record.
  fs.writeFileSync(path.join(logDirOf(dir), 'feedback-0000000000000015.crc.jsonl'), '{"seq":15,"t":1,"features":[1,')
  const second = await start(dir)
  assert.equal(second.s.tornLogRecords, 1)
  assert.equal(await second.rt.addFeedback(fb(15)), true)
  await second.rt.cleanup()
  const third = await start(dir)
  assert.equal(third.s.replayed, 15, 'before: 14 of 15')
  await third.rt.cleanup()
  fs.rmSync(dir, { recursive: true })
})

test('case 3: a write that fails part-way (ulimit -f): true only for events in the log, false only for events not in it', async () => {
  const dir = sandbox()
  const r = await child(`${header(dir)}
    rt.initialize().then(async () => {
      const out = []
      for (let i = 1; i <= 95; i++) out.push((await rt.addFeedback(fb(i))) ? 't' : 'f')
      console.log(out.join(''))
      const s = rt.getStatistics()
      console.log(JSON.stringify({ logFailed: s.logFailed, logHealthy: s.logHealthy, lastError: s.lastError }))
      await rt.cleanup()
    })`, { fileLimitKiB: 2 })
  assert.equal(r.code, 0, r.err)
  const acks = r.lines[0]
  const st = JSON.parse(r.lines[1])
  assert.ok(acks.includes('f'), `the size limit made a write fail: ${acks}`)
  assert.ok(acks.lastIndexOf('t') > acks.indexOf('f'), 'later events are acknowledged again (a new file)')
  assert.equal(st.logFailed, [...acks].filter((c) => c === 'f').length)
  assert.match(st.lastError, /File too large|failed after/)
  const logged = new Set(readLog(logDirOf(dir)).records.map((x) => x.actual))
  for (let i = 1; i <= 95; i++) assert.equal(logged.has(i), acks[i - 1] === 't', `event ${i}: acknowledged ${acks[i - 1]}, logged ${logged.has(i)}`)
  const { rt, s } = await start(dir)
  assert.equal(s.replayed, [...acks].filter((c) => c === 't').length, 'before: 1 of 95 acknowledged events lost')
  await rt.cleanup()
  fs.rmSync(dir, { recursive: true })
})

test('case 4: a watermark ahead of the log is reported and repaired; numbers never go back', async () => {
  for (const variant of ['edited', 'logs deleted']) {
    const dir = sandbox()
    const first = await start(dir)
    assert.equal(await ackAll(first.rt, 1, 50), 50)
    await first.rt.forceUpdate()
    await first.rt.cleanup()
    const wmFile = path.join(logDirOf(dir), 'watermark.json')
    if (variant === 'edited') fs.writeFileSync(wmFile, JSON.stringify({ processedSeq: 1000 }))
    else for (const f of logFiles(dir)) fs.rmSync(path.join(logDirOf(dir), f))
    const r = await child(`${header(dir)}
      const errors = []
      rt.on('error', (e) => errors.push(e.message))
      rt.initialize().then(async () => {
        const acks = await Promise.all(Array.from({ length: 30 }, (_, i) => rt.addFeedback(fb(100 + i))))
        console.log(acks.filter(Boolean).length)
        console.log(JSON.stringify(errors))
        process.kill(process.pid, 'SIGKILL')
      })`)
    assert.equal(r.signal, 'SIGKILL')
    assert.equal(Number(r.lines[0]), 30)
    assert.match(JSON.parse(r.lines[1]).join(' '), /watermark/, `${variant}: reported (before: no error)`)
    const seqs = readLog(logDirOf(dir)).records.filter((x) => x.actual >= 100).map((x) => x.seq)
    assert.ok(Math.min(...seqs) > (variant === 'edited' ? 1000 : 50), `${variant}: new numbers above the watermark: ${Math.min(...seqs)}`)
    const { rt, s } = await start(dir)
    assert.equal(s.replayed, variant === 'edited' ? 80 : 30, `${variant}: before, 0 of 30 replayed`)
    await rt.cleanup()
    fs.rmSync(dir, { recursive: true })
  }
})

test('the high-water mark is persisted with the log: numbers never go back even if a killed process’s log files are lost', async () => {
  const dir = sandbox()
  const r = await child(`${header(dir)}
    rt.initialize().then(async () => {
      const acks = await Promise.all(Array.from({ length: 50 }, (_, i) => rt.addFeedback(fb(i))))
      console.log(acks.filter(Boolean).length)
      setTimeout(() => process.kill(process.pid, 'SIGKILL'), 400) // past one fsync tick, no cycle, no cleanup
    })`)
  assert.equal(r.signal, 'SIGKILL')
  assert.equal(Number(r.lines[0]), 50)
  assert.equal(readWatermark(logDirOf(dir)).highWaterSeq, 50)
  for (const f of logFiles(dir)) fs.rmSync(path.join(logDirOf(dir), f))
  const { rt } = await start(dir)
  assert.equal(await rt.addFeedback(fb(1)), true)
  await rt.flush()
  assert.equal(rt.getStatistics().durableSeq, 51)
  await rt.cleanup()
  fs.rmSync(dir, { recursive: true })
})

test('case 5: a drift alarm never loses the event that raised it (3 runs, SIGKILL after the drift cycle)', async () => {
  for (let run = 0; run < 3; run++) {
    const dir = sandbox({ weights: [2, -1], bias: 1 })
    const r = await child(`${header(dir, { ...QUIET, maxSamplesPerUpdate: 1e6 })}
      const truth = (a, b) => 1 + 2 * a - b
      const ev = (i, shift) => ({ features: [i % 10, i % 7], prediction: 0, actual: truth(i % 10, i % 7) + (i % 2 ? 0.1 : -0.1) + shift })
      const cycle = new Promise((resolve) => { const h = (x) => x.reason === 'drift' && resolve(x); rt.on('update', h); rt.on('rejected', h) })
      const hold = setInterval(() => {}, 1000)
      rt.initialize().then(async () => {
        await Promise.all(Array.from({ length: 400 + ${run * 37} }, (_, i) => rt.addFeedback(ev(i, 0))))
        let i = 1000
        const acks = []
        let done = false
        cycle.then(() => (done = true))
        while (!done && i < 3000) acks.push(rt.addFeedback(ev(i++, 25))), await new Promise((r) => setImmediate(r))
        await Promise.all(acks)
        await cycle
        // A request is answered after every event before it was ingested; this one runs no
        // cycle (minSamplesForUpdate is huge) and writes nothing (a flush would rewrite the
        // watermark and hide the bug).
        assert(await rt.processBuffer() === null)
        const s = rt.getStatistics()
        console.log(JSON.stringify({ bufferSize: s.bufferSize, drifts: s.drifts }))
        process.kill(process.pid, 'SIGKILL')
      })`)
    assert.equal(r.signal, 'SIGKILL', r.err)
    const before = JSON.parse(r.lines[0])
    assert.ok(before.drifts >= 1)
    const { rt, s } = await start(dir)
    assert.equal(s.replayed, before.bufferSize, `run ${run}: every buffered event is replayed (before: the alarm event was lost)`)
    assert.equal(s.replayed, expectedReplay(logDirOf(dir)))
    await rt.cleanup()
    fs.rmSync(dir, { recursive: true })
  }
})

test('case 6: one owner per log folder — a second instance (same process or another) is refused and never writes', async () => {
  const dir = sandbox()
  const a = await start(dir)
  assert.equal(a.ok, true)
  const b = await start(dir)
  assert.equal(b.ok, false, 'same process: refused')
  assert.match(b.s.lastError, new RegExp(`process ${process.pid}`))
  assert.ok(b.errors.some((m) => /in use/.test(m)))
  assert.equal(await b.rt.addFeedback(fb(1)), false, 'B never acknowledges (before: 40 acknowledged, 0 replayed)')
  assert.equal(await ackAll(a.rt, 1, 40), 40)
  await a.rt.cleanup()
  // Another process holds it now.
  const holder = spawn(process.execPath, ['-e', `${header(dir)}
    rt.initialize().then((ok) => console.log(ok, process.pid)); setInterval(() => {}, 1000)`], { stdio: ['ignore', 'pipe', 'inherit'] })
  const [ok, pid] = await new Promise((resolve) => holder.stdout.once('data', (d) => resolve(String(d).trim().split(' '))))
  assert.equal(ok, 'true')
  const c = await start(dir)
  assert.equal(c.ok, false)
  assert.match(c.s.lastError, new RegExp(`process ${pid}\\b`), c.s.lastError)
  holder.kill('SIGKILL')
  await new Promise((r) => holder.on('exit', r))
  assert.equal(await c.rt.initialize(), true, 'the lock dies with its holder: a later initialize() succeeds')
  assert.equal(c.rt.getStatistics().replayed, 40)
  await c.rt.cleanup()
  assert.ok(uniqueSeqs(dir))
  fs.rmSync(dir, { recursive: true })
})

test('case 7: rollback after hotSwapModel reports and remembers the model that serves', async () => {
  const dir = sandbox({ weights: [0, 0], bias: 0 })
  fs.writeFileSync(path.join(dir, 'B.json'), JSON.stringify({ weights: [0, 0], bias: 100 }))
  const opts = { minSamplesForUpdate: 20, bufferSize: 200, updateThreshold: 0.01 }
  const { rt } = await start(dir, opts)
  await Promise.all(Array.from({ length: 200 }, (_, i) => rt.addFeedback({ features: [i % 10, i % 7], prediction: 0, actual: 1 + 2 * (i % 10) - (i % 7) })))
  await rt.flush()
  const learned = rt.predictSync([3, 2])
  assert.ok(learned > 1, `the base learned something: ${learned}`)
  assert.equal(await rt.hotSwapModel('B.json'), true)
  assert.ok(Math.abs(rt.predictSync([3, 2]) - 100) < 1e-9, 'B serves (up to the learner\'s rounding of its reference shift)')
  assert.equal(await rt.rollback(), true)
  assert.equal(rt.predictSync([3, 2]), learned)
  assert.equal(rt.getCurrentModelPath(), path.join(dir, BASE), 'before: still said B.json')
  await rt.cleanup()
  const again = await start(dir, opts)
  assert.equal(again.rt.predictSync([3, 2]), learned, 'before: the learned model was forgotten after a restart')
  await again.rt.cleanup()
  fs.rmSync(dir, { recursive: true })
})

test('case 8: a missing or corrupt production version falls back to the newest readable version, else modelPath, with an error', async () => {
  const dir = sandbox({ weights: [0, 0], bias: 5 })
  const ft = new ModelFineTuning({ modelsDir: dir })
  const rows = (k) => Array.from({ length: 200 }, (_, i) => ({ features: [i % 10, i % 7], quality: k + (i % 10) }))
  const v1 = await ft.fineTuneModel(BASE, rows(1), { optimizer: 'ridge', promote: true })
  const v2 = await ft.fineTuneModel(BASE, rows(3), { optimizer: 'ridge', promote: true })
  assert.ok(v1.success && v2.success)
  fs.writeFileSync(v2.modelPath, '{"weights": [1, ')
  let r = await start(dir)
  assert.equal(r.ok, true)
  assert.equal(r.rt.getCurrentModelPath(), v1.modelPath)
  assert.ok(r.errors.some((m) => /v2 is unreadable/.test(m)), r.errors.join('\n'))
  assert.equal(typeof r.rt.predictSync([1, 1]), 'number')
  assert.equal(await ft.getProductionModelPath(BASE), v1.modelPath, 'getProductionModelPath checks readability')
  await r.rt.cleanup()
  fs.rmSync(v1.modelPath)
  r = await start(dir)
  assert.equal(r.ok, true, 'before: initialize true but predictSync threw')
  assert.equal(r.rt.getCurrentModelPath(), path.join(dir, BASE))
  assert.equal(r.rt.predictSync([1, 1]), 5)
  assert.equal(await ft.getProductionModelPath(BASE), path.join(dir, BASE))
  await r.rt.cleanup()
  fs.rmSync(path.join(dir, 'online'), { recursive: true })
  fs.writeFileSync(path.join(dir, BASE), 'not json')
  r = await start(dir)
  assert.equal(r.ok, false, 'nothing serves: initialize resolves false')
  assert.match(r.s.lastError, /no model serves/)
  await r.rt.cleanup()
  fs.rmSync(dir, { recursive: true })
})

test('case 9: a lost or corrupt manifest.json never makes a version number be reused', async () => {
  const dir = sandbox()
  const ft = new ModelFineTuning({ modelsDir: dir })
  const rows = Array.from({ length: 100 }, (_, i) => ({ features: [i % 10, i % 7], quality: 1 + (i % 10) }))
  const a = await ft.fineTuneModel(BASE, rows, { optimizer: 'ridge' })
  const b = await ft.fineTuneModel(BASE, rows, { optimizer: 'ridge' })
  const v1Bytes = fs.readFileSync(a.modelPath)
  const manifest = path.join(path.dirname(a.modelPath), 'manifest.json')
  fs.rmSync(manifest)
  const c = await ft.fineTuneModel(BASE, rows, { optimizer: 'ridge' })
  assert.equal(c.success, true)
  assert.equal(c.version, 'v3', 'before: v1 was overwritten')
  assert.deepEqual(fs.readFileSync(a.modelPath), v1Bytes)
  const m = JSON.parse(fs.readFileSync(manifest, 'utf8'))
  assert.match(m.recovered.reason, /missing/)
  assert.deepEqual(m.recovered.versions, [1, 2])
  fs.writeFileSync(manifest, '{"format": "mlops')
  const d = await ft.fineTuneModel(BASE, rows, { optimizer: 'ridge' })
  assert.equal(d.version, 'v4')
  assert.match(JSON.parse(fs.readFileSync(manifest, 'utf8')).recovered.reason, /corrupt/)
  void b
  fs.rmSync(dir, { recursive: true })
})

test('case 10: while the log cannot be written, initialize() and flush() resolve false and the statistics say why', async () => {
  const dir = sandbox({ weights: [1, 1], bias: 0 })
  fs.writeFileSync(path.join(dir, 'a-file'), 'x')
  const rt = new RealTimeModelUpdates({ modelsDir: dir, feedbackLogDir: path.join(dir, 'a-file', 'log'), ...QUIET })
  const errors = []
  rt.on('error', (e) => errors.push(e.message))
  assert.equal(await rt.initialize(), false, 'before: true')
  assert.equal(rt.predictSync([1, 1]), 2, 'the model still serves')
  assert.equal(await rt.addFeedback(fb(1)), false)
  assert.equal(await rt.flush(), false, 'before: true')
  const s = rt.getStatistics()
  assert.equal(s.logHealthy, false)
  assert.match(s.lastError, /feedback log/)
  assert.equal(s.logFailed, 1)
  assert.equal(s.accepted, s.processed + s.bufferSize + s.queueDepth + s.logFailed)
  assert.ok(errors.length >= 1)
  await rt.cleanup()
  fs.rmSync(dir, { recursive: true })
})

test('the log format: each record a JSON line with a CRC-32C; a healthy stream reports healthy', async () => {
  const dir = sandbox()
  const { rt, ok } = await start(dir)
  assert.equal(ok, true)
  assert.equal(await ackAll(rt, 1, 5), 5)
  assert.equal(await rt.flush(), true)
  const s = rt.getStatistics()
  assert.equal(s.logHealthy, true)
  assert.equal(s.corruptLogRecords, 0)
  await rt.cleanup()
  const [file] = logFiles(dir)
  assert.match(file, /^feedback-0000000000000001\.crc\.jsonl$/)
  const line = fs.readFileSync(path.join(logDirOf(dir), file), 'utf8').split('\n')[0]
  assert.match(line, /^\{"seq":1,"t":[\d.]+,"features":\[1\.0,1\.0\],"prediction":0\.0,"actual":1\.0,"crc":"[0-9a-f]{8}"\}$/)
  assert.deepEqual(readWatermark(logDirOf(dir)), { processedSeq: 0, highWaterSeq: 5 })
  fs.rmSync(dir, { recursive: true })
})
