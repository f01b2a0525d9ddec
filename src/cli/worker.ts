import { existsSync } from 'node:fs';
import path from 'node:path';
import { applyConfig, formatDiff } from '../config/apply.js';
import { PROJECT_ROOT } from '../db/database.js';
import { describeUrl } from '../db/pool.js';
import { log } from '../log.js';
import { mutateDemo, prepareDemo } from '../demo/seed.js';
import { startWorker } from '../worker/worker.js';
import { EXIT, openSession, UsageError, type GlobalOptions } from './context.js';
import { serveBesideWorker } from './serve.js';

// The demo's remote changes a little every minute so each run has work.
const DEMO_MUTATE_MS = 60_000;

export interface WorkerOptions extends GlobalOptions {
  crontab?: string;
  concurrency?: number;
}

/**
 * The long-running job: migrate, apply the config, seed the demo source if
 * the config has one, run the worker until SIGINT/SIGTERM, then shut down in
 * order: stop taking jobs, let the running merge finish, write job outcomes,
 * close pools, stop the embedded server.
 */
export async function worker(opts: WorkerOptions): Promise<number> {
  // A crontab named but missing would leave the housekeeping tasks unscheduled, silently.
  if (opts.crontab !== undefined && !existsSync(opts.crontab)) {
    throw new UsageError(`--crontab ${opts.crontab}: no such file — pass the path of a crontab file, or leave the option out to use the checkout's crontab`);
  }
  const s = await openSession(opts);
  let timer: NodeJS.Timeout | undefined;
  let api: { close(): Promise<void> } | null = null;
  try {
    const demoUrls = await prepareDemo(s.db.url, s.config, Boolean(s.db.embedded));
    if (demoUrls.length) {
      timer = setInterval(() => {
        for (const url of demoUrls) mutateDemo(url).catch((err) => log.warn({ err: String(err) }, 'demo mutation failed'));
      }, DEMO_MUTATE_MS);
    }
    const diffs = await applyConfig(s.pool, s.config);
    log.info({ changes: diffs.length }, diffs.length ? `config applied:\n${formatDiff(diffs)}` : 'config unchanged');
    const handle = await startWorker(s.engine, {
      crontabFile: opts.crontab ?? path.join(PROJECT_ROOT, 'crontab'), concurrency: opts.concurrency,
    });
    api = await serveBesideWorker(s, handle);
    // Work from the first minute: entities never synced start now, as one
    // wave of the roots and everything depending on them.
    await s.pool.query(`select sync.start_wave(array_agg(name order by name), 'manual', 'worker', '{}', true)
                          from sync.entity e
                         where enabled and direction = 'pull' and depends_on = '{}'
                           and not exists (select 1 from sync.run r where r.entity = e.name)
                        having count(*) > 0`);
    log.info({ database: describeUrl(s.db.url) }, 'worker running; Ctrl-C stops it gracefully');
    const signal = await new Promise<NodeJS.Signals>((resolve) => {
      let stopping = false;
      // Listeners stay installed: a second Ctrl-C (or the copy a wrapper such
      // as npm or tsx relays) must not kill the process mid-shutdown.
      for (const sig of ['SIGINT', 'SIGTERM'] as const) {
        process.on(sig, () => {
          if (stopping) log.info('still shutting down: waiting for running jobs to finish');
          stopping = true;
          resolve(sig);
        });
      }
      handle.failed.catch((err) => { log.error({ err: String(err) }, 'worker stopped unexpectedly'); resolve('SIGTERM'); });
    });
    log.info({ signal }, 'shutting down: finishing running jobs');
    clearInterval(timer);
    // The API first: no manual sync starts while the worker winds down.
    await api?.close();
    await handle.stop();
    return EXIT.ok;
  } finally {
    clearInterval(timer);
    await api?.close();
    await s.close();
    log.info('stopped');
  }
}
