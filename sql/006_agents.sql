-- The agent runtime's tables.
--
-- Bookkeeping lives in the `agents` schema, which is neither published nor granted to syncd:
-- leases and positions, turns (one per triggering event and agent), every LLM call with its
-- tokens and latency, and the per-thread budget. What the UI must see goes to public tables
-- that are published: `agent_status` (running, backing off, over budget, quarantined,
-- stopped) and the `status` of an event (a reply being streamed, or final).

CREATE SCHEMA agents;
REVOKE ALL ON SCHEMA agents FROM PUBLIC;

-- One row per (thread, agent user): who runs it, under which epoch, and how far it got.
-- Every grant of the lease increments `epoch`; every write of an agent checks it (fencing).
-- `position` is the `seq` of the last event the agent has handled, `position_lsn` the
-- replication position (a consistent cut of its shapes) it handled it at.
CREATE TABLE agents.leases (
    thread_id uuid NOT NULL REFERENCES threads (id) ON DELETE CASCADE,
    agent_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    status text NOT NULL DEFAULT 'active'
        CHECK (status IN ('active', 'stopped', 'quarantined')),
    worker text,
    epoch bigint NOT NULL DEFAULT 0,
    heartbeat_at timestamptz,
    expires_at timestamptz,
    position bigint NOT NULL DEFAULT 0,
    position_lsn numeric NOT NULL DEFAULT 0,
    failures int NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (thread_id, agent_id)
);
CREATE INDEX leases_claimable_idx ON agents.leases (expires_at) WHERE status = 'active';
CREATE INDEX leases_worker_idx ON agents.leases (worker);

-- Live worker processes, for sharing the agents fairly between them.
CREATE TABLE agents.workers (
    id text PRIMARY KEY,
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);

-- One turn per (agent, triggering event): the cause key of every effect of that turn. Its
-- reply is recorded (status `replied`) before its effects are written (status `done`), so a
-- restarted agent applies a recorded reply instead of calling the model again.
CREATE TABLE agents.turns (
    id uuid PRIMARY KEY,
    thread_id uuid NOT NULL REFERENCES threads (id) ON DELETE CASCADE,
    agent_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    trigger_event_id uuid NOT NULL,
    trigger_seq bigint NOT NULL,
    input_lsn numeric NOT NULL,
    status text NOT NULL DEFAULT 'calling'
        CHECK (status IN ('calling', 'replied', 'done', 'skipped', 'failed')),
    attempts int NOT NULL DEFAULT 0,
    epoch bigint NOT NULL,
    reserved_tokens bigint NOT NULL DEFAULT 0,
    tool_use_id text,
    reply jsonb,
    effect_event_id uuid,
    reason text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (agent_id, trigger_event_id)
);
CREATE INDEX turns_thread_idx ON agents.turns (thread_id, agent_id);

-- Every request sent to the model (each attempt of a turn), with its outcome.
CREATE TABLE agents.llm_calls (
    id uuid PRIMARY KEY,
    turn_id uuid NOT NULL REFERENCES agents.turns (id) ON DELETE CASCADE,
    thread_id uuid NOT NULL,
    agent_id uuid NOT NULL,
    caused_by uuid NOT NULL,
    epoch bigint NOT NULL,
    worker text NOT NULL,
    request_hash text NOT NULL,
    status text NOT NULL DEFAULT 'sent'
        CHECK (status IN ('sent', 'replied', 'invalid', 'failed')),
    failure text,
    reply jsonb,
    tool_use_id text,
    tokens_in bigint,
    tokens_out bigint,
    latency_ms double precision,
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE INDEX llm_calls_turn_idx ON agents.llm_calls (turn_id);
CREATE INDEX llm_calls_thread_idx ON agents.llm_calls (thread_id, started_at);

-- Per-thread token budget and call rate. A call reserves its estimate in the transaction
-- that records it; the reply settles the reservation to the tokens actually used.
CREATE TABLE agents.budgets (
    thread_id uuid PRIMARY KEY REFERENCES threads (id) ON DELETE CASCADE,
    token_cap bigint NOT NULL CHECK (token_cap >= 0),
    spent bigint NOT NULL DEFAULT 0 CHECK (spent >= 0),
    reserved bigint NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    calls_per_minute int NOT NULL CHECK (calls_per_minute > 0),
    window_start timestamptz NOT NULL DEFAULT now(),
    calls_in_window int NOT NULL DEFAULT 0
);

-- What the UI shows about each agent of a thread ("Jerry is unwell").
CREATE TABLE agent_status (
    thread_id uuid NOT NULL REFERENCES threads (id) ON DELETE CASCADE,
    agent_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    state text NOT NULL
        CHECK (state IN ('running', 'backing_off', 'over_budget', 'quarantined', 'stopped')),
    reason text NOT NULL DEFAULT '' CHECK (char_length(reason) <= 500),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (thread_id, agent_id)
);

-- A reply being streamed is an event with status `streaming`, updated in place until it
-- becomes `final`; final events stay immutable.
ALTER TABLE events ADD COLUMN status text NOT NULL DEFAULT 'final'
    CHECK (status IN ('streaming', 'final'));

CREATE OR REPLACE FUNCTION events_are_immutable() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status = 'streaming'
        AND NEW.id = OLD.id AND NEW.thread_id = OLD.thread_id AND NEW.user_id = OLD.user_id
        AND NEW.kind = OLD.kind AND NEW.seq = OLD.seq AND NEW.inserted_at = OLD.inserted_at
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'events are immutable' USING ERRCODE = 'check_violation';
END
$$;

DO $$
DECLARE
    publication text := coalesce(nullif(current_setting('burn.publication', true), ''),
                                 'syncd_publication');
BEGIN
    IF NOT EXISTS (SELECT FROM pg_publication WHERE pubname = publication) THEN
        EXECUTE format('CREATE PUBLICATION %I', publication);
    END IF;
    IF NOT EXISTS (
        SELECT FROM pg_publication_tables
        WHERE pubname = publication AND schemaname = 'public' AND tablename = 'agent_status'
    ) THEN
        EXECUTE format('ALTER PUBLICATION %I ADD TABLE public.agent_status', publication);
    END IF;
    ALTER TABLE public.agent_status REPLICA IDENTITY FULL;
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'syncd') THEN
        GRANT SELECT ON public.agent_status TO syncd;
    END IF;
END
$$;
