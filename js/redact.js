'use strict'
// Secrets never leave through errors, logs, statistics or metrics: connection strings lose
// their password (`postgres://user:secret@host` → `postgres://user:***@host`), and
// `password=…` / `token=…` style key-value pairs lose their value.

const URL_CREDENTIALS = /([a-z][a-z0-9+.-]*:\/\/?[^\s:/@]*:)([^\s@/]*)@/gi
const KEY_VALUE = /\b(password|passwd|pwd|token|secret|api[_-]?key|access[_-]?key)(\s*[=:]\s*)("[^"]*"|'[^']*'|[^\s&;,]+)/gi

function redact(text) {
  if (typeof text !== 'string') return text
  return text.replace(URL_CREDENTIALS, '$1***@').replace(KEY_VALUE, '$1$2***')
}

module.exports = { redact }
