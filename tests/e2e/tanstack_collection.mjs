// Syncs one table into a TanStack DB collection (@tanstack/electric-db-collection over
// @electric-sql/client), runs a live query over it and reports the live query's rows as
// JSON lines on stdout (see README.md in this folder).
//
// Usage: node tanstack_collection.mjs '<json config>'
//   {"url": "http://127.0.0.1:PORT/v1/shape", "table": "items",
//    "where": "...", "params": {"1": "x"},          shape where/params (optional)
//    "syncMode": "eager" | "on-demand" | "progressive",
//    "filter": [["lt", "n", 50], ["eq", "flag", true]],   live query where, ANDed (optional)
//    "orderBy": "id", "orderDir": "asc", "limit": 10,     live query order/limit (optional)
//    "subsetMethod": "GET" | "POST",        how subset snapshots are requested (optional)
//    "logRequests": false, "id": "items"}
//
// Output lines (one JSON object each):
//   {"type":"hello","versions":{...},"config":{...}}
//   {"type":"status","collection":"source"|"query","status":"loading"|"ready"|"error"|...}
//   {"type":"state","rows":{key: row},"sourceSize":n}   (the live query once ready,
//       BigInt as strings, virtual $-props removed, at most every 100 ms)
//   {"type":"txid","id":...,"txid":n,"ok":true|false,"error":...}  answer to awaitTxId
//   {"type":"request","method":...,"url":...,"body":...}      with "logRequests"
//   {"type":"response","status":...,"url":...,"headers":{...},"body":...}  with "logRequests"
//   {"type":"error","message":...,"status":...,"json":...,"name":...,"transient":bool,"fatal":bool}
//   {"type":"exit","reason":...}
//
// Commands on stdin, one JSON object per line:
//   {"cmd":"awaitTxId","txid":<number>,"timeout":<ms>,"id":<echoed in the reply>}

import { readFileSync } from 'node:fs'
import { createInterface } from 'node:readline'
import { FetchError } from '@electric-sql/client'
import { and, createCollection, createLiveQueryCollection, eq, gt, gte, lt, lte } from '@tanstack/db'
import { electricCollectionOptions } from '@tanstack/electric-db-collection'

const EMIT_INTERVAL_MS = 100
const VIRTUAL_PROPS = new Set(['$synced', '$origin', '$key', '$collectionId'])
const OPERATORS = { lt, lte, gt, gte, eq }
const BODY_LOG_LIMIT = 4000

function packageVersion(name) {
  try {
    const url = new URL(`./node_modules/${name}/package.json`, import.meta.url)
    return JSON.parse(readFileSync(url, 'utf8')).version
  } catch {
    return null
  }
}

// JSON.stringify replacer, as in follow_shape.mjs: BigInt and non-finite numbers
// become strings.
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

function writeLine(obj) {
  let line
  try {
    line = JSON.stringify(obj, replacer)
  } catch (err) {
    line = JSON.stringify({ type: 'error', message: `cannot serialise output: ${err}`, fatal: false })
  }
  process.stdout.write(line + '\n')
}

function describeError(err, { transient = false, fatal = false, context = null } = {}) {
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
  const fetchError = err instanceof FetchError ? err : err?.cause instanceof FetchError ? err.cause : null
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

function isAbort(err) {
  return err?.name === 'AbortError' || err?.name === 'TimeoutError'
}

const config = JSON.parse(process.argv[2] ?? '{}')
if (typeof config.url !== 'string' || typeof config.table !== 'string') {
  writeLine({ type: 'error', message: 'config needs "url" and "table"', fatal: true })
  process.exit(2)
}
const syncMode = config.syncMode ?? 'eager'

writeLine({
  type: 'hello',
  versions: {
    '@electric-sql/client': packageVersion('@electric-sql/client'),
    '@tanstack/db': packageVersion('@tanstack/db'),
    '@tanstack/electric-db-collection': packageVersion('@tanstack/electric-db-collection'),
  },
  config,
})

const aborter = new AbortController()
let stopping = false

function headerObject(headers) {
  const out = {}
  for (const [name, value] of headers) {
    if (name.startsWith('electric-') || name === 'cache-control' || name === 'content-type') {
      out[name] = value
    }
  }
  return out
}

function requestBody(init) {
  const body = init?.body
  if (body == null) return null
  if (typeof body === 'string') {
    try {
      return JSON.parse(body)
    } catch {
      return body.slice(0, BODY_LOG_LIMIT)
    }
  }
  return `<${body?.constructor?.name ?? typeof body}>`
}

// Every request of the client goes through this wrapper: failures the client retries
// silently (network errors, 5xx, 429) are reported, and with "logRequests" every request
// and the head of every response too.
async function observingFetch(input, init) {
  const url = input instanceof Request ? input.url : String(input)
  const method = init?.method ?? (input instanceof Request ? input.method : 'GET')
  if (config.logRequests) {
    writeLine({ type: 'request', method, url, body: requestBody(init) })
  }
  try {
    const response = await fetch(input, init)
    if (config.logRequests) {
      let body = null
      const live = new URL(url).searchParams.get('live') === 'true'
      if (!live) {
        try {
          body = (await response.clone().text()).slice(0, BODY_LOG_LIMIT)
        } catch {
          // diagnostics only
        }
      }
      writeLine({
        type: 'response',
        method,
        url,
        status: response.status,
        headers: headerObject(response.headers),
        body,
      })
    }
    if (response.status >= 500 || response.status === 429) {
      let text = null
      try {
        text = (await response.clone().text()).slice(0, 2000)
      } catch {
        // diagnostics only
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
    return response
  } catch (err) {
    // A request the client aborted itself (e.g. reason "pause-stream") is not an error.
    const aborted = init?.signal?.aborted || (input instanceof Request && input.signal.aborted)
    if (!stopping && !isAbort(err) && !aborted) writeLine(describeError(err, { transient: true }))
    throw err
  }
}

const params = { table: config.table }
if (config.where != null) params.where = config.where
if (config.params != null) params.params = config.params
if (config.columns != null) params.columns = config.columns
if (config.replica != null) params.replica = config.replica

const source = createCollection(
  electricCollectionOptions({
    id: config.id ?? config.table,
    shapeOptions: {
      url: config.url,
      params,
      fetchClient: observingFetch,
      signal: aborter.signal,
      ...(config.subsetMethod != null ? { subsetMethod: config.subsetMethod } : {}),
      onError: (err) => {
        if (stopping || isAbort(err)) return
        // HTTP errors are reported and retried; anything else stops the stream.
        const retry = err instanceof FetchError
        writeLine(describeError(err, { fatal: !retry, context: 'shape-stream' }))
        return retry ? {} : undefined
      },
    },
    getKey: (row) => row.id,
    syncMode,
  })
)

function buildQuery(q) {
  let query = q.from({ item: source })
  const filters = config.filter ?? []
  if (filters.length > 0) {
    query = query.where(({ item }) => {
      const clauses = filters.map(([op, column, value]) => {
        const fn = OPERATORS[op]
        if (!fn) throw new Error(`unknown filter operator ${op}`)
        return fn(item[column], value)
      })
      return clauses.length === 1 ? clauses[0] : and(...clauses)
    })
  }
  if (config.orderBy != null) {
    query = query.orderBy(({ item }) => item[config.orderBy], config.orderDir ?? 'asc')
  }
  if (config.limit != null) query = query.limit(config.limit)
  return query
}

const live = createLiveQueryCollection({ query: buildQuery, startSync: true })

for (const [name, collection] of [
  ['source', source],
  ['query', live],
]) {
  writeLine({ type: 'status', collection: name, status: collection.status })
  collection.on('status:change', (event) => {
    writeLine({ type: 'status', collection: name, status: event.status })
    if (event.status === 'error') {
      writeLine({ type: 'error', message: `${name} collection is in error state`, fatal: false })
    }
    scheduleEmit()
  })
}

let lastLine = null
let lastEmitAt = 0
let timer = null

function plainRow(row) {
  const out = {}
  for (const [column, value] of Object.entries(row)) {
    if (!VIRTUAL_PROPS.has(column)) out[column] = value
  }
  return out
}

function emitState() {
  timer = null
  if (stopping || live.status !== 'ready') return
  const rows = {}
  for (const [key, row] of live.state) rows[String(key)] = plainRow(row)
  let line
  try {
    line = JSON.stringify({ type: 'state', rows, sourceSize: source.size }, replacer)
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

const subscription = live.subscribeChanges(() => scheduleEmit(), { includeInitialState: true })
live.onFirstReady(() => scheduleEmit())

async function awaitTxId(command) {
  const { txid, id = null } = command
  try {
    const ok = await source.utils.awaitTxId(txid, command.timeout ?? 5000)
    writeLine({ type: 'txid', id, txid, ok: ok === true, error: null })
  } catch (err) {
    writeLine({
      type: 'txid',
      id,
      txid,
      ok: false,
      error: { name: err?.constructor?.name ?? typeof err, message: String(err?.message ?? err) },
    })
  }
}

function handleCommand(line) {
  if (!line.trim()) return
  let command
  try {
    command = JSON.parse(line)
  } catch (err) {
    writeLine({ type: 'error', message: `bad command ${line.slice(0, 200)}: ${err}`, fatal: false })
    return
  }
  if (command?.cmd === 'awaitTxId') {
    void awaitTxId(command)
  } else {
    writeLine({ type: 'error', message: `unknown command ${line.slice(0, 200)}`, fatal: false })
  }
}

function shutdown(reason, code = 0) {
  if (stopping) return
  stopping = true
  if (timer !== null) clearTimeout(timer)
  try {
    subscription.unsubscribe()
    aborter.abort()
  } catch {
    // shutting down anyway
  }
  writeLine({ type: 'exit', reason })
  process.stdout.write('', () => process.exit(code))
}

process.on('SIGTERM', () => shutdown('SIGTERM'))
process.on('SIGINT', () => shutdown('SIGINT'))
const commands = createInterface({ input: process.stdin })
commands.on('line', handleCommand)
commands.on('close', () => shutdown('stdin-closed'))
process.stdin.on('error', () => shutdown('stdin-error'))
process.stdout.on('error', () => process.exit(0)) // reader went away

process.on('uncaughtException', (err) => {
  if (stopping && isAbort(err)) return
  writeLine(describeError(err, { fatal: true, context: 'uncaught-exception' }))
  shutdown('uncaught-exception', 1)
})
process.on('unhandledRejection', (err) => {
  if (stopping || isAbort(err)) return
  // Failed subset loads of on-demand collections surface here: report, keep running
  // (the collection keeps syncing and later loads may succeed).
  writeLine(describeError(err, { fatal: false, context: 'unhandled-rejection' }))
})
