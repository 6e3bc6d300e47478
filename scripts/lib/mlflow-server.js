'use strict'
// A throwaway MLflow tracking server for tests: a venv of the repo's own (`.venv-mlflow/`,
// git-ignored, created on first use from PyPI; it also holds prometheus-client, whose
// official exposition-format parser the metrics test uses), a SQLite backend and an artifact folder in
// a temp dir, loopback only, a free port. `stop()` kills the whole process group (mlflow
// starts uvicorn workers of its own) and removes the temp dir.
//
//   node scripts/lib/mlflow-server.js --install    (what .ci/run calls before npm test)

const fs = require('node:fs')
const os = require('node:os')
const net = require('node:net')
const path = require('node:path')
const { spawn, execFileSync } = require('node:child_process')

const ROOT = path.join(__dirname, '..', '..')
const VENV = process.env.MLOPS_MLFLOW_VENV || path.join(ROOT, '.venv-mlflow')
const VERSION = '3.17.2'
const PROMETHEUS_CLIENT = '0.26.0'
const PYTHON = path.join(VENV, 'bin', 'python')
const BIN = path.join(VENV, 'bin', 'mlflow')

function installed() {
  try {
    const probe = `import importlib.metadata as m; print(m.version('mlflow'), m.version('prometheus-client'))`
    return execFileSync(PYTHON, ['-c', probe], { stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim() === `${VERSION} ${PROMETHEUS_CLIENT}`
  } catch {
    return false
  }
}

function ensureInstalled() {
  if (installed()) return BIN
  execFileSync('python3', ['-m', 'venv', VENV], { stdio: 'inherit' })
  execFileSync(path.join(VENV, 'bin', 'pip'), ['install', '--quiet', '--disable-pip-version-check', `mlflow==${VERSION}`, `prometheus-client==${PROMETHEUS_CLIENT}`], { stdio: 'inherit' })
  if (!installed()) throw new Error(`mlflow ${VERSION} did not install into ${VENV}`)
  return BIN
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

async function startServer({ timeoutMs = 120_000 } = {}) {
  const bin = ensureInstalled()
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlops-mlflow-'))
  const port = await freePort()
  const log = fs.openSync(path.join(dir, 'server.log'), 'w')
  const child = spawn(bin, ['server', '--host', '127.0.0.1', '--port', String(port), '--workers', '1', '--backend-store-uri', `sqlite:///${path.join(dir, 'mlflow.db')}`, '--artifacts-destination', path.join(dir, 'artifacts')], {
    cwd: dir,
    detached: true, // its own process group, so stop() reaches the workers too
    stdio: ['ignore', log, log],
  })
  fs.closeSync(log)
  let exited = false
  child.on('exit', () => {
    exited = true
  })
  const url = `http://127.0.0.1:${port}`
  const stop = () => {
    try {
      process.kill(-child.pid, 'SIGKILL')
    } catch {
      // already gone
    }
    fs.rmSync(dir, { recursive: true, force: true })
  }
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    if (exited) break
    try {
      const r = await fetch(`${url}/health`, { signal: AbortSignal.timeout(1000) })
      if (r.ok) return { url, stop, dir }
    } catch {
      // not up yet
    }
    await new Promise((r) => setTimeout(r, 250))
  }
  const tail = fs.existsSync(path.join(dir, 'server.log')) ? fs.readFileSync(path.join(dir, 'server.log'), 'utf8').slice(-2000) : ''
  stop()
  throw new Error(`mlflow server did not come up on ${url}${exited ? ' (it exited)' : ''}:\n${tail}`)
}

/**
 * Parses the Prometheus text exposition format with the official Python client's parser
 * (`prometheus_client.parser`), which refuses malformed input. Returns families as
 * `{name: {type, samples: [{name, labels, value}]}}`.
 */
function parsePrometheus(text) {
  ensureInstalled()
  const script = [
    'import json, sys',
    'from prometheus_client.parser import text_string_to_metric_families',
    'out = {}',
    'for f in text_string_to_metric_families(sys.stdin.read()):',
    '    out[f.name] = {"type": f.type, "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples]}',
    'print(json.dumps(out))',
  ].join('\n')
  return JSON.parse(execFileSync(PYTHON, ['-c', script], { input: text }).toString())
}

module.exports = { ensureInstalled, startServer, parsePrometheus, VENV }

if (require.main === module && process.argv.includes('--install')) {
  console.log(`mlflow ${VERSION} in ${path.relative(process.cwd(), ensureInstalled()) || BIN}`)
}
