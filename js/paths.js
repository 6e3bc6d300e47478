'use strict'
// Where the models folder is when the caller does not say.
//
// The old modules wrote to `<code base>/models` whatever the working directory was, so a
// script started from `scripts/` or a service started from another folder still found its
// base model. The equivalent for a package used from many projects: `MLOPS_MODELS_DIR` if
// set, else `<project root>/models`, where the project root is the nearest ancestor of the
// working directory that holds a `package.json` (the working directory itself when none
// does).

const fs = require('node:fs')
const path = require('node:path')

function projectRoot(start = process.cwd()) {
  let dir = path.resolve(start)
  for (;;) {
    try {
      if (fs.statSync(path.join(dir, 'package.json')).isFile()) return dir
    } catch {
      // not here: keep walking up
    }
    const parent = path.dirname(dir)
    if (parent === dir) return path.resolve(start)
    dir = parent
  }
}

/** The folder used when no `modelsDir` option is given (resolved on every construction). */
function defaultModelsDir() {
  const env = process.env.MLOPS_MODELS_DIR
  if (typeof env === 'string' && env.trim() !== '') return path.resolve(env)
  return path.join(projectRoot(), 'models')
}

module.exports = { projectRoot, defaultModelsDir }
