--! Previous: sha1:4c0b0e62dcc0b40c83ab4ee6df0b0d9824d35b60
--! Hash: sha1:1c40b33ff2f16669b7b53649197d04f448951247
--! Message: log capture

-- Log-based capture (issue 15): a postgres source entity with "capture": "log"
-- reads its changes from a logical replication slot (pgoutput) into the run's
-- staging table; sync.merge applies them (deletes included); the slot's
-- position moves in the same transaction as the merge that applied it.

create table if not exists sync.log_capture (
  entity text primary key references sync.entity (name) on delete cascade,
  slot text not null,
  publication text not null,
  applied_lsn pg_lsn,
  applied_commit_at timestamptz,
  caught_up_at timestamptz,
  source_lsn pg_lsn,
  lag_bytes bigint,
  retained_bytes bigint,
  wal_status text,
  slot_active boolean,
  snapshot_lsn pg_lsn,
  snapshot_at timestamptz,
  relation jsonb,
  observed_at timestamptz,
  updated_at timestamptz not null default now()
);
comment on table sync.log_capture is 'One row a log-capture entity ("capture": "log"): its replication slot and publication on the source, the position applied to the target, and what the source said about the slot when last looked at (lag, retained WAL).';
comment on column sync.log_capture.slot is 'The logical replication slot on the source (syncline_<entity>); `syncline capture drop <entity>` drops it.';
comment on column sync.log_capture.publication is 'The publication on the source naming the entity''s table (syncline_<entity>).';
comment on column sync.log_capture.applied_lsn is 'Every source transaction committed before this WAL position is in the target: it moves in the transaction of the merge that applied them, and the slot is confirmed up to it afterwards.';
comment on column sync.log_capture.applied_commit_at is 'Commit time on the source of the last transaction applied.';
comment on column sync.log_capture.caught_up_at is 'The last time a read found nothing older left to apply: every source commit before it is in the target (log_lag_seconds in sync.status counts from it).';
comment on column sync.log_capture.source_lsn is 'The source''s WAL flush position at the last read.';
comment on column sync.log_capture.lag_bytes is 'WAL between the applied position and the source''s position at the last look (bytes; other tables'' writes count too).';
comment on column sync.log_capture.retained_bytes is 'WAL the slot keeps on the source''s disk (pg_current_wal_lsn() - restart_lsn) at the last look: a stuck slot grows it without bound.';
comment on column sync.log_capture.wal_status is 'pg_replication_slots.wal_status at the last look (reserved, extended, unreserved, lost), "missing" when the slot is gone, or "moved" when it is confirmed past applied_lsn (the changes in between are in no slot).';
comment on column sync.log_capture.slot_active is 'Whether a session was using the slot at the last look.';
comment on column sync.log_capture.snapshot_lsn is 'Where the slot was created: the initial snapshot holds every change before it.';
comment on column sync.log_capture.snapshot_at is 'When the snapshot the log continues from was applied.';
comment on column sync.log_capture.relation is 'The source table''s columns (name, type oid, key) as the log last described them: a change of them is reported as a schema change.';
comment on column sync.log_capture.observed_at is 'When the slot was last looked at on the source.';
comment on column sync.log_capture.updated_at is 'When the applied position last moved.';

create or replace function sync.tg_setting__validate() returns trigger
  language plpgsql
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_interval interval;
begin
  if new.name not in ('retention', 'worker_heartbeat', 'worker_timeout', 'verify_every', 'log_poll_interval', 'log_retained_wal_warn') then
    raise exception 'unknown setting %', new.name
      using errcode = '23514', hint = 'settings: retention, worker_heartbeat, worker_timeout, verify_every, log_poll_interval, log_retained_wal_warn';
  end if;
  if new.name = 'log_retained_wal_warn' then
    begin
      perform pg_size_bytes(new.value);
    exception when others then
      raise exception 'setting log_retained_wal_warn: "%" is not a size', new.value
        using errcode = '23514', hint = 'write it as pg_size_bytes reads a size, e.g. ''1 GB'' or ''500 MB''';
    end;
    new.updated_at := now();
    return new;
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
  if new.name = 'log_poll_interval' and v_interval not between interval '100 milliseconds' and interval '1 hour' then
    raise exception 'setting log_poll_interval: % is not between 100 milliseconds and 1 hour', new.value
      using errcode = '23514', hint = 'e.g. ''1 second''';
  end if;
  new.updated_at := now();
  return new;
end
$$;

insert into sync.setting (name, value, description) values
  ('log_retained_wal_warn', '1 GB', 'A log-capture slot keeping more WAL than this on the source raises a log_wal_retained warning (critical once the source says wal_status unreserved or lost). A stuck slot keeps WAL forever and can fill the source''s disk; see max_slot_wal_keep_size on the source.')
on conflict (name) do nothing;
insert into sync.setting (name, value, description) values
  ('log_poll_interval', '1 second', 'How often the worker asks each log-capture entity''s slot for changes (a peek of at most one change: cheap). A poll that finds changes starts a run; one that finds none moves the slot on and counts as caught up, without a run.')
on conflict (name) do nothing;

create or replace function sync._log_applied() returns trigger
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_log jsonb := new.detail -> 'log';
  v_snapshot boolean := coalesce((v_log ->> 'snapshot')::boolean, false);
begin
  insert into sync.log_capture as c (entity, slot, publication, applied_lsn, applied_commit_at, caught_up_at, source_lsn,
                                     lag_bytes, snapshot_lsn, snapshot_at, relation, updated_at)
  values (new.entity, v_log ->> 'slot', v_log ->> 'publication', (v_log ->> 'to')::pg_lsn, (v_log ->> 'commit_at')::timestamptz,
          case when (v_log ->> 'caught_up')::boolean then (v_log ->> 'read_at')::timestamptz end,
          (v_log ->> 'source_lsn')::pg_lsn,
          greatest(pg_wal_lsn_diff((v_log ->> 'source_lsn')::pg_lsn, (v_log ->> 'to')::pg_lsn), 0)::bigint,
          case when v_snapshot then (v_log ->> 'to')::pg_lsn end, case when v_snapshot then now() end,
          v_log -> 'relation', now())
  on conflict (entity) do update
     set slot = excluded.slot, publication = excluded.publication, applied_lsn = excluded.applied_lsn,
         applied_commit_at = coalesce(excluded.applied_commit_at, case when not v_snapshot then c.applied_commit_at end),
         caught_up_at = case when v_snapshot then excluded.caught_up_at else coalesce(excluded.caught_up_at, c.caught_up_at) end,
         source_lsn = excluded.source_lsn, lag_bytes = excluded.lag_bytes,
         snapshot_lsn = coalesce(excluded.snapshot_lsn, c.snapshot_lsn), snapshot_at = coalesce(excluded.snapshot_at, c.snapshot_at),
         relation = coalesce(excluded.relation, c.relation), updated_at = now(),
         wal_status = case when v_snapshot then 'reserved' else c.wal_status end;
  if v_snapshot then
    -- The snapshot's run created the slot again.
    perform sync.resolve_alerts(new.entity, array['log_slot_lost']);
  end if;
  return new;
end
$$;
comment on function sync._log_applied() is 'Moves a log-capture entity''s applied position (sync.log_capture) when a run that read its log succeeds: in the transaction of the merge that applied the changes, so the target and the position never disagree.';

drop trigger if exists run_log_applied on sync.run;
create trigger run_log_applied after update of status on sync.run
  for each row
  when (old.status = 'running' and new.status in ('succeeded', 'partial') and not new.dry_run and new.detail ? 'log')
  execute function sync._log_applied();

create or replace function sync.log_prepare(p_run_id bigint) returns jsonb
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
  -- As sync.merge: a few changes find their target rows by the key's index.
  set random_page_cost to 1.1
as $$
declare
  v_run sync.run;
  v_ent sync.entity;
  v_s text := format('sync_staging.%I', 'run_' || p_run_id);
  v_t text;
  v_c text;
  v_vals text[];
  v_changes bigint;
  v_keys bigint;
  v_gone bigint := 0;
begin
  select * into strict v_run from sync.run where id = p_run_id;
  select * into strict v_ent from sync.entity where name = v_run.entity;
  v_t := format('%I.%I', v_ent.target_schema, v_ent.target_table);
  execute format('select count(*) from %s', v_s) into v_changes;
  if (v_run.detail #>> '{log,truncated_seq}') is not null then
    -- The table was truncated: what came before it is gone, and the run is a snapshot (sync.merge deletes the rest).
    execute format('delete from %s where _sl_seq < %s', v_s, (v_run.detail #>> '{log,truncated_seq}')::bigint);
  end if;
  -- An update that left a TOASTed value alone does not carry it: take it from
  -- the key's latest earlier change in this read, else from the target's row.
  for v_c in execute format('select distinct u from %s, unnest(_sl_unchanged) u', v_s) loop
    execute format($q$update %1$s s set %2$I = coalesce(
        (select p.%2$I from %1$s p where %3$s and p._sl_seq < s._sl_seq and not p._sl_deleted
                                     and not (%4$L = any (coalesce(p._sl_unchanged, '{}'))) order by p._sl_seq desc limit 1),
        (select t.%2$I from %5$s t where %6$s))
      where %4$L = any (s._sl_unchanged)$q$,
      v_s, v_c, sync._join(v_ent.key_columns, 'p', 's'), v_c, v_t, sync._join(v_ent.key_columns, 't', 's'));
  end loop;
  if v_ent.tenant_column is not null then
    -- A row whose new version belongs to another tenant left this one.
    execute format('update %s s set _sl_deleted = true where not s._sl_deleted and s.%I is distinct from %L',
                   v_s, v_ent.tenant_column, v_ent.tenant_value);
  end if;
  -- The latest change of each key is its state.
  execute format($q$delete from %1$s s using (select ctid as c, row_number() over (partition by %2$s order by _sl_seq desc) as n from %1$s) l
                     where s.ctid = l.c and l.n > 1$q$,
                 v_s, (select string_agg(format('%I', k), ', ') from unnest(v_ent.key_columns) k));
  if v_ent.mode in ('upsert', 'append') then
    execute format('delete from %s where _sl_deleted', v_s);
  end if;
  -- A delete of a row the target lacks changes nothing; one it has carries the
  -- row's own values, so it passes the checks every staged record passes.
  execute format('delete from %s s where s._sl_deleted and not exists (select 1 from %s t where %s)',
                 v_s, v_t, sync._join(v_ent.key_columns, 't', 's'));
  get diagnostics v_gone = row_count;
  select array_agg(a.attname::text order by a.attnum) into v_vals
    from pg_attribute a
   where a.attrelid = v_s::regclass and a.attnum > 0 and not a.attisdropped and a.attname not like '\_sl\_%'
     and a.attname <> all (v_ent.key_columns);
  if cardinality(v_vals) > 0 then
    execute format('update %s s set (%s) = (select %s from %s t where %s) where s._sl_deleted',
                   v_s, (select string_agg(format('%I', c), ', ') from unnest(v_vals) c),
                   (select string_agg(format('t.%I', c), ', ') from unnest(v_vals) c),
                   v_t, sync._join(v_ent.key_columns, 't', 's'));
  end if;
  execute format('alter table %s drop column _sl_seq, drop column _sl_unchanged', v_s);
  execute format('select count(*) from %s', v_s) into v_keys;
  return jsonb_build_object('changes', v_changes, 'keys', v_keys, 'deletes_of_absent_rows', v_gone);
end
$$;
comment on function sync.log_prepare(bigint) is 'Turns a log-capture run''s staged changes (in commit order) into one state a key for sync.merge: drops what a truncate wiped, fills TOASTed values an update left out, turns rows that left the tenant into deletes, keeps each key''s latest change, and gives deletes the target row''s values.';

create or replace function sync.log_observe(p_entity text, p_slot jsonb) returns void
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_c sync.log_capture;
  v_warn bigint := coalesce((select pg_size_bytes(value) from sync.setting where name = 'log_retained_wal_warn'), 1073741824);
  v_status text := coalesce(p_slot ->> 'wal_status', 'missing');
  v_retained bigint := (p_slot ->> 'retained_bytes')::bigint;
begin
  update sync.log_capture c
     set wal_status = v_status, retained_bytes = v_retained, slot_active = (p_slot ->> 'active')::boolean,
         source_lsn = coalesce((p_slot ->> 'source_lsn')::pg_lsn, c.source_lsn),
         applied_lsn = greatest(c.applied_lsn, (p_slot ->> 'applied_lsn')::pg_lsn),
         caught_up_at = greatest(c.caught_up_at, (p_slot ->> 'caught_up_at')::timestamptz),
         lag_bytes = greatest(pg_wal_lsn_diff(coalesce((p_slot ->> 'source_lsn')::pg_lsn, c.source_lsn),
                                              greatest(c.applied_lsn, (p_slot ->> 'applied_lsn')::pg_lsn)), 0)::bigint,
         observed_at = now()
   where c.entity = p_entity
  returning * into v_c;
  if not found then
    return;
  end if;
  if v_status in ('missing', 'lost', 'moved') then
    perform sync.raise_alert('log_slot_lost', 'critical', p_entity,
      format('%s: the replication slot %s on the source is %s%s, so the changes since %s cannot be read. '
             'Take a new snapshot (it creates the slot again): syncline sync %s --full',
             p_entity, v_c.slot, case v_status when 'lost' then 'lost' when 'moved' then 'past the position applied to the target' else 'gone' end,
             case v_status when 'lost' then ' (the source removed WAL it needed: max_slot_wal_keep_size)'
                           when 'moved' then ' (it was created again, or another client read it)' else '' end,
             coalesce(v_c.applied_commit_at::text, 'the snapshot'), p_entity),
      jsonb_build_object('slot', v_c.slot, 'wal_status', v_status, 'applied_lsn', v_c.applied_lsn::text));
  else
    perform sync.resolve_alerts(p_entity, array['log_slot_lost']);
  end if;
  if v_status = 'unreserved' or v_retained > v_warn then
    perform sync.raise_alert('log_wal_retained', case when v_status = 'unreserved' then 'critical' else 'warning' end, p_entity,
      format('%s: the replication slot %s keeps %s of WAL on the source (wal_status %s): until Syncline reads it, the source '
             'cannot remove that WAL and its disk fills. Check that a worker runs and the entity''s runs succeed; '
             'if the entity is gone, drop the slot: syncline capture drop %s',
             p_entity, v_c.slot, pg_size_pretty(v_retained), v_status, p_entity),
      jsonb_build_object('slot', v_c.slot, 'retained_bytes', v_retained, 'wal_status', v_status, 'warn_bytes', v_warn));
  elsif v_status <> 'missing' then
    perform sync.resolve_alerts(p_entity, array['log_wal_retained']);
  end if;
end
$$;
comment on function sync.log_observe(text, jsonb) is 'Records what the source says about a log-capture entity''s slot (wal_status, retained WAL, positions) and raises or resolves the log_slot_lost and log_wal_retained alerts.';

create or replace function sync.merge(p_run_id bigint) returns jsonb
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
  -- Planned for storage where a random read costs about a sequential one (SSDs,
  -- cloud volumes, a cached table): a change of a few thousand rows then joins
  -- the target through its key's index instead of scanning the whole target
  -- (a 1% change of 1M rows by cursor: merge 0.97 s -> 0.37 s). A large
  -- staging still hashes.
  set random_page_cost to 1.1
as $$
declare
  v_run sync.run;
  v_ent sync.entity;
  v_started timestamptz := clock_timestamp();
  v_validated timestamptz;
  v_t text;
  v_s text;
  v_rel regclass;
  v_cols text[];
  v_vals text[];
  v_on text;
  v_scope text := 'true';
  v_distinct text;
  v_changed text;
  v_key text;
  v_snapshot boolean;
  v_deletes boolean;
  v_tomb text := 'false';
  v_parent_scope text := 'true';
  v_empty boolean;
  v_unreferenced text := 'true';
  v_collist text;
  v_selist text;
  v_setlist text;
  v_tkeys text;
  v_fetched bigint;
  v_quarantined bigint;
  v_ins bigint := 0;
  v_upd bigint := 0;
  v_del bigint := 0;
  v_missing bigint := 0;
  v_staged_del bigint := 0;
  v_cursor text;
  v_cursor_type text;
  v_sample jsonb;
  v_overriding text := '';
  v_result jsonb;
  v_nullkeys bigint;
  v_doubts text[];
  v_doubtful boolean := false;
  v_full_snapshot boolean;
  v_judged jsonb := '{}';
  v_held bigint := 0;
  v_kept bigint := 0;
  v_notes text[] := '{}';
  v_diff_scope boolean;
begin
  -- No row lock: the entity lock below serializes merges, and the run's live
  -- progress (sync.report_progress) must still be written while it merges.
  select * into v_run from sync.run where id = p_run_id;
  if not found then
    raise exception 'sync.merge: no run %', p_run_id;
  end if;
  if v_run.status <> 'running' then
    raise exception 'sync.merge: run % is %, not running', p_run_id, v_run.status;
  end if;
  select * into strict v_ent from sync.entity where name = v_run.entity;
  -- Same key as the session lock the runner holds: also guards a merge
  -- started by hand in psql.
  perform pg_advisory_xact_lock(sync.entity_lock_key(v_ent.name));

  v_t := format('%I.%I', v_ent.target_schema, v_ent.target_table);
  v_s := format('sync_staging.%I', 'run_' || p_run_id);
  v_rel := v_t::regclass;
  select array_agg(a.attname::text order by a.attnum) into v_cols
    from pg_attribute a
   where a.attrelid = v_s::regclass and a.attnum > 0 and not a.attisdropped and a.attname not in ('_sl_quarantined', '_sl_deleted');
  v_vals := array(select c from unnest(v_cols) c where c <> all (v_ent.key_columns));
  v_on := sync._join(v_ent.key_columns, 't', 's');
  v_key := sync._key_array(v_ent.key_columns, 's');
  if v_ent.tenant_column is not null then
    v_scope := format('t.%I = %L', v_ent.tenant_column, v_ent.tenant_value);
  end if;
  -- An incremental run sees only changed rows, so only a full snapshot may
  -- conclude that a missing row was deleted.
  v_snapshot := (v_ent.cursor_column is null or v_run.full_refresh)
                and coalesce(v_run.detail #>> '{log,changes}', 'false') <> 'true';
  v_deletes := v_snapshot and v_ent.mode in ('mirror', 'soft-delete');
  v_full_snapshot := v_deletes and not v_run.detail ? 'parent_scope';
  if v_run.detail ? 'parent_scope' then
    -- Children nested in parent records: each parent seen in this run brings
    -- its whole child set, so its missing children go, even incrementally;
    -- children of parents not seen stay.
    v_deletes := v_ent.mode in ('mirror', 'soft-delete');
    v_parent_scope := format('exists (select 1 from sync_staging.%I p where %s)', 'run_' || p_run_id || '_parents',
      (select string_agg(format('p.%1$I = t.%1$I::text', c), ' and ') from jsonb_array_elements_text(v_run.detail -> 'parent_scope') c));
  end if;
  v_diff_scope := v_run.detail ? 'diff_scope';
  if v_diff_scope then
    -- A checksum run staged only the records of the key-hash buckets whose
    -- checksums differ; the other buckets hold the same rows on both sides.
    -- So only target rows of the differing buckets can be missing from the
    -- staging, and the run is still a full snapshot.
    v_parent_scope := case when (v_run.detail #>> '{diff_scope,buckets}')::bigint = 0 then 'false'
      else sync._diff_scope_keys(p_run_id, v_rel, v_ent.key_columns, (v_run.detail #>> '{diff_scope,bits}')::int) end;
  end if;
  if v_ent.tombstone_column = any (v_cols) and v_ent.mode <> 'soft-delete' then
    -- A record the source marks deleted deletes its row, snapshot or not.
    v_tomb := format('s.%I is not null', v_ent.tombstone_column);
  end if;
  if exists (select 1 from pg_attribute a where a.attrelid = v_s::regclass and a.attname = '_sl_deleted' and not a.attisdropped) then
    -- A change read from the source's log: the delete of a key the target has.
    v_tomb := 's._sl_deleted';
  end if;
  if exists (select 1 from pg_attribute a where a.attrelid = v_rel and a.attidentity = 'a'
               and a.attname = any (v_cols)) then
    v_overriding := 'overriding system value';
  end if;

  perform sync._quarantine(p_run_id, v_ent, v_s::regclass, v_rel, v_cols);
  perform sync._check_rules(p_run_id, v_ent, v_s::regclass, v_rel, v_cols);
  v_validated := clock_timestamp();
  execute format('select count(*), count(*) filter (where _sl_quarantined) from %s', v_s)
    into v_fetched, v_quarantined;
  -- Records rejected before staging with no usable key (a malformed CSV
  -- line, a key its type rejects) count as fetched and quarantined too.
  v_fetched := v_fetched + coalesce((v_run.detail ->> 'unkeyed_rejects')::bigint, 0);
  v_quarantined := v_quarantined + coalesce((v_run.detail ->> 'unkeyed_rejects')::bigint, 0);
  -- The records of equal buckets (a checksum run) were compared, not staged:
  -- fetched and unchanged, as a full fetch counts them.
  v_fetched := v_fetched + coalesce((v_run.detail #>> '{diff_scope,equal_rows}')::bigint, 0);
  -- A record whose key could not be read may be any row: the snapshot cannot
  -- tell which rows the source still has.
  execute format('select count(*) from %s s where %s', v_s,
                 (select string_agg(format('s.%I is null', k), ' or ') from unnest(v_ent.key_columns) k))
    into v_nullkeys;
  v_nullkeys := v_nullkeys + coalesce((v_run.detail ->> 'unkeyed_rejects')::bigint, 0);
  v_doubts := v_run.doubts;
  if v_nullkeys > 0 then
    v_doubts := v_doubts || format('%s record(s) without a readable key (an unreadable line, a parse error, an empty key '
                                   'or a key its column type rejects): their rows cannot be told from deleted ones', v_nullkeys);
  end if;
  v_doubtful := v_deletes and cardinality(v_doubts) > 0;

  v_collist := (select string_agg(format('%I', c), ', ') from unnest(v_cols) c);
  v_selist := (select string_agg(format('s.%I', c), ', ') from unnest(v_cols) c);
  v_setlist := (select string_agg(format('%1$I = s.%1$I', c), ', ') from unnest(v_vals) c);
  v_distinct := (select case when count(*) > 0 then format('(%s) is distinct from (%s)',
                        string_agg(sync._cmp_expr(v_rel, c, 't'), ', '),
                        string_agg(sync._cmp_expr(v_s::regclass, c, 's'), ', ')) end
                   from unnest(v_vals) c);
  v_changed := (select case when count(*) > 0 then format('array_remove(array[%s], null)',
                        string_agg(format('case when %s is distinct from %s then %L end',
                                          sync._cmp_expr(v_rel, c, 't'), sync._cmp_expr(v_s::regclass, c, 's'), c), ', ')) end
                  from unnest(v_vals) c);
  if v_ent.mode = 'soft-delete' and v_ent.soft_delete_column <> all (v_cols) then
    -- A record back in the source is live again.
    v_distinct := format('(%s)', concat_ws(' or ', v_distinct, format('t.%I is not null', v_ent.soft_delete_column)));
    v_changed := format('array_remove(%s || array[case when t.%I is not null then %L end], null)',
                        coalesce(v_changed, 'array[]::text[]'), v_ent.soft_delete_column, v_ent.soft_delete_column);
    v_setlist := concat_ws(', ', v_setlist, format('%I = null', v_ent.soft_delete_column));
  end if;
  if v_ent.mode = 'append' then
    v_distinct := null;
  end if;
  if (v_deletes and v_ent.mode = 'mirror') or v_tomb <> 'false' then
    -- Rows another table still references (with a restricting foreign key)
    -- wait until that table's own sync has let go of them.
    select coalesce(string_agg(format('not exists (select 1 from %s c where %s)', c.conrelid::regclass,
             (select string_agg(format('c.%I = t.%I', ca.attname, ta.attname), ' and ')
                from unnest(c.conkey, c.confkey) as k(ck, tk)
                join pg_attribute ca on ca.attrelid = c.conrelid and ca.attnum = k.ck
                join pg_attribute ta on ta.attrelid = c.confrelid and ta.attnum = k.tk)), ' and '), 'true')
      into v_unreferenced
      from pg_constraint c
     where c.contype = 'f' and c.confrelid = v_rel and c.conrelid <> v_rel and c.confdeltype in ('a', 'r');
  end if;

  -- The diff: what to insert, update and delete, computed in one pass over
  -- staging and target before anything is written. Writing first and
  -- anti-joining against the table being filled goes quadratic when the
  -- planner believes the target small. An empty target (the initial load)
  -- needs no join at all.
  execute format('select not exists (select 1 from %s t where %s)', v_t, v_scope) into v_empty;
  if v_empty then
    -- Nothing to compare with: the diff is every mergeable staged row, and a
    -- view of them saves copying the whole load once more.
    execute format($q$
      create temp view _sl_diff as
      select 'insert'::text as _sl_action, null::text[] as _sl_changed, s.*, %s from %s s where not s._sl_quarantined and not (%s)$q$,
      (select string_agg(format('null::text as _sl_tk%s', i), ', ') from generate_series(1, cardinality(v_ent.key_columns)) i),
      v_s, v_tomb);
  else
    v_tkeys := (select string_agg(format('t.%I as _sl_tk%s', k, i), ', ') from unnest(v_ent.key_columns) with ordinality x(k, i));
    execute format($q$
      create temp table _sl_diff on commit drop as
      select case when t._sl_present is null then 'insert' when s._sl_quarantined is null or (%10$s) then 'delete' else 'update' end as _sl_action,
             case when t._sl_present and s._sl_quarantined is not null and not (%10$s) then %1$s end as _sl_changed,
             s.*, %2$s
        from %3$s s
        %4$s join (select true as _sl_present, t.* from %5$s t where %6$s and %11$s) t on %7$s
       where (t._sl_present is null and not s._sl_quarantined and not (%10$s))
          or (s._sl_quarantined is null %8$s)
          or (t._sl_present and not s._sl_quarantined and (%10$s))
          or (t._sl_present and not s._sl_quarantined and not (%10$s) and (%9$s))$q$,
      coalesce(v_changed, 'null::text[]'), v_tkeys, v_s,
      case when v_deletes then 'full' else 'left' end, v_t, v_scope, v_on,
      case when v_ent.mode = 'soft-delete' then format('and t.%I is null', v_ent.soft_delete_column) else '' end,
      coalesce(v_distinct, 'false'), v_tomb, v_parent_scope);
  end if;

  if v_deletes and not v_empty then
    v_judged := sync._judge_deletes(v_run, v_ent, v_t, v_scope, v_doubtful);
    v_held := coalesce((v_judged ->> 'held')::bigint, 0);
    v_kept := coalesce((v_judged ->> 'kept')::bigint, 0);
  end if;
  if v_doubtful then
    v_notes := v_notes || format('the snapshot is doubtful, so nothing was deleted%s: %s',
                                 case when v_kept > 0 then format(' (%s rows it lacks were kept)', v_kept) else '' end,
                                 array_to_string(v_doubts, '; '));
  end if;
  if v_held > 0 then
    v_notes := v_notes || format('%s deletes held: %s. If the source really lost those rows, confirm with '
                                 'select sync.confirm_deletes(%s) or syncline sync %s --confirm-deletes',
                                 v_held, v_judged ->> 'reason', p_run_id, v_ent.name);
  end if;
  if v_unreferenced <> 'true' then
    execute format('select count(*) from _sl_diff where _sl_action = %L', 'delete') into v_missing;
  end if;
  if v_tomb <> 'false' and not v_empty then
    -- Deletes the source sent as records (a log's delete, a tombstone): fetched, so not unchanged once made.
    execute format('select count(*) from _sl_diff where _sl_action = %L and _sl_quarantined is not null', 'delete') into v_staged_del;
  end if;
  if v_run.dry_run then
    execute 'select count(*) filter (where _sl_action = ''insert''), count(*) filter (where _sl_action = ''update''),
                    count(*) filter (where _sl_action = ''delete'') from _sl_diff'
      into v_ins, v_upd, v_del;
    if v_del > 0 and v_unreferenced <> 'true' then
      execute format('select count(*) from %s t join _sl_diff s on %s where s._sl_action = %L and %s',
                     v_t, sync._join_tk(v_ent.key_columns), 'delete', v_unreferenced)
        into v_del;
    end if;
  else
    -- Inserts first, then updates, then deletes: a new parent exists before a
    -- row is pointed at it, and a row stops pointing at an old parent before
    -- that parent goes. Foreign keys are checked per statement, so a table
    -- that references itself converges in one run.
    execute format($q$
      with i as (
        insert into %1$s as t (%2$s) %3$s
        select %4$s from _sl_diff s where s._sl_action = 'insert'
        returning %5$s as k)
      insert into sync.run_change (run_id, action, key) select %6$s, 'insert', k from i$q$,
      v_t, v_collist, v_overriding, v_selist, sync._key_array(v_ent.key_columns, 't'), p_run_id);
    get diagnostics v_ins = row_count;
    if not v_empty and v_distinct is not null then
      execute format($q$
        with u as (
          update %1$s t set %2$s from _sl_diff s
           where s._sl_action = 'update' and %3$s and %4$s
          returning %5$s as k, s._sl_changed)
        insert into sync.run_change (run_id, action, key, changed) select %6$s, 'update', k, _sl_changed from u$q$,
        v_t, v_setlist, v_on, v_scope, v_key, p_run_id);
      get diagnostics v_upd = row_count;
    end if;
    if not v_empty and (v_deletes or v_tomb <> 'false') then
      execute format($q$
        with d as (
          %1$s
          returning %2$s as k)
        insert into sync.run_change (run_id, action, key, changed) select %3$s, 'delete', k, %4$s from d$q$,
        case when v_ent.mode <> 'soft-delete'
          then format('delete from %s t using _sl_diff s where s._sl_action = %L and %s and %s and %s',
                      v_t, 'delete', sync._join_tk(v_ent.key_columns), v_scope, v_unreferenced)
          else format('update %s t set %I = now() from _sl_diff s where s._sl_action = %L and %s and %s',
                      v_t, v_ent.soft_delete_column, 'delete', sync._join_tk(v_ent.key_columns), v_scope) end,
        sync._key_array(v_ent.key_columns, 't'), p_run_id,
        case when v_ent.mode = 'soft-delete' then format('array[%L]', v_ent.soft_delete_column) else 'null' end);
      get diagnostics v_del = row_count;
    end if;
  end if;
  if v_run.dry_run then
    -- The sample a dry run shows: not worth a pass over every change otherwise.
    execute format($q$
      select coalesce(jsonb_agg(x order by x.action, x.key), '[]') from (
        (select 'insert' as action, %1$s as key, null::text[] as changed from _sl_diff s where _sl_action = 'insert' order by 2 limit 10)
        union all
        (select 'update', %1$s, _sl_changed from _sl_diff s where _sl_action = 'update' order by 2 limit 10)
        union all
        (select 'delete', %2$s, null from _sl_diff s where _sl_action = 'delete' order by 2 limit 10)
        union all
        (select 'held', %2$s, null from _sl_diff s where _sl_action = 'held' order by 2 limit 10)) x$q$,
      sync._key_json(v_ent.key_columns, 's'), (select format('jsonb_build_object(%s)', string_agg(format('%L, s._sl_tk%s', k, i), ', '))
                from unnest(v_ent.key_columns) with ordinality x(k, i)))
      into v_sample;
  end if;
  if v_full_snapshot and not v_doubtful and not v_empty and not v_run.dry_run then
    -- Confirmed deletes are spent once made (or once the row is back in
    -- the source); one deferred for a reference waits for the next run.
    execute format($q$
      delete from sync.held_delete h using sync.run r
       where r.id = h.run_id and r.entity = %1$L and r.deletes_confirmed_at is not null
         and not exists (select 1 from _sl_diff s join %2$s t on %3$s
                          where s._sl_action = 'delete' and array[%4$s]::text[] = h.key)$q$,
      v_ent.name, v_t, sync._join_tk(v_ent.key_columns),
      (select string_agg(format('s._sl_tk%s::text', i), ', ') from generate_series(1, cardinality(v_ent.key_columns)) i));
  end if;
  execute case when v_empty then 'drop view pg_temp._sl_diff' else 'drop table pg_temp._sl_diff' end;

  if v_ent.cursor_column is not null then
    select format_type(a.atttypid, a.atttypmod) into v_cursor_type
      from pg_attribute a where a.attrelid = v_s::regclass and a.attname = v_ent.cursor_column;
    execute format('select greatest(max(s.%I), %L::%s)::text from %s s where not s._sl_quarantined',
                   v_ent.cursor_column, v_run.cursor_before, v_cursor_type, v_s)
      into v_cursor;
    if v_diff_scope then
      -- Rows of equal buckets were not staged: the diff took the largest
      -- cursor among them from their target rows, which hold the same values.
      execute format('select greatest(%L::%s, %L::%s)::text', v_cursor, v_cursor_type,
                     v_run.detail #>> '{diff_scope,cursor_max}', v_cursor_type)
        into v_cursor;
    end if;
    if v_tomb <> 'false' and v_missing > v_del and not v_snapshot then
      -- A deletion the source sent had to wait (its row is still referenced):
      -- the cursor stays, so the next run fetches the record again and applies it.
      v_cursor := v_run.cursor_before;
    end if;
    if v_run.detail ? 'keys' then
      -- A run of chosen keys saw only them: the cursor stays where the full stream left it.
      v_cursor := v_run.cursor_before;
    end if;
  end if;

  update sync.run
     set status = case when v_quarantined > 0 or v_doubtful or v_held > 0 then 'partial' else 'succeeded' end,
         finished_at = clock_timestamp(), doubts = v_doubts, held = nullif(v_held, 0),
         error = nullif(array_to_string(v_notes, '. '), ''),
         fetched = v_fetched, inserted = v_ins, updated = v_upd, deleted = v_del,
         unchanged = v_fetched - v_quarantined - v_ins - v_upd - least(v_staged_del, v_del),
         quarantined = v_quarantined, deferred = greatest(v_missing - v_del, 0),
         cursor_after = v_cursor,
         phases = phases || jsonb_build_object('validate', round(extract(epoch from v_validated - v_started) * 1000),
                                                'merge', round(extract(epoch from clock_timestamp() - v_validated) * 1000)),
         detail = detail || case when v_run.dry_run then jsonb_build_object('sample', v_sample) else '{}' end
                         || case when v_kept > 0 then jsonb_build_object('kept', v_kept) else '{}' end
                         || case when v_held > 0 then jsonb_build_object('held_reason', v_judged ->> 'reason') else '{}' end
   where id = p_run_id
  returning jsonb_build_object('run_id', id, 'status', status, 'fetched', fetched, 'inserted', inserted,
                               'updated', updated, 'deleted', deleted, 'unchanged', unchanged,
                               'quarantined', quarantined, 'deferred', deferred, 'cursor', cursor_after,
                               'dry_run', dry_run, 'sample', detail -> 'sample', 'held', coalesce(held, 0),
                               'kept', v_kept, 'doubts', to_jsonb(doubts), 'note', error)
    into v_result;
  if not v_run.dry_run and v_ent.cursor_column is not null then
    update sync.entity set cursor_value = v_cursor where name = v_ent.name and cursor_value is distinct from v_cursor;
  end if;
  if not v_run.dry_run then
    perform sync._snapshot_alerts(p_run_id, v_ent.name, v_deletes, v_full_snapshot, v_doubtful, v_held, v_doubts,
                                  v_judged ->> 'reason');
    -- Records quarantined before and merged now are resolved.
    execute format('update sync.run_error e set resolved_at = now(), next_retry_at = null from %s s
                     where e.entity = %L and e.resolved_at is null and e.run_id <> %s and e.key = %s and not s._sl_quarantined',
                   v_s, v_ent.name, p_run_id, v_key);
    -- A record quarantined again carries on its predecessor's retry count; past
    -- the entity's retry_limit it is not offered again. Conflicts never retry.
    with prev as (
      update sync.run_error o set resolved_at = now(), next_retry_at = null
        from sync.run_error n
       where n.run_id = p_run_id and n.key is not null and o.entity = v_ent.name and o.key = n.key
         and o.run_id <> p_run_id and o.resolved_at is null
      returning o.key, o.retry_count)
    update sync.run_error n
       set retry_count = x.rc,
           next_retry_at = case when x.rc < v_ent.retry_limit and n.category in ('validation', 'integrity')
                                 and n.message not like 'conflict:%' and n.message not like 'the record belongs to tenant%'
                            then now() + v_ent.retry_delay end
      from (select n2.id, coalesce(max(p.retry_count) + 1, 0) as rc
              from sync.run_error n2 left join prev p on p.key = n2.key
             where n2.run_id = p_run_id and n2.key is not null group by n2.id) x
     where n.id = x.id;
  end if;
  execute format('drop table %s', v_s);
  execute format('drop table if exists sync_staging.%I', 'run_' || p_run_id || '_parents');
  execute format('drop table if exists sync_staging.%I', 'run_' || p_run_id || '_differing');
  return v_result;
end
$$;

create or replace function sync.check_freshness() returns integer
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_e record;
  v_raised integer := 0;
begin
  for v_e in
    select e.name, e.freshness, coalesce(greatest(ok.at, lc.caught_up_at), e.created_at) as since, greatest(ok.at, lc.caught_up_at) as last_success
      from sync.entity e
      left join lateral (select max(r.finished_at) as at from sync.run r
                          where r.entity = e.name and not r.dry_run and r.status in ('succeeded', 'partial')) ok on true
      left join sync.log_capture lc on lc.entity = e.name
     where e.freshness is not null and e.enabled
  loop
    if v_e.since < now() - v_e.freshness then
      perform sync.raise_alert('stale', 'warning', v_e.name,
        format('%s has had no successful run for %s (freshness window %s)', v_e.name,
               date_trunc('second', now() - v_e.since), v_e.freshness),
        jsonb_build_object('last_success', v_e.last_success, 'freshness', v_e.freshness::text));
      v_raised := v_raised + 1;
    else
      perform sync.resolve_alerts(v_e.name, array['stale']);
    end if;
  end loop;
  return v_raised;
end
$$;

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
       greatest(ok.finished_at, lc.caught_up_at) as last_success_at,
       now() - greatest(ok.finished_at, lc.caught_up_at) as lag,
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
       e.enabled and e.freshness is not null and coalesce(greatest(ok.finished_at, lc.caught_up_at), e.created_at) < now() - e.freshness as stale,
       (select count(*) from sync.gap g where g.entity = e.name and g.resolved_at is null) as open_gaps,
       case when e.definition ->> 'capture' = 'log' then 'log' end as capture,
       lc.lag_bytes as log_lag_bytes,
       extract(epoch from now() - lc.caught_up_at)::numeric(12, 1) as log_lag_seconds,
       lc.retained_bytes as log_retained_bytes,
       lc.wal_status as log_wal_status
  from sync.entity e
  left join lateral (select * from sync.run r where r.entity = e.name and not r.dry_run
                      order by r.started_at desc, r.id desc limit 1) r on true
  left join lateral (select r2.finished_at from sync.run r2
                      where r2.entity = e.name and not r2.dry_run and r2.status in ('succeeded', 'partial')
                      order by r2.started_at desc, r2.id desc limit 1) ok on true
  left join sync.log_capture lc on lc.entity = e.name;

comment on view sync.status is 'One row an entity: state (ok, failing, cancelled, skipped, running, stalled: its run or queue belongs to a process that died, never run, disabled), the last run and its counts, the last success (for log capture: the last time it was caught up) and the lag since it, open alerts and gaps, the next scheduled run, staleness; for log capture, the lag behind the source''s log in bytes and seconds and the WAL its slot keeps.';
comment on column sync.alert.kind is 'consecutive_failures, gap, stale, integrity, throughput, resync_failed; for log capture: log_slot_lost, log_wal_retained, log_truncate, log_schema_changed.';
