-- A database role for syncd, for databases where it should not run as a superuser.
--
-- syncd needs to: open a logical replication connection (REPLICATION), create its publication
-- (CREATE on the database), read the tables it syncs (SELECT), and add them to its publication
-- and set REPLICA IDENTITY FULL on them (table ownership). Where syncd must not own the tables,
-- run the statements of 002_publish_table.sql as the owner instead, once per table.
--
-- Usage: psql -v password="'secret'" -f sql/001_syncd_role.sql <database>

CREATE ROLE syncd LOGIN REPLICATION PASSWORD :password;
SELECT format('GRANT CREATE ON DATABASE %I TO syncd', current_database()) \gexec
GRANT USAGE ON SCHEMA public TO syncd;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO syncd;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO syncd;
