'use strict'
// MLflow tracking against a real tracking server that this test starts (mlflow from PyPI in
// the repo's own venv, SQLite backend, loopback), read back through the REST API.
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { ModelFineTuning } = require('..')
const { startServer } = require('../scripts/lib/mlflow-server.js')

const ROOT = path.join(__dirname, '..')
const BASE = 'quality-predictor-v3-advanced.json'
const rows = fs
  .readFileSync(path.join(ROOT, 'data', 'production-sample.jsonl'), 'utf8')
  .trim()
  .split('\n')
  .map((l) => JSON.parse(l))

async function api(url, route) {
  const r = await fetch(`${url}/api/2.0${route}`)
  assert.equal(r.status, 200, `${route}: HTTP ${r.status}`)
  return r.json()
}

test('every fine-tune run is an MLflow run; versions and the production alias follow the registry', { timeout: 600_000 }, async (t) => {
  const server = await startServer()
  t.after(() => server.stop())
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlops-mlflow-'))
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }))
  fs.copyFileSync(path.join(ROOT, 'models', BASE), path.join(dir, BASE))
  const ft = new ModelFineTuning({ modelsDir: dir, mlflow: { trackingUri: server.url, experiment: 'quality' } })

  const r = await ft.fineTuneModel(BASE, rows, { seed: 1, optimizer: 'adam', epochs: 8 })
  assert.equal(r.success, true, r.error)
  assert.equal(r.warnings, undefined, String(r.warnings))
  assert.ok(r.mlflow && r.mlflow.runId)

  const run = (await api(server.url, `/mlflow/runs/get?run_id=${r.mlflow.runId}`)).run
  assert.equal(run.info.status, 'FINISHED')
  const params = Object.fromEntries(run.data.params.map((p) => [p.key, p.value]))
  assert.equal(params.optimizer, 'adam')
  assert.equal(params.epochs, '8')
  const m = Object.fromEntries(run.data.metrics.map((x) => [x.key, x.value]))
  assert.ok(Math.abs(m.mse - r.metrics.mse) < 1e-9)
  assert.ok(Math.abs(m.base_mse - r.baseMetrics.mse) < 1e-9)
  assert.ok(m.mse < m.base_mse)
  const history = (await api(server.url, `/mlflow/metrics/get-history?run_id=${r.mlflow.runId}&metric_key=val_loss`)).metrics
  assert.equal(history.length, r.epochs.length, 'one val_loss point per epoch')
  const files = (await api(server.url, `/mlflow-artifacts/artifacts?path=${encodeURIComponent(`${r.mlflow.experimentId}/${r.mlflow.runId}/artifacts/model`)}`)).files
  assert.deepEqual(
    files.map((f) => f.path),
    [path.basename(r.modelPath)],
  )

  const versions = (await api(server.url, `/mlflow/model-versions/search?filter=${encodeURIComponent("name='quality-predictor-v3-advanced'")}`)).model_versions
  assert.equal(versions.length, 1)
  assert.ok(versions[0].tags.some((tag) => tag.key === 'mlops_native.version' && tag.value === r.version))

  // A second run, then promotions move the alias.
  const r2 = await ft.fineTuneModel(BASE, rows.slice(0, 3000), { seed: 2, optimizer: 'ridge', save: 'always' })
  assert.equal(r2.success, true, r2.error)
  await ft.promoteVersion(BASE, r.version)
  let alias = await api(server.url, `/mlflow/registered-models/alias?name=quality-predictor-v3-advanced&alias=production`)
  assert.equal(alias.model_version.version, r.mlflow.modelVersion)
  await ft.promoteVersion(BASE, r2.version)
  alias = await api(server.url, `/mlflow/registered-models/alias?name=quality-predictor-v3-advanced&alias=production`)
  assert.equal(alias.model_version.version, r2.mlflow.modelVersion)
  await ft.rollback(BASE)
  alias = await api(server.url, `/mlflow/registered-models/alias?name=quality-predictor-v3-advanced&alias=production`)
  assert.equal(alias.model_version.version, r.mlflow.modelVersion)
  assert.match(ft.metrics(), /mlops_finetune_mlflow_failures_total 0/)
})

test('MLflow down: the fine-tune still succeeds and carries a warning', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlops-mlflow-'))
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }))
  fs.copyFileSync(path.join(ROOT, 'models', BASE), path.join(dir, BASE))
  // A port nothing listens on (bound and closed just now).
  const port = await new Promise((resolve) => {
    const s = require('node:net').createServer()
    s.listen(0, '127.0.0.1', () => {
      const p = s.address().port
      s.close(() => resolve(p))
    })
  })
  const ft = new ModelFineTuning({ modelsDir: dir, mlflow: { trackingUri: `http://user:hunter2@127.0.0.1:${port}`, timeoutMs: 2000 } })
  const r = await ft.fineTuneModel(BASE, rows, { seed: 1 })
  assert.equal(r.success, true, r.error)
  assert.equal(r.warnings.length, 1)
  assert.match(r.warnings[0], /^mlflow: /)
  assert.doesNotMatch(r.warnings[0], /hunter2/)
  assert.match(ft.metrics(), /mlops_finetune_mlflow_failures_total 1/)
  assert.throws(() => new ModelFineTuning({ mlflow: { trackingUri: 'ftp://x' } }), /mlflow\.trackingUri/)
})
