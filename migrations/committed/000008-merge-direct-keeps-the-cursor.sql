--! Previous: sha1:a7d466e933429e08832c88fa71a35abbbfc6f5e9
--! Hash: sha1:ae8429953606d47476370bcdabe1fad1e1a1ee38
--! Message: merge direct keeps the cursor

/*
 * sync.merge_direct keeps the cursor from moving backwards: an incremental
 * run into a target emptied behind Syncline's back loads straight into it
 * and may copy nothing (a verification property test found it).
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
