import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { testDatabases, type TestDatabase } from './helpers/db.js';
import { until } from './helpers/until.js';

// `npm start` runs the worker through `sh -c`; SIGTERM sent to npm alone (a
// supervisor stopping it) is relayed to that shell only. The script execs
// node, so the worker must get it and stop gracefully, not run on orphaned.

let sync: TestDatabase;
let source: TestDatabase;
let npm: ChildProcess | undefined;
let workerPid: number | undefined;
const dir = mkdtempSync(path.join(os.tmpdir(), 'syncline-start-'));

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

beforeAll(async () => {
  ({ sync, source } = await testDatabases('start'));
  await source.pool.query(`create table items (id int primary key, name text);
    insert into items select i, 'item ' || i from generate_series(1, 10) i`);
  await sync.pool.query('create table items (id int primary key, name text)');
});

afterAll(() => {
  // Only on failure is anything of ours still running.
  if (workerPid && alive(workerPid)) process.kill(workerPid, 'SIGKILL');
  if (npm?.pid && npm.exitCode === null && npm.signalCode === null) process.kill(-npm.pid, 'SIGKILL');
});

describe('npm start', () => {
  it('stops the worker gracefully when npm alone gets SIGTERM', async () => {
    const configFile = path.join(dir, 'syncline.config.json');
    writeFileSync(configFile, JSON.stringify({
      sources: { src: { kind: 'postgres', url: source.url } },
      entities: { items: { source: 'src', from: { table: 'items' }, target: 'items', key: ['id'] } },
      server: { port: 0 },
    }));
    let log = '';
    // Its own process group, so the signal below goes to npm only.
    npm = spawn('npm', ['start'], {
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: {
        ...process.env, DATABASE_URL: sync.url, SYNCLINE_CONFIG: configFile,
        SYNCLINE_LOG_LEVEL: 'info', SYNCLINE_LOG_FORMAT: 'json', npm_config_update_notifier: 'false',
      },
    });
    const closed = new Promise<void>((resolve) => npm!.stdout!.on('close', resolve));
    npm.stdout!.on('data', (b: Buffer) => { log += b.toString(); });
    npm.stderr!.on('data', (b: Buffer) => { log += b.toString(); });

    await until('the worker to run', async () => log.includes('worker running'), 90_000);
    workerPid = await until('the worker to announce itself', async () => {
      const { rows } = await sync.pool.query<{ pid: number }>('select pid from sync.worker where stopped_at is null');
      return rows[0]?.pid;
    });
    expect(workerPid).not.toBe(npm.pid);

    process.kill(npm.pid!, 'SIGTERM');
    // The worker's output ends when it has exited (npm may go first).
    await closed;
    await until('the worker process to exit', async () => !alive(workerPid!));
    expect(log).toContain('"msg":"shutting down: finishing running jobs"');
    expect(log).toContain('"msg":"stopped"');
    const { rows } = await sync.pool.query(
      'select count(*)::int as pools, bool_and(stopped_at is not null) as stopped from sync.worker where pid = $1', [workerPid]);
    expect(rows[0].pools).toBeGreaterThan(0);
    expect(rows[0].stopped).toBe(true);
  });
});
