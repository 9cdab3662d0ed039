-- Within a thread, `seq` follows the order in which events become final.
--
-- Agents remember how far they got as a `seq` (their position) and treat every final event
-- above it as new. An identity column alone numbers rows when they are inserted, not when they
-- commit: two writers of one thread could commit in the other order, and a reader that saw the
-- later number first would pass over the earlier one for good. A reply streamed into its row
-- becomes final long after its row got its number, too.
--
-- So a thread's writers take turns: inserting an event, or turning a streamed one final, locks
-- the thread's row until the transaction ends and only then takes the next number. A later
-- number in a thread is therefore always a later commit, and a streamed reply is numbered when
-- it is said. `FOR NO KEY UPDATE` leaves the foreign-key checks of other rows of the thread
-- (memberships, facts) unblocked.
CREATE FUNCTION events_in_commit_order() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NOT (OLD.status = 'streaming' AND NEW.status = 'final') THEN
        RETURN NEW;
    END IF;
    PERFORM 1 FROM public.threads t WHERE t.id = NEW.thread_id FOR NO KEY UPDATE;
    NEW.seq := nextval(pg_get_serial_sequence('public.events', 'seq'));
    RETURN NEW;
END
$$;

-- Named to fire after `events_are_immutable` (BEFORE triggers fire in name order), which
-- checks that an update leaves `seq` alone.
CREATE TRIGGER events_in_commit_order BEFORE INSERT OR UPDATE ON events
    FOR EACH ROW EXECUTE FUNCTION events_in_commit_order();
