-- Prepare one table for a syncd whose database role does not own it: add it to syncd's
-- publication, make its replica identity FULL and let syncd's role read it. Run it as the
-- table's owner (or a superuser); running it again changes nothing.
--
-- Usage: psql -v table=items -f sql/002_publish_table.sql <database>
--
-- Variables (psql -v name=value):
--   table        the table (required)
--   schema       its schema (default public)
--   publication  syncd's publication (default syncd_publication, as SYNCD_PUBLICATION)
--   role         syncd's database role, granted SELECT on the table (default syncd; skipped when
--                no such role exists)
--
-- The publication is created, owned by whoever runs this, when it does not exist yet. Only the
-- owner of a publication may add tables to it, so the owner of the tables should create it: run
-- this script for a first table before syncd starts for the first time. syncd serves a table
-- prepared while it runs at the next request for it; it never needs a restart.

\set ON_ERROR_STOP on
\set QUIET on
\if :{?table}
\else
  DO $$ BEGIN RAISE EXCEPTION 'name the table: psql -v table=<table> -f sql/002_publish_table.sql <database>'; END $$;
\endif
\if :{?schema}
\else
  \set schema public
\endif
\if :{?publication}
\else
  \set publication syncd_publication
\endif
\if :{?role}
\else
  \set role syncd
\endif

SET syncd_prepare.schema_name = :'schema';
SET syncd_prepare.table_name = :'table';
SET syncd_prepare.publication = :'publication';
SET syncd_prepare.reader = :'role';

DO $$
DECLARE
    schema_name text := current_setting('syncd_prepare.schema_name');
    table_name text := current_setting('syncd_prepare.table_name');
    publication text := current_setting('syncd_prepare.publication');
    reader text := current_setting('syncd_prepare.reader');
    relation regclass := format('%I.%I', schema_name, table_name)::regclass;
    owner regrole;
BEGIN
    SELECT pubowner::regrole INTO owner FROM pg_publication WHERE pubname = publication;
    IF owner IS NULL THEN
        EXECUTE format('CREATE PUBLICATION %I', publication);
        RAISE NOTICE 'created publication %', publication;
    ELSIF NOT pg_has_role(current_user, owner, 'USAGE') THEN
        RAISE EXCEPTION 'publication % belongs to role %: only its owner may add tables to it',
            publication, owner
            USING HINT = format('As a superuser, run ALTER PUBLICATION %I OWNER TO %I; then run '
                                'this script again.', publication, current_user);
    END IF;
    IF NOT EXISTS (
        SELECT FROM pg_publication_tables
        WHERE pubname = publication AND schemaname = schema_name AND tablename = table_name
    ) THEN
        EXECUTE format('ALTER PUBLICATION %I ADD TABLE %s', publication, relation);
        RAISE NOTICE 'added % to publication %', relation, publication;
    END IF;
    IF (SELECT relreplident FROM pg_class WHERE oid = relation) <> 'f' THEN
        EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', relation);
        RAISE NOTICE 'set REPLICA IDENTITY FULL on %', relation;
    END IF;
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = reader) THEN
        EXECUTE format('GRANT SELECT ON %s TO %I', relation, reader);
    END IF;
END
$$;
