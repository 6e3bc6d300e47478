'use strict'
// `node scripts/bench/run.js cardinality-ensemble`: AdvancedEnsemble under high-cardinality
// traffic (issue 13). Each scenario runs in a fresh child process so RSS figures are its
// own: N distinct contexts (a `serviceName` per tenant), each going through every public
// call path once (stackingEnsembleSync, dynamicSelectionSync, then updateWithFeedback —
// the Promise form for even keys, updateWithFeedbackSync for odd ones), through an
// ensemble with the default bound (`maxContexts` 10000) — and, for the state-file target,
// one whose bounds (maxContexts, and maxMemoryMb set high) hold all 100k keys.
// Reported: calls/s, RSS growth (whole process, malloc arena, and minus a control run of
// the same traffic through a plain JS Map: see memory.js), getStatistics() cost, save/load
// times with the longest event-loop stall during them, file size, and bytes per live key.

const { table } = require('./harness.js')
const memory = require('./memory.js')

const MODELS = ['quality-v3', 'quality-lite', 'llm-judge']
const traffic = (i) => [`tenant-${i}`, 'quality', MODELS.map((m, j) => ({ value: (i % 7) + 0.1 * j, confidence: 0.6 + 0.1 * j, model: m }))]

async function child(keys, maxContexts) {
  const fs = require('node:fs')
  const os = require('node:os')
  const path = require('node:path')
  const { monitorEventLoopDelay } = require('node:perf_hooks')
  const { AdvancedEnsemble } = require('../..')
  const e = new AdvancedEnsemble(maxContexts ? { maxContexts, maxMemoryMb: 10_000 } : undefined)
  const models = ['quality-v3', 'quality-lite', 'llm-judge']
  const p = (y) => models.map((m, j) => ({ value: y + 0.1 * j, confidence: 0.6 + 0.1 * j, model: m }))
  // Warm up the shared state so the baseline RSS includes the addon and JIT.
  for (let i = 0; i < 1000; i++) e.updateWithFeedbackSync(p(i % 7), i % 7, { serviceName: 'warm' })
  global.gc?.()
  const rss0 = process.memoryUsage().rss
  const heap0 = process.memoryUsage().heapUsed
  const arena0 = memory.arenaBytes()
  // Once the bound is full (at 2× it, every live key is a churned one), RSS is taken again:
  // from there to the end is the plateau, which should grow by ~0.
  const full = 2 * (maxContexts || 10_000)
  let atFull = null
  let gcNs = 0n
  const t0 = process.hrtime.bigint()
  for (let i = 0; i < keys; i++) {
    if (i === full) {
      const g = process.hrtime.bigint()
      global.gc?.()
      atFull = { rss: process.memoryUsage().rss, heap: process.memoryUsage().heapUsed, committed: process.memoryUsage().heapTotal, arena: memory.arenaBytes() }
      gcNs += process.hrtime.bigint() - g
    }
    const ctx = { serviceName: `tenant-${i}`, predictionType: 'quality' }
    const preds = p(i % 7)
    e.stackingEnsembleSync(preds, ctx)
    e.dynamicSelectionSync(preds, ctx)
    if (i & 1) e.updateWithFeedbackSync(preds, (i % 7) + 0.05, ctx)
    else await e.updateWithFeedback(preds, (i % 7) + 0.05, ctx)
  }
  const secs = Number(process.hrtime.bigint() - t0 - gcNs) / 1e9
  global.gc?.()
  const rss = process.memoryUsage().rss
  const heap = process.memoryUsage().heapUsed - heap0
  const arena = memory.arenaBytes() - arena0
  const end = { arena: memory.arenaBytes(), heap: process.memoryUsage().heapUsed, committed: process.memoryUsage().heapTotal }
  const st = e.getStatistics()
  // getStatistics: median of 200 calls, in µs.
  const times = []
  for (let i = 0; i < 200; i++) {
    const a = process.hrtime.bigint()
    e.getStatistics()
    times.push(Number(process.hrtime.bigint() - a) / 1e3)
  }
  times.sort((a, b) => a - b)
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlops-card-'))
  const file = path.join(dir, 'state.json')
  const h = monitorEventLoopDelay({ resolution: 1 })
  h.enable()
  let a = process.hrtime.bigint()
  await e.saveState(file)
  const saveMs = Number(process.hrtime.bigint() - a) / 1e6
  const saveStall = h.max / 1e6
  h.reset()
  const size = fs.statSync(file).size
  const f = new AdvancedEnsemble(maxContexts ? { maxContexts, maxMemoryMb: 10_000 } : undefined)
  a = process.hrtime.bigint()
  await f.loadState(file)
  const loadMs = Number(process.hrtime.bigint() - a) / 1e6
  const loadStall = h.max / 1e6
  h.disable()
  fs.rmSync(dir, { recursive: true })
  return {
    keys,
    live: st.totals.contexts,
    evicted: st.evictions.contexts,
    callsPerSec: (3 * keys) / secs,
    rssMB: rss / 2 ** 20,
    growthMB: (rss - rss0) / 2 ** 20,
    arenaMB: arena / 2 ** 20,
    jsHeapMB: heap / 2 ** 20,
    bytesPerLiveKey: arena / st.totals.contexts,
    statsUs: times[100],
    statsP99Us: times[198],
    saveMs,
    loadMs,
    saveStall,
    loadStall,
    fileMB: size / 2 ** 20,
    // From 2× the bound to the end, after a full GC at both ends.
    plateau: atFull && {
      from: full,
      rssMB: (rss - atFull.rss) / 2 ** 20,
      arenaMB: (end.arena - atFull.arena) / 2 ** 20,
      jsHeapMB: (end.heap - atFull.heap) / 2 ** 20,
      committedMB: (end.committed - atFull.committed) / 2 ** 20,
    },
  }
}

async function run() {
  console.log('\n## AdvancedEnsemble cardinality: distinct contexts, each one stacking, one dynamic selection and one feedback (Promise or Sync)\n')
  const scenarios = [
    [10_000, 0],
    [100_000, 0],
    [1_000_000, 0],
    [100_000, 100_000],
  ]
  const rows = []
  const results = []
  for (const [keys, max] of scenarios) {
    const x = memory.child(__filename, ['--child', String(keys), String(max)])
    const ctl = memory.child(__filename, ['--control', String(keys), String(max || 10_000)])
    x.controlMB = ctl.growthMB
    x.controlPlateauMB = ctl.plateauMB
    results.push(x)
    rows.push([
      keys.toLocaleString('en'),
      (max || 10_000).toLocaleString('en'),
      x.live,
      x.evicted,
      Math.round(x.callsPerSec).toLocaleString('en'),
      x.growthMB.toFixed(1),
      x.controlMB.toFixed(1),
      x.arenaMB.toFixed(1),
      x.jsHeapMB.toFixed(1),
      (x.arenaMB + x.jsHeapMB).toFixed(1),
      x.bytesPerLiveKey.toFixed(0),
      x.statsUs.toFixed(1),
      x.statsP99Us.toFixed(1),
      x.saveMs.toFixed(0),
      x.loadMs.toFixed(0),
      `${x.saveStall.toFixed(1)}/${x.loadStall.toFixed(1)}`,
      x.fileMB.toFixed(1),
    ])
  }
  table(rows, ['keys', 'maxContexts', 'live', 'evicted', 'calls/s', 'RSS +MB', 'control +MB', 'arena +MB', 'JS heap +MB', 'instance MB', 'arena B/live key', 'stats µs', 'p99 µs', 'save ms', 'load ms', 'stall ms s/l', 'file MB'])
  console.log('RSS +MB: whole-process growth; control: the same traffic through a plain JS Map of the same bound (V8 grows its young generation under any such traffic); arena: the malloc arena (the native state); JS heap: live V8 heap after a full GC (the JS layer\'s caches); instance = arena + JS heap.')
  const plateaus = results.filter((x) => x.plateau)
  if (plateaus.length) {
    console.log('\nPlateau: growth from 2× the bound (the bound full of churned keys) to the end, after a full GC at both ends:\n')
    table(
      plateaus.map((x) => [x.keys.toLocaleString('en'), x.plateau.from.toLocaleString('en'), x.plateau.rssMB.toFixed(1), x.controlPlateauMB.toFixed(1), x.plateau.arenaMB.toFixed(1), x.plateau.jsHeapMB.toFixed(1), x.plateau.committedMB.toFixed(1)]),
      ['keys', 'from', 'RSS +MB', 'control +MB', 'arena +MB', 'JS heap +MB', 'V8 committed +MB'],
    )
  }
  console.log('Targets: getStatistics ≤ 50 µs at any count; save and load of 100k keys ≤ 1 s each; instance ≤ 50 MB at the default bound.')
  return results
}

module.exports = { run }
if (require.main === module) {
  if (process.argv[2] === '--child') {
    child(Number(process.argv[3]), Number(process.argv[4])).then((r) => console.log(JSON.stringify(r)))
  } else if (process.argv[2] === '--control') {
    const keys = Number(process.argv[3])
    // Warmed like the child (1000 calls), then the same keys: 3 calls each.
    const bound = Number(process.argv[4])
    const cps = keys > 2 * bound ? [2 * bound, keys] : [keys]
    memory.control([1000], 1000, (i) => ['warm', i], 1)
      .then(() => memory.control(cps, bound, traffic, 3))
      .then((g) => console.log(JSON.stringify({ growthMB: g[g.length - 1] / 2 ** 20, plateauMB: g.length > 1 ? (g[1] - g[0]) / 2 ** 20 : null })))
  } else run()
}
