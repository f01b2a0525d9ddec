--! Previous: sha1:935162330363cf83768bff4cabcb7a94d652ca06
--! Hash: sha1:86fcba45c1739d01c4dd7fef74f9b3dffa048808
--! Message: a wave job run again never runs its entity twice

/*
 * A wave job run again after its worker died never runs its entity twice
 * (issue 11). sync.wave_take is the job's first step: it records a run that
 * ended before its worker died, or finds the pass over, instead of running
 * the entity again; sync.wave_repair gives a job back to a place left
 * 'running' by a dead worker as it does to a 'ready' one.
 */
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
