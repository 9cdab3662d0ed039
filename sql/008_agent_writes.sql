-- The agents' two most frequent writes, each one statement (one round trip): claiming a turn
-- (`agents.claim_turn`) and moving positions past events that need no call (`agents.skip_to`).
--
-- Claiming a turn.
--
-- The claim sits between a person's message and the agent's call to the model, so it is sent
-- as a single function call (one round trip, autocommit): fence the lease, drop a half-streamed
-- reply of an earlier attempt, create or find the turn, and, for a turn still `calling`,
-- reserve its tokens and record the call about to be sent. Everything is one transaction; a
-- refusal raises one of these errors and writes nothing:
--
--   AGL01  the lease is not held under this worker and epoch (fencing)
--   AGB01  the thread's token budget cannot cover the estimate
--   AGR01  the thread's call rate is used up; the detail is the seconds until it resets
--
-- It returns the turn's status and, for a claimed call, the call's id; a turn already
-- `replied` comes back with its recorded reply (applied without calling the model again).
CREATE FUNCTION agents.claim_turn(
    p_turn uuid,
    p_thread uuid,
    p_agent uuid,
    p_worker text,
    p_epoch bigint,
    p_trigger_event uuid,
    p_trigger_seq bigint,
    p_input_lsn numeric,
    p_estimate bigint,
    p_request_hash text,
    p_token_cap bigint,
    p_calls_per_minute int,
    OUT status text,
    OUT reply jsonb,
    OUT call_id uuid
) LANGUAGE plpgsql AS $$
DECLARE
    reserved bigint;
    affordable boolean;
    throttled boolean;
    retry_in double precision;
BEGIN
    UPDATE agents.leases l SET updated_at = now()
     WHERE l.thread_id = p_thread AND l.agent_id = p_agent AND l.worker = p_worker
       AND l.epoch = p_epoch AND l.status = 'active';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the lease of agent % in thread % under epoch % is gone',
            p_agent, p_thread, p_epoch USING ERRCODE = 'AGL01';
    END IF;

    DELETE FROM events e
     WHERE e.thread_id = p_thread AND e.user_id = p_agent AND e.status = 'streaming';

    INSERT INTO agents.turns AS t
           (id, thread_id, agent_id, trigger_event_id, trigger_seq, input_lsn, epoch)
    VALUES (p_turn, p_thread, p_agent, p_trigger_event, p_trigger_seq, p_input_lsn, p_epoch)
    ON CONFLICT (id) DO UPDATE SET epoch = excluded.epoch, updated_at = now()
    RETURNING t.status, t.reply, t.reserved_tokens INTO status, reply, reserved;
    IF status <> 'calling' THEN
        RETURN;
    END IF;
    reply := NULL;

    IF reserved = 0 THEN
        INSERT INTO agents.budgets (thread_id, token_cap, calls_per_minute)
        VALUES (p_thread, p_token_cap, p_calls_per_minute)
        ON CONFLICT (thread_id) DO NOTHING;
        SELECT b.spent + b.reserved + p_estimate <= b.token_cap,
               b.window_start > now() - interval '1 minute'
                   AND b.calls_in_window >= b.calls_per_minute,
               extract(epoch FROM b.window_start + interval '1 minute' - now())
          INTO affordable, throttled, retry_in
          FROM agents.budgets b WHERE b.thread_id = p_thread FOR UPDATE;
        IF NOT affordable THEN
            RAISE EXCEPTION 'the thread''s token budget cannot cover % more tokens', p_estimate
                USING ERRCODE = 'AGB01';
        END IF;
        IF throttled THEN
            RAISE EXCEPTION 'the thread''s call rate is used up'
                USING ERRCODE = 'AGR01', DETAIL = greatest(retry_in, 0.05)::text;
        END IF;
        UPDATE agents.budgets b SET reserved = b.reserved + p_estimate,
               calls_in_window = CASE WHEN b.window_start <= now() - interval '1 minute'
                                      THEN 1 ELSE b.calls_in_window + 1 END,
               window_start = CASE WHEN b.window_start <= now() - interval '1 minute'
                                   THEN now() ELSE b.window_start END
         WHERE b.thread_id = p_thread;
        reserved := p_estimate;
    END IF;

    UPDATE agents.turns t SET attempts = t.attempts + 1, reserved_tokens = reserved
     WHERE t.id = p_turn;
    call_id := gen_random_uuid();
    INSERT INTO agents.llm_calls
           (id, turn_id, thread_id, agent_id, caused_by, epoch, worker, request_hash)
    VALUES (call_id, p_turn, p_thread, p_agent, p_trigger_event, p_epoch, p_worker,
            p_request_hash);
END;
$$;

-- Skipping: move the positions of many agents of one worker past events that need no call.
-- Each row is fenced by the worker and the epoch of its lease; the rows that moved are
-- returned (a missing one is a lease this worker no longer holds). The commit does not wait
-- for the WAL to reach the disk: a skip lost in a crash is decided again, the same way.
CREATE FUNCTION agents.skip_to(
    p_worker text,
    p_threads uuid[],
    p_agents uuid[],
    p_epochs bigint[],
    p_positions bigint[],
    p_lsns numeric[]
) RETURNS TABLE (moved_thread uuid, moved_agent uuid) LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    RETURN QUERY
    UPDATE agents.leases l
       SET position = greatest(l.position, s.upto),
           position_lsn = greatest(l.position_lsn, s.lsn),
           failures = 0, next_attempt_at = NULL, updated_at = now()
      FROM unnest(p_threads, p_agents, p_epochs, p_positions, p_lsns) AS s(t, a, e, upto, lsn)
     WHERE l.thread_id = s.t AND l.agent_id = s.a AND l.worker = p_worker AND l.epoch = s.e
       AND l.status = 'active'
    RETURNING l.thread_id, l.agent_id;
END;
$$;
