-- Proposal, NOT applied (the migrations own sync.merge): the sync.merge of migration 000005 with
-- P1 empty-target fast path (no anti-join, no update/delete pass; also removes the quadratic
--    nested-loop anti-join when the target's statistics say it is empty),
-- P2 duplicate-key check grouped on the key columns instead of a jsonb of them,
-- P3 update candidates materialized before the UPDATE joins the target,
-- P5 on an initial load with a unique index on the key, duplicates found by the insert itself
--    (fallback to the usual quarantine on unique_violation),
-- P7 full snapshot of a mirror entity: one full join staging ⟗ target finds every difference,
--    then insert/update/delete touch only those rows.
-- Measure with: BENCH_SQL=bench/experiments/merge-proposal.sql npm run bench

create or replace function sync.merge(p_run_id bigint) returns jsonb
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_run sync.run;
  v_ent sync.entity;
  v_started timestamptz := clock_timestamp();
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
  v_ok text := 'not s._sl_quarantined';
  v_snapshot boolean;
  v_unreferenced text := 'true';
  v_collist text;
  v_selist text;
  v_setlist text;
  v_fetched bigint;
  v_quarantined bigint;
  v_ins bigint := 0;
  v_upd bigint := 0;
  v_del bigint := 0;
  v_missing bigint := 0;
  v_cursor text;
  v_cursor_type text;
  v_sample jsonb := '[]';
  v_overriding text := '';
  v_status text;
  v_result jsonb;
  v_fk record;
  v_empty boolean;
  v_unique_key boolean;
begin
  select * into v_run from sync.run where id = p_run_id for update;
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
  v_key := sync._key_json(v_ent.key_columns, 's');
  if v_ent.tenant_column is not null then
    v_scope := format('t.%I = %L', v_ent.tenant_column, v_ent.tenant_value);
  end if;
  -- An incremental run sees only changed rows, so only a full snapshot may
  -- conclude that a missing row was deleted.
  v_snapshot := v_ent.cursor_column is null or v_run.full_refresh;
  if exists (select 1 from pg_attribute a where a.attrelid = v_rel and a.attidentity = 'a'
               and a.attname = any (v_cols)) then
    v_overriding := 'overriding system value';
  end if;

  -- Quarantine what cannot be merged; the rows stay in staging (flagged) so a
  -- mirror run does not delete their target rows.
  execute format($q$
    with bad as (
      update %1$s s set _sl_quarantined = true
       where %2$s
      returning s.*)
    insert into sync.run_error (run_id, entity, key, category, message, payload)
    select %3$s, %4$L, %5$s, 'validation', 'a key column is null', to_jsonb(s.*) - '_sl_quarantined' from bad s$q$,
    v_s, (select string_agg(format('s.%I is null', k), ' or ') from unnest(v_ent.key_columns) k),
    p_run_id, v_ent.name, v_key);
  -- An empty target with a unique index on the key lets the insert itself
  -- find duplicate keys (rare): skip the group-by, fall back if it fires.
  execute format('select not exists (select 1 from %s)', v_t) into v_empty;
  v_unique_key := exists (
    select 1 from pg_index i
     where i.indrelid = v_rel and i.indisunique and i.indpred is null and i.indexprs is null
       and i.indnkeyatts = cardinality(v_ent.key_columns)
       and (select array_agg(a.attname::text order by a.attname) from pg_attribute a
             where a.attrelid = v_rel and a.attnum = any (i.indkey::int2[]))
           = (select array_agg(k order by k) from unnest(v_ent.key_columns) k));
  if not (v_empty and v_unique_key and not v_run.dry_run) then
  execute format($q$
    with dup as (
      select %6$s, count(*) as _sl_n from %1$s s where %2$s group by %6$s having count(*) > 1),
    bad as (
      update %1$s s set _sl_quarantined = true from dup d where %7$s
      returning s.*, d._sl_n)
    insert into sync.run_error (run_id, entity, key, category, message, payload)
    select %4$s, %5$L, %3$s, 'integrity', format('the source has %%s records with this key; none of them was merged', s._sl_n),
           to_jsonb(s.*) - '_sl_quarantined' - '_sl_n' from bad s$q$,
    v_s, v_ok, v_key, p_run_id, v_ent.name,
    (select string_agg(format('s.%I', k), ', ') from unnest(v_ent.key_columns) k),
    sync._join(v_ent.key_columns, 's', 'd'));
  end if;
  if v_ent.tenant_column is not null and v_ent.tenant_column = any (v_cols) then
    execute format($q$
      with bad as (
        update %1$s s set _sl_quarantined = true
         where %2$s and s.%3$I is distinct from %4$L
        returning s.*)
      insert into sync.run_error (run_id, entity, key, category, message, payload)
      select %5$s, %6$L, %7$s, 'integrity',
             format('the record belongs to tenant %%s but the entity is scoped to tenant %%s', s.%3$I, %4$L),
             to_jsonb(s.*) - '_sl_quarantined' from bad s$q$,
      v_s, v_ok, v_ent.tenant_column, v_ent.tenant_value, p_run_id, v_ent.name, v_key);
  end if;

  -- A record whose parent row (a foreign key of the target, on synced
  -- columns) is missing would fail the whole merge: quarantine it instead. A
  -- table referencing itself may find the parent among the staged rows.
  for v_fk in
    select c.confrelid::regclass as parent, c.confrelid = v_rel as self,
           array_agg(ca.attname::text order by k.ord) as cols, array_agg(pa.attname::text order by k.ord) as pcols
      from pg_constraint c
      cross join lateral unnest(c.conkey, c.confkey) with ordinality as k(ck, pk, ord)
      join pg_attribute ca on ca.attrelid = c.conrelid and ca.attnum = k.ck
      join pg_attribute pa on pa.attrelid = c.confrelid and pa.attnum = k.pk
     where c.contype = 'f' and c.conrelid = v_rel
     group by c.oid, c.confrelid
  loop
    continue when not (v_fk.cols <@ v_cols);
    -- A dry run of several entities previews a child against parents that
    -- the same preview would insert: those parents are taken on trust.
    continue when v_run.dry_run and coalesce(v_run.detail -> 'unchecked_parents' @> to_jsonb(v_fk.parent::oid), false);
    execute format($q$
      with bad as (
        update %1$s s set _sl_quarantined = true
         where %2$s and %3$s
           and not exists (select 1 from %4$s p where %5$s) %6$s
        returning s.*)
      insert into sync.run_error (run_id, entity, key, category, message, payload)
      select %7$s, %8$L, %9$s, 'integrity', format('references a row of %%s that does not exist: %%s', %10$L, %11$s),
             to_jsonb(s.*) - '_sl_quarantined' from bad s$q$,
      v_s, v_ok,
      (select string_agg(format('s.%I is not null', c), ' and ') from unnest(v_fk.cols) c),
      v_fk.parent,
      (select string_agg(format('p.%I = s.%I', pc, c), ' and ') from unnest(v_fk.pcols, v_fk.cols) x(pc, c)),
      case when v_fk.self then format('and not exists (select 1 from %s p where not p._sl_quarantined and %s)', v_s,
             (select string_agg(format('p.%I = s.%I', pc, c), ' and ') from unnest(v_fk.pcols, v_fk.cols) x(pc, c)))
           else '' end,
      p_run_id, v_ent.name, v_key, v_fk.parent::text,
      (select format('jsonb_build_object(%s)', string_agg(format('%L, s.%I', c, c), ', ')) from unnest(v_fk.cols) c));
  end loop;

  execute format('select count(*), count(*) filter (where _sl_quarantined) from %s', v_s)
    into v_fetched, v_quarantined;

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
    v_distinct := concat_ws(' or ', v_distinct, format('t.%I is not null', v_ent.soft_delete_column));
    v_changed := format('array_remove(%s || array[case when t.%I is not null then %L end], null)',
                        coalesce(v_changed, 'array[]::text[]'), v_ent.soft_delete_column, v_ent.soft_delete_column);
    v_setlist := concat_ws(', ', v_setlist, format('%I = null', v_ent.soft_delete_column));
  end if;
  if v_snapshot and v_ent.mode = 'mirror' then
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

  if v_run.dry_run then
    v_result := sync._merge_preview(v_t, v_s, v_ent, v_on, v_scope, v_ok, v_key, v_distinct, v_changed,
                                    v_snapshot, v_unreferenced);
    v_ins := (v_result ->> 'inserted')::bigint;
    v_upd := (v_result ->> 'updated')::bigint;
    v_del := (v_result ->> 'deleted')::bigint;
    v_missing := (v_result ->> 'deferred')::bigint;
    v_sample := v_result -> 'sample';
  else
    -- Inserts first, then updates, then deletes: a new parent exists before a
    -- row is pointed at it, and a row stops pointing at an old parent before
    -- that parent goes. Foreign keys are checked per statement, so a table
    -- that references itself converges in one run.
    -- An empty target (the initial load) needs no anti-join, no update and
    -- no delete. The anti-join against the table being filled is also what
    -- goes quadratic when the planner believes the target empty (a nested
    -- loop over a seq scan that grows with every inserted row).
    if v_empty then
      begin
        execute format('insert into %1$s (%2$s) %5$s select %3$s from %4$s s where not s._sl_quarantined',
                       v_t, v_collist, v_selist, v_s, v_overriding);
        get diagnostics v_ins = row_count;
      exception when unique_violation then
        if not v_unique_key then raise; end if;
        -- The source repeats a key: quarantine those rows as usual, insert the rest.
  execute format($q$
        with dup as (
          select %6$s, count(*) as _sl_n from %1$s s where %2$s group by %6$s having count(*) > 1),
        bad as (
          update %1$s s set _sl_quarantined = true from dup d where %7$s
          returning s.*, d._sl_n)
        insert into sync.run_error (run_id, entity, key, category, message, payload)
        select %4$s, %5$L, %3$s, 'integrity', format('the source has %%s records with this key; none of them was merged', s._sl_n),
               to_jsonb(s.*) - '_sl_quarantined' - '_sl_n' from bad s$q$,
        v_s, v_ok, v_key, p_run_id, v_ent.name,
        (select string_agg(format('s.%I', k), ', ') from unnest(v_ent.key_columns) k),
        sync._join(v_ent.key_columns, 's', 'd'));
        execute format('select count(*) filter (where _sl_quarantined) from %s', v_s) into v_quarantined;
        execute format('insert into %1$s (%2$s) %5$s select %3$s from %4$s s where not s._sl_quarantined',
                       v_t, v_collist, v_selist, v_s, v_overriding);
        get diagnostics v_ins = row_count;
      end;
      execute format($q$insert into sync.run_change (run_id, action, key)
                       select %1$s, 'insert', %2$s from %3$s s where not s._sl_quarantined$q$, p_run_id, v_key, v_s);
    elsif v_snapshot and v_ent.mode = 'mirror' and v_distinct is not null then
      -- P7: one pass over staging and target finds every difference; the
      -- insert, update and delete then touch only those rows.
      execute format($q$
        create temp table _sl_diff on commit drop as
        select case when t._sl_tid is null then 'i' when s.ctid is null then 'd' else 'u' end as _sl_act,
               s.ctid as _sl_sctid, %6$s,
               case when t._sl_tid is not null and s.ctid is not null then %5$s end as _sl_changed
          from %2$s s full join (select t.ctid as _sl_tid, t.* from %1$s t where %4$s) t on %3$s
         where s.ctid is null or (not s._sl_quarantined and (t._sl_tid is null or (%7$s)))$q$,
        v_t, v_s, v_on, v_scope, v_changed,
        (select string_agg(format('case when t._sl_tid is null then s.%1$I else t.%1$I end as %1$I', k), ', ') from unnest(v_ent.key_columns) k),
        v_distinct);
      execute format($q$
        with i as (
          insert into %1$s as t (%2$s) %6$s
          select %3$s from %4$s s join _sl_diff d on d._sl_sctid = s.ctid
           where d._sl_act = 'i' and not exists (select 1 from %1$s t where %5$s)
          returning %7$s as k)
        insert into sync.run_change (run_id, action, key) select %8$s, 'insert', k from i$q$,
        v_t, v_collist, v_selist, v_s, v_on, v_overriding, sync._key_json(v_ent.key_columns, 't'), p_run_id);
      get diagnostics v_ins = row_count;
      execute format($q$
        with u as (
          update %1$s t set %4$s
            from (select s.*, d._sl_changed from %2$s s join _sl_diff d on d._sl_sctid = s.ctid where d._sl_act = 'u') s
           where %3$s and %5$s
          returning %6$s as k, s._sl_changed)
        insert into sync.run_change (run_id, action, key, changed) select %7$s, 'update', k, _sl_changed from u$q$,
        v_t, v_s, v_on, v_setlist, v_scope, v_key, p_run_id);
      get diagnostics v_upd = row_count;
      select count(*) into v_missing from _sl_diff where _sl_act = 'd';
      execute format($q$
        with d as (
          delete from %1$s t using _sl_diff s where s._sl_act = 'd' and %2$s and %3$s and %4$s
          returning %5$s as k)
        insert into sync.run_change (run_id, action, key) select %6$s, 'delete', k from d$q$,
        v_t, v_on, v_scope, v_unreferenced, sync._key_json(v_ent.key_columns, 't'), p_run_id);
      get diagnostics v_del = row_count;
      drop table _sl_diff;
    else
    execute format($q$
      with i as (
        insert into %1$s as t (%2$s) %8$s
        select %3$s from %4$s s where %5$s and not exists (select 1 from %1$s t where %6$s)
        returning %7$s as k)
      insert into sync.run_change (run_id, action, key)
      select %9$s, 'insert', k from i$q$,
      v_t, v_collist, v_selist, v_s, v_ok, v_on, sync._key_json(v_ent.key_columns, 't'), v_overriding, p_run_id);
    get diagnostics v_ins = row_count;
    if v_ent.mode <> 'append' and v_distinct is not null then
      execute format($q$
        with c as materialized (
          select s.*, %7$s as _sl_changed from %2$s s join %1$s t on %3$s
           where %4$s and %5$s and (%6$s)),
        u as (
          update %1$s t set %8$s from c s where %3$s
          returning %9$s as k, s._sl_changed)
        insert into sync.run_change (run_id, action, key, changed)
        select %10$s, 'update', k, _sl_changed from u$q$,
        v_t, v_s, v_on, v_ok, v_scope, v_distinct, v_changed, v_setlist, v_key, p_run_id);
      get diagnostics v_upd = row_count;
    end if;
    if v_snapshot and v_ent.mode = 'mirror' then
      if v_unreferenced <> 'true' then
        execute format('select count(*) from %s t where %s and not exists (select 1 from %s s where %s)',
                       v_t, v_scope, v_s, v_on) into v_missing;
      end if;
      execute format($q$
        with d as (
          delete from %1$s t where %3$s and not exists (select 1 from %2$s s where %4$s) and %5$s
          returning %6$s as k)
        insert into sync.run_change (run_id, action, key)
        select %7$s, 'delete', k from d$q$,
        v_t, v_s, v_scope, v_on, v_unreferenced, sync._key_json(v_ent.key_columns, 't'), p_run_id);
      get diagnostics v_del = row_count;
    elsif v_snapshot and v_ent.mode = 'soft-delete' then
      execute format($q$
        with d as (
          update %1$s t set %5$I = now()
           where %3$s and t.%5$I is null and not exists (select 1 from %2$s s where %4$s)
          returning %6$s as k)
        insert into sync.run_change (run_id, action, key, changed)
        select %7$s, 'delete', k, array[%8$L] from d$q$,
        v_t, v_s, v_scope, v_on, v_ent.soft_delete_column, sync._key_json(v_ent.key_columns, 't'), p_run_id,
        v_ent.soft_delete_column);
      get diagnostics v_del = row_count;
    end if;
    end if;
  end if;

  if v_ent.cursor_column is not null then
    select format_type(a.atttypid, a.atttypmod) into v_cursor_type
      from pg_attribute a where a.attrelid = v_s::regclass and a.attname = v_ent.cursor_column;
    execute format('select greatest(max(s.%I), %L::%s)::text from %s s where %s',
                   v_ent.cursor_column, v_run.cursor_before, v_cursor_type, v_s, v_ok)
      into v_cursor;
  end if;

  v_status := case when v_quarantined > 0 then 'partial' else 'succeeded' end;
  update sync.run
     set status = v_status, finished_at = now(),
         fetched = v_fetched, inserted = v_ins, updated = v_upd, deleted = v_del,
         unchanged = v_fetched - v_quarantined - v_ins - v_upd,
         quarantined = v_quarantined, deferred = greatest(v_missing - v_del, 0),
         cursor_after = v_cursor,
         phases = phases || jsonb_build_object('merge', round(extract(epoch from clock_timestamp() - v_started) * 1000)),
         detail = detail || case when v_run.dry_run then jsonb_build_object('sample', v_sample) else '{}' end
   where id = p_run_id
  returning jsonb_build_object('run_id', id, 'status', status, 'fetched', fetched, 'inserted', inserted,
                               'updated', updated, 'deleted', deleted, 'unchanged', unchanged,
                               'quarantined', quarantined, 'deferred', deferred, 'cursor', cursor_after,
                               'dry_run', dry_run, 'sample', detail -> 'sample')
    into v_result;
  if not v_run.dry_run and v_ent.cursor_column is not null then
    update sync.entity set cursor_value = v_cursor where name = v_ent.name and cursor_value is distinct from v_cursor;
  end if;
  execute format('drop table %s', v_s);
  return v_result;
end
$$;


