#!/usr/bin/env node
'use strict'
// npm run fine-tune -- [model-path] [--data FILE] [--epochs N] [--lr X] [--seed N]
//                      [--optimizer adam|sgd|ridge] [--promote] [--min-improvement X] [--json]
//                      [--model linear|gbm|random_forest|extra_trees|auto] [--trees N]
//                      [--max-depth N] [--confidence X] [--strict]
//
// Fine-tunes a base model (default models/quality-predictor-v3-advanced.json) on
// production rows (default data/production-sample.jsonl), shows a progress bar per epoch,
// base vs fine-tuned metrics on the same held-out rows, the version written and whether
// it was accepted. Exit code 0 on success, 1 with a one-line reason on failure.
// --model picks the family (default: the base file's); `auto` fits every family, prints
// each candidate's held-out metrics and fit time, then the winner.
// --data reads JSONL (one {features, quality} per line) or CSV (feature columns, then
// quality last; a header line is skipped).

const fs = require('node:fs')
const path = require('node:path')
const { parseArgs } = require('node:util')
const { ModelFineTuning } = require('../lib/mlops/modelFineTuning')

const root = path.join(__dirname, '..')

function fail(msg) {
  console.error(`fine-tune: ${msg}`)
  process.exit(1)
}

function parseCli() {
  try {
    return parseArgs({
      allowPositionals: true,
      options: {
        data: { type: 'string' },
        epochs: { type: 'string' },
        lr: { type: 'string' },
        seed: { type: 'string' },
        optimizer: { type: 'string' },
        'min-improvement': { type: 'string' },
        model: { type: 'string' },
        trees: { type: 'string' },
        'max-depth': { type: 'string' },
        confidence: { type: 'string' },
        strict: { type: 'boolean', default: false },
        promote: { type: 'boolean', default: false },
        json: { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
      },
    })
  } catch (e) {
    fail(e.message)
  }
}

function num(s, name, integer) {
  const x = Number(s)
  if (s === undefined) return undefined
  if (!Number.isFinite(x) || (integer && !Number.isInteger(x))) fail(`--${name} must be ${integer ? 'an integer' : 'a number'}, got ${s}`)
  return x
}

function readRows(file) {
  let text
  try {
    text = fs.readFileSync(file, 'utf8')
  } catch (e) {
    fail(`cannot read ${file}: ${e.code || e.message}`)
  }
  const lines = text.split(/\r?\n/).filter((l) => l.trim() !== '')
  if (lines.length === 0) fail(`${file} holds no rows`)
  if (lines[0].trim().startsWith('{')) {
    return lines.map((l, i) => {
      let r
      try {
        r = JSON.parse(l)
      } catch {
        fail(`${file}:${i + 1}: not valid JSON`)
      }
      // Feedback-log records ({features, actual}) read as rows too.
      if (r && r.quality === undefined && typeof r.actual === 'number') r.quality = r.actual
      return r
    })
  }
  const rows = []
  lines.forEach((l, i) => {
    const cells = l.split(',').map((c) => c.trim())
    const nums = cells.map(Number)
    if (nums.some((x) => !Number.isFinite(x))) {
      if (i === 0) return // header
      fail(`${file}:${i + 1}: not a row of numbers`)
    }
    if (nums.length < 2) fail(`${file}:${i + 1}: needs at least one feature and a quality column`)
    rows.push({ features: nums.slice(0, -1), quality: nums[nums.length - 1] })
  })
  return rows
}

function bar(done, total, width = 24) {
  const n = Math.round((done / total) * width)
  return '[' + '#'.repeat(n) + '-'.repeat(width - n) + ']'
}

async function main() {
  const { values: a, positionals } = parseCli()
  if (a.help) {
    console.log('usage: npm run fine-tune -- [model-path] [--data FILE] [--epochs N] [--lr X] [--seed N] [--optimizer adam|sgd|ridge] [--model linear|gbm|random_forest|extra_trees|auto] [--trees N] [--max-depth N] [--confidence X] [--strict] [--promote] [--min-improvement X] [--json]')
    return
  }
  const modelPath = path.resolve(positionals[0] ?? path.join(root, 'models', 'quality-predictor-v3-advanced.json'))
  const dataPath = path.resolve(a.data ?? path.join(root, 'data', 'production-sample.jsonl'))
  const rows = readRows(dataPath)
  const ft = new ModelFineTuning({ modelsDir: path.dirname(modelPath) })
  if (!(await ft.initialize())) fail(`cannot create ${ft.fineTunedDir}`)
  const options = {
    epochs: num(a.epochs, 'epochs', true),
    learningRate: num(a.lr, 'lr', false),
    seed: num(a.seed, 'seed', true),
    optimizer: a.optimizer,
    minImprovement: num(a['min-improvement'], 'min-improvement', false),
    model: a.model,
    trees: num(a.trees, 'trees', true),
    maxDepth: num(a['max-depth'], 'max-depth', true),
    confidence: num(a.confidence, 'confidence', false),
    strict: a.strict || undefined,
    promote: a.promote,
    onProgress: a.json
      ? undefined
      : (p) => {
          const line = `epoch ${String(p.epoch).padStart(3)}/${p.epochs} ${bar(p.epoch, p.epochs)} train ${p.trainLoss.toFixed(4)}  val ${p.valLoss.toFixed(4)}`
          if (process.stdout.isTTY) process.stdout.write(`\r${line}`)
          else console.log(line)
        },
  }
  for (const k of Object.keys(options)) if (options[k] === undefined) delete options[k]
  if (!a.json) console.log(`fine-tuning ${path.relative(process.cwd(), modelPath)} on ${rows.length} rows from ${path.relative(process.cwd(), dataPath)}`)
  const r = await ft.fineTuneModel(modelPath, rows, options)
  if (process.stdout.isTTY && !a.json) process.stdout.write('\n')
  if (!r.success) fail(r.error)
  if (a.json) {
    console.log(JSON.stringify(r, null, 2))
    return
  }
  const f = (x) => x.toFixed(4)
  if (r.skipped.count > 0) {
    console.log(`\nskipped ${r.skipped.count} unusable rows: ${Object.entries(r.skipped.reasons).map(([k, n]) => `${n} ${k}`).join(', ')}`)
  }
  if (r.candidates.length > 1) {
    console.log(`\ncandidates (chosen on ${r.samples.validation} validation rows; scored on ${r.samples.test} held-out test rows):`)
    console.log(`  ${'family'.padEnd(14)} ${'MSE'.padStart(8)} ${'MAE'.padStart(8)} ${'R²'.padStart(8)} ${'fit ms'.padStart(9)}`)
    for (const c of r.candidates) {
      const t = c.testMetrics
      console.log(`  ${c.family.padEnd(14)} ${f(t.mse).padStart(8)} ${f(t.mae).padStart(8)} ${f(t.r2).padStart(8)} ${c.trainMs.toFixed(0).padStart(9)}`)
    }
    console.log(`winner: ${r.family}${r.reason === 'no change' ? ' (none beat the base on validation: base kept)' : ''}`)
  }
  console.log(`\n            ${'MSE'.padStart(8)} ${'MAE'.padStart(8)} ${'R²'.padStart(8)}   (${r.samples.test} held-out test rows)`)
  console.log(`base        ${f(r.baseMetrics.mse).padStart(8)} ${f(r.baseMetrics.mae).padStart(8)} ${f(r.baseMetrics.r2).padStart(8)}   (${r.baseFamily})`)
  console.log(`fine-tuned  ${f(r.metrics.mse).padStart(8)} ${f(r.metrics.mae).padStart(8)} ${f(r.metrics.r2).padStart(8)}   (${r.family})`)
  const epochs = r.family === 'linear' ? `, best epoch ${r.bestEpoch} of ${r.epochs.length} run` : ''
  console.log(`\nimprovement ${(100 * r.improvement).toFixed(1)}% (relative MSE), paired t ${r.statistic.toPrecision(4)}, p ${r.pValue.toPrecision(3)} (accept below ${(1 - r.confidence).toFixed(2)})${epochs}, ${r.durationMs.toFixed(0)} ms`)
  const verdict = r.accepted ? 'accepted' : `NOT accepted (${r.reason})`
  if (r.saved) console.log(`${verdict}: version ${r.version} written to ${path.relative(process.cwd(), r.modelPath)} (status ${r.status})`)
  else console.log(`${verdict}: no version written`)
}

main().catch((e) => fail(e.message))
