'use strict'
// Installing where there is no Rust: the two tarballs of `npm run package` go into a scratch
// project with no cargo on PATH, and the old module's own test script runs against them.
const test = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { execFileSync } = require('node:child_process')

const root = path.join(__dirname, '..')
const { main: packageMain } = require('../scripts/package.js')

test('npm run package tarballs install and run with no cargo on PATH', { timeout: 180_000 }, () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlops-pkg-'))
  const argv = process.argv
  try {
    process.argv = [argv[0], 'package.js', '--skip-build', '--out', path.join(dir, 'dist')]
    const { mainTgz, platTgz } = packageMain()
    process.argv = argv
    const app = path.join(dir, 'app')
    fs.mkdirSync(app)
    fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'scratch-service', version: '1.0.0', private: true }))
    // A PATH with node and npm but no Rust toolchain: any attempt to compile fails loudly.
    const bin = path.join(dir, 'bin')
    fs.mkdirSync(bin)
    for (const tool of ['node', 'npm', 'npx']) {
      const real = execFileSync('sh', ['-c', `command -v ${tool}`]).toString().trim()
      fs.symlinkSync(fs.realpathSync(real), path.join(bin, tool))
    }
    const env = { ...process.env, PATH: `${bin}:/usr/bin:/bin`, npm_config_fund: 'false', npm_config_audit: 'false' }
    assert.throws(() => execFileSync('sh', ['-c', 'command -v cargo'], { env, stdio: 'ignore' }), 'cargo must not be reachable in the scratch install')
    execFileSync('npm', ['install', '--no-save', '--prefer-offline', mainTgz, platTgz], { cwd: app, env, stdio: 'pipe' })
    const installed = path.join(app, 'node_modules')
    assert.ok(fs.existsSync(path.join(installed, 'mlops-native-linux-x64-gnu', 'mlops-native.linux-x64-gnu.node')), 'the platform package carries the addon')
    assert.deepEqual(fs.readdirSync(path.join(installed, 'mlops-native')).filter((f) => f.endsWith('.node')), [], 'the main package ships no binary of its own')
    // The old module's test script, pointed at the installed package instead of the repo.
    const script = fs.readFileSync(path.join(root, 'scripts', 'test-advanced-ensemble.js'), 'utf8').replace("require('../lib/mlops/advancedEnsemble')", "require('mlops-native/lib/mlops/advancedEnsemble')")
    fs.writeFileSync(path.join(app, 'test-advanced-ensemble.js'), script)
    const outText = execFileSync('node', ['test-advanced-ensemble.js', '--events', '1500'], { cwd: app, env }).toString()
    assert.match(outText, /stacking/i)
    // And the root entry loads every class from the installed copy.
    const keys = execFileSync('node', ['-e', "console.log(Object.keys(require('mlops-native')).join(','))"], { cwd: app, env }).toString()
    for (const k of ['AdvancedEnsemble', 'ModelFineTuning', 'RealTimeModelUpdates', 'ExpandedPredictions']) assert.ok(keys.includes(k), k)
  } finally {
    process.argv = argv
    fs.rmSync(dir, { recursive: true, force: true })
  }
})
