/**
 * A bare worker process for the bench's chunks phase: serves the task list
 * (sync_chunk among them) on the Syncline database, and applies no config
 * and starts no wave (the CLI's `worker` would sync the bench's never-run
 * entities on its own). DATABASE_URL: the Syncline database;
 * BENCH_CHUNK_CONFIG: the bench's config as JSON (its sources). Stops on SIGTERM.
 */
process.env.SYNCLINE_LOG_LEVEL ??= 'warn';
const { parseConfig } = await import('../src/config/load.js');
const { makePool } = await import('../src/db/pool.js');
const { Engine } = await import('../src/engine/run.js');
const { startWorker } = await import('../src/worker/worker.js');

const url = process.env.DATABASE_URL!;
const pool = makePool(url, { max: 6 });
const engine = new Engine(pool, url, parseConfig(JSON.parse(process.env.BENCH_CHUNK_CONFIG!), {}));
const handle = await startWorker(engine, { concurrency: 2 });
process.once('SIGTERM', () => {
  void (async () => {
    await handle.stop();
    await engine.close();
    await pool.end();
    process.exit(0);
  })();
});
