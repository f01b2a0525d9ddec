--! Previous: sha1:a6ba5fe62c8bbd8d4a04751c7e9e3b34cd9e2724
--! Hash: sha1:3b53e138d8ffb6fbb04c5e82632a7cd9725b5fe7
--! Message: run progress

/*
 * Live progress of running runs, for the operator API and dashboard: the
 * engine reports about once a second; NOTIFY sync_progress tells listeners
 * (server-sent events) without polling.
 */
alter table sync.run add column if not exists progress jsonb not null default '{}';
comment on column sync.run.progress is 'Live progress while running: {"phase", "rows", "pages", "total", "rate", "eta_seconds", "at"}; the last report stays after the run ends.';

create or replace function sync.report_progress(p_run_id bigint, p_progress jsonb) returns void
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_entity text;
begin
  update sync.run set progress = p_progress || jsonb_build_object('at', now())
   where id = p_run_id
  returning entity into v_entity;
  if v_entity is not null then
    perform pg_notify('sync_progress', json_build_object('run_id', p_run_id, 'entity', v_entity, 'progress', p_progress)::text);
  end if;
end
$$;
comment on function sync.report_progress(bigint, jsonb) is 'Records a running run''s progress and announces it on channel sync_progress (the engine calls it about once a second).';
