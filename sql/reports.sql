-- Report queries for DBAs. Run any of them in psql against Syncline's database.

-- What is the state of every entity?
select * from sync.status order by entity;

-- The last 20 runs, newest first, with throughput.
select id, entity, trigger, status, dry_run, started_at, finished_at - started_at as took,
       fetched, inserted, updated, deleted, unchanged, quarantined, deferred,
       round(fetched / nullif(extract(epoch from finished_at - started_at), 0)) as rows_per_s,
       phases, error
  from sync.run order by id desc limit 20;

-- What changed in a run (replace 42)? sync.change shows keys as objects.
select action, key, changed from sync.change where run_id = 42 order by action, key;

-- Every change to one record, across runs: run_change.key holds the values
-- of the entity's key_columns, in order, as text.
select r.started_at, c.action, c.changed
  from sync.run_change c join sync.run r on r.id = c.run_id
 where r.entity = 'meters' and c.key = array['acme', '17']
 order by r.id;

-- Quarantined records of the last day, by reason.
select entity, category, message, count(*)
  from sync.run_error where created_at > now() - interval '1 day'
 group by 1, 2, 3 order by 4 desc;
