import { existsSync } from 'node:fs';
import path from 'node:path';
import dotenv from 'dotenv';
import { DEFAULT_CONFIG_FILE } from '../config/load.js';

/**
 * An edge names its two databases the way its operators already do: a URL,
 * or host/port/db/user/password variables. POSTGRES_SYNC_* is the edge's own
 * database (Syncline's, so DATABASE_URL), POSTGRES_CLIENT_* the remote one
 * (POSTGRES_CLIENT_URL, which the config refers to as ${POSTGRES_CLIENT_URL}).
 */
export const SIDES = [
  { prefix: 'POSTGRES_SYNC', url: 'DATABASE_URL', what: 'the local (edge) database' },
  { prefix: 'POSTGRES_CLIENT', url: 'POSTGRES_CLIENT_URL', what: 'the remote (cloud) database' },
] as const;

/** A connection URL from <prefix>_HOST/PORT/DB/USER/PASSWORD; undefined when <prefix>_HOST is not set. */
export function urlFromParts(prefix: string, env: NodeJS.ProcessEnv): string | undefined {
  const get = (k: string) => env[`${prefix}_${k}`] || undefined;
  const host = get('HOST');
  if (!host) return undefined;
  for (const k of ['DB', 'USER']) {
    if (!get(k)) throw new Error(`${prefix}_HOST is set but ${prefix}_${k} is not — set it, or give the whole URL instead`);
  }
  const port = get('PORT') ?? '5432';
  if (!/^\d+$/.test(port)) throw new Error(`${prefix}_PORT must be a port number, not "${port}"`);
  const u = new URL('postgres://localhost');
  u.hostname = host;
  u.port = port;
  // Percent-encoded by hand: the URL setters leave "%" alone, which would
  // corrupt a password containing one.
  u.username = encodeURIComponent(get('USER')!);
  if (get('PASSWORD')) u.password = encodeURIComponent(get('PASSWORD')!);
  u.pathname = `/${encodeURIComponent(get('DB')!)}`;
  return u.toString();
}

/**
 * Reads the .env beside the config (as loading the config would, but before
 * it, so POSTGRES_* variables there count), then fills DATABASE_URL and
 * POSTGRES_CLIENT_URL from the parts where no URL is given. Returns the
 * variables it filled.
 */
export function prepareEdgeEnv(configFile: string | undefined, env: NodeJS.ProcessEnv = process.env): string[] {
  const file = path.resolve(configFile ?? env.SYNCLINE_CONFIG ?? DEFAULT_CONFIG_FILE);
  const dotEnv = path.join(path.dirname(file), '.env');
  if (env === process.env && existsSync(dotEnv)) dotenv.config({ path: dotEnv, quiet: true });
  const filled: string[] = [];
  for (const side of SIDES) {
    if (env[side.url]) continue;
    const url = urlFromParts(side.prefix, env);
    if (url) {
      env[side.url] = url;
      filled.push(side.url);
    }
  }
  return filled;
}

/** "user edge at 10.0.0.5:5432/edge": where a URL points, with the user and never the password. */
export function describeConnection(url: string): string {
  try {
    const u = new URL(url);
    const user = u.username ? `user ${decodeURIComponent(u.username)} at ` : '';
    return `${user}${u.hostname}:${u.port || 5432}/${decodeURIComponent(u.pathname.slice(1))}`;
  } catch {
    return 'an unparseable connection string';
  }
}
