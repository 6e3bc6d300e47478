'use strict'
// Fails when the committed index.js / index.d.ts differ from what `napi build` generated
// (npm install/ci runs the build through `prepare`, so by now they are fresh). A changed
// Rust API with stale declarations would otherwise ship types that lie.
const { execFileSync } = require('node:child_process')
const path = require('node:path')

const root = path.join(__dirname, '..')
const files = ['index.js', 'index.d.ts']
try {
  execFileSync('git', ['rev-parse', '--is-inside-work-tree'], { cwd: root, stdio: 'ignore' })
} catch {
  console.log('check-generated: not a git checkout, skipped')
  process.exit(0)
}
try {
  execFileSync('git', ['diff', '--exit-code', '--', ...files], { cwd: root, stdio: 'inherit' })
  const untracked = execFileSync('git', ['ls-files', '--others', '--exclude-standard', '--', ...files], { cwd: root }).toString().trim()
  if (untracked) throw new Error(`not committed: ${untracked}`)
} catch (e) {
  console.error(`check-generated: the generated ${files.join(' / ')} differ from the committed ones.`)
  console.error('Run `npm run build` and commit them.', e.message || '')
  process.exit(1)
}
console.log('check-generated: index.js and index.d.ts match the build')
