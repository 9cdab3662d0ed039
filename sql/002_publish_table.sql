-- Prepare one table for syncd when syncd's role does not own it. Run as the table owner.
--
-- Usage: psql -v table=items -f sql/002_publish_table.sql <database>
-- (syncd_publication is the default publication name; see SYNCD_PUBLICATION.)

SELECT 'CREATE PUBLICATION syncd_publication'
WHERE NOT EXISTS (SELECT FROM pg_publication WHERE pubname = 'syncd_publication') \gexec
ALTER PUBLICATION syncd_publication ADD TABLE :table;
ALTER TABLE :table REPLICA IDENTITY FULL;
