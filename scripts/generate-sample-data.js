#!/usr/bin/env node
'use strict'
// Generates the bundled base model and sample production data (seeded, reproducible):
//   node scripts/generate-sample-data.js [--seed N] [--rows N]
//
// Each row is one LLM request with 8 features, in this order:
//   0 promptTokens (20-4000)     1 responseTokens (10-2000)   2 latencyMs (80-9000)
//   3 modelTier (1 small, 2 medium, 3 large)                 4 temperature (0-1.4)
//   5 cacheHit (0/1)             6 retries (0-3)              7 hourOfDay (0-23)
// and a quality score 0-10 that depends on them non-linearly (log response length,
// a temperature sweet spot near 0.6, latency and retry penalties) plus noise.
// "Old" data trained the base model; "new" data (what production sends now) has drifted:
// the large tier degraded, latency hurts more, and long prompts now help. So fine-tuning
// the base model on the new data has something real to gain.

const fs = require('node:fs')
const path = require('node:path')
const { parseArgs } = require('node:util')

const { values: args } = parseArgs({ options: { seed: { type: 'string', default: '20251231' }, rows: { type: 'string', default: '4000' } } })
let s = Number(args.seed) >>> 0
const u = () => ((s = (s * 1664525 + 1013904223) >>> 0) / 4294967296)
const normal = () => { let t = 0; for (let i = 0; i < 12; i++) t += u(); return t - 6 }

function request(drifted) {
  const tier = 1 + Math.floor(u() * 3)
  const prompt = Math.round(20 + 3980 * u() ** 2)
  const response = Math.round(10 + 1990 * u() ** 1.5)
  const latency = Math.round(80 + tier * 400 + response * (0.8 + tier * 0.6) * (0.6 + 0.8 * u()))
  const temperature = Math.round(1.4 * u() * 100) / 100
  const cacheHit = u() < 0.25 ? 1 : 0
  const retries = u() < 0.85 ? 0 : 1 + Math.floor(u() * 3)
  const hour = Math.floor(24 * u())
  let q = 3.2 + 1.1 * tier + 1.6 * Math.log1p(response / 100) / Math.log(21) - 2.2 * (temperature - 0.6) ** 2 -
    0.00018 * latency + 0.35 * cacheHit - 0.6 * retries + 0.1 * Math.sin((hour / 24) * 2 * Math.PI)
  if (drifted) q += -0.9 * (tier === 3) - 0.00022 * latency + 0.0003 * prompt - 0.3
  q += 0.45 * normal()
  return { features: [prompt, response, latency, tier, temperature, cacheHit, retries, hour], quality: Math.round(Math.min(10, Math.max(0, q)) * 100) / 100 }
}

/** Least squares with a tiny ridge on standardised features, folded back to raw weights. */
function fit(rows) {
  const d = rows[0].features.length
  const mean = Array(d).fill(0), sd = Array(d).fill(0)
  for (const r of rows) r.features.forEach((x, j) => (mean[j] += x / rows.length))
  for (const r of rows) r.features.forEach((x, j) => (sd[j] += (x - mean[j]) ** 2 / rows.length))
  for (let j = 0; j < d; j++) sd[j] = Math.sqrt(sd[j]) || 1
  const n = d + 1
  const A = Array.from({ length: n }, () => Array(n).fill(0)), b = Array(n).fill(0)
  for (const r of rows) {
    const z = [1, ...r.features.map((x, j) => (x - mean[j]) / sd[j])]
    for (let i = 0; i < n; i++) { b[i] += z[i] * r.quality; for (let k = 0; k < n; k++) A[i][k] += z[i] * z[k] }
  }
  for (let i = 1; i < n; i++) A[i][i] += 1e-6 * rows.length
  for (let c = 0; c < n; c++) { // Gauss-Jordan with partial pivoting
    let p = c
    for (let r = c + 1; r < n; r++) if (Math.abs(A[r][c]) > Math.abs(A[p][c])) p = r
    ;[A[c], A[p]] = [A[p], A[c]]; [b[c], b[p]] = [b[p], b[c]]
    for (let r = 0; r < n; r++) {
      if (r === c) continue
      const f = A[r][c] / A[c][c]
      for (let k = c; k < n; k++) A[r][k] -= f * A[c][k]
      b[r] -= f * b[c]
    }
  }
  const theta = b.map((x, i) => x / A[i][i])
  const weights = theta.slice(1).map((w, j) => w / sd[j])
  const bias = theta[0] - weights.reduce((a, w, j) => a + w * mean[j], 0)
  return { weights, bias }
}

const rows = Number(args.rows)
const old = Array.from({ length: rows }, () => request(false))
const fresh = Array.from({ length: rows }, () => request(true))
const { weights, bias } = fit(old)
const root = path.join(__dirname, '..')
const model = {
  name: 'quality-predictor-v3-advanced',
  description: 'Linear quality predictor (0-10) for LLM requests, trained on pre-drift traffic.',
  features: ['promptTokens', 'responseTokens', 'latencyMs', 'modelTier', 'temperature', 'cacheHit', 'retries', 'hourOfDay'],
  trainedOn: { rows, generator: 'scripts/generate-sample-data.js', seed: Number(args.seed) },
  weights: weights.map((w) => Number(w.toPrecision(10))),
  bias: Number(bias.toPrecision(10)),
}
fs.mkdirSync(path.join(root, 'models'), { recursive: true })
fs.mkdirSync(path.join(root, 'data'), { recursive: true })
fs.writeFileSync(path.join(root, 'models', 'quality-predictor-v3-advanced.json'), JSON.stringify(model, null, 2) + '\n')
fs.writeFileSync(path.join(root, 'data', 'production-sample.jsonl'), fresh.map((r) => JSON.stringify(r)).join('\n') + '\n')
console.log(`wrote models/quality-predictor-v3-advanced.json (fit on ${rows} pre-drift rows) and data/production-sample.jsonl (${rows} drifted rows)`)
