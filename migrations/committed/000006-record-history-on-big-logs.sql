--! Previous: sha1:b2852747ff9cfd0ed6ffa5794ae7c78d24471641
--! Hash: sha1:d4167b477cb15095db2d9abde73d82c449611891
--! Message: record history on big logs

/*
 * sync.record_history stays fast on big logs: one scan of the entity's runs,
 * and a key index on each closed month of sync.run_change, built by the
 * daily maintenance (an index on the month being written would slow every
 * merge by about half).
 */
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
