--! Previous: sha1:ae8429953606d47476370bcdabe1fad1e1a1ee38
--! Hash: sha1:e7055cd9fa6e68813aec2765387f7d22170fb204
--! Message: snapshot doubts, delete guard, raw errors and absent fields

/*
 * Never delete on a doubtful snapshot; one bad value never fails a run
 * (issue 10).
 *
 * - A run's snapshot can be doubtful (sync.run.doubts: a record whose key
 *   could not be read, a CSV whose line endings change, an API crawl that
 *   ended early or was redirected): such a run inserts and updates, deletes
 *   nothing, ends partial and raises a doubtful_snapshot alert.
 * - The delete guard (sync.entity.delete_guard*): a run that would delete
 *   more than a share of the entity's rows (or every row) holds those deletes
 *   in sync.held_delete, merges the rest, ends partial and raises a
 *   deletes_held alert; sync.confirm_deletes(run_id) lets the next run apply
 *   them.
 * - Raw staging carries a per-record error (a value the database cannot
 *   store, an unreadable line) and the fields a record lacked (an absent
 *   field leaves the row's value alone instead of writing NULL).
 * - Rule text (formats, allowed values, column names) reaches the quarantine
 *   messages as data, never as a format() template.
 */

alter table sync.run
  add column if not exists doubts text[] not null default '{}',
  add column if not exists held bigint,
  add column if not exists deletes_confirmed_at timestamptz,
  add column if not exists deletes_confirmed_by text;
comment on column sync.run.doubts is 'Why this run''s snapshot may be incomplete (an unreadable record, a crawl that ended early, line endings that change midway). A mirror run with doubts deletes nothing.';
comment on column sync.run.held is 'Deletes the delete guard held back (too large a share of the entity''s rows, or every row): their keys are in sync.held_delete until confirmed with sync.confirm_deletes(run_id).';
comment on column sync.run.deletes_confirmed_at is 'When the deletes this run held were confirmed (sync.confirm_deletes); the next complete snapshot applies them.';
comment on column sync.run.deletes_confirmed_by is 'Who confirmed the deletes this run held.';

alter table sync.entity
  add column if not exists delete_guard boolean not null default true,
  add column if not exists delete_guard_percent numeric not null default 50,
  add column if not exists delete_guard_rows bigint;
comment on column sync.entity.delete_guard is 'Whether a run that would delete many rows holds those deletes for confirmation (default true). False also lets an empty snapshot empty the target.';
comment on column sync.entity.delete_guard_percent is 'A run that would delete more than this percentage of the entity''s rows (in its tenant) holds its deletes (default 50). Deleting every row is always held while delete_guard is on.';
comment on column sync.entity.delete_guard_rows is 'A run that would delete more than this many rows holds its deletes (default: no limit by count).';

create table if not exists sync.held_delete (
  run_id bigint not null references sync.run (id) on delete cascade,
  key text[] not null,
  primary key (run_id, key)
);
comment on table sync.held_delete is 'The keys whose delete the delete guard held, by the run that held them. Only the latest holding run of an entity keeps its keys (until confirmed and applied).';

create or replace function sync.doubt_snapshot(p_run_id bigint, p_reason text) returns void
  language sql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
  update sync.run set doubts = doubts || p_reason where id = p_run_id and p_reason <> all (doubts)
$$;
comment on function sync.doubt_snapshot(bigint, text) is 'Records why a run''s snapshot may be incomplete; sync.merge then deletes nothing for that run. Called by the sources (an unreadable CSV line, a crawl that ended early).';

create or replace function sync.require_confirmation(p_run_id bigint, p_reason text) returns void
  language sql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
  update sync.run set detail = detail || jsonb_build_object('unverified_deletes', p_reason) where id = p_run_id
$$;
comment on function sync.require_confirmation(bigint, text) is 'Marks a run whose snapshot cannot prove its deletes (an API paged by offset with no way to check): every delete it would make is held for confirmation, whatever the delete guard''s thresholds.';

create or replace function sync.confirm_deletes(p_run_id bigint, p_by text default current_user, p_enqueue boolean default true)
  returns bigint
  language plpgsql volatile security definer
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_run sync.run;
  v_keys bigint;
begin
  select * into v_run from sync.run where id = p_run_id;
  if not found then
    raise exception 'no run %', p_run_id using hint = 'select id, entity, held from sync.run where held > 0 order by id desc';
  end if;
  select count(*) into v_keys from sync.held_delete where run_id = p_run_id;
  if v_keys = 0 then
    raise exception 'run % of % holds no deletes awaiting confirmation', p_run_id, v_run.entity
      using hint = 'only the latest run that held deletes keeps them: select id, held, deletes_confirmed_at from sync.run where entity = '
                   || quote_literal(v_run.entity) || ' and held > 0 order by id desc';
  end if;
  update sync.run set deletes_confirmed_at = now(), deletes_confirmed_by = coalesce(p_by, current_user) where id = p_run_id;
  update sync.alert set acknowledged_at = now(), acknowledged_by = coalesce(p_by, current_user)
   where entity = v_run.entity and kind = 'deletes_held' and resolved_at is null and acknowledged_at is null;
  if p_enqueue then
    perform sync.request(v_run.entity, v_run.full_refresh);
  end if;
  return v_keys;
end
$$;
comment on function sync.confirm_deletes(bigint, text, boolean) is 'Confirms the deletes a run held (the source really lost those rows): the next complete snapshot of the entity deletes them, whatever the delete guard says. Queues that run for the worker unless p_enqueue is false. Returns the number of keys confirmed.';

create or replace function sync.json_has(p_value jsonb, p_path text) returns boolean
  language sql immutable parallel safe
  set search_path to pg_catalog, public, pg_temp
as $$
  select case
    when p_path is null or p_path = '' then true
    when jsonb_typeof(p_value) = 'object' and p_value ? p_path then true
    else (p_value #> string_to_array(p_path, '.')) is not null
  end
$$;
comment on function sync.json_has(jsonb, text) is 'Whether a JSON record has a value (JSON null included) at a dotted path: a field absent from a record is not a null.';

create or replace function sync.create_raw_staging(p_run_id bigint) returns text
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_cols text;
begin
  select string_agg(format('%I text', a.attname), ', ' order by a.attnum) into v_cols
    from pg_attribute a
   where a.attrelid = format('sync_staging.%I', 'run_' || p_run_id)::regclass
     and a.attnum > 0 and not a.attisdropped and a.attname <> '_sl_quarantined';
  execute format('create unlogged table sync_staging.%I (_sl_line bigint not null, %s, _sl_raw jsonb, _sl_error text, _sl_absent text[])',
                 'run_' || p_run_id || '_raw', v_cols);
  return format('sync_staging.%I', 'run_' || p_run_id || '_raw');
end
$$;
comment on function sync.create_raw_staging(bigint) is 'For sources whose values arrive as text (CSV, HTTP): creates sync_staging.run_<id>_raw with a text column for every column of the run''s staging table, the record''s line (or ordinal), its raw form, the reason it cannot be loaded as it is (_sl_error) and the fields it lacked (_sl_absent).';

create or replace function sync.absent_everywhere(p_run_id bigint, p_optional text[] default '{}') returns text[]
  language plpgsql stable
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_raw text := format('sync_staging.%I', 'run_' || p_run_id || '_raw');
  v_out text[];
begin
  execute format($q$
    select array_agg(c order by c) from (
      select c from %1$s r cross join unnest(r._sl_absent) c
       where c <> all ($1) group by c having count(*) = (select count(*) from %1$s)) x$q$, v_raw)
    into v_out using coalesce(p_optional, '{}');
  return coalesce(v_out, '{}');
end
$$;
comment on function sync.absent_everywhere(bigint, text[]) is 'The columns whose field is missing from every record a run staged (schema drift: the API stopped sending it), less the optional ones.';

-- Raw text → typed staging. Records carrying an error, values their type
-- rejects: quarantined with the reason, kept (flagged) by their key when it
-- is readable. Absent fields take the target's current value.
create or replace function sync.cast_raw(p_run_id bigint, p_time_zone text default null, p_keep_last boolean default false) returns jsonb
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_ent sync.entity;
  v_raw text := format('sync_staging.%I', 'run_' || p_run_id || '_raw');
  v_typed text := format('sync_staging.%I', 'run_' || p_run_id);
  v_cols text[];
  v_types text[];
  v_keys text[];
  v_key text;
  v_keylist text;
  v_keyvalid text;
  v_collist text;
  v_casts text;
  v_keycasts text;
  v_row record;
  v_reason text;
  v_i integer;
  v_bad bigint := 0;
  v_unkeyed bigint := 0;
  v_loaded bigint;
  v_superseded bigint := 0;
  v_absent boolean;
begin
  select e.* into strict v_ent from sync.entity e join sync.run r on r.entity = e.name where r.id = p_run_id;
  -- Text without an offset means the source's local time; text with one keeps it.
  if p_time_zone is not null then
    perform set_config('timezone', p_time_zone, true);
  end if;
  select array_agg(a.attname::text order by a.attnum), array_agg(format_type(a.atttypid, a.atttypmod) order by a.attnum)
    into v_cols, v_types
    from pg_attribute a
   where a.attrelid = v_typed::regclass and a.attnum > 0 and not a.attisdropped
     and a.attname not in ('_sl_quarantined', '_sl_absent');
  v_keys := v_ent.key_columns;
  v_key := format('array[%s]', (select string_agg(format('r.%I', k), ', ') from unnest(v_keys) k));
  v_keylist := (select string_agg(format('%I', k), ', ') from unnest(v_keys) k);
  v_collist := (select string_agg(format('%I', c), ', ') from unnest(v_cols) c);
  v_casts := (select string_agg(format('r.%I::%s', c, t), ', ') from unnest(v_cols, v_types) x(c, t));
  v_keycasts := (select string_agg(format('r.%I::%s', c, t), ', ') from unnest(v_cols, v_types) x(c, t) where c = any (v_keys));
  execute format('select exists (select 1 from %s where _sl_absent is not null)', v_raw) into v_absent;
  if v_absent then
    execute format('alter table %s add column if not exists _sl_absent text[]', v_typed);
    v_collist := v_collist || ', _sl_absent';
    v_casts := v_casts || ', r._sl_absent';
  end if;
  if p_keep_last then
    -- An API that pages by version sends a record again when it changes
    -- during the crawl: the later copy supersedes the earlier one, which is
    -- not counted as fetched (sync.run.detail.superseded says how many).
    -- (A window function, not a self-join: `is not distinct from` cannot hash,
    -- and the self-join went quadratic.)
    execute format($q$
      delete from %1$s r where r._sl_line in (
        select d._sl_line from (select _sl_line, row_number() over (partition by %2$s order by _sl_line desc) as n from %1$s
                                 where _sl_error is null) d
         where d.n > 1)$q$,
      v_raw, v_keylist);
    get diagnostics v_superseded = row_count;
  end if;

  -- Records the source could not hand over whole (an unreadable line, a
  -- value the database cannot store): quarantined with their reason.
  v_keyvalid := (select string_agg(format('r.%1$I is not null and sync._is_valid(r.%1$I, %2$L)', c, t), ' and ')
                   from unnest(v_cols, v_types) x(c, t) where c = any (v_keys));
  execute format($q$
    insert into sync.run_error (run_id, entity, key, category, message, payload)
    select %1$s, %2$L, case when %5$s then %3$s end, 'validation', r._sl_error, r._sl_raw
      from %4$s r where r._sl_error is not null$q$,
    p_run_id, v_ent.name, v_key, v_raw, v_keyvalid);
  get diagnostics v_bad = row_count;
  execute format('insert into %s (%s, _sl_quarantined) select %s, true from %s r where r._sl_error is not null and %s',
                 v_typed, v_keylist, v_keycasts, v_raw, v_keyvalid);
  get diagnostics v_loaded = row_count;
  v_unkeyed := v_bad - v_loaded;
  execute format('delete from %s where _sl_error is not null', v_raw);

  if current_setting('server_version_num')::int >= 160000 then
    -- Set-based: find every value its column's type rejects, quarantine
    -- those records with the reason, load the rest in one statement.
    execute format($q$
      create temp table _sl_rejects on commit drop as
      select r._sl_line, min(format('line %%s, column %%s: %%s', r._sl_line, c.name, (pg_input_error_info(c.value, c.type)).message)) as reason
        from %1$s r
        cross join lateral (values %2$s) as c(name, value, type)
       where c.value is not null and not pg_input_is_valid(c.value, c.type)
       group by r._sl_line$q$,
      v_raw,
      (select string_agg(format('(%L, r.%I, %L)', c, c, t), ', ') from unnest(v_cols, v_types) x(c, t)));
    execute format($q$
      insert into sync.run_error (run_id, entity, key, category, message, payload)
      select %1$s, %2$L, %3$s, 'validation', j.reason, r._sl_raw
        from %4$s r join _sl_rejects j using (_sl_line)$q$,
      p_run_id, v_ent.name, v_key, v_raw);
    get diagnostics v_i = row_count;
    v_bad := v_bad + v_i;
    -- A rejected record whose key is valid stays in staging, flagged, so a
    -- mirror run does not delete the target row it would have replaced.
    execute format($q$
      insert into %1$s (%2$s, _sl_quarantined)
      select %3$s, true from %4$s r join _sl_rejects j using (_sl_line)
       where %5$s$q$,
      v_typed, v_keylist, v_keycasts, v_raw,
      (select string_agg(format('r.%1$I is not null and pg_input_is_valid(r.%1$I, %2$L)', c, t), ' and ')
         from unnest(v_cols, v_types) x(c, t) where c = any (v_keys)));
    get diagnostics v_loaded = row_count;
    v_unkeyed := v_unkeyed + v_i - v_loaded;
    execute format('insert into %s (%s) select %s from %s r where not exists (select 1 from _sl_rejects j where j._sl_line = r._sl_line)',
                   v_typed, v_collist, v_casts, v_raw);
    drop table _sl_rejects;
  else
    -- PostgreSQL 15 has no pg_input_is_valid: try the whole load, and only
    -- when a value is rejected go record by record to find which.
    begin
      execute format('insert into %s (%s) select %s from %s r', v_typed, v_collist, v_casts, v_raw);
    exception when data_exception then
      for v_row in execute format('select r._sl_line from %s r order by r._sl_line', v_raw) loop
        begin
          execute format('insert into %s (%s) select %s from %s r where r._sl_line = $1', v_typed, v_collist, v_casts, v_raw)
            using v_row._sl_line;
        exception when data_exception then
          v_reason := sqlerrm;
          -- Name the column, as the set-based path does: try each value alone.
          for v_i in 1 .. cardinality(v_cols) loop
            begin
              execute format('select r.%I::%s from %s r where r._sl_line = $1', v_cols[v_i], v_types[v_i], v_raw)
                using v_row._sl_line;
            exception when data_exception then
              v_reason := format('column %s: %s', v_cols[v_i], sqlerrm);
              exit;
            end;
          end loop;
          execute format($q$
            insert into sync.run_error (run_id, entity, key, category, message, payload)
            select %1$s, %2$L, %3$s, 'validation', format('line %%s, %%s', r._sl_line, %4$L), r._sl_raw
              from %5$s r where r._sl_line = $1$q$,
            p_run_id, v_ent.name, v_key, v_reason, v_raw) using v_row._sl_line;
          v_bad := v_bad + 1;
          begin
            execute format('insert into %s (%s, _sl_quarantined) select %s, true from %s r where r._sl_line = $1',
                           v_typed, v_keylist, v_keycasts, v_raw)
              using v_row._sl_line;
          exception when data_exception or not_null_violation then
            v_unkeyed := v_unkeyed + 1;
          end;
        end;
      end loop;
    end;
  end if;
  if v_absent then
    perform sync._keep_absent(v_ent, v_typed::regclass);
    execute format('alter table %s drop column _sl_absent', v_typed);
  end if;
  update sync.run set detail = detail || jsonb_build_object('unkeyed_rejects',
           coalesce((detail ->> 'unkeyed_rejects')::bigint, 0) + v_unkeyed)
           || case when v_superseded > 0
                   then jsonb_build_object('superseded', coalesce((detail ->> 'superseded')::bigint, 0) + v_superseded)
                   else '{}' end
   where id = p_run_id;
  execute format('drop table %s', v_raw);
  return jsonb_build_object('rejected', v_bad, 'unkeyed', v_unkeyed, 'superseded', v_superseded);
end
$$;
comment on function sync.cast_raw(bigint, text, boolean) is 'Moves a run''s text staging (run_<id>_raw) into its typed staging: each value is cast to its target column''s type (text without an offset read in p_time_zone); a record with a value its type rejects, or that the source could not hand over (_sl_error), is quarantined with the line, the column and the reason, and kept, flagged, by its key so a mirror run does not delete it. A field absent from a record (_sl_absent) keeps the target''s value. p_keep_last keeps only the last record of a key (an API paging by version sends a changed record again).';

create or replace function sync._is_valid(p_value text, p_type text) returns boolean
  language plpgsql stable
  set search_path to pg_catalog, public, pg_temp
as $$
begin
  if current_setting('server_version_num')::int >= 160000 then
    return pg_input_is_valid(p_value, p_type);
  end if;
  begin
    execute format('select %L::%s', p_value, p_type);
    return true;
  exception when data_exception then
    return false;
  end;
end
$$;
comment on function sync._is_valid(text, text) is 'Whether a text is a valid value of a type (pg_input_is_valid on PostgreSQL 16+, a guarded cast before).';

create or replace function sync._keep_absent(p_ent sync.entity, p_s regclass) returns void
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_c text;
  v_t regclass := format('%I.%I', p_ent.target_schema, p_ent.target_table)::regclass;
  v_scope text := 'true';
begin
  if p_ent.tenant_column is not null then
    v_scope := format('t.%I = %L', p_ent.tenant_column, p_ent.tenant_value);
  end if;
  for v_c in execute format('select distinct c from %s s cross join unnest(s._sl_absent) c', p_s) loop
    continue when v_c = any (p_ent.key_columns)
               or not exists (select 1 from pg_attribute a where a.attrelid = p_s and a.attname = v_c and not a.attisdropped);
    execute format('update %1$s s set %2$I = t.%2$I from %3$s t where %4$s and %5$s and s._sl_absent @> array[%6$L]',
                   p_s, v_c, v_t, sync._join(p_ent.key_columns, 't', 's'), v_scope, v_c);
  end loop;
end
$$;
comment on function sync._keep_absent(sync.entity, regclass) is 'A field a record lacked is not a null: its staged value becomes the target row''s current one, so the merge leaves it alone.';

-- Every copy of a repeated key counts, even one already quarantined for a bad value.
create or replace function sync._quarantine(p_run_id bigint, p_ent sync.entity, p_s regclass, p_rel regclass, p_cols text[])
  returns void
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_key text := sync._key_array(p_ent.key_columns, 's');
  v_keys text := (select string_agg(format('s.%I', k), ', ') from unnest(p_ent.key_columns) k);
  v_fk record;
  v_parent_on text;
  -- Records the source marks deleted are never written: the target's rules do not apply to them.
  v_live text := case when p_ent.tombstone_column = any (p_cols) and p_ent.mode <> 'soft-delete'
                      then format('s.%I is null', p_ent.tombstone_column) else 'true' end;
begin
  -- Flagged rows stay in staging, so a mirror run does not delete the
  -- target rows they would have replaced.
  execute format($q$
    with bad as (
      update %1$s s set _sl_quarantined = true where %2$s returning s.*)
    insert into sync.run_error (run_id, entity, key, category, message, payload)
    select %3$s, %4$L, %5$s, 'validation', 'a key column is null', to_jsonb(s.*) - '_sl_quarantined' from bad s$q$,
    p_s, (select string_agg(format('s.%I is null', k), ' or ') from unnest(p_ent.key_columns) k),
    p_run_id, p_ent.name, v_key);

  -- A source that guarantees unique keys (a table with a unique index on
  -- them; the runner checks) needs no search for repeats. Copies already
  -- quarantined (a value their type rejects) count as copies too. Otherwise group on
  -- the key columns themselves: a jsonb of them costs twice as much.
  if not coalesce((select (r.detail ->> 'source_unique_key')::boolean from sync.run r where r.id = p_run_id), false) then
  execute format($q$
    with dup as (
      select %3$s, count(*) as _sl_n from %1$s s where %7$s group by %3$s having count(*) > 1),
    bad as (
      update %1$s s set _sl_quarantined = true from dup d where %2$s and not s._sl_quarantined returning s.*, d._sl_n)
    insert into sync.run_error (run_id, entity, key, category, message, payload)
    select %4$s, %5$L, %6$s, 'integrity', format('the source has %%s records with this key; none of them was merged', s._sl_n),
           to_jsonb(s.*) - '_sl_quarantined' - '_sl_n' from bad s$q$,
    p_s, sync._join(p_ent.key_columns, 's', 'd'), v_keys, p_run_id, p_ent.name, v_key,
    (select string_agg(format('s.%I is not null', k), ' and ') from unnest(p_ent.key_columns) k));
  end if;

  if p_ent.tenant_column is not null and p_ent.tenant_column = any (p_cols) then
    execute format($q$
      with bad as (
        update %1$s s set _sl_quarantined = true
         where not s._sl_quarantined and s.%2$I is distinct from %3$L returning s.*)
      insert into sync.run_error (run_id, entity, key, category, message, payload)
      select %4$s, %5$L, %6$s, 'integrity',
             format('the record belongs to tenant %%s but the entity is scoped to tenant %%s', s.%2$I, %3$L),
             to_jsonb(s.*) - '_sl_quarantined' from bad s$q$,
      p_s, p_ent.tenant_column, p_ent.tenant_value, p_run_id, p_ent.name, v_key);
    if p_ent.tenant_column <> all (p_ent.key_columns) then
      -- The key alone identifies a row: another tenant may hold it already.
      execute format($q$
        with bad as (
          update %1$s s set _sl_quarantined = true
            from %2$s t where not s._sl_quarantined and %3$s and t.%4$I is distinct from %5$L returning s.*, t.%4$I as _sl_owner)
        insert into sync.run_error (run_id, entity, key, category, message, payload)
        select %6$s, %7$L, %8$s, 'integrity',
               format('the key already belongs to tenant %%s in the target; the entity is scoped to tenant %%s', s._sl_owner, %5$L),
               to_jsonb(s.*) - '_sl_quarantined' - '_sl_owner' from bad s$q$,
        p_s, p_rel, sync._join(p_ent.key_columns, 't', 's'), p_ent.tenant_column, p_ent.tenant_value,
        p_run_id, p_ent.name, v_key);
    end if;
  end if;

  -- The target's own rules on synced columns: a required (NOT NULL) column
  -- left empty, a CHECK constraint broken. Either would fail the whole merge.
  for v_fk in
    select c.name as col from unnest(p_cols) c(name)
      join pg_attribute a on a.attrelid = p_rel and a.attname = c.name
     where a.attnotnull and c.name <> all (p_ent.key_columns)
  loop
    execute format($q$
      with bad as (update %1$s s set _sl_quarantined = true where not s._sl_quarantined and %7$s and s.%2$I is null returning s.*)
      insert into sync.run_error (run_id, entity, key, category, message, payload)
      select %3$s, %4$L, %5$s, 'validation', %6$L, to_jsonb(s.*) - '_sl_quarantined' from bad s$q$,
      p_s, v_fk.col, p_run_id, p_ent.name, v_key, format('%s is required but empty', v_fk.col), v_live);
  end loop;
  for v_fk in
    select c.conname, pg_get_expr(c.conbin, c.conrelid) as expr
      from pg_constraint c
     where c.conrelid = p_rel and c.contype = 'c'
       and (select array_agg(a.attname::text) from pg_attribute a where a.attrelid = p_rel and a.attnum = any (c.conkey)) <@ p_cols
  loop
    execute format($q$
      with bad as (update %1$s s set _sl_quarantined = true where not s._sl_quarantined and %7$s and (%2$s) is false returning s.*)
      insert into sync.run_error (run_id, entity, key, category, message, payload)
      select %3$s, %4$L, %5$s, 'validation', %6$L, to_jsonb(s.*) - '_sl_quarantined' from bad s$q$,
      p_s, v_fk.expr, p_run_id, p_ent.name, v_key, format('breaks the check %s: %s', v_fk.conname, v_fk.expr), v_live);
  end loop;

  -- A record whose parent row (a foreign key of the target, on synced
  -- columns) is missing would fail the whole merge. A table referencing
  -- itself may find the parent among the staged rows. A dry run of several
  -- entities previews a child against parents that the same preview would
  -- insert: those parent tables are taken on trust.
  for v_fk in
    select c.confrelid::regclass as parent, c.confrelid = p_rel as self,
           array_agg(ca.attname::text order by k.ord) as cols, array_agg(pa.attname::text order by k.ord) as pcols
      from pg_constraint c
      cross join lateral unnest(c.conkey, c.confkey) with ordinality as k(ck, pk, ord)
      join pg_attribute ca on ca.attrelid = c.conrelid and ca.attnum = k.ck
      join pg_attribute pa on pa.attrelid = c.confrelid and pa.attnum = k.pk
     where c.contype = 'f' and c.conrelid = p_rel
     group by c.oid, c.confrelid
  loop
    continue when not (v_fk.cols <@ p_cols);
    continue when (select r.dry_run and coalesce(r.detail -> 'unchecked_parents' @> to_jsonb(v_fk.parent::oid), false)
                     from sync.run r where r.id = p_run_id);
    v_parent_on := (select string_agg(format('p.%I = s.%I', pc, c), ' and ') from unnest(v_fk.pcols, v_fk.cols) x(pc, c));
    execute format($q$
      with bad as (
        update %1$s s set _sl_quarantined = true
         where not s._sl_quarantined and %2$s
           and not exists (select 1 from %3$s p where %4$s) %5$s and %11$s
        returning s.*)
      insert into sync.run_error (run_id, entity, key, category, message, payload)
      select %6$s, %7$L, %8$s, 'integrity', format('references a row of %%s that does not exist: %%s', %9$L, %10$s),
             to_jsonb(s.*) - '_sl_quarantined' from bad s$q$,
      p_s,
      (select string_agg(format('s.%I is not null', c), ' and ') from unnest(v_fk.cols) c),
      v_fk.parent, v_parent_on,
      case when v_fk.self then format('and not exists (select 1 from %s p where not p._sl_quarantined and %s)', p_s, v_parent_on)
           else '' end,
      p_run_id, p_ent.name, v_key, v_fk.parent::text,
      (select format('jsonb_build_object(%s)', string_agg(format('%L, s.%I', c, c), ', ')) from unnest(v_fk.cols) c),
      v_live);
  end loop;
end
$$;

-- Rule text is data: every message is concat() of literals and the value,
-- never a format() template (a regex holding % broke the run).
create or replace function sync._check_rules(p_run_id bigint, p_ent sync.entity, p_s regclass, p_rel regclass, p_cols text[])
  returns void
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_rules jsonb := coalesce(p_ent.definition -> 'validate', '{}');
  v_version text := p_ent.definition #>> '{version,column}';
  v_c text;
  v_v jsonb;
  v_ref text[];
  v_ref_rel regclass;
  v_same boolean;
begin
  for v_c in select jsonb_array_elements_text(coalesce(v_rules -> 'required', '[]'))
             union all select jsonb_object_keys(coalesce(v_rules -> 'formats', '{}'))
             union all select jsonb_object_keys(coalesce(v_rules -> 'allowed', '{}'))
             union all select jsonb_object_keys(coalesce(v_rules -> 'references', '{}'))
             union all select v_version where v_version is not null loop
    if v_c <> all (p_cols) then
      raise exception 'entity %: a validate or version rule names column %, which this entity does not sync', p_ent.name, v_c
        using hint = 'add the column to the entity''s columns, or fix the rule';
    end if;
  end loop;
  for v_c in select jsonb_array_elements_text(coalesce(v_rules -> 'required', '[]')) loop
    perform sync._flag(p_run_id, p_ent, p_s, format('s.%1$I is null or btrim(s.%1$I::text) = %2$L', v_c, ''), 'validation',
                       format('%L', v_c || ' is required but empty'));
  end loop;
  for v_c, v_v in select * from jsonb_each(coalesce(v_rules -> 'formats', '{}')) loop
    perform sync._flag(p_run_id, p_ent, p_s, format('s.%1$I is not null and s.%1$I::text !~ %2$L', v_c, v_v #>> '{}'), 'validation',
                       format('concat(%L, s.%I::text, %L)', v_c || ' "', v_c, '" does not match the format ' || (v_v #>> '{}')));
  end loop;
  for v_c, v_v in select * from jsonb_each(coalesce(v_rules -> 'allowed', '{}')) loop
    perform sync._flag(p_run_id, p_ent, p_s,
      format('s.%1$I is not null and s.%1$I::text <> all (%2$L::text[])', v_c, array(select jsonb_array_elements_text(v_v))), 'validation',
      format('concat(%L, s.%I::text, %L)', v_c || ' "', v_c,
             '" is not one of the allowed values: ' || array_to_string(array(select jsonb_array_elements_text(v_v)), ', ')));
  end loop;
  for v_c, v_v in select * from jsonb_each(coalesce(v_rules -> 'references', '{}')) loop
    v_ref := string_to_array(v_v #>> '{}', '.');
    if cardinality(v_ref) = 2 then
      v_ref := array['public'] || v_ref;
    end if;
    v_ref_rel := to_regclass(format('%I.%I', v_ref[1], v_ref[2]));
    if v_ref_rel is null then
      raise exception 'entity %: references rule on % names table %.%, which does not exist', p_ent.name, v_c, v_ref[1], v_ref[2]
        using hint = 'write "schema.table.column" of an existing table';
    end if;
    select (select atttypid from pg_attribute where attrelid = v_ref_rel and attname = v_ref[3] and not attisdropped)
           = (select atttypid from pg_attribute where attrelid = p_s and attname = v_c)
      into v_same;
    if v_same is null then
      raise exception 'entity %: references rule on % names column % of %.%, which does not exist', p_ent.name, v_c, v_ref[3], v_ref[1], v_ref[2]
        using hint = 'write "schema.table.column" of an existing column';
    end if;
    -- The same type compares directly (and can use the referenced table's index).
    perform sync._flag(p_run_id, p_ent, p_s,
      format('s.%1$I is not null and not exists (select 1 from %2$s r where %3$s)', v_c, v_ref_rel,
             case when v_same then format('r.%I = s.%I', v_ref[3], v_c) else format('r.%I::text = s.%I::text', v_ref[3], v_c) end),
      'integrity', format('concat(%L, s.%I::text, %L)', v_c || ' "', v_c, '" has no match in ' || (v_v #>> '{}')));
  end loop;
  if v_version is not null then
    -- Optimistic locking: a record older than the target's row is a conflict, not an update.
    perform sync._flag(p_run_id, p_ent, p_s,
      format('%s and t.%I > s.%I', sync._join(p_ent.key_columns, 't', 's'), v_version, v_version), 'integrity',
      format('concat(%L, t.%I::text, %L, s.%I::text, %L)', 'conflict: the target holds a newer ' || v_version || ' (', v_version,
             ') than the source (', v_version, '); not applied'),
      format('from %s t', p_rel));
  end if;
end
$$;
comment on function sync._check_rules(bigint, sync.entity, regclass, regclass, text[]) is 'Second step of sync.merge: the entity''s validate rules (required, formats, allowed, references) and version check; failing records are quarantined with the rule they broke.';

-- The deletes of a snapshot run, judged before any is made: none on a
-- doubtful snapshot; held for confirmation past the delete guard.
create or replace function sync._judge_deletes(p_run sync.run, p_ent sync.entity, p_t text, p_scope text, p_doubtful boolean)
  returns jsonb
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_tk text := format('array[%s]', (select string_agg(format('_sl_tk%s::text', i), ', ')
                                      from generate_series(1, cardinality(p_ent.key_columns)) i));
  v_missing bigint;
  v_confirmed bigint := 0;
  v_unconfirmed bigint;
  v_total bigint;
  v_reason text := p_run.detail ->> 'unverified_deletes';
  v_held bigint := 0;
  v_kept bigint := 0;
begin
  if p_doubtful then
    update _sl_diff set _sl_action = 'kept' where _sl_action = 'delete' and _sl_quarantined is null;
    get diagnostics v_kept = row_count;
    return jsonb_build_object('kept', v_kept);
  end if;
  select count(*) into v_missing from _sl_diff where _sl_action = 'delete' and _sl_quarantined is null;
  if v_missing = 0 or not (p_ent.delete_guard or v_reason is not null) then
    return jsonb_build_object('held', 0);
  end if;
  -- Keys an operator confirmed (sync.confirm_deletes) go whatever the guard says.
  create temp table _sl_confirmed on commit drop as
    select distinct h.key from sync.held_delete h join sync.run r on r.id = h.run_id
     where r.entity = p_ent.name and r.deletes_confirmed_at is not null;
  execute format('select count(*) from _sl_diff d where d._sl_action = %L and d._sl_quarantined is null and %s in (select key from _sl_confirmed)',
                 'delete', v_tk) into v_confirmed;
  v_unconfirmed := v_missing - v_confirmed;
  if v_unconfirmed > 0 and v_reason is null then
    execute format('select count(*) from %s t where %s', p_t,
                   p_scope || case when p_ent.mode = 'soft-delete' then format(' and t.%I is null', p_ent.soft_delete_column) else '' end)
      into v_total;
    v_reason := case
      when v_unconfirmed >= v_total then
        format('the snapshot holds none of the %s rows of %s it would delete: an empty or unrelated snapshot deletes nothing unconfirmed',
               v_total, p_ent.name)
      when v_unconfirmed * 100.0 > p_ent.delete_guard_percent * v_total then
        format('it would delete %s of %s rows (%s%%), above the delete guard of %s%%', v_unconfirmed, v_total,
               round(v_unconfirmed * 100.0 / v_total, 1), p_ent.delete_guard_percent)
      when v_unconfirmed > p_ent.delete_guard_rows then
        format('it would delete %s rows, above the delete guard of %s rows', v_unconfirmed, p_ent.delete_guard_rows)
    end;
  end if;
  if v_unconfirmed > 0 and v_reason is not null then
    execute format('update _sl_diff d set _sl_action = %L where d._sl_action = %L and d._sl_quarantined is null and %s not in (select key from _sl_confirmed)',
                   'held', 'delete', v_tk);
    get diagnostics v_held = row_count;
    if not p_run.dry_run then
      -- Only the latest holding run keeps its keys (and confirmed ones wait to be applied).
      delete from sync.held_delete h using sync.run r
       where r.id = h.run_id and r.entity = p_ent.name and r.deletes_confirmed_at is null;
      execute format('insert into sync.held_delete (run_id, key) select %s, %s from _sl_diff where _sl_action = %L on conflict do nothing',
                     p_run.id, v_tk, 'held');
    end if;
  end if;
  drop table _sl_confirmed;
  return jsonb_build_object('held', v_held, 'confirmed', v_confirmed, 'reason', case when v_held > 0 then v_reason end);
end
$$;
comment on function sync._judge_deletes(sync.run, sync.entity, text, text, boolean) is 'Step of sync.merge before any write: on a doubtful snapshot keeps every row the snapshot lacks (no deletes); otherwise holds the deletes past the entity''s delete guard (or all of them when the source cannot prove them), keeping their keys in sync.held_delete, and lets confirmed keys go.';

-- The merge judges its deletes (doubtful snapshot, delete guard) before writing, and times its real end.
create or replace function sync.merge(p_run_id bigint) returns jsonb
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
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
   where a.attrelid = v_s::regclass and a.attnum > 0 and not a.attisdropped and a.attname <> '_sl_quarantined';
  v_vals := array(select c from unnest(v_cols) c where c <> all (v_ent.key_columns));
  v_on := sync._join(v_ent.key_columns, 't', 's');
  v_key := sync._key_array(v_ent.key_columns, 's');
  if v_ent.tenant_column is not null then
    v_scope := format('t.%I = %L', v_ent.tenant_column, v_ent.tenant_value);
  end if;
  -- An incremental run sees only changed rows, so only a full snapshot may
  -- conclude that a missing row was deleted.
  v_snapshot := v_ent.cursor_column is null or v_run.full_refresh;
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
  if v_ent.tombstone_column = any (v_cols) and v_ent.mode <> 'soft-delete' then
    -- A record the source marks deleted deletes its row, snapshot or not.
    v_tomb := format('s.%I is not null', v_ent.tombstone_column);
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
         unchanged = v_fetched - v_quarantined - v_ins - v_upd,
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
  return v_result;
end
$$;

comment on function sync.merge(bigint) is 'Merges a run''s staged rows into the target in the caller''s transaction: quarantines records that cannot be merged (null or repeated key, another tenant, missing parent, a broken validate rule, an older version), computes the diff in one pass, then inserts, updates only rows that differ, deletes (mirror) or stamps (soft-delete) rows missing from a full snapshot within the tenant, logs every change, advances the cursor. A dry run computes the same counts and a sample and writes nothing to the target.';

create or replace function sync._snapshot_alerts(p_run_id bigint, p_entity text, p_deletes boolean, p_full boolean,
  p_doubtful boolean, p_held bigint, p_doubts text[], p_reason text) returns void
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
begin
  if p_doubtful then
    perform sync.raise_alert('doubtful_snapshot', 'warning', p_entity,
      format('run %s of %s deleted nothing: its snapshot may be incomplete (%s). Fix what the reasons name (see select * from sync.run_error where run_id = %s); the next complete snapshot deletes what is really gone',
             p_run_id, p_entity, array_to_string(p_doubts, '; '), p_run_id),
      jsonb_build_object('run_id', p_run_id, 'doubts', to_jsonb(p_doubts)));
  elsif p_full then
    perform sync.resolve_alerts(p_entity, array['doubtful_snapshot']);
  end if;
  if p_held > 0 then
    perform sync.raise_alert('deletes_held', 'warning', p_entity,
      format('run %s of %s held %s deletes: %s. Everything else merged. If the source really lost those rows, confirm with select sync.confirm_deletes(%s) in psql or syncline sync %s --confirm-deletes; to change the guard, set deleteGuard in the config (or update sync.entity set delete_guard_percent = … where name = %L)',
             p_run_id, p_entity, p_held, p_reason, p_run_id, p_entity, p_entity),
      jsonb_build_object('run_id', p_run_id, 'held', p_held, 'reason', p_reason));
  elsif p_full and not p_doubtful then
    perform sync.resolve_alerts(p_entity, array['deletes_held']);
  end if;
end
$$;
comment on function sync._snapshot_alerts(bigint, text, boolean, boolean, boolean, bigint, text[], text) is 'Raises or resolves the doubtful_snapshot and deletes_held alerts after a merge: a complete snapshot with nothing held resolves them.';

comment on column sync.alert.kind is 'consecutive_failures, gap, stale, integrity, throughput, resync_failed, doubtful_snapshot (a mirror run deleted nothing because its snapshot may be incomplete) or deletes_held (the delete guard held deletes awaiting sync.confirm_deletes).';

-- The delete guard's tunables are checked like the others.
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
  if new.delete_guard_percent is null or new.delete_guard_percent = 'NaN' or new.delete_guard_percent not between 0 and 100 then
    raise exception 'entity %: delete_guard_percent % is not between 0 and 100', new.name, new.delete_guard_percent
      using errcode = '23514', hint = 'the share of the entity''s rows a run may delete without confirmation, e.g. 50; set delete_guard = false to turn the guard off';
  end if;
  if new.delete_guard_rows < 0 then
    raise exception 'entity %: delete_guard_rows % is negative', new.name, new.delete_guard_rows
      using errcode = '23514', hint = 'the number of rows a run may delete without confirmation, or null for no limit by count';
  end if;
  if new.retry_delay < interval '10 seconds' then
    raise exception 'entity %: retry_delay % is below the minimum of 10 seconds', new.name, new.retry_delay
      using errcode = '23514', hint = 'e.g. ''5 minutes''';
  end if;
  return new;
end
$$;

-- Nested items: a field an item lacks is recorded as absent, not null.
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
  v_absent text;
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
                           c ->> 'path'), ', ' order by o),
         -- A field an item lacks is not a null (unless the API leaves empty fields out).
         case when coalesce((p_spec ->> 'keepAbsent')::boolean, false)
              then format('nullif(array_remove(array[%s]::text[], null), ''{}'')',
                          coalesce(string_agg(format('case when not sync.json_has(i.item, %L) then %L end', c ->> 'path', c ->> 'column'), ', ' order by o)
                                     filter (where not coalesce((c ->> 'parent')::boolean, false)), ''))
              else 'null::text[]' end
    into v_cols, v_vals, v_absent
    from jsonb_array_elements(p_spec -> 'columns') with ordinality as x(c, o);
  execute format('insert into sync_staging.%I (_sl_line, %s, _sl_raw, _sl_absent)
                  select row_number() over (order by p.run_id, p._sl_line, i.n), %s, i.item, %s
                    from _sl_fed p
                    cross join lateral jsonb_array_elements(case when jsonb_typeof(sync.json_at(p._sl_raw, %L)) = ''array''
                                                                 then sync.json_at(p._sl_raw, %L) else ''[]'' end) with ordinality i(item, n)',
                 'run_' || p_run_id || '_raw', v_cols, v_vals, v_absent, v_path, v_path);
  get diagnostics v_count = row_count;
  drop table _sl_fed;
  update sync.run set detail = detail || jsonb_build_object('fed_by', to_jsonb(p_feeds), 'parents_upto', p_feeds[cardinality(p_feeds)])
   where id = p_run_id and cardinality(p_feeds) > 0;
  return v_count;
end
$$;
