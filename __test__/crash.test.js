'use strict'
// A quick pass of the SIGKILL crash test (npm run test:crash runs 20 rounds of each and 40
// randomized log-fault rounds).
const test = require('node:test')
const assert = require('node:assert/strict')
const path = require('node:path')
const { execFile } = require('node:child_process')

test('after SIGKILLs mid-write, size limits and damaged log copies: models and manifests readable, no version reused, no acknowledged feedback lost', async () => {
  const out = await new Promise((resolve, reject) =>
    execFile(process.execPath, [path.join(__dirname, '..', 'scripts', 'crash-test.js'), '--kills', '2', '--faults', '6', '--quiet', '--seed', String(Date.now() % 1000)], { timeout: 180_000 }, (err, stdout, stderr) =>
      err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout),
    ),
  )
  const r = JSON.parse(out.trim().split('\n').pop())
  assert.equal(r.feedback.lost, 0)
  assert.ok(r.feedback.acknowledged > 0)
  assert.ok(r.fineTuning.kills >= 2)
  assert.ok(r.fineTuning.versions >= r.fineTuning.reported)
  // The randomized log-fault pass: kills, size limits, damaged copies.
  assert.equal(r.faults.lost, 0)
  assert.equal(r.faults.duplicates, 0)
  assert.equal(r.faults.falseButLogged, 0)
  assert.ok(r.faults.acknowledged > 0 && r.faults.kills >= 5)
})
