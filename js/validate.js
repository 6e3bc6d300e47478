'use strict'
// Argument checks shared by the JS layer. Every failure names the field the caller got
// wrong, as a TypeError (wrong type) or RangeError (right type, unusable value), before
// anything reaches Rust.

function describe(v) {
  if (v === null) return 'null'
  if (Array.isArray(v)) return 'an array'
  if (typeof v === 'number') return String(v)
  return typeof v
}

function typeError(field, expected, got) {
  return new TypeError(`${field} must be ${expected}, got ${describe(got)}`)
}

function rangeError(field, expected, got) {
  return new RangeError(`${field} must be ${expected}, got ${describe(got)}`)
}

/**
 * Reads `o[key]`; a getter or Proxy trap that throws becomes a TypeError naming the field
 * instead of escaping as whatever the caller's code threw.
 */
function prop(o, key, field) {
  try {
    return o[key]
  } catch (e) {
    throw new TypeError(`${field} could not be read: ${e && e.message ? e.message : String(e)}`)
  }
}

/**
 * Runs `fn`; any error that is not already a TypeError/RangeError (a throwing getter deep
 * in a caller's value) becomes a TypeError naming `field`.
 */
function reading(field, fn) {
  try {
    return fn()
  } catch (e) {
    if (e instanceof TypeError || e instanceof RangeError) throw e
    throw new TypeError(`${field} could not be read: ${e && e.message ? e.message : String(e)}`)
  }
}

/** A finite number. */
function finite(v, field) {
  if (typeof v !== 'number') throw typeError(field, 'a number', v)
  if (!Number.isFinite(v)) throw rangeError(field, 'a finite number', v)
  return v
}

/** undefined/null → undefined; otherwise an object (not an array). */
function optionalObject(v, field) {
  if (v === undefined || v === null) return undefined
  if (typeof v !== 'object' || Array.isArray(v)) throw typeError(field, 'an object', v)
  return v
}

/** undefined/null → fallback; otherwise a string. */
function optionalString(v, field, fallback = '') {
  if (v === undefined || v === null) return fallback
  if (typeof v !== 'string') throw typeError(field, 'a string', v)
  return v
}

/**
 * Names the learners keep forever (model, service, provider, prediction type) are capped,
 * so hostile or accidental values (a request id, a whole prompt) cannot grow memory and
 * saved state without bound.
 */
const MAX_NAME = 256
function optionalName(v, field, fallback = '') {
  const s = optionalString(v, field, fallback)
  if (s.length > MAX_NAME) throw new RangeError(`${field} must be at most ${MAX_NAME} characters, got ${s.length}`)
  return s
}

function optionalBoolean(v, field, fallback = false) {
  if (v === undefined || v === null) return fallback
  if (typeof v !== 'boolean') throw typeError(field, 'a boolean', v)
  return v
}

/**
 * Reads numeric options against a spec `{key: {min, max, integer, minExclusive}}` into a
 * clean object of only the keys given, so Rust receives exactly the types it declares.
 */
function numericOptions(options, spec, field = 'options') {
  const o = optionalObject(options, field)
  const out = {}
  if (!o) return out
  for (const key of Object.keys(spec)) {
    const v = prop(o, key, `${field}.${key}`)
    if (v === undefined || v === null) continue
    const name = `${field}.${key}`
    finite(v, name)
    const s = spec[key]
    if (s.integer && !Number.isInteger(v)) throw rangeError(name, 'an integer', v)
    if (s.min !== undefined && (s.minExclusive ? v <= s.min : v < s.min)) {
      throw rangeError(name, `${s.minExclusive ? '>' : '≥'} ${s.min}`, v)
    }
    if (s.max !== undefined && v > s.max) throw rangeError(name, `≤ ${s.max}`, v)
    out[key] = v
  }
  return out
}

/** An array (or typed array) of finite numbers, returned as-is. */
function finiteArray(v, field, { allowEmpty = true } = {}) {
  const isTyped = ArrayBuffer.isView(v) && !(v instanceof DataView)
  if (!Array.isArray(v) && !isTyped) throw typeError(field, 'an array of numbers', v)
  if (!allowEmpty && v.length === 0) throw new RangeError(`${field} must not be empty`)
  for (let i = 0; i < v.length; i++) {
    const x = isTyped ? v[i] : prop(v, i, `${field}[${i}]`)
    if (typeof x !== 'number') throw typeError(`${field}[${i}]`, 'a number', x)
    if (!Number.isFinite(x)) throw rangeError(`${field}[${i}]`, 'a finite number', x)
  }
  return v
}

function float64Array(v, field) {
  if (!(v instanceof Float64Array)) throw typeError(field, 'a Float64Array', v)
  return v
}

/**
 * saveState/loadState of the native classes: a path that is not a string is a rejected
 * Promise (a TypeError), and a synchronous failure becomes a rejection too.
 */
function stateFile(path, op) {
  if (typeof path !== 'string') return Promise.reject(typeError('path', 'a string', path))
  try {
    return op(path)
  } catch (e) {
    return Promise.reject(e)
  }
}

module.exports = {
  stateFile,
  prop,
  reading,
  typeError,
  rangeError,
  finite,
  optionalObject,
  optionalString,
  optionalName,
  MAX_NAME,
  optionalBoolean,
  numericOptions,
  finiteArray,
  float64Array,
}
