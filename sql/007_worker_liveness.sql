-- A lease is held while its worker is live. Workers keep their own row in `agents.workers`
-- current (one write per heartbeat, however many agents they run); a lease row is written
-- only when it is granted, given back, stopped or fenced. A lease whose worker's row has
-- expired (or is gone) may be taken by another worker, which increments its epoch.
ALTER TABLE agents.leases DROP COLUMN heartbeat_at;
ALTER TABLE agents.leases DROP COLUMN expires_at;
ALTER TABLE agents.leases ADD COLUMN granted_at timestamptz;
CREATE INDEX leases_active_idx ON agents.leases (thread_id) WHERE status = 'active';
