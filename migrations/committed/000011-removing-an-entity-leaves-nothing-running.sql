--! Previous: sha1:b88b94b839969d144f88f96668d79f2a8dba66cd
--! Hash: sha1:25f44bfbb4c10e060f7b605095722cce4a3df6b9
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
