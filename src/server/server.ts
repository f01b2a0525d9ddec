/**
 * The operator API and dashboard over node:http: one route table, bearer
 * auth on /api and /metrics, JSON errors a person can act on. Manual syncs
 * run in this process through the engine; progress streams come from
 * NOTIFY sync_progress.
 */
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Engine } from '../engine/run.js';
import { log, maskUrls } from '../log.js';
import type { WorkerHandle } from '../worker/worker.js';
import { requireBearer } from './auth.js';
import { ProgressHub } from './events.js';
import { HttpError, sendError } from './http.js';
import { ManualSyncs } from './manual.js';
import { compile, match, type Route, type ServerContext } from './router.js';
import { alertRoutes } from './routes/alerts.js';
import { configRoutes } from './routes/config.js';
import { healthRoutes } from './routes/health.js';
import { metricsRoutes } from './routes/metrics.js';
import { syncRoutes } from './routes/sync.js';
import { staticRoutes } from './static.js';

// Open streams would keep close() waiting forever; past this, sockets are cut.
const CLOSE_WAIT_MS = 5000;

const ROUTES: Route[] = [...healthRoutes, ...syncRoutes, ...configRoutes, ...alertRoutes, ...metricsRoutes, ...staticRoutes];
const compiled = compile(ROUTES);

export interface ServerOptions {
  /** Runs manual syncs; its pool answers every query. */
  engine: Engine;
  host: string;
  port: number;
  token: string;
  /** The worker of this process, when there is one (npm start): /api/health asks it directly. */
  worker?: WorkerHandle;
}

export interface RunningServer {
  /** http://host:port/ */
  url: string;
  port: number;
  /** Stops taking requests, ends streams, cancels manual syncs still running, and closes. */
  close(): Promise<void>;
}

/** A database error that means the database is not there (rather than a bug). */
function unavailable(err: unknown): HttpError | null {
  const code = String((err as { code?: string }).code ?? '');
  if (/^(08|57P0)|^E(CONNREFUSED|CONNRESET|TIMEDOUT|NOTFOUND|HOSTUNREACH|PIPE)$/.test(code)) {
    return new HttpError(503, `the database is not reachable: ${maskUrls((err as Error).message)}`, 'check that PostgreSQL runs; GET /api/health tells more');
  }
  return null;
}

async function dispatch(ctx: ServerContext, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const url = new URL(req.url ?? '/', 'http://localhost');
  const found = match(compiled, req.method ?? 'GET', url.pathname);
  if (!found.route) {
    if (found.allowed.length) throw new HttpError(405, `${req.method} is not allowed on ${url.pathname}`, `use ${found.allowed.join(' or ')}`, {});
    const api = url.pathname.startsWith('/api/') || url.pathname === '/metrics';
    throw new HttpError(404, `no route ${req.method} ${url.pathname}`, api ? 'see "Operator API and dashboard" in the README for the routes' : 'the dashboard is at /');
  }
  if (found.route.auth === 'bearer') requireBearer(req.headers.authorization, ctx.token);
  await found.route.handler(ctx, { raw: req, url, params: found.params }, res);
}

async function handle(ctx: ServerContext, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const started = Date.now();
  // The path only: a stream's ticket rides in the query string.
  res.on('finish', () => log.debug({ method: req.method, path: req.url?.split('?')[0], status: res.statusCode, ms: Date.now() - started }, 'API request'));
  try {
    await dispatch(ctx, req, res);
  } catch (err) {
    if (res.headersSent) {
      res.destroy();
      return;
    }
    const known = err instanceof HttpError ? err : unavailable(err);
    if (known) {
      sendError(res, known, known.status === 401 ? { 'www-authenticate': 'Bearer realm="syncline"' } : {});
      return;
    }
    log.error({ err: maskUrls(String(err)), method: req.method, path: req.url?.split('?')[0] }, 'API request failed');
    sendError(res, new HttpError(500, `internal error: ${maskUrls((err as Error).message ?? String(err))}`, 'the server log has the details'));
  }
}

export async function startServer(opts: ServerOptions): Promise<RunningServer> {
  const hub = new ProgressHub(opts.engine.pool);
  const manual = new ManualSyncs(opts.engine);
  const ctx: ServerContext = { engine: opts.engine, token: opts.token, manual, hub, worker: opts.worker, startedAt: new Date() };
  const server = http.createServer((req, res) => void handle(ctx, req, res));
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => reject(err.code === 'EADDRINUSE'
      ? new Error(`port ${opts.port} on ${opts.host} is in use — stop the other process or set server.port (0 picks a free one)`, { cause: err })
      : err));
    server.listen(opts.port, opts.host, () => resolve());
  });
  server.on('error', (err) => log.error({ err: String(err) }, 'the operator API server failed'));
  await hub.start();
  const { port } = server.address() as AddressInfo;
  const host = opts.host.includes(':') ? `[${opts.host}]` : opts.host;
  return {
    url: `http://${host}:${port}/`,
    port,
    async close() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      await hub.close();
      await manual.close();
      const timer = setTimeout(() => server.closeAllConnections(), CLOSE_WAIT_MS);
      await closed;
      clearTimeout(timer);
    },
  };
}
