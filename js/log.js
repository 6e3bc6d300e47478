'use strict'
// The optional `logger` option: swaps, rejected updates, fine-tune results and failures go to
// the service's own logger with structured fields. Any object with info/warn/error (and
// optionally debug) fits: pino and bunyan (`logger.info(fields, msg)`), winston
// (`logger.info(msg, fields)`, detected by its `levels` table), console. Without it the
// package is silent. A logger that throws never breaks the call that logged.

const { redact } = require('./redact.js')

const SILENT = Object.freeze({ enabled: false, debug() {}, info() {}, warn() {}, error() {} })
const LEVELS = ['debug', 'info', 'warn', 'error']

function makeLog(logger, component) {
  if (logger === undefined || logger === null || logger === false) return SILENT
  if (typeof logger !== 'object' && typeof logger !== 'function') {
    throw new TypeError(`options.logger must be an object with info/warn/error methods (pino, winston, console), got ${typeof logger}`)
  }
  for (const level of ['info', 'warn', 'error']) {
    if (typeof logger[level] !== 'function') throw new TypeError(`options.logger.${level} must be a function`)
  }
  const winston = typeof logger.log === 'function' && logger.levels !== null && typeof logger.levels === 'object'
  const out = { enabled: true }
  for (const level of LEVELS) {
    const fn = typeof logger[level] === 'function' ? logger[level] : level === 'debug' ? null : logger.info
    out[level] = (msg, fields) => {
      if (!fn) return
      const f = { component, ...sanitize(fields) }
      try {
        if (winston) fn.call(logger, `${component}: ${redact(msg)}`, f)
        else fn.call(logger, f, `${component}: ${redact(msg)}`)
      } catch {
        // The service's logger failing is not the caller's problem.
      }
    }
  }
  return Object.freeze(out)
}

function sanitize(fields) {
  if (!fields || typeof fields !== 'object') return {}
  const o = {}
  for (const k of Object.keys(fields)) {
    const v = fields[k]
    o[k] = typeof v === 'string' ? redact(v) : v
  }
  return o
}

module.exports = { makeLog, SILENT }
