'use strict'
// PostgreSQL mode on a throwaway local cluster (fsync on):
//  - acknowledged feedback events/s (addFeedback resolved true = committed), one process
//    and three at once, next to pgbench's single-row INSERT rate on the same server;
//  - promotion → swap latency in three processes (p50, p99);
//  - spool-and-forward throughput after an outage.
//   node scripts/bench/run.js postgres

const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { fork, spawnSync } = require('node:child_process')
const { startCluster } = require('../lib/pg-cluster.js')

const EVENTS = Number(process.env.BENCH_PG_EVENTS || 200_000)

function modelsDir() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlops-pgb-'))
  fs.writeFileSync(path.join(dir, 'base.json'), JSON.stringify({ weights: [0, 0], bias: 0 }))
  return dir
}

function child(url, dir, opts) {
  const proc = fork(path.join(__dirname, '..', '..', '__test__', 'fixtures', 'pg-child.js'), [url, dir, JSON.stringify(opts)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
  const pending = new Map()
  const swaps = []
  let nextId = 1
  const ready = new Promise((r) =>
    proc.on('message', (m) => {
      if (m.ready) r()
      else if (m.swap) swaps.push(m.swap)
      else if (pending.has(m.id)) {
        pending.get(m.id)(m)
        pending.delete(m.id)
      }
    }),
  )
  const call = async (cmd, args = {}) => {
    await ready
    const id = nextId++
    return new Promise((resolve, reject) => {
      pending.set(id, (m) => (m.error ? reject(new Error(m.error)) : resolve(m)))
      proc.send({ id, cmd, ...args })
    })
  }
  return { call, swaps, proc }
}

function pgbench(pg, clients, seconds) {
  pg.psql('DROP TABLE IF EXISTS bench_fb; CREATE TABLE bench_fb (instance_id text COLLATE "C", seq bigint, txid bigint DEFAULT ((pg_current_xact_id()::text)::bigint), created_ms float8, features bytea, prediction float8, actual float8, PRIMARY KEY (instance_id, seq))')
  pg.psql('CREATE INDEX ON bench_fb (txid, instance_id, seq)')
  const script = path.join(os.tmpdir(), `mlops-pgbench-${process.pid}.sql`)
  fs.writeFileSync(script, "INSERT INTO bench_fb (instance_id, seq, created_ms, features, prediction, actual) VALUES ('c' || :client_id, nextval('bench_seq'), 0, '\\x0000000000000000', 0, 1);\n")
  pg.psql('DROP SEQUENCE IF EXISTS bench_seq; CREATE SEQUENCE bench_seq')
  const r = spawnSync(path.join(pg.bin, 'pgbench'), ['-n', '-h', '127.0.0.1', '-p', String(pg.port), '-U', 'postgres', '-c', String(clients), '-j', String(clients), '-T', String(seconds), '-f', script, 'postgres'], {
    env: { ...process.env, PGPASSWORD: pg.password },
    encoding: 'utf8',
  })
  fs.rmSync(script, { force: true })
  const m = /tps = ([\d.]+)/.exec(r.stdout)
  return m ? Number(m[1]) : NaN
}

const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.floor(p * s.length))]
}

async function run() {
  console.log('\n## PostgreSQL mode (local cluster, fsync on)\n')
  const pg = await startCluster()
  const dirs = []
  const kids = []
  try {
    const one = pgbench(pg, 1, 5)
    const three = pgbench(pg, 3, 5)
    console.log(`pgbench single-row INSERT (autocommit, same table shape): 1 client ${one.toFixed(0)} rows/s, 3 clients ${three.toFixed(0)} rows/s`)

    // Acked events/s: writers only (no trainer), so the figure is the feedback path itself.
    const writerOpts = (schema) => ({ schema, train: false, queueCapacity: 100_000 })
    dirs.push(modelsDir())
    const a = child(pg.url, dirs[0], writerOpts('b1'))
    kids.push(a)
    await a.call('init')
    await a.call('feed', { n: 20_000, window: 20_000 }) // warm-up
    const r1 = await a.call('feed', { n: EVENTS, window: 20_000 })
    console.log(`1 process: ${((r1.acked / r1.ms) * 1000).toFixed(0)} acked events/s (${r1.acked} events, ${r1.failed} refused, window 20000 in flight)`)
    const trio = []
    for (let i = 0; i < 3; i++) {
      dirs.push(modelsDir())
      const c = child(pg.url, dirs[dirs.length - 1], writerOpts('b3'))
      kids.push(c)
      await c.call('init')
      trio.push(c)
    }
    const t = performance.now()
    const rs = await Promise.all(trio.map((c) => c.call('feed', { n: EVENTS, window: 20_000 })))
    const wall = performance.now() - t
    const per = rs.map((r) => (r.acked / r.ms) * 1000)
    const total = (rs.reduce((s, r) => s + r.acked, 0) / wall) * 1000
    console.log(`3 processes: ${per.map((x) => x.toFixed(0)).join(' / ')} acked events/s each, ${total.toFixed(0)} events/s together`)

    // Promotion → swap, three serving processes.
    const { ModelFineTuning } = require('../../mlops.js')
    const serving = []
    for (let i = 0; i < 3; i++) {
      dirs.push(modelsDir())
      const c = child(pg.url, dirs[dirs.length - 1], { schema: 'bp', train: false })
      kids.push(c)
      await c.call('init')
      await c.call('watch')
      serving.push(c)
    }
    const mft = new ModelFineTuning({ registry: pg.url, schema: 'bp', modelsDir: dirs[0] })
    await mft.initialize()
    const rows = Array.from({ length: 50 }, (_, i) => ({ features: [i % 5, i % 3], quality: i % 4 }))
    const v1 = (await mft.fineTuneModel('base.json', rows, { minSamples: 10, epochs: 2 })).versionNumber
    const v2 = (await mft.fineTuneModel('base.json', rows, { minSamples: 10, epochs: 3 })).versionNumber
    const lat = []
    for (let i = 0; i < 40; i++) {
      const target = i % 2 ? v1 : v2
      for (const c of serving) c.swaps.length = 0
      const t0 = performance.timeOrigin + performance.now()
      await mft.promoteVersion('base.json', target)
      for (const c of serving) {
        const deadline = Date.now() + 5000
        let s
        while (!(s = c.swaps.find((x) => x.version === target)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 2))
        if (s) lat.push(s.at - t0)
      }
    }
    console.log(`promotion → swap in 3 processes (${lat.length} swaps, from before promoteVersion() to the swap event): p50 ${pct(lat, 0.5).toFixed(1)} ms, p99 ${pct(lat, 0.99).toFixed(1)} ms`)

    // Spool and forward: the database is down while one process takes feedback.
    dirs.push(modelsDir())
    const s = child(pg.url, dirs[dirs.length - 1], { schema: 'bs', train: false, queueCapacity: 100_000 })
    kids.push(s)
    await s.call('init')
    pg.stopServer('fast')
    const spooled = await s.call('feed', { n: 50_000, window: 10_000 })
    const tUp = performance.now()
    pg.startServer()
    let n = 0
    while (n < spooled.acked && performance.now() - tUp < 120_000) {
      await new Promise((r) => setTimeout(r, 20))
      try {
        n = Number(pg.psql('SELECT count(*) FROM bs.feedback'))
      } catch {
        n = 0
      }
    }
    const fwdMs = performance.now() - tUp
    console.log(`spool while down: ${((spooled.acked / spooled.ms) * 1000).toFixed(0)} acked events/s (fsynced spool); forwarded ${n} of ${spooled.acked} in ${fwdMs.toFixed(0)} ms after the restart (${((n / fwdMs) * 1000).toFixed(0)} events/s, server start included)`)
  } finally {
    for (const k of kids) {
      try {
        k.proc.kill('SIGKILL')
      } catch {}
    }
    pg.stop()
    for (const d of dirs) fs.rmSync(d, { recursive: true, force: true })
  }
}

module.exports = { run }
if (require.main === module) run()
