// Follows one shape with the official @electric-sql/client and reports its
// materialised state as JSON lines on stdout (see README.md in this folder).
//
// Usage: node follow_shape.mjs '<json config>'
//   {"url": "http://127.0.0.1:PORT/v1/shape", "table": "items",
//    "where": "...", "params": {"1": "x"}, "columns": ["id", "title"],
//    "replica": "full", "liveSse": false, "subscribe": true, "reportTypes": false}
//
// Output lines (one JSON object each):
//   {"type":"hello","clientVersion":"1.5.x","config":{...}}
//   {"type":"state","rows":{key: row},"offset":"...","handle":"...","isUpToDate":true}
//       (with "types":{key:{column: js type}} when reportTypes is set)
//   {"type":"must-refetch"}
//   {"type":"error","message":...,"status":...,"json":...,"name":...,"transient":bool,"fatal":bool}
//   {"type":"exit","reason":...}

import { readFileSync } from 'node:fs'
import { FetchError, Shape, ShapeStream } from '@electric-sql/client'

const EMIT_INTERVAL_MS = 100

function clientVersion() {
  try {
    const url = new URL('./node_modules/@electric-sql/client/package.json', import.meta.url)
    return JSON.parse(readFileSync(url, 'utf8')).version
  } catch {
    return null
  }
}

// JSON.stringify replacer: BigInt (int8) and non-finite numbers become strings,
// other values JSON cannot represent are stringified too. Dates are already
// strings here because JSON.stringify calls toJSON before the replacer.
function replacer(_key, value) {
  switch (typeof value) {
    case 'bigint':
      return value.toString()
    case 'number':
      return Number.isFinite(value) ? value : String(value)
    case 'symbol':
    case 'function':
      return String(value)
    default:
      if (value instanceof Map) return Object.fromEntries(value)
      if (value instanceof Set) return Array.from(value)
      if (ArrayBuffer.isView(value)) return Array.from(value)
      return value
  }
}

function jsType(value) {
  if (value === null) return 'null'
  if (Array.isArray(value)) return 'array'
  return typeof value
}

function writeLine(obj) {
  let line
  try {
    line = JSON.stringify(obj, replacer)
  } catch (err) {
    line = JSON.stringify({ type: 'error', message: `cannot serialise output: ${err}`, fatal: false })
  }
  process.stdout.write(line + '\n')
}

function describeError(err, { transient = false, fatal = false } = {}) {
  const out = {
    type: 'error',
    name: err?.constructor?.name ?? typeof err,
    message: String(err?.message ?? err),
    status: null,
    json: null,
    transient,
    fatal,
  }
  if (err instanceof FetchError) {
    out.status = err.status
    out.json = err.json ?? null
    out.text = typeof err.text === 'string' ? err.text.slice(0, 2000) : null
    out.url = err.url
  }
  const cause = err?.cause
  if (cause) out.cause = String(cause?.message ?? cause)
  return out
}

function isAbort(err) {
  return err?.name === 'AbortError' || err?.name === 'TimeoutError'
}

const config = JSON.parse(process.argv[2] ?? '{}')
if (typeof config.url !== 'string' || typeof config.table !== 'string') {
  writeLine({ type: 'error', message: 'config needs "url" and "table"', fatal: true })
  process.exit(2)
}

writeLine({ type: 'hello', clientVersion: clientVersion(), config })

const aborter = new AbortController()
let stopping = false

// Every request the client makes goes through this wrapper, so that retried
// failures (network errors, 5xx, 429), which the client handles silently with
// backoff, are still visible to the tests.
async function observingFetch(input, init) {
  try {
    const response = await fetch(input, init)
    if (response.status >= 500 || response.status === 429) {
      let text = null
      try {
        text = (await response.clone().text()).slice(0, 2000)
      } catch {
        // the body is for diagnostics only
      }
      writeLine({
        type: 'error',
        name: 'HTTPError',
        message: `HTTP ${response.status} (retried by the client)`,
        status: response.status,
        json: null,
        text,
        url: String(input),
        transient: true,
        fatal: false,
      })
    }
    return response
  } catch (err) {
    if (!stopping && !isAbort(err)) writeLine(describeError(err, { transient: true }))
    throw err
  }
}

const params = { table: config.table }
if (config.where != null) params.where = config.where
if (config.params != null) params.params = config.params
if (config.columns != null) params.columns = config.columns
if (config.replica != null) params.replica = config.replica

const stream = new ShapeStream({
  url: config.url,
  params,
  subscribe: config.subscribe ?? true,
  liveSse: Boolean(config.liveSse),
  signal: aborter.signal,
  fetchClient: observingFetch,
  onError: (err) => {
    if (stopping || isAbort(err)) return
    // HTTP errors (4xx other than 409, exhausted retries) are reported and
    // retried; anything else (parser errors, missing headers, ...) is fatal.
    const retry = err instanceof FetchError
    writeLine(describeError(err, { fatal: !retry }))
    return retry ? {} : undefined
  },
})
// Subscribe to the raw stream before creating the Shape: subscribers are called
// in order, so this listener sees each batch before the Shape applies it. That
// lets a pending state be flushed before a must-refetch clears the rows.
// Throttled emission: at most one state line per EMIT_INTERVAL_MS, and always
// one after the last change. Only consistent (up-to-date) states are emitted.
let consistent = false // the Shape's rows are a complete up-to-date state
let consistentAt = { offset: null, handle: null } // stream position of that state
let lastLine = null
let lastEmitAt = 0
let timer = null
stream.subscribe(
  (messages) => {
    for (const message of messages) {
      const control = message?.headers?.control
      if (control === 'must-refetch') {
        if (timer !== null && consistent) {
          clearTimeout(timer)
          emitState()
        }
        consistent = false
        writeLine({ type: 'must-refetch' })
      } else if (control === 'up-to-date') {
        consistent = true
        consistentAt = { offset: stream.lastOffset, handle: stream.shapeHandle ?? null }
        scheduleEmit()
      } else if (message?.headers?.operation) {
        consistent = false
      }
    }
  },
  (err) => {
    // The stream has stopped for good.
    if (stopping) return
    writeLine(describeError(err, { fatal: true }))
    shutdown('stream-error', 1)
  }
)
const shape = new Shape(stream)

function emitState() {
  timer = null
  if (stopping || !consistent) return
  const rows = {}
  const types = config.reportTypes ? {} : undefined
  for (const [key, row] of shape.currentValue) {
    rows[key] = row
    if (types) {
      types[key] = Object.fromEntries(Object.entries(row).map(([c, v]) => [c, jsType(v)]))
    }
  }
  const state = {
    type: 'state',
    rows,
    offset: consistentAt.offset,
    handle: consistentAt.handle,
    isUpToDate: true,
  }
  if (types) state.types = types
  let line
  try {
    line = JSON.stringify(state, replacer)
  } catch (err) {
    writeLine(describeError(err))
    return
  }
  if (line === lastLine) return
  lastLine = line
  lastEmitAt = Date.now()
  process.stdout.write(line + '\n')
}

function scheduleEmit() {
  if (timer !== null || stopping) return
  const wait = Math.max(0, lastEmitAt + EMIT_INTERVAL_MS - Date.now())
  timer = setTimeout(emitState, wait)
}

// Belt and braces: the Shape's own change notifications also trigger a report.
shape.subscribe(() => scheduleEmit())

function shutdown(reason, code = 0) {
  if (stopping) return
  stopping = true
  if (timer !== null) clearTimeout(timer)
  try {
    aborter.abort()
    shape.unsubscribeAll()
    stream.unsubscribeAll()
  } catch {
    // shutting down anyway
  }
  writeLine({ type: 'exit', reason })
  process.stdout.write('', () => process.exit(code))
}

process.on('SIGTERM', () => shutdown('SIGTERM'))
process.on('SIGINT', () => shutdown('SIGINT'))
process.stdin.on('end', () => shutdown('stdin-closed'))
process.stdin.on('error', () => shutdown('stdin-error'))
process.stdin.resume()
process.stdout.on('error', () => process.exit(0)) // reader went away

process.on('uncaughtException', (err) => {
  if (stopping && isAbort(err)) return
  writeLine(describeError(err, { fatal: true }))
  shutdown('uncaught-exception', 1)
})
process.on('unhandledRejection', (err) => {
  if (isAbort(err)) return
  writeLine(describeError(err, { fatal: true }))
  shutdown('unhandled-rejection', 1)
})
