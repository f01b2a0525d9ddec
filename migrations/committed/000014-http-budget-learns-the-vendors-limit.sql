--! Previous: sha1:b2f9a37aab9a8da7641aa7ec0f7421b7b5d117f3
--! Hash: sha1:991207f88fc31934f6fa7f1d7a19dcf66531c258
--! Message: http budget learns the vendors limit

/*
 * The http request budget adopts the limit and window the vendor announces
 * (X-RateLimit-Limit / RateLimit-Limit, -Remaining, -Reset) instead of
 * reading the vendor's numbers against the configured window. The configured
 * rateLimit is only the starting assumption. Nothing is booked that was not
 * sent: the vendor's own count is kept beside our log of grants
 * (vendor_left until reset_at), and a request waits for the vendor's reset
 * only when that count is spent.
 */
alter table sync.http_budget alter column window_seconds type float8;
alter table sync.http_budget
  add column if not exists limit_from text not null default 'config' check (limit_from in ('config', 'headers')),
  add column if not exists window_from text not null default 'config' check (window_from in ('config', 'headers')),
  add column if not exists granted bigint not null default 0,
  add column if not exists vendor_left int,
  add column if not exists reset_at timestamptz,
  add column if not exists reset_announced boolean not null default false,
  add column if not exists feedback_seq bigint not null default 0;
comment on column sync.http_budget.request_limit is 'Requests allowed per window: sources.<name>.rateLimit.requests until the vendor announces its own (X-RateLimit-Limit), which then wins (limit_from).';
comment on column sync.http_budget.window_seconds is 'Length of the sliding window in seconds: sources.<name>.rateLimit.perSeconds until the vendor''s reset times show its window (window_from).';
comment on column sync.http_budget.limit_from is 'Where request_limit comes from: "config" (rateLimit.requests) or "headers" (the vendor announced it).';
comment on column sync.http_budget.window_from is 'Where window_seconds comes from: "config" (rateLimit.perSeconds) or "headers" (the longest time-to-reset the vendor announced).';
comment on column sync.http_budget.granted is 'Requests granted so far (a sequence): a response''s feedback names the grant it answers, so requests granted after it (still in flight) are not yet in the vendor''s count.';
comment on column sync.http_budget.vendor_left is 'Requests the vendor still allows before reset_at, by its latest answer, less the requests granted since; null when the vendor has not said.';
comment on column sync.http_budget.reset_at is 'When the vendor''s current window ends (X-RateLimit-Reset); with vendor_left spent, no request starts before it.';
comment on column sync.http_budget.reset_announced is 'reset_at is the vendor''s (X-RateLimit-Reset): its whole limit is free then. Otherwise it is our guess (a window after our oldest request), and only one request is let go at it: a sliding window frees one slot at a time.';
comment on column sync.http_budget.feedback_seq is 'The grant whose answer last set vendor_left: an older answer arriving late is not allowed to overwrite it.';
comment on column sync.http_budget.blocked_until is 'No request starts before this time: set from a 429''s Retry-After, or the short backoff after a 429 without one.';

create or replace function sync.http_take(p_source text, p_limit int, p_window_seconds float8,
                                          out wait_ms float8, out seq bigint, out slot timestamptz)
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  -- Added to a slot computed from an earlier request or a reset: the vendor
  -- counts arrivals, and a request leaves a few milliseconds after its slot.
  c_guard constant interval := interval '40 milliseconds';
  v_now timestamptz;
  v_row sync.http_budget;
  v_limit int;
  v_window interval;
  v_recent timestamptz[];
  v_at timestamptz;
  v_left int;
  v_known boolean;
  v_free_at_reset int;
begin
  insert into sync.http_budget (source, request_limit, window_seconds)
  values (p_source, p_limit, p_window_seconds)
  on conflict (source) do nothing;
  -- The row lock serialises every caller of this source; it is held only
  -- for this short transaction.
  select * into v_row from sync.http_budget where source = p_source for update;
  v_now := clock_timestamp();
  -- What the vendor announced wins over the configuration.
  v_limit := case when v_row.limit_from = 'headers' then v_row.request_limit else p_limit end;
  v_window := make_interval(secs => case when v_row.window_from = 'headers' then v_row.window_seconds else p_window_seconds end);
  -- Slots granted within the last window, reservations in the future included.
  select coalesce(array_agg(s order by s), '{}') into v_recent
    from unnest(v_row.started) s where s > v_now - v_window;
  v_at := greatest(v_now, v_row.blocked_until);
  v_left := v_row.vendor_left;
  v_known := v_left is not null and v_row.reset_at is not null and v_at < v_row.reset_at;
  v_free_at_reset := case when v_row.reset_announced then v_limit else 1 end;
  if v_known and v_left > 0 then
    -- The vendor said there is room before its reset: its count decides, not our log.
    v_left := v_left - 1;
  elsif v_known and (select count(*) from unnest(v_recent) s where s >= v_row.reset_at) < v_free_at_reset then
    -- The vendor's count is spent: the next requests (as many as it allows
    -- in a window, or one when we only guess the reset) go when its window
    -- resets, not a window of ours later.
    v_at := v_row.reset_at + c_guard;
  elsif cardinality(v_recent) >= v_limit then
    -- Full by our own log: this request's slot is when the one v_limit places back leaves the window.
    v_at := greatest(v_at, v_recent[cardinality(v_recent) - v_limit + 1] + v_window + c_guard);
  end if;
  -- The slot is reserved now: callers waiting in parallel get the next ones,
  -- and nobody polls.
  update sync.http_budget
     set started = v_recent || v_at,
         request_limit = v_limit,
         window_seconds = extract(epoch from v_window),
         granted = granted + 1,
         vendor_left = v_left,
         updated_at = v_now
   where source = p_source
  returning granted into seq;
  wait_ms := extract(epoch from v_at - v_now) * 1000;
  slot := v_at;
end
$$;
comment on function sync.http_take(text, int, float8) is 'Reserves the next slot to start one request to an http source and returns how long to wait for it (0: go now), the grant''s number and its slot for http_feedback. Paced by the limit and window the vendor announced, else the configured ones; atomic across processes.';

create or replace function sync.take_http_request(p_source text, p_limit int, p_window_seconds int)
  returns interval
  language sql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
  select t.wait_ms * interval '1 millisecond' from sync.http_take(p_source, p_limit, p_window_seconds) t
$$;
comment on function sync.take_http_request(text, int, int) is 'sync.http_take without the grant number: reserves the next slot for one request to an http source and returns how long to wait for it.';

create or replace function sync.http_feedback(p_source text, p_seq bigint, p_limit int, p_remaining int,
                                              p_reset interval, p_window_seconds float8, p_retry_after interval,
                                              p_slot timestamptz default null)
  returns void
  language plpgsql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
declare
  v_now timestamptz;
  v_row sync.http_budget;
  v_reset_s float8 := extract(epoch from p_reset);
  v_seq bigint;
begin
  select * into v_row from sync.http_budget where source = p_source for update;
  if not found then
    return; -- no configured limit for this source: nothing to pace
  end if;
  v_now := clock_timestamp();
  v_seq := coalesce(p_seq, v_row.granted);
  if p_limit > 0 then
    v_row.request_limit := p_limit;
    v_row.limit_from := 'headers';
  end if;
  if p_window_seconds > 0 then
    -- The vendor named its window (RateLimit-Policy "w=").
    v_row.window_seconds := p_window_seconds;
    v_row.window_from := 'headers';
  elsif v_reset_s > 0 then
    -- The time to a reset is at most the window; the longest seen is the best guess of it.
    v_row.window_seconds := case when v_row.window_from = 'headers' then greatest(v_row.window_seconds, v_reset_s) else v_reset_s end;
    v_row.window_from := 'headers';
  end if;
  if p_remaining is not null and v_seq >= v_row.feedback_seq then
    -- Requests granted after this one may not have reached the vendor's
    -- count yet: they come off what it says is left.
    v_row.vendor_left := greatest(0, p_remaining - (v_row.granted - v_seq))::int;
    v_row.feedback_seq := v_seq;
    v_row.reset_at := case
      when p_reset is not null then v_now + greatest(p_reset, interval '0')
      -- No reset announced: the vendor's window ends at the latest one window after the oldest request in ours.
      else coalesce((select min(s) from unnest(v_row.started) s where s > v_now - make_interval(secs => v_row.window_seconds)), v_now)
           + make_interval(secs => v_row.window_seconds) end;
  end if;
  if p_slot is not null then
    -- The request reached the vendor some time between its slot and now (a
    -- loaded machine sends late): our log counts it from now, as the
    -- vendor's window may, so a slot computed from it is not too early.
    v_row.started := array_replace(v_row.started, p_slot, greatest(p_slot, v_now));
  end if;
  update sync.http_budget
     set started = v_row.started,
         request_limit = v_row.request_limit, limit_from = v_row.limit_from,
         window_seconds = v_row.window_seconds, window_from = v_row.window_from,
         vendor_left = v_row.vendor_left, reset_at = v_row.reset_at, feedback_seq = v_row.feedback_seq,
         reset_announced = case when p_remaining is not null and v_seq >= v_row.feedback_seq then p_reset is not null else reset_announced end,
         blocked_until = case when p_retry_after is not null
                              then greatest(blocked_until, v_now + p_retry_after)
                              else blocked_until end,
         updated_at = v_now
   where source = p_source;
end
$$;
comment on function sync.http_feedback(text, bigint, int, int, interval, float8, interval, timestamptz) is 'Records what an http source said in the answer to grant p_seq (slot p_slot): its limit, the requests left before its reset (time to it), its window if named, and a 429''s Retry-After (or a short backoff): no request starts before that ends. Never books requests that were not sent; the grant counts from the answer''s arrival on.';

create or replace function sync.http_feedback(p_source text, p_remaining int, p_retry_after interval)
  returns void
  language sql volatile
  set search_path to pg_catalog, public, pg_temp
as $$
  select sync.http_feedback(p_source, null::bigint, null::int, p_remaining, null::interval, null::float8, p_retry_after)
$$;
comment on function sync.http_feedback(text, int, interval) is 'sync.http_feedback for an answer to the latest grant with only X-RateLimit-Remaining and Retry-After.';
