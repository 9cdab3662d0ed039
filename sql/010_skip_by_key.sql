-- Skipping finds each lease by its key.
--
-- `agents.skip_to` (008) moved the positions with one update of the leases joined with the
-- unnested arrays. How Postgres runs that join depends on the table's statistics, and until
-- autovacuum has analysed the leases (a new database, or a worker granted thousands of leases
-- in the last minute) it read every active lease of the worker and matched each against the
-- arrays: milliseconds per call with a few thousand leases, for a call that moves two. An
-- update by the whole primary key is one index lookup whatever the statistics say, so each
-- agent's position is moved by one. Same arguments, fencing and result as before.
CREATE OR REPLACE FUNCTION agents.skip_to(
    p_worker text,
    p_threads uuid[],
    p_agents uuid[],
    p_epochs bigint[],
    p_positions bigint[],
    p_lsns numeric[]
) RETURNS TABLE (moved_thread uuid, moved_agent uuid) LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    FOR i IN 1 .. coalesce(array_length(p_threads, 1), 0) LOOP
        UPDATE agents.leases l
           SET position = greatest(l.position, p_positions[i]),
               position_lsn = greatest(l.position_lsn, p_lsns[i]),
               failures = 0, next_attempt_at = NULL, updated_at = now()
         WHERE l.thread_id = p_threads[i] AND l.agent_id = p_agents[i]
           AND l.worker = p_worker AND l.epoch = p_epochs[i] AND l.status = 'active'
        RETURNING l.thread_id, l.agent_id INTO moved_thread, moved_agent;
        IF FOUND THEN
            RETURN NEXT;
        END IF;
    END LOOP;
END;
$$;
