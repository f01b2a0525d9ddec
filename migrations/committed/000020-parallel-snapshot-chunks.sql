--! Previous: sha1:1c40b33ff2f16669b7b53649197d04f448951247
--! Hash: sha1:8397ae5c1efdeb37712b0dc32ca4de7337e2f24c
--! Message: parallel snapshot chunks

/*
 * A full read of a big postgres table ("snapshot": {"chunks": N}) is split
 * into block ranges that several processes read in parallel, every one in
 * the same exported snapshot of the source, into the run's one staging
 * table; the merge runs once, after the last chunk. sync.run_chunk is the
 * work list: a taker locks a pending chunk (for update skip locked), COPYs
 * its range and marks it done in that same transaction, so a chunk lands
 * exactly once and a taker that dies mid-COPY leaves it pending (its
 * transaction rolls back).
 */
create table sync.chunked_run (
  run_id bigint primary key references sync.run (id) on delete cascade,
  entity text not null,
  snapshot text not null,
  blocks bigint not null,
  spec jsonb not null,
  created_at timestamptz not null default now()
);
comment on table sync.chunked_run is 'A run whose full read is split into chunks (sync.run_chunk): the source snapshot every chunk reads (exported by the process running the run, valid while that process keeps it open), the table''s size in blocks when it was split, and what a chunk reads (spec: source and target columns, tenant column).';

create table sync.run_chunk (
  run_id bigint not null references sync.chunked_run (run_id) on delete cascade,
  chunk int not null,
  lo bigint not null,
  hi bigint,
  status text not null default 'pending' check (status in ('pending', 'done', 'cancelled')),
  rows bigint,
  taken_by jsonb,
  started_at timestamptz,
  finished_at timestamptz,
  primary key (run_id, chunk)
);
comment on table sync.run_chunk is 'One block range of a chunked run''s source table: blocks lo to hi (hi null: to the end, so rows in blocks added after the split are read too). pending until a taker COPYs it into the run''s staging and marks it done in the same transaction; a chunk being read is a pending row locked by its taker. taken_by: the session that read it (pid, backend start, who: a worker id or "run" for the process running the run).';

create or replace function sync.plan_chunks(p_run_id bigint, p_snapshot text, p_blocks bigint, p_chunks int, p_spec jsonb)
  returns int
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_n int := least(p_chunks, greatest(p_blocks, 1))::int;
begin
  insert into sync.chunked_run (run_id, entity, snapshot, blocks, spec)
  select r.id, r.entity, p_snapshot, p_blocks, p_spec from sync.run r where r.id = p_run_id and r.status = 'running';
  if not found then
    raise exception 'sync.plan_chunks: run % is not running', p_run_id;
  end if;
  insert into sync.run_chunk (run_id, chunk, lo, hi)
  select p_run_id, i, i * p_blocks / v_n, case when i < v_n - 1 then (i + 1) * p_blocks / v_n end
    from generate_series(0, v_n - 1) i;
  update sync.run set detail = detail || jsonb_build_object('chunks', jsonb_build_object('total', v_n, 'done', 0, 'rows', 0))
   where id = p_run_id;
  -- One job a chunk, so up to that many worker slots join in; each takes
  -- chunks until none is pending, so most find little or nothing to do.
  perform graphile_worker.add_job('sync_chunk', json_build_object('run', p_run_id),
            job_key := format('chunk:%s:%s', p_run_id, i), max_attempts := 1)
     from generate_series(0, v_n - 1) i;
  return v_n;
end
$$;
comment on function sync.plan_chunks(bigint, text, bigint, int, jsonb) is 'Splits run p_run_id''s full read of a table of p_blocks blocks into up to p_chunks block ranges (sync.run_chunk), read in source snapshot p_snapshot, and queues one sync_chunk job a chunk. Returns the number of chunks.';

create or replace function sync.take_chunk(p_run_id bigint)
  returns table (chunk int, lo bigint, hi bigint)
  language sql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
  -- The lock lasts until the caller's transaction ends: call it in the
  -- transaction that COPYs the chunk and marks it done.
  select c.chunk, c.lo, c.hi
    from sync.run_chunk c
   where c.run_id = p_run_id and c.status = 'pending'
     and exists (select 1 from sync.run r where r.id = c.run_id and r.status = 'running' and not r.cancel_requested)
   order by c.chunk
   limit 1
     for update of c skip locked;
$$;
comment on function sync.take_chunk(bigint) is 'Locks the next pending chunk of running run p_run_id that nobody is reading, for the caller''s transaction; no row when there is none (all taken, done, or the run is over).';

create or replace function sync.finish_chunk(p_run_id bigint, p_chunk int, p_rows bigint, p_who text, p_started timestamptz)
  returns void
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
begin
  update sync.run_chunk
     set status = 'done', rows = p_rows, started_at = p_started, finished_at = clock_timestamp(),
         taken_by = jsonb_build_object('pid', pg_backend_pid(), 'who', p_who,
                      'started', (select a.backend_start from pg_stat_activity a where a.pid = pg_backend_pid()))
   where run_id = p_run_id and chunk = p_chunk and status = 'pending';
  if not found then
    raise exception 'sync.finish_chunk: chunk % of run % is not pending', p_chunk, p_run_id;
  end if;
  -- Increments, not a recount: concurrent takers update the run row one
  -- after the other, each on the row the previous one left.
  update sync.run
     set detail = jsonb_set(detail, '{chunks}', jsonb_build_object(
                    'total', (detail #>> '{chunks,total}')::int,
                    'done', coalesce((detail #>> '{chunks,done}')::int, 0) + 1,
                    'rows', coalesce((detail #>> '{chunks,rows}')::bigint, 0) + p_rows))
   where id = p_run_id;
  perform pg_notify('sync_chunk', p_run_id::text);
end
$$;
comment on function sync.finish_chunk(bigint, int, bigint, text, timestamptz) is 'Marks chunk p_chunk of run p_run_id done with its rows, in the transaction that COPYed it (so it counts exactly once), records the session that read it, adds it to sync.run.detail.chunks and notifies sync_chunk with the run id.';

create or replace function sync.close_chunks(p_run_id bigint) returns int
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_n int;
begin
  -- A chunk being read is left to its taker (skip locked): waiting for its
  -- COPY would hold up a cancel; what it copies is never merged.
  update sync.run_chunk c set status = 'cancelled', finished_at = clock_timestamp()
   where (c.run_id, c.chunk) in (select k.run_id, k.chunk from sync.run_chunk k
                                  where k.run_id = p_run_id and k.status = 'pending' for update skip locked);
  get diagnostics v_n = row_count;
  -- The jobs no worker got to: without a worker running they would wait forever.
  perform graphile_worker.remove_job(format('chunk:%s:%s', p_run_id, c.chunk)) from sync.run_chunk c where c.run_id = p_run_id;
  return v_n;
end
$$;
comment on function sync.close_chunks(bigint) is 'Ends the chunked read of run p_run_id: cancels its pending chunks that nobody is reading (when the run failed or was cancelled) and removes the sync_chunk jobs no worker has started. Returns the chunks cancelled.';

create or replace function sync._close_chunks_of_ended_run() returns trigger
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
begin
  -- A taker that failed after sync.close_chunks skipped its chunk has
  -- rolled back by now, or checks the run's status after its rollback
  -- (sync.close_chunks_if_over): between the two, no chunk of an ended run
  -- stays pending.
  if exists (select 1 from sync.chunked_run c where c.run_id = new.id) then
    perform sync.close_chunks(new.id);
  end if;
  return null;
end
$$;
drop trigger if exists _400_close_chunks on sync.run;
create trigger _400_close_chunks after update of status on sync.run
  for each row when (old.status = 'running' and new.status <> 'running')
  execute function sync._close_chunks_of_ended_run();

create or replace function sync.close_chunks_if_over(p_run_id bigint) returns int
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
begin
  -- The lock waits for a transaction ending the run; the next statement's
  -- snapshot then sees its status. So either this sees the run over, or the
  -- run's end comes after the caller's rollback and its trigger finds the
  -- chunk free.
  perform 1 from sync.run where id = p_run_id for share;
  if exists (select 1 from sync.run where id = p_run_id and (status <> 'running' or cancel_requested)) then
    return sync.close_chunks(p_run_id);
  end if;
  return 0;
end
$$;
comment on function sync.close_chunks_if_over(bigint) is 'Called by a chunk taker after its read failed and rolled back: when run p_run_id is over or asked to cancel, cancels its pending chunks (sync.close_chunks), so none stays pending for a run that will not read it. Returns the chunks cancelled.';

create or replace view sync.run_chunks as
select c.run_id, r.entity, r.status as run_status, c.chunk, c.lo as first_block, c.hi as end_block, c.status, c.rows,
       c.taken_by ->> 'who' as taken_by, (c.taken_by ->> 'pid')::int as pid, c.started_at, c.finished_at,
       c.finished_at - c.started_at as took
  from sync.run_chunk c
  join sync.run r on r.id = c.run_id;
comment on view sync.run_chunks is 'The chunks of chunked runs, for people: each block range, whether it is done, its rows, who read it and how long it took. select * from sync.run_chunks where run_id = 42 order by chunk.';

comment on column sync.run.progress is 'Live progress while running: {"phase", "rows", "pages", "total", "rate", "eta_seconds", "chunks": {"total", "done"} for a read split into chunks, "at"}; the last report stays after the run ends.';
