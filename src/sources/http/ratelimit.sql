/*
 * The request budget of each http source, shared by every job and worker
 * process: a vendor counts requests per token, not per process, so the count
 * lives here rather than in memory. A sliding window: a request may start
 * when fewer than request_limit requests started in the last window_seconds.
 * The vendor's own view (X-RateLimit-Remaining, Retry-After) tightens it.
 * Safe to run again and again.
 */
create table if not exists sync.http_budget (
  source text primary key,
  request_limit int not null check (request_limit > 0),
  window_seconds int not null check (window_seconds > 0),
  started timestamptz[] not null default '{}',
  blocked_until timestamptz,
  updated_at timestamptz not null default now()
);
comment on table sync.http_budget is 'One row an http source: the requests started in its current rate-limit window, shared by all workers. Delete a row to reset its budget.';
comment on column sync.http_budget.request_limit is 'Requests allowed per window (sources.<name>.rateLimit.requests); the latest caller''s value wins.';
comment on column sync.http_budget.window_seconds is 'Length of the sliding window in seconds (sources.<name>.rateLimit.perSeconds).';
comment on column sync.http_budget.started is 'Start times of the requests granted within the last window_seconds, oldest first (at most request_limit).';
comment on column sync.http_budget.blocked_until is 'No request starts before this time: set from a 429''s Retry-After or an X-RateLimit-Remaining of 0.';

create or replace function sync.take_http_request(p_source text, p_limit int, p_window_seconds int)
  returns interval
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_now timestamptz := clock_timestamp();
  v_window interval := make_interval(secs => p_window_seconds);
  v_row sync.http_budget;
  v_recent timestamptz[];
begin
  insert into sync.http_budget (source, request_limit, window_seconds)
  values (p_source, p_limit, p_window_seconds)
  on conflict (source) do nothing;
  -- The row lock serialises every caller of this source; it is held only
  -- for this short transaction.
  select * into v_row from sync.http_budget where source = p_source for update;
  -- The clock is read again after the lock: a caller that waited for it
  -- must not grant itself a slot at the time it started waiting.
  v_now := clock_timestamp();
  if v_row.blocked_until > v_now then
    return v_row.blocked_until - v_now;
  end if;
  select coalesce(array_agg(s order by s), '{}') into v_recent
    from unnest(v_row.started) s where s > v_now - v_window;
  if cardinality(v_recent) >= p_limit then
    -- Full: the slot frees when the request p_limit places back leaves the window.
    update sync.http_budget
       set started = v_recent, request_limit = p_limit, window_seconds = p_window_seconds, updated_at = v_now
     where source = p_source;
    return v_recent[cardinality(v_recent) - p_limit + 1] + v_window - v_now;
  end if;
  update sync.http_budget
     set started = v_recent || v_now, request_limit = p_limit, window_seconds = p_window_seconds,
         blocked_until = null, updated_at = v_now
   where source = p_source;
  return interval '0';
end
$$;
comment on function sync.take_http_request(text, int, int) is 'Asks to start one request to an http source: returns 0 and records the start when the budget allows, else how long to wait before asking again. Atomic across processes.';

create or replace function sync.http_feedback(p_source text, p_remaining int, p_retry_after interval)
  returns void
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_now timestamptz := clock_timestamp();
  v_row sync.http_budget;
  v_recent timestamptz[];
  v_missing int;
begin
  select * into v_row from sync.http_budget where source = p_source for update;
  if not found then
    return; -- no configured limit for this source: nothing to pace
  end if;
  v_now := clock_timestamp();
  select coalesce(array_agg(s order by s), '{}') into v_recent
    from unnest(v_row.started) s where s > v_now - make_interval(secs => v_row.window_seconds);
  -- The vendor counts requests we do not see (another client on the same
  -- token): count the difference as started now, so pacing slows down.
  v_missing := case when p_remaining is null then 0
                    else least(v_row.request_limit, greatest(0, v_row.request_limit - p_remaining - cardinality(v_recent))) end;
  if v_missing > 0 then
    v_recent := v_recent || array_fill(v_now, array[v_missing]);
  end if;
  update sync.http_budget
     set started = v_recent[greatest(1, cardinality(v_recent) - v_row.request_limit + 1):],
         blocked_until = case when p_retry_after is not null
                              then greatest(blocked_until, v_now + p_retry_after)
                              else blocked_until end,
         updated_at = v_now
   where source = p_source;
end
$$;
comment on function sync.http_feedback(text, int, interval) is 'Records what an http source said about its budget: X-RateLimit-Remaining (requests the vendor still allows in its window) and a 429''s Retry-After (no request starts before it ends).';
