// Whether the sync routes are reachable, as seen by the shape streams' own requests: a failed
// fetch marks the app offline, the next answered one marks it online again.

type Listener = () => void

let online = typeof navigator === 'undefined' ? true : navigator.onLine
let signedOut = false
const listeners = new Set<Listener>()

function set(next: boolean): void {
  if (next === online) return
  online = next
  for (const listener of listeners) listener()
}

export const connection = {
  subscribe(listener: Listener): () => void {
    listeners.add(listener)
    return () => listeners.delete(listener)
  },
  isOnline: (): boolean => online,
  isSignedOut: (): boolean => signedOut,
  markSignedOut(): void {
    signedOut = true
    for (const listener of listeners) listener()
  },
}

if (typeof window !== 'undefined') {
  window.addEventListener('online', () => set(true))
  window.addEventListener('offline', () => set(false))
}

/**
 * fetch for the shape streams: records reachability and a lost session.
 *
 * The streams authenticate with the sync token in a header and send no cookies. Browsers keep
 * credential-less requests in a connection pool of their own, and an HTTP/1.1 origin gets six
 * connections per pool: the app's six live sync requests would otherwise take every one of
 * them and hold each write back until a long-poll ends.
 */
export const trackingFetch: typeof fetch = async (input, init) => {
  try {
    const response = await fetch(input, { ...init, credentials: 'omit' })
    set(response.status < 500 || response.status === 503 ? response.status !== 503 : false)
    if (response.status === 401) connection.markSignedOut()
    return response
  } catch (error) {
    if (!(error instanceof DOMException && error.name === 'AbortError')) set(false)
    throw error
  }
}
