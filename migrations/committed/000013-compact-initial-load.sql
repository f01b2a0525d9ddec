--! Previous: sha1:5ff69032661dd5a9ef60fa87516e12fc7eb796a8
--! Hash: sha1:b2f9a37aab9a8da7641aa7ec0f7421b7b5d117f3
--! Message: compact initial load

/*
 * An initial load of an empty target (sync.merge_direct) is recorded as one
 * entry, "initial load, N rows", instead of one sync.run_change row per key:
 * those rows cost 15-20% of the load's time and a third more WAL, and said
 * nothing the run's count does not. An entity whose definition says
 * "history": "keys" keeps the per-key rows. Changes after the load are
 * recorded per key as before; sync.change and sync.record_history show a key
 * that came with a compact load as "initial load (run N)".
 */
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
  v_per_key boolean;
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
  v_per_key := coalesce(v_ent.definition ->> 'history', 'changes') = 'keys';
  if v_per_key then
    execute format('insert into sync.run_change (run_id, action, key) select %s, %L, %s from %s t where %s',
                   p_run_id, 'insert', sync._key_array(v_ent.key_columns, 't'), v_t, v_scope);
    get diagnostics v_logged = row_count;
  else
    execute format('select count(*) from %s t where %s', v_t, v_scope) into v_logged;
  end if;
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
         detail = detail || jsonb_build_object('direct', true, 'initial_load', p_copied, 'per_key_history', v_per_key)
   where id = p_run_id
  returning jsonb_build_object('run_id', id, 'status', status, 'fetched', fetched, 'inserted', inserted,
                               'updated', updated, 'deleted', deleted, 'unchanged', unchanged,
                               'quarantined', quarantined, 'deferred', deferred, 'cursor', cursor_after, 'dry_run', false)
    into v_result;
  execute format('drop table if exists sync_staging.%I', 'run_' || p_run_id);
  return v_result;
end
$$;
comment on function sync.merge_direct(bigint, bigint) is 'Finishes an initial load that the runner copied straight into an empty target (in the caller''s transaction, so the load and this bookkeeping commit together): records the run as an initial load of N rows (sync.run.detail.initial_load), one sync.run_change row per inserted key only when the entity''s definition says "history": "keys", sets the cursor. Raises SL001 when the copied rows do not match the tenant scope; the runner then rolls back and takes the staging path.';

create or replace view sync.change as
select c.run_id, r.entity, r.started_at, c.action,
       coalesce(jsonb_object(e.key_columns, c.key), to_jsonb(c.key)) as key,
       c.changed
  from sync.run_change c
  join sync.run r on r.id = c.run_id
  left join sync.entity e on e.name = r.entity and cardinality(e.key_columns) = cardinality(c.key)
union all
-- A compact initial load: one row for the run, no key.
select r.id, r.entity, r.started_at, format('initial load, %s rows', r.detail ->> 'initial_load'), null, null
  from sync.run r
 where r.detail ? 'initial_load' and (r.detail ->> 'per_key_history')::boolean is false;
comment on view sync.change is 'sync.run_change for people: the entity, when the run started, and the key as {"column": "value"}. An initial load recorded compactly is one row with the action "initial load, N rows" and no key.';

create or replace function sync.record_history(p_entity text, variadic p_key text[])
  returns table (at timestamptz, run_id bigint, what text, detail text, changed text[], payload jsonb)
  language plpgsql stable
  set search_path to pg_catalog, public, pg_temp
as $$
#variable_conflict use_column
declare
  v_ent sync.entity;
  v_runs bigint[] := array(select x.id from sync.run x where x.entity = p_entity);
  v_loads bigint[];
  v_load bigint;
  v_next bigint;
  v_first text;
  v_present boolean;
  v_from bigint[] := '{}';
begin
  select * into v_ent from sync.entity e where e.name = p_entity;
  v_loads := array(select x.id from sync.run x
                    where x.entity = p_entity and x.detail ? 'initial_load' and (x.detail ->> 'per_key_history')::boolean is false
                    order by x.id);
  -- A compact load names no key: the key came with it when the first thing
  -- recorded for the key after it (and before the next load) changed or
  -- deleted it, or, after the last load, when nothing was recorded and the
  -- target has the key now.
  foreach v_load in array v_loads loop
    v_next := (select min(l) from unnest(v_loads) l where l > v_load);
    select c.action into v_first from sync.run_change c
     where c.run_id = any (v_runs) and c.run_id > v_load and (v_next is null or c.run_id < v_next) and c.key = p_key
     order by c.run_id, c.at limit 1;
    if v_first is null and v_next is null and v_ent.name is not null
       and to_regclass(format('%I.%I', v_ent.target_schema, v_ent.target_table)) is not null then
      execute format('select exists (select 1 from %I.%I t where %s = $1 and %s)', v_ent.target_schema, v_ent.target_table,
                     sync._key_array(v_ent.key_columns, 't'),
                     case when v_ent.tenant_column is null then 'true' else format('t.%I = %L', v_ent.tenant_column, v_ent.tenant_value) end)
        into v_present using p_key;
    end if;
    if v_first in ('update', 'delete') or (v_first is null and v_present) then
      v_from := v_from || v_load;
    end if;
    v_first := null;
    v_present := false;
  end loop;
  return query
  select r.started_at, r.id, format('initial load (run %s)', r.id), r.trigger, null::text[], null::jsonb
    from sync.run r where r.id = any (v_from)
  union all
  select r.started_at, c.run_id, c.action, r.trigger, c.changed, null::jsonb
    from sync.run_change c join sync.run r on r.id = c.run_id
   -- One scan over the entity's runs (BRIN by run), not one a run: a big
   -- run's block range would be read again for every small run after it.
   where c.run_id = any (v_runs) and c.key = p_key
  union all
  select e.created_at, e.run_id, 'quarantined: ' || e.category, e.message, null, e.payload
    from sync.run_error e
   where e.entity = p_entity and e.key = p_key
  order by 1, 2;
end
$$;
comment on function sync.record_history(text, text[]) is 'Everything that happened to one record: each change a run made, each time it was quarantined, and "initial load (run N)" when it came with an initial load recorded compactly, oldest first: select * from sync.record_history(''sellers'', ''S000123'').';
