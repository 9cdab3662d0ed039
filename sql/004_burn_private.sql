-- Account secrets and bookkeeping of the web app, in a schema of their own.
--
-- Nothing here is published or granted to syncd's role: password hashes, sessions, sign-in
-- attempts and the record of applied writes can never reach a shape.

CREATE SCHEMA burn_private;
REVOKE ALL ON SCHEMA burn_private FROM PUBLIC;

CREATE TABLE burn_private.credentials (
    user_id uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    password_hash text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- A session is valid while it is neither expired nor revoked (signing out revokes it).
CREATE TABLE burn_private.sessions (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz
);
CREATE INDEX sessions_user_idx ON burn_private.sessions (user_id);

-- Sign-in and sign-up attempts, counted per account and per client address to throttle them.
-- A sign-in is recorded as `pending` before the password is checked, so parallel guesses count.
CREATE TABLE burn_private.attempts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    action text NOT NULL CHECK (action IN ('sign-in', 'sign-up')),
    account text NOT NULL,
    client text NOT NULL,
    outcome text NOT NULL CHECK (outcome IN ('pending', 'failed', 'succeeded')),
    attempted_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX attempts_account_idx ON burn_private.attempts (account, attempted_at);
CREATE INDEX attempts_client_idx ON burn_private.attempts (client, attempted_at);
CREATE INDEX attempts_time_idx ON burn_private.attempts (attempted_at);

-- Every write through the API, keyed by its client-generated id: a retried write finds its
-- row and gets the same answer instead of being applied again.
CREATE TABLE burn_private.writes (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    operation text NOT NULL,
    request jsonb NOT NULL,
    txid bigint NOT NULL,
    written_at timestamptz NOT NULL DEFAULT now()
);
