// The app's data: one TanStack DB electric collection per table, each synced from the web
// app's per-user sync route (/api/sync/<table>: only the signed-in user's threads and what
// belongs to them). Writes go through the write API; each handler answers the write's txid,
// so an optimistic row stays on screen until the change it caused has synced back.

import { createCollection } from '@tanstack/react-db'
import { electricCollectionOptions } from '@tanstack/electric-db-collection'
import * as api from './api'
import { trackingFetch } from './connection'

export type User = {
  id: string
  name: string
  kind: 'human' | 'agent'
  avatar_url: string | null
}
export type Thread = {
  id: string
  name: string
  status: string
  inserted_at: string
}
export type Membership = {
  id: string
  thread_id: string
  user_id: string
  role: 'owner' | 'member' | 'producer' | 'comedian'
  inserted_at: string
}
export type BurnEvent = {
  id: string
  seq: number | null
  thread_id: string
  user_id: string
  kind: 'system' | 'text' | 'tool_use' | 'tool_result'
  data: Record<string, unknown>
  status: 'streaming' | 'final'
  inserted_at: string | null
}
export type Fact = {
  id: string
  thread_id: string
  subject_id: string
  source_event_id: string
  tool_use_event_id: string
  predicate: string
  object: string
  category: string
  confidence: string
  disputed: boolean
  inserted_at: string
}
export type AgentStatus = {
  thread_id: string
  agent_id: string
  state: 'running' | 'backing_off' | 'over_budget' | 'quarantined' | 'stopped'
  reason: string
  updated_at: string
}

const TXID_WAIT_MS = 30_000

function shapeOptions(table: string, syncToken: string) {
  return {
    url: `${window.location.origin}/api/sync/${table}`,
    // the session's sync token, not its cookie: see trackingFetch
    headers: { authorization: `Bearer ${syncToken}` },
    fetchClient: trackingFetch,
    // bigints as numbers (sequence numbers fit), everything else as the client parses it
    parser: { int8: (value: string) => Number(value) },
    // keep syncing through transient failures; the connection banner shows them
    onError: () => ({}),
  }
}

export function createCollections(syncToken: string) {
  const users = createCollection(
    electricCollectionOptions<User>({
      id: 'users',
      shapeOptions: shapeOptions('users', syncToken),
      getKey: (row) => row.id,
    }),
  )
  const threads = createCollection(
    electricCollectionOptions<Thread>({
      id: 'threads',
      shapeOptions: shapeOptions('threads', syncToken),
      getKey: (row) => row.id,
      onInsert: async ({ transaction }) => {
        const txids = await Promise.all(
          transaction.mutations.map((m) => api.createThread(m.modified.id, m.modified.name)),
        )
        return { txid: txids.map((t) => t.txid), timeout: TXID_WAIT_MS }
      },
      onUpdate: async ({ transaction }) => {
        const txids = await Promise.all(
          transaction.mutations.map((m) => api.renameThread(m.original.id, m.modified.name)),
        )
        return { txid: txids.map((t) => t.txid), timeout: TXID_WAIT_MS }
      },
    }),
  )
  const memberships = createCollection(
    electricCollectionOptions<Membership>({
      id: 'memberships',
      shapeOptions: shapeOptions('memberships', syncToken),
      getKey: (row) => row.id,
      onDelete: async ({ transaction }) => {
        const txids = await Promise.all(
          transaction.mutations.map((m) =>
            api.leaveThread(m.original.thread_id, m.original.user_id),
          ),
        )
        return { txid: txids.map((t) => t.txid), timeout: TXID_WAIT_MS }
      },
    }),
  )
  const events = createCollection(
    electricCollectionOptions<BurnEvent>({
      id: 'events',
      shapeOptions: shapeOptions('events', syncToken),
      getKey: (row) => row.id,
      onInsert: async ({ transaction }) => {
        const txids = await Promise.all(
          transaction.mutations.map((m) => {
            const text = typeof m.modified.data.text === 'string' ? m.modified.data.text : ''
            return api.postMessage(m.modified.thread_id, m.modified.id, text)
          }),
        )
        return { txid: txids.map((t) => t.txid), timeout: TXID_WAIT_MS }
      },
    }),
  )
  const facts = createCollection(
    electricCollectionOptions<Fact>({
      id: 'facts',
      shapeOptions: shapeOptions('facts', syncToken),
      getKey: (row) => row.id,
    }),
  )
  const agentStatus = createCollection(
    electricCollectionOptions<AgentStatus>({
      id: 'agent_status',
      shapeOptions: shapeOptions('agent_status', syncToken),
      getKey: (row) => `${row.thread_id}/${row.agent_id}`,
    }),
  )
  const all = { users, threads, memberships, events, facts, agentStatus }
  // start every shape at once rather than as screens mount (no request waterfall)
  for (const collection of Object.values(all)) void collection.preload()
  return all
}

export type Collections = ReturnType<typeof createCollections>
