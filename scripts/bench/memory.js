'use strict'
// Memory accounting for the cardinality benches (issue 13).
//
// RSS growth under a churn of distinct keys has two parts: the instance's own state (native
// tables in the malloc arena, the JS layer's name caches) and V8's young generation, which
// grows to tens of MB under *any* high-rate traffic of distinct strings, whatever consumes
// them. So each figure is reported three ways: the whole process's RSS growth, the growth
// of the malloc arena alone (`[heap]`, where the native state lives), and the RSS growth
// of a control run sending the same traffic through a plain JS Map bounded like the
// instance (`control`). RSS − control is what the instance itself costs.

const fs = require('node:fs')
const { spawnSync } = require('node:child_process')

/** RSS of the main malloc arena (`[heap]` in /proc/self/smaps), in bytes; 0 when unknown. */
function arenaBytes() {
  try {
    const t = fs.readFileSync('/proc/self/smaps', 'utf8')
    const i = t.indexOf(' [heap]\n')
    if (i < 0) return 0
    const m = /\nRss:\s+(\d+) kB/.exec(t.slice(i, i + 400))
    return m ? Number(m[1]) * 1024 : 0
  } catch {
    return 0
  }
}

function gc() {
  if (global.gc) global.gc()
}

/**
 * The control: `checkpoints` distinct keys made by `traffic(i)` (which returns the objects a
 * caller would build for one key) through a JS Map keeping the latest `bound` keys, `calls`
 * lookups per key. Returns the RSS growth in bytes at each checkpoint.
 */
async function control(checkpoints, bound, traffic, calls) {
  gc()
  const rss0 = process.memoryUsage().rss
  const m = new Map()
  const out = []
  let i = 0
  for (const cp of checkpoints) {
    for (; i < cp; i++) {
      // The caller's objects for this key are built (as the real run builds them) but
      // only the key is kept: the control holds no per-key state beyond the Map entry.
      const [key] = traffic(i)
      for (let c = 0; c < calls; c++) {
        let s = m.get(key)
        if (s === undefined) {
          s = { n: 0 }
          m.set(key, s)
          if (m.size > bound) m.delete(m.keys().next().value)
        }
        s.n++
        if (c === 0 && (i & 1) === 0) await Promise.resolve(s)
      }
    }
    gc()
    out.push(process.memoryUsage().rss - rss0)
  }
  return out
}

/** Runs `script --control args…` in a fresh process and returns its last JSON line. */
function child(script, args) {
  const r = spawnSync(process.execPath, ['--expose-gc', script, ...args], { encoding: 'utf8', maxBuffer: 1 << 22 })
  if (r.status !== 0) throw new Error(`${script} ${args.join(' ')} failed: ${r.stderr}`)
  return JSON.parse(r.stdout.trim().split('\n').pop())
}

module.exports = { arenaBytes, control, child, gc }
