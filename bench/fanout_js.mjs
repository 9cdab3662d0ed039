// The JavaScript half of the fanout-1000-js benchmark (see bench/fanout.py).
//
// Usage: node bench/fanout_js.mjs '{"url": "http://127.0.0.1:PORT/v1/shape",
//                                   "table": "fanout_items", "count": 1000,
//                                   "sse": true}'
//
// Opens `count` ShapeStreams of the official @electric-sql/client on one shape,
// each live over SSE (liveSse: true), or long-polling with "sse": false, in
// this one process. Output, one JSON
// object per line on stdout:
//   {"type":"ready","count":N,"ms":...}           every stream is up to date
//   {"type":"change","stream":i,"id":..,"at":..}  stream i received the row id
//                                                 at Date.now() (wall clock, ms)
//   {"type":"error","stream":i,"message":...}
// Exits when stdin closes.
//
// Node's fetch uses undici's global Agent, whose per-origin pool has no limit
// on connections (`connections: null`), so 1,000 concurrent SSE responses need
// no dispatcher change.

import { ShapeStream } from '../tests/e2e/node_modules/@electric-sql/client/dist/index.mjs'

const config = JSON.parse(process.argv[2])
const count = Number(config.count)
const started = Date.now()
// One abort controller per stream, as each client of an application has its own: a signal
// shared by every stream holds a listener per request in flight, and Node's EventTarget walks
// all of them on each add and remove (a cost of the benchmark, not of a client).
const aborters = []

let pending = []
let flushScheduled = false
function writeLine(object) {
  pending.push(JSON.stringify(object))
  if (!flushScheduled) {
    flushScheduled = true
    setImmediate(() => {
      flushScheduled = false
      const text = pending.join('\n') + '\n'
      pending = []
      process.stdout.write(text)
    })
  }
}

let upToDate = 0
const streams = []
for (let index = 0; index < count; index++) {
  const aborter = new AbortController()
  aborters.push(aborter)
  const stream = new ShapeStream({
    url: config.url,
    params: { table: config.table },
    liveSse: config.sse !== false,
    signal: aborter.signal,
    onError: (err) => {
      if (aborter.signal.aborted) return
      writeLine({ type: 'error', stream: index, message: String(err), transient: true })
      return {}
    },
  })
  let ready = false
  stream.subscribe(
    (messages) => {
      const at = Date.now()
      for (const message of messages) {
        const headers = message?.headers ?? {}
        if (headers.operation === 'insert') {
          writeLine({ type: 'change', stream: index, id: Number(message.value.id), at })
        } else if (headers.control === 'up-to-date' && !ready) {
          ready = true
          upToDate += 1
          if (upToDate === count) writeLine({ type: 'ready', count, ms: Date.now() - started })
        }
      }
    },
    (err) => {
      if (!aborter.signal.aborted) writeLine({ type: 'error', stream: index, message: String(err) })
    }
  )
  streams.push(stream)
}

function stop() {
  for (const aborter of aborters) aborter.abort()
  for (const stream of streams) stream.unsubscribeAll()
  setImmediate(() => process.exit(0))
}

process.stdin.on('end', stop)
process.stdin.resume()
process.on('SIGTERM', stop)
