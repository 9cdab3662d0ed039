// What the Node programs of the e2e harness share (follow_shape.mjs and
// tanstack_collection.mjs): the JSON-lines output, error descriptions, the config
// argument, throttled state lines and one shutdown path (see README.md in this folder).

import { readFileSync } from 'node:fs'
import { FetchError } from '@electric-sql/client'

const EMIT_INTERVAL_MS = 100

// The version of an installed package of this folder, null when it is not installed.
export function packageVersion(name) {
  try {
    const url = new URL(`./node_modules/${name}/package.json`, import.meta.url)
    return JSON.parse(readFileSync(url, 'utf8')).version
  } catch {
    return null
  }
}

// JSON.stringify replacer: BigInt (int8) and non-finite numbers become strings,
// other values JSON cannot represent are stringified too. Dates are already
// strings here because JSON.stringify calls toJSON before the replacer.
export function replacer(_key, value) {
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

export function writeLine(obj) {
  let line
  try {
    line = JSON.stringify(obj, replacer)
  } catch (err) {
    line = JSON.stringify({ type: 'error', message: `cannot serialise output: ${err}`, fatal: false })
  }
  process.stdout.write(line + '\n')
}

// An "error" line for err. A FetchError adds its status, body and URL; with
// unwrapCause, so does a FetchError that is err's cause. context is added when set.
export function describeError(
  err,
  { transient = false, fatal = false, context = null, unwrapCause = false } = {}
) {
  const out = {
    type: 'error',
    name: err?.constructor?.name ?? typeof err,
    message: String(err?.message ?? err),
    status: null,
    json: null,
    transient,
    fatal,
  }
  if (context) out.context = context
  const fetchError =
    err instanceof FetchError ? err : unwrapCause && err?.cause instanceof FetchError ? err.cause : null
  if (fetchError) {
    out.status = fetchError.status
    out.json = fetchError.json ?? null
    out.text = typeof fetchError.text === 'string' ? fetchError.text.slice(0, 2000) : null
    out.url = fetchError.url
  }
  const cause = err?.cause
  if (cause) out.cause = String(cause?.message ?? cause)
  return out
}

export function isAbort(err) {
  return err?.name === 'AbortError' || err?.name === 'TimeoutError'
}

// The JSON config of argv[2]; exits with status 2 when it lacks "url" or "table".
export function readConfig() {
  const config = JSON.parse(process.argv[2] ?? '{}')
  if (typeof config.url !== 'string' || typeof config.table !== 'string') {
    writeLine({ type: 'error', message: 'config needs "url" and "table"', fatal: true })
    process.exit(2)
  }
  return config
}

// The shape params (table, where, params, columns, replica) of the config.
export function shapeParams(config) {
  const params = { table: config.table }
  if (config.where != null) params.where = config.where
  if (config.params != null) params.params = config.params
  if (config.columns != null) params.columns = config.columns
  if (config.replica != null) params.replica = config.replica
  return params
}

// Responses the client retries silently with backoff (5xx, 429) are reported
// anyway, so that the tests see them.
export async function reportRetriedStatus(response, url) {
  if (response.status < 500 && response.status !== 429) return
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
    url,
    transient: true,
    fatal: false,
  })
}

// Throttled "state" lines: at most one per EMIT_INTERVAL_MS, always one after the
// last scheduled change, never the same line twice in a row. build() returns the
// state object, or null when there is nothing consistent to report.
export class StateEmitter {
  constructor(build) {
    this.build = build
    this.lastLine = null
    this.lastEmitAt = 0
    this.timer = null
  }

  get pending() {
    return this.timer !== null
  }

  emit() {
    this.timer = null
    if (stopping) return
    const state = this.build()
    if (state == null) return
    let line
    try {
      line = JSON.stringify(state, replacer)
    } catch (err) {
      writeLine(describeError(err))
      return
    }
    if (line === this.lastLine) return
    this.lastLine = line
    this.lastEmitAt = Date.now()
    process.stdout.write(line + '\n')
  }

  // Emit a pending state now rather than when its timer fires.
  flush() {
    clearTimeout(this.timer)
    this.emit()
  }

  schedule() {
    if (this.timer !== null || stopping) return
    const wait = Math.max(0, this.lastEmitAt + EMIT_INTERVAL_MS - Date.now())
    this.timer = setTimeout(() => this.emit(), wait)
  }

  stop() {
    if (this.timer !== null) clearTimeout(this.timer)
  }
}

// -- lifecycle: SIGTERM, SIGINT, stdin errors, uncaught exceptions and the
// programs' own reasons all end in shutdown().

let stopping = false
let cleanup = () => {}

export function isStopping() {
  return stopping
}

// Stop once: run the program's cleanup, report {"type":"exit"}, exit after stdout drained.
export function shutdown(reason, code = 0) {
  if (stopping) return
  stopping = true
  try {
    cleanup()
  } catch {
    // shutting down anyway
  }
  writeLine({ type: 'exit', reason })
  process.stdout.write('', () => process.exit(code))
}

// cleanup() stops the program's work on shutdown; describeUncaught(err) is the
// fatal error line of an uncaught exception. Commands on stdin, stdin's end and
// unhandled rejections are the program's own business.
export function handleProcessEvents({ cleanup: stopWork, describeUncaught }) {
  cleanup = stopWork
  process.on('SIGTERM', () => shutdown('SIGTERM'))
  process.on('SIGINT', () => shutdown('SIGINT'))
  process.stdin.on('error', () => shutdown('stdin-error'))
  process.stdout.on('error', () => process.exit(0)) // reader went away
  process.on('uncaughtException', (err) => {
    if (stopping && isAbort(err)) return
    writeLine(describeUncaught(err))
    shutdown('uncaught-exception', 1)
  })
}
