import { describe, it, expect, afterAll } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import net from 'node:net';
import { freePort } from '../src/db/embedded.js';
import { until } from './helpers/until.js';

// Commands run with no DATABASE_URL share the embedded server under
// SYNCLINE_HOME: started together they must not collide, and whichever
// leaves first must not stop the server under the others.

const children: ChildProcess[] = [];

function env(home: string, port: number): NodeJS.ProcessEnv {
  const e: NodeJS.ProcessEnv = { ...process.env, SYNCLINE_HOME: home, SYNCLINE_EMBEDDED_PORT: String(port), SYNCLINE_LOG_LEVEL: 'warn' };
  delete e.DATABASE_URL;
  delete e.TEST_DATABASE_URL;
  return e;
}

function run(args: string[], e: NodeJS.ProcessEnv): { child: ChildProcess; out: () => string; done: Promise<number | null> } {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], { env: e, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let out = '';
  child.stdout!.on('data', (b: Buffer) => { out += b.toString(); });
  child.stderr!.on('data', (b: Buffer) => { out += b.toString(); });
  const done = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  return { child, out: () => out, done };
}

function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
  });
}

/** The data directory (as root, serverHome may move it elsewhere and say where). */
function dataDir(home: string): string {
  const note = path.join(home, 'DATA_LOCATION');
  return path.join(existsSync(note) ? readFileSync(note, 'utf8').trim() : home, 'data');
}

function setup(): { home: string; config: string } {
  const home = mkdtempSync(path.join(os.tmpdir(), 'syncline-shared-'));
  const config = path.join(home, 'syncline.config.json');
  writeFileSync(config, JSON.stringify({ sources: {}, entities: {}, server: { port: 0 } }));
  return { home, config };
}

afterAll(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

describe('the embedded server shared by commands', () => {
  it('two commands started together both succeed, and the server stops when both are done', async () => {
    const { home, config } = setup();
    const port = await freePort();
    const e = env(home, port);
    const [a, b] = [run(['status', '--json', '--config', config], e), run(['status', '--json', '--config', config], e)];
    const codes = await Promise.all([a.done, b.done]);
    expect(codes, `${a.out()}\n---\n${b.out()}`).toEqual([0, 0]);
    expect(existsSync(path.join(dataDir(home), 'postmaster.pid'))).toBe(false);
    expect(await listening(port)).toBe(false);
  }, 240_000);

  it('the process that started the server leaves it running for another, and the last one out stops it', async () => {
    const { home, config } = setup();
    const port = await freePort();
    const e = env(home, port);
    const first = run(['serve', '--config', config], e);
    await until('the first serve to listen', async () => first.out().includes('Syncline dashboard and API'), 180_000);
    const second = run(['serve', '--config', config], e);
    await until('the second serve to listen', async () => second.out().includes('Syncline dashboard and API'), 180_000);

    first.child.kill('SIGTERM');
    expect(await first.done).toBe(0);
    // The second still works: its API answers from the database.
    const api = /Syncline dashboard and API: (\S+)/.exec(second.out())![1];
    const token = /#token=(\S+)/.exec(second.out())![1];
    const res = await fetch(new URL('api/sync/status', api), { headers: { authorization: `Bearer ${token}` } });
    expect(res.status).toBe(200);
    expect(await listening(port)).toBe(true);

    second.child.kill('SIGTERM');
    expect(await second.done).toBe(0);
    expect(existsSync(path.join(dataDir(home), 'postmaster.pid'))).toBe(false);
    expect(await listening(port)).toBe(false);
  }, 360_000);
});
