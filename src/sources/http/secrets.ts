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
  return spellings(auth.query.value);
}

// Secrets shorter than this are not searched for: replacing one or two
// characters everywhere would garble a message without hiding anything.
export const MIN_SECRET_LENGTH = 3;

/** A value as it may appear in a URL or a message: plain, percent-encoded, form-encoded. */
export function spellings(value: string): string[] {
  return [...new Set([value, encodeURIComponent(value), new URLSearchParams({ v: value }).toString().slice(2)])];
}

/**
 * Replaces every occurrence of a secret (and the auth query parameter's
 * value in any URL) in a text about to be logged or stored, so a token
 * never reaches logs, sync.run or sync.run_error. `extra` are more secrets
 * of the source: its configured header values.
 */
export function makeMasker(auth: HttpAuth | undefined, extra: readonly string[] = []): (text: string) => string {
  // Longest first, so a secret containing another is masked whole.
  const secrets = [...new Set([...secretsOf(auth), ...extra.flatMap(spellings)])]
    .filter((s) => s.length >= MIN_SECRET_LENGTH).sort((a, b) => b.length - a.length);
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
