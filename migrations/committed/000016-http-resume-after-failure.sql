--! Previous: sha1:f9b50127fcd18e4555559e390e756e18802eab8a
--! Hash: sha1:3b3b7344a5e9f23b74756d7644349bfb966e133e
--! Message: http resume after failure

-- A crawl the API stopped (retries used up: 5xx, resets, timeouts) fails
-- mid-way; its saved pages are as good as a killed crawl's, so the next run
-- continues from them instead of page 1. Only a failure during the crawl
-- (a next page saved to resume from): a run that failed after fetching
-- everything fetches again rather than merge old pages.
create or replace function sync._staged_records(p_run_id bigint) returns bigint
  language plpgsql stable
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_table text;
  v_n bigint;
  v_total bigint := 0;
begin
  foreach v_table in array array['run_' || p_run_id || '_raw', 'run_' || p_run_id || '_typed'] loop
    if to_regclass(format('sync_staging.%I', v_table)) is not null then
      execute format('select count(*) from sync_staging.%I', v_table) into v_n;
      v_total := v_total + v_n;
    end if;
  end loop;
  return v_total;
end
$$;
comment on function sync._staged_records(bigint) is 'The records a crawl of run p_run_id has in its text staging and typed pages: sync.adopt_raw resumes a crawl only when they are all still there.';

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
   where r.entity = v_run.entity and r.id < p_run_id
     and (r.status = 'abandoned' or (r.status = 'failed' and jsonb_typeof(r.detail -> 'resume') = 'object'))
     and r.detail ? 'resume' and r.dry_run = v_run.dry_run and r.full_refresh = v_run.full_refresh
     and to_regclass(format('sync_staging.%I', 'run_' || r.id || '_raw')) is not null
     and not exists (select 1 from sync.run n where n.entity = r.entity and n.id > r.id and n.id < p_run_id)
   order by r.id desc limit 1;
  if not found then
    return null;
  end if;
  -- Staging is unlogged: a server crash empties it while the resume state in
  -- sync.run (logged) survives. Resuming then would lose the pages before the
  -- saved one (and a mirror would delete their rows): take the pages only
  -- when they hold every record the run saved, else fetch from the start.
  if sync._staged_records(v_old.id) <> coalesce((v_old.detail ->> 'records')::bigint, 0) then
    execute format('drop table if exists sync_staging.%I, sync_staging.%I, sync_staging.%I',
                   'run_' || v_old.id || '_raw', 'run_' || v_old.id || '_typed', 'run_' || v_old.id || '_parents');
    update sync.run set detail = detail || jsonb_build_object('resume_refused', jsonb_build_object('run_id', v_old.id,
             'reason', 'its fetched pages are gone (a server restart empties unlogged staging): fetching from the first page'))
     where id = p_run_id;
    return null;
  end if;
  execute format('alter table sync_staging.%I rename to %I', 'run_' || v_old.id || '_raw', 'run_' || p_run_id || '_raw');
  execute format('drop table if exists sync_staging.%I', 'run_' || p_run_id || '_typed');
  if to_regclass(format('sync_staging.%I', 'run_' || v_old.id || '_typed')) is not null then
    execute format('alter table sync_staging.%I rename to %I', 'run_' || v_old.id || '_typed', 'run_' || p_run_id || '_typed');
  end if;
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
comment on function sync.adopt_raw(bigint) is 'Hands the fetched pages of the entity''s previous run (its text staging run_<id>_raw, its typed pages run_<id>_typed and its parents) to this run, when that run was killed (abandoned) or failed mid-crawl with pages saved and nothing ran in between: the http crawl continues from its saved resume state instead of the first page. Returns the adopted run, resume state, pages and records, or null.';
