/**
 * `syncline serve`: the operator API and dashboard until Ctrl-C; and the
 * same server beside the worker in `npm start` (serveBesideWorker).
 */
import { describeUrl, makePool } from '../db/pool.js';
import { DEFAULT_API_PORT, type Config } from '../config/schema.js';
import { Engine } from '../engine/run.js';
import { log } from '../log.js';
import { resolveToken, type ApiToken } from '../server/auth.js';
import { startServer, type RunningServer } from '../server/server.js';
import type { WorkerHandle } from '../worker/worker.js';
import { EXIT, openSession, readConfig, UsageError, type GlobalOptions, type Session } from './context.js';

// The server's own connections beside the worker's: manual runs, streams
// and dashboard queries never wait for a pool the worker's jobs hold.
const API_POOL_SIZE = 8;

export interface ServeOptions extends GlobalOptions {
  host?: string;
  port?: number;
}

interface Listen {
  host: string;
  port: number;
  auth: ApiToken;
}

/** Address, port and token from the options, the config's "server" section and the environment. */
export function listenSettings(config: Config, opts: { host?: string; port?: number } = {}, env = process.env): Listen {
  const host = opts.host ?? config.server?.host ?? '127.0.0.1';
  const port = opts.port ?? config.server?.port ?? DEFAULT_API_PORT;
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new UsageError(`--port: "${opts.port}" is not a port number (0 to 65535)`);
  try {
    return { host, port, auth: resolveToken(host, config.server?.token, env) };
  } catch (err) {
    throw new UsageError((err as Error).message, { cause: err });
  }
}

/** Tells the person at the terminal where the dashboard is and, when it was generated, the token (never the log). */
function announce(url: string, auth: ApiToken): void {
  const lines = [`Syncline dashboard and API: ${url}`];
  if (auth.generated) {
    lines.push(`  API token (generated for this process; set SYNCLINE_API_TOKEN to keep one): ${auth.token}`,
      `  sign in directly: ${url}#token=${auth.token}`);
  }
  process.stdout.write(`${lines.join('\n')}\n`);
}

function untilSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    for (const sig of ['SIGINT', 'SIGTERM'] as const) process.on(sig, () => resolve(sig));
  });
}

export async function serve(opts: ServeOptions): Promise<number> {
  // Settings first: a refusal (no token on a public address) needs no database.
  const listen = listenSettings(readConfig(opts), opts);
  const s = await openSession(opts);
  try {
    const api = await startServer({ engine: s.engine, host: listen.host, port: listen.port, token: listen.auth.token });
    log.info({ url: api.url, database: describeUrl(s.db.url) }, 'operator API listening');
    announce(api.url, listen.auth);
    const signal = await untilSignal();
    log.info({ signal }, 'shutting down the operator API');
    await api.close();
    return EXIT.ok;
  } finally {
    await s.close();
  }
}

/**
 * The API and dashboard beside the worker (`npm start`), on a pool of its
 * own. A server that cannot start (port taken, no token on a public
 * address) is reported and the worker runs on without it.
 */
export async function serveBesideWorker(s: Session, worker: WorkerHandle): Promise<{ close(): Promise<void> } | null> {
  if (s.config.server?.withWorker === false) return null;
  const pool = makePool(s.db.url, { max: API_POOL_SIZE });
  const engine = new Engine(pool, s.db.url, s.config, s.engine.configDir);
  let api: RunningServer | undefined;
  const release = async () => {
    await engine.close();
    await pool.end();
  };
  try {
    const listen = listenSettings(s.config);
    api = await startServer({ engine, host: listen.host, port: listen.port, token: listen.auth.token, worker });
    announce(api.url, listen.auth);
  } catch (err) {
    log.error({ err: (err as Error).message }, 'the operator API did not start; the worker runs without it');
    await release();
    return null;
  }
  let closing: Promise<void> | undefined;
  return {
    close: () => (closing ??= api!.close().then(release)),
  };
}
