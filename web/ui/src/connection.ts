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

/** fetch for the shape streams: records reachability and a lost session. */
export const trackingFetch: typeof fetch = async (input, init) => {
  try {
    const response = await fetch(input, { ...init, credentials: 'same-origin' })
    set(response.status < 500 || response.status === 503 ? response.status !== 503 : false)
    if (response.status === 401) connection.markSignedOut()
    return response
  } catch (error) {
    if (!(error instanceof DOMException && error.name === 'AbortError')) set(false)
    throw error
  }
}
