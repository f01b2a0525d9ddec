-- The sync schema as the committed migrations define it, in one readable file.
-- Not run by anything: migrations/ is the live definition. When a migration
-- changes the schema, change this file to match; test/schema-copy.test.ts
-- builds a database from it and compares it with a migrated one.

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
  backend_pid integer default pg_backend_pid()
);
create index if not exists run_entity_started_idx on sync.run (entity, started_at desc);
create index if not exists run_running_idx on sync.run (entity) where status = 'running';
comment on table sync.run is 'One row a sync run: trigger, status, exact counts, cursor before and after, phase timings in milliseconds.';
comment on column sync.run.deferred is 'Rows missing from the source whose delete was postponed because rows of another table still reference them; the next run deletes them.';
comment on column sync.run.phases is 'Milliseconds spent in each phase: {"fetch": …, "merge": …}.';
comment on column sync.run.detail is 'Extra facts: the diff sample of a dry run, the reason a run was skipped.';

create table if not exists sync.run_change (
  run_id bigint not null,
  action text not null check (action in ('insert', 'update', 'delete')),
  key text[] not null,
  changed text[]
);
-- Runs append their changes in id order: a BRIN index finds a run's rows
-- and costs next to nothing to maintain on a million-row load.
create index if not exists run_change_run_idx on sync.run_change using brin (run_id);
comment on table sync.run_change is 'One row a record a run inserted, updated or deleted; `changed` names the columns an update changed. The view sync.change shows it with the entity and the key as an object.';
comment on column sync.run_change.key is 'The values of the entity''s key_columns, in that order, as text: where key = array[''acme'', ''17''].';

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
create index if not exists alert_open_idx on sync.alert (entity) where acknowledged_at is null;
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
  -- The caller holds the entity's advisory lock, so a run still marked
  -- running belongs to a process that died: close it, or it shows forever.
  update sync.run
     set status = 'failed', finished_at = now(),
         error = 'abandoned: the process running it stopped before it finished'
   where entity = p_entity and status = 'running';
  insert into sync.run (entity, trigger, dry_run, full_refresh, cursor_before, job_id)
  select e.name, p_trigger, p_dry_run, p_full, e.cursor_value, p_job_id
    from sync.entity e where e.name = p_entity
  returning id into v_run_id;
  if v_run_id is null then
    raise exception 'unknown entity %', p_entity using hint = 'run `syncline config apply` after adding it to syncline.config.json';
  end if;
  select string_agg(format('%I %s', t.column_name, t.column_type), ', ')
    into v_defs from sync.target_column_types(p_entity, p_columns) t;
  execute format('create unlogged table sync_staging.%I (%s, _sl_quarantined boolean not null default false)',
                 'run_' || v_run_id, v_defs);
  return v_run_id;
end
$$;
comment on function sync.start_run(text, text, boolean, boolean, text[], text) is 'Opens a run: records it in sync.run and creates its unlogged staging table sync_staging.run_<id> with the target''s column types.';

create or replace function sync.finish_run(p_run_id bigint, p_status text, p_error text default null, p_detail jsonb default '{}')
  returns void
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
begin
  update sync.run
     set status = p_status, error = p_error, finished_at = now(), detail = detail || coalesce(p_detail, '{}')
   where id = p_run_id and status = 'running';
  execute format('drop table if exists sync_staging.%I', 'run_' || p_run_id);
end
$$;
comment on function sync.finish_run(bigint, text, text, jsonb) is 'Closes a run that did not merge (failed, cancelled, skipped) and drops its staging table.';

create or replace function sync.record_outcome(p_entity text, p_trigger text, p_status text, p_reason text)
  returns bigint
  language sql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
  insert into sync.run (entity, trigger, status, finished_at, error)
  values (p_entity, p_trigger, p_status, now(), p_reason)
  returning id
$$;
comment on function sync.record_outcome(text, text, text, text) is 'Records a run that ended before staging began, and why: skipped for a failed dependency, failed for a missing table.';

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
  execute format('create unlogged table sync_staging.%I (_sl_line bigint not null, %s, _sl_raw jsonb)',
                 'run_' || p_run_id || '_raw', v_cols);
  return format('sync_staging.%I', 'run_' || p_run_id || '_raw');
end
$$;
comment on function sync.create_raw_staging(bigint) is 'For sources whose values arrive as text (CSV, HTTP): creates sync_staging.run_<id>_raw with a text column for every column of the run''s staging table, the record''s line (or ordinal) and its raw form.';

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
   where r.entity = v_run.entity and r.id < p_run_id and r.status = 'failed' and r.error like 'abandoned%'
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
comment on function sync.adopt_raw(bigint) is 'Resume after a crash: when the entity''s previous run died mid-crawl (an http source saves the state after each page), gives its fetched pages (run_<old>_raw) to this run and returns where to go on; null when there is nothing to resume.';

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
  v_collist text;
  v_casts text;
  v_keycasts text;
  v_row record;
  v_reason text;
  v_i integer;
  v_bad bigint := 0;
  v_unkeyed bigint := 0;
  v_loaded bigint;
begin
  select e.* into strict v_ent from sync.entity e join sync.run r on r.entity = e.name where r.id = p_run_id;
  -- Text without an offset means the source's local time; text with one keeps it.
  if p_time_zone is not null then
    perform set_config('timezone', p_time_zone, true);
  end if;
  select array_agg(a.attname::text order by a.attnum), array_agg(format_type(a.atttypid, a.atttypmod) order by a.attnum)
    into v_cols, v_types
    from pg_attribute a
   where a.attrelid = v_typed::regclass and a.attnum > 0 and not a.attisdropped and a.attname <> '_sl_quarantined';
  v_keys := v_ent.key_columns;
  v_key := format('array[%s]', (select string_agg(format('r.%I', k), ', ') from unnest(v_keys) k));
  v_collist := (select string_agg(format('%I', c), ', ') from unnest(v_cols) c);
  v_casts := (select string_agg(format('r.%I::%s', c, t), ', ') from unnest(v_cols, v_types) x(c, t));
  v_keycasts := (select string_agg(format('r.%I::%s', c, t), ', ') from unnest(v_cols, v_types) x(c, t) where c = any (v_keys));
  if p_keep_last then
    -- An API that pages by version sends a record again when it changes
    -- during the crawl: the later copy is the current one.
    -- (A window function, not a self-join: `is not distinct from` cannot hash,
    -- and the self-join went quadratic.)
    execute format($q$
      delete from %1$s r where r._sl_line in (
        select d._sl_line from (select _sl_line, row_number() over (partition by %2$s order by _sl_line desc) as n from %1$s) d
         where d.n > 1)$q$,
      v_raw, (select string_agg(format('%I', k), ', ') from unnest(v_keys) k));
  end if;

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
    get diagnostics v_bad = row_count;
    -- A rejected record whose key is valid stays in staging, flagged, so a
    -- mirror run does not delete the target row it would have replaced.
    execute format($q$
      insert into %1$s (%2$s, _sl_quarantined)
      select %3$s, true from %4$s r join _sl_rejects j using (_sl_line)
       where %5$s$q$,
      v_typed, (select string_agg(format('%I', k), ', ') from unnest(v_keys) k), v_keycasts, v_raw,
      (select string_agg(format('r.%1$I is not null and pg_input_is_valid(r.%1$I, %2$L)', c, t), ' and ')
         from unnest(v_cols, v_types) x(c, t) where c = any (v_keys)));
    get diagnostics v_loaded = row_count;
    v_unkeyed := v_bad - v_loaded;
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
                           v_typed, (select string_agg(format('%I', k), ', ') from unnest(v_keys) k), v_keycasts, v_raw)
              using v_row._sl_line;
          exception when data_exception or not_null_violation then
            v_unkeyed := v_unkeyed + 1;
          end;
        end;
      end loop;
    end;
  end if;
  update sync.run set detail = detail || jsonb_build_object('unkeyed_rejects',
           coalesce((detail ->> 'unkeyed_rejects')::bigint, 0) + v_unkeyed)
   where id = p_run_id;
  execute format('drop table %s', v_raw);
  return jsonb_build_object('rejected', v_bad, 'unkeyed', v_unkeyed);
end
$$;
comment on function sync.cast_raw(bigint, text, boolean) is 'Moves a run''s text staging (run_<id>_raw) into its typed staging: each value is cast to its target column''s type (text without an offset read in p_time_zone); a record with a value its type rejects is quarantined with the line, the column and the reason, and kept, flagged, by its key so a mirror run does not delete it. p_keep_last keeps only the last record of a key (an API that sends a changed record again).';

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
  -- them; the runner checks) needs no search for repeats. Otherwise group on
  -- the key columns themselves: a jsonb of them costs twice as much.
  if not coalesce((select (r.detail ->> 'source_unique_key')::boolean from sync.run r where r.id = p_run_id), false) then
  execute format($q$
    with dup as (
      select %3$s, count(*) as _sl_n from %1$s s where not s._sl_quarantined group by %3$s having count(*) > 1),
    bad as (
      update %1$s s set _sl_quarantined = true from dup d where %2$s returning s.*, d._sl_n)
    insert into sync.run_error (run_id, entity, key, category, message, payload)
    select %4$s, %5$L, %6$s, 'integrity', format('the source has %%s records with this key; none of them was merged', s._sl_n),
           to_jsonb(s.*) - '_sl_quarantined' - '_sl_n' from bad s$q$,
    p_s, sync._join(p_ent.key_columns, 's', 'd'), v_keys, p_run_id, p_ent.name, v_key);
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
comment on function sync._quarantine(bigint, sync.entity, regclass, regclass, text[]) is 'First step of sync.merge: flags staged records that cannot be merged (null or repeated key, another tenant, an empty required column, a broken check, a missing parent) and records each in sync.run_error with its reason.';

create or replace function sync.merge(p_run_id bigint) returns jsonb
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_run sync.run;
  v_ent sync.entity;
  v_started timestamptz := clock_timestamp();
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
begin
  select * into v_run from sync.run where id = p_run_id for update;
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
  execute format('select count(*), count(*) filter (where _sl_quarantined) from %s', v_s)
    into v_fetched, v_quarantined;
  -- Records rejected before staging with no usable key (a malformed CSV
  -- line, a key its type rejects) count as fetched and quarantined too.
  v_fetched := v_fetched + coalesce((v_run.detail ->> 'unkeyed_rejects')::bigint, 0);
  v_quarantined := v_quarantined + coalesce((v_run.detail ->> 'unkeyed_rejects')::bigint, 0);

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
      (select 'delete', %2$s, null from _sl_diff s where _sl_action = 'delete' order by 2 limit 10)) x$q$,
    sync._key_json(v_ent.key_columns, 's'), (select format('jsonb_build_object(%s)', string_agg(format('%L, s._sl_tk%s', k, i), ', '))
              from unnest(v_ent.key_columns) with ordinality x(k, i)))
    into v_sample;
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
  end if;

  update sync.run
     set status = case when v_quarantined > 0 then 'partial' else 'succeeded' end, finished_at = now(),
         fetched = v_fetched, inserted = v_ins, updated = v_upd, deleted = v_del,
         unchanged = v_fetched - v_quarantined - v_ins - v_upd,
         quarantined = v_quarantined, deferred = greatest(v_missing - v_del, 0),
         cursor_after = v_cursor,
         phases = phases || jsonb_build_object('merge', round(extract(epoch from clock_timestamp() - v_started) * 1000)),
         detail = detail || case when v_run.dry_run then jsonb_build_object('sample', v_sample) else '{}' end
   where id = p_run_id
  returning jsonb_build_object('run_id', id, 'status', status, 'fetched', fetched, 'inserted', inserted,
                               'updated', updated, 'deleted', deleted, 'unchanged', unchanged,
                               'quarantined', quarantined, 'deferred', deferred, 'cursor', cursor_after,
                               'dry_run', dry_run, 'sample', detail -> 'sample')
    into v_result;
  if not v_run.dry_run and v_ent.cursor_column is not null then
    update sync.entity set cursor_value = v_cursor where name = v_ent.name and cursor_value is distinct from v_cursor;
  end if;
  execute format('drop table %s', v_s);
  execute format('drop table if exists sync_staging.%I', 'run_' || p_run_id || '_parents');
  return v_result;
end
$$;
comment on function sync.merge(bigint) is 'Merges a run''s staged rows into the target in the caller''s transaction: quarantines records that cannot be merged (null or repeated key, another tenant, missing parent), computes the diff in one pass, then inserts, updates only rows that differ, deletes (mirror) or stamps (soft-delete) rows missing from a full snapshot within the tenant, logs every change, advances the cursor. A dry run computes the same counts and a sample and writes nothing to the target.';

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
    execute format('select max(t.%I)::text from %s t where %s', v_ent.cursor_column, v_t, v_scope) into v_cursor;
    update sync.entity set cursor_value = v_cursor where name = v_ent.name and cursor_value is distinct from v_cursor;
  end if;
  update sync.run
     set status = 'succeeded', finished_at = now(), fetched = p_copied, inserted = p_copied, updated = 0, deleted = 0,
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
comment on function sync.merge_direct(bigint, bigint) is 'Finishes an initial load that the runner copied straight into an empty target (in the caller''s transaction, so the load and this bookkeeping commit together): logs every inserted key, sets the cursor, records the run. Raises SL001 when the copied rows do not match the tenant scope; the runner then rolls back and takes the staging path.';

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
  v_job_id bigint;
begin
  if not exists (select 1 from sync.entity where name = p_entity) then
    raise exception 'unknown entity %', p_entity using hint = 'select name from sync.entity lists the entities';
  end if;
  select j.id into v_job_id
    from graphile_worker.add_job('sync_entity',
           json_build_object('entity', p_entity, 'trigger', 'manual', 'full', p_full),
           queue_name := 'sync:' || p_entity, job_key := 'sync:' || p_entity, max_attempts := 5) j;
  return v_job_id;
end
$$;
comment on function sync.request(text, boolean) is 'Enqueues a sync of one entity for the worker (from psql: select sync.request(''meters'')). Repeated requests before it starts collapse into one job. Returns the job id.';

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

create or replace function sync.ack_alert(p_id bigint, p_by text) returns boolean
  language plpgsql volatile security definer
  set search_path to pg_catalog, public, pg_temp
as $$
begin
  update sync.alert set acknowledged_by = p_by, acknowledged_at = now()
   where id = p_id and acknowledged_at is null;
  return found;
end
$$;
comment on function sync.ack_alert(bigint, text) is 'Acknowledges an open alert; returns false if it was already acknowledged or does not exist.';

create or replace function sync.tg_run__enqueue_dependents() returns trigger
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
begin
  -- Runs from the worker (they carry a job id) hand on to the entities that
  -- depend on them; the CLI orders its own runs.
  perform graphile_worker.add_job('sync_entity',
            json_build_object('entity', e.name, 'trigger', 'dependency'),
            queue_name := 'sync:' || e.name, job_key := 'sync:' || e.name, max_attempts := 5)
     from sync.entity e
    where new.entity = any (e.depends_on) and e.enabled;
  return null;
end
$$;
drop trigger if exists _500_enqueue_dependents on sync.run;
create trigger _500_enqueue_dependents
  after update of status on sync.run
  for each row
  when (old.status = 'running' and new.status in ('succeeded', 'partial') and not new.dry_run and new.job_id is not null)
  execute function sync.tg_run__enqueue_dependents();

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
       (select count(*) from sync.alert a where a.entity = e.name and a.acknowledged_at is null) as open_alerts
  from sync.entity e
  left join lateral (select * from sync.run r where r.entity = e.name and not r.dry_run
                      order by r.started_at desc, r.id desc limit 1) r on true
  left join lateral (select r2.finished_at from sync.run r2
                      where r2.entity = e.name and not r2.dry_run and r2.status in ('succeeded', 'partial')
                      order by r2.started_at desc, r2.id desc limit 1) ok on true;
comment on view sync.status is 'One row an entity: state (ok, failing, running, never run, disabled), the last run and its counts, the last success and the lag since it, open alerts.';

create or replace view sync.change as
select c.run_id, r.entity, r.started_at, c.action,
       coalesce(jsonb_object(e.key_columns, c.key), to_jsonb(c.key)) as key,
       c.changed
  from sync.run_change c
  join sync.run r on r.id = c.run_id
  left join sync.entity e on e.name = r.entity and cardinality(e.key_columns) = cardinality(c.key);
comment on view sync.change is 'sync.run_change for people: the entity, when the run started, and the key as {"column": "value"}.';

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
                           c ->> 'path'), ', ' order by o)
    into v_cols, v_vals
    from jsonb_array_elements(p_spec -> 'columns') with ordinality as x(c, o);
  execute format('insert into sync_staging.%I (_sl_line, %s, _sl_raw)
                  select row_number() over (order by p.run_id, p._sl_line, i.n), %s, i.item
                    from _sl_fed p
                    cross join lateral jsonb_array_elements(case when jsonb_typeof(sync.json_at(p._sl_raw, %L)) = ''array''
                                                                 then sync.json_at(p._sl_raw, %L) else ''[]'' end) with ordinality i(item, n)',
                 'run_' || p_run_id || '_raw', v_cols, v_vals, v_path, v_path);
  get diagnostics v_count = row_count;
  drop table _sl_fed;
  update sync.run set detail = detail || jsonb_build_object('fed_by', to_jsonb(p_feeds), 'parents_upto', p_feeds[cardinality(p_feeds)])
   where id = p_run_id and cardinality(p_feeds) > 0;
  return v_count;
end
$$;
comment on function sync.feed_nested(bigint, bigint[], jsonb) is 'Fills a nested entity''s run staging (run_<id>_raw, run_<id>_parents) from the records its parent''s runs kept: every element of the array at spec.path of each parent record (its last copy), with the columns read from the element or, marked parent, from the parent record. Returns the rows staged.';

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
      update sync.run
         set status = 'failed', finished_at = now(),
             error = 'abandoned: the process running it stopped before it finished'
       where id = v_run.id and status = 'running';
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
       and not exists (select 1 from sync.run r where r.status = 'failed' and r.detail ? 'resume'
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
comment on function sync.cleanup() is 'Closes runs left running by a process that died (their entity lock is free), drops the kept records nested entities have taken, and drops staging tables no running run owns. Runs every 10 minutes from the crontab.';
