'use strict'
// Drop-in for the old lib/mlops/expandedPredictions.js: same exports, native implementation.
const { ExpandedPredictions, getExpandedPredictions } = require('../../mlops.js')

module.exports = { ExpandedPredictions, getExpandedPredictions }
