-- Publish the app's tables for syncd, so syncd needs no ownership of them at run time.
--
-- The publication is syncd's (`syncd_publication` unless `python -m web migrate` is told
-- otherwise, through the `burn.publication` setting); it is created here when missing. Each table
-- gets REPLICA IDENTITY FULL, as syncd expects. When a role named `syncd` exists (see
-- 001_syncd_role.sql) it may read these tables, and only these: burn_private stays closed.

DO $$
DECLARE
    publication text := coalesce(nullif(current_setting('burn.publication', true), ''),
                                 'syncd_publication');
    table_name text;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_publication WHERE pubname = publication) THEN
        EXECUTE format('CREATE PUBLICATION %I', publication);
    END IF;
    FOREACH table_name IN ARRAY ARRAY['users', 'threads', 'memberships', 'events', 'facts'] LOOP
        IF NOT EXISTS (
            SELECT FROM pg_publication_tables
            WHERE pubname = publication AND schemaname = 'public' AND tablename = table_name
        ) THEN
            EXECUTE format('ALTER PUBLICATION %I ADD TABLE public.%I', publication, table_name);
        END IF;
        EXECUTE format('ALTER TABLE public.%I REPLICA IDENTITY FULL', table_name);
        IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'syncd') THEN
            EXECUTE format('GRANT SELECT ON public.%I TO syncd', table_name);
        END IF;
    END LOOP;
END
$$;
