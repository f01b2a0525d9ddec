--! Previous: sha1:991207f88fc31934f6fa7f1d7a19dcf66531c258
--! Hash: sha1:f9b50127fcd18e4555559e390e756e18802eab8a
--! Message: http typed staging

-- Typed pages: an http crawl COPYs each page straight into the run's types,
-- so nothing is left to cast after the last page. A page PostgreSQL refuses
-- goes to the text staging (run_<id>_raw) instead, typed by sync.cast_raw.
create or replace function sync.create_typed_pages(p_run_id bigint) returns text
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_cols text;
begin
  select string_agg(format('%I %s', a.attname, format_type(a.atttypid, a.atttypmod)), ', ' order by a.attnum) into v_cols
    from pg_attribute a
   where a.attrelid = format('sync_staging.%I', 'run_' || p_run_id)::regclass
     and a.attnum > 0 and not a.attisdropped and a.attname <> '_sl_quarantined';
  -- The helper columns go last: once dropped, the table reads like the run's staging.
  execute format('create unlogged table sync_staging.%I (%s, _sl_line bigint not null, _sl_absent text[])',
                 'run_' || p_run_id || '_typed', v_cols);
  return format('sync_staging.%I', 'run_' || p_run_id || '_typed');
end
$$;
comment on function sync.create_typed_pages(bigint) is 'For an http crawl: creates sync_staging.run_<id>_typed with the columns and types of the run''s staging table, plus the record''s ordinal (_sl_line) and the fields it lacked (_sl_absent). Pages are COPYed into it typed while the crawl goes on; sync.cast_typed makes it the run''s staging.';

create or replace function sync.cast_typed(p_run_id bigint, p_time_zone text default null, p_keep_last boolean default false) returns jsonb
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_ent sync.entity;
  v_typed text := format('sync_staging.%I', 'run_' || p_run_id);
  v_pages text := format('sync_staging.%I', 'run_' || p_run_id || '_typed');
  v_raw text := format('sync_staging.%I', 'run_' || p_run_id || '_raw');
  v_keylist text;
  v_rawkey text;
  v_cols text;
  v_n bigint;
  v_superseded bigint := 0;
  v_text_rows boolean := false;
  v_cast jsonb := '{}';
begin
  select e.* into strict v_ent from sync.entity e join sync.run r on r.entity = e.name where r.id = p_run_id;
  if to_regclass(v_pages) is null then
    return case when to_regclass(v_raw) is null then '{}'::jsonb else sync.cast_raw(p_run_id, p_time_zone, p_keep_last) end;
  end if;
  v_keylist := (select string_agg(format('%I', k), ', ') from unnest(v_ent.key_columns) k);
  if to_regclass(v_raw) is not null then
    execute format('select exists (select 1 from %s)', v_raw) into v_text_rows;
  end if;
  if p_keep_last then
    -- As sync.cast_raw: the last copy of a key the API sent wins, across
    -- typed and text pages alike (a text key compared once typed).
    execute format($q$
      delete from %1$s p where p._sl_line in (
        select d._sl_line from (select _sl_line, row_number() over (partition by %2$s order by _sl_line desc) as n from %1$s) d
         where d.n > 1)$q$, v_pages, v_keylist);
    get diagnostics v_superseded = row_count;
    if v_text_rows then
      v_rawkey := (select string_agg(format('p.%1$I = case when sync._is_valid(r.%1$I, %2$L) then r.%1$I::%3$s end',
                                            k, format_type(a.atttypid, a.atttypmod), format_type(a.atttypid, a.atttypmod)), ' and ')
                     from unnest(v_ent.key_columns) k
                     join pg_attribute a on a.attrelid = v_pages::regclass and a.attname = k);
      execute format('delete from %s p using %s r where r._sl_error is null and r._sl_line > p._sl_line and %s', v_pages, v_raw, v_rawkey);
      get diagnostics v_n = row_count;
      v_superseded := v_superseded + v_n;
      execute format('delete from %s r using %s p where r._sl_error is null and p._sl_line > r._sl_line and %s', v_raw, v_pages, v_rawkey);
      get diagnostics v_n = row_count;
      v_superseded := v_superseded + v_n;
    end if;
  end if;
  if v_text_rows then
    v_cast := sync.cast_raw(p_run_id, p_time_zone, p_keep_last);
  elsif to_regclass(v_raw) is not null then
    execute format('drop table %s', v_raw);
  end if;
  execute format('select exists (select 1 from %s)', v_typed) into v_text_rows;
  if v_text_rows then
    select string_agg(format('%I', a.attname), ', ' order by a.attnum) into v_cols
      from pg_attribute a
     where a.attrelid = v_pages::regclass and a.attnum > 0 and not a.attisdropped and a.attname not in ('_sl_line', '_sl_absent');
    execute format('alter table %s add column if not exists _sl_absent text[]', v_typed);
    execute format('insert into %s (%s, _sl_absent) select %s, _sl_absent from %s', v_typed, v_cols, v_cols, v_pages);
    execute format('drop table %s', v_pages);
  else
    -- No text page: the typed pages become the run's staging as they are.
    execute format('drop table %s', v_typed);
    execute format('alter table %s rename to %I', v_pages, 'run_' || p_run_id);
    execute format('alter table %s drop column _sl_line, add column _sl_quarantined boolean not null default false', v_typed);
  end if;
  execute format('select exists (select 1 from %s where _sl_absent is not null)', v_typed) into v_text_rows;
  if v_text_rows then
    perform sync._keep_absent(v_ent, v_typed::regclass);
  end if;
  execute format('alter table %s drop column _sl_absent', v_typed);
  if v_superseded > 0 then
    update sync.run set detail = detail || jsonb_build_object('superseded', coalesce((detail ->> 'superseded')::bigint, 0) + v_superseded)
     where id = p_run_id;
  end if;
  return v_cast || jsonb_build_object('superseded', coalesce((v_cast ->> 'superseded')::bigint, 0) + v_superseded);
end
$$;
comment on function sync.cast_typed(bigint, text, boolean) is 'Ends the staging of an http crawl that COPYed its pages typed (run_<id>_typed): keeps the last copy of a key across typed and text pages when p_keep_last, types the text pages with sync.cast_raw (quarantining what they hold that their types reject), then makes the typed pages the run''s staging (a rename when no page went through text), the fields a record lacked keeping the target''s values.';

-- Schema drift is judged over the typed pages and the text pages alike.
create or replace function sync.absent_everywhere(p_run_id bigint, p_optional text[] default '{}') returns text[]
  language plpgsql stable
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_from text;
  v_out text[];
begin
  select string_agg(format('select _sl_absent from %s', t), ' union all ') into v_from
    from unnest(array[format('sync_staging.%I', 'run_' || p_run_id || '_raw'), format('sync_staging.%I', 'run_' || p_run_id || '_typed')]) t
   where to_regclass(t) is not null;
  if v_from is null then
    return '{}';
  end if;
  execute format($q$
    with s as materialized (%s)
    select array_agg(c order by c) from (
      select c from s cross join unnest(s._sl_absent) c
       where c <> all ($1) group by c having count(*) = (select count(*) from s)) x$q$, v_from)
    into v_out using coalesce(p_optional, '{}');
  return coalesce(v_out, '{}');
end
$$;
comment on function sync.absent_everywhere(bigint, text[]) is 'The columns whose field is missing from every record a run staged, typed pages and text pages alike (schema drift: the API stopped sending it), less the optional ones.';

-- An interrupted crawl's typed pages are resumed from, as its text pages are.
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
comment on function sync.adopt_raw(bigint) is 'Takes over the pages an interrupted crawl of the entity fetched (its text staging run_<id>_raw, its typed pages run_<id>_typed and its parents), renamed for run p_run_id, when the run just before this one was abandoned with a page to resume from; returns where to resume, or null.';

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
    continue when v_rel.run_id = v_resumable and v_rel.relname ~ '_(raw|typed|parents)$';
    execute format('drop table if exists sync_staging.%I', v_rel.relname);
    v_dropped := v_dropped + 1;
  end loop;
  return v_dropped;
end
$$;
comment on function sync.drop_leftovers(text, bigint) is 'Drops the staging tables of the entity''s ended runs (left by a killed process), but the fetched pages (text or typed) an interrupted crawl just before may resume from and the records kept for nested entities. sync.start_run calls it: the next run of an entity, from any process, cleans up.';
