import type { HttpAuth } from './schema.js';

const MASK = '***';

/** Every secret string an auth block holds (tokens, passwords, their encodings). */
export function secretsOf(auth: HttpAuth | undefined): string[] {
  if (!auth) return [];
  if ('bearer' in auth) return [auth.bearer];
  if ('basic' in auth) {
    const { username, password } = auth.basic;
    return [password, Buffer.from(`${username}:${password}`).toString('base64')];
  }
  if ('header' in auth) return [auth.header.value];
  return [auth.query.value, encodeURIComponent(auth.query.value), new URLSearchParams({ v: auth.query.value }).toString().slice(2)];
}

/**
 * Replaces every occurrence of a secret (and the auth query parameter's
 * value in any URL) in a text about to be logged or stored, so a token
 * never reaches logs, sync.run or sync.run_error.
 */
export function makeMasker(auth: HttpAuth | undefined): (text: string) => string {
  // Longest first, so a secret containing another is masked whole.
  const secrets = [...new Set(secretsOf(auth))].filter((s) => s.length >= 3).sort((a, b) => b.length - a.length);
  const queryName = auth && 'query' in auth ? auth.query.name : undefined;
  return (text: string) => {
    let out = text;
    for (const s of secrets) out = out.split(s).join(MASK);
    if (queryName) {
      // The name as encodeURIComponent and as URLSearchParams spell it.
      for (const spelling of new Set([encodeURIComponent(queryName), new URLSearchParams({ [queryName]: '' }).toString().slice(0, -1)])) {
        out = out.replace(new RegExp(`([?&]${escapeRegExp(spelling)}=)[^&#\\s]*`, 'g'), `$1${MASK}`);
      }
    }
    return out;
  };
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
