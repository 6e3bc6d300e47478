'use strict'
// An independent reader of the feedback log (src/core/stream.rs writes it), for the crash
// and durability tests: same rules, written separately, so the tests check the format
// rather than the code against itself.
//
// Records: one JSON object per line, `{"seq":…,…,"crc":"xxxxxxxx"}\n`, the CRC-32C over the
// bytes before `,"crc":"`. Files `feedback-<n>[-k].crc.jsonl`; old files
// `feedback-<n>.jsonl` are plain JSON lines. A last line without its newline is torn.

const fs = require('node:fs')
const path = require('node:path')

const TABLE = new Uint32Array(256)
for (let i = 0; i < 256; i++) {
  let c = i
  for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1
  TABLE[i] = c >>> 0
}
function crc32c(buf, start = 0, end = buf.length) {
  let c = 0xffffffff
  for (let i = start; i < end; i++) c = TABLE[(c ^ buf[i]) & 0xff] ^ (c >>> 8)
  return (c ^ 0xffffffff) >>> 0
}

const SUFFIX = Buffer.from(',"crc":"')
const TAIL = SUFFIX.length + 8 + 2

function recordOk(line) {
  if (line.length <= TAIL || line[line.length - 2] !== 0x22 || line[line.length - 1] !== 0x7d) return false
  const body = line.length - TAIL
  if (!line.subarray(body, body + SUFFIX.length).equals(SUFFIX)) return false
  const hex = line.subarray(body + SUFFIX.length, line.length - 2).toString('latin1')
  if (!/^[0-9a-f]{8}$/.test(hex)) return false
  return crc32c(line, 0, body) === parseInt(hex, 16)
}

function fileInfo(name) {
  const m = /^feedback-(\d+)(-\d+)?\.(crc\.)?jsonl$/.exec(name)
  if (!m) return null
  if (!m[3] && m[2]) return null
  return { start: Number(m[1]), checksummed: Boolean(m[3]) }
}

/** Every good record, and what was skipped, in a log folder. */
function readLog(dir) {
  const out = { records: [], corrupt: 0, torn: 0, maxSeq: 0, files: 0 }
  let names = []
  try {
    names = fs.readdirSync(dir)
  } catch {
    return out
  }
  for (const name of names) {
    const info = fileInfo(name)
    const p = path.join(dir, name)
    if (!info || !fs.statSync(p).isFile()) continue
    const bytes = fs.readFileSync(p)
    if (bytes.length === 0) continue // removed at start: carries nothing
    out.files++
    out.maxSeq = Math.max(out.maxSeq, info.start - 1)
    let pos = 0
    while (pos < bytes.length) {
      const nl = bytes.indexOf(0x0a, pos)
      const line = bytes.subarray(pos, nl < 0 ? bytes.length : nl)
      pos = nl < 0 ? bytes.length : nl + 1
      if (line.every((b) => b === 0x20 || b === 0x09 || b === 0x0d || b === 0x0a || b === 0x0c)) continue
      if (nl < 0) {
        out.torn++
        continue
      }
      let r = null
      if (!info.checksummed || recordOk(line)) {
        try {
          r = JSON.parse(line.toString('utf8'))
        } catch {}
      }
      const ok = r && Number.isInteger(r.seq) && r.seq >= 0 && Array.isArray(r.features) && typeof r.prediction === 'number' && typeof r.actual === 'number' && typeof r.t === 'number'
      if (!ok) {
        out.corrupt++
        continue
      }
      out.records.push(r)
      out.maxSeq = Math.max(out.maxSeq, r.seq)
    }
  }
  return out
}

function readWatermark(dir) {
  try {
    const w = JSON.parse(fs.readFileSync(path.join(dir, 'watermark.json'), 'utf8'))
    return { processedSeq: Number(w.processedSeq) || 0, highWaterSeq: Number(w.highWaterSeq) || 0 }
  } catch {
    return { processedSeq: 0, highWaterSeq: 0 }
  }
}

/** How many records a start on this folder should replay (the stream's rule). */
function expectedReplay(dir) {
  const log = readLog(dir)
  let after = readWatermark(dir).processedSeq
  if (after > log.maxSeq) after = 0 // a watermark ahead of the log: everything replays
  return log.records.filter((r) => r.seq > after).length
}

module.exports = { crc32c, readLog, readWatermark, expectedReplay, recordOk }
