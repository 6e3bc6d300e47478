'use strict'
// ExpandedPredictions with many keys (issue 13): a churn of distinct (service, provider,
// model) keys through one instance with the default bounds, reporting at 10k, 100k and
// 1M keys the call rate, RSS, live keys and evictions; the cost per key; getStatistics;
// and saveState/loadState of 100k live keys (wall time, the part spent on the JS thread,
// file size). Each key gets one predictAllSync and one recordOutcomeSync (latency,
// output tokens, satisfaction, cpu), the first call a new tenant makes. RSS growth is
// reported for the whole process, for the malloc arena alone (the native state), and for a
// control run of the same traffic through a plain JS Map of `maxKeys` entries (see
// memory.js): RSS − control is what the instance costs.
//   node scripts/bench/run.js cardinality-predictions   (CARD_MAX=100000 for a shorter run)

const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { ExpandedPredictions } = require('../..')
const { table, median } = require('./harness.js')
const memory = require('./memory.js')

const mb = (b) => (b / 1048576).toFixed(1)
const ctx = (i) => ({ serviceName: `tenant-${i}`, provider: 'openai', model: `ft-model-${i % 5000}`, inputTokens: 400 + (i % 300), hour: i % 24 })
const outcome = (i) => ({ latencyMs: 800 + (i % 700), outputTokens: 100 + (i % 50), satisfaction: 4, cpu: 30 })

function gc() {
  if (global.gc) global.gc()
}

async function run() {
  const max = Number(process.env.CARD_MAX || 1_000_000)
  const p = new ExpandedPredictions()
  const dflt = p.getStatistics()
  // 2× maxKeys: the bounds are full of churned keys; from there on RSS should plateau.
  const full = 2 * dflt.maxKeys
  // CARD_MAX=3000000 adds 2M and 3M: past 1M, V8's young generation is at its maximum
  // (32 MB of semi-spaces by default) and the whole process should stop growing.
  const checkpoints = [...new Set([10_000, full, 100_000, 300_000, 1_000_000, 2_000_000, 3_000_000])].filter((c) => c <= max).sort((a, b) => a - b)
  console.log(`\n## ExpandedPredictions: many keys (default bounds: maxKeys ${dflt.maxKeys}, maxMemoryMb ${dflt.maxMemoryMb})\n`)
  const ctl = memory.child(__filename, ['--control', String(dflt.maxKeys), ...checkpoints.map(String)])
  gc()
  const rss0 = process.memoryUsage().rss
  const heap0 = process.memoryUsage().heapUsed
  const committed0 = process.memoryUsage().heapTotal
  const arena0 = memory.arenaBytes()
  const rows = []
  const at = {}
  let i = 0
  for (const [n, checkpoint] of checkpoints.entries()) {
    const from = i
    const t0 = process.hrtime.bigint()
    for (; i < checkpoint; i++) {
      const c = ctx(i)
      p.predictAllSync(c)
      p.recordOutcomeSync(c, outcome(i))
    }
    const secs = Number(process.hrtime.bigint() - t0) / 1e9
    gc()
    const s = p.getStatistics()
    const rss = process.memoryUsage().rss - rss0
    const heap = process.memoryUsage().heapUsed - heap0
    const arena = memory.arenaBytes() - arena0
    const committed = process.memoryUsage().heapTotal - committed0
    at[checkpoint] = { rss, heap, arena, committed, ctl: ctl[n] }
    rows.push([checkpoint.toLocaleString('en'), Math.round((2 * (checkpoint - from)) / secs).toLocaleString('en'), mb(rss), mb(ctl[n]), mb(arena), mb(heap), mb(arena + heap), mb(committed), s.keys, s.evictions.keys, mb(s.memoryBytes), (s.memoryBytes / s.keys).toFixed(0), (arena / s.keys).toFixed(0)])
  }
  table(rows, ['distinct keys sent', 'calls/s', 'RSS +MB', 'control +MB', 'arena +MB', 'JS heap +MB', 'instance MB', 'V8 committed +MB', 'live keys', 'keys evicted', 'estimated MB', 'est. bytes/key', 'arena bytes/key'])
  const last = checkpoints[checkpoints.length - 1]
  if (at[full] && last > full) {
    const a = at[full]
    const b = at[last]
    console.log(`\nPlateau from ${full.toLocaleString('en')} keys (2× maxKeys: the bounds full) to ${last.toLocaleString('en')}, after a full GC at both: RSS +${mb(b.rss - a.rss)} MB, control +${mb(b.ctl - a.ctl)} MB, arena +${mb(b.arena - a.arena)} MB, JS heap +${mb(b.heap - a.heap)} MB, V8 committed heap +${mb(b.committed - a.committed)} MB`)
  }
  if (at[1_000_000] && last > 1_000_000) {
    const a = at[1_000_000]
    const b = at[last]
    console.log(`From 1,000,000 keys to ${last.toLocaleString('en')}: RSS +${mb(b.rss - a.rss)} MB, control +${mb(b.ctl - a.ctl)} MB, arena +${mb(b.arena - a.arena)} MB, JS heap +${mb(b.heap - a.heap)} MB, V8 committed heap +${mb(b.committed - a.committed)} MB`)
  }
  console.log('RSS +MB: whole-process growth; control: the same traffic through a plain JS Map of maxKeys entries (V8 grows its young generation under any such traffic); arena: the malloc arena (the native state); JS heap: live V8 heap after a full GC (the JS layer\'s caches); instance = arena + JS heap; V8 committed: the heap V8 keeps mapped (used or not), which grows under the churn while the live JS heap does not.')

  // getStatistics: O(1) whatever the number of keys.
  const times = []
  for (let r = 0; r < 7; r++) {
    const t0 = process.hrtime.bigint()
    for (let k = 0; k < 10_000; k++) p.getStatistics()
    times.push(Number(process.hrtime.bigint() - t0) / 10_000 / 1000)
  }
  console.log(`\ngetStatistics with ${p.getStatistics().keys} live keys: ${median(times).toFixed(2)} µs per call`)

  // Cost per key without eviction, and save/load of 100k live keys.
  const n = Math.min(100_000, max)
  gc()
  const rssA = process.memoryUsage().rss
  const arenaA = memory.arenaBytes()
  const big = new ExpandedPredictions({ maxKeys: n, maxMemoryMb: 10_000 })
  for (let k = 0; k < n; k++) big.recordOutcomeSync(ctx(k), outcome(k))
  gc()
  const rssB = process.memoryUsage().rss
  const arenaB = memory.arenaBytes()
  const sb = big.getStatistics()
  console.log(`\n${n.toLocaleString('en')} live keys, no eviction: RSS +${mb(rssB - rssA)} MB = ${((rssB - rssA) / n).toFixed(0)} bytes per key, malloc arena +${mb(arenaB - arenaA)} MB = ${((arenaB - arenaA) / n).toFixed(0)} bytes per key (estimate used by maxMemoryMb: ${(sb.memoryBytes / sb.keys).toFixed(0)})`)
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlops-card-bench-'))
  const file = path.join(dir, 'state.json')
  const saves = []
  const loads = []
  const syncParts = []
  for (let r = 0; r < 3; r++) {
    let t0 = process.hrtime.bigint()
    const pending = big.saveState(file)
    syncParts.push(Number(process.hrtime.bigint() - t0) / 1e6)
    await pending
    saves.push(Number(process.hrtime.bigint() - t0) / 1e6)
    const q = new ExpandedPredictions({ maxKeys: n, maxMemoryMb: 10_000 })
    t0 = process.hrtime.bigint()
    await q.loadState(file)
    loads.push(Number(process.hrtime.bigint() - t0) / 1e6)
    if (q.getStatistics().keys !== n) throw new Error('load lost keys')
  }
  table(
    [
      ['saveState', median(saves).toFixed(0), median(syncParts).toFixed(2)],
      ['loadState', median(loads).toFixed(0), '(parse off the JS thread; swap on it)'],
    ],
    [`${n.toLocaleString('en')} keys`, 'ms (median of 3)', 'ms on the JS thread'],
  )
  console.log(`state file: ${mb(fs.statSync(file).size)} MB (${(fs.statSync(file).size / n).toFixed(0)} bytes per key)`)
  fs.rmSync(dir, { recursive: true })
  return { rows, stats: median(times), save: median(saves), load: median(loads) }
}

module.exports = { run }
if (require.main === module) {
  if (process.argv[2] === '--control') {
    const [bound, ...cps] = process.argv.slice(3).map(Number)
    memory.control(cps, bound, (i) => { const c = ctx(i); return [c.serviceName, c, outcome(i)] }, 2).then((g) => console.log(JSON.stringify(g)))
  } else run()
}
