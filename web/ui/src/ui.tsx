// Small shared pieces: avatars, times, the navigation helper and the error notices.

import { useEffect, useState, useSyncExternalStore } from 'react'

const PALETTE = ['#b45309', '#0e7490', '#7c3aed', '#be123c', '#15803d', '#1d4ed8', '#a21caf']

function hash(text: string): number {
  let value = 0
  for (const char of text) value = (value * 31 + char.charCodeAt(0)) | 0
  return Math.abs(value)
}

export function Avatar({ name, agent }: { name: string; agent?: boolean }) {
  const colour = PALETTE[hash(name) % PALETTE.length]
  return (
    <span
      className={agent ? 'avatar avatar-agent' : 'avatar'}
      style={{ background: colour }}
      aria-hidden="true"
    >
      {name.slice(0, 2).toUpperCase()}
    </span>
  )
}

export function formatTime(iso: string | null, now: number): string {
  if (!iso) return 'now'
  const when = new Date(iso)
  if (Number.isNaN(when.getTime()) || now - when.getTime() < 60_000) return 'now'
  const hhmm = when.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })
  const today = new Date(now)
  if (when.toDateString() === today.toDateString()) return hhmm
  const yesterday = new Date(now - 86_400_000)
  if (when.toDateString() === yesterday.toDateString()) return `Yesterday at ${hhmm}`
  return when.toLocaleDateString()
}

/** The current time, refreshed every minute (for relative times). */
export function useMinute(): number {
  const [now, setNow] = useState(() => Date.now())
  useEffect(() => {
    const timer = window.setInterval(() => setNow(Date.now()), 60_000)
    return () => window.clearInterval(timer)
  }, [])
  return now
}

// -- navigation ------------------------------------------------------------------------------

const pathListeners = new Set<() => void>()
window.addEventListener('popstate', () => pathListeners.forEach((l) => l()))

export function navigate(path: string, replace = false): void {
  if (path === window.location.pathname) return
  if (replace) window.history.replaceState(null, '', path)
  else window.history.pushState(null, '', path)
  pathListeners.forEach((l) => l())
}

export function usePath(): string {
  return useSyncExternalStore(
    (listener) => {
      pathListeners.add(listener)
      return () => pathListeners.delete(listener)
    },
    () => window.location.pathname,
  )
}

// -- notices: a failed write is said, never silently dropped --------------------------------

export interface Notice {
  id: number
  text: string
}
let notices: Notice[] = []
let nextNotice = 1
const noticeListeners = new Set<() => void>()

export function notify(text: string): void {
  const notice = { id: nextNotice++, text }
  notices = [...notices, notice]
  noticeListeners.forEach((l) => l())
  window.setTimeout(() => dismiss(notice.id), 8000)
}

export function dismiss(id: number): void {
  notices = notices.filter((n) => n.id !== id)
  noticeListeners.forEach((l) => l())
}

export function failure(what: string) {
  return (error: unknown) => notify(`${what}: ${error instanceof Error ? error.message : error}`)
}

export function Notices() {
  const current = useSyncExternalStore(
    (listener) => {
      noticeListeners.add(listener)
      return () => noticeListeners.delete(listener)
    },
    () => notices,
  )
  return (
    <div className="notices" role="status" aria-live="polite">
      {current.map((n) => (
        <div key={n.id} className="notice" data-testid="notice">
          <span>{n.text}</span>
          <button type="button" className="link" onClick={() => dismiss(n.id)} aria-label="Dismiss">
            ×
          </button>
        </div>
      ))}
    </div>
  )
}
