// The chat of a thread: its events in order, rendered by kind, and the composer. A message
// appears at once (an optimistic row) and is confirmed when its write's txid has synced back.

import { useEffect, useMemo, useRef, useState, type KeyboardEvent } from 'react'
import * as api from './api'
import type { BurnEvent, Collections, Fact, User } from './collections'
import type { ThreadRows } from './threadRows'
import { Avatar, failure, formatTime, useMinute } from './ui'

export function sortEvents(events: BurnEvent[]): BurnEvent[] {
  // synced rows by their sequence; optimistic ones (no seq yet) last
  return [...events].sort((a, b) => (a.seq ?? Infinity) - (b.seq ?? Infinity))
}

const str = (value: unknown): string => (typeof value === 'string' ? value : '')
const lowerFirst = (text: string) => text.charAt(0).toLowerCase() + text.slice(1)

export function Chat(props: {
  c: Collections
  me: api.Me
  threadId: string
  users: Map<string, User>
  rows: ThreadRows
}) {
  const { c, me, threadId, users, rows } = props
  const ordered = useMemo(() => sortEvents(rows.events), [rows.events])
  const factsByToolUse = useMemo(() => {
    const map = new Map<string, Fact[]>()
    for (const f of rows.facts) map.set(f.tool_use_event_id, [...(map.get(f.tool_use_event_id) ?? []), f])
    return map
  }, [rows.facts])
  const now = useMinute()
  const bottom = useRef<HTMLDivElement>(null)
  const lastData = ordered.length ? JSON.stringify(ordered[ordered.length - 1].data).length : 0
  useEffect(() => {
    void bottom.current?.scrollIntoView({ block: 'end' })
  }, [ordered.length, lastData])

  const asked = new Set<string>()
  return (
    <>
      <div className="chat" data-testid="chat" aria-live="polite" aria-busy={!rows.eventsReady}>
        {!rows.eventsReady && ordered.length === 0 ? (
          <p className="muted center" data-testid="chat-loading">Loading messages…</p>
        ) : ordered.length === 0 ? (
          <p className="muted center">No messages yet. Say hello!</p>
        ) : (
          ordered.map((e) => {
            const author = users.get(e.user_id)
            const firstAsk =
              e.kind === 'tool_use' && str(e.data.name) === 'ask_user_about_themselves'
                ? !asked.has(str((e.data.input as Record<string, unknown>)?.subject))
                : false
            if (firstAsk) asked.add(str((e.data.input as Record<string, unknown>)?.subject))
            return (
              <EventView key={e.id} event={e} author={author} me={me} now={now}
                facts={factsByToolUse.get(e.id) ?? []} users={users} firstAsk={firstAsk} />
            )
          })
        )}
        <div ref={bottom} />
      </div>
      <Composer c={c} me={me} threadId={threadId} />
    </>
  )
}

function Pill({ children, testid }: { children: React.ReactNode; testid?: string }) {
  return (
    <div className="pill-row">
      <span className="pill" data-testid={testid}>{children}</span>
    </div>
  )
}

function EventView(props: {
  event: BurnEvent
  author: User | undefined
  me: api.Me
  now: number
  facts: Fact[]
  users: Map<string, User>
  firstAsk: boolean
}) {
  const { event: e, author, me, now, facts, users, firstAsk } = props
  const name = author?.name ?? '…'
  const who = e.user_id === me.id ? 'you' : name
  if (e.kind === 'system') {
    return (
      <Pill testid="system-event">
        <b>{who}</b> {str(e.data.action)} the {str(e.data.target)}
      </Pill>
    )
  }
  if (e.kind === 'tool_result') {
    return <Pill>tool result: {JSON.stringify(e.data.content)}</Pill>
  }
  if (e.kind === 'tool_use') {
    const tool = str(e.data.name)
    const input = (e.data.input ?? {}) as Record<string, unknown>
    // the subject is a user's id (or, from some models, a name)
    const subject = users.get(str(input.subject))?.name ?? str(input.subject)
    if (tool === 'extract_facts') {
      const bySubject = new Map<string, number>()
      for (const f of facts) {
        const subjectName = users.get(f.subject_id)?.name ?? 'someone'
        bySubject.set(subjectName, (bySubject.get(subjectName) ?? 0) + 1)
      }
      const parts = [...bySubject].map(([n, k]) => `${k === 1 ? 'a fact' : `${k} facts`} about @${n}`)
      return (
        <Pill testid="facts-extracted">
          <b>{name}</b>{' '}
          {e.status === 'streaming'
            ? 'is extracting facts…'
            : parts.length
              ? `extracted ${parts.join(' and ')}`
              : 'extracted facts'}
        </Pill>
      )
    }
    let text: string
    if (tool === 'ask_user_about_themselves') {
      const question = str(input.question)
      text = firstAsk ? `Hi @${subject}, ${lowerFirst(question)}` : `@${subject} ${question}`
    } else if (tool === 'roast_user') {
      text = `@${subject} ${lowerFirst(str(input.roast))}`
    } else {
      return null
    }
    return (
      <Message event={e} name={name} agent label={tool} text={text} now={now}
        streaming={e.status === 'streaming'} />
    )
  }
  return (
    <Message event={e} name={name} agent={author?.kind === 'agent'} text={str(e.data.text)}
      now={now} pending={e.seq == null} mine={e.user_id === me.id} />
  )
}

function Message(props: {
  event: BurnEvent
  name: string
  agent?: boolean
  label?: string
  text: string
  now: number
  streaming?: boolean
  pending?: boolean
  mine?: boolean
}) {
  const { event, name, agent, label, text, now, streaming, pending, mine } = props
  return (
    <article
      className={`message${streaming ? ' streaming' : ''}${pending ? ' pending' : ''}${mine ? ' mine' : ''}`}
      data-testid="message"
      data-kind={label ?? 'text'}
      data-status={streaming ? 'streaming' : pending ? 'pending' : 'final'}
      aria-label={`${name}${label ? ` (${label})` : ''}`}
    >
      <Avatar name={name} agent={agent} />
      <div className="body">
        <div className="meta">
          <span className={agent ? 'name agent' : 'name'}>{name}</span>
          {label && <span className="label">{label}</span>}
          <time dateTime={event.inserted_at ?? undefined}>
            {pending ? 'sending…' : formatTime(event.inserted_at, now)}
          </time>
          {streaming && <span className="typing" aria-label="writing">●●●</span>}
        </div>
        <p className="text" data-testid="message-text">{text}</p>
      </div>
    </article>
  )
}

function Composer({ c, me, threadId }: { c: Collections; me: api.Me; threadId: string }) {
  const [text, setText] = useState('')
  const input = useRef<HTMLTextAreaElement>(null)

  function send() {
    const trimmed = text.trim()
    if (!trimmed) return
    const tx = c.events.insert({
      id: api.uuid(),
      seq: null,
      thread_id: threadId,
      user_id: me.id,
      kind: 'text',
      data: { text: trimmed },
      status: 'final',
      inserted_at: null,
    })
    tx.isPersisted.promise.catch(failure('Your message was not sent'))
    setText('')
    input.current?.focus()
  }

  function onKey(event: KeyboardEvent<HTMLTextAreaElement>) {
    if (event.key === 'Enter' && !event.shiftKey && !event.altKey && !event.ctrlKey && !event.metaKey) {
      event.preventDefault()
      send()
    }
  }

  return (
    <form className="composer" onSubmit={(e) => { e.preventDefault(); send() }}>
      <label htmlFor="composer" className="sr-only">Message</label>
      <textarea id="composer" ref={input} rows={1} placeholder="Type a message..." value={text}
        maxLength={4000} onChange={(e) => setText(e.target.value)} onKeyDown={onKey} />
      <button type="submit" className="primary" disabled={!text.trim()}>Send</button>
    </form>
  )
}
