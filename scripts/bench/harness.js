'use strict'
// Tiny benchmark harness: repeated rounds, median reported, because this machine is shared
// and noisy. Every figure is printed next to a plain-JS baseline run in the same process.

const ROUNDS = Number(process.env.BENCH_ROUNDS || 7)

function median(xs) {
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2
}

/** ns per call of a synchronous fn, median over rounds. */
function nsPerCall(fn, iterations) {
  for (let i = 0; i < Math.min(iterations, 2000); i++) fn(i) // warm-up
  const rounds = []
  for (let r = 0; r < ROUNDS; r++) {
    const t0 = process.hrtime.bigint()
    for (let i = 0; i < iterations; i++) fn(i)
    rounds.push(Number(process.hrtime.bigint() - t0) / iterations)
  }
  return median(rounds)
}

/** ns per awaited call of a Promise-returning fn, median over rounds. */
async function nsPerAwait(fn, iterations) {
  for (let i = 0; i < Math.min(iterations, 2000); i++) await fn(i)
  const rounds = []
  for (let r = 0; r < ROUNDS; r++) {
    const t0 = process.hrtime.bigint()
    for (let i = 0; i < iterations; i++) await fn(i)
    rounds.push(Number(process.hrtime.bigint() - t0) / iterations)
  }
  return median(rounds)
}

/** Median wall time in ms of an async or sync job. */
async function msPerRun(fn, rounds = ROUNDS) {
  await fn()
  const out = []
  for (let r = 0; r < rounds; r++) {
    const t0 = process.hrtime.bigint()
    await fn()
    out.push(Number(process.hrtime.bigint() - t0) / 1e6)
  }
  return median(out)
}

function table(rows, headers) {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i]).length)))
  const line = (r) => r.map((c, i) => (i === 0 ? String(c).padEnd(widths[i]) : String(c).padStart(widths[i]))).join('  ')
  console.log(line(headers))
  for (const r of rows) console.log(line(r))
}

module.exports = { ROUNDS, median, nsPerCall, nsPerAwait, msPerRun, table }
