// Follows one shape with the official @electric-sql/client and reports its
// materialised state as JSON lines on stdout (see README.md in this folder).
//
// Usage: node follow_shape.mjs '<json config>'
//   {"url": "http://127.0.0.1:PORT/v1/shape", "table": "items",
//    "where": "...", "params": {"1": "x"}, "columns": ["id", "title"],
//    "replica": "full", "liveSse": false, "subscribe": true, "reportTypes": false,
//    "headers": {"Authorization": "Bearer alice"}}
//
// Output lines (one JSON object each):
//   {"type":"hello","clientVersion":"1.5.x","config":{...}}
//   {"type":"state","rows":{key: row},"offset":"...","handle":"...","isUpToDate":true}
//       (with "types":{key:{column: js type}} when reportTypes is set)
//   {"type":"must-refetch"}
//   {"type":"error","message":...,"status":...,"json":...,"name":...,"transient":bool,"fatal":bool}
//   {"type":"exit","reason":...}

import { FetchError, Shape, ShapeStream } from '@electric-sql/client'
import {
  StateEmitter, describeError, handleProcessEvents, isAbort, isStopping, packageVersion,
  readConfig, reportRetriedStatus, shapeParams, shutdown, writeLine,
} from './harness.mjs'

function jsType(value) {
  if (value === null) return 'null'
  if (Array.isArray(value)) return 'array'
  return typeof value
}

const config = readConfig()

writeLine({ type: 'hello', clientVersion: packageVersion('@electric-sql/client'), config })

const aborter = new AbortController()

// Every request the client makes goes through this wrapper, so that retried
// failures (network errors, 5xx, 429), which the client handles silently with
// backoff, are still visible to the tests.
async function observingFetch(input, init) {
  try {
    const response = await fetch(input, init)
    await reportRetriedStatus(response, String(input))
    return response
  } catch (err) {
    if (!isStopping() && !isAbort(err)) writeLine(describeError(err, { transient: true }))
    throw err
  }
}

const stream = new ShapeStream({
  url: config.url,
  params: shapeParams(config),
  ...(config.headers != null ? { headers: config.headers } : {}),
  subscribe: config.subscribe ?? true,
  liveSse: Boolean(config.liveSse),
  signal: aborter.signal,
  fetchClient: observingFetch,
  onError: (err) => {
    if (isStopping() || isAbort(err)) return
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
// Throttled emission (StateEmitter): at most one state line every 100 ms, and
// always one after the last change. Only consistent (up-to-date) states are emitted.
let consistent = false // the Shape's rows are a complete up-to-date state
let consistentAt = { offset: null, handle: null } // stream position of that state
const emitter = new StateEmitter(buildState)
stream.subscribe(
  (messages) => {
    for (const message of messages) {
      const control = message?.headers?.control
      if (control === 'must-refetch') {
        if (emitter.pending && consistent) emitter.flush()
        consistent = false
        writeLine({ type: 'must-refetch' })
      } else if (control === 'up-to-date') {
        consistent = true
        consistentAt = { offset: stream.lastOffset, handle: stream.shapeHandle ?? null }
        emitter.schedule()
      } else if (message?.headers?.operation) {
        consistent = false
      }
    }
  },
  (err) => {
    // The stream has stopped for good.
    if (isStopping()) return
    writeLine(describeError(err, { fatal: true }))
    shutdown('stream-error', 1)
  }
)
const shape = new Shape(stream)

function buildState() {
  if (!consistent) return null
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
  return state
}

// Belt and braces: the Shape's own change notifications also trigger a report.
shape.subscribe(() => emitter.schedule())

handleProcessEvents({
  cleanup: () => {
    emitter.stop()
    aborter.abort()
    shape.unsubscribeAll()
    stream.unsubscribeAll()
  },
  describeUncaught: (err) => describeError(err, { fatal: true }),
})
process.stdin.on('end', () => shutdown('stdin-closed'))
process.stdin.resume()

process.on('unhandledRejection', (err) => {
  if (isAbort(err)) return
  writeLine(describeError(err, { fatal: true }))
  shutdown('unhandled-rejection', 1)
})
