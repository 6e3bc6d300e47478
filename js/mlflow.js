'use strict'
// MLflow tracking and registry over its REST API 2.0, for fine-tune runs and registry versions.
//
// Enabled by `MLFLOW_TRACKING_URI` or the option `mlflow: { trackingUri, experiment }`.
// Everything here is best effort by design: MLflow being down, slow or refusing must never
// fail a fine-tune or a promotion, so every call has a timeout and every failure becomes a
// warning string (with credentials redacted) that the caller attaches to its result.
//
// Credentials follow MLflow's own client: `MLFLOW_TRACKING_TOKEN` (bearer) or
// `MLFLOW_TRACKING_USERNAME`/`MLFLOW_TRACKING_PASSWORD` (basic), or `token`/`username`/
// `password` in the option.

const fs = require('node:fs/promises')
const path = require('node:path')
const { redact } = require('./redact.js')

const DEFAULT_EXPERIMENT = 'mlops-native'
const DEFAULT_TIMEOUT_MS = 5000

class MlflowError extends Error {}

class MlflowClient {
  #base
  #headers
  #timeoutMs
  #experimentId = null

  constructor({ trackingUri, experiment = DEFAULT_EXPERIMENT, timeoutMs = DEFAULT_TIMEOUT_MS, token, username, password } = {}) {
    if (typeof trackingUri !== 'string' || !/^https?:\/\//i.test(trackingUri)) {
      throw new TypeError(`mlflow.trackingUri must be an http(s) URL, got ${typeof trackingUri === 'string' ? JSON.stringify(redact(trackingUri)) : typeof trackingUri}`)
    }
    if (typeof experiment !== 'string' || experiment === '') throw new TypeError('mlflow.experiment must be a non-empty string')
    if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) throw new RangeError(`mlflow.timeoutMs must be > 0, got ${timeoutMs}`)
    this.trackingUri = redact(trackingUri.replace(/\/+$/, ''))
    this.#base = `${trackingUri.replace(/\/+$/, '')}/api/2.0`
    this.experiment = experiment
    this.#timeoutMs = timeoutMs
    this.#headers = { 'content-type': 'application/json' }
    if (token) this.#headers.authorization = `Bearer ${token}`
    else if (username) this.#headers.authorization = `Basic ${Buffer.from(`${username}:${password || ''}`).toString('base64')}`
  }

  async #call(method, route, body, { raw = false, okCodes = [] } = {}) {
    let res
    try {
      res = await fetch(`${this.#base}${route}`, {
        method,
        headers: raw ? { ...this.#headers, 'content-type': 'application/octet-stream' } : this.#headers,
        body: body === undefined ? undefined : raw ? body : JSON.stringify(body),
        signal: AbortSignal.timeout(this.#timeoutMs),
      })
    } catch (e) {
      const why = e && e.name === 'TimeoutError' ? `no answer within ${this.#timeoutMs} ms` : (e && e.cause && e.cause.code) || (e && e.message) || String(e)
      throw new MlflowError(`${method} ${route}: ${why}`)
    }
    const text = await res.text()
    let json = {}
    try {
      json = text ? JSON.parse(text) : {}
    } catch {
      json = { message: text.slice(0, 200) }
    }
    if (!res.ok && !okCodes.includes(json.error_code)) {
      throw new MlflowError(`${method} ${route}: HTTP ${res.status} ${json.error_code || ''} ${json.message || ''}`.trim())
    }
    return json
  }

  async experimentId() {
    if (this.#experimentId) return this.#experimentId
    const found = await this.#call('GET', `/mlflow/experiments/get-by-name?experiment_name=${encodeURIComponent(this.experiment)}`, undefined, { okCodes: ['RESOURCE_DOES_NOT_EXIST'] })
    if (found.experiment) this.#experimentId = found.experiment.experiment_id
    else {
      const made = await this.#call('POST', '/mlflow/experiments/create', { name: this.experiment }, { okCodes: ['RESOURCE_ALREADY_EXISTS'] })
      this.#experimentId = made.experiment_id || (await this.#call('GET', `/mlflow/experiments/get-by-name?experiment_name=${encodeURIComponent(this.experiment)}`)).experiment.experiment_id
    }
    return this.#experimentId
  }

  /**
   * One fine-tune run: params, per-epoch losses, final metrics of base vs fine-tuned, the
   * model file as an artifact, and (when a version was written) a registered model version
   * tagged with the package's own version name. Resolves `{runId, experimentId, modelName,
   * modelVersion}`.
   */
  async logFineTune({ baseModel, result, params, modelFile }) {
    const experimentId = await this.experimentId()
    const stem = modelStem(baseModel)
    const start = Date.now() - Math.round(result.durationMs || 0)
    const created = await this.#call('POST', '/mlflow/runs/create', {
      experiment_id: experimentId,
      start_time: start,
      run_name: `${stem}${result.version ? `-${result.version}` : ''}`,
      tags: [
        { key: 'mlops_native.base_model', value: String(baseModel) },
        { key: 'mlops_native.version', value: String(result.version || '') },
        { key: 'mlops_native.accepted', value: String(Boolean(result.accepted)) },
      ],
    })
    const runId = created.run.info.run_id
    const artifactUri = created.run.info.artifact_uri
    const now = Date.now()
    const metrics = []
    for (const e of result.epochs || []) {
      if (Number.isFinite(e.trainLoss)) metrics.push({ key: 'train_loss', value: e.trainLoss, timestamp: now, step: e.epoch })
      if (Number.isFinite(e.valLoss)) metrics.push({ key: 'val_loss', value: e.valLoss, timestamp: now, step: e.epoch })
    }
    const finals = { ...prefixed('', result.metrics), ...prefixed('base_', result.baseMetrics), ...prefixed('test_', result.test && result.test.metrics) }
    if (Number.isFinite(result.improvement)) finals.improvement = result.improvement
    if (Number.isFinite(result.durationMs)) finals.duration_ms = result.durationMs
    for (const [key, value] of Object.entries(finals)) metrics.push({ key, value, timestamp: now, step: 0 })
    const paramList = Object.entries(params || {})
      .filter(([, v]) => v !== undefined && v !== null && typeof v !== 'function' && typeof v !== 'object')
      .map(([key, value]) => ({ key, value: String(value).slice(0, 6000) }))
    // log-batch takes at most 1000 metrics and 100 params per call.
    const batches = Math.max(Math.ceil(metrics.length / 1000), Math.ceil(paramList.length / 100), 1)
    for (let i = 0; i < batches; i++) {
      await this.#call('POST', '/mlflow/runs/log-batch', { run_id: runId, metrics: metrics.slice(i * 1000, (i + 1) * 1000), params: paramList.slice(i * 100, (i + 1) * 100) })
    }
    let modelVersion = null
    const modelName = stem
    if (modelFile) {
      const bytes = await fs.readFile(modelFile)
      const rel = `${artifactPath(artifactUri)}/model/${path.basename(modelFile)}`
      await this.#call('PUT', `/mlflow-artifacts/artifacts/${rel.split('/').map(encodeURIComponent).join('/')}`, bytes, { raw: true })
      if (result.version) {
        await this.#call('POST', '/mlflow/registered-models/create', { name: modelName }, { okCodes: ['RESOURCE_ALREADY_EXISTS'] })
        const mv = await this.#call('POST', '/mlflow/model-versions/create', {
          name: modelName,
          source: `${artifactUri}/model`,
          run_id: runId,
          tags: [{ key: 'mlops_native.version', value: String(result.version) }],
        })
        modelVersion = mv.model_version.version
      }
    }
    await this.#call('POST', '/mlflow/runs/update', { run_id: runId, status: 'FINISHED', end_time: Date.now() })
    return { runId, experimentId, modelName, modelVersion }
  }

  /** Points the alias `production` at the MLflow version registered for our `version`. */
  async setProduction(baseModel, version) {
    const modelName = modelStem(baseModel)
    const filter = encodeURIComponent(`name='${modelName.replace(/'/g, "\\'")}'`)
    const found = await this.#call('GET', `/mlflow/model-versions/search?filter=${filter}&max_results=1000`)
    const mv = (found.model_versions || []).find((v) => (v.tags || []).some((t) => t.key === 'mlops_native.version' && t.value === String(version)))
    if (!mv) throw new MlflowError(`no MLflow version of ${modelName} is tagged mlops_native.version=${version}`)
    await this.#call('POST', '/mlflow/registered-models/alias', { name: modelName, alias: 'production', version: mv.version })
    return { modelName, modelVersion: mv.version }
  }
}

function prefixed(prefix, m) {
  const o = {}
  if (!m || typeof m !== 'object') return o
  for (const k of ['mse', 'mae', 'r2']) if (Number.isFinite(m[k])) o[`${prefix}${k}`] = m[k]
  return o
}

function modelStem(baseModel) {
  return path.basename(String(baseModel || 'model')).replace(/\.json$/i, '') || 'model'
}

/** `mlflow-artifacts:/1/<run>/artifacts` → `1/<run>/artifacts` (the proxied artifact path). */
function artifactPath(uri) {
  const m = /^mlflow-artifacts:(?:\/\/[^/]*)?\/(.*)$/.exec(uri)
  if (!m) throw new MlflowError(`the run's artifact store (${redact(uri)}) is not served by the tracking server; start it with --serve-artifacts`)
  return m[1].replace(/\/+$/, '')
}

/**
 * The client for a class's options: `options.mlflow` (object, or `false` to turn it off
 * even when the environment sets a URI), else `MLFLOW_TRACKING_URI`. Throws a TypeError for
 * a malformed option (the constructor surfaces it), returns null when MLflow is not in use.
 */
function mlflowFrom(option) {
  if (option === false) return null
  const env = process.env
  if (option === undefined || option === null) {
    if (!env.MLFLOW_TRACKING_URI) return null
    option = {}
  }
  if (typeof option !== 'object' || Array.isArray(option)) throw new TypeError('options.mlflow must be an object ({trackingUri, experiment}) or false')
  return new MlflowClient({
    trackingUri: option.trackingUri ?? env.MLFLOW_TRACKING_URI,
    experiment: option.experiment ?? env.MLFLOW_EXPERIMENT_NAME ?? DEFAULT_EXPERIMENT,
    timeoutMs: option.timeoutMs ?? DEFAULT_TIMEOUT_MS,
    token: option.token ?? env.MLFLOW_TRACKING_TOKEN,
    username: option.username ?? env.MLFLOW_TRACKING_USERNAME,
    password: option.password ?? env.MLFLOW_TRACKING_PASSWORD,
  })
}

function warning(e) {
  return `mlflow: ${redact(e && e.message ? e.message : String(e))}`
}

module.exports = { MlflowClient, MlflowError, mlflowFrom, warning }
