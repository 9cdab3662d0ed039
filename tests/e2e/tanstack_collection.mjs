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
//    "liveSse": false,                      live updates over SSE instead of long-polls
//    "headers": {"Authorization": "Bearer t"},  request headers (optional)
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

import { createInterface } from 'node:readline'
import { FetchError } from '@electric-sql/client'
import { and, createCollection, createLiveQueryCollection, eq, gt, gte, lt, lte } from '@tanstack/db'
import { electricCollectionOptions } from '@tanstack/electric-db-collection'
import {
  StateEmitter, describeError as describeAnyError, handleProcessEvents, isAbort, isStopping, packageVersion,
  readConfig, reportRetriedStatus, shapeParams, shutdown, writeLine,
} from './harness.mjs'

const VIRTUAL_PROPS = new Set(['$synced', '$origin', '$key', '$collectionId'])
const OPERATORS = { lt, lte, gt, gte, eq }
const BODY_LOG_LIMIT = 4000

// Errors of a collection often wrap the client's FetchError: report its details too.
function describeError(err, options = {}) {
  return describeAnyError(err, { ...options, unwrapCause: true })
}

const config = readConfig()
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
    await reportRetriedStatus(response, url)
    return response
  } catch (err) {
    // A request the client aborted itself (e.g. reason "pause-stream") is not an error.
    const aborted = init?.signal?.aborted || (input instanceof Request && input.signal.aborted)
    if (!isStopping() && !isAbort(err) && !aborted) writeLine(describeError(err, { transient: true }))
    throw err
  }
}

const source = createCollection(
  electricCollectionOptions({
    id: config.id ?? config.table,
    shapeOptions: {
      url: config.url,
      params: shapeParams(config),
      fetchClient: observingFetch,
      signal: aborter.signal,
      ...(config.subsetMethod != null ? { subsetMethod: config.subsetMethod } : {}),
      ...(config.liveSse ? { liveSse: true } : {}),
      ...(config.headers != null ? { headers: config.headers } : {}),
      onError: (err) => {
        if (isStopping() || isAbort(err)) return
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

// The live query's rows once it is ready, at most every 100 ms (StateEmitter).
const emitter = new StateEmitter(() => {
  if (live.status !== 'ready') return null
  const rows = {}
  for (const [key, row] of live.state) rows[String(key)] = plainRow(row)
  return { type: 'state', rows, sourceSize: source.size }
})

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
    emitter.schedule()
  })
}

function plainRow(row) {
  const out = {}
  for (const [column, value] of Object.entries(row)) {
    if (!VIRTUAL_PROPS.has(column)) out[column] = value
  }
  return out
}

const subscription = live.subscribeChanges(() => emitter.schedule(), { includeInitialState: true })
// The source's size is part of the state too: report it when only the source changed.
const sourceSubscription = source.subscribeChanges(() => emitter.schedule())
live.onFirstReady(() => emitter.schedule())

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

const commands = createInterface({ input: process.stdin })
commands.on('line', handleCommand)
commands.on('close', () => shutdown('stdin-closed'))
handleProcessEvents({
  cleanup: () => {
    emitter.stop()
    subscription.unsubscribe()
    sourceSubscription.unsubscribe()
    aborter.abort()
  },
  describeUncaught: (err) => describeError(err, { fatal: true, context: 'uncaught-exception' }),
})

process.on('unhandledRejection', (err) => {
  if (isStopping() || isAbort(err)) return
  // Failed subset loads of on-demand collections surface here: report, keep running
  // (the collection keeps syncing and later loads may succeed).
  writeLine(describeError(err, { fatal: false, context: 'unhandled-rejection' }))
})
