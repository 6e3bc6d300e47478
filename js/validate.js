'use strict'
// Argument checks shared by the JS layer. Every failure names the field the caller got
// wrong, as a TypeError (wrong type) or RangeError (right type, unusable value), before
// anything reaches Rust.

function describe(v) {
  if (v === null) return 'null'
  if (Array.isArray(v)) return 'an array'
  if (typeof v === 'number') return String(v)
  if (typeof v === 'string') return v.length <= 40 ? `the string ${JSON.stringify(v)}` : 'a string'
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

/**
 * Numeric strings: databases (node-postgres for NUMERIC/BIGINT columns, CSV imports) hand
 * numbers over as strings, and the old modules did arithmetic on them through JS coercion.
 * Accepted: a string whose trimmed form is a JS number literal in decimal or exponent
 * notation ('7.5', ' -1e3 ', '0'). Refused: '', whitespace, hex/octal/binary ('0x10'),
 * 'Infinity', 'NaN', and anything with trailing junk ('7.5abc'), because `Number()` would
 * turn some of those into surprising values and the rest into NaN.
 */
const NUMERIC_STRING = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/
function numberFrom(v) {
  if (typeof v === 'number') return v
  if (typeof v === 'string') {
    const t = v.trim()
    if (NUMERIC_STRING.test(t)) return Number(t)
  }
  return undefined
}

/** A finite number, or a numeric string (see `numberFrom`); returns the number. */
function finite(v, field) {
  const n = numberFrom(v)
  if (n === undefined) throw typeError(field, 'a number', v)
  if (!Number.isFinite(n)) throw rangeError(field, 'a finite number', v)
  return n
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
  // Model ids from a database are numbers: they become their decimal string (101 → '101').
  if (typeof v === 'number') {
    if (!Number.isFinite(v)) throw rangeError(field, 'a string or a finite number', v)
    return String(v)
  }
  if (typeof v === 'bigint') return String(v)
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
    let v = prop(o, key, `${field}.${key}`)
    if (v === undefined || v === null) continue
    const name = `${field}.${key}`
    v = finite(v, name)
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

/**
 * An array (or typed array) of finite numbers. Returned as-is when every element already is
 * a number; when some are numeric strings, a new array of the converted numbers is returned
 * (callers must use the return value).
 */
function finiteArray(v, field, { allowEmpty = true } = {}) {
  const isTyped = ArrayBuffer.isView(v) && !(v instanceof DataView)
  if (!Array.isArray(v) && !isTyped) throw typeError(field, 'an array of numbers', v)
  if (!allowEmpty && v.length === 0) throw new RangeError(`${field} must not be empty`)
  if (isTyped) {
    for (let i = 0; i < v.length; i++) if (!Number.isFinite(v[i])) throw rangeError(`${field}[${i}]`, 'a finite number', v[i])
    return v
  }
  let out = v
  for (let i = 0; i < v.length; i++) {
    const x = prop(v, i, `${field}[${i}]`)
    if (typeof x === 'number') {
      if (!Number.isFinite(x)) throw rangeError(`${field}[${i}]`, 'a finite number', x)
      if (out !== v) out[i] = x
      continue
    }
    const n = finite(x, `${field}[${i}]`)
    if (out === v) out = Array.prototype.slice.call(v, 0, i)
    out[i] = n
  }
  return out
}

/**
 * A prediction as the services' feedback loops send it: a number (or numeric string), or an
 * object carrying one in `predictedQuality`, `quality`, `prediction` or `value` (the first
 * present, in that order). `x.predictedQuality || x.quality || x` yields the whole object
 * when the predicted quality is 0, so the object form is a real call, not a curiosity.
 */
const PREDICTION_KEYS = ['predictedQuality', 'quality', 'prediction', 'value']
function predictionValue(v, field) {
  if (v !== null && typeof v === 'object' && !Array.isArray(v) && !ArrayBuffer.isView(v)) {
    for (const key of PREDICTION_KEYS) {
      const x = prop(v, key, `${field}.${key}`)
      if (x !== undefined && x !== null) return finite(x, `${field}.${key}`)
    }
    throw typeError(field, `a number or an object with one of ${PREDICTION_KEYS.join(', ')}`, v)
  }
  return finite(v, field)
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
  numberFrom,
  predictionValue,
  PREDICTION_KEYS,
  optionalObject,
  optionalString,
  optionalName,
  MAX_NAME,
  optionalBoolean,
  numericOptions,
  finiteArray,
  float64Array,
}
