--! Previous: sha1:d4167b477cb15095db2d9abde73d82c449611891
--! Hash: sha1:a7d466e933429e08832c88fa71a35abbbfc6f5e9
--! Message: heartbeat and cancelled state

/*
 * A heartbeat a DBA and the operator API can read without graphile-worker's
 * private tables, and a cancelled last run shown as such rather than failing.
 */
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
  select jsonb_build_object('stale', sync.check_freshness(), 'retries', sync.request_retries());
$$;
comment on function sync.tick() is 'What the sync_tick task runs every minute: the worker heartbeat, freshness alerts and due retries of quarantined records.';

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
