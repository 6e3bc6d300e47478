#!/usr/bin/env node
'use strict'
// `npm run bench`: every speed target of the package, each as a median next to a plain-JS
// run of the same work in the same process. Not part of `npm test` (timings are not tests).
//   node scripts/bench/run.js [ensemble|finetune ...]   (default: all)

const suites = {
  ensemble: () => require('./ensemble.js').run(),
  'cardinality-ensemble': () => require('./cardinality-ensemble.js').run(),
  finetune: () => require('./finetune.js').run(),
  'model-predict': () => require('./finetune.js').runPredict(),
  online: () => require('./online.js').run(),
  predictions: () => require('./predictions.js').run(),
  'cardinality-predictions': () => require('./cardinality-predictions.js').run(),
  postgres: () => require('./postgres.js').run(),
  realtime: () => require('./realtime.js').run(),
  refit: () => require('./refit.js').run(),
  training: () => require('./training.js').run(),
}
const wanted = process.argv.slice(2).length ? process.argv.slice(2) : Object.keys(suites)

;(async () => {
  console.log(`# mlops-native bench (node ${process.version}, ${require('node:os').cpus().length} cores, rounds ${require('./harness.js').ROUNDS})`)
  for (const name of wanted) {
    if (!suites[name]) {
      console.error(`unknown suite ${name}; known: ${Object.keys(suites).join(', ')}`)
      process.exit(1)
    }
    await suites[name]()
  }
})()
