// The signed-in app: the thread list (left), the open thread (middle) and the Computer
// sidebar (right). Below 700 px wide the two sidebars become overlays opened from the header.

import { eq, useLiveQuery } from '@tanstack/react-db'
import { useEffect, useMemo, useState, useSyncExternalStore, type FormEvent } from 'react'
import * as api from './api'
import { Chat } from './Chat'
import type { Collections, Thread, User } from './collections'
import { Computer } from './Computer'
import { connection } from './connection'
import { useThreadRows, type ThreadRows } from './threadRows'
import { Avatar, failure, navigate, notify, usePath } from './ui'

function useConnection() {
  const online = useSyncExternalStore(connection.subscribe, connection.isOnline)
  const signedOut = useSyncExternalStore(connection.subscribe, connection.isSignedOut)
  return { online, signedOut }
}

/** Threads created in this tab: listed before their membership has synced. */
const createdHere = new Set<string>()
/** Threads joined in this tab: not "unknown" while their rows sync in. */
const joinedHere = new Set<string>()
/** Joins in flight (an effect may run again before the first answers). */
const joining = new Set<string>()
/** Threads this tab has listed: once gone from the list, the user has left them. */
const listedHere = new Set<string>()

/** The signed-in user's threads, newest first, from the memberships and threads collections. */
function useMyThreads(c: Collections, me: api.Me) {
  const mine = useLiveQuery(
    (q) => q.from({ m: c.memberships }).where(({ m }) => eq(m.user_id, me.id)),
    [me.id],
  )
  const threads = useLiveQuery((q) => q.from({ t: c.threads }), [])
  const list = useMemo(() => {
    const ids = new Set(mine.data.map((m) => m.thread_id))
    return threads.data
      .filter((t) => ids.has(t.id) || createdHere.has(t.id))
      .sort((a, b) => (b.inserted_at ?? '').localeCompare(a.inserted_at ?? ''))
  }, [mine.data, threads.data])
  return { list, ready: mine.isReady && threads.isReady, memberships: mine.data }
}

export function Workspace({ c, me }: { c: Collections; me: api.Me }) {
  const path = usePath()
  const { online, signedOut } = useConnection()
  const { list, ready, memberships } = useMyThreads(c, me)
  const [panel, setPanel] = useState<'none' | 'threads' | 'computer'>('none')
  const users = useLiveQuery((q) => q.from({ u: c.users }), [])
  const usersById = useMemo(() => new Map(users.data.map((u) => [u.id, u as User])), [users.data])

  const joinMatch = /^\/join\/([0-9a-f-]{36})$/i.exec(path)
  const threadMatch = /^\/threads\/([0-9a-f-]{36})$/i.exec(path)
  const threadId = threadMatch?.[1] ?? null
  const current = threadId ? list.find((t) => t.id === threadId) : undefined
  const rows = useThreadRows(c, current?.id ?? null)

  useEffect(() => {
    if (!joinMatch) return
    const id = joinMatch[1]
    const already = memberships.some((m) => m.thread_id === id)
    if (!ready) return
    if (already) return navigate(`/threads/${id}`, true)
    if (joinedHere.has(id) || joining.has(id)) return
    joining.add(id)
    api.joinThread(id).finally(() => joining.delete(id)).then(
      () => {
        joinedHere.add(id)
        navigate(`/threads/${id}`, true)
      },
      (error) => {
        failure('Could not join the thread')(error)
        navigate('/', true)
      },
    )
  }, [joinMatch?.[1], ready])

  // "/" opens the newest thread; a thread the user is not (or no longer) in sends them to "/"
  useEffect(() => {
    if (!ready) return
    for (const t of list) listedHere.add(t.id)
    if (path === '/' && list.length > 0) navigate(`/threads/${list[0].id}`, true)
    const expected = threadId && (joinedHere.has(threadId) || createdHere.has(threadId))
    if (threadId && !current && (listedHere.has(threadId) || !expected)) navigate('/', true)
  }, [ready, path, list, threadId, current])
  useEffect(() => {
    setPanel('none')
  }, [path])

  function newThread() {
    const id = api.uuid()
    createdHere.add(id)
    const tx = c.threads.insert({
      id,
      name: 'Untitled thread',
      status: 'started',
      inserted_at: new Date().toISOString(),
    })
    navigate(`/threads/${id}`)
    tx.isPersisted.promise.catch(failure('Could not create the thread'))
  }

  async function signOut() {
    await api.signOut().catch(() => undefined)
    window.location.assign('/')
  }

  return (
    <div className={`workspace panel-${panel}`}>
      {!online && (
        <div className="banner offline" role="status" data-testid="offline">
          Offline: reconnecting… Changes you make are kept and sent when the connection is back.
        </div>
      )}
      {signedOut && (
        <div className="banner error" role="alert">
          Your session has ended.{' '}
          <button type="button" className="link" onClick={() => window.location.assign('/')}>
            Sign in again
          </button>
        </div>
      )}
      <nav className="left" aria-label="Threads">
        <div className="brand">
          <button type="button" className="link brand-link" onClick={() => navigate('/')}>
            🔥 Burn
          </button>
        </div>
        <button type="button" className="primary new-thread" onClick={newThread}>
          + New thread
        </button>
        <h2 className="section-title">Threads</h2>
        {!ready ? (
          <p className="muted pad" data-testid="threads-loading">
            Loading threads…
          </p>
        ) : list.length === 0 ? (
          <p className="muted pad">No threads yet.</p>
        ) : (
          <ul className="thread-list" data-testid="thread-list">
            {list.map((t) => (
              <li key={t.id}>
                <a
                  href={`/threads/${t.id}`}
                  aria-current={t.id === threadId ? 'page' : undefined}
                  onClick={(e) => {
                    e.preventDefault()
                    navigate(`/threads/${t.id}`)
                  }}
                >
                  {t.name}
                </a>
              </li>
            ))}
          </ul>
        )}
        <div className="footer">
          <Avatar name={me.name} />
          <span className="me" data-testid="me">
            {me.name}
          </span>
          <button type="button" className="danger small" onClick={signOut}>
            Sign out
          </button>
        </div>
      </nav>
      <main className="middle" aria-label="Thread">
        {current ? (
          <ThreadView key={current.id} c={c} me={me} thread={current} users={usersById}
            rows={rows} setPanel={setPanel} />
        ) : (
          <div className="empty">
            <MobileToggles setPanel={setPanel} />
            {!ready || joinMatch || (threadId && !current) ? (
              <p className="muted" data-testid="thread-loading">Loading…</p>
            ) : (
              <>
                <h1>Welcome, {me.name}</h1>
                <p className="muted">
                  Start a thread, then share its invite link with your friends.
                </p>
                <button type="button" className="primary" onClick={newThread}>
                  Start a thread
                </button>
              </>
            )}
          </div>
        )}
      </main>
      {current && (
        <Computer rows={rows} users={usersById} onClose={() => setPanel('none')} />
      )}
      {panel !== 'none' && (
        <button
          type="button"
          className="scrim"
          aria-label="Close panel"
          onClick={() => setPanel('none')}
        />
      )}
    </div>
  )
}

function MobileToggles({ setPanel }: { setPanel: (p: 'threads' | 'computer') => void }) {
  return (
    <button type="button" className="icon mobile-only" aria-label="Show threads"
      onClick={() => setPanel('threads')}>
      ☰
    </button>
  )
}

function ThreadView(props: {
  c: Collections
  me: api.Me
  thread: Thread
  users: Map<string, User>
  rows: ThreadRows
  setPanel: (p: 'threads' | 'computer') => void
}) {
  const { c, me, thread, users, rows, setPanel } = props
  const members = useLiveQuery(
    (q) => q.from({ m: c.memberships }).where(({ m }) => eq(m.thread_id, thread.id)),
    [thread.id],
  )
  const statuses = useLiveQuery(
    (q) => q.from({ s: c.agentStatus }).where(({ s }) => eq(s.thread_id, thread.id)),
    [thread.id],
  )
  const mine = members.data.find((m) => m.user_id === me.id)
  const isOwner = mine?.role === 'owner'
  const [editing, setEditing] = useState(false)
  const [name, setName] = useState(thread.name)
  const [copied, setCopied] = useState(false)
  const people = members.data
    .map((m) => ({ m, u: users.get(m.user_id) }))
    .sort((a, b) => (a.u?.name ?? '').localeCompare(b.u?.name ?? ''))
  const unwell = statuses.data.filter((s) => s.state !== 'running' && s.state !== 'stopped')

  function rename(event: FormEvent) {
    event.preventDefault()
    const next = name.trim()
    setEditing(false)
    if (!next || next === thread.name) return
    const tx = c.threads.update(thread.id, (draft) => {
      draft.name = next
    })
    tx.isPersisted.promise.catch(failure('Could not rename the thread'))
  }

  function leave() {
    if (!mine) return
    const tx = c.memberships.delete(mine.id)
    navigate('/')
    tx.isPersisted.promise.catch(failure('Could not leave the thread'))
  }

  function copyInvite() {
    const link = `${window.location.origin}/join/${thread.id}`
    navigator.clipboard?.writeText(link).then(
      () => {
        setCopied(true)
        window.setTimeout(() => setCopied(false), 2000)
      },
      () => notify(`Invite link: ${link}`),
    )
  }

  return (
    <>
      <header className="thread-header">
        <MobileToggles setPanel={setPanel} />
        {editing ? (
          <form className="rename" onSubmit={rename}>
            <label htmlFor="thread-name" className="sr-only">Thread name</label>
            <input id="thread-name" value={name} maxLength={200} autoFocus
              onChange={(e) => setName(e.target.value)} />
            <button type="submit" className="primary small">Save</button>
            <button type="button" className="small" onClick={() => setEditing(false)}>Cancel</button>
          </form>
        ) : (
          <h1 className="thread-title" data-testid="thread-title">{thread.name}</h1>
        )}
        <div className="people" aria-label="People in this thread">
          {people.map(({ m, u }) => (
            <span key={m.id} title={`${u?.name ?? '…'} (${m.role})`}>
              <Avatar name={u?.name ?? '?'} agent={u?.kind === 'agent'} />
            </span>
          ))}
        </div>
        <div className="actions">
          <button type="button" className="small" onClick={copyInvite}>
            {copied ? 'Invite link copied!' : 'Copy invite link'}
          </button>
          {isOwner && !editing && (
            <button type="button" className="small" onClick={() => {
              setName(thread.name)
              setEditing(true)
            }}>Rename</button>
          )}
          {mine && !isOwner && (
            <button type="button" className="small danger" onClick={leave}>Leave</button>
          )}
          <button type="button" className="icon mobile-only" aria-label="Show the computer"
            onClick={() => setPanel('computer')}>
            ⚙
          </button>
        </div>
      </header>
      {thread.status !== 'started' && (
        <div className="banner" role="status">This thread is {thread.status}.</div>
      )}
      {unwell.map((s) => (
        <div key={s.agent_id} className="banner warn" role="status" data-testid="agent-status">
          {users.get(s.agent_id)?.name ?? 'An agent'}{' '}
          {s.state === 'over_budget'
            ? 'is over budget for this thread'
            : s.state === 'quarantined'
              ? 'is quarantined (unwell)'
              : 'is backing off after an error'}
          {s.reason ? `: ${s.reason}` : ''}
        </div>
      ))}
      <Chat c={c} me={me} threadId={thread.id} users={users} rows={rows} />
    </>
  )
}
