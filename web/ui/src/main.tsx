// Entry point: find out who is signed in, then show the welcome screen or the app.

import { StrictMode, useEffect, useMemo, useState } from 'react'
import { createRoot } from 'react-dom/client'
import * as api from './api'
import { createCollections } from './collections'
import { Notices, navigate } from './ui'
import { Welcome } from './Welcome'
import { Workspace } from './Workspace'
import './styles.css'

type Auth = { state: 'loading' } | { state: 'error'; message: string } | { state: 'out' } | { state: 'in'; me: api.Me }

function SignedIn({ me }: { me: api.Me }) {
  const collections = useMemo(() => createCollections(me.sync_token), [me.sync_token])
  return <Workspace c={collections} me={me} />
}

function App() {
  const [auth, setAuth] = useState<Auth>({ state: 'loading' })
  const load = () =>
    api.me().then(
      (me) => setAuth(me ? { state: 'in', me } : { state: 'out' }),
      (error: unknown) =>
        setAuth({ state: 'error', message: error instanceof Error ? error.message : String(error) }),
    )
  useEffect(() => {
    void load()
  }, [])
  switch (auth.state) {
    case 'loading':
      return <main className="boot" aria-busy="true"><p>Loading Burn…</p></main>
    case 'error':
      return (
        <main className="boot">
          <h1>Burn cannot start</h1>
          <p role="alert">{auth.message}</p>
          <button type="button" className="primary" onClick={() => { setAuth({ state: 'loading' }); void load() }}>
            Try again
          </button>
        </main>
      )
    case 'out':
      return <Welcome onSignedIn={(me) => { setAuth({ state: 'in', me }); if (!window.location.pathname.startsWith('/join/')) navigate('/', true) }} />
    case 'in':
      return <SignedIn me={auth.me} />
  }
}

createRoot(document.getElementById('root')!).render(
  <StrictMode>
    <App />
    <Notices />
  </StrictMode>,
)
