--! Previous: sha1:b299694ccc0a11aa0019a5712baacc5ca2de5f65
--! Hash: sha1:19b54cfc932e83711efbd6309565f1afdad687d3
--! Message: nested feeds

/*
 * One response feeds several entities. A run of an http entity whose records
 * carry other entities nested in them (a sale and its line items) keeps its
 * fetched records in sync_staging.run_<id>_feed; each nested entity then
 * explodes its records from those feeds in SQL instead of crawling the API
 * again. A feed is dropped once every entity it feeds has taken it.
 */

create or replace function sync.json_at(p_value jsonb, p_path text) returns jsonb
  language sql immutable parallel safe
  set search_path to pg_catalog, public, pg_temp
as $$
  select case
    when p_path is null or p_path = '' then p_value
    -- A key containing a dot is found when it exists literally.
    when jsonb_typeof(p_value) = 'object' and p_value ? p_path then p_value -> p_path
    else p_value #> string_to_array(p_path, '.')
  end
$$;
comment on function sync.json_at(jsonb, text) is 'The value at a dotted path (data.items, lines.0.sku) in a JSON record, as the http source''s field mapping reads it; null when a step is missing.';

create or replace function sync.json_text(p_value jsonb) returns text
  language sql immutable parallel safe
  set search_path to pg_catalog, public, pg_temp
as $$
  select case jsonb_typeof(p_value) when 'string' then p_value #>> '{}' when 'null' then null else p_value::text end
$$;
comment on function sync.json_text(jsonb) is 'A JSON value as the text staged for it: strings as they are, JSON null as null, anything else in its JSON spelling.';

create or replace function sync.keep_feed(p_run_id bigint, p_children text[]) returns void
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
begin
  execute format('create unlogged table sync_staging.%I as select _sl_line, _sl_raw from sync_staging.%I',
                 'run_' || p_run_id || '_feed', 'run_' || p_run_id || '_raw');
  update sync.run set detail = detail || jsonb_build_object('feeds', to_jsonb(p_children)) where id = p_run_id;
end
$$;
comment on function sync.keep_feed(bigint, text[]) is 'Keeps the records a run fetched (sync_staging.run_<id>_feed) for the nested entities named, which read their records from them instead of from the API.';

create or replace function sync.parent_feeds(p_child text, p_parent text) returns bigint[]
  language sql stable
  set search_path to pg_catalog, public, pg_temp
as $$
  with taken as (
    -- The last parent run this entity's records came from.
    select max((r.detail ->> 'parents_upto')::bigint) as upto
      from sync.run r
     where r.entity = p_child and r.status in ('succeeded', 'partial') and not r.dry_run
  ), since as (
    -- Never fed: from the parent's last complete crawl (a first or full run).
    select coalesce((select upto from taken),
                    (select max(r.id) - 1 from sync.run r
                      where r.entity = p_parent and r.status in ('succeeded', 'partial') and not r.dry_run
                        and (r.full_refresh or r.cursor_before is null) and not r.detail ? 'window')) as after
  ), due as (
    select r.id, to_regclass(format('sync_staging.%I', 'run_' || r.id || '_feed')) is not null as kept
      from sync.run r, since
     where r.entity = p_parent and r.status in ('succeeded', 'partial') and not r.dry_run and r.id > since.after
  )
  select case when (select after from since) is null or exists (select 1 from due where not kept) then null
              else coalesce((select array_agg(id order by id) from due), '{}') end
$$;
comment on function sync.parent_feeds(text, text) is 'The runs of p_parent whose kept records p_child has yet to take, oldest first; null when one of them was not kept (or p_child never took any and the parent never completed a crawl): p_child must then crawl the API itself.';

create or replace function sync.feed_nested(p_run_id bigint, p_feeds bigint[], p_spec jsonb) returns bigint
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_path text := p_spec ->> 'path';
  v_pkey text;
  v_feeds text;
  v_cols text;
  v_vals text;
  v_pcols text;
  v_count bigint;
begin
  -- A parent record a run sent twice (it changed between pages): its last copy holds its child set.
  select string_agg(format('sync.json_text(sync.json_at(f._sl_raw, %L))', k ->> 'path'), ', ' order by o),
         string_agg(format('_sl_k%s', o), ', ' order by o)
    into v_pkey, v_pcols
    from jsonb_array_elements(p_spec -> 'parentKey') with ordinality as x(k, o);
  select string_agg(format('select %s::bigint as run_id, _sl_line, _sl_raw from sync_staging.%I', f, 'run_' || f || '_feed'), ' union all ')
    into v_feeds from unnest(p_feeds) f;
  if v_feeds is null then
    return 0;
  end if;
  execute format('create temp table _sl_fed on commit drop as
                    select distinct on (%1$s) %2$s, f.run_id, f._sl_line, f._sl_raw
                      from (%3$s) f order by %1$s, f.run_id desc, f._sl_line desc',
                 v_pkey, (select string_agg(format('sync.json_text(sync.json_at(f._sl_raw, %L)) as _sl_k%s', k ->> 'path', o), ', ' order by o)
                            from jsonb_array_elements(p_spec -> 'parentKey') with ordinality as x(k, o)), v_feeds);
  execute format('insert into sync_staging.%I select distinct %s from _sl_fed', 'run_' || p_run_id || '_parents', v_pcols);
  select string_agg(format('%I', c ->> 'column'), ', ' order by o),
         string_agg(format('sync.json_text(sync.json_at(%s, %L))', case when (c ->> 'parent')::boolean then 'p._sl_raw' else 'i.item' end,
                           c ->> 'path'), ', ' order by o)
    into v_cols, v_vals
    from jsonb_array_elements(p_spec -> 'columns') with ordinality as x(c, o);
  execute format('insert into sync_staging.%I (_sl_line, %s, _sl_raw)
                  select row_number() over (order by p.run_id, p._sl_line, i.n), %s, i.item
                    from _sl_fed p
                    cross join lateral jsonb_array_elements(case when jsonb_typeof(sync.json_at(p._sl_raw, %L)) = ''array''
                                                                 then sync.json_at(p._sl_raw, %L) else ''[]'' end) with ordinality i(item, n)',
                 'run_' || p_run_id || '_raw', v_cols, v_vals, v_path, v_path);
  get diagnostics v_count = row_count;
  drop table _sl_fed;
  update sync.run set detail = detail || jsonb_build_object('fed_by', to_jsonb(p_feeds), 'parents_upto', p_feeds[cardinality(p_feeds)])
   where id = p_run_id and cardinality(p_feeds) > 0;
  return v_count;
end
$$;
comment on function sync.feed_nested(bigint, bigint[], jsonb) is 'Fills a nested entity''s run staging (run_<id>_raw, run_<id>_parents) from the records its parent''s runs kept: every element of the array at spec.path of each parent record (its last copy), with the columns read from the element or, marked parent, from the parent record. Returns the rows staged.';

create or replace function sync.drop_spent_feeds() returns integer
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_feed record;
  v_dropped integer := 0;
begin
  for v_feed in
    select r.id from sync.run r
     where r.detail ? 'feeds'
       and to_regclass(format('sync_staging.%I', 'run_' || r.id || '_feed')) is not null
       and (r.status not in ('running', 'succeeded', 'partial')
            or r.finished_at < now() - interval '7 days'
            -- Spent when no entity it feeds still needs it (an entity gone from the config needs nothing).
            or not exists (select 1 from jsonb_array_elements_text(r.detail -> 'feeds') c join sync.entity e on e.name = c
                            where e.enabled and not exists (
                              select 1 from sync.run x where x.entity = c and x.status in ('succeeded', 'partial')
                                 and not x.dry_run and (x.detail ->> 'parents_upto')::bigint >= r.id)))
  loop
    execute format('drop table if exists sync_staging.%I', 'run_' || v_feed.id || '_feed');
    v_dropped := v_dropped + 1;
  end loop;
  return v_dropped;
end
$$;
comment on function sync.drop_spent_feeds() is 'Drops the kept records of runs every nested entity has taken (and of runs that did not succeed, or older than 7 days: the nested entity then crawls the API itself).';

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
      update sync.run
         set status = 'failed', finished_at = now(),
             error = 'abandoned: the process running it stopped before it finished'
       where id = v_run.id and status = 'running';
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
       and not exists (select 1 from sync.run r where r.status = 'failed' and r.detail ? 'resume'
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
comment on function sync.cleanup() is 'Closes runs left running by a process that died (their entity lock is free), drops the kept records nested entities have taken, and drops staging tables no running run owns. Runs every 10 minutes from the crontab.';
