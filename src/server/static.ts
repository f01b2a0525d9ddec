/**
 * The dashboard's files: a fixed list, read once from src/server/dashboard
 * and from the uplot package (no CDN, no build step). Nothing here holds
 * data; the page fetches everything from /api with the token.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ServerResponse } from 'node:http';
import { sendText } from './http.js';
import type { Request, Route } from './router.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const uplotDir = path.dirname(require.resolve('uplot/package.json'));

// The page runs only its own scripts and styles and talks only to this server.
const CSP = [
  "default-src 'self'", "script-src 'self'", "style-src 'self'", "img-src 'self' data:", "connect-src 'self'",
  "font-src 'self'", "frame-ancestors 'none'", "base-uri 'none'", "form-action 'none'", "object-src 'none'",
].join('; ');

const ASSETS: Record<string, { file: string; type: string }> = {
  '/': { file: path.join(here, 'dashboard/index.html'), type: 'text/html; charset=utf-8' },
  '/app.js': { file: path.join(here, 'dashboard/app.js'), type: 'text/javascript; charset=utf-8' },
  '/app.css': { file: path.join(here, 'dashboard/app.css'), type: 'text/css; charset=utf-8' },
  '/favicon.svg': { file: path.join(here, 'dashboard/favicon.svg'), type: 'image/svg+xml' },
  '/vendor/uplot.esm.js': { file: path.join(uplotDir, 'dist/uPlot.esm.js'), type: 'text/javascript; charset=utf-8' },
  '/vendor/uplot.min.css': { file: path.join(uplotDir, 'dist/uPlot.min.css'), type: 'text/css; charset=utf-8' },
};

const cache = new Map<string, { body: Buffer; etag: string }>();

function load(urlPath: string): { body: Buffer; etag: string } {
  let hit = cache.get(urlPath);
  if (!hit) {
    const body = readFileSync(ASSETS[urlPath].file);
    hit = { body, etag: `"${createHash('sha1').update(body).digest('base64url')}"` };
    cache.set(urlPath, hit);
  }
  return hit;
}

function serveAsset(urlPath: string) {
  return async (_ctx: unknown, req: Request, res: ServerResponse): Promise<void> => {
    const { body, etag } = load(urlPath);
    const headers = { etag, 'cache-control': 'no-cache', ...(urlPath === '/' ? { 'content-security-policy': CSP } : {}) };
    if (req.raw.headers['if-none-match'] === etag) {
      res.writeHead(304, headers);
      res.end();
      return;
    }
    // Node leaves the body out of an answer to HEAD by itself.
    sendText(res, 200, body, ASSETS[urlPath].type, headers);
  };
}

export const staticRoutes: Route[] = Object.keys(ASSETS).map((p) => ({ method: 'GET', path: p, auth: 'none', handler: serveAsset(p) }));
