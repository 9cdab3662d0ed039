// The sign-up / sign-in screen.

import { useState, type FormEvent } from 'react'
import { ApiError, signIn, type Me } from './api'

export function Welcome({ onSignedIn }: { onSignedIn: (me: Me) => void }) {
  const [mode, setMode] = useState<'sign-in' | 'sign-up'>('sign-up')
  const [name, setName] = useState('')
  const [password, setPassword] = useState('')
  const [error, setError] = useState<string | null>(null)
  const [busy, setBusy] = useState(false)

  async function submit(event: FormEvent) {
    event.preventDefault()
    const trimmed = name.trim().toLowerCase()
    if (!trimmed) return setError('Please enter your name')
    if (password.length === 0) return setError('Please enter a password')
    setBusy(true)
    setError(null)
    try {
      onSignedIn(await signIn(mode, trimmed, password))
    } catch (caught) {
      setError(caught instanceof ApiError ? caught.message : 'There was an error. Please try again')
    } finally {
      setBusy(false)
    }
  }

  return (
    <main className="welcome">
      <form className="card" onSubmit={submit} aria-labelledby="welcome-title">
        <h1 id="welcome-title">🔥 Burn</h1>
        <p className="muted">A group chat where three AI agents get to know you, then roast you.</p>
        <div className="tabs" role="group" aria-label="Account">
          <button
            type="button"
            aria-pressed={mode === 'sign-up'}
            onClick={() => setMode('sign-up')}
          >
            Sign up
          </button>
          <button
            type="button"
            aria-pressed={mode === 'sign-in'}
            onClick={() => setMode('sign-in')}
          >
            Sign in
          </button>
        </div>
        <label htmlFor="name">Username</label>
        <input
          id="name"
          name="username"
          autoComplete="username"
          placeholder="alice"
          value={name}
          onChange={(e) => setName(e.target.value)}
          autoFocus
        />
        <label htmlFor="password">Password</label>
        <input
          id="password"
          name="password"
          type="password"
          autoComplete={mode === 'sign-up' ? 'new-password' : 'current-password'}
          value={password}
          onChange={(e) => setPassword(e.target.value)}
        />
        {error && (
          <p className="error" role="alert" data-testid="welcome-error">
            {error}
          </p>
        )}
        <button type="submit" className="primary" disabled={busy}>
          {busy ? 'Entering...' : mode === 'sign-up' ? 'Create account' : 'Enter'}
        </button>
        <section className="about" aria-label="About">
          <h2>How it works</h2>
          <p>
            Start a thread and invite friends with its link. Sarah, the producer, asks you about
            yourselves and keeps what she learns in Memory; Jerry and Frankie use it to roast you.
            The Computer panel shows the facts and every event the agents see.
          </p>
        </section>
      </form>
    </main>
  )
}
