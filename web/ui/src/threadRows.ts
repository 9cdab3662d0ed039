// The open thread's events and facts: one live query each, shared by the chat and the
// Computer sidebar (a thousand events are filtered once, not once per panel).

import { eq, useLiveQuery } from '@tanstack/react-db'
import type { BurnEvent, Collections, Fact } from './collections'

export interface ThreadRows {
  events: BurnEvent[]
  eventsReady: boolean
  facts: Fact[]
  factsReady: boolean
}

export function useThreadRows(c: Collections, threadId: string | null): ThreadRows {
  const events = useLiveQuery(
    (q) => (threadId ? q.from({ e: c.events }).where(({ e }) => eq(e.thread_id, threadId)) : undefined),
    [threadId],
  )
  const facts = useLiveQuery(
    (q) => (threadId ? q.from({ f: c.facts }).where(({ f }) => eq(f.thread_id, threadId)) : undefined),
    [threadId],
  )
  return {
    events: (events.data ?? []) as BurnEvent[],
    eventsReady: events.isReady,
    facts: (facts.data ?? []) as Fact[],
    factsReady: facts.isReady,
  }
}
