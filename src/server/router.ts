/**
 * A route table small enough to read at a glance: method, a path pattern
 * with :params, whether the bearer token is required, and the handler.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Engine } from '../engine/run.js';
import type { WorkerHandle } from '../worker/worker.js';
import type { ProgressHub } from './events.js';
import type { ManualSyncs } from './manual.js';

export interface ServerContext {
  engine: Engine;
  token: string;
  manual: ManualSyncs;
  hub: ProgressHub;
  /** The worker of this process, when the server runs beside it (`npm start`). */
  worker?: WorkerHandle;
  startedAt: Date;
}

export interface Request {
  raw: IncomingMessage;
  url: URL;
  params: Record<string, string>;
}

export type Handler = (ctx: ServerContext, req: Request, res: ServerResponse) => Promise<void>;

export interface Route {
  method: 'GET' | 'POST' | 'PUT';
  path: string;
  /**
   * bearer: the Authorization header; stream: the header or a ticket
   * (EventSource sends no headers); none: the dashboard's static files.
   */
  auth: 'bearer' | 'stream' | 'none';
  handler: Handler;
}

interface Compiled extends Route {
  pattern: RegExp;
  names: string[];
}

export function compile(routes: Route[]): Compiled[] {
  return routes.map((r) => {
    const names: string[] = [];
    const source = r.path.split('/').map((seg) => {
      if (!seg.startsWith(':')) return seg.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
      names.push(seg.slice(1));
      return '([^/]+)';
    }).join('/');
    return { ...r, pattern: new RegExp(`^${source}$`), names };
  });
}

/** The route for a method and path; `allowed` lists the methods of a path that exists under another method. */
export function match(routes: Compiled[], method: string, path: string):
  { route: Compiled; params: Record<string, string> } | { route: null; allowed: string[] } {
  const allowed: string[] = [];
  for (const r of routes) {
    const m = r.pattern.exec(path);
    if (!m) continue;
    if (r.method !== method && !(method === 'HEAD' && r.method === 'GET')) {
      allowed.push(r.method);
      continue;
    }
    let params: Record<string, string>;
    try {
      params = Object.fromEntries(r.names.map((n, i) => [n, decodeURIComponent(m[i + 1])]));
    } catch {
      continue;
    }
    // No name in Postgres holds U+0000 (and a query with one fails): nothing is there.
    if (Object.values(params).some((v) => v.includes('\u0000'))) continue;
    return { route: r, params };
  }
  return { route: null, allowed };
}
