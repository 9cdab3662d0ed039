-- A database role for syncd, for databases where it should not run as a superuser.
--
-- syncd needs to open a logical replication connection (REPLICATION) and read the tables it
-- syncs (SELECT). Publishing a table and setting its REPLICA IDENTITY FULL take ownership of the
-- table, so with this role the tables' owner prepares each table with 002_publish_table.sql,
-- which also creates the publication (owned by the tables' owner: only a publication's owner may
-- add tables to it). Run this as a superuser (or a role with CREATEROLE and REPLICATION).
--
-- Usage: psql -v password=secret -f sql/001_syncd_role.sql <database>
-- Variables: password (required), role (default syncd), schema (default public; the schema
-- whose tables syncd may read).

\set ON_ERROR_STOP on
\set QUIET on
\if :{?password}
\else
  DO $$ BEGIN RAISE EXCEPTION 'give the password: psql -v password=<password> -f sql/001_syncd_role.sql <database>'; END $$;
\endif
\if :{?role}
\else
  \set role syncd
\endif
\if :{?schema}
\else
  \set schema public
\endif

-- Run again, it sets the role's attributes and password instead of failing.
SELECT NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') AS role_is_new \gset
\if :role_is_new
  CREATE ROLE :"role" LOGIN REPLICATION PASSWORD :'password';
\else
  ALTER ROLE :"role" LOGIN REPLICATION PASSWORD :'password';
\endif
GRANT USAGE ON SCHEMA :"schema" TO :"role";
GRANT SELECT ON ALL TABLES IN SCHEMA :"schema" TO :"role";
