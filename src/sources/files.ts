/**
 * A file source's bytes: a local path, or a URL fetched with the source's
 * headers under its redirect policy (csv and jsonl sources share this).
 */
import { createReadStream } from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { CriticalError } from './http/errors.js';
import { fetchFollowing } from './http/redirect.js';
import type { RedirectPolicy } from './http/schema.js';

/** Where an entity's file lives: a URL, or a path relative to the source's location (or the config's directory). */
export function fileLocation(src: { location?: string }, file: string, configDir: string): string {
  if (/^https?:\/\//.test(file)) return file;
  const base = src.location ?? configDir;
  if (/^https?:\/\//.test(base)) {
    // "?gid=0" belongs to the base's own path (a published sheet's /pub); a name goes below it.
    return new URL(file, file.startsWith('?') || base.endsWith('/') ? base : `${base}/`).toString();
  }
  return path.resolve(configDir, base, file);
}

export async function openBytes(location: string, src: { headers?: Record<string, string>; redirects?: RedirectPolicy }, signal: AbortSignal,
  hints: { kind: string; notFound: string }): Promise<Readable> {
  if (!/^https?:\/\//.test(location)) {
    const stream = createReadStream(location);
    await new Promise<void>((resolve, reject) => {
      stream.once('open', () => resolve());
      stream.once('error', (err) => reject(new Error(`cannot read ${location}: ${(err as Error).message} — check the path`, { cause: err })));
    });
    return stream;
  }
  const url = new URL(location);
  const headers = src.headers ?? {};
  // Without headers there is nothing to keep from another host: a published
  // Google Sheet answers from *.googleusercontent.com and must keep working.
  const policy = Object.keys(headers).length ? src.redirects ?? 'same-origin' : 'follow-without-credentials';
  // Messages show where, never a query string (a signed URL's token is in it).
  const describe = (u: URL | string) => {
    const x = new URL(String(u));
    return x.pathname === '/' ? x.origin : `${x.origin}${x.pathname}`;
  };
  const { response: res } = await fetchFollowing({
    url, home: url.origin, headers, bareHeaders: {}, secrets: Object.values(headers), policy, describe, signal,
    advice: (other) => `use the URL it redirects to on ${other} as the file's location if that host may have the headers, `
      + `or set "redirects": "follow-without-credentials" on the ${hints.kind} source to follow such redirects without them`,
  }).catch((err) => {
    if (err instanceof CriticalError) throw err;
    throw new Error(`cannot fetch ${url.origin}: ${(err as Error).message} — check the URL and the network`, { cause: err });
  });
  if (!res.ok || !res.body) {
    await res.body?.cancel().catch(() => undefined);
    const hint = res.status === 404 ? hints.notFound
      : res.status === 401 || res.status === 403 ? 'the file is not public or the credentials are wrong' : 'the server refused the request';
    throw new Error(`fetching ${url.pathname} answered ${res.status}: ${hint}`);
  }
  return Readable.fromWeb(res.body as import('node:stream/web').ReadableStream);
}

