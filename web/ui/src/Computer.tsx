// The "Computer" sidebar: what the agents know (Memory: the facts) and see (Context: the
// events), each live and filterable.

import { useMemo, useState } from 'react'
import { sortEvents } from './Chat'
import type { User } from './collections'
import type { ThreadRows } from './threadRows'

function confidenceLevel(confidence: number): 'High' | 'Medium' | 'Low' {
  return confidence >= 0.8 ? 'High' : confidence >= 0.5 ? 'Medium' : 'Low'
}

const TYPE_WORDS: Record<string, string> = {
  system: 'system action',
  text: 'text message',
  tool_use: 'tool use',
  tool_result: 'tool result',
}

export function Computer(props: {
  rows: ThreadRows
  users: Map<string, User>
  onClose: () => void
}) {
  const { rows, users, onClose } = props
  const facts = { data: rows.facts, isReady: rows.factsReady }
  const events = { data: rows.events, isReady: rows.eventsReady }
  const [factFilter, setFactFilter] = useState('')
  const [eventFilter, setEventFilter] = useState('')

  const shownFacts = useMemo(() => {
    const needle = factFilter.trim().toLowerCase()
    return [...facts.data]
      .sort((a, b) => a.inserted_at.localeCompare(b.inserted_at))
      .filter((f) => {
        if (!needle) return true
        const subject = users.get(f.subject_id)?.name ?? ''
        return [subject, f.predicate, f.object].some((s) => s.toLowerCase().includes(needle))
      })
  }, [facts.data, factFilter, users])

  const shownEvents = useMemo(() => {
    const needle = eventFilter.trim().toLowerCase()
    return sortEvents(events.data)
      .filter((e) => !(e.kind === 'tool_use' && e.data.name === 'do_nothing'))
      .filter((e) => {
        if (!needle) return true
        const author = users.get(e.user_id)?.name ?? ''
        return [author, TYPE_WORDS[e.kind] ?? e.kind, JSON.stringify(e.data)].some((s) =>
          s.toLowerCase().includes(needle),
        )
      })
  }, [events.data, eventFilter, users])

  return (
    <aside className="right" aria-label="Computer">
      <div className="right-header">
        <h2>Computer</h2>
        <button type="button" className="icon mobile-only" aria-label="Close the computer"
          onClick={onClose}>×</button>
      </div>
      <section aria-labelledby="memory-title">
        <h3 id="memory-title">Memory</h3>
        <label htmlFor="fact-filter" className="sr-only">Filter facts</label>
        <input id="fact-filter" type="search" placeholder="Filter facts..." value={factFilter}
          onChange={(e) => setFactFilter(e.target.value)} />
        {!facts.isReady ? (
          <p className="muted">Loading…</p>
        ) : shownFacts.length === 0 ? (
          <p className="muted">{facts.data.length ? 'No fact matches.' : 'Nothing learned yet.'}</p>
        ) : (
          <ul className="facts" data-testid="facts">
            {shownFacts.map((f) => {
              const confidence = Number(f.confidence)
              const level = confidenceLevel(confidence)
              return (
                <li key={f.id} data-testid="fact">
                  <span className={`bulb ${level.toLowerCase()}`}
                    title={`${level} confidence (${confidence})`}
                    aria-label={`${level} confidence`}>💡</span>
                  <span className="badge subject">{users.get(f.subject_id)?.name ?? '…'}</span>{' '}
                  {f.predicate}{' '}
                  <span className="badge object">{f.object}</span>
                </li>
              )
            })}
          </ul>
        )}
      </section>
      <section aria-labelledby="context-title">
        <h3 id="context-title">Context</h3>
        <label htmlFor="event-filter" className="sr-only">Filter events</label>
        <input id="event-filter" type="search" placeholder="Filter events..." value={eventFilter}
          onChange={(e) => setEventFilter(e.target.value)} />
        {!events.isReady ? (
          <p className="muted">Loading…</p>
        ) : shownEvents.length === 0 ? (
          <p className="muted">No event matches.</p>
        ) : (
          <ul className="events" data-testid="context">
            {shownEvents.map((e) => {
              const author = users.get(e.user_id)
              return (
                <li key={e.id} data-testid="context-event">
                  <span className={`badge kind-${e.kind}`}>
                    {e.kind === 'system' ? 'action' : e.kind === 'text' ? 'message' : e.kind}
                  </span>{' '}
                  {e.kind === 'text' ? 'from' : 'by'}{' '}
                  <span className={author?.kind === 'agent' ? 'badge agent' : 'badge human'}>
                    {author?.name ?? '…'}
                  </span>
                  <details>
                    <summary>data</summary>
                    <pre>{JSON.stringify(e.data, null, 2)}</pre>
                  </details>
                </li>
              )
            })}
          </ul>
        )}
      </section>
    </aside>
  )
}
