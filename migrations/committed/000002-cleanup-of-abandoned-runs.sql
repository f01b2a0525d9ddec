--! Previous: sha1:e9e97e05d26dcc7cd15d8de55a95193760360939
--! Hash: sha1:ae4a4f450657c25090d57087151254d1d5e2541c
--! Message: cleanup of abandoned runs

/*
 * Housekeeping for runs whose process died: their sync.run row stays
 * "running" and their staging table stays behind until something notices.
 */
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
  for v_run in
    select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where n.nspname = 'sync_staging' and c.relkind = 'r'
       and not exists (select 1 from sync.run r where r.status = 'running' and 'run_' || r.id = c.relname)
  loop
    execute format('drop table if exists sync_staging.%I', v_run.relname);
    v_dropped := v_dropped + 1;
  end loop;
  return jsonb_build_object('runs_closed', v_closed, 'staging_dropped', v_dropped);
end
$$;
comment on function sync.cleanup() is 'Closes runs left running by a process that died (their entity lock is free) and drops staging tables no running run owns. Runs every 10 minutes from the crontab.';
