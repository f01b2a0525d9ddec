--! Previous: sha1:86fcba45c1739d01c4dd7fef74f9b3dffa048808
--! Hash: sha1:5ff69032661dd5a9ef60fa87516e12fc7eb796a8
--! Message: removing an entity leaves nothing running

/*
 * An entity removed from sync.entity (config apply of a config that no
 * longer has it, or DELETE in psql) leaves nothing running (issue 12): its
 * queued jobs are dropped, its open alerts resolved, its pending wave places
 * closed. Its run history stays.
 */
create or replace function sync.tg_entity__removed() returns trigger
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
begin
  -- Jobs not yet running: a job a worker holds ends on its own (its run finds the entity gone).
  perform graphile_worker.complete_jobs(array(
    select j.id from graphile_worker.jobs j where j.queue_name = 'sync:' || old.name and j.locked_at is null));
  update sync.alert set resolved_at = now()
   where entity = old.name and resolved_at is null;
  update sync.wave_entity set state = 'skipped', note = 'removed from sync.entity'
   where entity = old.name and state in ('waiting', 'ready', 'running');
  perform sync.wave_advance(w.id) from sync.wave w
   where w.finished_at is null and exists (select 1 from sync.wave_entity we where we.wave_id = w.id and we.entity = old.name);
  return old;
end
$$;
comment on function sync.tg_entity__removed() is 'When an entity leaves sync.entity: drops its queued jobs, resolves its open alerts and closes its pending places in waves, so nothing runs or alerts for an entity that is gone.';
drop trigger if exists _800_removed on sync.entity;
create trigger _800_removed
  after delete on sync.entity
  for each row execute function sync.tg_entity__removed();
