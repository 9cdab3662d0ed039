// Follows one subquery shape with the official @electric-sql/client's ShapeStream and
// reports, as JSON lines, every move event it passes through and the rows a tag-aware
// client holds (see README.md in this folder).
//
// The client's Shape helper ignores move events, so this program keeps the rows itself:
// inserts, updates and deletes as usual, each row's tags (updates add "tags" and drop
// "removed_tags") and active_conditions; a move-out pattern {pos, value} sets position pos to
// false on the rows whose tag has value in slot pos, and a row with no tag whose non-empty
// slots are all true is dropped; a move-in pattern sets the position to true.
//
// Usage: node follow_subquery_stream.mjs '<json config>'
//   {"url": ..., "table": ..., "where": ..., "params": {"1": "x"}, "liveSse": false,
//    "headers": {"Authorization": "Bearer t"}}   (where and headers optional)
//
// Output lines:
//   {"type":"hello","clientVersion":"1.5.x","config":{...}}
//   {"type":"event","headers":{"event":"move-out","patterns":[...],"txids":[...]}}
//   {"type":"change","key":...,"operation":...,"isMoveIn":bool}
//   {"type":"response","status":n,"offset":"-1"|...,"live":bool}
//   {"type":"state","rows":{key: row},"offset":...,"handle":...}   (after up-to-date)
//   {"type":"must-refetch"}, {"type":"error",...}, {"type":"exit","reason":...}

import { FetchError, ShapeStream } from '@electric-sql/client'
import {
  StateEmitter, describeError, handleProcessEvents, isAbort, isStopping, packageVersion,
  readConfig, reportRetriedStatus, shapeParams, shutdown, writeLine,
} from './harness.mjs'

const config = readConfig()
writeLine({ type: 'hello', clientVersion: packageVersion('@electric-sql/client'), config })

const aborter = new AbortController()

async function observingFetch(input, init) {
  const url = new URL(input instanceof Request ? input.url : String(input))
  try {
    const response = await fetch(input, init)
    writeLine({
      type: 'response',
      status: response.status,
      offset: url.searchParams.get('offset'),
      live: url.searchParams.get('live') === 'true',
    })
    await reportRetriedStatus(response, String(url))
    return response
  } catch (err) {
    if (!isStopping() && !isAbort(err)) writeLine(describeError(err, { transient: true }))
    throw err
  }
}

const rows = new Map() // key -> row
const tagState = new Map() // key -> { tags: Set<string>, conditions: boolean[] }

function slots(tag) {
  return tag.split('/')
}

function satisfied(state) {
  for (const tag of state.tags) {
    const positions = slots(tag)
      .map((slot, i) => (slot === '' ? -1 : i))
      .filter((i) => i >= 0)
    if (positions.every((i) => state.conditions[i] === true)) return true
  }
  return false
}

function mergeTags(key, headers) {
  const state = tagState.get(key) ?? { tags: new Set(), conditions: [] }
  for (const tag of headers.tags ?? []) state.tags.add(tag)
  for (const tag of headers.removed_tags ?? []) state.tags.delete(tag)
  if (Array.isArray(headers.active_conditions) && headers.active_conditions.length > 0) {
    state.conditions = [...headers.active_conditions]
  }
  tagState.set(key, state)
}

function applyChange(message) {
  const { key, headers, value } = message
  writeLine({ type: 'change', key, operation: headers.operation, isMoveIn: headers.is_move_in === true })
  if (headers.operation === 'delete') {
    rows.delete(key)
    tagState.delete(key)
    return
  }
  if (headers.operation === 'insert' && !rows.has(key)) tagState.delete(key)
  rows.set(key, { ...(rows.get(key) ?? {}), ...value })
  mergeTags(key, headers)
}

function applyEvent(headers) {
  writeLine({ type: 'event', headers })
  const movingIn = headers.event === 'move-in'
  for (const { pos, value } of headers.patterns ?? []) {
    for (const [key, state] of tagState) {
      if (![...state.tags].some((tag) => slots(tag)[pos] === value)) continue
      state.conditions[pos] = movingIn
      if (!movingIn && !satisfied(state)) {
        rows.delete(key)
        tagState.delete(key)
      }
    }
  }
}

const stream = new ShapeStream({
  url: config.url,
  params: shapeParams(config),
  subscribe: true,
  liveSse: Boolean(config.liveSse),
  ...(config.headers != null ? { headers: config.headers } : {}),
  signal: aborter.signal,
  fetchClient: observingFetch,
  onError: (err) => {
    if (isStopping() || isAbort(err)) return
    const retry = err instanceof FetchError
    writeLine(describeError(err, { fatal: !retry }))
    return retry ? {} : undefined
  },
})

let consistent = false
const emitter = new StateEmitter(() => {
  if (!consistent) return null
  return {
    type: 'state',
    rows: Object.fromEntries(rows),
    offset: stream.lastOffset,
    handle: stream.shapeHandle ?? null,
  }
})

stream.subscribe(
  (messages) => {
    for (const message of messages) {
      const headers = message?.headers ?? {}
      if (headers.control === 'must-refetch') {
        rows.clear()
        tagState.clear()
        consistent = false
        writeLine({ type: 'must-refetch' })
      } else if (headers.control === 'up-to-date') {
        consistent = true
        emitter.schedule()
      } else if (headers.event === 'move-in' || headers.event === 'move-out') {
        applyEvent(headers)
      } else if (headers.operation) {
        applyChange(message)
      }
    }
  },
  (err) => {
    if (isStopping()) return
    writeLine(describeError(err, { fatal: true }))
    shutdown('stream-error', 1)
  }
)

handleProcessEvents({
  cleanup: () => {
    emitter.stop()
    aborter.abort()
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
