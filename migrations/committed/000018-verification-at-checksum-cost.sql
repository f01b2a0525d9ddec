--! Previous: sha1:a074462ecbb0fed45b63eda99050f5d271436990
--! Hash: sha1:4c0b0e62dcc0b40c83ab4ee6df0b0d9824d35b60
--! Message: verification at checksum cost

/*
 * Verification at checksum cost (issue 14, item 2). A verification compares
 * source and target by key-hash bucket checksums and lists the keys that
 * differ: `syncline verify <entity>`, `select sync.verify('<entity>')` (a job
 * for the worker), and an incremental run when one is due (at most once every
 * verify_every per entity, and after a backfill). Each one is a row of
 * sync.verification with its keys in sync.verification_key; the keys a
 * scheduled one finds become gaps (sync.gap) and heal by a re-sync of just
 * those keys, as before.
 */

create table if not exists sync.verification (
  id bigint generated always as identity primary key,
  entity text not null,
  requested_at timestamptz not null default now(),
  requested_by text,
  fix boolean not null default false,
  run_id bigint,
  started_at timestamptz,
  finished_at timestamptz,
  status text not null default 'queued'
    check (status in ('queued', 'running', 'equal', 'differs', 'fixed', 'failed')),
  method text,
  rows_compared bigint,
  segments bigint,
  missing bigint,
  extra bigint,
  changed bigint,
  detail jsonb not null default '{}'
);
create index if not exists verification_entity_idx on sync.verification (entity, id desc);
comment on table sync.verification is 'One row a verification of an entity: source against target by key-hash bucket checksums (or counts, for a source without checksums), asked for by `syncline verify`, sync.verify() or an incremental run''s schedule. The differing keys are in sync.verification_key.';
comment on column sync.verification.requested_by is 'Who asked: the database role (sync.verify), the OS user (the CLI), or ''schedule'' (an incremental run).';
comment on column sync.verification.fix is 'Heal what was found: a re-sync of exactly those keys, then a second comparison (detail.fix).';
comment on column sync.verification.run_id is 'The run a scheduled verification followed (null for one asked for).';
comment on column sync.verification.status is 'queued, running, equal (no differences), differs, fixed (differences healed: the second comparison was clean) or failed (detail.error says why).';
comment on column sync.verification.method is 'checksum (key-hash bucket checksums) or count (record counts and the source''s keys, for a source without checksums).';
comment on column sync.verification.rows_compared is 'Rows the comparison covered on the larger side (source or target).';
comment on column sync.verification.segments is 'Key-hash buckets compared, over all levels.';
comment on column sync.verification.missing is 'Keys in the source, missing from the target (kind -).';
comment on column sync.verification.extra is 'Keys in the target, not in the source (kind +); not counted for upsert and append entities, whose targets keep them.';
comment on column sync.verification.changed is 'Keys on both sides whose synced columns differ (kind ~).';
comment on column sync.verification.detail is 'The scope compared (tenant, cursor range lo..hi), the levels (bits, segments, differing), milliseconds, and for --fix the re-sync run and what remained.';

create table if not exists sync.verification_key (
  verification_id bigint not null references sync.verification (id) on delete cascade,
  key text[] not null,
  kind text not null check (kind in ('-', '+', '~')),
  columns text[],
  primary key (verification_id, key)
);
comment on table sync.verification_key is 'The keys a verification found differing, as a diff reads: - in the source and missing from the target, + in the target and not in the source, ~ on both sides with different values (columns: which).';
comment on column sync.verification_key.key is 'The key columns'' values as text, in the order of sync.entity.key_columns.';
comment on column sync.verification_key.columns is 'For ~: the synced columns whose values differ.';

create or replace function sync.tg_setting__validate() returns trigger
  language plpgsql
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_interval interval;
begin
  if new.name not in ('retention', 'worker_heartbeat', 'worker_timeout', 'verify_every') then
    raise exception 'unknown setting %', new.name
      using errcode = '23514', hint = 'settings: retention, worker_heartbeat, worker_timeout, verify_every';
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
  if new.name = 'verify_every' and v_interval < interval '0' then
    raise exception 'setting verify_every: % is negative', new.value
      using errcode = '23514', hint = 'e.g. ''15 minutes''; ''0'' verifies after every incremental run';
  end if;
  new.updated_at := now();
  return new;
end
$$;

insert into sync.setting (name, value, description) values
  ('verify_every', '15 minutes', 'How often, at most, an incremental run of an entity verifies its target against the source (key-hash checksums over the cursor range: a scan of source and target, hashing every row, per level). Shorter finds rows lost behind Syncline''s back sooner and costs a scan of source and target each time; an entity may override it ("verify": {"every": "5m"}). A successful full run counts as a verification; after a backfill the next run verifies whatever the interval.')
on conflict (name) do nothing;

create or replace function sync.verify(p_entity text, fix boolean default false) returns bigint
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_id bigint;
begin
  if not exists (select 1 from sync.entity where name = p_entity) then
    raise exception 'unknown entity "%"', p_entity
      using errcode = '22023', hint = 'see select name from sync.entity';
  end if;
  insert into sync.verification (entity, requested_by, fix) values (p_entity, session_user, fix) returning id into v_id;
  -- The entity's queue: a verification never runs beside a run of the same entity.
  perform graphile_worker.add_job('sync_verify', json_build_object('verification', v_id),
    queue_name := 'sync:' || p_entity, max_attempts := 3);
  return v_id;
end
$$;
comment on function sync.verify(text, boolean) is 'Queues a verification of the entity (the worker''s sync_verify task) and returns its id: the result lands in sync.verification (status, counts) and the differing keys in sync.verification_key. fix => true re-syncs exactly those keys and compares again.';

create or replace function sync.verification_due(p_entity text, p_every interval default null) returns boolean
  language sql stable
  set search_path to pg_catalog, public, pg_temp
as $$
  with last as (
    select greatest(
      (select max(v.started_at) from sync.verification v
        where v.entity = p_entity and v.status in ('equal', 'differs', 'fixed')),
      -- A full snapshot merged without a quarantined record leaves the target
      -- equal to the source (append aside): as good as a verification.
      (select max(r.started_at) from sync.run r join sync.entity e on e.name = r.entity
        where r.entity = p_entity and r.full_refresh and not r.dry_run and r.status = 'succeeded'
          and r.trigger <> 'backfill' and e.mode <> 'append')) as at)
  select l.at is null
      or l.at <= now() - coalesce(p_every, sync.setting_interval('verify_every'), interval '15 minutes')
      -- A backfill writes below the cursor where no incremental run looks.
      or exists (select 1 from sync.run r where r.entity = p_entity and r.trigger = 'backfill'
                    and r.status in ('succeeded', 'partial') and r.finished_at > l.at)
    from last l
$$;
comment on function sync.verification_due(text, interval) is 'Whether an incremental run of the entity verifies: no verification (nor a successful full run) within p_every (default: the verify_every setting), or a backfill finished since the last one.';

alter table sync.gap add column if not exists kind text not null default '-' check (kind in ('-', '+', '~'));
comment on column sync.gap.kind is '- the source has the record and the target lacks it; ~ both have it with different values; + the target holds a record the source no longer has (mirror and soft-delete entities). A checksum verification finds all three, a count only -.';

create or replace view sync.gaps as
select g.entity, coalesce(jsonb_object(e.key_columns, g.key), to_jsonb(g.key)) as key, g.key as key_values,
       g.detected_at, g.last_seen_at, g.run_id as found_by_run, g.resync_requested_at, g.resync_attempts, g.kind
  from sync.gap g
  left join sync.entity e on e.name = g.entity and cardinality(e.key_columns) = cardinality(g.key)
 where g.resolved_at is null;
comment on view sync.gaps is 'Open gaps: records the source has and the target lacks (kind -), or holds differently (~) or no longer has (+), with when they were found and whether a re-sync was asked for.';

-- What detect_gaps did after finding gaps, shared with record_gaps.
create or replace function sync._follow_gaps(p_run_id bigint) returns jsonb
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_run sync.run;
  v_ent sync.entity;
  v_open bigint;
  v_keys jsonb;
begin
  select * into strict v_run from sync.run where id = p_run_id;
  select * into strict v_ent from sync.entity where name = v_run.entity;
  select count(*) into v_open from sync.gap where entity = v_ent.name and resolved_at is null;
  if v_open > v_ent.gap_threshold then
    perform sync.raise_alert('gap', 'warning', v_ent.name,
      format('%s records of %s are missing from the target or differ from the source: see select * from sync.gaps where entity = %L', v_open, v_ent.name, v_ent.name),
      jsonb_build_object('gaps', v_open, 'run_id', p_run_id));
  elsif v_open = 0 then
    perform sync.resolve_alerts(v_ent.name, array['gap', 'resync_failed']);
  end if;
  if v_open > 0 and v_run.trigger = 'resync' then
    perform sync.raise_alert('resync_failed', 'critical', v_ent.name,
      format('%s records of %s are still missing after a re-sync of just those keys (run %s)', v_open, v_ent.name, p_run_id),
      jsonb_build_object('gaps', v_open, 'run_id', p_run_id));
  elsif v_open > 0 then
    -- A re-sync of just the missing keys; gaps asked for in the last 10 minutes wait for theirs.
    with asked as (
      update sync.gap g set resync_requested_at = now(), resync_attempts = g.resync_attempts + 1
       where g.id in (select id from sync.gap where entity = v_ent.name and resolved_at is null
                         and (resync_requested_at is null or resync_requested_at < now() - interval '10 minutes')
                       order by id limit 10000)
      returning g.key)
    select jsonb_agg(to_jsonb(key)) into v_keys from asked;
    perform sync.request_keys(v_ent.name, v_keys);
  end if;
  return jsonb_build_object('open', v_open, 'resync_keys', coalesce(jsonb_array_length(v_keys), 0));
end
$$;

create or replace function sync.detect_gaps(p_run_id bigint) returns jsonb
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_run sync.run;
  v_ent sync.entity;
  v_k text := format('sync_staging.%I', 'run_' || p_run_id || '_keys');
  v_t text;
  v_scope text := 'true';
  v_found bigint;
  v_follow jsonb;
begin
  select * into strict v_run from sync.run where id = p_run_id;
  select * into strict v_ent from sync.entity where name = v_run.entity;
  v_t := format('%I.%I', v_ent.target_schema, v_ent.target_table);
  if v_ent.tenant_column is not null then
    v_scope := format('t.%I = %L', v_ent.tenant_column, v_ent.tenant_value);
  end if;
  if v_ent.mode = 'soft-delete' then
    v_scope := format('%s and t.%I is null', v_scope, v_ent.soft_delete_column);
  end if;
  -- Missing: in the source, not in the target, and not a record waiting in quarantine.
  execute format($q$
    with missing as (
      select %1$s as key from %2$s s
       where not exists (select 1 from %3$s t where %4$s and %5$s)
         and not exists (select 1 from sync.run_error e where e.entity = %6$L and e.resolved_at is null and e.key = %1$s))
    insert into sync.gap as g (entity, key, run_id)
    select %6$L, m.key, %7$s from missing m
    on conflict (entity, key) where resolved_at is null do update set last_seen_at = now(), run_id = excluded.run_id$q$,
    sync._key_array(v_ent.key_columns, 's'), v_k, v_t, sync._join(v_ent.key_columns, 't', 's'), v_scope, v_ent.name, p_run_id);
  get diagnostics v_found = row_count;
  -- Healed: present in the target now, or gone from the source.
  execute format($q$
    update sync.gap g set resolved_at = now()
     where g.entity = %1$L and g.resolved_at is null
       and (not exists (select 1 from %2$s s where %3$s = g.key)
            or exists (select 1 from %4$s t where %5$s = g.key and %6$s))$q$,
    v_ent.name, v_k, sync._key_array(v_ent.key_columns, 's'), v_t, sync._key_array(v_ent.key_columns, 't'), v_scope);
  execute format('drop table %s', v_k);
  v_follow := sync._follow_gaps(p_run_id);
  update sync.run set detail = detail || jsonb_build_object('gaps', jsonb_build_object('found', v_found, 'open', v_follow -> 'open'))
   where id = p_run_id;
  return jsonb_build_object('found', v_found) || v_follow;
end
$$;

create or replace function sync.record_gaps(p_run_id bigint, p_verification_id bigint) returns jsonb
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_entity text := (select entity from sync.verification where id = p_verification_id);
  v_found bigint;
  v_follow jsonb;
begin
  -- Quarantined records are not gaps: they are offered again on their own (sync.request_retries).
  insert into sync.gap as g (entity, key, run_id, kind)
  select v_entity, k.key, p_run_id, k.kind from sync.verification_key k
   where k.verification_id = p_verification_id
     and not exists (select 1 from sync.run_error e where e.entity = v_entity and e.resolved_at is null and e.key = k.key)
  on conflict (entity, key) where resolved_at is null
    do update set last_seen_at = now(), run_id = excluded.run_id, kind = excluded.kind;
  get diagnostics v_found = row_count;
  -- Healed: no longer differing.
  update sync.gap g set resolved_at = now()
   where g.entity = v_entity and g.resolved_at is null
     and not exists (select 1 from sync.verification_key k where k.verification_id = p_verification_id and k.key = g.key);
  v_follow := sync._follow_gaps(p_run_id);
  update sync.run set detail = detail || jsonb_build_object('gaps', jsonb_build_object('found', v_found, 'open', v_follow -> 'open'))
   where id = p_run_id;
  return jsonb_build_object('found', v_found) || v_follow;
end
$$;
comment on function sync.record_gaps(bigint, bigint) is 'After a scheduled checksum verification (p_verification_id) following run p_run_id: its differing keys become open gaps (sync.gap, but records waiting in quarantine), gaps no longer differing are resolved, a gap alert is raised above the entity''s gap_threshold, and a re-sync of just those keys is queued (or, after a failed re-sync, resync_failed raised).';

create or replace function sync.start_verification(p_id bigint, p_method text) returns void
  language sql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
  -- A verification whose session is gone (its process killed, its
  -- connection cut) never closes itself: whoever verifies next closes it.
  update sync.verification v
     set status = 'failed', finished_at = now(),
         detail = v.detail || jsonb_build_object('error', 'the process verifying ended mid-way (killed or disconnected): verify again')
   where v.status = 'running' and v.id <> p_id and v.detail ? 'session'
     and not exists (select 1 from pg_stat_activity a where a.pid = (v.detail #>> '{session,pid}')::int
                        and a.backend_start is not distinct from (v.detail #>> '{session,started}')::timestamptz);
  update sync.verification
     set status = 'running', started_at = coalesce(started_at, now()), method = p_method,
         detail = detail || jsonb_build_object('session', jsonb_build_object('pid', pg_backend_pid(),
                    'started', (select a.backend_start from pg_stat_activity a where a.pid = pg_backend_pid())))
   where id = p_id;
$$;
comment on function sync.start_verification(bigint, text) is 'Marks verification p_id running in this session (detail.session: pid and backend start), and closes as failed every running verification whose session is gone (a killed CLI or worker), so none shows running forever.';

create or replace function sync.finish_verification(p_id bigint, p_status text, p_detail jsonb default '{}') returns void
  language sql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
  update sync.verification v
     set status = p_status, finished_at = now(), detail = v.detail || coalesce(p_detail, '{}'),
         missing = (select count(*) from sync.verification_key k where k.verification_id = p_id and k.kind = '-'),
         extra = (select count(*) from sync.verification_key k where k.verification_id = p_id and k.kind = '+'),
         changed = (select count(*) from sync.verification_key k where k.verification_id = p_id and k.kind = '~')
   where v.id = p_id;
  -- Verifications are kept as long as runs (the retention setting).
  delete from sync.verification v
   where v.finished_at < now() - coalesce(sync.setting_interval('retention'), interval '90 days');
$$;
comment on function sync.finish_verification(bigint, text, jsonb) is 'Closes a verification with its status and detail and counts its keys by kind; drops verifications older than the retention setting.';
