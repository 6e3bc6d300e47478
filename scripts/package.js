#!/usr/bin/env node
'use strict'
// `npm run package`: the two tarballs a deployment without a Rust toolchain installs.
//
//   dist/mlops-native-<version>.tgz                 the JS layer, types, bundled model and data
//   dist/mlops-native-linux-x64-gnu-<version>.tgz   the compiled addon for this platform
//
// This follows napi-rs's convention: one npm package per platform (`npm/<platform>/`,
// made by `napi create-npm-dirs` from `napi.targets`), and the main package lists them all
// as `optionalDependencies`, so npm installs only the one whose `os`/`cpu`/`libc` match.
// The generated loader (`index.js`) tries a `.node` file beside itself first (a clone that
// was built) and then the platform package (an install from the registry or tarballs).
//
// The optionalDependencies are written into the packed copy of package.json only, not
// into the repository's: `npm ci` in a clone would otherwise look for platform packages
// that have not been published and refuse the lock file.
//
//   node scripts/package.js [--skip-build] [--out DIR]
const { execFileSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')
const { parseArgs } = require('node:util')

const root = path.join(__dirname, '..')

function platformDir(target) {
  // napi's own names: <os>-<arch>[-<abi>]
  const [arch, , os, abi] = target.split('-')
  const a = { x86_64: 'x64', aarch64: 'arm64', i686: 'ia32', armv7: 'arm' }[arch] || arch
  const o = { linux: 'linux', darwin: 'darwin', windows: 'win32' }[os] || os
  return abi && o !== 'darwin' ? `${o}-${a}-${abi}` : `${o}-${a}`
}

function localPlatform() {
  if (process.platform !== 'linux' || process.arch !== 'x64') return null
  const glibc = process.report && process.report.getReport().header.glibcVersionRuntime
  return glibc ? 'linux-x64-gnu' : 'linux-x64-musl'
}

function pack(dir, out) {
  const json = execFileSync('npm', ['pack', '--json', '--ignore-scripts', '--pack-destination', out], { cwd: dir, stdio: ['ignore', 'pipe', 'inherit'] }).toString()
  return path.join(out, JSON.parse(json)[0].filename)
}

function main() {
  const { values } = parseArgs({ options: { 'skip-build': { type: 'boolean' }, out: { type: 'string' } } })
  const out = path.resolve(values.out || path.join(root, 'dist'))
  const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'))
  const binary = pkg.napi.binaryName
  const platform = localPlatform()
  if (!platform) throw new Error(`no platform package is built on ${process.platform}-${process.arch} here`)
  const nodeFile = `${binary}.${platform}.node`

  if (!values['skip-build']) execFileSync('npx', ['napi', 'build', '--platform', '--release'], { cwd: root, stdio: 'inherit' })
  if (!fs.existsSync(path.join(root, nodeFile))) throw new Error(`${nodeFile} is missing: run \`npm run build\` first`)
  fs.mkdirSync(out, { recursive: true })

  // The platform package: its committed package.json plus the addon.
  const stage = fs.mkdtempSync(path.join(out, '.stage-'))
  try {
    const platStage = path.join(stage, platform)
    fs.mkdirSync(platStage)
    fs.copyFileSync(path.join(root, 'npm', platform, 'package.json'), path.join(platStage, 'package.json'))
    fs.copyFileSync(path.join(root, nodeFile), path.join(platStage, nodeFile))
    const platTgz = pack(platStage, out)

    // The main package: exactly what `files` selects, with a package.json for consumers.
    const mainStage = path.join(stage, 'main')
    const listed = JSON.parse(execFileSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: root, stdio: ['ignore', 'pipe', 'inherit'] }).toString())[0].files
    for (const f of listed) {
      if (f.path === 'package.json' || f.path.endsWith('.node')) continue
      fs.mkdirSync(path.dirname(path.join(mainStage, f.path)), { recursive: true })
      fs.copyFileSync(path.join(root, f.path), path.join(mainStage, f.path))
    }
    const shipped = { ...pkg }
    delete shipped.devDependencies
    delete shipped.private
    shipped.scripts = {} // no `prepare`: an install must never need cargo
    shipped.optionalDependencies = Object.fromEntries(pkg.napi.targets.map((t) => [`${pkg.name}-${platformDir(t)}`, pkg.version]))
    fs.writeFileSync(path.join(mainStage, 'package.json'), JSON.stringify(shipped, null, 2) + '\n')
    const mainTgz = pack(mainStage, out)
    console.log(mainTgz)
    console.log(platTgz)
    return { mainTgz, platTgz }
  } finally {
    fs.rmSync(stage, { recursive: true, force: true })
  }
}

if (require.main === module) {
  try {
    main()
  } catch (e) {
    console.error(`package: ${e.message}`)
    process.exit(1)
  }
}
module.exports = { main, platformDir }
