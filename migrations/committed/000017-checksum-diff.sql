--! Previous: sha1:3b3b7344a5e9f23b74756d7644349bfb966e133e
--! Hash: sha1:a074462ecbb0fed45b63eda99050f5d271436990
--! Message: checksum diff

/*
 * The checksum-segment diff (issue 14): a mirror or upsert run of a postgres
 * source compares key-hash bucket checksums of source and target and stages
 * only the records of the buckets that differ. sync.merge learns that such a
 * run (detail.diff_scope) is still a full snapshot whose deletes are limited
 * to the target rows of the differing buckets, that the records of equal
 * buckets count as fetched and unchanged, and that the cursor covers them.
 */

-- Must be exactly the key hash targetHashes() in src/engine/segments.ts
-- builds (rowHash in src/sources/buckets.ts), of either kind: 'record'
-- hashes each key value by its type's hash where equal values have one text
-- form, a numeric with its scale, text as "C", anything else as text;
-- 'text' hashes the key printed as the table's types print it. Either way a
-- type outside pg_catalog or a length-limited char/bit type (or an array of
-- one) is taken as text.
create or replace function sync._checksum_key_hash(p_rel regclass, p_key text[], p_alias text, p_hash text) returns text
  language sql stable
  set search_path to pg_catalog, public, pg_temp
as $$
  with k as (
    select x.i, format('%I.%I', p_alias, x.k) as v, a.atttypid as oid,
           (ty.typnamespace <> 'pg_catalog'::regnamespace
             or (a.atttypmod <> -1 and coalesce(el.typcategory, ty.typcategory) in ('S', 'V'))) as as_text
      from unnest(p_key) with ordinality x(k, i)
      join pg_attribute a on a.attrelid = p_rel and a.attname = x.k and not a.attisdropped
      join pg_type ty on ty.oid = a.atttypid
      left join pg_type el on el.oid = ty.typelem and ty.typcategory = 'A')
  select case when p_hash = 'record' then
           format('hash_record_extended(row(%s), 0)', string_agg(
             case when k.as_text then format('(%s)::text collate "C"', k.v)
                  when k.oid = 'numeric'::regtype then format('%s, scale(%s)', k.v, k.v)
                  when k.oid in ('text'::regtype, 'varchar'::regtype) then format('(%s) collate "C"', k.v)
                  when k.oid in ('int8'::regtype, 'int2'::regtype, 'int4'::regtype, 'bool'::regtype, 'uuid'::regtype,
                                 'date'::regtype, 'timestamp'::regtype, 'timestamptz'::regtype, 'time'::regtype,
                                 'bytea'::regtype, 'char'::regtype, 'name'::regtype, 'oid'::regtype) then k.v
                  else format('(%s)::text collate "C"', k.v) end, ', ' order by k.i))
         else format('hashtextextended(row(%s)::text, 0)', string_agg(k.v || case when k.as_text then '::text' else '' end, ', ' order by k.i))
         end
    from k
$$;
comment on function sync._checksum_key_hash(regclass, text[], text, text) is 'The SQL expression of the key hash of a row of the table (alias p_alias) that a checksum diff buckets rows by, of kind p_hash (record or text, as the run''s detail.diff_scope.hash says): what targetHashes() in src/engine/segments.ts builds.';

-- The target keys of a checksum run's differing buckets, in a temporary
-- table, and the condition that picks them: the key hash prints the key's
-- values, so it is computed under the settings the diff hashed with
-- (src/sources/buckets.ts TEXT_SETTINGS), whatever the merging session's
-- TimeZone or DateStyle; a bucket judged under other settings could let the
-- merge delete a row of an equal bucket, which the run never fetched.
create or replace function sync._diff_scope_keys(p_run_id bigint, p_rel regclass, p_key text[], p_bits int) returns text
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
  set datestyle to 'ISO, YMD'
  set intervalstyle to 'postgres'
  set extra_float_digits to 3
  set bytea_output to 'hex'
  set timezone to 'UTC'
as $$
declare
  v_cols text := (select string_agg(format('%I', k), ', ' order by i) from unnest(p_key) with ordinality x(k, i));
begin
  drop table if exists _sl_diff_scope;
  execute format('create temporary table _sl_diff_scope on commit drop as
                    select %s from %s t where (%s & %s::int8) in (select p.bucket from sync_staging.%I p)',
                 (select string_agg(format('t.%I', k), ', ' order by i) from unnest(p_key) with ordinality x(k, i)),
                 p_rel, sync._checksum_key_hash(p_rel, p_key, 't', coalesce((select r.detail #>> '{diff_scope,hash}' from sync.run r where r.id = p_run_id), 'text')),
                 (1::int8 << p_bits) - 1, 'run_' || p_run_id || '_differing');
  return format('(%s) in (select %s from _sl_diff_scope)',
                (select string_agg(format('t.%I', k), ', ' order by i) from unnest(p_key) with ordinality x(k, i)), v_cols);
end
$$;
comment on function sync._diff_scope_keys(bigint, regclass, text[], int) is 'For sync.merge of a checksum run: the target keys of the run''s differing key-hash buckets (sync_staging.run_<id>_differing), hashed under the diff''s text settings whatever the session''s, in the temporary table _sl_diff_scope; returns the condition on target rows (alias t) that keeps the merge''s deletes to them.';

-- The cleanup keeps every table of a running run (a checksum diff's bucket
-- tables, a verification's keys), not only its staging.
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
      perform sync.close_abandoned(v_run.id, 'the process running it stopped before it finished');
      v_closed := v_closed + 1;
      perform pg_advisory_unlock(sync.entity_lock_key(v_run.entity));
    end if;
  end loop;
  v_dropped := sync.drop_spent_feeds();
  for v_run in
    select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where n.nspname = 'sync_staging' and c.relkind = 'r'
       -- Every table of a running run stays: its staging, and what its diff or verification holds.
       and not exists (select 1 from sync.run r where r.status = 'running'
                         and c.relname ~ ('^run_' || r.id || '(_[a-z]+)?$'))
       -- The pages an interrupted http run fetched wait a day for the next run to resume from them.
       and not exists (select 1 from sync.run r where r.status in ('failed', 'abandoned', 'cancelled') and r.detail ? 'resume'
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
comment on function sync.cleanup() is 'Closes runs left running by a process that died (their entity lock is free), drops the kept records nested entities have taken, and drops staging tables no running run owns (every run_<id>_<name> table of a running run is its own). Runs every 10 minutes from the crontab.';

-- A checksum run deletes only within its differing buckets and counts the equal ones.
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
  execute format('drop table if exists sync_staging.%I', 'run_' || p_run_id || '_differing');
  return v_result;
end
$$;

comment on function sync.merge(bigint) is 'Merges a run''s staged rows into the target in the caller''s transaction: quarantines records that cannot be merged (null or repeated key, another tenant, missing parent, a broken validate rule, an older version), computes the diff in one pass, then inserts, updates only rows that differ, deletes (mirror) or stamps (soft-delete) rows missing from a full snapshot within the tenant, logs every change, advances the cursor. A checksum run (detail.diff_scope) staged only the records of differing key-hash buckets: only target rows of those buckets may be deleted, and the records of equal buckets count as fetched and unchanged. A dry run computes the same counts and a sample and writes nothing to the target.';
