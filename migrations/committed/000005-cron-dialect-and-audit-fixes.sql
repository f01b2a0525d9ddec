--! Previous: sha1:3b53e138d8ffb6fbb04c5e82632a7cd9725b5fe7
--! Hash: sha1:b2852747ff9cfd0ed6ffa5794ae7c78d24471641
--! Message: cron dialect and audit fixes

/*
 * Fixes found by the health property tests: schedules are checked in
 * graphile-worker's own cron dialect (the worker runs them), day fields
 * count as restricted only when they exclude a day, numbers too large for a
 * field are invalid rather than an error, and changes of an entity's
 * definition (fullSchedule lives there) are audited and announced.
 */

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
  if new.retry_delay < interval '10 seconds' then
    raise exception 'entity %: retry_delay % is below the minimum of 10 seconds', new.name, new.retry_delay
      using errcode = '23514', hint = 'e.g. ''5 minutes''';
  end if;
  return new;
end
$$;

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

create or replace function sync.tg_setting__validate() returns trigger
  language plpgsql
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_interval interval;
begin
  if new.name not in ('retention') then
    raise exception 'unknown setting %', new.name
      using errcode = '23514', hint = 'settings: retention';
  end if;
  if new.name = 'retention' then
    begin
      v_interval := new.value::interval;
    exception when others then
      raise exception 'setting retention: "%" is not an interval', new.value
        using errcode = '23514', hint = 'write it as Postgres reads an interval, e.g. ''90 days''';
    end;
    if v_interval < interval '1 day' then
      raise exception 'setting retention: % is below the minimum of 1 day', new.value
        using errcode = '23514', hint = 'keep logs at least a day, e.g. ''30 days''';
    end if;
  end if;
  new.updated_at := now();
  return new;
end
$$;

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
comment on view sync.status is 'One row an entity: state (ok, failing, running, never run, disabled), the last run and its counts, the last success and the lag since it, open alerts and gaps, the next scheduled run, staleness.';
