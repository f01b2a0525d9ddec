-- The sync schema as the committed migrations define it, in one readable file.
-- Not run by anything: migrations/ is the live definition. When a migration
-- changes the schema, change this file to match; test/schema-copy.test.ts
-- builds a database from it and compares it with a migrated one. Functions
-- are defined in reading order, not dependency order (as pg_dump does it):
set check_function_bodies = off;

/*
 * Syncline's own schema. Everything a DBA needs to see or change about
 * syncing is here: the entity configuration (sync.entity), the audit log of
 * runs, changes and quarantined records, alerts, and the set-based merge that
 * moves a run's staged rows into the user's target table in one transaction.
 * Staged rows live in unlogged tables of the schema sync_staging, one a run.
 */
create schema if not exists sync;
create schema if not exists sync_staging;
comment on schema sync is 'Syncline: sync configuration, audit log, alerts and the merge functions.';
comment on schema sync_staging is 'Syncline: one unlogged staging table a running sync (run_<id>); dropped when the run ends.';

create table if not exists sync.entity (
  name text primary key
    check (length(name) between 1 and 100 and name !~ '[[:cntrl:]]'),
  source text not null,
  direction text not null default 'pull' check (direction in ('pull', 'push')),
  mode text not null check (mode in ('mirror', 'upsert', 'append', 'soft-delete')),
  target_schema text not null,
  target_table text not null,
  key_columns text[] not null check (cardinality(key_columns) > 0),
  tenant_column text,
  tenant_value text,
  cursor_column text,
  cursor_overlap text,
  cursor_value text,
  soft_delete_column text,
  tombstone_column text,
  depends_on text[] not null default '{}',
  schedule text,
  enabled boolean not null default true,
  definition jsonb not null default '{}',
  config_hash text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  check ((tenant_column is null) = (tenant_value is null)),
  check (mode <> 'soft-delete' or soft_delete_column is not null)
);
comment on table sync.entity is 'One row an entity: what to sync from where into which table, and how. Written by `syncline config apply`; the cursor is advanced by sync.merge.';
comment on column sync.entity.key_columns is 'Target columns that identify a record (composite keys allowed).';
comment on column sync.entity.cursor_column is 'Column whose growing value marks new or changed rows; runs fetch only rows past cursor_value (less cursor_overlap).';
comment on column sync.entity.cursor_value is 'Highest cursor_column value merged so far (text form). Set to null to make the next run fetch everything.';
comment on column sync.entity.tombstone_column is 'A synced column that, when set on a source record (a deleted_at an API sends), makes the record a deletion: its target row is deleted (or stamped, in soft-delete mode), even by an incremental run.';
comment on column sync.entity.definition is 'The entity as written in syncline.config.json (secrets never appear here).';

create table if not exists sync.run (
  id bigint generated always as identity primary key,
  entity text not null,
  trigger text not null check (trigger in ('cron', 'manual', 'backfill', 'resync', 'dependency', 'api')),
  status text not null default 'running'
    check (status in ('running', 'succeeded', 'partial', 'failed', 'cancelled', 'skipped')),
  dry_run boolean not null default false,
  full_refresh boolean not null default false,
  started_at timestamptz not null default now(),
  finished_at timestamptz,
  fetched bigint,
  inserted bigint,
  updated bigint,
  deleted bigint,
  unchanged bigint,
  quarantined bigint,
  deferred bigint,
  cursor_before text,
  cursor_after text,
  phases jsonb not null default '{}',
  detail jsonb not null default '{}',
  error text,
  cancel_requested boolean not null default false,
  job_id text,
  backend_pid integer default pg_backend_pid(),
  progress jsonb not null default '{}'
);
create index if not exists run_entity_started_idx on sync.run (entity, started_at desc);
create index if not exists run_running_idx on sync.run (entity) where status = 'running';
comment on table sync.run is 'One row a sync run: trigger, status, exact counts, cursor before and after, phase timings in milliseconds.';
comment on column sync.run.deferred is 'Rows missing from the source whose delete was postponed because rows of another table still reference them; the next run deletes them.';
comment on column sync.run.phases is 'Milliseconds spent in each phase: {"fetch": …, "merge": …}.';
comment on column sync.run.detail is 'Extra facts: the diff sample of a dry run, the reason a run was skipped.';


create table if not exists sync.run_error (
  id bigint generated always as identity primary key,
  run_id bigint not null,
  entity text not null,
  key text[],
  category text not null
    check (category in ('network', 'rate_limit', 'auth', 'validation', 'integrity', 'database', 'internal')),
  message text not null,
  payload jsonb,
  created_at timestamptz not null default now(),
  retry_count integer not null default 0,
  next_retry_at timestamptz,
  resolved_at timestamptz
);
create index if not exists run_error_run_idx on sync.run_error (run_id);
create index if not exists run_error_entity_idx on sync.run_error (entity, created_at desc);
comment on table sync.run_error is 'Quarantined records and run failures: the key, a category, a reason a person can act on, and the raw record.';
comment on column sync.run_error.key is 'The values of the entity''s key_columns, in that order, as text; null for a failure of the whole run.';

create table if not exists sync.alert (
  id bigint generated always as identity primary key,
  kind text not null,
  severity text not null default 'warning' check (severity in ('info', 'warning', 'critical')),
  entity text,
  message text not null,
  details jsonb not null default '{}',
  created_at timestamptz not null default now(),
  acknowledged_by text,
  acknowledged_at timestamptz
);
comment on table sync.alert is 'Alerts raised about entities; open until acknowledged with sync.ack_alert(id, by).';

create or replace function sync.entity_lock_key(p_entity text) returns bigint
  language sql immutable parallel safe
  as $$ select hashtextextended('syncline:entity:' || p_entity, 0) $$;
comment on function sync.entity_lock_key(text) is 'Advisory lock key held (session level) by whoever runs a sync of this entity: two runs of one entity never overlap.';

create or replace function sync.target_column_types(p_entity text, p_columns text[])
  returns table (column_name text, column_type text, is_key boolean)
  language plpgsql stable
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_ent sync.entity;
  v_rel regclass;
  v_missing text;
begin
  select * into v_ent from sync.entity e where e.name = p_entity;
  if not found then
    raise exception 'unknown entity %', p_entity using hint = 'run `syncline config apply` after adding it to syncline.config.json';
  end if;
  v_rel := to_regclass(format('%I.%I', v_ent.target_schema, v_ent.target_table));
  if v_rel is null then
    raise exception 'target table %.% of entity % does not exist', v_ent.target_schema, v_ent.target_table, p_entity
      using hint = 'create it with your own migration; Syncline derives its staging table from it';
  end if;
  select c into v_missing from unnest(p_columns || v_ent.key_columns) c
   where not exists (select 1 from pg_attribute a where a.attrelid = v_rel and a.attname = c and a.attnum > 0 and not a.attisdropped)
   limit 1;
  if v_missing is not null then
    raise exception 'entity %: column % does not exist in target table %.%', p_entity, v_missing, v_ent.target_schema, v_ent.target_table
      using hint = 'fix the column name in the entity''s columns or key, or add the column to the table';
  end if;
  return query
    select a.attname::text, format_type(a.atttypid, a.atttypmod), a.attname = any (v_ent.key_columns)
      from unnest(p_columns) with ordinality as c(name, ord)
      join pg_attribute a on a.attrelid = v_rel and a.attname = c.name
     order by c.ord;
end
$$;
comment on function sync.target_column_types(text, text[]) is 'Types of the given columns of an entity''s target table, in the given order; raises a clear error for a missing table or column.';


create or replace function sync.finish_run(p_run_id bigint, p_status text, p_error text default null, p_detail jsonb default '{}')
  returns void
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
begin
  update sync.run
     set status = p_status, error = p_error, finished_at = clock_timestamp(), detail = detail || coalesce(p_detail, '{}')
   where id = p_run_id and status = 'running';
  execute format('drop table if exists sync_staging.%I', 'run_' || p_run_id);
end
$$;

create or replace function sync.record_outcome(p_entity text, p_trigger text, p_status text, p_reason text)
  returns bigint
  language sql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
  insert into sync.run (entity, trigger, status, finished_at, error)
  values (p_entity, p_trigger, p_status, clock_timestamp(), p_reason)
  returning id
$$;

create or replace function sync.create_raw_staging(p_run_id bigint) returns text
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_cols text;
begin
  select string_agg(format('%I text', a.attname), ', ' order by a.attnum) into v_cols
    from pg_attribute a
   where a.attrelid = format('sync_staging.%I', 'run_' || p_run_id)::regclass
     and a.attnum > 0 and not a.attisdropped and a.attname <> '_sl_quarantined';
  execute format('create unlogged table sync_staging.%I (_sl_line bigint not null, %s, _sl_raw jsonb, _sl_error text, _sl_absent text[])',
                 'run_' || p_run_id || '_raw', v_cols);
  return format('sync_staging.%I', 'run_' || p_run_id || '_raw');
end
$$;
comment on function sync.create_raw_staging(bigint) is 'For sources whose values arrive as text (CSV, HTTP): creates sync_staging.run_<id>_raw with a text column for every column of the run''s staging table, the record''s line (or ordinal), its raw form, the reason it cannot be loaded as it is (_sl_error) and the fields it lacked (_sl_absent).';

create or replace function sync.adopt_raw(p_run_id bigint) returns jsonb
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_run sync.run;
  v_old sync.run;
begin
  select * into strict v_run from sync.run where id = p_run_id;
  -- The caller holds the entity's lock, so an earlier run still marked
  -- running died; start_run has closed it as abandoned.
  select r.* into v_old from sync.run r
   where r.entity = v_run.entity and r.id < p_run_id and r.status = 'abandoned'
     and r.detail ? 'resume' and r.dry_run = v_run.dry_run and r.full_refresh = v_run.full_refresh
     and to_regclass(format('sync_staging.%I', 'run_' || r.id || '_raw')) is not null
     and not exists (select 1 from sync.run n where n.entity = r.entity and n.id > r.id and n.id < p_run_id)
   order by r.id desc limit 1;
  if not found then
    return null;
  end if;
  execute format('alter table sync_staging.%I rename to %I', 'run_' || v_old.id || '_raw', 'run_' || p_run_id || '_raw');
  if to_regclass(format('sync_staging.%I', 'run_' || v_old.id || '_parents')) is not null then
    execute format('drop table if exists sync_staging.%I', 'run_' || p_run_id || '_parents');
    execute format('alter table sync_staging.%I rename to %I', 'run_' || v_old.id || '_parents', 'run_' || p_run_id || '_parents');
  end if;
  execute format('drop table if exists sync_staging.%I', 'run_' || v_old.id);
  update sync.run set detail = detail || jsonb_build_object('resumed_from_run', v_old.id, 'resume', v_old.detail -> 'resume',
                                                            'pages', v_old.detail -> 'pages', 'records', v_old.detail -> 'records')
   where id = p_run_id;
  update sync.run set detail = detail || jsonb_build_object('resumed_by_run', p_run_id) where id = v_old.id;
  return jsonb_build_object('run_id', v_old.id, 'resume', v_old.detail -> 'resume',
                            'pages', v_old.detail -> 'pages', 'records', v_old.detail -> 'records');
end
$$;

create or replace function sync.cast_raw(p_run_id bigint, p_time_zone text default null, p_keep_last boolean default false) returns jsonb
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_ent sync.entity;
  v_raw text := format('sync_staging.%I', 'run_' || p_run_id || '_raw');
  v_typed text := format('sync_staging.%I', 'run_' || p_run_id);
  v_cols text[];
  v_types text[];
  v_keys text[];
  v_key text;
  v_keylist text;
  v_keyvalid text;
  v_collist text;
  v_casts text;
  v_keycasts text;
  v_row record;
  v_reason text;
  v_i integer;
  v_bad bigint := 0;
  v_unkeyed bigint := 0;
  v_loaded bigint;
  v_superseded bigint := 0;
  v_absent boolean;
begin
  select e.* into strict v_ent from sync.entity e join sync.run r on r.entity = e.name where r.id = p_run_id;
  -- Text without an offset means the source's local time; text with one keeps it.
  if p_time_zone is not null then
    perform set_config('timezone', p_time_zone, true);
  end if;
  select array_agg(a.attname::text order by a.attnum), array_agg(format_type(a.atttypid, a.atttypmod) order by a.attnum)
    into v_cols, v_types
    from pg_attribute a
   where a.attrelid = v_typed::regclass and a.attnum > 0 and not a.attisdropped
     and a.attname not in ('_sl_quarantined', '_sl_absent');
  v_keys := v_ent.key_columns;
  v_key := format('array[%s]', (select string_agg(format('r.%I', k), ', ') from unnest(v_keys) k));
  v_keylist := (select string_agg(format('%I', k), ', ') from unnest(v_keys) k);
  v_collist := (select string_agg(format('%I', c), ', ') from unnest(v_cols) c);
  v_casts := (select string_agg(format('r.%I::%s', c, t), ', ') from unnest(v_cols, v_types) x(c, t));
  v_keycasts := (select string_agg(format('r.%I::%s', c, t), ', ') from unnest(v_cols, v_types) x(c, t) where c = any (v_keys));
  execute format('select exists (select 1 from %s where _sl_absent is not null)', v_raw) into v_absent;
  if v_absent then
    execute format('alter table %s add column if not exists _sl_absent text[]', v_typed);
    v_collist := v_collist || ', _sl_absent';
    v_casts := v_casts || ', r._sl_absent';
  end if;
  if p_keep_last then
    -- An API that pages by version sends a record again when it changes
    -- during the crawl: the later copy supersedes the earlier one, which is
    -- not counted as fetched (sync.run.detail.superseded says how many).
    -- (A window function, not a self-join: `is not distinct from` cannot hash,
    -- and the self-join went quadratic.)
    execute format($q$
      delete from %1$s r where r._sl_line in (
        select d._sl_line from (select _sl_line, row_number() over (partition by %2$s order by _sl_line desc) as n from %1$s
                                 where _sl_error is null) d
         where d.n > 1)$q$,
      v_raw, v_keylist);
    get diagnostics v_superseded = row_count;
  end if;

  -- Records the source could not hand over whole (an unreadable line, a
  -- value the database cannot store): quarantined with their reason.
  v_keyvalid := (select string_agg(format('r.%1$I is not null and sync._is_valid(r.%1$I, %2$L)', c, t), ' and ')
                   from unnest(v_cols, v_types) x(c, t) where c = any (v_keys));
  execute format($q$
    insert into sync.run_error (run_id, entity, key, category, message, payload)
    select %1$s, %2$L, case when %5$s then %3$s end, 'validation', r._sl_error, r._sl_raw
      from %4$s r where r._sl_error is not null$q$,
    p_run_id, v_ent.name, v_key, v_raw, v_keyvalid);
  get diagnostics v_bad = row_count;
  execute format('insert into %s (%s, _sl_quarantined) select %s, true from %s r where r._sl_error is not null and %s',
                 v_typed, v_keylist, v_keycasts, v_raw, v_keyvalid);
  get diagnostics v_loaded = row_count;
  v_unkeyed := v_bad - v_loaded;
  execute format('delete from %s where _sl_error is not null', v_raw);

  if current_setting('server_version_num')::int >= 160000 then
    -- Set-based: find every value its column's type rejects, quarantine
    -- those records with the reason, load the rest in one statement.
    execute format($q$
      create temp table _sl_rejects on commit drop as
      select r._sl_line, min(format('line %%s, column %%s: %%s', r._sl_line, c.name, (pg_input_error_info(c.value, c.type)).message)) as reason
        from %1$s r
        cross join lateral (values %2$s) as c(name, value, type)
       where c.value is not null and not pg_input_is_valid(c.value, c.type)
       group by r._sl_line$q$,
      v_raw,
      (select string_agg(format('(%L, r.%I, %L)', c, c, t), ', ') from unnest(v_cols, v_types) x(c, t)));
    execute format($q$
      insert into sync.run_error (run_id, entity, key, category, message, payload)
      select %1$s, %2$L, %3$s, 'validation', j.reason, r._sl_raw
        from %4$s r join _sl_rejects j using (_sl_line)$q$,
      p_run_id, v_ent.name, v_key, v_raw);
    get diagnostics v_i = row_count;
    v_bad := v_bad + v_i;
    -- A rejected record whose key is valid stays in staging, flagged, so a
    -- mirror run does not delete the target row it would have replaced.
    execute format($q$
      insert into %1$s (%2$s, _sl_quarantined)
      select %3$s, true from %4$s r join _sl_rejects j using (_sl_line)
       where %5$s$q$,
      v_typed, v_keylist, v_keycasts, v_raw,
      (select string_agg(format('r.%1$I is not null and pg_input_is_valid(r.%1$I, %2$L)', c, t), ' and ')
         from unnest(v_cols, v_types) x(c, t) where c = any (v_keys)));
    get diagnostics v_loaded = row_count;
    v_unkeyed := v_unkeyed + v_i - v_loaded;
    execute format('insert into %s (%s) select %s from %s r where not exists (select 1 from _sl_rejects j where j._sl_line = r._sl_line)',
                   v_typed, v_collist, v_casts, v_raw);
    drop table _sl_rejects;
  else
    -- PostgreSQL 15 has no pg_input_is_valid: try the whole load, and only
    -- when a value is rejected go record by record to find which.
    begin
      execute format('insert into %s (%s) select %s from %s r', v_typed, v_collist, v_casts, v_raw);
    exception when data_exception then
      for v_row in execute format('select r._sl_line from %s r order by r._sl_line', v_raw) loop
        begin
          execute format('insert into %s (%s) select %s from %s r where r._sl_line = $1', v_typed, v_collist, v_casts, v_raw)
            using v_row._sl_line;
        exception when data_exception then
          v_reason := sqlerrm;
          -- Name the column, as the set-based path does: try each value alone.
          for v_i in 1 .. cardinality(v_cols) loop
            begin
              execute format('select r.%I::%s from %s r where r._sl_line = $1', v_cols[v_i], v_types[v_i], v_raw)
                using v_row._sl_line;
            exception when data_exception then
              v_reason := format('column %s: %s', v_cols[v_i], sqlerrm);
              exit;
            end;
          end loop;
          execute format($q$
            insert into sync.run_error (run_id, entity, key, category, message, payload)
            select %1$s, %2$L, %3$s, 'validation', format('line %%s, %%s', r._sl_line, %4$L), r._sl_raw
              from %5$s r where r._sl_line = $1$q$,
            p_run_id, v_ent.name, v_key, v_reason, v_raw) using v_row._sl_line;
          v_bad := v_bad + 1;
          begin
            execute format('insert into %s (%s, _sl_quarantined) select %s, true from %s r where r._sl_line = $1',
                           v_typed, v_keylist, v_keycasts, v_raw)
              using v_row._sl_line;
          exception when data_exception or not_null_violation then
            v_unkeyed := v_unkeyed + 1;
          end;
        end;
      end loop;
    end;
  end if;
  if v_absent then
    perform sync._keep_absent(v_ent, v_typed::regclass);
    execute format('alter table %s drop column _sl_absent', v_typed);
  end if;
  update sync.run set detail = detail || jsonb_build_object('unkeyed_rejects',
           coalesce((detail ->> 'unkeyed_rejects')::bigint, 0) + v_unkeyed)
           || case when v_superseded > 0
                   then jsonb_build_object('superseded', coalesce((detail ->> 'superseded')::bigint, 0) + v_superseded)
                   else '{}' end
   where id = p_run_id;
  execute format('drop table %s', v_raw);
  return jsonb_build_object('rejected', v_bad, 'unkeyed', v_unkeyed, 'superseded', v_superseded);
end
$$;
comment on function sync.cast_raw(bigint, text, boolean) is 'Moves a run''s text staging (run_<id>_raw) into its typed staging: each value is cast to its target column''s type (text without an offset read in p_time_zone); a record with a value its type rejects, or that the source could not hand over (_sl_error), is quarantined with the line, the column and the reason, and kept, flagged, by its key so a mirror run does not delete it. A field absent from a record (_sl_absent) keeps the target''s value. p_keep_last keeps only the last record of a key (an API paging by version sends a changed record again).';

-- Builds "a = b and …" joins and column lists once, so every statement of the
-- merge (and its dry-run twin) uses exactly the same predicates.
create or replace function sync._join(p_keys text[], p_left text, p_right text) returns text
  language sql immutable
  as $$ select string_agg(format('%s.%I = %s.%I', p_left, k, p_right, k), ' and ') from unnest(p_keys) k $$;

create or replace function sync._key_json(p_keys text[], p_alias text) returns text
  language sql immutable
  as $$ select format('jsonb_build_object(%s)', string_agg(format('%L, %s.%I', k, p_alias, k), ', ')) from unnest(p_keys) k $$;

-- Keys are logged as text[] (the values of entity.key_columns, in order):
-- a third of the cost of a jsonb object on a million-row load.
create or replace function sync._key_array(p_keys text[], p_alias text) returns text
  language sql immutable
  as $$ select format('array[%s]', string_agg(format('%s.%I::text', p_alias, k), ', ')) from unnest(p_keys) k $$;

create or replace function sync._cmp_expr(p_rel regclass, p_col text, p_alias text) returns text
  language sql stable
as $$
  -- `=` is exact for these types: equal values have one text form. Anything
  -- else compares as text, so 1.5 → 1.50, {"v":1} → {"v":1.0}, 'Bob' →
  -- 'bob' (citext), '1 day' → '24 hours' and -0 → 0 count as changes and
  -- reach the target, and types without `=` (json, xml, point) work.
  -- Domains and arrays are judged by their base and element types.
  with recursive chain(type_oid, depth) as (
    select a.atttypid, 0 from pg_attribute a where a.attrelid = p_rel and a.attname = p_col
    union all
    select case when t.typtype = 'd' then t.typbasetype else t.typelem end, c.depth + 1
      from chain c join pg_type t on t.oid = c.type_oid
     where (t.typtype = 'd' or (t.typcategory = 'A' and t.typelem <> 0)) and c.depth < 8
  )
  select case when bool_and(t.typtype = 'e' or (t.typtype in ('d', 'b') and t.typcategory = 'A')
                            or t.typtype = 'd'
                            or t.oid in ('int2'::regtype, 'int4'::regtype, 'int8'::regtype, 'text'::regtype,
                                         'varchar'::regtype, 'bpchar'::regtype, 'bool'::regtype, 'uuid'::regtype,
                                         'date'::regtype, 'timestamp'::regtype, 'timestamptz'::regtype,
                                         'time'::regtype, 'bytea'::regtype, 'char'::regtype, 'name'::regtype,
                                         'oid'::regtype))
              then format('%s.%I', p_alias, p_col)
              else format('%s.%I::text', p_alias, p_col) end
    from chain c join pg_type t on t.oid = c.type_oid
$$;
comment on function sync._cmp_expr(regclass, text, text) is 'How sync.merge compares a column: directly where equal values have a single text form (integers, text, timestamps …), else through ::text, so a change of form (1.5 → 1.50, jsonb number formatting, citext case) reaches the target.';

create or replace function sync._join_tk(p_keys text[]) returns text
  language sql immutable
  as $$ select string_agg(format('t.%I = s._sl_tk%s', k, i), ' and ') from unnest(p_keys) with ordinality x(k, i) $$;
comment on function sync._join_tk(text[]) is 'Joins the target (t) to the diff (s) on the target key the diff carries for deletes.';

create or replace function sync._quarantine(p_run_id bigint, p_ent sync.entity, p_s regclass, p_rel regclass, p_cols text[])
  returns void
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_key text := sync._key_array(p_ent.key_columns, 's');
  v_keys text := (select string_agg(format('s.%I', k), ', ') from unnest(p_ent.key_columns) k);
  v_fk record;
  v_parent_on text;
  -- Records the source marks deleted are never written: the target's rules do not apply to them.
  v_live text := case when p_ent.tombstone_column = any (p_cols) and p_ent.mode <> 'soft-delete'
                      then format('s.%I is null', p_ent.tombstone_column) else 'true' end;
begin
  -- Flagged rows stay in staging, so a mirror run does not delete the
  -- target rows they would have replaced.
  execute format($q$
    with bad as (
      update %1$s s set _sl_quarantined = true where %2$s returning s.*)
    insert into sync.run_error (run_id, entity, key, category, message, payload)
    select %3$s, %4$L, %5$s, 'validation', 'a key column is null', to_jsonb(s.*) - '_sl_quarantined' from bad s$q$,
    p_s, (select string_agg(format('s.%I is null', k), ' or ') from unnest(p_ent.key_columns) k),
    p_run_id, p_ent.name, v_key);

  -- A source that guarantees unique keys (a table with a unique index on
  -- them; the runner checks) needs no search for repeats. Copies already
  -- quarantined (a value their type rejects) count as copies too. Otherwise group on
  -- the key columns themselves: a jsonb of them costs twice as much.
  if not coalesce((select (r.detail ->> 'source_unique_key')::boolean from sync.run r where r.id = p_run_id), false) then
  execute format($q$
    with dup as (
      select %3$s, count(*) as _sl_n from %1$s s where %7$s group by %3$s having count(*) > 1),
    bad as (
      update %1$s s set _sl_quarantined = true from dup d where %2$s and not s._sl_quarantined returning s.*, d._sl_n)
    insert into sync.run_error (run_id, entity, key, category, message, payload)
    select %4$s, %5$L, %6$s, 'integrity', format('the source has %%s records with this key; none of them was merged', s._sl_n),
           to_jsonb(s.*) - '_sl_quarantined' - '_sl_n' from bad s$q$,
    p_s, sync._join(p_ent.key_columns, 's', 'd'), v_keys, p_run_id, p_ent.name, v_key,
    (select string_agg(format('s.%I is not null', k), ' and ') from unnest(p_ent.key_columns) k));
  end if;

  if p_ent.tenant_column is not null and p_ent.tenant_column = any (p_cols) then
    execute format($q$
      with bad as (
        update %1$s s set _sl_quarantined = true
         where not s._sl_quarantined and s.%2$I is distinct from %3$L returning s.*)
      insert into sync.run_error (run_id, entity, key, category, message, payload)
      select %4$s, %5$L, %6$s, 'integrity',
             format('the record belongs to tenant %%s but the entity is scoped to tenant %%s', s.%2$I, %3$L),
             to_jsonb(s.*) - '_sl_quarantined' from bad s$q$,
      p_s, p_ent.tenant_column, p_ent.tenant_value, p_run_id, p_ent.name, v_key);
    if p_ent.tenant_column <> all (p_ent.key_columns) then
      -- The key alone identifies a row: another tenant may hold it already.
      execute format($q$
        with bad as (
          update %1$s s set _sl_quarantined = true
            from %2$s t where not s._sl_quarantined and %3$s and t.%4$I is distinct from %5$L returning s.*, t.%4$I as _sl_owner)
        insert into sync.run_error (run_id, entity, key, category, message, payload)
        select %6$s, %7$L, %8$s, 'integrity',
               format('the key already belongs to tenant %%s in the target; the entity is scoped to tenant %%s', s._sl_owner, %5$L),
               to_jsonb(s.*) - '_sl_quarantined' - '_sl_owner' from bad s$q$,
        p_s, p_rel, sync._join(p_ent.key_columns, 't', 's'), p_ent.tenant_column, p_ent.tenant_value,
        p_run_id, p_ent.name, v_key);
    end if;
  end if;

  -- The target's own rules on synced columns: a required (NOT NULL) column
  -- left empty, a CHECK constraint broken. Either would fail the whole merge.
  for v_fk in
    select c.name as col from unnest(p_cols) c(name)
      join pg_attribute a on a.attrelid = p_rel and a.attname = c.name
     where a.attnotnull and c.name <> all (p_ent.key_columns)
  loop
    execute format($q$
      with bad as (update %1$s s set _sl_quarantined = true where not s._sl_quarantined and %7$s and s.%2$I is null returning s.*)
      insert into sync.run_error (run_id, entity, key, category, message, payload)
      select %3$s, %4$L, %5$s, 'validation', %6$L, to_jsonb(s.*) - '_sl_quarantined' from bad s$q$,
      p_s, v_fk.col, p_run_id, p_ent.name, v_key, format('%s is required but empty', v_fk.col), v_live);
  end loop;
  for v_fk in
    select c.conname, pg_get_expr(c.conbin, c.conrelid) as expr
      from pg_constraint c
     where c.conrelid = p_rel and c.contype = 'c'
       and (select array_agg(a.attname::text) from pg_attribute a where a.attrelid = p_rel and a.attnum = any (c.conkey)) <@ p_cols
  loop
    execute format($q$
      with bad as (update %1$s s set _sl_quarantined = true where not s._sl_quarantined and %7$s and (%2$s) is false returning s.*)
      insert into sync.run_error (run_id, entity, key, category, message, payload)
      select %3$s, %4$L, %5$s, 'validation', %6$L, to_jsonb(s.*) - '_sl_quarantined' from bad s$q$,
      p_s, v_fk.expr, p_run_id, p_ent.name, v_key, format('breaks the check %s: %s', v_fk.conname, v_fk.expr), v_live);
  end loop;

  -- A record whose parent row (a foreign key of the target, on synced
  -- columns) is missing would fail the whole merge. A table referencing
  -- itself may find the parent among the staged rows. A dry run of several
  -- entities previews a child against parents that the same preview would
  -- insert: those parent tables are taken on trust.
  for v_fk in
    select c.confrelid::regclass as parent, c.confrelid = p_rel as self,
           array_agg(ca.attname::text order by k.ord) as cols, array_agg(pa.attname::text order by k.ord) as pcols
      from pg_constraint c
      cross join lateral unnest(c.conkey, c.confkey) with ordinality as k(ck, pk, ord)
      join pg_attribute ca on ca.attrelid = c.conrelid and ca.attnum = k.ck
      join pg_attribute pa on pa.attrelid = c.confrelid and pa.attnum = k.pk
     where c.contype = 'f' and c.conrelid = p_rel
     group by c.oid, c.confrelid
  loop
    continue when not (v_fk.cols <@ p_cols);
    continue when (select r.dry_run and coalesce(r.detail -> 'unchecked_parents' @> to_jsonb(v_fk.parent::oid), false)
                     from sync.run r where r.id = p_run_id);
    v_parent_on := (select string_agg(format('p.%I = s.%I', pc, c), ' and ') from unnest(v_fk.pcols, v_fk.cols) x(pc, c));
    execute format($q$
      with bad as (
        update %1$s s set _sl_quarantined = true
         where not s._sl_quarantined and %2$s
           and not exists (select 1 from %3$s p where %4$s) %5$s and %11$s
        returning s.*)
      insert into sync.run_error (run_id, entity, key, category, message, payload)
      select %6$s, %7$L, %8$s, 'integrity', format('references a row of %%s that does not exist: %%s', %9$L, %10$s),
             to_jsonb(s.*) - '_sl_quarantined' from bad s$q$,
      p_s,
      (select string_agg(format('s.%I is not null', c), ' and ') from unnest(v_fk.cols) c),
      v_fk.parent, v_parent_on,
      case when v_fk.self then format('and not exists (select 1 from %s p where not p._sl_quarantined and %s)', p_s, v_parent_on)
           else '' end,
      p_run_id, p_ent.name, v_key, v_fk.parent::text,
      (select format('jsonb_build_object(%s)', string_agg(format('%L, s.%I', c, c), ', ')) from unnest(v_fk.cols) c),
      v_live);
  end loop;
end
$$;


create or replace function sync.can_load_direct(p_entity text) returns boolean
  language plpgsql stable
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_ent sync.entity;
  v_rel regclass;
  v_empty boolean;
begin
  select * into v_ent from sync.entity where name = p_entity;
  v_rel := to_regclass(format('%I.%I', v_ent.target_schema, v_ent.target_table));
  -- Records marked deleted must not land: they need the staging path.
  if v_rel is null or v_ent.tombstone_column is not null then
    return false;
  end if;
  -- The target itself must reject what the staging path would quarantine:
  -- a null key (NOT NULL) and a repeated key (a unique index within the key).
  if exists (select 1 from unnest(v_ent.key_columns) k
              where not exists (select 1 from pg_attribute a where a.attrelid = v_rel and a.attname = k and a.attnotnull))
     or not exists (select 1 from pg_index i
                     where i.indrelid = v_rel and i.indisunique and i.indpred is null and i.indexprs is null
                       and (select array_agg(a.attname::text) from pg_attribute a
                             where a.attrelid = v_rel and a.attnum = any (i.indkey::int2[])) <@ v_ent.key_columns) then
    return false;
  end if;
  execute format('select not exists (select 1 from %s t where %s)', v_rel,
                 case when v_ent.tenant_column is null then 'true' else format('t.%I = %L', v_ent.tenant_column, v_ent.tenant_value) end)
    into v_empty;
  return v_empty;
end
$$;
comment on function sync.can_load_direct(text) is 'Whether a run may COPY straight into the target: nothing of the tenant there yet, and the target''s own NOT NULL and unique constraints on the key catch what staging would quarantine.';

create or replace function sync.merge_direct(p_run_id bigint, p_copied bigint) returns jsonb
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_run sync.run;
  v_ent sync.entity;
  v_started timestamptz := clock_timestamp();
  v_t text;
  v_scope text := 'true';
  v_logged bigint;
  v_cursor text;
  v_cursor_type text;
  v_result jsonb;
begin
  select * into v_run from sync.run where id = p_run_id for update;
  if not found or v_run.status <> 'running' or v_run.dry_run then
    raise exception 'sync.merge_direct: run % is not a running, real run', p_run_id;
  end if;
  select * into strict v_ent from sync.entity where name = v_run.entity;
  perform pg_advisory_xact_lock(sync.entity_lock_key(v_ent.name));
  v_t := format('%I.%I', v_ent.target_schema, v_ent.target_table);
  if v_ent.tenant_column is not null then
    v_scope := format('t.%I = %L', v_ent.tenant_column, v_ent.tenant_value);
  end if;
  execute format('insert into sync.run_change (run_id, action, key) select %s, %L, %s from %s t where %s',
                 p_run_id, 'insert', sync._key_array(v_ent.key_columns, 't'), v_t, v_scope);
  get diagnostics v_logged = row_count;
  if v_logged <> p_copied then
    -- Rows outside the tenant scope, or a scope that was not empty: let the
    -- caller roll back and take the staging path, which sorts it out.
    raise exception 'sync.merge_direct: copied % rows but % are in scope', p_copied, v_logged
      using errcode = 'SL001';
  end if;
  if v_ent.cursor_column is not null then
    select format_type(a.atttypid, a.atttypmod) into v_cursor_type
      from pg_attribute a where a.attrelid = v_t::regclass and a.attname = v_ent.cursor_column;
    -- Never backwards: an incremental run into an emptied target may copy nothing.
    execute format('select greatest(max(t.%I), %L::%s)::text from %s t where %s',
                   v_ent.cursor_column, v_run.cursor_before, v_cursor_type, v_t, v_scope) into v_cursor;
    update sync.entity set cursor_value = v_cursor where name = v_ent.name and cursor_value is distinct from v_cursor;
  end if;
  update sync.run
     set status = 'succeeded', finished_at = clock_timestamp(), fetched = p_copied, inserted = p_copied, updated = 0, deleted = 0,
         unchanged = 0, quarantined = 0, deferred = 0, cursor_after = v_cursor,
         phases = phases || jsonb_build_object('merge', round(extract(epoch from clock_timestamp() - v_started) * 1000)),
         detail = detail || '{"direct": true}'
   where id = p_run_id
  returning jsonb_build_object('run_id', id, 'status', status, 'fetched', fetched, 'inserted', inserted,
                               'updated', updated, 'deleted', deleted, 'unchanged', unchanged,
                               'quarantined', quarantined, 'deferred', deferred, 'cursor', cursor_after, 'dry_run', false)
    into v_result;
  execute format('drop table if exists sync_staging.%I', 'run_' || p_run_id);
  return v_result;
end
$$;

create or replace function sync.backfill_chunks(p_entity text, p_from text, p_to text, p_chunk text default null)
  returns table (chunk_from text, chunk_to text, done boolean)
  language plpgsql stable
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_ent sync.entity;
  v_type text;
  v_numeric boolean;
begin
  select * into v_ent from sync.entity where name = p_entity;
  if not found then
    raise exception 'unknown entity %', p_entity using hint = 'select name from sync.entity lists the entities';
  end if;
  if v_ent.cursor_column is null then
    raise exception 'entity % has no cursor column: a backfill needs one to split the range by', p_entity
      using hint = 'add "cursor": {"column": …} to the entity';
  end if;
  select format_type(a.atttypid, a.atttypmod), t.typcategory = 'N' into v_type, v_numeric
    from pg_attribute a join pg_type t on t.oid = a.atttypid
   where a.attrelid = to_regclass(format('%I.%I', v_ent.target_schema, v_ent.target_table)) and a.attname = v_ent.cursor_column;
  -- Chunks are half-open [from, to): each value falls in exactly one.
  return query execute format($q$
    select g::text, least(g + %3$s, %2$L::%4$s)::text,
           exists (select 1 from sync.run r
                    where r.entity = %5$L and r.trigger = 'backfill' and not r.dry_run and r.status in ('succeeded', 'partial')
                      and r.detail -> 'window' = jsonb_build_object('from', g::text, 'to', least(g + %3$s, %2$L::%4$s)::text))
      from generate_series(%1$L::%4$s, %2$L::%4$s, %3$s) g
     where g < %2$L::%4$s
     order by g$q$,
    p_from, p_to,
    case when v_numeric then format('%L::%s', coalesce(p_chunk, '100000'), v_type)
         else format('%L::interval', coalesce(p_chunk, '1 day')) end,
    v_type, p_entity);
end
$$;
comment on function sync.backfill_chunks(text, text, text, text) is 'The chunks of a backfill of [p_from, p_to) by the entity''s cursor column (p_chunk: an interval such as ''1 day'' for time cursors, a number for numeric ones), and which of them a backfill run already completed: re-running a backfill skips those.';

create or replace function sync.request(p_entity text, p_full boolean default false)
  returns bigint
  language plpgsql volatile security definer
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_wave bigint;
begin
  v_wave := sync.start_wave(array[p_entity], 'manual', 'worker', '{}', true, case when p_full then array[p_entity] else '{}' end);
  if v_wave is null then
    -- Already pending in a worker wave: that one runs it.
    select w.id into v_wave from sync.wave w join sync.wave_entity we on we.wave_id = w.id
     where w.finished_at is null and w.executor = 'worker' and we.entity = p_entity and we.state in ('waiting', 'ready', 'running')
     order by w.id limit 1;
  end if;
  return v_wave;
end
$$;
comment on function sync.request(text, boolean) is 'Queues a sync of one entity and its dependents for the worker, as a wave (from psql: select sync.request(''meters'')). A request for an entity already waiting in a wave joins that wave. Returns the wave id (sync.wave).';

create or replace function sync.cancel(p_run_id bigint) returns boolean
  language plpgsql volatile security definer
  set search_path to pg_catalog, public, pg_temp
as $$
begin
  update sync.run set cancel_requested = true where id = p_run_id and status = 'running';
  if found then
    perform pg_notify('syncline_cancel', p_run_id::text);
  end if;
  return found;
end
$$;
comment on function sync.cancel(bigint) is 'Asks a running run to stop: the fetch stops, nothing is merged, the run ends cancelled. Returns false when the run is not running.';





/*
 * HTTP sources. The request budget of each http source, shared by every job and worker
 * process: a vendor counts requests per token, not per process, so the count
 * lives here rather than in memory. A sliding window: a request may start
 * when fewer than request_limit requests started in the last window_seconds.
 * The vendor's own view (X-RateLimit-Remaining, Retry-After) tightens it.
 * Safe to run again and again.
 */
create table if not exists sync.http_budget (
  source text primary key,
  request_limit int not null check (request_limit > 0),
  window_seconds int not null check (window_seconds > 0),
  started timestamptz[] not null default '{}',
  blocked_until timestamptz,
  updated_at timestamptz not null default now()
);
comment on table sync.http_budget is 'One row an http source: the requests started in its current rate-limit window, shared by all workers. Delete a row to reset its budget.';
comment on column sync.http_budget.request_limit is 'Requests allowed per window (sources.<name>.rateLimit.requests); the latest caller''s value wins.';
comment on column sync.http_budget.window_seconds is 'Length of the sliding window in seconds (sources.<name>.rateLimit.perSeconds).';
comment on column sync.http_budget.started is 'Start times of the requests granted within the last window_seconds, oldest first (at most request_limit).';
comment on column sync.http_budget.blocked_until is 'No request starts before this time: set from a 429''s Retry-After or an X-RateLimit-Remaining of 0.';

create or replace function sync.take_http_request(p_source text, p_limit int, p_window_seconds int)
  returns interval
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  -- Added to a slot computed from an earlier request: the vendor counts
  -- arrivals, and a request leaves a few milliseconds after its slot.
  c_guard constant interval := interval '40 milliseconds';
  v_now timestamptz;
  v_window interval := make_interval(secs => p_window_seconds);
  v_row sync.http_budget;
  v_recent timestamptz[];
  v_at timestamptz;
begin
  insert into sync.http_budget (source, request_limit, window_seconds)
  values (p_source, p_limit, p_window_seconds)
  on conflict (source) do nothing;
  -- The row lock serialises every caller of this source; it is held only
  -- for this short transaction.
  select * into v_row from sync.http_budget where source = p_source for update;
  v_now := clock_timestamp();
  -- Slots granted within the last window, reservations in the future included.
  select coalesce(array_agg(s order by s), '{}') into v_recent
    from unnest(v_row.started) s where s > v_now - v_window;
  v_at := greatest(v_now, v_row.blocked_until);
  if cardinality(v_recent) >= p_limit then
    -- Full: this request's slot is when the one p_limit places back leaves the window.
    v_at := greatest(v_at, v_recent[cardinality(v_recent) - p_limit + 1] + v_window + c_guard);
  end if;
  -- The slot is reserved now: callers waiting in parallel get the next ones,
  -- and nobody polls.
  update sync.http_budget
     set started = v_recent || v_at, request_limit = p_limit, window_seconds = p_window_seconds, updated_at = v_now
   where source = p_source;
  return v_at - v_now;
end
$$;
comment on function sync.take_http_request(text, int, int) is 'Reserves the next slot to start one request to an http source within its limit and returns how long to wait for it (0: go now). Atomic across processes; every caller gets its own slot.';

create or replace function sync.http_feedback(p_source text, p_remaining int, p_retry_after interval)
  returns void
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_now timestamptz := clock_timestamp();
  v_row sync.http_budget;
  v_recent timestamptz[];
  v_missing int;
begin
  select * into v_row from sync.http_budget where source = p_source for update;
  if not found then
    return; -- no configured limit for this source: nothing to pace
  end if;
  v_now := clock_timestamp();
  select coalesce(array_agg(s order by s), '{}') into v_recent
    from unnest(v_row.started) s where s > v_now - make_interval(secs => v_row.window_seconds);
  -- The vendor counts requests we do not see (another client on the same
  -- token): count the difference as started now, so pacing slows down.
  v_missing := case when p_remaining is null then 0
                    else least(v_row.request_limit, greatest(0, v_row.request_limit - p_remaining - cardinality(v_recent))) end;
  if v_missing > 0 then
    v_recent := v_recent || array_fill(v_now, array[v_missing]);
  end if;
  update sync.http_budget
     set started = v_recent[greatest(1, cardinality(v_recent) - v_row.request_limit + 1):],
         blocked_until = case when p_retry_after is not null
                              then greatest(blocked_until, v_now + p_retry_after)
                              else blocked_until end,
         updated_at = v_now
   where source = p_source;
end
$$;
comment on function sync.http_feedback(text, int, interval) is 'Records what an http source said about its budget: X-RateLimit-Remaining (requests the vendor still allows in its window) and a 429''s Retry-After (no request starts before it ends).';

/*
 * One response feeds several entities. A run of an http entity whose records
 * carry other entities nested in them (a sale and its line items) keeps its
 * fetched records in sync_staging.run_<id>_feed; each nested entity then
 * explodes its records from those feeds in SQL instead of crawling the API
 * again. A feed is dropped once every entity it feeds has taken it.
 */

create or replace function sync.json_at(p_value jsonb, p_path text) returns jsonb
  language sql immutable parallel safe
  set search_path to pg_catalog, public, pg_temp
as $$
  select case
    when p_path is null or p_path = '' then p_value
    -- A key containing a dot is found when it exists literally.
    when jsonb_typeof(p_value) = 'object' and p_value ? p_path then p_value -> p_path
    else p_value #> string_to_array(p_path, '.')
  end
$$;
comment on function sync.json_at(jsonb, text) is 'The value at a dotted path (data.items, lines.0.sku) in a JSON record, as the http source''s field mapping reads it; null when a step is missing.';

create or replace function sync.json_text(p_value jsonb) returns text
  language sql immutable parallel safe
  set search_path to pg_catalog, public, pg_temp
as $$
  select case jsonb_typeof(p_value) when 'string' then p_value #>> '{}' when 'null' then null else p_value::text end
$$;
comment on function sync.json_text(jsonb) is 'A JSON value as the text staged for it: strings as they are, JSON null as null, anything else in its JSON spelling.';

create or replace function sync.keep_feed(p_run_id bigint, p_children text[]) returns void
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
begin
  execute format('create unlogged table sync_staging.%I as select _sl_line, _sl_raw from sync_staging.%I',
                 'run_' || p_run_id || '_feed', 'run_' || p_run_id || '_raw');
  update sync.run set detail = detail || jsonb_build_object('feeds', to_jsonb(p_children)) where id = p_run_id;
end
$$;
comment on function sync.keep_feed(bigint, text[]) is 'Keeps the records a run fetched (sync_staging.run_<id>_feed) for the nested entities named, which read their records from them instead of from the API.';

create or replace function sync.parent_feeds(p_child text, p_parent text) returns bigint[]
  language sql stable
  set search_path to pg_catalog, public, pg_temp
as $$
  with taken as (
    -- The last parent run this entity's records came from.
    select max((r.detail ->> 'parents_upto')::bigint) as upto
      from sync.run r
     where r.entity = p_child and r.status in ('succeeded', 'partial') and not r.dry_run
  ), since as (
    -- Never fed: from the parent's last complete crawl (a first or full run).
    select coalesce((select upto from taken),
                    (select max(r.id) - 1 from sync.run r
                      where r.entity = p_parent and r.status in ('succeeded', 'partial') and not r.dry_run
                        and (r.full_refresh or r.cursor_before is null) and not r.detail ? 'window')) as after
  ), due as (
    select r.id, to_regclass(format('sync_staging.%I', 'run_' || r.id || '_feed')) is not null as kept
      from sync.run r, since
     where r.entity = p_parent and r.status in ('succeeded', 'partial') and not r.dry_run and r.id > since.after
  )
  select case when (select after from since) is null or exists (select 1 from due where not kept) then null
              else coalesce((select array_agg(id order by id) from due), '{}') end
$$;
comment on function sync.parent_feeds(text, text) is 'The runs of p_parent whose kept records p_child has yet to take, oldest first; null when one of them was not kept (or p_child never took any and the parent never completed a crawl): p_child must then crawl the API itself.';

create or replace function sync.feed_nested(p_run_id bigint, p_feeds bigint[], p_spec jsonb) returns bigint
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_path text := p_spec ->> 'path';
  v_pkey text;
  v_feeds text;
  v_cols text;
  v_vals text;
  v_pcols text;
  v_absent text;
  v_count bigint;
begin
  -- A parent record a run sent twice (it changed between pages): its last copy holds its child set.
  select string_agg(format('sync.json_text(sync.json_at(f._sl_raw, %L))', k ->> 'path'), ', ' order by o),
         string_agg(format('_sl_k%s', o), ', ' order by o)
    into v_pkey, v_pcols
    from jsonb_array_elements(p_spec -> 'parentKey') with ordinality as x(k, o);
  select string_agg(format('select %s::bigint as run_id, _sl_line, _sl_raw from sync_staging.%I', f, 'run_' || f || '_feed'), ' union all ')
    into v_feeds from unnest(p_feeds) f;
  if v_feeds is null then
    return 0;
  end if;
  execute format('create temp table _sl_fed on commit drop as
                    select distinct on (%1$s) %2$s, f.run_id, f._sl_line, f._sl_raw
                      from (%3$s) f order by %1$s, f.run_id desc, f._sl_line desc',
                 v_pkey, (select string_agg(format('sync.json_text(sync.json_at(f._sl_raw, %L)) as _sl_k%s', k ->> 'path', o), ', ' order by o)
                            from jsonb_array_elements(p_spec -> 'parentKey') with ordinality as x(k, o)), v_feeds);
  execute format('insert into sync_staging.%I select distinct %s from _sl_fed', 'run_' || p_run_id || '_parents', v_pcols);
  select string_agg(format('%I', c ->> 'column'), ', ' order by o),
         string_agg(format('sync.json_text(sync.json_at(%s, %L))', case when (c ->> 'parent')::boolean then 'p._sl_raw' else 'i.item' end,
                           c ->> 'path'), ', ' order by o),
         -- A field an item lacks is not a null (unless the API leaves empty fields out).
         case when coalesce((p_spec ->> 'keepAbsent')::boolean, false)
              then format('nullif(array_remove(array[%s]::text[], null), ''{}'')',
                          coalesce(string_agg(format('case when not sync.json_has(i.item, %L) then %L end', c ->> 'path', c ->> 'column'), ', ' order by o)
                                     filter (where not coalesce((c ->> 'parent')::boolean, false)), ''))
              else 'null::text[]' end
    into v_cols, v_vals, v_absent
    from jsonb_array_elements(p_spec -> 'columns') with ordinality as x(c, o);
  execute format('insert into sync_staging.%I (_sl_line, %s, _sl_raw, _sl_absent)
                  select row_number() over (order by p.run_id, p._sl_line, i.n), %s, i.item, %s
                    from _sl_fed p
                    cross join lateral jsonb_array_elements(case when jsonb_typeof(sync.json_at(p._sl_raw, %L)) = ''array''
                                                                 then sync.json_at(p._sl_raw, %L) else ''[]'' end) with ordinality i(item, n)',
                 'run_' || p_run_id || '_raw', v_cols, v_vals, v_absent, v_path, v_path);
  get diagnostics v_count = row_count;
  drop table _sl_fed;
  update sync.run set detail = detail || jsonb_build_object('fed_by', to_jsonb(p_feeds), 'parents_upto', p_feeds[cardinality(p_feeds)])
   where id = p_run_id and cardinality(p_feeds) > 0;
  return v_count;
end
$$;

create or replace function sync.drop_spent_feeds() returns integer
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_feed record;
  v_dropped integer := 0;
begin
  for v_feed in
    select r.id from sync.run r
     where r.detail ? 'feeds'
       and to_regclass(format('sync_staging.%I', 'run_' || r.id || '_feed')) is not null
       and (r.status not in ('running', 'succeeded', 'partial')
            or r.finished_at < now() - interval '7 days'
            -- Spent when no entity it feeds still needs it (an entity gone from the config needs nothing).
            or not exists (select 1 from jsonb_array_elements_text(r.detail -> 'feeds') c join sync.entity e on e.name = c
                            where e.enabled and not exists (
                              select 1 from sync.run x where x.entity = c and x.status in ('succeeded', 'partial')
                                 and not x.dry_run and (x.detail ->> 'parents_upto')::bigint >= r.id)))
  loop
    execute format('drop table if exists sync_staging.%I', 'run_' || v_feed.id || '_feed');
    v_dropped := v_dropped + 1;
  end loop;
  return v_dropped;
end
$$;
comment on function sync.drop_spent_feeds() is 'Drops the kept records of runs every nested entity has taken (and of runs that did not succeed, or older than 7 days: the nested entity then crawls the API itself).';

create or replace function sync.cleanup() returns jsonb
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_run record;
  v_closed integer := 0;
  v_dropped integer := 0;
begin
  for v_run in select id, entity from sync.run where status = 'running' order by id loop
    -- Every live run holds its entity's advisory lock: a free lock means a dead run.
    if pg_try_advisory_lock(sync.entity_lock_key(v_run.entity)) then
      perform sync.close_abandoned(v_run.id, 'the process running it stopped before it finished');
      v_closed := v_closed + 1;
      perform pg_advisory_unlock(sync.entity_lock_key(v_run.entity));
    end if;
  end loop;
  v_dropped := sync.drop_spent_feeds();
  for v_run in
    select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where n.nspname = 'sync_staging' and c.relkind = 'r'
       and not exists (select 1 from sync.run r where r.status = 'running'
                         and c.relname in ('run_' || r.id, 'run_' || r.id || '_raw', 'run_' || r.id || '_parents'))
       -- The pages an interrupted http run fetched wait a day for the next run to resume from them.
       and not exists (select 1 from sync.run r where r.status in ('failed', 'abandoned', 'cancelled') and r.detail ? 'resume'
                         and c.relname in ('run_' || r.id || '_raw', 'run_' || r.id || '_parents')
                         and r.finished_at > now() - interval '1 day')
       -- Kept records a nested entity has yet to take (sync.drop_spent_feeds decides).
       and not exists (select 1 from sync.run r where r.detail ? 'feeds' and c.relname = 'run_' || r.id || '_feed')
  loop
    execute format('drop table if exists sync_staging.%I', v_run.relname);
    v_dropped := v_dropped + 1;
  end loop;
  return jsonb_build_object('runs_closed', v_closed, 'staging_dropped', v_dropped);
end
$$;

/*
 * Health, alerts and verification (issue 4). Tunables live in sync.entity,
 * checked by a trigger whose messages say what to fix; every change is
 * audited and announced (NOTIFY sync_config) so running workers follow it.
 */

create table if not exists sync.setting (
  name text primary key,
  value text not null,
  description text not null default '',
  updated_at timestamptz not null default now()
);
comment on table sync.setting is 'Settings of the whole installation, changed with plain UPDATE (retention: how long logs are kept).';
insert into sync.setting (name, value, description) values
  ('retention', '90 days', 'How long sync.run, run_change, run_error, closed alerts and config changes are kept; sync.maintain() removes older ones daily.')
on conflict (name) do nothing;

create or replace function sync.tg_setting__validate() returns trigger
  language plpgsql
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_interval interval;
begin
  if new.name not in ('retention', 'worker_heartbeat', 'worker_timeout') then
    raise exception 'unknown setting %', new.name
      using errcode = '23514', hint = 'settings: retention, worker_heartbeat, worker_timeout';
  end if;
  begin
    v_interval := new.value::interval;
  exception when others then
    raise exception 'setting %: "%" is not an interval', new.name, new.value
      using errcode = '23514', hint = 'write it as Postgres reads an interval, e.g. ''90 days'' or ''30 seconds''';
  end;
  if new.name = 'retention' and v_interval < interval '1 day' then
    raise exception 'setting retention: % is below the minimum of 1 day', new.value
      using errcode = '23514', hint = 'keep logs at least a day, e.g. ''30 days''';
  end if;
  if new.name = 'worker_heartbeat' and v_interval not between interval '1 second' and interval '1 minute' then
    raise exception 'setting worker_heartbeat: % is not between 1 second and 1 minute', new.value
      using errcode = '23514', hint = 'e.g. ''5 seconds''';
  end if;
  if new.name = 'worker_timeout' and (v_interval < interval '5 seconds'
       or v_interval < 3 * coalesce((select value::interval from sync.setting where name = 'worker_heartbeat'), interval '5 seconds')) then
    raise exception 'setting worker_timeout: % is below 5 seconds or three heartbeats', new.value
      using errcode = '23514', hint = 'a live worker must get several beats in before it counts as dead, e.g. ''30 seconds''';
  end if;
  new.updated_at := now();
  return new;
end
$$;
drop trigger if exists _100_validate on sync.setting;
create trigger _100_validate before insert or update on sync.setting
  for each row execute function sync.tg_setting__validate();

alter table sync.entity
  add column if not exists sync_interval interval,
  add column if not exists freshness interval,
  add column if not exists failure_threshold integer not null default 3,
  add column if not exists gap_threshold bigint not null default 0,
  add column if not exists throughput_factor numeric not null default 3,
  add column if not exists retry_limit integer not null default 3,
  add column if not exists retry_delay interval not null default '5 minutes',
  add column if not exists verify boolean not null default true;
comment on column sync.entity.schedule is 'When the worker runs the entity: a five-field cron expression (UTC). Change it with UPDATE: running workers follow.';
comment on column sync.entity.sync_interval is 'Instead of schedule: run every this long (at least 1 minute; minutes dividing an hour, hours dividing a day, or 1 day).';
comment on column sync.entity.freshness is 'A "stale" alert is raised when the entity has had no successful run for this long (null: never).';
comment on column sync.entity.failure_threshold is 'Consecutive failed runs that raise a consecutive_failures alert (1 to 100).';
comment on column sync.entity.gap_threshold is 'Open gaps (source keys missing from the target) above which a gap alert is raised.';
comment on column sync.entity.throughput_factor is 'A run slower than this many times the median of the entity''s last 20 runs (duration, or rows per second) raises a throughput alert (above 1).';
comment on column sync.entity.retry_limit is 'Times a quarantined record is offered again (a re-sync of its key) before it stays quarantined (0 to 100).';
comment on column sync.entity.retry_delay is 'Wait before a quarantined record is offered again (at least 10 seconds).';
comment on column sync.entity.verify is 'After each run, compare source and target record counts and find missing keys (sync.gaps), re-synced automatically.';

create or replace function sync._cron_field(p_field text, p_min int, p_max int) returns int[]
  language plpgsql immutable
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_out int[] := '{}';
  v_part text;
  v_m text[];
  v_lo int;
  v_hi int;
  v_step int;
begin
  foreach v_part in array string_to_array(p_field, ',') loop
    -- graphile-worker's dialect: *, */n, a, a-b (a < b); no a-b/n, no a/n.
    v_m := regexp_match(v_part, '^(\*|([0-9]{1,2})(-([0-9]{1,2}))?)(/([0-9]{1,2}))?$');
    if v_m is null or (v_m[6] is not null and v_m[1] <> '*') or (v_m[4] is not null and v_m[4]::int <= v_m[2]::int) then
      return null;
    end if;
    if v_m[1] = '*' then
      v_lo := p_min;
      v_hi := p_max;
    else
      v_lo := v_m[2]::int;
      v_hi := coalesce(v_m[4]::int, case when v_m[6] is not null then p_max else v_lo end);
    end if;
    v_step := coalesce(v_m[6]::int, 1);
    if v_lo < p_min or v_hi > p_max or v_lo > v_hi or v_step < 1 then
      return null;
    end if;
    v_out := v_out || array(select generate_series(v_lo, v_hi, v_step));
  end loop;
  return array(select distinct x from unnest(v_out) x order by x);
end
$$;
comment on function sync._cron_field(text, int, int) is 'The values one cron field (5, */15, 1-5, 0,30) allows within [p_min, p_max], in graphile-worker''s dialect; null when it is not valid there.';

create or replace function sync.cron_next(p_expr text, p_after timestamptz default now()) returns timestamptz
  language plpgsql stable
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_f text[] := regexp_split_to_array(btrim(p_expr), '\s+');
  v_min int[];
  v_hour int[];
  v_dom int[];
  v_mon int[];
  v_dow int[];
  v_base timestamp := date_trunc('minute', p_after at time zone 'UTC');
  v_day date;
  v_h int;
  v_mi int;
  v_ok boolean;
begin
  if p_expr is null or cardinality(v_f) <> 5 then
    return null;
  end if;
  v_min := sync._cron_field(v_f[1], 0, 59);
  v_hour := sync._cron_field(v_f[2], 0, 23);
  v_dom := sync._cron_field(v_f[3], 1, 31);
  v_mon := sync._cron_field(v_f[4], 1, 12);
  v_dow := array(select distinct d % 7 from unnest(sync._cron_field(v_f[5], 0, 7)) d);
  if v_min is null or v_hour is null or v_dom is null or v_mon is null or sync._cron_field(v_f[5], 0, 7) is null then
    return null;
  end if;
  for i in 0..366 loop
    v_day := v_base::date + i;
    continue when not extract(month from v_day)::int = any (v_mon);
    -- As graphile-worker: a day field is restricted when it excludes a day
    -- ("1-31" is not); with both restricted, either may match.
    v_ok := case when cardinality(v_dom) = 31 and cardinality(v_dow) = 7 then true
                 when cardinality(v_dom) = 31 then extract(dow from v_day)::int = any (v_dow)
                 when cardinality(v_dow) = 7 then extract(day from v_day)::int = any (v_dom)
                 else extract(day from v_day)::int = any (v_dom) or extract(dow from v_day)::int = any (v_dow) end;
    continue when not v_ok;
    foreach v_h in array v_hour loop
      foreach v_mi in array v_min loop
        if v_day + make_interval(hours => v_h, mins => v_mi) > v_base then
          return (v_day + make_interval(hours => v_h, mins => v_mi)) at time zone 'UTC';
        end if;
      end loop;
    end loop;
  end loop;
  return null;
end
$$;
comment on function sync.cron_next(text, timestamptz) is 'The next time after p_after (UTC) a five-field cron expression fires, read as graphile-worker reads it; null when it is not valid or never fires within a year.';

create or replace function sync.interval_cron(p_interval interval) returns text
  language sql immutable
  set search_path to pg_catalog, public, pg_temp
as $$
  select case
    when p_interval is null or p_interval < interval '1 minute' then null
    when p_interval < interval '1 hour' and extract(epoch from p_interval) % 60 = 0
         and 60 % (extract(epoch from p_interval)::int / 60) = 0
      then format('*/%s * * * *', extract(epoch from p_interval)::int / 60)
    when p_interval < interval '1 day' and extract(epoch from p_interval) % 3600 = 0
         and 24 % (extract(epoch from p_interval)::int / 3600) = 0
      then format('0 */%s * * *', extract(epoch from p_interval)::int / 3600)
    when extract(epoch from p_interval) = 86400 then '0 0 * * *'
  end
$$;
comment on function sync.interval_cron(interval) is 'The cron expression the worker schedules a sync_interval by (15 minutes → */15 * * * *); null for an interval it cannot express.';

create or replace function sync.tg_entity__validate() returns trigger
  language plpgsql
  set search_path to pg_catalog, public, pg_temp
as $$
begin
  if new.schedule is not null and new.sync_interval is not null then
    raise exception 'entity %: set schedule or sync_interval, not both', new.name
      using errcode = '23514', hint = 'set the other one to null in the same UPDATE';
  end if;
  if new.schedule is not null and sync.cron_next(new.schedule) is null then
    raise exception 'entity %: schedule "%" is not a five-field cron expression that fires', new.name, new.schedule
      using errcode = '23514', hint = 'minute hour day-of-month month day-of-week, in UTC, e.g. ''*/15 * * * *''';
  end if;
  if new.sync_interval is not null and new.sync_interval < interval '1 minute' then
    raise exception 'entity %: sync_interval % is below the minimum of 1 minute', new.name, new.sync_interval
      using errcode = '23514', hint = 'use at least ''1 minute''';
  end if;
  if new.sync_interval is not null and sync.interval_cron(new.sync_interval) is null then
    raise exception 'entity %: sync_interval % cannot be scheduled', new.name, new.sync_interval
      using errcode = '23514', hint = 'use minutes that divide an hour (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30), hours that divide a day, or ''1 day''; or a cron schedule';
  end if;
  if new.freshness is not null and new.freshness < interval '1 minute' then
    raise exception 'entity %: freshness % is below the minimum of 1 minute', new.name, new.freshness
      using errcode = '23514', hint = 'use at least ''1 minute'', or null for no freshness check';
  end if;
  if new.failure_threshold not between 1 and 100 then
    raise exception 'entity %: failure_threshold % is not between 1 and 100', new.name, new.failure_threshold
      using errcode = '23514', hint = 'the number of failed runs in a row that raises an alert, e.g. 3';
  end if;
  if new.gap_threshold < 0 then
    raise exception 'entity %: gap_threshold % is negative', new.name, new.gap_threshold
      using errcode = '23514', hint = '0 alerts on any gap';
  end if;
  if new.throughput_factor = 'NaN' or new.throughput_factor <= 1 then
    raise exception 'entity %: throughput_factor % must be above 1', new.name, new.throughput_factor
      using errcode = '23514', hint = 'a run this many times slower than the median alerts, e.g. 3';
  end if;
  if new.retry_limit not between 0 and 100 then
    raise exception 'entity %: retry_limit % is not between 0 and 100', new.name, new.retry_limit
      using errcode = '23514', hint = '0 never offers a quarantined record again';
  end if;
  if new.delete_guard_percent is null or new.delete_guard_percent = 'NaN' or new.delete_guard_percent not between 0 and 100 then
    raise exception 'entity %: delete_guard_percent % is not between 0 and 100', new.name, new.delete_guard_percent
      using errcode = '23514', hint = 'the share of the entity''s rows a run may delete without confirmation, e.g. 50; set delete_guard = false to turn the guard off';
  end if;
  if new.delete_guard_rows < 0 then
    raise exception 'entity %: delete_guard_rows % is negative', new.name, new.delete_guard_rows
      using errcode = '23514', hint = 'the number of rows a run may delete without confirmation, or null for no limit by count';
  end if;
  if new.retry_delay < interval '10 seconds' then
    raise exception 'entity %: retry_delay % is below the minimum of 10 seconds', new.name, new.retry_delay
      using errcode = '23514', hint = 'e.g. ''5 minutes''';
  end if;
  return new;
end
$$;
drop trigger if exists _100_validate on sync.entity;
create trigger _100_validate before insert or update on sync.entity
  for each row execute function sync.tg_entity__validate();

create table if not exists sync.config_change (
  id bigint generated always as identity primary key,
  entity text not null,
  action text not null check (action in ('insert', 'update', 'delete')),
  changed_at timestamptz not null default now(),
  changed_by text not null default current_user,
  application text default current_setting('application_name', true),
  changes jsonb not null
);
create index if not exists config_change_entity_idx on sync.config_change (entity, changed_at desc);
comment on table sync.config_change is 'Audit of sync.entity: who changed which setting from what to what, and when ({"column": {"old": …, "new": …}}).';

create or replace function sync.tg_entity__audit() returns trigger
  language plpgsql
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_old jsonb := case when tg_op <> 'INSERT' then to_jsonb(old) else '{}' end;
  v_new jsonb := case when tg_op <> 'DELETE' then to_jsonb(new) else '{}' end;
  v_changes jsonb;
begin
  -- The cursor moves on every run: it is the engine's state, not a setting.
  -- The definition is audited too: fullSchedule and the rules live there.
  select jsonb_object_agg(k, jsonb_build_object('old', v_old -> k, 'new', v_new -> k)) into v_changes
    from (select jsonb_object_keys(v_old || v_new) as k) keys
   where k not in ('cursor_value', 'updated_at', 'created_at', 'config_hash')
     and (v_old -> k) is distinct from (v_new -> k)
     -- A column absent on one side and null on the other did not change.
     and not (coalesce(v_old -> k, 'null') = 'null' and coalesce(v_new -> k, 'null') = 'null');
  if v_changes is null then
    return null;
  end if;
  insert into sync.config_change (entity, action, changes)
  values (coalesce(new.name, old.name), lower(tg_op), v_changes);
  perform pg_notify('sync_config', json_build_object('entity', coalesce(new.name, old.name), 'action', lower(tg_op),
                                                    'columns', (select jsonb_agg(k) from jsonb_object_keys(v_changes) k))::text);
  return null;
end
$$;
drop trigger if exists _900_audit on sync.entity;
create trigger _900_audit after insert or update or delete on sync.entity
  for each row execute function sync.tg_entity__audit();


/*
 * Alerts. SQL decides: a trigger on sync.run raises and resolves them, a
 * cron task checks freshness. One unresolved alert a kind and entity: a
 * condition that persists bumps occurrences instead of raising another.
 * Each new alert is handed to the sync_alert task, which e-mails and posts it.
 */
alter table sync.alert
  add column if not exists resolved_at timestamptz,
  add column if not exists occurrences integer not null default 1,
  add column if not exists last_seen_at timestamptz not null default now();
create unique index if not exists alert_unresolved_idx on sync.alert (kind, (coalesce(entity, ''))) where resolved_at is null;
create index if not exists alert_created_idx on sync.alert (created_at);
comment on column sync.alert.kind is 'consecutive_failures, gap, stale, integrity, throughput or resync_failed.';
comment on column sync.alert.resolved_at is 'When the condition ended (a success after failures, a gap healed); an alert is open while neither acknowledged nor resolved.';
comment on column sync.alert.occurrences is 'Times the condition was seen while this alert stood.';

create or replace function sync.raise_alert(p_kind text, p_severity text, p_entity text, p_message text, p_details jsonb default '{}')
  returns bigint
  language sql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
  insert into sync.alert as a (kind, severity, entity, message, details)
  values (p_kind, p_severity, p_entity, p_message, coalesce(p_details, '{}'))
  on conflict (kind, (coalesce(entity, ''))) where resolved_at is null
  do update set occurrences = a.occurrences + 1, last_seen_at = now(), message = excluded.message,
                details = excluded.details, severity = excluded.severity
  returning id
$$;
comment on function sync.raise_alert(text, text, text, text, jsonb) is 'Raises an alert, or, while one of that kind for that entity stands unresolved, counts another occurrence of it.';

create or replace function sync.resolve_alerts(p_entity text, p_kinds text[]) returns integer
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_n integer;
begin
  update sync.alert set resolved_at = now()
   where coalesce(entity, '') = coalesce(p_entity, '') and kind = any (p_kinds) and resolved_at is null;
  get diagnostics v_n = row_count;
  return v_n;
end
$$;
comment on function sync.resolve_alerts(text, text[]) is 'Marks the entity''s unresolved alerts of these kinds resolved: their condition has ended.';

create or replace function sync.tg_run__alerts() returns trigger
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_ent sync.entity;
  v_streak bigint;
  v_secs numeric := extract(epoch from new.finished_at - new.started_at);
  v_median_secs numeric;
  v_median_rate numeric;
  v_n bigint;
  v_integrity bigint;
begin
  if tg_op = 'UPDATE' and old.status <> 'running' then
    return null;
  end if;
  select * into v_ent from sync.entity where name = new.entity;
  if not found then
    return null;
  end if;
  if new.status = 'failed' then
    select count(*) into v_streak from sync.run r
     where r.entity = new.entity and not r.dry_run and r.status = 'failed'
       and r.id > coalesce((select max(s.id) from sync.run s where s.entity = new.entity and not s.dry_run
                             and s.status in ('succeeded', 'partial')), 0);
    if v_streak >= v_ent.failure_threshold then
      perform sync.raise_alert('consecutive_failures', 'critical', new.entity,
        format('%s runs of %s failed in a row; the last (run %s): %s', v_streak, new.entity, new.id, coalesce(new.error, 'no reason recorded')),
        jsonb_build_object('failures', v_streak, 'last_run_id', new.id, 'error', new.error));
    end if;
    if new.trigger = 'resync' then
      perform sync.raise_alert('resync_failed', 'critical', new.entity,
        format('the re-sync of missing keys of %s failed (run %s): %s', new.entity, new.id, coalesce(new.error, 'no reason recorded')),
        jsonb_build_object('run_id', new.id, 'error', new.error));
    end if;
  elsif new.status in ('succeeded', 'partial') then
    perform sync.resolve_alerts(new.entity, array['consecutive_failures', 'stale', 'stalled']);
    -- Throughput against the entity's recent runs of the same kind (backfill chunks and re-syncs differ).
    select percentile_cont(0.5) within group (order by extract(epoch from r.finished_at - r.started_at)),
           percentile_cont(0.5) within group (order by r.fetched / greatest(extract(epoch from r.finished_at - r.started_at), 0.001)),
           count(*)
      into v_median_secs, v_median_rate, v_n
      from (select * from sync.run r
             where r.entity = new.entity and not r.dry_run and r.status in ('succeeded', 'partial') and r.id < new.id
               and r.trigger not in ('backfill', 'resync') and r.full_refresh = new.full_refresh
             order by r.id desc limit 20) r;
    if new.trigger not in ('backfill', 'resync') and v_n >= 5 then
      -- Sub-second runs are noise: a run must also take over a second to count as slow.
      if v_secs > 1 and (v_secs > v_ent.throughput_factor * v_median_secs
                         or (new.fetched >= 1000 and new.fetched / greatest(v_secs, 0.001) < v_median_rate / v_ent.throughput_factor)) then
        perform sync.raise_alert('throughput', 'warning', new.entity,
          format('run %s of %s took %s s against a median of %s s (%s rows/s against %s)', new.id, new.entity,
                 round(v_secs, 1), round(v_median_secs, 1), round(new.fetched / greatest(v_secs, 0.001)), round(v_median_rate)),
          jsonb_build_object('run_id', new.id, 'seconds', round(v_secs, 3), 'median_seconds', round(v_median_secs, 3),
                             'rows_per_second', round(new.fetched / greatest(v_secs, 0.001)), 'median_rows_per_second', round(v_median_rate),
                             'factor', v_ent.throughput_factor));
      else
        perform sync.resolve_alerts(new.entity, array['throughput']);
      end if;
    end if;
    select count(*) into v_integrity from sync.run_error e where e.run_id = new.id and e.category = 'integrity';
    if v_integrity > 0 then
      perform sync.raise_alert('integrity', 'warning', new.entity,
        format('run %s of %s quarantined %s records for integrity (a repeated key, a missing parent, a broken rule): see sync.run_error where run_id = %s',
               new.id, new.entity, v_integrity, new.id),
        jsonb_build_object('run_id', new.id, 'records', v_integrity));
    else
      perform sync.resolve_alerts(new.entity, array['integrity']);
    end if;
  end if;
  return null;
end
$$;
drop trigger if exists _600_alerts on sync.run;
create trigger _600_alerts
  after insert or update of status on sync.run
  for each row
  when (new.status <> 'running' and not new.dry_run)
  execute function sync.tg_run__alerts();

create or replace function sync.check_freshness() returns integer
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_e record;
  v_raised integer := 0;
begin
  for v_e in
    select e.name, e.freshness, coalesce(ok.at, e.created_at) as since, ok.at as last_success
      from sync.entity e
      left join lateral (select max(r.finished_at) as at from sync.run r
                          where r.entity = e.name and not r.dry_run and r.status in ('succeeded', 'partial')) ok on true
     where e.freshness is not null and e.enabled
  loop
    if v_e.since < now() - v_e.freshness then
      perform sync.raise_alert('stale', 'warning', v_e.name,
        format('%s has had no successful run for %s (freshness window %s)', v_e.name,
               date_trunc('second', now() - v_e.since), v_e.freshness),
        jsonb_build_object('last_success', v_e.last_success, 'freshness', v_e.freshness::text));
      v_raised := v_raised + 1;
    else
      perform sync.resolve_alerts(v_e.name, array['stale']);
    end if;
  end loop;
  return v_raised;
end
$$;
comment on function sync.check_freshness() is 'Raises a stale alert for each enabled entity with a freshness window and no successful run within it (resolves it otherwise). The sync_tick task calls it every minute.';

create table if not exists sync.alert_delivery (
  id bigint generated always as identity primary key,
  alert_id bigint not null,
  channel text not null check (channel in ('email', 'webhook')),
  kind text not null,
  entity text,
  status text not null check (status in ('sending', 'sent', 'suppressed', 'failed')),
  error text,
  created_at timestamptz not null default now()
);
create index if not exists alert_delivery_recent_idx on sync.alert_delivery (channel, kind, entity, created_at desc);
create index if not exists alert_delivery_alert_idx on sync.alert_delivery (alert_id);
comment on table sync.alert_delivery is 'Each e-mail and webhook post of an alert: sent, failed, or suppressed by the hourly limit per alert kind and entity.';

create or replace function sync.claim_alert_delivery(p_alert_id bigint, p_channel text, p_per_hour int default 1) returns boolean
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_alert sync.alert;
begin
  select * into v_alert from sync.alert where id = p_alert_id;
  if not found then
    return false;
  end if;
  -- One claim at a time per channel, kind and entity: the limit holds under bursts.
  perform pg_advisory_xact_lock(hashtextextended(format('syncline:alert:%s:%s:%s', p_channel, v_alert.kind, coalesce(v_alert.entity, '')), 0));
  if exists (select 1 from sync.alert_delivery d where d.alert_id = p_alert_id and d.channel = p_channel
               and d.status in ('sent', 'suppressed')) then
    return false;
  end if;
  if (select count(*) from sync.alert_delivery d
       where d.channel = p_channel and d.kind = v_alert.kind and d.entity is not distinct from v_alert.entity
         and d.status in ('sending', 'sent') and d.alert_id <> p_alert_id and d.created_at > now() - interval '1 hour') >= p_per_hour then
    insert into sync.alert_delivery (alert_id, channel, kind, entity, status)
    values (p_alert_id, p_channel, v_alert.kind, v_alert.entity, 'suppressed');
    return false;
  end if;
  delete from sync.alert_delivery d where d.alert_id = p_alert_id and d.channel = p_channel and d.status = 'sending';
  insert into sync.alert_delivery (alert_id, channel, kind, entity, status)
  values (p_alert_id, p_channel, v_alert.kind, v_alert.entity, 'sending');
  return true;
end
$$;
comment on function sync.claim_alert_delivery(bigint, text, int) is 'Whether to send an alert on a channel now: false when it was sent already or p_per_hour of its kind and entity went out in the last hour (recorded as suppressed). Records the send as under way.';

create or replace function sync.alert_delivered(p_alert_id bigint, p_channel text, p_error text default null) returns void
  language sql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
  update sync.alert_delivery set status = case when p_error is null then 'sent' else 'failed' end, error = p_error
   where alert_id = p_alert_id and channel = p_channel and status = 'sending'
$$;
comment on function sync.alert_delivered(bigint, text, text) is 'Records how a claimed delivery ended: sent, or failed with the error (a failed one does not count toward the hourly limit and is retried).';

create or replace function sync.tg_alert__deliver() returns trigger
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
begin
  perform graphile_worker.add_job('sync_alert', json_build_object('id', new.id), max_attempts := 5);
  perform pg_notify('sync_alert', json_build_object('id', new.id, 'kind', new.kind, 'entity', new.entity)::text);
  return null;
end
$$;
drop trigger if exists _500_deliver on sync.alert;
create trigger _500_deliver after insert on sync.alert
  for each row execute function sync.tg_alert__deliver();

create or replace function sync.ack_alert(p_id bigint, p_by text) returns boolean
  language plpgsql volatile security definer
  set search_path to pg_catalog, public, pg_temp
as $$
begin
  if nullif(btrim(p_by), '') is null then
    raise exception 'sync.ack_alert: say who acknowledges' using errcode = '22023', hint = 'select sync.ack_alert(<id>, ''your name'')';
  end if;
  update sync.alert set acknowledged_by = p_by, acknowledged_at = now()
   where id = p_id and acknowledged_at is null;
  return found;
end
$$;


/*
 * Verification. After a run the engine stages the source's keys
 * (run_<id>_keys) when the source's count and the target's differ;
 * sync.detect_gaps records the keys missing from the target in sync.gap and
 * hands them to a re-sync of just those keys. Quarantined records retry the
 * same way after their entity's retry_delay.
 */
create table if not exists sync.gap (
  id bigint generated always as identity primary key,
  entity text not null,
  key text[] not null,
  run_id bigint not null,
  detected_at timestamptz not null default now(),
  last_seen_at timestamptz not null default now(),
  resync_requested_at timestamptz,
  resync_attempts integer not null default 0,
  resolved_at timestamptz
);
create unique index if not exists gap_open_idx on sync.gap (entity, key) where resolved_at is null;
comment on table sync.gap is 'Source records missing from the target, found by verification after a run; resolved when a later check finds them (or the source no longer has them).';

create or replace view sync.gaps as
select g.entity, coalesce(jsonb_object(e.key_columns, g.key), to_jsonb(g.key)) as key, g.key as key_values,
       g.detected_at, g.last_seen_at, g.run_id as found_by_run, g.resync_requested_at, g.resync_attempts
  from sync.gap g
  left join sync.entity e on e.name = g.entity and cardinality(e.key_columns) = cardinality(g.key)
 where g.resolved_at is null;
comment on view sync.gaps is 'Open gaps: records the source has and the target lacks, with when they were found and whether a re-sync was asked for.';

create or replace function sync.create_key_staging(p_run_id bigint) returns text
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_ent sync.entity;
begin
  select e.* into strict v_ent from sync.entity e join sync.run r on r.entity = e.name where r.id = p_run_id;
  execute format('create unlogged table sync_staging.%I (%s)', 'run_' || p_run_id || '_keys',
                 (select string_agg(format('%I %s', t.column_name, t.column_type), ', ')
                    from sync.target_column_types(v_ent.name, v_ent.key_columns) t));
  return format('sync_staging.%I', 'run_' || p_run_id || '_keys');
end
$$;
comment on function sync.create_key_staging(bigint) is 'Creates sync_staging.run_<id>_keys, typed as the target''s key columns, for the source''s keys a verification compares.';

create or replace function sync.request_keys(p_entity text, p_keys jsonb, p_trigger text default 'resync') returns bigint
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_job graphile_worker._private_jobs;
begin
  if p_keys is null or jsonb_array_length(p_keys) = 0 then
    return null;
  end if;
  select * into v_job from graphile_worker.add_job('sync_entity',
    json_build_object('entity', p_entity, 'trigger', p_trigger, 'keys', p_keys),
    queue_name := 'sync:' || p_entity, max_attempts := 3);
  return v_job.id;
end
$$;
comment on function sync.request_keys(text, jsonb, text) is 'Queues a run of just these keys ([["k1"], ["k2"]]: each the key columns'' values as text): upserts them, deletes those the source no longer has, leaves the cursor alone.';

create or replace function sync.detect_gaps(p_run_id bigint) returns jsonb
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_run sync.run;
  v_ent sync.entity;
  v_k text := format('sync_staging.%I', 'run_' || p_run_id || '_keys');
  v_t text;
  v_scope text := 'true';
  v_found bigint;
  v_open bigint;
  v_keys jsonb;
begin
  select * into strict v_run from sync.run where id = p_run_id;
  select * into strict v_ent from sync.entity where name = v_run.entity;
  v_t := format('%I.%I', v_ent.target_schema, v_ent.target_table);
  if v_ent.tenant_column is not null then
    v_scope := format('t.%I = %L', v_ent.tenant_column, v_ent.tenant_value);
  end if;
  if v_ent.mode = 'soft-delete' then
    v_scope := format('%s and t.%I is null', v_scope, v_ent.soft_delete_column);
  end if;
  -- Missing: in the source, not in the target, and not a record waiting in quarantine.
  execute format($q$
    with missing as (
      select %1$s as key from %2$s s
       where not exists (select 1 from %3$s t where %4$s and %5$s)
         and not exists (select 1 from sync.run_error e where e.entity = %6$L and e.resolved_at is null and e.key = %1$s))
    insert into sync.gap as g (entity, key, run_id)
    select %6$L, m.key, %7$s from missing m
    on conflict (entity, key) where resolved_at is null do update set last_seen_at = now(), run_id = excluded.run_id$q$,
    sync._key_array(v_ent.key_columns, 's'), v_k, v_t, sync._join(v_ent.key_columns, 't', 's'), v_scope, v_ent.name, p_run_id);
  get diagnostics v_found = row_count;
  -- Healed: present in the target now, or gone from the source.
  execute format($q$
    update sync.gap g set resolved_at = now()
     where g.entity = %1$L and g.resolved_at is null
       and (not exists (select 1 from %2$s s where %3$s = g.key)
            or exists (select 1 from %4$s t where %5$s = g.key and %6$s))$q$,
    v_ent.name, v_k, sync._key_array(v_ent.key_columns, 's'), v_t, sync._key_array(v_ent.key_columns, 't'), v_scope);
  execute format('drop table %s', v_k);
  select count(*) into v_open from sync.gap where entity = v_ent.name and resolved_at is null;
  if v_open > v_ent.gap_threshold then
    perform sync.raise_alert('gap', 'warning', v_ent.name,
      format('%s records of %s are in the source but not in the target: see select * from sync.gaps where entity = %L', v_open, v_ent.name, v_ent.name),
      jsonb_build_object('gaps', v_open, 'run_id', p_run_id));
  elsif v_open = 0 then
    perform sync.resolve_alerts(v_ent.name, array['gap', 'resync_failed']);
  end if;
  if v_open > 0 and v_run.trigger = 'resync' then
    perform sync.raise_alert('resync_failed', 'critical', v_ent.name,
      format('%s records of %s are still missing after a re-sync of just those keys (run %s)', v_open, v_ent.name, p_run_id),
      jsonb_build_object('gaps', v_open, 'run_id', p_run_id));
  elsif v_open > 0 then
    -- A re-sync of just the missing keys; gaps asked for in the last 10 minutes wait for theirs.
    with asked as (
      update sync.gap g set resync_requested_at = now(), resync_attempts = g.resync_attempts + 1
       where g.id in (select id from sync.gap where entity = v_ent.name and resolved_at is null
                         and (resync_requested_at is null or resync_requested_at < now() - interval '10 minutes')
                       order by id limit 10000)
      returning g.key)
    select jsonb_agg(to_jsonb(key)) into v_keys from asked;
    perform sync.request_keys(v_ent.name, v_keys);
  end if;
  update sync.run set detail = detail || jsonb_build_object('gaps', jsonb_build_object('found', v_found, 'open', v_open))
   where id = p_run_id;
  return jsonb_build_object('found', v_found, 'open', v_open, 'resync_keys', coalesce(jsonb_array_length(v_keys), 0));
end
$$;
comment on function sync.detect_gaps(bigint) is 'Compares the source keys a verification staged (run_<id>_keys) with the target: records the missing ones in sync.gap, resolves the healed ones, alerts above the entity''s gap_threshold, and queues a re-sync of just the missing keys (or, after a failed re-sync, raises resync_failed).';

create or replace function sync.request_retries() returns integer
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_e record;
  v_n integer := 0;
begin
  for v_e in
    with due as (
      update sync.run_error e set next_retry_at = null
       where e.id in (select id from sync.run_error where next_retry_at <= now() and resolved_at is null and key is not null
                       order by id limit 10000 for update skip locked)
      returning e.entity, e.key)
    select entity, jsonb_agg(distinct to_jsonb(key)) as keys from due group by entity
  loop
    perform sync.request_keys(v_e.entity, v_e.keys);
    v_n := v_n + jsonb_array_length(v_e.keys);
  end loop;
  return v_n;
end
$$;
comment on function sync.request_retries() is 'Offers quarantined records whose retry is due to a re-sync of their keys (the merge counts the attempts: past the entity''s retry_limit a record stays quarantined). The sync_tick task calls it every minute.';

create or replace function sync.replay(variadic p_ids bigint[]) returns integer
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_e record;
  v_n integer := 0;
begin
  for v_e in
    select entity, jsonb_agg(distinct to_jsonb(key)) as keys
      from sync.run_error where id = any (p_ids) and key is not null and resolved_at is null group by entity
  loop
    -- Offered afresh: the retry count starts over.
    update sync.run_error set retry_count = -1, next_retry_at = null
     where id = any (p_ids) and entity = v_e.entity;
    perform sync.request_keys(v_e.entity, v_e.keys, 'manual');
    v_n := v_n + jsonb_array_length(v_e.keys);
  end loop;
  return v_n;
end
$$;
comment on function sync.replay(bigint[]) is 'Re-offers quarantined records (sync.run_error ids) after a fix: queues a run of just their keys. Returns the keys queued.';

create table if not exists sync.heartbeat (
  name text primary key,
  beat_at timestamptz not null default now(),
  beats bigint not null default 1
);
comment on table sync.heartbeat is 'Liveness: sync_tick (run every minute by a live worker) stamps the row ''worker''. A beat older than two minutes means no worker is running.';

create or replace function sync.tick() returns jsonb
  language sql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
  insert into sync.heartbeat as h (name) values ('worker')
  on conflict (name) do update set beat_at = now(), beats = h.beats + 1;
  select jsonb_build_object('stale', sync.check_freshness(), 'retries', sync.request_retries(), 'reaped', sync.reap_workers(),
                            'waves_repaired', sync.wave_repair());
$$;


/*
 * Retention. sync.run_change, the one log that grows by a row per changed
 * record, is partitioned by month: old months are dropped whole, with no
 * long delete. The rest is deleted in batches by sync.maintain() daily.
 */
create table sync.run_change (
  run_id bigint not null,
  action text not null check (action in ('insert', 'update', 'delete')),
  key text[] not null,
  changed text[],
  at timestamptz not null default now()
) partition by range (at);
create index if not exists run_change_run_idx on sync.run_change using brin (run_id);
comment on table sync.run_change is 'One row a record a run inserted, updated or deleted; `changed` names the columns an update changed. Partitioned by month (run_change_pYYYY_MM); the view sync.change shows it with the entity and the key as an object.';
comment on column sync.run_change.key is 'The values of the entity''s key_columns, in that order, as text: where key = array[''acme'', ''17''].';
comment on column sync.run_change.at is 'When the change was merged (its run''s merge transaction): the partition key.';

create or replace function sync.ensure_log_partitions(p_at timestamptz default now()) returns integer
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_month timestamptz;
  v_made integer := 0;
begin
  -- This month's and the next, so a merge that commits after midnight at a month's end has its partition.
  foreach v_month in array array[date_trunc('month', p_at, 'UTC'), date_trunc('month', p_at, 'UTC') + interval '1 month'] loop
    if to_regclass(format('sync.%I', 'run_change_p' || to_char(v_month at time zone 'UTC', 'YYYY_MM'))) is null then
      execute format('create table if not exists sync.%I partition of sync.run_change for values from (%L) to (%L)',
                     'run_change_p' || to_char(v_month at time zone 'UTC', 'YYYY_MM'), v_month, v_month + interval '1 month');
      v_made := v_made + 1;
    end if;
  end loop;
  return v_made;
end
$$;
comment on function sync.ensure_log_partitions(timestamptz) is 'Creates the month partitions of sync.run_change for p_at''s month and the next, if missing. Called by every run start and by sync.maintain().';

select from sync.ensure_log_partitions();

create or replace view sync.change as
select c.run_id, r.entity, r.started_at, c.action,
       coalesce(jsonb_object(e.key_columns, c.key), to_jsonb(c.key)) as key,
       c.changed
  from sync.run_change c
  join sync.run r on r.id = c.run_id
  left join sync.entity e on e.name = r.entity and cardinality(e.key_columns) = cardinality(c.key);
comment on view sync.change is 'sync.run_change for people: the entity, when the run started, and the key as {"column": "value"}.';

create index if not exists run_error_open_key_idx on sync.run_error (entity, key) where resolved_at is null;
create index if not exists run_error_retry_idx on sync.run_error (next_retry_at) where next_retry_at is not null;
create index if not exists run_error_created_idx on sync.run_error (created_at);
create index if not exists run_finished_idx on sync.run (finished_at);
create index if not exists run_status_idx on sync.run (status, started_at desc);

create or replace function sync.maintain() returns jsonb
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_keep interval := (select value::interval from sync.setting where name = 'retention');
  v_cutoff timestamptz := now() - v_keep;
  v_part record;
  v_parts integer := 0;
  v_indexed integer := 0;
  v_runs bigint := 0;
  v_errors bigint := 0;
  v_other bigint := 0;
  v_n bigint;
begin
  perform sync.ensure_log_partitions();
  -- A month whose last day is past the cutoff goes whole.
  for v_part in
    select c.relname, (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']+)''\)'))[1]::timestamptz as upper
      from pg_inherits i join pg_class c on c.oid = i.inhrelid
     where i.inhparent = 'sync.run_change'::regclass
  loop
    if v_part.upper <= v_cutoff then
      execute format('drop table sync.%I', v_part.relname);
      v_parts := v_parts + 1;
    end if;
  end loop;
  -- A month no run writes to any more gets an index on the record key, for
  -- sync.record_history; the current month goes without, to keep merges fast.
  for v_part in
    select c.relname, (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']+)''\)'))[1]::timestamptz as upper
      from pg_inherits i join pg_class c on c.oid = i.inhrelid
     where i.inhparent = 'sync.run_change'::regclass
  loop
    if v_part.upper <= now() - interval '1 day' and to_regclass(format('sync.%I', v_part.relname || '_key_idx')) is null then
      execute format('create index %I on sync.%I (key)', v_part.relname || '_key_idx', v_part.relname);
      v_indexed := v_indexed + 1;
    end if;
  end loop;
  -- The rest in batches, so no statement holds many row locks for long.
  loop
    delete from sync.run_error where id in (select id from sync.run_error where created_at < v_cutoff limit 10000);
    get diagnostics v_n = row_count;
    v_errors := v_errors + v_n;
    exit when v_n = 0;
  end loop;
  loop
    delete from sync.run where id in (select id from sync.run where finished_at < v_cutoff and status <> 'running' limit 10000);
    get diagnostics v_n = row_count;
    v_runs := v_runs + v_n;
    exit when v_n = 0;
  end loop;
  delete from sync.alert where created_at < v_cutoff and (resolved_at is not null or acknowledged_at is not null);
  get diagnostics v_n = row_count;
  v_other := v_other + v_n;
  delete from sync.alert_delivery where created_at < v_cutoff;
  get diagnostics v_n = row_count;
  v_other := v_other + v_n;
  delete from sync.config_change where changed_at < v_cutoff;
  get diagnostics v_n = row_count;
  v_other := v_other + v_n;
  delete from sync.gap where resolved_at < v_cutoff;
  get diagnostics v_n = row_count;
  v_other := v_other + v_n;
  return jsonb_build_object('retention', v_keep::text, 'change_partitions_dropped', v_parts, 'change_partitions_indexed', v_indexed, 'runs_deleted', v_runs,
                            'errors_deleted', v_errors, 'other_deleted', v_other, 'cleanup', sync.cleanup());
end
$$;
comment on function sync.maintain() is 'Daily maintenance (the sync_maintain task): drops sync.run_change months older than the retention setting, indexes closed months by record key, deletes older runs, errors, closed alerts, deliveries, config changes and healed gaps in batches, and cleans staging.';


/*
 * Validation rules from the entity's config (definition -> 'validate') and
 * the version check (definition -> 'version'), applied by sync.merge after
 * its own quarantine: failing records are flagged and recorded, the rest merge.
 */
create or replace function sync._flag(p_run_id bigint, p_ent sync.entity, p_s regclass, p_condition text, p_category text,
  p_message text, p_from text default '') returns bigint
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_n bigint;
begin
  execute format($q$
    with bad as (
      update %1$s s set _sl_quarantined = true %7$s where not s._sl_quarantined and (%2$s) returning s.*, %6$s as _sl_message)
    insert into sync.run_error (run_id, entity, key, category, message, payload)
    select %3$s, %4$L, %5$s, %8$L, s._sl_message, to_jsonb(s.*) - '_sl_quarantined' - '_sl_message' from bad s$q$,
    p_s, p_condition, p_run_id, p_ent.name, sync._key_array(p_ent.key_columns, 's'), p_message, p_from, p_category);
  get diagnostics v_n = row_count;
  return v_n;
end
$$;
comment on function sync._flag(bigint, sync.entity, regclass, text, text, text, text) is 'Flags the staged records matching p_condition as quarantined and records each in sync.run_error with p_category and the message p_message (an SQL expression over s).';

create or replace function sync._check_rules(p_run_id bigint, p_ent sync.entity, p_s regclass, p_rel regclass, p_cols text[])
  returns void
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_rules jsonb := coalesce(p_ent.definition -> 'validate', '{}');
  v_version text := p_ent.definition #>> '{version,column}';
  v_c text;
  v_v jsonb;
  v_ref text[];
  v_ref_rel regclass;
  v_same boolean;
begin
  for v_c in select jsonb_array_elements_text(coalesce(v_rules -> 'required', '[]'))
             union all select jsonb_object_keys(coalesce(v_rules -> 'formats', '{}'))
             union all select jsonb_object_keys(coalesce(v_rules -> 'allowed', '{}'))
             union all select jsonb_object_keys(coalesce(v_rules -> 'references', '{}'))
             union all select v_version where v_version is not null loop
    if v_c <> all (p_cols) then
      raise exception 'entity %: a validate or version rule names column %, which this entity does not sync', p_ent.name, v_c
        using hint = 'add the column to the entity''s columns, or fix the rule';
    end if;
  end loop;
  for v_c in select jsonb_array_elements_text(coalesce(v_rules -> 'required', '[]')) loop
    perform sync._flag(p_run_id, p_ent, p_s, format('s.%1$I is null or btrim(s.%1$I::text) = %2$L', v_c, ''), 'validation',
                       format('%L', v_c || ' is required but empty'));
  end loop;
  for v_c, v_v in select * from jsonb_each(coalesce(v_rules -> 'formats', '{}')) loop
    perform sync._flag(p_run_id, p_ent, p_s, format('s.%1$I is not null and s.%1$I::text !~ %2$L', v_c, v_v #>> '{}'), 'validation',
                       format('concat(%L, s.%I::text, %L)', v_c || ' "', v_c, '" does not match the format ' || (v_v #>> '{}')));
  end loop;
  for v_c, v_v in select * from jsonb_each(coalesce(v_rules -> 'allowed', '{}')) loop
    perform sync._flag(p_run_id, p_ent, p_s,
      format('s.%1$I is not null and s.%1$I::text <> all (%2$L::text[])', v_c, array(select jsonb_array_elements_text(v_v))), 'validation',
      format('concat(%L, s.%I::text, %L)', v_c || ' "', v_c,
             '" is not one of the allowed values: ' || array_to_string(array(select jsonb_array_elements_text(v_v)), ', ')));
  end loop;
  for v_c, v_v in select * from jsonb_each(coalesce(v_rules -> 'references', '{}')) loop
    v_ref := string_to_array(v_v #>> '{}', '.');
    if cardinality(v_ref) = 2 then
      v_ref := array['public'] || v_ref;
    end if;
    v_ref_rel := to_regclass(format('%I.%I', v_ref[1], v_ref[2]));
    if v_ref_rel is null then
      raise exception 'entity %: references rule on % names table %.%, which does not exist', p_ent.name, v_c, v_ref[1], v_ref[2]
        using hint = 'write "schema.table.column" of an existing table';
    end if;
    select (select atttypid from pg_attribute where attrelid = v_ref_rel and attname = v_ref[3] and not attisdropped)
           = (select atttypid from pg_attribute where attrelid = p_s and attname = v_c)
      into v_same;
    if v_same is null then
      raise exception 'entity %: references rule on % names column % of %.%, which does not exist', p_ent.name, v_c, v_ref[3], v_ref[1], v_ref[2]
        using hint = 'write "schema.table.column" of an existing column';
    end if;
    -- The same type compares directly (and can use the referenced table's index).
    perform sync._flag(p_run_id, p_ent, p_s,
      format('s.%1$I is not null and not exists (select 1 from %2$s r where %3$s)', v_c, v_ref_rel,
             case when v_same then format('r.%I = s.%I', v_ref[3], v_c) else format('r.%I::text = s.%I::text', v_ref[3], v_c) end),
      'integrity', format('concat(%L, s.%I::text, %L)', v_c || ' "', v_c, '" has no match in ' || (v_v #>> '{}')));
  end loop;
  if v_version is not null then
    -- Optimistic locking: a record older than the target's row is a conflict, not an update.
    perform sync._flag(p_run_id, p_ent, p_s,
      format('%s and t.%I > s.%I', sync._join(p_ent.key_columns, 't', 's'), v_version, v_version), 'integrity',
      format('concat(%L, t.%I::text, %L, s.%I::text, %L)', 'conflict: the target holds a newer ' || v_version || ' (', v_version,
             ') than the source (', v_version, '); not applied'),
      format('from %s t', p_rel));
  end if;
end
$$;
comment on function sync._check_rules(bigint, sync.entity, regclass, regclass, text[]) is 'Second step of sync.merge: the entity''s validate rules (required, formats, allowed, references) and version check; failing records are quarantined with the rule they broke.';

create or replace function sync.start_run(
  p_entity text, p_trigger text, p_dry_run boolean, p_full boolean, p_columns text[], p_job_id text default null
) returns bigint
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_run_id bigint;
  v_defs text;
begin
  perform sync.ensure_log_partitions();
  -- The caller holds the entity's advisory lock, so a run still marked
  -- running belongs to a process that died: close it, or it shows forever.
  perform sync.close_abandoned(r.id, 'the process running it stopped before it finished')
     from sync.run r where r.entity = p_entity and r.status = 'running';
  insert into sync.run (entity, trigger, dry_run, full_refresh, cursor_before, job_id)
  select e.name, p_trigger, p_dry_run, p_full, e.cursor_value, p_job_id
    from sync.entity e where e.name = p_entity
  returning id into v_run_id;
  if v_run_id is null then
    raise exception 'unknown entity %', p_entity using hint = 'run `syncline config apply` after adding it to syncline.config.json';
  end if;
  perform sync.drop_leftovers(p_entity, v_run_id);
  select string_agg(format('%I %s', t.column_name, t.column_type), ', ')
    into v_defs from sync.target_column_types(p_entity, p_columns) t;
  execute format('create unlogged table sync_staging.%I (%s, _sl_quarantined boolean not null default false)',
                 'run_' || v_run_id, v_defs);
  return v_run_id;
end
$$;

comment on function sync.start_run(text, text, boolean, boolean, text[], text) is 'Opens a run: records it in sync.run and creates its unlogged staging table sync_staging.run_<id> with the target''s column types.';

create or replace function sync.merge(p_run_id bigint) returns jsonb
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_run sync.run;
  v_ent sync.entity;
  v_started timestamptz := clock_timestamp();
  v_validated timestamptz;
  v_t text;
  v_s text;
  v_rel regclass;
  v_cols text[];
  v_vals text[];
  v_on text;
  v_scope text := 'true';
  v_distinct text;
  v_changed text;
  v_key text;
  v_snapshot boolean;
  v_deletes boolean;
  v_tomb text := 'false';
  v_parent_scope text := 'true';
  v_empty boolean;
  v_unreferenced text := 'true';
  v_collist text;
  v_selist text;
  v_setlist text;
  v_tkeys text;
  v_fetched bigint;
  v_quarantined bigint;
  v_ins bigint := 0;
  v_upd bigint := 0;
  v_del bigint := 0;
  v_missing bigint := 0;
  v_cursor text;
  v_cursor_type text;
  v_sample jsonb;
  v_overriding text := '';
  v_result jsonb;
  v_nullkeys bigint;
  v_doubts text[];
  v_doubtful boolean := false;
  v_full_snapshot boolean;
  v_judged jsonb := '{}';
  v_held bigint := 0;
  v_kept bigint := 0;
  v_notes text[] := '{}';
begin
  -- No row lock: the entity lock below serializes merges, and the run's live
  -- progress (sync.report_progress) must still be written while it merges.
  select * into v_run from sync.run where id = p_run_id;
  if not found then
    raise exception 'sync.merge: no run %', p_run_id;
  end if;
  if v_run.status <> 'running' then
    raise exception 'sync.merge: run % is %, not running', p_run_id, v_run.status;
  end if;
  select * into strict v_ent from sync.entity where name = v_run.entity;
  -- Same key as the session lock the runner holds: also guards a merge
  -- started by hand in psql.
  perform pg_advisory_xact_lock(sync.entity_lock_key(v_ent.name));

  v_t := format('%I.%I', v_ent.target_schema, v_ent.target_table);
  v_s := format('sync_staging.%I', 'run_' || p_run_id);
  v_rel := v_t::regclass;
  select array_agg(a.attname::text order by a.attnum) into v_cols
    from pg_attribute a
   where a.attrelid = v_s::regclass and a.attnum > 0 and not a.attisdropped and a.attname <> '_sl_quarantined';
  v_vals := array(select c from unnest(v_cols) c where c <> all (v_ent.key_columns));
  v_on := sync._join(v_ent.key_columns, 't', 's');
  v_key := sync._key_array(v_ent.key_columns, 's');
  if v_ent.tenant_column is not null then
    v_scope := format('t.%I = %L', v_ent.tenant_column, v_ent.tenant_value);
  end if;
  -- An incremental run sees only changed rows, so only a full snapshot may
  -- conclude that a missing row was deleted.
  v_snapshot := v_ent.cursor_column is null or v_run.full_refresh;
  v_deletes := v_snapshot and v_ent.mode in ('mirror', 'soft-delete');
  v_full_snapshot := v_deletes and not v_run.detail ? 'parent_scope';
  if v_run.detail ? 'parent_scope' then
    -- Children nested in parent records: each parent seen in this run brings
    -- its whole child set, so its missing children go, even incrementally;
    -- children of parents not seen stay.
    v_deletes := v_ent.mode in ('mirror', 'soft-delete');
    v_parent_scope := format('exists (select 1 from sync_staging.%I p where %s)', 'run_' || p_run_id || '_parents',
      (select string_agg(format('p.%1$I = t.%1$I::text', c), ' and ') from jsonb_array_elements_text(v_run.detail -> 'parent_scope') c));
  end if;
  if v_ent.tombstone_column = any (v_cols) and v_ent.mode <> 'soft-delete' then
    -- A record the source marks deleted deletes its row, snapshot or not.
    v_tomb := format('s.%I is not null', v_ent.tombstone_column);
  end if;
  if exists (select 1 from pg_attribute a where a.attrelid = v_rel and a.attidentity = 'a'
               and a.attname = any (v_cols)) then
    v_overriding := 'overriding system value';
  end if;

  perform sync._quarantine(p_run_id, v_ent, v_s::regclass, v_rel, v_cols);
  perform sync._check_rules(p_run_id, v_ent, v_s::regclass, v_rel, v_cols);
  v_validated := clock_timestamp();
  execute format('select count(*), count(*) filter (where _sl_quarantined) from %s', v_s)
    into v_fetched, v_quarantined;
  -- Records rejected before staging with no usable key (a malformed CSV
  -- line, a key its type rejects) count as fetched and quarantined too.
  v_fetched := v_fetched + coalesce((v_run.detail ->> 'unkeyed_rejects')::bigint, 0);
  v_quarantined := v_quarantined + coalesce((v_run.detail ->> 'unkeyed_rejects')::bigint, 0);
  -- A record whose key could not be read may be any row: the snapshot cannot
  -- tell which rows the source still has.
  execute format('select count(*) from %s s where %s', v_s,
                 (select string_agg(format('s.%I is null', k), ' or ') from unnest(v_ent.key_columns) k))
    into v_nullkeys;
  v_nullkeys := v_nullkeys + coalesce((v_run.detail ->> 'unkeyed_rejects')::bigint, 0);
  v_doubts := v_run.doubts;
  if v_nullkeys > 0 then
    v_doubts := v_doubts || format('%s record(s) without a readable key (an unreadable line, a parse error, an empty key '
                                   'or a key its column type rejects): their rows cannot be told from deleted ones', v_nullkeys);
  end if;
  v_doubtful := v_deletes and cardinality(v_doubts) > 0;

  v_collist := (select string_agg(format('%I', c), ', ') from unnest(v_cols) c);
  v_selist := (select string_agg(format('s.%I', c), ', ') from unnest(v_cols) c);
  v_setlist := (select string_agg(format('%1$I = s.%1$I', c), ', ') from unnest(v_vals) c);
  v_distinct := (select case when count(*) > 0 then format('(%s) is distinct from (%s)',
                        string_agg(sync._cmp_expr(v_rel, c, 't'), ', '),
                        string_agg(sync._cmp_expr(v_s::regclass, c, 's'), ', ')) end
                   from unnest(v_vals) c);
  v_changed := (select case when count(*) > 0 then format('array_remove(array[%s], null)',
                        string_agg(format('case when %s is distinct from %s then %L end',
                                          sync._cmp_expr(v_rel, c, 't'), sync._cmp_expr(v_s::regclass, c, 's'), c), ', ')) end
                  from unnest(v_vals) c);
  if v_ent.mode = 'soft-delete' and v_ent.soft_delete_column <> all (v_cols) then
    -- A record back in the source is live again.
    v_distinct := format('(%s)', concat_ws(' or ', v_distinct, format('t.%I is not null', v_ent.soft_delete_column)));
    v_changed := format('array_remove(%s || array[case when t.%I is not null then %L end], null)',
                        coalesce(v_changed, 'array[]::text[]'), v_ent.soft_delete_column, v_ent.soft_delete_column);
    v_setlist := concat_ws(', ', v_setlist, format('%I = null', v_ent.soft_delete_column));
  end if;
  if v_ent.mode = 'append' then
    v_distinct := null;
  end if;
  if (v_deletes and v_ent.mode = 'mirror') or v_tomb <> 'false' then
    -- Rows another table still references (with a restricting foreign key)
    -- wait until that table's own sync has let go of them.
    select coalesce(string_agg(format('not exists (select 1 from %s c where %s)', c.conrelid::regclass,
             (select string_agg(format('c.%I = t.%I', ca.attname, ta.attname), ' and ')
                from unnest(c.conkey, c.confkey) as k(ck, tk)
                join pg_attribute ca on ca.attrelid = c.conrelid and ca.attnum = k.ck
                join pg_attribute ta on ta.attrelid = c.confrelid and ta.attnum = k.tk)), ' and '), 'true')
      into v_unreferenced
      from pg_constraint c
     where c.contype = 'f' and c.confrelid = v_rel and c.conrelid <> v_rel and c.confdeltype in ('a', 'r');
  end if;

  -- The diff: what to insert, update and delete, computed in one pass over
  -- staging and target before anything is written. Writing first and
  -- anti-joining against the table being filled goes quadratic when the
  -- planner believes the target small. An empty target (the initial load)
  -- needs no join at all.
  execute format('select not exists (select 1 from %s t where %s)', v_t, v_scope) into v_empty;
  if v_empty then
    -- Nothing to compare with: the diff is every mergeable staged row, and a
    -- view of them saves copying the whole load once more.
    execute format($q$
      create temp view _sl_diff as
      select 'insert'::text as _sl_action, null::text[] as _sl_changed, s.*, %s from %s s where not s._sl_quarantined and not (%s)$q$,
      (select string_agg(format('null::text as _sl_tk%s', i), ', ') from generate_series(1, cardinality(v_ent.key_columns)) i),
      v_s, v_tomb);
  else
    v_tkeys := (select string_agg(format('t.%I as _sl_tk%s', k, i), ', ') from unnest(v_ent.key_columns) with ordinality x(k, i));
    execute format($q$
      create temp table _sl_diff on commit drop as
      select case when t._sl_present is null then 'insert' when s._sl_quarantined is null or (%10$s) then 'delete' else 'update' end as _sl_action,
             case when t._sl_present and s._sl_quarantined is not null and not (%10$s) then %1$s end as _sl_changed,
             s.*, %2$s
        from %3$s s
        %4$s join (select true as _sl_present, t.* from %5$s t where %6$s and %11$s) t on %7$s
       where (t._sl_present is null and not s._sl_quarantined and not (%10$s))
          or (s._sl_quarantined is null %8$s)
          or (t._sl_present and not s._sl_quarantined and (%10$s))
          or (t._sl_present and not s._sl_quarantined and not (%10$s) and (%9$s))$q$,
      coalesce(v_changed, 'null::text[]'), v_tkeys, v_s,
      case when v_deletes then 'full' else 'left' end, v_t, v_scope, v_on,
      case when v_ent.mode = 'soft-delete' then format('and t.%I is null', v_ent.soft_delete_column) else '' end,
      coalesce(v_distinct, 'false'), v_tomb, v_parent_scope);
  end if;

  if v_deletes and not v_empty then
    v_judged := sync._judge_deletes(v_run, v_ent, v_t, v_scope, v_doubtful);
    v_held := coalesce((v_judged ->> 'held')::bigint, 0);
    v_kept := coalesce((v_judged ->> 'kept')::bigint, 0);
  end if;
  if v_doubtful then
    v_notes := v_notes || format('the snapshot is doubtful, so nothing was deleted%s: %s',
                                 case when v_kept > 0 then format(' (%s rows it lacks were kept)', v_kept) else '' end,
                                 array_to_string(v_doubts, '; '));
  end if;
  if v_held > 0 then
    v_notes := v_notes || format('%s deletes held: %s. If the source really lost those rows, confirm with '
                                 'select sync.confirm_deletes(%s) or syncline sync %s --confirm-deletes',
                                 v_held, v_judged ->> 'reason', p_run_id, v_ent.name);
  end if;
  if v_unreferenced <> 'true' then
    execute format('select count(*) from _sl_diff where _sl_action = %L', 'delete') into v_missing;
  end if;
  if v_run.dry_run then
    execute 'select count(*) filter (where _sl_action = ''insert''), count(*) filter (where _sl_action = ''update''),
                    count(*) filter (where _sl_action = ''delete'') from _sl_diff'
      into v_ins, v_upd, v_del;
    if v_del > 0 and v_unreferenced <> 'true' then
      execute format('select count(*) from %s t join _sl_diff s on %s where s._sl_action = %L and %s',
                     v_t, sync._join_tk(v_ent.key_columns), 'delete', v_unreferenced)
        into v_del;
    end if;
  else
    -- Inserts first, then updates, then deletes: a new parent exists before a
    -- row is pointed at it, and a row stops pointing at an old parent before
    -- that parent goes. Foreign keys are checked per statement, so a table
    -- that references itself converges in one run.
    execute format($q$
      with i as (
        insert into %1$s as t (%2$s) %3$s
        select %4$s from _sl_diff s where s._sl_action = 'insert'
        returning %5$s as k)
      insert into sync.run_change (run_id, action, key) select %6$s, 'insert', k from i$q$,
      v_t, v_collist, v_overriding, v_selist, sync._key_array(v_ent.key_columns, 't'), p_run_id);
    get diagnostics v_ins = row_count;
    if not v_empty and v_distinct is not null then
      execute format($q$
        with u as (
          update %1$s t set %2$s from _sl_diff s
           where s._sl_action = 'update' and %3$s and %4$s
          returning %5$s as k, s._sl_changed)
        insert into sync.run_change (run_id, action, key, changed) select %6$s, 'update', k, _sl_changed from u$q$,
        v_t, v_setlist, v_on, v_scope, v_key, p_run_id);
      get diagnostics v_upd = row_count;
    end if;
    if not v_empty and (v_deletes or v_tomb <> 'false') then
      execute format($q$
        with d as (
          %1$s
          returning %2$s as k)
        insert into sync.run_change (run_id, action, key, changed) select %3$s, 'delete', k, %4$s from d$q$,
        case when v_ent.mode <> 'soft-delete'
          then format('delete from %s t using _sl_diff s where s._sl_action = %L and %s and %s and %s',
                      v_t, 'delete', sync._join_tk(v_ent.key_columns), v_scope, v_unreferenced)
          else format('update %s t set %I = now() from _sl_diff s where s._sl_action = %L and %s and %s',
                      v_t, v_ent.soft_delete_column, 'delete', sync._join_tk(v_ent.key_columns), v_scope) end,
        sync._key_array(v_ent.key_columns, 't'), p_run_id,
        case when v_ent.mode = 'soft-delete' then format('array[%L]', v_ent.soft_delete_column) else 'null' end);
      get diagnostics v_del = row_count;
    end if;
  end if;
  execute format($q$
    select coalesce(jsonb_agg(x order by x.action, x.key), '[]') from (
      (select 'insert' as action, %1$s as key, null::text[] as changed from _sl_diff s where _sl_action = 'insert' order by 2 limit 10)
      union all
      (select 'update', %1$s, _sl_changed from _sl_diff s where _sl_action = 'update' order by 2 limit 10)
      union all
      (select 'delete', %2$s, null from _sl_diff s where _sl_action = 'delete' order by 2 limit 10)
      union all
      (select 'held', %2$s, null from _sl_diff s where _sl_action = 'held' order by 2 limit 10)) x$q$,
    sync._key_json(v_ent.key_columns, 's'), (select format('jsonb_build_object(%s)', string_agg(format('%L, s._sl_tk%s', k, i), ', '))
              from unnest(v_ent.key_columns) with ordinality x(k, i)))
    into v_sample;
  if v_full_snapshot and not v_doubtful and not v_empty and not v_run.dry_run then
    -- Confirmed deletes are spent once made (or once the row is back in
    -- the source); one deferred for a reference waits for the next run.
    execute format($q$
      delete from sync.held_delete h using sync.run r
       where r.id = h.run_id and r.entity = %1$L and r.deletes_confirmed_at is not null
         and not exists (select 1 from _sl_diff s join %2$s t on %3$s
                          where s._sl_action = 'delete' and array[%4$s]::text[] = h.key)$q$,
      v_ent.name, v_t, sync._join_tk(v_ent.key_columns),
      (select string_agg(format('s._sl_tk%s::text', i), ', ') from generate_series(1, cardinality(v_ent.key_columns)) i));
  end if;
  execute case when v_empty then 'drop view pg_temp._sl_diff' else 'drop table pg_temp._sl_diff' end;

  if v_ent.cursor_column is not null then
    select format_type(a.atttypid, a.atttypmod) into v_cursor_type
      from pg_attribute a where a.attrelid = v_s::regclass and a.attname = v_ent.cursor_column;
    execute format('select greatest(max(s.%I), %L::%s)::text from %s s where not s._sl_quarantined',
                   v_ent.cursor_column, v_run.cursor_before, v_cursor_type, v_s)
      into v_cursor;
    if v_tomb <> 'false' and v_missing > v_del and not v_snapshot then
      -- A deletion the source sent had to wait (its row is still referenced):
      -- the cursor stays, so the next run fetches the record again and applies it.
      v_cursor := v_run.cursor_before;
    end if;
    if v_run.detail ? 'keys' then
      -- A run of chosen keys saw only them: the cursor stays where the full stream left it.
      v_cursor := v_run.cursor_before;
    end if;
  end if;

  update sync.run
     set status = case when v_quarantined > 0 or v_doubtful or v_held > 0 then 'partial' else 'succeeded' end,
         finished_at = clock_timestamp(), doubts = v_doubts, held = nullif(v_held, 0),
         error = nullif(array_to_string(v_notes, '. '), ''),
         fetched = v_fetched, inserted = v_ins, updated = v_upd, deleted = v_del,
         unchanged = v_fetched - v_quarantined - v_ins - v_upd,
         quarantined = v_quarantined, deferred = greatest(v_missing - v_del, 0),
         cursor_after = v_cursor,
         phases = phases || jsonb_build_object('validate', round(extract(epoch from v_validated - v_started) * 1000),
                                                'merge', round(extract(epoch from clock_timestamp() - v_validated) * 1000)),
         detail = detail || case when v_run.dry_run then jsonb_build_object('sample', v_sample) else '{}' end
                         || case when v_kept > 0 then jsonb_build_object('kept', v_kept) else '{}' end
                         || case when v_held > 0 then jsonb_build_object('held_reason', v_judged ->> 'reason') else '{}' end
   where id = p_run_id
  returning jsonb_build_object('run_id', id, 'status', status, 'fetched', fetched, 'inserted', inserted,
                               'updated', updated, 'deleted', deleted, 'unchanged', unchanged,
                               'quarantined', quarantined, 'deferred', deferred, 'cursor', cursor_after,
                               'dry_run', dry_run, 'sample', detail -> 'sample', 'held', coalesce(held, 0),
                               'kept', v_kept, 'doubts', to_jsonb(doubts), 'note', error)
    into v_result;
  if not v_run.dry_run and v_ent.cursor_column is not null then
    update sync.entity set cursor_value = v_cursor where name = v_ent.name and cursor_value is distinct from v_cursor;
  end if;
  if not v_run.dry_run then
    perform sync._snapshot_alerts(p_run_id, v_ent.name, v_deletes, v_full_snapshot, v_doubtful, v_held, v_doubts,
                                  v_judged ->> 'reason');
    -- Records quarantined before and merged now are resolved.
    execute format('update sync.run_error e set resolved_at = now(), next_retry_at = null from %s s
                     where e.entity = %L and e.resolved_at is null and e.run_id <> %s and e.key = %s and not s._sl_quarantined',
                   v_s, v_ent.name, p_run_id, v_key);
    -- A record quarantined again carries on its predecessor's retry count; past
    -- the entity's retry_limit it is not offered again. Conflicts never retry.
    with prev as (
      update sync.run_error o set resolved_at = now(), next_retry_at = null
        from sync.run_error n
       where n.run_id = p_run_id and n.key is not null and o.entity = v_ent.name and o.key = n.key
         and o.run_id <> p_run_id and o.resolved_at is null
      returning o.key, o.retry_count)
    update sync.run_error n
       set retry_count = x.rc,
           next_retry_at = case when x.rc < v_ent.retry_limit and n.category in ('validation', 'integrity')
                                 and n.message not like 'conflict:%' and n.message not like 'the record belongs to tenant%'
                            then now() + v_ent.retry_delay end
      from (select n2.id, coalesce(max(p.retry_count) + 1, 0) as rc
              from sync.run_error n2 left join prev p on p.key = n2.key
             where n2.run_id = p_run_id and n2.key is not null group by n2.id) x
     where n.id = x.id;
  end if;
  execute format('drop table %s', v_s);
  execute format('drop table if exists sync_staging.%I', 'run_' || p_run_id || '_parents');
  return v_result;
end
$$;

comment on function sync.merge(bigint) is 'Merges a run''s staged rows into the target in the caller''s transaction: quarantines records that cannot be merged (null or repeated key, another tenant, missing parent, a broken validate rule, an older version), computes the diff in one pass, then inserts, updates only rows that differ, deletes (mirror) or stamps (soft-delete) rows missing from a full snapshot within the tenant, logs every change, advances the cursor. A dry run computes the same counts and a sample and writes nothing to the target.';

/*
 * Health for psql: every question a DBA asks about sync has a view.
 */
create or replace view sync.status as
select e.name as entity,
       e.enabled,
       e.mode,
       e.schedule,
       case when not e.enabled then 'disabled'
            when r.status = 'running' then 'running'
            when r.id is null then 'never run'
            when r.status in ('succeeded', 'partial') then 'ok'
            when r.status = 'skipped' then 'skipped'
            when r.status = 'cancelled' then 'cancelled'
            else 'failing' end as state,
       r.id as last_run_id,
       r.status as last_status,
       r.started_at as last_started_at,
       r.finished_at as last_finished_at,
       ok.finished_at as last_success_at,
       now() - ok.finished_at as lag,
       r.inserted as last_inserted,
       r.updated as last_updated,
       r.deleted as last_deleted,
       r.quarantined as last_quarantined,
       r.error as last_error,
       e.cursor_value as cursor,
       (select count(*) from sync.alert a where a.entity = e.name and a.acknowledged_at is null and a.resolved_at is null) as open_alerts,
       e.sync_interval,
       case when e.enabled then sync.cron_next(coalesce(e.schedule, sync.interval_cron(e.sync_interval))) end as next_run_at,
       e.freshness,
       e.enabled and e.freshness is not null and coalesce(ok.finished_at, e.created_at) < now() - e.freshness as stale,
       (select count(*) from sync.gap g where g.entity = e.name and g.resolved_at is null) as open_gaps
  from sync.entity e
  left join lateral (select * from sync.run r where r.entity = e.name and not r.dry_run
                      order by r.started_at desc, r.id desc limit 1) r on true
  left join lateral (select r2.finished_at from sync.run r2
                      where r2.entity = e.name and not r2.dry_run and r2.status in ('succeeded', 'partial')
                      order by r2.started_at desc, r2.id desc limit 1) ok on true;
comment on view sync.status is 'One row an entity: state (ok, failing, cancelled, skipped, running, never run, disabled), the last run and its counts, the last success and the lag since it, open alerts and gaps, the next scheduled run, staleness.';

create or replace view sync.health as
select e.name as entity,
       count(r.id) filter (where r.started_at > now() - interval '24 hours') as runs_24h,
       round(100.0 * count(r.id) filter (where r.started_at > now() - interval '24 hours' and r.status in ('succeeded', 'partial'))
             / nullif(count(r.id) filter (where r.started_at > now() - interval '24 hours' and r.status in ('succeeded', 'partial', 'failed')), 0), 1)
         as success_rate_24h,
       count(r.id) as runs_7d,
       round(100.0 * count(r.id) filter (where r.status in ('succeeded', 'partial'))
             / nullif(count(r.id) filter (where r.status in ('succeeded', 'partial', 'failed')), 0), 1) as success_rate_7d,
       (select count(*) from sync.gap g where g.entity = e.name and g.resolved_at is null) as open_gaps,
       (select count(*) from sync.alert a where a.entity = e.name and a.acknowledged_at is null and a.resolved_at is null) as open_alerts,
       (select count(*) from sync.run_error x where x.entity = e.name and x.resolved_at is null and x.key is not null) as quarantined_records
  from sync.entity e
  left join sync.run r on r.entity = e.name and not r.dry_run and r.status <> 'running' and r.started_at > now() - interval '7 days'
 group by e.name;
comment on view sync.health is 'One row an entity: runs and success rate (succeeded or partial among finished, skipped and cancelled aside) over 24 hours and 7 days, open gaps, open alerts, records in quarantine.';

create or replace view sync.trend as
select 'hour' as granularity, r.entity, date_trunc('hour', r.started_at) as bucket,
       count(*) as runs, count(*) filter (where r.status = 'failed') as failed,
       coalesce(sum(r.fetched), 0) as rows_fetched,
       coalesce(sum(r.inserted + r.updated + r.deleted), 0) as rows_changed,
       round(avg(extract(epoch from r.finished_at - r.started_at))::numeric, 3) as avg_seconds,
       round(max(extract(epoch from r.finished_at - r.started_at))::numeric, 3) as max_seconds
  from sync.run r
 where not r.dry_run and r.finished_at is not null and r.started_at > now() - interval '48 hours'
 group by r.entity, date_trunc('hour', r.started_at)
union all
select 'day', r.entity, date_trunc('day', r.started_at),
       count(*), count(*) filter (where r.status = 'failed'),
       coalesce(sum(r.fetched), 0), coalesce(sum(r.inserted + r.updated + r.deleted), 0),
       round(avg(extract(epoch from r.finished_at - r.started_at))::numeric, 3),
       round(max(extract(epoch from r.finished_at - r.started_at))::numeric, 3)
  from sync.run r
 where not r.dry_run and r.finished_at is not null and r.started_at > now() - interval '90 days'
 group by r.entity, date_trunc('day', r.started_at);
comment on view sync.trend is 'Runs, failures, rows fetched and changed, and durations per entity per hour (last 48 hours) and per day (last 90 days): where r.granularity = ''day''.';

create or replace view sync.phase_stats as
select r.entity, p.key as phase, count(*) as runs,
       percentile_cont(0.5) within group (order by p.value::numeric) as p50_ms,
       percentile_cont(0.95) within group (order by p.value::numeric) as p95_ms,
       max(p.value::numeric) as max_ms,
       round(percentile_cont(0.5) within group (order by r.fetched / greatest(p.value::numeric / 1000, 0.001))) as p50_rows_per_s
  from sync.run r, jsonb_each_text(r.phases) p
 where not r.dry_run and r.status in ('succeeded', 'partial') and r.started_at > now() - interval '7 days'
   and p.value ~ '^[0-9.]+$'
 group by r.entity, p.key;
comment on view sync.phase_stats is 'p50 and p95 milliseconds of each phase (fetch, stage, validate, merge, verify) per entity over the last 7 days of successful runs, with the median rows per second.';

create or replace view sync.error_counts as
select e.entity, e.category,
       count(*) filter (where e.created_at > now() - interval '24 hours') as last_24h,
       count(*) filter (where e.created_at > now() - interval '7 days') as last_7d,
       count(*) filter (where e.resolved_at is null) as unresolved,
       max(e.created_at) as latest
  from sync.run_error e
 group by e.entity, e.category;
comment on view sync.error_counts is 'Errors and quarantined records per entity and category (network, rate_limit, auth, validation, integrity, database, internal): last 24 hours, last 7 days, unresolved.';

create or replace function sync.runs(p_entity text default null, p_since timestamptz default null, p_until timestamptz default null,
  p_status text default null, p_limit integer default 100)
  returns setof sync.run
  language sql stable
  set search_path to pg_catalog, public, pg_temp
as $$
  select * from sync.run r
   where (p_entity is null or r.entity = p_entity)
     and (p_since is null or r.started_at >= p_since)
     and (p_until is null or r.started_at < p_until)
     and (p_status is null or r.status = p_status)
   order by r.started_at desc, r.id desc
   limit p_limit
$$;
comment on function sync.runs(text, timestamptz, timestamptz, text, integer) is 'The audit log of runs, newest first, by entity, date range [since, until) and status: select * from sync.runs(''orders'', now() - interval ''1 day'').';

create or replace function sync.record_history(p_entity text, variadic p_key text[])
  returns table (at timestamptz, run_id bigint, what text, detail text, changed text[], payload jsonb)
  language sql stable
  set search_path to pg_catalog, public, pg_temp
as $$
  select r.started_at, c.run_id, c.action, r.trigger, c.changed, null::jsonb
    from sync.run_change c join sync.run r on r.id = c.run_id
   -- One scan over the entity's runs (BRIN by run), not one a run: a big
   -- run's block range would be read again for every small run after it.
   -- Closed months also have a key index (sync.maintain builds it).
   where c.run_id = any (array(select x.id from sync.run x where x.entity = p_entity)) and c.key = p_key
  union all
  select e.created_at, e.run_id, 'quarantined: ' || e.category, e.message, null, e.payload
    from sync.run_error e
   where e.entity = p_entity and e.key = p_key
  order by 1, 2
$$;
comment on function sync.record_history(text, text[]) is 'Everything that happened to one record: each change a run made and each time it was quarantined, oldest first: select * from sync.record_history(''sellers'', ''S000123'').';
create index if not exists run_error_key_idx on sync.run_error (entity, key);

/*
 * Live progress of running runs, for the operator API and dashboard: the
 * engine reports about once a second; NOTIFY sync_progress tells listeners
 * (server-sent events) without polling.
 */
comment on column sync.run.progress is 'Live progress while running: {"phase", "rows", "pages", "total", "rate", "eta_seconds", "at"}; the last report stays after the run ends.';

create or replace function sync.report_progress(p_run_id bigint, p_progress jsonb) returns void
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_entity text;
begin
  update sync.run set progress = p_progress || jsonb_build_object('at', now())
   where id = p_run_id
  returning entity into v_entity;
  if v_entity is not null then
    perform pg_notify('sync_progress', json_build_object('run_id', p_run_id, 'entity', v_entity, 'progress', p_progress)::text);
  end if;
end
$$;
comment on function sync.report_progress(bigint, jsonb) is 'Records a running run''s progress and announces it on channel sync_progress (the engine calls it about once a second).';

/*
 * Never delete on a doubtful snapshot; one bad value never fails a run
 * (issue 10).
 *
 * - A run's snapshot can be doubtful (sync.run.doubts: a record whose key
 *   could not be read, a CSV whose line endings change, an API crawl that
 *   ended early or was redirected): such a run inserts and updates, deletes
 *   nothing, ends partial and raises a doubtful_snapshot alert.
 * - The delete guard (sync.entity.delete_guard*): a run that would delete
 *   more than a share of the entity's rows (or every row) holds those deletes
 *   in sync.held_delete, merges the rest, ends partial and raises a
 *   deletes_held alert; sync.confirm_deletes(run_id) lets the next run apply
 *   them.
 * - Raw staging carries a per-record error (a value the database cannot
 *   store, an unreadable line) and the fields a record lacked (an absent
 *   field leaves the row's value alone instead of writing NULL).
 * - Rule text (formats, allowed values, column names) reaches the quarantine
 *   messages as data, never as a format() template.
 */

alter table sync.run
  add column if not exists doubts text[] not null default '{}',
  add column if not exists held bigint,
  add column if not exists deletes_confirmed_at timestamptz,
  add column if not exists deletes_confirmed_by text;
comment on column sync.run.doubts is 'Why this run''s snapshot may be incomplete (an unreadable record, a crawl that ended early, line endings that change midway). A mirror run with doubts deletes nothing.';
comment on column sync.run.held is 'Deletes the delete guard held back (too large a share of the entity''s rows, or every row): their keys are in sync.held_delete until confirmed with sync.confirm_deletes(run_id).';
comment on column sync.run.deletes_confirmed_at is 'When the deletes this run held were confirmed (sync.confirm_deletes); the next complete snapshot applies them.';
comment on column sync.run.deletes_confirmed_by is 'Who confirmed the deletes this run held.';

alter table sync.entity
  add column if not exists delete_guard boolean not null default true,
  add column if not exists delete_guard_percent numeric not null default 50,
  add column if not exists delete_guard_rows bigint;
comment on column sync.entity.delete_guard is 'Whether a run that would delete many rows holds those deletes for confirmation (default true). False also lets an empty snapshot empty the target.';
comment on column sync.entity.delete_guard_percent is 'A run that would delete more than this percentage of the entity''s rows (in its tenant) holds its deletes (default 50). Deleting every row is always held while delete_guard is on.';
comment on column sync.entity.delete_guard_rows is 'A run that would delete more than this many rows holds its deletes (default: no limit by count).';

create table if not exists sync.held_delete (
  run_id bigint not null references sync.run (id) on delete cascade,
  key text[] not null,
  primary key (run_id, key)
);
comment on table sync.held_delete is 'The keys whose delete the delete guard held, by the run that held them. Only the latest holding run of an entity keeps its keys (until confirmed and applied).';

create or replace function sync.doubt_snapshot(p_run_id bigint, p_reason text) returns void
  language sql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
  update sync.run set doubts = doubts || p_reason where id = p_run_id and p_reason <> all (doubts)
$$;
comment on function sync.doubt_snapshot(bigint, text) is 'Records why a run''s snapshot may be incomplete; sync.merge then deletes nothing for that run. Called by the sources (an unreadable CSV line, a crawl that ended early).';

create or replace function sync.require_confirmation(p_run_id bigint, p_reason text) returns void
  language sql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
  update sync.run set detail = detail || jsonb_build_object('unverified_deletes', p_reason) where id = p_run_id
$$;
comment on function sync.require_confirmation(bigint, text) is 'Marks a run whose snapshot cannot prove its deletes (an API paged by offset with no way to check): every delete it would make is held for confirmation, whatever the delete guard''s thresholds.';

create or replace function sync.confirm_deletes(p_run_id bigint, p_by text default current_user, p_enqueue boolean default true)
  returns bigint
  language plpgsql volatile security definer
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_run sync.run;
  v_keys bigint;
begin
  select * into v_run from sync.run where id = p_run_id;
  if not found then
    raise exception 'no run %', p_run_id using hint = 'select id, entity, held from sync.run where held > 0 order by id desc';
  end if;
  select count(*) into v_keys from sync.held_delete where run_id = p_run_id;
  if v_keys = 0 then
    raise exception 'run % of % holds no deletes awaiting confirmation', p_run_id, v_run.entity
      using hint = 'only the latest run that held deletes keeps them: select id, held, deletes_confirmed_at from sync.run where entity = '
                   || quote_literal(v_run.entity) || ' and held > 0 order by id desc';
  end if;
  update sync.run set deletes_confirmed_at = now(), deletes_confirmed_by = coalesce(p_by, current_user) where id = p_run_id;
  update sync.alert set acknowledged_at = now(), acknowledged_by = coalesce(p_by, current_user)
   where entity = v_run.entity and kind = 'deletes_held' and resolved_at is null and acknowledged_at is null;
  if p_enqueue then
    perform sync.request(v_run.entity, v_run.full_refresh);
  end if;
  return v_keys;
end
$$;
comment on function sync.confirm_deletes(bigint, text, boolean) is 'Confirms the deletes a run held (the source really lost those rows): the next complete snapshot of the entity deletes them, whatever the delete guard says. Queues that run for the worker unless p_enqueue is false. Returns the number of keys confirmed.';

create or replace function sync.json_has(p_value jsonb, p_path text) returns boolean
  language sql immutable parallel safe
  set search_path to pg_catalog, public, pg_temp
as $$
  select case
    when p_path is null or p_path = '' then true
    when jsonb_typeof(p_value) = 'object' and p_value ? p_path then true
    else (p_value #> string_to_array(p_path, '.')) is not null
  end
$$;
comment on function sync.json_has(jsonb, text) is 'Whether a JSON record has a value (JSON null included) at a dotted path: a field absent from a record is not a null.';

create or replace function sync.absent_everywhere(p_run_id bigint, p_optional text[] default '{}') returns text[]
  language plpgsql stable
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_raw text := format('sync_staging.%I', 'run_' || p_run_id || '_raw');
  v_out text[];
begin
  execute format($q$
    select array_agg(c order by c) from (
      select c from %1$s r cross join unnest(r._sl_absent) c
       where c <> all ($1) group by c having count(*) = (select count(*) from %1$s)) x$q$, v_raw)
    into v_out using coalesce(p_optional, '{}');
  return coalesce(v_out, '{}');
end
$$;
comment on function sync.absent_everywhere(bigint, text[]) is 'The columns whose field is missing from every record a run staged (schema drift: the API stopped sending it), less the optional ones.';

create or replace function sync._is_valid(p_value text, p_type text) returns boolean
  language plpgsql stable
  set search_path to pg_catalog, public, pg_temp
as $$
begin
  if current_setting('server_version_num')::int >= 160000 then
    return pg_input_is_valid(p_value, p_type);
  end if;
  begin
    execute format('select %L::%s', p_value, p_type);
    return true;
  exception when data_exception then
    return false;
  end;
end
$$;
comment on function sync._is_valid(text, text) is 'Whether a text is a valid value of a type (pg_input_is_valid on PostgreSQL 16+, a guarded cast before).';

create or replace function sync._keep_absent(p_ent sync.entity, p_s regclass) returns void
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_c text;
  v_t regclass := format('%I.%I', p_ent.target_schema, p_ent.target_table)::regclass;
  v_scope text := 'true';
begin
  if p_ent.tenant_column is not null then
    v_scope := format('t.%I = %L', p_ent.tenant_column, p_ent.tenant_value);
  end if;
  for v_c in execute format('select distinct c from %s s cross join unnest(s._sl_absent) c', p_s) loop
    continue when v_c = any (p_ent.key_columns)
               or not exists (select 1 from pg_attribute a where a.attrelid = p_s and a.attname = v_c and not a.attisdropped);
    execute format('update %1$s s set %2$I = t.%2$I from %3$s t where %4$s and %5$s and s._sl_absent @> array[%6$L]',
                   p_s, v_c, v_t, sync._join(p_ent.key_columns, 't', 's'), v_scope, v_c);
  end loop;
end
$$;
comment on function sync._keep_absent(sync.entity, regclass) is 'A field a record lacked is not a null: its staged value becomes the target row''s current one, so the merge leaves it alone.';

-- The deletes of a snapshot run, judged before any is made: none on a
-- doubtful snapshot; held for confirmation past the delete guard.
create or replace function sync._judge_deletes(p_run sync.run, p_ent sync.entity, p_t text, p_scope text, p_doubtful boolean)
  returns jsonb
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_tk text := format('array[%s]', (select string_agg(format('_sl_tk%s::text', i), ', ')
                                      from generate_series(1, cardinality(p_ent.key_columns)) i));
  v_missing bigint;
  v_confirmed bigint := 0;
  v_unconfirmed bigint;
  v_total bigint;
  v_reason text := p_run.detail ->> 'unverified_deletes';
  v_held bigint := 0;
  v_kept bigint := 0;
begin
  if p_doubtful then
    update _sl_diff set _sl_action = 'kept' where _sl_action = 'delete' and _sl_quarantined is null;
    get diagnostics v_kept = row_count;
    return jsonb_build_object('kept', v_kept);
  end if;
  select count(*) into v_missing from _sl_diff where _sl_action = 'delete' and _sl_quarantined is null;
  if v_missing = 0 or not (p_ent.delete_guard or v_reason is not null) then
    return jsonb_build_object('held', 0);
  end if;
  -- Keys an operator confirmed (sync.confirm_deletes) go whatever the guard says.
  create temp table _sl_confirmed on commit drop as
    select distinct h.key from sync.held_delete h join sync.run r on r.id = h.run_id
     where r.entity = p_ent.name and r.deletes_confirmed_at is not null;
  execute format('select count(*) from _sl_diff d where d._sl_action = %L and d._sl_quarantined is null and %s in (select key from _sl_confirmed)',
                 'delete', v_tk) into v_confirmed;
  v_unconfirmed := v_missing - v_confirmed;
  if v_unconfirmed > 0 and v_reason is null then
    execute format('select count(*) from %s t where %s', p_t,
                   p_scope || case when p_ent.mode = 'soft-delete' then format(' and t.%I is null', p_ent.soft_delete_column) else '' end)
      into v_total;
    v_reason := case
      when v_unconfirmed >= v_total then
        format('the snapshot holds none of the %s rows of %s it would delete: an empty or unrelated snapshot deletes nothing unconfirmed',
               v_total, p_ent.name)
      when v_unconfirmed * 100.0 > p_ent.delete_guard_percent * v_total then
        format('it would delete %s of %s rows (%s%%), above the delete guard of %s%%', v_unconfirmed, v_total,
               round(v_unconfirmed * 100.0 / v_total, 1), p_ent.delete_guard_percent)
      when v_unconfirmed > p_ent.delete_guard_rows then
        format('it would delete %s rows, above the delete guard of %s rows', v_unconfirmed, p_ent.delete_guard_rows)
    end;
  end if;
  if v_unconfirmed > 0 and v_reason is not null then
    execute format('update _sl_diff d set _sl_action = %L where d._sl_action = %L and d._sl_quarantined is null and %s not in (select key from _sl_confirmed)',
                   'held', 'delete', v_tk);
    get diagnostics v_held = row_count;
    if not p_run.dry_run then
      -- Only the latest holding run keeps its keys (and confirmed ones wait to be applied).
      delete from sync.held_delete h using sync.run r
       where r.id = h.run_id and r.entity = p_ent.name and r.deletes_confirmed_at is null;
      execute format('insert into sync.held_delete (run_id, key) select %s, %s from _sl_diff where _sl_action = %L on conflict do nothing',
                     p_run.id, v_tk, 'held');
    end if;
  end if;
  drop table _sl_confirmed;
  return jsonb_build_object('held', v_held, 'confirmed', v_confirmed, 'reason', case when v_held > 0 then v_reason end);
end
$$;
comment on function sync._judge_deletes(sync.run, sync.entity, text, text, boolean) is 'Step of sync.merge before any write: on a doubtful snapshot keeps every row the snapshot lacks (no deletes); otherwise holds the deletes past the entity''s delete guard (or all of them when the source cannot prove them), keeping their keys in sync.held_delete, and lets confirmed keys go.';


create or replace function sync._snapshot_alerts(p_run_id bigint, p_entity text, p_deletes boolean, p_full boolean,
  p_doubtful boolean, p_held bigint, p_doubts text[], p_reason text) returns void
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
begin
  if p_doubtful then
    perform sync.raise_alert('doubtful_snapshot', 'warning', p_entity,
      format('run %s of %s deleted nothing: its snapshot may be incomplete (%s). Fix what the reasons name (see select * from sync.run_error where run_id = %s); the next complete snapshot deletes what is really gone',
             p_run_id, p_entity, array_to_string(p_doubts, '; '), p_run_id),
      jsonb_build_object('run_id', p_run_id, 'doubts', to_jsonb(p_doubts)));
  elsif p_full then
    perform sync.resolve_alerts(p_entity, array['doubtful_snapshot']);
  end if;
  if p_held > 0 then
    perform sync.raise_alert('deletes_held', 'warning', p_entity,
      format('run %s of %s held %s deletes: %s. Everything else merged. If the source really lost those rows, confirm with select sync.confirm_deletes(%s) in psql or syncline sync %s --confirm-deletes; to change the guard, set deleteGuard in the config (or update sync.entity set delete_guard_percent = … where name = %L)',
             p_run_id, p_entity, p_held, p_reason, p_run_id, p_entity, p_entity),
      jsonb_build_object('run_id', p_run_id, 'held', p_held, 'reason', p_reason));
  elsif p_full and not p_doubtful then
    perform sync.resolve_alerts(p_entity, array['deletes_held']);
  end if;
end
$$;
comment on function sync._snapshot_alerts(bigint, text, boolean, boolean, boolean, bigint, text[], text) is 'Raises or resolves the doubtful_snapshot and deletes_held alerts after a merge: a complete snapshot with nothing held resolves them.';

comment on column sync.alert.kind is 'consecutive_failures, gap, stale, integrity, throughput, resync_failed, doubtful_snapshot (a mirror run deleted nothing because its snapshot may be incomplete) or deletes_held (the delete guard held deletes awaiting sync.confirm_deletes).';

/*
 * Operations a DBA can trust (issue 11).
 *
 * - Workers announce themselves and heartbeat in sync.worker; any live worker
 *   (and sync.tick) declares a worker whose beat is stale dead, releases its
 *   graphile-worker jobs and queues, closes its runs as abandoned and drops
 *   their staging: a dead worker costs seconds, not graphile-worker's 4 hours.
 *   sync.status shows the entity stalled meanwhile, with an alert.
 * - A run's start drops its entity's leftovers (staging of killed runs).
 * - Waves: a schedule tick, a sync of several entities, an API "sync all" and
 *   sync.request run each entity once, after its dependencies in the wave,
 *   and finish deferred deletes with one more pass of the parents that
 *   deferred (sync.wave, sync.wave_entity).
 * - Timings are the real ends of runs (clock_timestamp()).
 */

alter table sync.run
  add column if not exists worker_id text,
  add column if not exists wave_id bigint;
alter table sync.run drop constraint if exists run_status_check;
alter table sync.run add constraint run_status_check
  check (status in ('running', 'succeeded', 'partial', 'failed', 'cancelled', 'skipped', 'abandoned'));
comment on column sync.run.worker_id is 'The worker (sync.worker.id, graphile-worker''s pool id) that ran it; null for the CLI and the API.';
comment on column sync.run.wave_id is 'The wave (sync.wave) the run belongs to, if any.';
comment on column sync.run.backend_pid is 'The database session that holds the run''s entity lock: a running run whose session is gone was abandoned.';

-- Runs closed before this migration as failed 'abandoned: …' are abandoned.
update sync.run set status = 'abandoned' where status = 'failed' and error like 'abandoned:%';

create table if not exists sync.worker (
  id text primary key,
  host text not null,
  pid integer not null,
  started_at timestamptz not null default now(),
  beat_at timestamptz not null default now(),
  stopped_at timestamptz,
  dead_at timestamptz
);
comment on table sync.worker is 'Worker processes, one row each graphile-worker pool: they stamp beat_at every worker_heartbeat; one silent for longer than worker_timeout is declared dead (dead_at) by any live worker or sync.tick, and its jobs run again elsewhere.';
comment on column sync.worker.id is 'graphile-worker''s pool id: the locked_by of the jobs it holds.';
comment on column sync.worker.stopped_at is 'Set by a graceful stop.';
comment on column sync.worker.dead_at is 'When its silence got it declared dead (its jobs were released, its runs closed as abandoned).';

insert into sync.setting (name, value, description) values
  ('worker_heartbeat', '5 seconds', 'How often a worker stamps sync.worker.beat_at (and looks for dead workers).'),
  ('worker_timeout', '30 seconds', 'A worker silent for longer is declared dead: its jobs are released and run again elsewhere. Too short, and a worker stalled by a loaded machine loses its jobs (its runs keep their entity locks, so nothing runs twice); too long, and a dead worker''s entities wait that long.')
on conflict (name) do nothing;

create or replace function sync.setting_interval(p_name text) returns interval
  language sql stable
  set search_path to pg_catalog, public, pg_temp
as $$
  select value::interval from sync.setting where name = p_name
$$;
comment on function sync.setting_interval(text) is 'A setting of sync.setting read as an interval.';

create or replace function sync.worker_beat(p_ids text[], p_host text default null, p_pid integer default null) returns void
  language sql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
  insert into sync.worker as w (id, host, pid)
  select id, coalesce(p_host, 'unknown'), coalesce(p_pid, 0) from unnest(p_ids) id
  on conflict (id) do update set beat_at = now(), dead_at = null, stopped_at = null
$$;
comment on function sync.worker_beat(text[], text, integer) is 'A worker announcing itself or beating: stamps its pools'' rows (a worker wrongly declared dead comes back to life).';

create or replace function sync.worker_stopped(p_ids text[]) returns void
  language sql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
  update sync.worker set stopped_at = now() where id = any (p_ids)
$$;
comment on function sync.worker_stopped(text[]) is 'A worker''s graceful stop: it is not waited for, nor declared dead.';

create or replace function sync.dead_workers() returns setof text
  language sql stable
  set search_path to pg_catalog, public, pg_temp
as $$
  select id from sync.worker
   where stopped_at is null and (dead_at is not null or beat_at < now() - sync.setting_interval('worker_timeout'))
$$;
comment on function sync.dead_workers() is 'Ids of workers declared dead or silent for longer than the worker_timeout setting.';

-- graphile-worker's job table is read late-bound (plpgsql), so its migrations
-- never meet a view of ours that depends on it.
create or replace function sync.locked_queues() returns table (entity text, locked_by text)
  language plpgsql stable
  set search_path to pg_catalog, public, pg_temp
as $$
begin
  return query select distinct substr(j.queue_name, 6), j.locked_by::text
                 from graphile_worker.jobs j
                where j.queue_name like 'sync:%' and j.locked_by is not null;
end
$$;
comment on function sync.locked_queues() is 'Entity queues (sync:<entity>) whose job a worker holds, and which worker.';

create or replace function sync.run_is_dead(p_run sync.run) returns boolean
  language sql stable
  set search_path to pg_catalog, public, pg_temp
as $$
  select p_run.status = 'running'
     and (not exists (select 1 from pg_stat_activity a where a.pid = p_run.backend_pid)
          or p_run.worker_id in (select sync.dead_workers()))
$$;
comment on function sync.run_is_dead(sync.run) is 'A running run whose database session is gone, or whose worker is dead: nobody will finish it.';

create or replace function sync.close_abandoned(p_run_id bigint, p_reason text) returns void
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_rel text;
begin
  update sync.run set status = 'abandoned', finished_at = clock_timestamp(), error = 'abandoned: ' || p_reason
   where id = p_run_id and status = 'running';
  -- The pages an http crawl fetched stay a day for the next run to resume from.
  for v_rel in select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace
                where n.nspname = 'sync_staging' and c.relkind = 'r' and c.relname in ('run_' || p_run_id, 'run_' || p_run_id || '_keys')
  loop
    execute format('drop table if exists sync_staging.%I', v_rel);
  end loop;
end
$$;
comment on function sync.close_abandoned(bigint, text) is 'Closes a run nobody will finish as abandoned, with the reason, and drops its staging (an http crawl''s fetched pages stay for the next run to resume from).';

create or replace function sync.reap_workers() returns jsonb
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_dead text[];
  v_run record;
  v_closed integer := 0;
  v_entities text[];
begin
  select array_agg(id) into v_dead from sync.dead_workers() id;
  if v_dead is not null then
    -- Entities whose queue a dead worker holds: stalled until they run again.
    select array_agg(distinct entity) into v_entities from sync.locked_queues() where locked_by = any (v_dead);
    perform graphile_worker.force_unlock_workers(v_dead);
    update sync.worker set dead_at = coalesce(dead_at, now()) where id = any (v_dead);
  end if;
  for v_run in select r.* from sync.run r where r.status = 'running' and sync.run_is_dead(r) for update skip locked loop
    -- A statement the dead process left running (a merge) still holds the
    -- entity lock and finishes or rolls back on its own: wait for it.
    continue when not pg_try_advisory_lock(sync.entity_lock_key(v_run.entity));
    perform sync.close_abandoned(v_run.id, case when v_run.worker_id = any (coalesce(v_dead, '{}'))
      then format('worker %s stopped heartbeating', v_run.worker_id)
      else 'the process running it stopped before it finished' end);
    perform pg_advisory_unlock(sync.entity_lock_key(v_run.entity));
    v_entities := array_append(v_entities, v_run.entity);
    v_closed := v_closed + 1;
  end loop;
  for v_run in select distinct e from unnest(v_entities) e where e is not null loop
    perform sync.raise_alert('stalled', 'warning', v_run.e,
      format('%s stalled: the process running it died; its run was closed as abandoned and it runs again on a live worker (sync.worker has the workers and their last beats)', v_run.e),
      jsonb_build_object('dead_workers', to_jsonb(coalesce(v_dead, '{}'))));
  end loop;
  -- Workers gone for a day leave no trace but their runs' worker_id.
  delete from sync.worker where coalesce(stopped_at, dead_at) < now() - interval '1 day';
  return jsonb_build_object('dead_workers', coalesce(cardinality(v_dead), 0), 'runs_closed', v_closed);
end
$$;
comment on function sync.reap_workers() is 'Declares workers silent past worker_timeout dead, releases their jobs and queues (graphile_worker.force_unlock_workers) so live workers run them again at once, closes runs nobody will finish as abandoned and drops their staging, and raises a stalled alert for each entity hit. Every live worker calls it at each heartbeat; sync.tick too.';

-- Whoever runs an entity next cleans up after its killed runs.
create or replace function sync.drop_leftovers(p_entity text, p_run_id bigint) returns integer
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_rel record;
  v_resumable bigint;
  v_dropped integer := 0;
begin
  -- The run just before this one may leave its fetched pages to resume from (sync.adopt_raw).
  select r.id into v_resumable from sync.run r
   where r.entity = p_entity and r.id < p_run_id and r.detail ? 'resume' and r.status in ('failed', 'abandoned', 'cancelled')
     and not exists (select 1 from sync.run n where n.entity = p_entity and n.id > r.id and n.id < p_run_id)
   order by r.id desc limit 1;
  for v_rel in
    select c.relname, substring(c.relname from '^run_([0-9]+)')::bigint as run_id
      from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where n.nspname = 'sync_staging' and c.relkind = 'r' and c.relname ~ '^run_[0-9]+(_[a-z]+)?$'
       and c.relname !~ '_feed$'
  loop
    continue when not exists (select 1 from sync.run r where r.id = v_rel.run_id and r.entity = p_entity
                                and r.status <> 'running' and r.id <> p_run_id);
    continue when v_rel.run_id = v_resumable and v_rel.relname ~ '_(raw|parents)$';
    execute format('drop table if exists sync_staging.%I', v_rel.relname);
    v_dropped := v_dropped + 1;
  end loop;
  return v_dropped;
end
$$;
comment on function sync.drop_leftovers(text, bigint) is 'Drops the staging tables of the entity''s ended runs (left by a killed process), but the fetched pages an interrupted crawl just before may resume from and the records kept for nested entities. sync.start_run calls it: the next run of an entity, from any process, cleans up.';

/*
 * Waves. A wave is a set of entities run once each, every one after its
 * dependencies in the wave, then once more for the parents whose deletes
 * waited on a dependent that ran (children first). Its entities are run by
 * the worker (jobs) or by the process that asked for it (the CLI, the API).
 */
create table if not exists sync.wave (
  id bigint generated always as identity primary key,
  trigger text not null check (trigger in ('cron', 'manual', 'api', 'dependency')),
  executor text not null check (executor in ('worker', 'local')),
  options jsonb not null default '{}',
  tick timestamptz unique,
  started_at timestamptz not null default now(),
  finished_at timestamptz,
  deferred_planned boolean not null default false
);
comment on table sync.wave is 'A set of entities run together: a schedule tick (tick), sync.request, a `sync` of several entities, an API "sync all". executor: worker (graphile-worker jobs) or local (the CLI or API process that asked). options: dryRun, full, confirmDeletes.';

create table if not exists sync.wave_entity (
  wave_id bigint not null references sync.wave (id) on delete cascade,
  entity text not null,
  trigger text not null,
  full_refresh boolean not null default false,
  after text[] not null default '{}',
  state text not null default 'waiting' check (state in ('waiting', 'ready', 'running', 'done', 'failed', 'skipped')),
  pass smallint not null default 1,
  run_ids bigint[] not null default '{}',
  note text,
  primary key (wave_id, entity)
);
create index if not exists wave_entity_pending_idx on sync.wave_entity (entity) where state in ('waiting', 'ready', 'running');
comment on table sync.wave_entity is 'An entity of a wave: what it waits for (after: its dependencies in the wave, or in the second pass the deferring entities below it), its state, its pass (2: finishing deferred deletes) and its runs.';

create or replace function sync.cron_matches(p_expr text, p_at timestamptz) returns boolean
  language plpgsql stable
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_f text[] := regexp_split_to_array(btrim(p_expr), '\s+');
  v_t timestamp := date_trunc('minute', p_at at time zone 'UTC');
  v_dom int[];
  v_dow int[];
begin
  if p_expr is null or cardinality(v_f) <> 5 then
    return false;
  end if;
  v_dom := sync._cron_field(v_f[3], 1, 31);
  v_dow := array(select distinct d % 7 from unnest(sync._cron_field(v_f[5], 0, 7)) d);
  return extract(minute from v_t)::int = any (sync._cron_field(v_f[1], 0, 59))
     and extract(hour from v_t)::int = any (sync._cron_field(v_f[2], 0, 23))
     and extract(month from v_t)::int = any (sync._cron_field(v_f[4], 1, 12))
     -- As graphile-worker: with both day fields restricted, either may match.
     and case when cardinality(v_dom) = 31 and cardinality(v_dow) = 7 then true
              when cardinality(v_dom) = 31 then extract(dow from v_t)::int = any (v_dow)
              when cardinality(v_dow) = 7 then extract(day from v_t)::int = any (v_dom)
              else extract(day from v_t)::int = any (v_dom) or extract(dow from v_t)::int = any (v_dow) end;
end
$$;
comment on function sync.cron_matches(text, timestamptz) is 'Whether a five-field cron expression (UTC, graphile-worker''s dialect) fires in the minute of p_at.';

create or replace function sync.start_wave(p_entities text[], p_trigger text, p_executor text, p_options jsonb default '{}',
  p_with_dependents boolean default false, p_full text[] default '{}', p_tick timestamptz default null) returns bigint
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_unknown text[];
  v_members text[];
  v_id bigint;
begin
  select array_agg(x order by x) into v_unknown from unnest(p_entities) x where not exists (select 1 from sync.entity e where e.name = x);
  if v_unknown is not null then
    raise exception 'unknown entit% %', case when cardinality(v_unknown) > 1 then 'ies' else 'y' end, array_to_string(v_unknown, ', ')
      using hint = 'select name from sync.entity lists the entities; a new one needs `syncline config apply`';
  end if;
  -- The selection and, when asked, every enabled entity that depends on it.
  with recursive m(name) as (
    select x from unnest(p_entities) x
    union
    select e.name from sync.entity e join m on m.name = any (e.depends_on)
     where p_with_dependents and e.enabled and e.direction = 'pull')
  select array_agg(name order by name) into v_members from m;
  if p_executor = 'worker' then
    -- Never twice at once: an entity still pending in an unfinished worker wave
    -- runs there. Worker waves are planned one at a time, so two workers
    -- starting together cannot both plan the same entities.
    perform pg_advisory_xact_lock(hashtextextended('syncline:start_wave', 0));
    v_members := array(select x from unnest(v_members) x
                        where not exists (select 1 from sync.wave_entity we join sync.wave w on w.id = we.wave_id
                                           where w.finished_at is null and w.executor = 'worker' and we.entity = x
                                             and we.state in ('waiting', 'ready', 'running')));
  end if;
  if coalesce(cardinality(v_members), 0) = 0 then
    return null;
  end if;
  insert into sync.wave (trigger, executor, options, tick) values (p_trigger, p_executor, coalesce(p_options, '{}'), p_tick)
  returning id into v_id;
  insert into sync.wave_entity (wave_id, entity, trigger, full_refresh, after)
  select v_id, m, case when m = any (p_entities) then p_trigger else 'dependency' end,
         m = any (coalesce(p_full, '{}')) or coalesce((p_options ->> 'full')::boolean, false),
         array(select d from unnest(e.depends_on) d where d = any (v_members) order by d)
    from unnest(v_members) m join sync.entity e on e.name = m;
  perform sync.wave_advance(v_id);
  return v_id;
end
$$;
comment on function sync.start_wave(text[], text, text, jsonb, boolean, text[], timestamptz) is 'Plans a wave of the entities given (and, with p_with_dependents, every enabled entity depending on them) and starts it: the worker''s jobs for executor worker, the caller''s own loop (sync.wave_claim) for local. Returns its id; null when every entity is already pending in a worker wave.';

create or replace function sync.wave_advance(p_wave_id bigint) returns void
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_wave sync.wave;
  v_row record;
  v_changed boolean := true;
  v_run_id bigint;
begin
  select * into v_wave from sync.wave where id = p_wave_id for update;
  if not found or v_wave.finished_at is not null then
    return;
  end if;
  while v_changed loop
    v_changed := false;
    -- A dependency that failed or was skipped in this wave: say so and skip.
    for v_row in
      select w.entity, w.trigger, w.pass, min(d.entity) as dep, min(d.state) as dep_state
        from sync.wave_entity w join sync.wave_entity d on d.wave_id = w.wave_id and d.entity = any (w.after)
       where w.wave_id = p_wave_id and w.state = 'waiting' and d.state in ('failed', 'skipped')
       group by w.entity, w.trigger, w.pass
    loop
      if v_row.pass = 1 and not coalesce((v_wave.options ->> 'dryRun')::boolean, false) then
        v_run_id := sync.record_outcome(v_row.entity, v_row.trigger, 'skipped',
          format('skipped: dependency "%s" %s in this wave (wave %s)', v_row.dep, v_row.dep_state, p_wave_id));
      end if;
      update sync.wave_entity
         set state = case when pass = 1 then 'skipped' else 'done' end,
             run_ids = run_ids || case when v_run_id is null then '{}'::bigint[] else array[v_run_id] end,
             note = format('dependency %s %s', v_row.dep, v_row.dep_state)
       where wave_id = p_wave_id and entity = v_row.entity;
      v_run_id := null;
      v_changed := true;
    end loop;
    -- Ready once everything it waits for is done.
    for v_row in
      update sync.wave_entity w set state = 'ready'
       where w.wave_id = p_wave_id and w.state = 'waiting'
         and not exists (select 1 from sync.wave_entity d where d.wave_id = w.wave_id and d.entity = any (w.after) and d.state <> 'done')
      returning w.*
    loop
      if v_wave.executor = 'worker' then
        perform graphile_worker.add_job('sync_entity',
          json_build_object('entity', v_row.entity, 'trigger', v_row.trigger, 'full', v_row.full_refresh, 'wave', p_wave_id, 'pass', v_row.pass),
          queue_name := 'sync:' || v_row.entity, job_key := format('wave:%s:%s:%s', p_wave_id, v_row.pass, v_row.entity), max_attempts := 5);
      end if;
    end loop;
    if not exists (select 1 from sync.wave_entity where wave_id = p_wave_id and state in ('waiting', 'ready', 'running')) then
      if not v_wave.deferred_planned and not coalesce((v_wave.options ->> 'dryRun')::boolean, false) then
        v_wave.deferred_planned := true;
        update sync.wave set deferred_planned = true where id = p_wave_id;
        v_changed := sync._plan_deferred_pass(p_wave_id) > 0;
      end if;
    end if;
  end loop;
  if not exists (select 1 from sync.wave_entity where wave_id = p_wave_id and state in ('waiting', 'ready', 'running')) then
    update sync.wave set finished_at = clock_timestamp() where id = p_wave_id;
  end if;
end
$$;
comment on function sync.wave_advance(bigint) is 'Moves a wave on: skips the entities whose dependency failed in it (recording why), makes ready those whose dependencies are done (queuing a job for a worker wave), plans the second pass of deferred deletes once the first is over, and closes the wave when nothing is left.';

create or replace function sync._plan_deferred_pass(p_wave_id bigint) returns integer
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_n integer;
begin
  -- Parents whose deletes waited on a dependent that then ran in this wave.
  create temp table _sl_deferred on commit drop as
  select w.entity from sync.wave_entity w
    join sync.run r on r.id = w.run_ids[cardinality(w.run_ids)]
   where w.wave_id = p_wave_id and w.pass = 1 and w.state = 'done' and r.deferred > 0
     and exists (select 1 from sync.wave_entity c join sync.entity ce on ce.name = c.entity
                  where c.wave_id = p_wave_id and c.state = 'done' and w.entity = any (ce.depends_on));
  -- Children first: each waits for the deferring entities below it.
  with recursive below(top, name) as (
    select d.entity, e.name from _sl_deferred d join sync.entity e on d.entity = any (e.depends_on)
    union
    select b.top, e.name from below b join sync.entity e on b.name = any (e.depends_on)
  )
  update sync.wave_entity w
     set pass = 2, state = 'waiting',
         after = array(select distinct b.name from below b join _sl_deferred d on d.entity = b.name where b.top = w.entity order by 1)
   where w.wave_id = p_wave_id and w.entity in (select entity from _sl_deferred);
  get diagnostics v_n = row_count;
  drop table _sl_deferred;
  return v_n;
end
$$;
comment on function sync._plan_deferred_pass(bigint) is 'Plans a wave''s second pass: the entities whose last run deferred deletes (rows still referenced) and had a dependent run in the wave run once more, children before parents.';

create or replace function sync.wave_claim(p_wave_id bigint)
  returns table (entity text, trigger text, full_refresh boolean, pass smallint, after text[])
  language sql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
  update sync.wave_entity w set state = 'running'
   where (w.wave_id, w.entity) = (select x.wave_id, x.entity from sync.wave_entity x
                                   where x.wave_id = p_wave_id and x.state = 'ready' order by x.entity limit 1
                                   for update skip locked)
  returning w.entity, w.trigger, w.full_refresh, w.pass, w.after
$$;
comment on function sync.wave_claim(bigint) is 'Takes the next ready entity of a local wave (the CLI or the API runs it): none when nothing is ready.';

create or replace function sync.wave_take(p_wave_id bigint, p_entity text, p_pass smallint) returns boolean
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_we sync.wave_entity;
  v_run sync.run;
begin
  select * into v_we from sync.wave_entity where wave_id = p_wave_id and entity = p_entity for update;
  if not found or v_we.pass <> p_pass or v_we.state not in ('ready', 'running') then
    return false;
  end if;
  -- Its run ended before the worker that ran it died, unrecorded: record it now.
  select * into v_run from sync.run r
   where r.wave_id = p_wave_id and r.entity = p_entity and r.status in ('succeeded', 'partial')
     and r.id > coalesce((select max(x) from unnest(v_we.run_ids) x), 0)
   order by r.id desc limit 1;
  if found then
    perform sync.wave_done(p_wave_id, p_entity, v_run.id, v_run.status);
    return false;
  end if;
  update sync.wave_entity set state = 'running' where wave_id = p_wave_id and entity = p_entity;
  return true;
end
$$;
comment on function sync.wave_take(bigint, text, smallint) is 'A worker''s job taking its entity of a wave. False, running nothing, when that pass is over already or its run ended before the worker running it died (the outcome is recorded then): a job run again after a crash never runs its entity twice in a wave.';

create or replace function sync.wave_done(p_wave_id bigint, p_entity text, p_run_id bigint, p_status text) returns void
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
begin
  update sync.wave_entity
     set state = case when p_status in ('succeeded', 'partial') then 'done'
                      when p_status = 'skipped' then 'skipped' else 'failed' end,
         run_ids = run_ids || case when p_run_id is null then '{}'::bigint[] else array[p_run_id] end
   where wave_id = p_wave_id and entity = p_entity and state in ('ready', 'running', 'waiting');
  perform sync.wave_advance(p_wave_id);
end
$$;
comment on function sync.wave_done(bigint, text, bigint, text) is 'Records the outcome of an entity''s run in a wave and moves the wave on.';

create or replace function sync.wave_repair() returns integer
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_row record;
  v_n integer := 0;
begin
  -- A worker wave's ready entity whose job is gone (deleted by hand, failed for good) gets it back.
  for v_row in
    select we.* from sync.wave_entity we join sync.wave w on w.id = we.wave_id
     where w.finished_at is null and w.executor = 'worker' and we.state in ('ready', 'running') and w.started_at < now() - interval '1 minute'
       and not exists (select 1 from graphile_worker.jobs j where j.key = format('wave:%s:%s:%s', we.wave_id, we.pass, we.entity))
       and not exists (select 1 from sync.run r where r.entity = we.entity and r.status = 'running')
  loop
    perform graphile_worker.add_job('sync_entity',
      json_build_object('entity', v_row.entity, 'trigger', v_row.trigger, 'full', v_row.full_refresh, 'wave', v_row.wave_id, 'pass', v_row.pass),
      queue_name := 'sync:' || v_row.entity, job_key := format('wave:%s:%s:%s', v_row.wave_id, v_row.pass, v_row.entity), max_attempts := 5);
    v_n := v_n + 1;
  end loop;
  -- A local wave whose process died (the CLI killed) never finishes: close it after a day.
  update sync.wave set finished_at = clock_timestamp() where finished_at is null and started_at < now() - interval '1 day';
  -- Waves are kept as long as the run log.
  delete from sync.wave where finished_at < now() - sync.setting_interval('retention');
  return v_n;
end
$$;
comment on function sync.wave_repair() is 'Queues again the job of a worker wave''s ready entity that lost it, closes waves left unfinished for a day (their process died) and deletes waves older than the retention setting. sync.tick calls it.';

create or replace function sync.schedule_wave(p_tick timestamptz) returns bigint
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_tick timestamptz := date_trunc('minute', p_tick);
  v_due text[];
  v_full text[];
begin
  if exists (select 1 from sync.wave where tick = v_tick) then
    return null;
  end if;
  select array_agg(name order by name) filter (where sync.cron_matches(coalesce(schedule, sync.interval_cron(sync_interval)), v_tick)),
         array_agg(name order by name) filter (where sync.cron_matches(definition ->> 'fullSchedule', v_tick))
    into v_due, v_full
    from sync.entity where enabled and direction = 'pull';
  v_due := array(select distinct x from unnest(coalesce(v_due, '{}') || coalesce(v_full, '{}')) x);
  if cardinality(v_due) = 0 then
    return null;
  end if;
  return sync.start_wave(v_due, 'cron', 'worker', '{}', true, coalesce(v_full, '{}'), v_tick);
end
$$;
comment on function sync.schedule_wave(timestamptz) is 'The wave of a schedule tick (a minute): every enabled entity whose schedule, interval or fullSchedule fires then, and their dependents. The sync_schedule task calls it each minute; schedules are read from sync.entity at every tick, so an UPDATE counts from the next minute.';


-- Stalled: an entity whose run or queue a dead process holds.
create or replace view sync.status as
select e.name as entity,
       e.enabled,
       e.mode,
       e.schedule,
       case when not e.enabled then 'disabled'
            -- Its run or its queue belongs to a process that died: until it runs again.
            when r.status = 'running' and sync.run_is_dead(r) then 'stalled'
            when e.name in (select q.entity from sync.locked_queues() q where q.locked_by in (select sync.dead_workers())) then 'stalled'
            when r.status = 'abandoned' then 'stalled'
            when r.status = 'running' then 'running'
            when r.id is null then 'never run'
            when r.status in ('succeeded', 'partial') then 'ok'
            when r.status = 'skipped' then 'skipped'
            when r.status = 'cancelled' then 'cancelled'
            else 'failing' end as state,
       r.id as last_run_id,
       r.status as last_status,
       r.started_at as last_started_at,
       r.finished_at as last_finished_at,
       ok.finished_at as last_success_at,
       now() - ok.finished_at as lag,
       r.inserted as last_inserted,
       r.updated as last_updated,
       r.deleted as last_deleted,
       r.quarantined as last_quarantined,
       r.error as last_error,
       e.cursor_value as cursor,
       (select count(*) from sync.alert a where a.entity = e.name and a.acknowledged_at is null and a.resolved_at is null) as open_alerts,
       e.sync_interval,
       case when e.enabled then sync.cron_next(coalesce(e.schedule, sync.interval_cron(e.sync_interval))) end as next_run_at,
       e.freshness,
       e.enabled and e.freshness is not null and coalesce(ok.finished_at, e.created_at) < now() - e.freshness as stale,
       (select count(*) from sync.gap g where g.entity = e.name and g.resolved_at is null) as open_gaps
  from sync.entity e
  left join lateral (select * from sync.run r where r.entity = e.name and not r.dry_run
                      order by r.started_at desc, r.id desc limit 1) r on true
  left join lateral (select r2.finished_at from sync.run r2
                      where r2.entity = e.name and not r2.dry_run and r2.status in ('succeeded', 'partial')
                      order by r2.started_at desc, r2.id desc limit 1) ok on true;
comment on view sync.status is 'One row an entity: state (ok, failing, cancelled, skipped, running, stalled: its run or queue belongs to a process that died, never run, disabled), the last run and its counts, the last success and the lag since it, open alerts and gaps, the next scheduled run, staleness.';

/*
 * An entity removed from sync.entity (config apply of a config that no
 * longer has it, or DELETE in psql) leaves nothing running (issue 12): its
 * queued jobs are dropped, its open alerts resolved, its pending wave places
 * closed. Its run history stays.
 */
create or replace function sync.tg_entity__removed() returns trigger
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
begin
  -- Jobs not yet running: a job a worker holds ends on its own (its run finds the entity gone).
  perform graphile_worker.complete_jobs(array(
    select j.id from graphile_worker.jobs j where j.queue_name = 'sync:' || old.name and j.locked_at is null));
  update sync.alert set resolved_at = now()
   where entity = old.name and resolved_at is null;
  update sync.wave_entity set state = 'skipped', note = 'removed from sync.entity'
   where entity = old.name and state in ('waiting', 'ready', 'running');
  perform sync.wave_advance(w.id) from sync.wave w
   where w.finished_at is null and exists (select 1 from sync.wave_entity we where we.wave_id = w.id and we.entity = old.name);
  return old;
end
$$;
comment on function sync.tg_entity__removed() is 'When an entity leaves sync.entity: drops its queued jobs, resolves its open alerts and closes its pending places in waves, so nothing runs or alerts for an entity that is gone.';
drop trigger if exists _800_removed on sync.entity;
create trigger _800_removed
  after delete on sync.entity
  for each row execute function sync.tg_entity__removed();
