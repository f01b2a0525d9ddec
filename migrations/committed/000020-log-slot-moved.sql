--! Previous: sha1:2ea37e5e3ba3f9f4da2f2cd466bc98f6ac55e2a1
--! Hash: sha1:fbb8cccb4bc418633ddb10fd85ccc8f8fa79eae4
--! Message: log slot moved past applied

-- A log-capture slot confirmed past the position the target holds (created
-- again under its name, read by another client, or made by a --full run
-- killed before its merge) no longer has the changes in between: runs read
-- on from it and lost them without a word. The runs now record it as
-- wal_status 'moved', and this raises log_slot_lost for it, as for a slot
-- that is gone.

comment on column sync.log_capture.wal_status is 'pg_replication_slots.wal_status at the last look (reserved, extended, unreserved, lost), "missing" when the slot is gone, or "moved" when it is confirmed past applied_lsn (the changes in between are in no slot).';

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
