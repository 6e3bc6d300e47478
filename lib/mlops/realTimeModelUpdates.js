'use strict'
// Drop-in for the old lib/mlops/realTimeModelUpdates.js: same exports, native implementation.
const { RealTimeModelUpdates, getRealTimeModelUpdates } = require('../../mlops.js')

module.exports = { RealTimeModelUpdates, getRealTimeModelUpdates }
