// The web app's write API (under /api): every call is same-origin with the session cookie,
// and every write answers {"txid": n}, the transaction the change will arrive in.

export interface Me {
  id: string
  name: string
  /** Reads this session's sync routes (and nothing else); see collections.ts. */
  sync_token: string
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message)
  }
}

async function call<T>(path: string, body?: unknown): Promise<T> {
  let response: Response
  try {
    response = await fetch(path, {
      method: body === undefined ? 'GET' : 'POST',
      credentials: 'same-origin',
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    })
  } catch {
    throw new ApiError(0, 'The server cannot be reached. Check your connection and try again.')
  }
  if (response.status === 204) return undefined as T
  const payload: unknown = await response.json().catch(() => null)
  if (!response.ok) throw new ApiError(response.status, errorMessage(payload, response.status))
  return payload as T
}

function errorMessage(payload: unknown, status: number): string {
  if (payload && typeof payload === 'object') {
    const record = payload as Record<string, unknown>
    for (const key of ['message', 'error', 'detail']) {
      if (typeof record[key] === 'string') return record[key] as string
    }
  }
  return `The server answered ${status}`
}

export interface Txid {
  txid: number
}

export const uuid = (): string => crypto.randomUUID()

export async function me(): Promise<Me | null> {
  try {
    return await call<Me>('/api/auth/me')
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return null
    throw error
  }
}

export async function signIn(mode: 'sign-up' | 'sign-in', name: string, password: string) {
  const answer = await call<{ user: Omit<Me, 'sync_token'>; sync_token: string }>(
    `/api/auth/${mode}`,
    { name, password },
  )
  return { ...answer.user, sync_token: answer.sync_token }
}

export const signOut = () => call<void>('/api/auth/sign-out', {})
export const createThread = (id: string, name: string) => call<Txid>('/api/threads', { id, name })
const threadPath = (threadId: string, verb: string) =>
  `/api/threads/${encodeURIComponent(threadId)}/${verb}`
export const renameThread = (threadId: string, name: string) =>
  call<Txid>(threadPath(threadId, 'rename'), { id: uuid(), name })
export const joinThread = (threadId: string) =>
  call<Txid>(threadPath(threadId, 'join'), { id: uuid() })
export const leaveThread = (threadId: string, userId?: string) =>
  call<Txid>(threadPath(threadId, 'leave'), userId ? { id: uuid(), user_id: userId } : { id: uuid() })
export const postMessage = (threadId: string, id: string, text: string) =>
  call<Txid>(threadPath(threadId, 'messages'), { id, text })
