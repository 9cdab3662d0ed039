-- The Burn app's data: users, threads, memberships, events and facts.
--
-- Applied by `python -m web migrate` (numbered files from 003 on are migrations; 001 and 002
-- are setup scripts run by hand with psql). Every rule the app relies on is a constraint here,
-- so a row written by any process (the web app, an agent, psql) obeys the same rules:
--   * enums are CHECKs, names and texts have bounds, every reference is a foreign key;
--   * a thread has at most one owner and a user is a member of a thread at most once;
--   * humans are owners or members, agents are producers or comedians;
--   * an event's payload is validated per kind, its author must belong to the thread, humans
--     write only `text` and `system` events, agents only `tool_use`, `tool_result` and `system`;
--   * events are immutable, get a server-side timestamp and a monotonic `seq` for ordering.
-- Deleting a thread removes its memberships, events and facts; deleting a user removes their
-- memberships, events and the facts about them.

CREATE TABLE users (
    id uuid PRIMARY KEY,
    name text NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9_-]{2,16}$'),
    kind text NOT NULL CHECK (kind IN ('human', 'agent')),
    avatar_url text CHECK (
        char_length(avatar_url) <= 2000 AND avatar_url ~ '^(/[A-Za-z0-9._/-]*|https://[^[:space:]]+)$'
    ),
    inserted_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX users_kind_idx ON users (kind);

CREATE TABLE threads (
    id uuid PRIMARY KEY,
    name text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200 AND name ~ '[^[:space:]]'),
    status text NOT NULL DEFAULT 'started' CHECK (status IN ('started', 'cancelled', 'completed')),
    inserted_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE memberships (
    id uuid PRIMARY KEY,
    thread_id uuid NOT NULL REFERENCES threads (id) ON DELETE CASCADE,
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role text NOT NULL CHECK (role IN ('owner', 'member', 'producer', 'comedian')),
    inserted_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (thread_id, user_id)
);
CREATE INDEX memberships_user_idx ON memberships (user_id);
CREATE UNIQUE INDEX memberships_one_owner_idx ON memberships (thread_id) WHERE role = 'owner';

CREATE TABLE events (
    id uuid PRIMARY KEY,
    seq bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    thread_id uuid NOT NULL REFERENCES threads (id) ON DELETE CASCADE,
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind text NOT NULL CHECK (kind IN ('system', 'text', 'tool_use', 'tool_result')),
    data jsonb NOT NULL,
    inserted_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (thread_id, id)
);
CREATE INDEX events_user_idx ON events (user_id);

CREATE TABLE facts (
    id uuid PRIMARY KEY,
    thread_id uuid NOT NULL REFERENCES threads (id) ON DELETE CASCADE,
    subject_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    source_event_id uuid NOT NULL,
    tool_use_event_id uuid NOT NULL,
    predicate text NOT NULL CHECK (char_length(predicate) BETWEEN 1 AND 255),
    object text NOT NULL CHECK (char_length(object) BETWEEN 1 AND 255),
    category text NOT NULL CHECK (char_length(category) BETWEEN 1 AND 255),
    confidence numeric NOT NULL DEFAULT 0.8 CHECK (confidence > 0 AND confidence <= 1),
    disputed boolean NOT NULL DEFAULT false,
    inserted_at timestamptz NOT NULL DEFAULT now(),
    -- a fact comes from events of its own thread
    FOREIGN KEY (thread_id, source_event_id) REFERENCES events (thread_id, id) ON DELETE CASCADE,
    FOREIGN KEY (thread_id, tool_use_event_id) REFERENCES events (thread_id, id) ON DELETE CASCADE
);
CREATE INDEX facts_thread_idx ON facts (thread_id);
CREATE INDEX facts_subject_idx ON facts (subject_id);
CREATE INDEX facts_source_event_idx ON facts (source_event_id);
CREATE INDEX facts_tool_use_event_idx ON facts (tool_use_event_id);

-- The payload each kind of event carries (exactly these keys):
--   system       {"action": "created" | "joined" | "left" | "closed", "target": "thread"}
--   text         {"text": 1-4000 characters, not blank}
--   tool_use     {"id": string, "name": 1-200 characters, "input": object}
--   tool_result  {"tool_use_id": string, "tool_name": string, "content": any, "is_error": boolean}
CREATE FUNCTION event_data_is_valid(kind text, data jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    -- coalesce: a missing key makes the test NULL, which a CHECK would let through
    SELECT coalesce(jsonb_typeof(data) = 'object' AND CASE kind
        WHEN 'system' THEN
            data - ARRAY['action', 'target'] = '{}'::jsonb
            AND jsonb_typeof(data -> 'action') = 'string'
            AND data ->> 'action' IN ('created', 'joined', 'left', 'closed')
            AND jsonb_typeof(data -> 'target') = 'string'
            AND data ->> 'target' = 'thread'
        WHEN 'text' THEN
            data - 'text' = '{}'::jsonb
            AND jsonb_typeof(data -> 'text') = 'string'
            AND char_length(data ->> 'text') BETWEEN 1 AND 4000
            AND data ->> 'text' ~ '[^[:space:]]'
        WHEN 'tool_use' THEN
            data - ARRAY['id', 'name', 'input'] = '{}'::jsonb
            AND jsonb_typeof(data -> 'id') = 'string'
            AND char_length(data ->> 'id') BETWEEN 1 AND 200
            AND jsonb_typeof(data -> 'name') = 'string'
            AND char_length(data ->> 'name') BETWEEN 1 AND 200
            AND jsonb_typeof(data -> 'input') = 'object'
        WHEN 'tool_result' THEN
            data - ARRAY['tool_use_id', 'tool_name', 'content', 'is_error'] = '{}'::jsonb
            AND jsonb_typeof(data -> 'tool_use_id') = 'string'
            AND jsonb_typeof(data -> 'tool_name') = 'string'
            AND data ? 'content'
            AND jsonb_typeof(data -> 'is_error') = 'boolean'
        ELSE false
    END, false)
$$;

ALTER TABLE events ADD CONSTRAINT events_data_matches_kind CHECK (event_data_is_valid(kind, data));

CREATE FUNCTION memberships_check_role() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    user_kind text;
BEGIN
    SELECT kind INTO user_kind FROM users WHERE id = NEW.user_id;
    IF user_kind = 'human' AND NEW.role NOT IN ('owner', 'member') THEN
        RAISE EXCEPTION 'a human is an owner or a member of a thread, not a %', NEW.role
            USING ERRCODE = 'check_violation';
    END IF;
    IF user_kind = 'agent' AND NEW.role NOT IN ('producer', 'comedian') THEN
        RAISE EXCEPTION 'an agent is a producer or a comedian in a thread, not a %', NEW.role
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER memberships_check_role BEFORE INSERT OR UPDATE ON memberships
    FOR EACH ROW EXECUTE FUNCTION memberships_check_role();

CREATE FUNCTION events_check_author() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    author_kind text;
BEGIN
    SELECT kind INTO author_kind FROM users WHERE id = NEW.user_id;
    IF author_kind = 'human' AND NEW.kind NOT IN ('text', 'system') THEN
        RAISE EXCEPTION 'a human writes text and system events, not %', NEW.kind
            USING ERRCODE = 'check_violation';
    END IF;
    IF author_kind = 'agent' AND NEW.kind NOT IN ('tool_use', 'tool_result', 'system') THEN
        RAISE EXCEPTION 'an agent writes tool_use, tool_result and system events, not %', NEW.kind
            USING ERRCODE = 'check_violation';
    END IF;
    IF NOT EXISTS (
        SELECT FROM memberships WHERE thread_id = NEW.thread_id AND user_id = NEW.user_id
    ) THEN
        RAISE EXCEPTION 'the author of an event must be a member of its thread'
            USING ERRCODE = 'check_violation';
    END IF;
    NEW.inserted_at := now();
    RETURN NEW;
END
$$;

CREATE TRIGGER events_check_author BEFORE INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION events_check_author();

CREATE FUNCTION events_are_immutable() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are immutable' USING ERRCODE = 'check_violation';
END
$$;

CREATE TRIGGER events_are_immutable BEFORE UPDATE ON events
    FOR EACH ROW EXECUTE FUNCTION events_are_immutable();

-- The three agents, with fixed ids.
INSERT INTO users (id, name, kind, avatar_url) VALUES
    ('00000000-0000-4000-8000-000000000001', 'sarah', 'agent', '/images/agents/sarah.jpg'),
    ('00000000-0000-4000-8000-000000000002', 'jerry', 'agent', '/images/agents/jerry.jpg'),
    ('00000000-0000-4000-8000-000000000003', 'frankie', 'agent', '/images/agents/frankie.jpg')
ON CONFLICT (id) DO NOTHING;
