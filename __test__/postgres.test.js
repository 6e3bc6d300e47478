'use strict'
// PostgreSQL as the shared feedback log, registry and swap signal: a throwaway cluster
// (scripts/lib/pg-cluster.js, stopped and removed even when a test fails) and up to three
// service processes (__test__/fixtures/pg-child.js) against it.

const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const os = require('node:os')
const net = require('node:net')
const path = require('node:path')
const { fork } = require('node:child_process')
const { startCluster, makeCa } = require('../scripts/lib/pg-cluster.js')
const { RealTimeModelUpdates, ModelFineTuning } = require('../mlops.js')

let pg
test.before(async () => {
  pg = await startCluster()
})
test.after(() => {
  for (const c of Child.all) c.kill()
  if (pg) pg.stop()
})

function modelsDir() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlops-pgt-'))
  fs.writeFileSync(path.join(dir, 'base.json'), JSON.stringify({ weights: [0, 0], bias: 0 }))
  return dir
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

async function until(what, fn, ms = 20_000) {
  const deadline = Date.now() + ms
  let last
  while (Date.now() < deadline) {
    last = await fn()
    if (last) return last
    await sleep(50)
  }
  assert.fail(`timed out waiting for ${what}`)
}

class Child {
  static all = new Set()
  constructor(url, dir, opts = {}) {
    this.proc = fork(path.join(__dirname, 'fixtures', 'pg-child.js'), [url, dir, JSON.stringify(opts)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
    this.pending = new Map()
    this.swaps = []
    this.nextId = 1
    this.exited = new Promise((r) => this.proc.on('exit', r))
    this.ready = new Promise((r) => {
      this.proc.on('message', (m) => {
        if (m.ready) r()
        else if (m.swap) this.swaps.push(m.swap)
        else if (this.pending.has(m.id)) {
          this.pending.get(m.id)(m)
          this.pending.delete(m.id)
        }
      })
    })
    Child.all.add(this)
  }

  async call(cmd, args = {}) {
    await this.ready
    const id = this.nextId++
    return new Promise((resolve, reject) => {
      this.pending.set(id, (m) => (m.error ? reject(new Error(m.error)) : resolve(m)))
      this.proc.send({ id, cmd, ...args })
    })
  }

  async stats() {
    return (await this.call('stats')).stats
  }

  kill(sig = 'SIGKILL') {
    Child.all.delete(this)
    try {
      this.proc.kill(sig)
    } catch {}
  }
}

const q = (sql) => pg.psql(sql)

test('a bad URL, wrong credentials or an unreachable host: initialize() resolves false, lastError names the cause, no password leaks', async () => {
  const dir = modelsDir()
  const cases = [
    ['postgres://app:hunter22pw@127.0.0.1:notaport/db', /invalid connection string/],
    [pg.url.replace(pg.password, 'wrong-pw-x1'), /password authentication failed/],
    [`postgres://app:hunter22pw@127.0.0.1:${await closedPort()}/db`, /error connecting|refused/i],
  ]
  for (const [url, why] of cases) {
    let rt
    assert.doesNotThrow(() => (rt = new RealTimeModelUpdates({ store: url, modelsDir: dir, connectTimeoutMs: 2000 })))
    const t = Date.now()
    assert.equal(await rt.initialize(), false, url)
    assert.ok(Date.now() - t < 4000)
    const err = rt.getStatistics().lastError
    assert.match(err, why)
    assert.doesNotMatch(err, /hunter22pw|wrong-pw-x1/)
    assert.equal(await rt.addFeedback({ features: [1, 2], prediction: 0, actual: 1 }), false)
    await rt.cleanup()
    const mft = new ModelFineTuning({ registry: url, modelsDir: dir, connectTimeoutMs: 2000 })
    assert.equal(await mft.initialize(), false)
    assert.match(mft.lastError, why)
    assert.doesNotMatch(mft.lastError, /hunter22pw|wrong-pw-x1/)
  }
  // A host that accepts and never answers: bounded by connectTimeoutMs.
  const silent = net.createServer(() => {}).listen(0, '127.0.0.1')
  await new Promise((r) => silent.once('listening', r))
  const rt = new RealTimeModelUpdates({ store: `postgres://a:b@127.0.0.1:${silent.address().port}/x`, modelsDir: dir, connectTimeoutMs: 400 })
  const t = Date.now()
  assert.equal(await rt.initialize(), false)
  assert.ok(Date.now() - t < 2500, `${Date.now() - t} ms`)
  assert.match(rt.getStatistics().lastError, /connectTimeoutMs/)
  silent.close()
  fs.rmSync(dir, { recursive: true, force: true })
})

test('TLS: require encrypts, verify-ca/verify-full check the CA (and the name), failures are clear and carry no password', async () => {
  // Its own cluster with ssl=on; the certificate names only "localhost".
  const tls = await startCluster({ tls: 'DNS:localhost' })
  const dir = modelsDir()
  try {
    const wrong = makeCa(tls.dir, 'wrong')
    const at = (host, query) => `${tls.url.replace('127.0.0.1', host)}?${query}`
    const ca = `sslrootcert=${encodeURIComponent(tls.caFile)}`
    const open = async (url, schema) => {
      const rt = new RealTimeModelUpdates({ store: url, schema, modelsDir: dir, modelPath: 'base.json', connectTimeoutMs: 3000, train: false })
      const ok = await rt.initialize()
      return { rt, ok, err: rt.getStatistics().lastError }
    }
    // require: encrypted (the server says so), no certificate check.
    const a = await open(at('127.0.0.1', 'sslmode=require'), 'tls_a')
    assert.equal(a.ok, true, a.err)
    assert.equal(await a.rt.addFeedback({ features: [1, 2], prediction: 0, actual: 1 }), true)
    const encrypted = tls.psql("SELECT count(*) FILTER (WHERE s.ssl) || '/' || count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'mlops-native'")
    const [enc, all] = encrypted.split('/').map(Number)
    assert.ok(all > 0 && enc === all, `encrypted connections: ${encrypted}`)
    assert.equal(tls.psql('SELECT count(*) FROM tls_a.feedback'), '1')
    await a.rt.cleanup()
    // verify-full with the CA, by the name in the certificate; verify-ca by IP (the chain only).
    for (const [url, schema] of [[at('localhost', `sslmode=verify-full&${ca}`), 'tls_b'], [at('127.0.0.1', `sslmode=verify-ca&${ca}`), 'tls_c']]) {
      const r = await open(url, schema)
      assert.equal(r.ok, true, `${schema}: ${r.err}`)
      assert.equal(await r.rt.addFeedback({ features: [1, 2], prediction: 0, actual: 1 }), true)
      await r.rt.cleanup()
    }
    const mft = new ModelFineTuning({ registry: at('localhost', `sslmode=verify-full&${ca}`), schema: 'tls_d', modelsDir: dir, connectTimeoutMs: 3000 })
    assert.equal(await mft.initialize(), true, mft.lastError)
    // Refused: a CA that did not sign it; a name the certificate does not carry; TLS
    // required from a server without it.
    const refusals = [
      [at('localhost', `sslmode=verify-full&sslrootcert=${encodeURIComponent(wrong.caFile)}`), /certificate.*(UnknownIssuer|unknown issuer)/i],
      [at('127.0.0.1', `sslmode=verify-full&${ca}`), /certificate.*(NotValidForName|not valid for name)/i],
      [`${pg.url}?sslmode=require`, /TLS/],
      [at('localhost', 'sslmode=verify-full&sslrootcert=/nonexistent/ca.pem'), /\/nonexistent\/ca\.pem/],
    ]
    for (const [url, why] of refusals) {
      const r = await open(url, 'tls_x')
      assert.equal(r.ok, false, url)
      assert.match(r.err, why)
      assert.ok(!r.err.includes(tls.password), r.err)
      assert.match(r.err, /postgres:\*\*\*@/)
      await r.rt.cleanup()
    }
  } finally {
    tls.stop()
    fs.rmSync(dir, { recursive: true, force: true })
  }
})

test('initialize() while the database is down resolves false and refuses feedback; a later initialize() connects', async () => {
  const dir = modelsDir()
  const rt = new RealTimeModelUpdates({ store: pg.url, schema: 'retry', modelsDir: dir, modelPath: 'base.json', connectTimeoutMs: 1000 })
  pg.stopServer('fast')
  try {
    assert.equal(await rt.initialize(), false)
    assert.match(rt.getStatistics().lastError, /error connecting|refused/i)
    assert.equal(await rt.addFeedback({ features: [1, 2], prediction: 0, actual: 1 }), false)
  } finally {
    pg.startServer()
  }
  assert.equal(await rt.initialize(), true)
  assert.equal(rt.getStatistics().lastError, null)
  assert.equal(await rt.addFeedback({ features: [1, 2], prediction: 0, actual: 1 }), true)
  assert.equal(q('SELECT count(*) FROM retry.feedback'), '1')
  const st = rt.getStatistics()
  assert.deepEqual([st.postgres.handedOff, st.postgres.writtenToDatabase, st.postgres.spooled], [1, 1, 0])
  await rt.cleanup()
  fs.rmSync(dir, { recursive: true, force: true })
})

test('a slow database (statement timeout) and dropped connections: nothing acknowledged is lost, errors are reported', async () => {
  const dir = modelsDir()
  const rt = new RealTimeModelUpdates({ store: pg.url, schema: 'slow', modelsDir: dir, modelPath: 'base.json', statementTimeoutMs: 300, train: false })
  const errors = []
  rt.on('error', (e) => errors.push(e.message))
  assert.equal(await rt.initialize(), true)
  // Another session holds the table for 2 s: writes time out and go to the spool.
  const { spawn } = require('node:child_process')
  const locker = spawn(path.join(pg.bin, 'psql'), ['-h', '127.0.0.1', '-p', String(pg.port), '-U', 'postgres', '-d', 'postgres', '-c', 'BEGIN; LOCK TABLE slow.feedback IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(2); COMMIT;'], { env: { ...process.env, PGPASSWORD: pg.password }, stdio: 'ignore' })
  await until('the lock', () => q("SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = 'feedback' AND l.mode = 'AccessExclusiveLock' AND l.granted") === '1')
  const t = Date.now()
  const acks = await Promise.all(Array.from({ length: 500 }, (_, i) => rt.addFeedback({ features: [i, 1], prediction: 0, actual: i })))
  assert.ok(acks.every(Boolean), 'acknowledged (spooled) while the database is slow')
  assert.ok(Date.now() - t < 1500, `acknowledged in ${Date.now() - t} ms, not after the lock`)
  assert.ok(rt.getStatistics().postgres.spooled > 0)
  assert.ok(errors.some((m) => /statement timeout/.test(m)), errors.join('\n'))
  await new Promise((r) => locker.on('exit', r))
  await until('the spool forwarded', () => q('SELECT count(*) FROM slow.feedback') === '500')
  // Every connection of the package is cut: the next writes reconnect, nothing is lost.
  q("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'mlops-native'")
  const more = await Promise.all(Array.from({ length: 100 }, (_, i) => rt.addFeedback({ features: [i, 2], prediction: 0, actual: i })))
  assert.ok(more.every(Boolean))
  const st = rt.getStatistics()
  assert.equal(st.accepted, st.postgres.handedOff + st.queueDepth + st.logFailed, 'the counts add up')
  assert.equal(st.postgres.handedOff, 600)
  await until('all 600 stored once', () => q('SELECT count(*) FROM slow.feedback') === '600')
  assert.equal(typeof rt.predictSync([1, 1]), 'number', 'serving never stopped')
  await rt.cleanup()
  fs.rmSync(dir, { recursive: true, force: true })
})

async function closedPort() {
  const s = net.createServer().listen(0, '127.0.0.1')
  await new Promise((r) => s.once('listening', r))
  const { port } = s.address()
  await new Promise((r) => s.close(r))
  return port
}

test('ModelFineTuning keeps versions and the production pointer in PostgreSQL, visible from another instance', async () => {
  const dirA = modelsDir()
  const dirB = modelsDir()
  const a = new ModelFineTuning({ registry: pg.url, schema: 'reg', modelsDir: dirA })
  const b = new ModelFineTuning({ registry: pg.url, schema: 'reg', modelsDir: dirB })
  assert.equal(await a.initialize(), true)
  assert.equal(await b.initialize(), true)
  const rows = Array.from({ length: 200 }, (_, i) => ({ features: [i % 10, i % 7], quality: 1 + 0.2 * (i % 10) - 0.1 * (i % 7) }))
  const r = await a.fineTuneModel('base.json', rows, { promote: true, minSamples: 10, epochs: 30, optimizer: 'ridge' })
  assert.equal(r.success, true, r.error)
  assert.equal(r.versionNumber, 1)
  assert.equal(r.status, 'production')
  const p = await b.getProductionModelPath('base.json')
  assert.ok(p.startsWith(dirB), 'a local cache file of the production model')
  assert.deepEqual(JSON.parse(fs.readFileSync(p, 'utf8')).weights, r.model.weights)
  assert.equal(b.getNextVersion('base.json'), 'v2')
  const h = await b.getFineTuningHistory('base.json')
  assert.equal(h.length, 1)
  assert.equal(h[0].metrics.mse, r.metrics.mse)
  assert.equal(q("SELECT count(*) FROM reg.versions WHERE model_key = 'base'"), '1')
  assert.equal(q("SELECT fingerprint FROM reg.versions WHERE model_key = 'base'"), r.data.hash, 'the data fingerprint has its own column')
  assert.equal(await b.rollback('base.json'), null)
  assert.equal(await a.getProductionVersion('base.json'), null)

  // getNextVersion() never waits for the database. Another store (its own pool and cache,
  // as in another process) answers from its counter cache, which follows registrations
  // made elsewhere within about a second, and answers at once while the counters are locked.
  const c = new ModelFineTuning({ registry: `${pg.url}?application_name=mlops-other`, schema: 'reg', modelsDir: dirB })
  assert.throws(() => c.getNextVersion('base.json'), /initialize\(\)/)
  assert.equal(await c.initialize(), true)
  assert.equal(c.getNextVersion('base.json'), 'v2')
  assert.equal(c.getNextVersion('never-trained.json'), 'v1')
  const r2 = await a.fineTuneModel('base.json', rows, { save: 'always', minSamples: 10, epochs: 5, optimizer: 'ridge' })
  assert.equal(r2.versionNumber, 2, r2.error)
  assert.equal(a.getNextVersion('base.json'), 'v3', 'its own registration moves the cache at once')
  await until('the other store sees v3', () => c.getNextVersion('base.json') === 'v3', 5000)
  const { spawn } = require('node:child_process')
  const locker = spawn(path.join(pg.bin, 'psql'), ['-h', '127.0.0.1', '-p', String(pg.port), '-U', 'postgres', '-d', 'postgres', '-c', 'BEGIN; LOCK TABLE reg.models IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(2); COMMIT;'], { env: { ...process.env, PGPASSWORD: pg.password }, stdio: 'ignore' })
  await until('the lock', () => q("SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = 'models' AND l.mode = 'AccessExclusiveLock' AND l.granted") === '1')
  const t0 = Date.now()
  assert.equal(c.getNextVersion('base.json'), 'v3')
  assert.ok(Date.now() - t0 < 1000, `answered in ${Date.now() - t0} ms while the counters are locked`)
  await new Promise((r) => locker.on('exit', r))
  fs.rmSync(dirA, { recursive: true, force: true })
  fs.rmSync(dirB, { recursive: true, force: true })
})

test('three processes: one trainer, every acknowledged event consumed once, promotions seen by all within 100 ms, leader SIGKILL and a database restart survived', async (t) => {
  const schema = 'fleet'
  const opts = { schema, leaseMs: 1500, pollMs: 50, updateIntervalMs: 200, minSamplesForUpdate: 1 }
  const dirs = [modelsDir(), modelsDir(), modelsDir()]
  let kids = dirs.map((d) => new Child(pg.url, d, opts))
  for (const k of kids) assert.equal((await k.call('init')).ok, true)
  const ids = []
  for (const k of kids) ids.push((await k.stats()).postgres.instanceId)
  const consumed = () => Number(q(`SELECT coalesce((SELECT consumed FROM ${schema}.watermarks WHERE model_key = 'base'), 0)`))
  const stored = () => Number(q(`SELECT count(*) FROM ${schema}.feedback`))
  const perInstance = (id) => Number(q(`SELECT count(*) FROM ${schema}.feedback WHERE instance_id = '${id}'`))

  // 1. Feedback from all three reaches the one trainer; the counts add up.
  const fed = await Promise.all(kids.map((k) => k.call('feed', { n: 3000 })))
  for (const f of fed) assert.deepEqual([f.acked, f.failed], [3000, 0])
  for (const id of ids) assert.equal(perInstance(id), 3000, 'every acknowledged event is stored, once')
  await until('the trainer to consume all 9000 events', () => consumed() === 9000)
  assert.equal(stored(), 9000)
  const leaders = (await Promise.all(kids.map((k) => k.stats()))).filter((s) => s.postgres.leader)
  assert.equal(leaders.length, 1, 'exactly one trainer')

  // 2. A promotion is seen by all within 100 ms.
  for (const k of kids) await k.call('watch')
  await sleep(400) // let the trainer's own last promotions settle
  const mft = new ModelFineTuning({ registry: pg.url, schema, modelsDir: dirs[0] })
  assert.equal(await mft.initialize(), true)
  const history = await mft.getFineTuningHistory('base.json')
  assert.ok(history.length >= 2, 'the trainer published versions')
  const lat = []
  for (const target of [history[1].versionNumber, history[0].versionNumber, history[1].versionNumber]) {
    for (const k of kids) k.swaps.length = 0
    // The swap signal must beat the 2 s backstop poll: stop the trainer from publishing meanwhile.
    const t0 = performance.timeOrigin + performance.now()
    await mft.promoteVersion('base.json', target)
    for (const k of kids) {
      const s = await until(`v${target} to reach every process`, () => k.swaps.find((x) => x.version === target), 5000)
      lat.push(s.at - t0)
    }
  }
  lat.sort((x, y) => x - y)
  assert.ok(lat[Math.floor(lat.length / 2)] < 100, `promotion → swap median ${lat[Math.floor(lat.length / 2)].toFixed(1)} ms (all: ${lat.map((x) => x.toFixed(1)).join(', ')})`)
  assert.ok(lat[lat.length - 1] < 1000, `slowest ${lat[lat.length - 1].toFixed(1)} ms`)
  t.diagnostic(`promotion → swap: ${lat.map((x) => x.toFixed(1)).join(', ')} ms`)

  // 3. SIGKILL the leader while everyone feeds: another takes over; nothing lost or doubled.
  const stats = await Promise.all(kids.map((k) => k.stats()))
  const li = stats.findIndex((s) => s.postgres.leader)
  const leader = kids[li]
  const others = kids.filter((_, i) => i !== li)
  const feeding = others.map((k) => k.call('feed', { n: 2000, window: 200, pauseMs: 15 }))
  await sleep(300)
  const killedAt = Date.now()
  leader.kill('SIGKILL')
  await leader.exited
  const after = await Promise.all(feeding)
  for (const f of after) assert.deepEqual([f.acked, f.failed], [2000, 0])
  await until('a new trainer', async () => (await Promise.all(others.map((k) => k.stats()))).some((s) => s.postgres.leader))
  const takeover = Date.now() - killedAt
  assert.ok(takeover < 1500 + 3000, `takeover after ${takeover} ms`)
  t.diagnostic(`takeover ${takeover} ms after SIGKILL`)
  await until('every stored event consumed exactly once', () => stored() > 0 && consumed() === stored())
  for (const [i, k] of kids.entries()) if (k !== leader) assert.equal(perInstance(ids[i]), 5000)
  assert.equal(stored(), 9000 + 4000)

  // 4. A database restart mid-stream: acknowledged events are spooled, then forwarded;
  //    serving never stops.
  const feeding2 = others.map((k) => k.call('feed', { n: 2000, window: 100, pauseMs: 20 }))
  await sleep(200)
  pg.restart('immediate')
  for (const k of others) assert.equal(typeof (await k.call('predict', { x: [1, 1] })).y, 'number')
  const after2 = await Promise.all(feeding2)
  for (const f of after2) assert.deepEqual([f.acked, f.failed], [2000, 0])
  const spooled = (await Promise.all(others.map((k) => k.stats()))).map((s) => s.postgres.spooled)
  t.diagnostic(`spooled during the restart: ${spooled.join(', ')}`)
  assert.ok(spooled.every((n) => n > 0), 'the restart happened mid-stream: both processes spooled')
  await until('spooled events forwarded', () => stored() === 13000 + 4000, 30_000)
  await until('all of them consumed once', () => consumed() === 17000, 30_000)
  for (const k of others) await k.call('stop')
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true })
})
