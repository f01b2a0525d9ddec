-- Runbook snippets. Each is safe to run on a live system.

-- Sync an entity now (the worker picks it up; repeated calls collapse).
select sync.request('meters');

-- Refetch everything on the next run of an incremental entity.
update sync.entity set cursor_value = null where name = 'meters';
select sync.request('meters', true);

-- Stop a running run (nothing is merged; it ends cancelled).
select id, entity, started_at from sync.run where status = 'running';
select sync.cancel(42);

-- Pause an entity without losing its history.
update sync.entity set enabled = false where name = 'meters';

-- Close runs left running by a crashed process and drop their staging tables.
select sync.cleanup();

-- Jobs waiting or running in the worker's queue.
select id, queue_name, task_identifier, run_at, attempts, last_error, locked_by from graphile_worker.jobs order by run_at;
