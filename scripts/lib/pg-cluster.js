'use strict'
// A throwaway PostgreSQL cluster for tests and benches: Debian's server binaries
// (/usr/lib/postgresql/<N>/bin; installed with apt-get when missing and running as root),
// `initdb` into a temp dir (as the `postgres` user when running as root: the server refuses
// to run as root), password authentication, loopback only, a free port, fsync on.
// `stop()` always runs — on success, on a failed assertion, on an uncaught exception and on
// SIGINT/SIGTERM — and removes the directory. `restart()` and `stopServer()`/`startServer()`
// are there for fault tests.
//
//   node scripts/lib/pg-cluster.js --install          ensure the binaries (what .ci/run calls)
//   node scripts/lib/pg-cluster.js --run -- CMD ARGS  run CMD with MLOPS_TEST_DATABASE_URL set

const fs = require('node:fs')
const os = require('node:os')
const net = require('node:net')
const path = require('node:path')
const { execFileSync, spawnSync } = require('node:child_process')

const PASSWORD = 'mlops-test-pw'
const live = new Set()

function isRoot() {
  return typeof process.getuid === 'function' && process.getuid() === 0
}

function findBin() {
  if (process.env.MLOPS_PG_BIN) return process.env.MLOPS_PG_BIN
  const standard = '/usr/lib/postgresql/15/bin'
  if (fs.existsSync(path.join(standard, 'initdb'))) return standard
  try {
    const found = fs
      .readdirSync('/usr/lib/postgresql')
      .map((v) => path.join('/usr/lib/postgresql', v, 'bin'))
      .filter((b) => fs.existsSync(path.join(b, 'initdb')))
      .sort()
    if (found.length) return found[found.length - 1]
  } catch {
    // no Debian layout
  }
  return null
}

/** The server binaries' folder; installs Debian's `postgresql` when missing and root. */
function ensureInstalled() {
  let bin = findBin()
  if (bin) return bin
  if (!isRoot()) {
    throw new Error('PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin); install the postgresql package or set MLOPS_PG_BIN')
  }
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }
  const apt = (args) => execFileSync('apt-get', args, { stdio: ['ignore', 'inherit', 'inherit'], env })
  try {
    apt(['install', '-y', '-q', 'postgresql'])
  } catch {
    apt(['update', '-q'])
    apt(['install', '-y', '-q', 'postgresql'])
  }
  // The package starts a cluster of its own on 5432; the tests never use it.
  bin = findBin()
  if (!bin) throw new Error('apt-get installed postgresql but no initdb was found under /usr/lib/postgresql')
  return bin
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer()
    s.on('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address()
      s.close(() => resolve(port))
    })
  })
}

function stopAllSync() {
  for (const c of [...live]) c.stop()
}

let hooked = false
function hookExit() {
  if (hooked) return
  hooked = true
  process.on('exit', stopAllSync)
  for (const sig of ['SIGINT', 'SIGTERM']) {
    process.once(sig, () => {
      stopAllSync()
      process.kill(process.pid, sig)
    })
  }
}

/**
 * A throwaway certificate authority in `dir` (openssl): `{ caFile, caKey }`.
 */
function makeCa(dir, name = 'ca') {
  const caKey = path.join(dir, `${name}.key`)
  const caFile = path.join(dir, `${name}.crt`)
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', caKey, '-out', caFile, '-days', '2', '-subj', `/CN=mlops test ${name}`, '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'], { stdio: 'ignore' })
  return { caFile, caKey }
}

/**
 * A server certificate signed by a new CA, for `ssl=on`; valid for the names in `san`
 * (openssl subjectAltName syntax). `{ caFile, certFile, keyFile }`.
 */
function makeServerCert(dir, san) {
  const { caFile, caKey } = makeCa(dir)
  const keyFile = path.join(dir, 'server.key')
  const certFile = path.join(dir, 'server.crt')
  const csr = path.join(dir, 'server.csr')
  const ext = path.join(dir, 'server.ext')
  execFileSync('openssl', ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', keyFile, '-out', csr, '-subj', '/CN=mlops test server'], { stdio: 'ignore' })
  fs.writeFileSync(ext, `subjectAltName=${san}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n`)
  execFileSync('openssl', ['x509', '-req', '-in', csr, '-CA', caFile, '-CAkey', caKey, '-CAcreateserial', '-out', certFile, '-days', '2', '-extfile', ext], { stdio: 'ignore' })
  fs.chmodSync(keyFile, 0o600)
  return { caFile, certFile, keyFile }
}

/**
 * Starts a cluster. Resolves `{ url, port, dir, bin, password, stop(), restart(mode),
 * stopServer(mode), startServer(), psql(sql) }`; `url` is a postgres:// URL with the
 * password in it (for tests only). `tls: 'DNS:localhost'` (a subjectAltName) turns
 * `ssl=on` with a certificate from a throwaway CA; then `caFile` is that CA.
 */
async function startCluster({ maxConnections = 100, settings = {}, tls = null } = {}) {
  const bin = ensureInstalled()
  const asPostgres = isRoot()
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlops-pg-'))
  const data = path.join(dir, 'data')
  const logfile = path.join(dir, 'server.log')
  fs.writeFileSync(path.join(dir, 'pwfile'), PASSWORD)
  if (asPostgres) execFileSync('chown', ['-R', 'postgres:postgres', dir])
  const run = (tool, args, opts = {}) => {
    const exe = path.join(bin, tool)
    const [cmd, argv] = asPostgres ? ['runuser', ['-u', 'postgres', '--', exe, ...args]] : [exe, args]
    const r = spawnSync(cmd, argv, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], ...opts })
    if (r.status !== 0) {
      const e = new Error(`${tool} ${args.join(' ')} failed (${r.status}): ${r.stderr || r.stdout}`)
      e.status = r.status
      throw e
    }
    return r.stdout
  }
  const cluster = { dir, bin, password: PASSWORD, port: 0, url: '' }
  let stopped = false
  cluster.stop = () => {
    if (stopped) return
    stopped = true
    live.delete(cluster)
    try {
      run('pg_ctl', ['-D', data, '-m', 'fast', '-w', '-t', '10', 'stop'])
    } catch {
      // not running
    }
    fs.rmSync(dir, { recursive: true, force: true })
  }
  live.add(cluster)
  hookExit()
  try {
    run('initdb', ['-D', data, '-U', 'postgres', '--auth=scram-sha-256', `--pwfile=${path.join(dir, 'pwfile')}`, '--no-sync', '-E', 'UTF8', '--locale=C'])
    if (tls) {
      const certs = makeServerCert(dir, tls)
      if (asPostgres) execFileSync('chown', ['postgres:postgres', certs.certFile, certs.keyFile])
      cluster.caFile = certs.caFile
      settings = { ...settings, ssl: 'on', ssl_cert_file: certs.certFile, ssl_key_file: certs.keyFile }
    }
    const extra = Object.entries({ max_connections: maxConnections, ...settings })
      .map(([k, v]) => `-c ${k}=${v}`)
      .join(' ')
    cluster.startServer = () => {
      // -l: without a log file the server would hold the caller's stdout/stderr pipes open.
      run('pg_ctl', ['-D', data, '-l', logfile, '-w', '-t', '60', '-o', `-p ${cluster.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=${dir} -c fsync=on ${extra}`, 'start'])
    }
    cluster.stopServer = (mode = 'fast') => {
      run('pg_ctl', ['-D', data, '-m', mode, '-w', 'stop'])
    }
    cluster.restart = (mode = 'fast') => {
      cluster.stopServer(mode)
      cluster.startServer()
    }
    cluster.psql = (sql) =>
      execFileSync(path.join(bin, 'psql'), ['-h', '127.0.0.1', '-p', String(cluster.port), '-U', 'postgres', '-d', 'postgres', '-Atq', '-v', 'ON_ERROR_STOP=1', '-c', sql], {
        env: { ...process.env, PGPASSWORD: PASSWORD },
        encoding: 'utf8',
      }).trim()
    let lastError
    for (let i = 0; i < 5; i++) {
      cluster.port = await freePort()
      try {
        cluster.startServer()
        cluster.url = `postgres://postgres:${PASSWORD}@127.0.0.1:${cluster.port}/postgres`
        return cluster
      } catch (e) {
        lastError = e // the port was taken meanwhile: try another
      }
    }
    throw new Error(`the test PostgreSQL did not start: ${lastError && lastError.message}\n${fs.existsSync(logfile) ? fs.readFileSync(logfile, 'utf8').slice(-2000) : ''}`)
  } catch (e) {
    cluster.stop()
    throw e
  }
}

module.exports = { startCluster, ensureInstalled, findBin, makeCa, PASSWORD }

if (require.main === module) {
  const args = process.argv.slice(2)
  if (args[0] === '--install') {
    console.log(ensureInstalled())
  } else if (args[0] === '--run') {
    const cmd = args.slice(args[1] === '--' ? 2 : 1)
    if (cmd.length === 0) {
      console.error('usage: pg-cluster.js --run -- CMD [ARGS…]')
      process.exit(2)
    }
    startCluster().then(
      (c) => {
        const r = spawnSync(cmd[0], cmd.slice(1), { stdio: 'inherit', env: { ...process.env, MLOPS_TEST_DATABASE_URL: c.url } })
        c.stop()
        process.exit(r.status === null ? 1 : r.status)
      },
      (e) => {
        console.error(e.message)
        process.exit(1)
      },
    )
  } else {
    console.error('usage: pg-cluster.js --install | --run -- CMD [ARGS…]')
    process.exit(2)
  }
}
