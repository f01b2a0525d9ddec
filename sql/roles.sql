-- Syncline's least-privilege roles. A DBA runs this with psql as a superuser
-- (or a role with CREATEROLE that owns the databases); running it again
-- changes nothing. Every part is chosen by the variables given.
--
-- 1. Syncline's own database: the login role `syncline` (-v role=… to rename)
--    owns Syncline's schemas and may write the target schemas named.
--
--      psql "postgres://postgres@db.example.com/syncline" -v password="$SYNCLINE_DB_PASSWORD" \
--           -v target_schema=metering,billing -f sql/roles.sql
--
--    Then DATABASE_URL=postgres://syncline:…@db.example.com/syncline.
--    Without -v password the role must exist already (add target schemas later).
--
-- 2. A source database (any server): a read-only login role
--    `syncline_reader` (-v reader=… to rename) that may SELECT the schemas named.
--
--      psql "postgres://postgres@source.example.com/metering" -v reader_password="$READER_PASSWORD" \
--           -v source_schema=public -f sql/roles.sql
--
--    Add -v log_capture=on for entities with "capture": "log": the reader may
--    then replicate (read the WAL through a slot; still no writes). Their
--    publication needs the table's owner: `syncline config apply` prints the
--    `create publication` to run as that owner when the reader cannot.
--
--    For a source that is another database on Syncline's own server
--    (`"database": …` in the config), Syncline connects as its own role:
--    -v reader=syncline -v source_schema=public, without a password.
--
-- Why these rights:
-- - Every command (worker, sync, config apply …) runs the migrations first,
--   so the role owns the schemas sync, sync_staging, graphile_worker and
--   graphile_migrate and every object in them (objects an earlier superuser
--   run created are handed over), and has CREATE on the database: PostgreSQL
--   checks it even for `create schema if not exists` on a schema that exists.
--   CREATE lets it add schemas of its own, nothing in other roles' schemas.
-- - Staging tables are unlogged tables in sync_staging (its own schema); the
--   merge uses temporary tables (TEMPORARY on the database).
-- - On target tables a sync selects, inserts (COPY of an initial load too),
--   updates and deletes; it never truncates. USAGE on the target schemas'
--   sequences serves columns with a serial or identity default that the config
--   does not fill. Tables created later in a target schema by the role running
--   this script get the same rights (default privileges); for tables another
--   role creates, run this again after its migrations. A parent table outside
--   the target schemas that a target references needs `grant select` too.
-- - Sources are read in read-only transactions by Syncline already;
--   default_transaction_read_only makes the server enforce it for anything
--   connecting as the reader.

\set ON_ERROR_STOP on
\if :{?role}
\else
  \set role syncline
\endif
\if :{?reader}
\else
  \set reader syncline_reader
\endif
\if :{?target_schema}
\else
  \set target_schema ''
\endif

-- Which parts to run, as psql booleans.
select :{?password} or :'target_schema' <> '' as own_part, :{?source_schema} as source_part \gset
\if :own_part
\elif :source_part
\else
  do $$ begin raise exception 'sql/roles.sql: nothing to do — give -v password=… (Syncline''s database) or -v source_schema=… (a source database); see the comment at the top'; end $$;
\endif

begin;
set local client_min_messages = warning; -- no notice for each schema that exists

\if :own_part
  select exists (select from pg_roles where rolname = :'role' and rolsuper) as role_is_superuser \gset
  \if :role_is_superuser
    do $$ begin raise exception 'sql/roles.sql: the role -v role= names is a superuser, which this script would demote — name another (default syncline)'; end $$;
  \endif
  \if :{?password}
    select format('create role %I login', :'role')
     where not exists (select from pg_roles where rolname = :'role') \gexec
    alter role :"role" with login nosuperuser nocreatedb nocreaterole noreplication nobypassrls password :'password';
  \endif
  select format('grant connect, temporary, create on database %I to %I', current_database(), :'role') \gexec

  select format('create schema if not exists %I authorization %I', s, :'role'),
         format('alter schema %I owner to %I', s, :'role')
    from unnest(array['sync', 'sync_staging', 'graphile_worker', 'graphile_migrate']) s \gexec

  -- Hand over what an earlier run as another role created. Indexes and the
  -- sequences of serial and identity columns follow their table.
  select format('alter %s %s owner to %I',
                case c.relkind when 'v' then 'view' when 'm' then 'materialized view' when 'S' then 'sequence'
                               when 'c' then 'type' when 'f' then 'foreign table' else 'table' end,
                c.oid::regclass, :'role')
    from pg_class c join pg_namespace n on n.oid = c.relnamespace
   where n.nspname in ('sync', 'sync_staging', 'graphile_worker', 'graphile_migrate')
     and c.relkind in ('r', 'p', 'v', 'm', 'S', 'c', 'f')
     and c.relowner <> :'role'::regrole
     and not (c.relkind = 'S' and exists (select from pg_depend d
                                            where d.classid = 'pg_class'::regclass and d.objid = c.oid
                                              and d.refclassid = 'pg_class'::regclass and d.deptype in ('a', 'i')))
   order by c.oid \gexec
  select format('alter routine %s owner to %I', p.oid::regprocedure, :'role')
    from pg_proc p join pg_namespace n on n.oid = p.pronamespace
   where n.nspname in ('sync', 'sync_staging', 'graphile_worker', 'graphile_migrate')
     and p.proowner <> :'role'::regrole \gexec
  select format('alter %s %s owner to %I', case t.typtype when 'd' then 'domain' else 'type' end, t.oid::regtype, :'role')
    from pg_type t join pg_namespace n on n.oid = t.typnamespace
   where n.nspname in ('sync', 'sync_staging', 'graphile_worker', 'graphile_migrate')
     and t.typtype in ('e', 'd', 'r', 'm') and t.typowner <> :'role'::regrole \gexec

  select format('grant usage on schema %1$I to %2$I;
                 grant select, insert, update, delete on all tables in schema %1$I to %2$I;
                 grant usage on all sequences in schema %1$I to %2$I;
                 alter default privileges in schema %1$I grant select, insert, update, delete on tables to %2$I;
                 alter default privileges in schema %1$I grant usage on sequences to %2$I', s, :'role')
    from unnest(string_to_array(:'target_schema', ',')) raw, btrim(raw) s
   where s <> '' \gexec
\endif

\if :source_part
  select exists (select from pg_roles where rolname = :'reader' and rolsuper) as reader_is_superuser \gset
  \if :reader_is_superuser
    do $$ begin raise exception 'sql/roles.sql: the role -v reader= names is a superuser, which this script would demote — name another (default syncline_reader)'; end $$;
  \endif
  \if :{?reader_password}
    select format('create role %I login', :'reader')
     where not exists (select from pg_roles where rolname = :'reader') \gexec
    alter role :"reader" with login nosuperuser nocreatedb nocreaterole noreplication nobypassrls password :'reader_password';
  \endif
  -- The read-only default is for this database only: the reader may be
  -- Syncline's own role reading a database beside its own.
  select exists (select from pg_namespace where nspname = 'sync' and nspowner = :'reader'::regrole) as reader_owns_sync \gset
  \if :reader_owns_sync
    do $$ begin raise exception 'sql/roles.sql: the reader owns Syncline''s schemas in this database, which it must write — run the source part in the source''s database'; end $$;
  \endif
  \if :{?log_capture}
    -- Log capture ("capture": "log") reads the write-ahead log through a slot.
    alter role :"reader" with replication;
  \endif
  select format('alter role %I in database %I set default_transaction_read_only = on', :'reader', current_database()) \gexec
  select format('grant connect on database %I to %I', current_database(), :'reader') \gexec
  select format('grant usage on schema %1$I to %2$I;
                 grant select on all tables in schema %1$I to %2$I;
                 alter default privileges in schema %1$I grant select on tables to %2$I', s, :'reader')
    from unnest(string_to_array(:'source_schema', ',')) raw, btrim(raw) s
   where s <> '' \gexec
\endif

commit;
