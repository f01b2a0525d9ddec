--! Previous: sha1:e7055cd9fa6e68813aec2765387f7d22170fb204
--! Hash: sha1:935162330363cf83768bff4cabcb7a94d652ca06
--! Message: worker heartbeats, waves, leftovers and true timings

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

-- A run's start closes its entity's dead runs as abandoned and drops their leftovers.
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

-- Timings are the real end of the run.
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

-- Timings are the real end of the run.
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

create or replace function sync.record_outcome(p_entity text, p_trigger text, p_status text, p_reason text)
  returns bigint
  language sql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
  insert into sync.run (entity, trigger, status, finished_at, error)
  values (p_entity, p_trigger, p_status, clock_timestamp(), p_reason)
  returning id
$$;

-- A crawl killed mid-way is abandoned now, not failed.
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
     where w.finished_at is null and w.executor = 'worker' and we.state = 'ready' and w.started_at < now() - interval '1 minute'
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

-- Dependents follow their dependencies within waves now.
drop trigger if exists _500_enqueue_dependents on sync.run;
drop function if exists sync.tg_run__enqueue_dependents();

-- A run that ends well ends a stall too.
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

create or replace function sync.tick() returns jsonb
  language sql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
  insert into sync.heartbeat as h (name) values ('worker')
  on conflict (name) do update set beat_at = now(), beats = h.beats + 1;
  select jsonb_build_object('stale', sync.check_freshness(), 'retries', sync.request_retries(), 'reaped', sync.reap_workers(),
                            'waves_repaired', sync.wave_repair());
$$;

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
