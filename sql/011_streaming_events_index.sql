-- The replies being streamed, by thread and author.
--
-- Before it claims a turn, an agent deletes the half-streamed reply an earlier attempt may have
-- left in the thread (`agents.claim_turn`, and `agents.turns` when a turn fails). Without an
-- index on that condition Postgres combined the index of the thread's events with the index of
-- the author's events, and an agent is the author of events in every thread it is in: the
-- delete read all of them, a cost that grows with the agent's history. Streamed rows are few
-- and short-lived, so this index is small and finds them directly.
CREATE INDEX events_streaming_idx ON events (thread_id, user_id) WHERE status = 'streaming';
