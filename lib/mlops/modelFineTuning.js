'use strict'
// Drop-in for the old lib/mlops/modelFineTuning.js: same exports, native implementation.
const { ModelFineTuning, getModelFineTuning } = require('../../mlops.js')

module.exports = { ModelFineTuning, getModelFineTuning }
