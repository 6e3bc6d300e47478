'use strict'
// Drop-in for the old lib/mlops/advancedEnsemble.js: same exports, native implementation.
const { AdvancedEnsemble, getAdvancedEnsemble } = require('../../mlops.js')

module.exports = { AdvancedEnsemble, getAdvancedEnsemble }
