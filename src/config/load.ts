import { readFileSync, existsSync } from 'node:fs';
import path from 'node:path';
import dotenv from 'dotenv';
import { z } from 'zod';
import { config as configSchema, type Config } from './schema.js';
import { expandPresets } from '../sources/http/presets.js';

export const DEFAULT_CONFIG_FILE = 'syncline.config.json';

export class ConfigError extends Error {
  constructor(readonly file: string, readonly problems: string[]) {
    super(`${file} is not valid:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
    this.name = 'ConfigError';
  }
}

/** JSON path of an issue in the form people read: entities.meters.key[0]. */
export function formatPath(segments: readonly PropertyKey[]): string {
  let out = '';
  for (const s of segments) {
    if (typeof s === 'number') out += `[${s}]`;
    else if (/^[A-Za-z_$][\w$]*$/.test(String(s))) out += out ? `.${String(s)}` : String(s);
    else out += `[${JSON.stringify(String(s))}]`;
  }
  return out || '(top level)';
}

const ENV_REF = /\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}/g;

/**
 * Replaces ${NAME} and ${NAME:-default} in every string of the parsed JSON.
 * Missing variables are collected with the path of the string that uses them.
 */
export function substituteEnv(value: unknown, env: NodeJS.ProcessEnv, problems: string[], at: PropertyKey[] = []): unknown {
  if (typeof value === 'string') {
    return value.replace(ENV_REF, (_m, name: string, fallback: string | undefined) => {
      const v = env[name];
      if (v !== undefined && v !== '') return v;
      if (fallback !== undefined) return fallback;
      problems.push(`${formatPath(at)}: environment variable ${name} is not set — export it or put it in .env`);
      return '';
    });
  }
  if (Array.isArray(value)) return value.map((v, i) => substituteEnv(v, env, problems, [...at, i]));
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, substituteEnv(v, env, problems, [...at, k])]));
  }
  return value;
}

function describeIssue(issue: z.core.$ZodIssue): string {
  const where = formatPath(issue.path);
  if (issue.code === 'unrecognized_keys') {
    return `${where}: unknown field${issue.keys.length > 1 ? 's' : ''} ${issue.keys.map((k) => `"${k}"`).join(', ')} — check the spelling against syncline.config.schema.json`;
  }
  if (issue.code === 'invalid_union' && 'errors' in issue && issue.errors.length) {
    // Report the alternative that got furthest rather than "invalid input".
    const best = [...issue.errors].sort((a, b) => a.length - b.length)[0];
    if (best.length) return describeIssue({ ...best[0], path: [...issue.path, ...best[0].path] });
  }
  if (issue.code === 'invalid_type' && issue.input === undefined) {
    return `${where}: is required (${issue.expected}) — add it`;
  }
  if (issue.code === 'invalid_type') {
    const got = issue.input === null ? 'null' : Array.isArray(issue.input) ? 'an array' : typeof issue.input;
    // The value itself is not repeated: it may be a secret from ${ENV}.
    return `${where}: must be ${issue.expected === 'array' ? 'an array' : `a ${issue.expected}`}, not ${got === 'object' ? 'an object' : `a ${got}`}`;
  }
  return `${where}: ${issue.message}`;
}

export function parseConfig(raw: unknown, env: NodeJS.ProcessEnv = process.env, file = DEFAULT_CONFIG_FILE): Config {
  const problems: string[] = [];
  const substituted = substituteEnv(raw, env, problems);
  // Presets expand into plain http options before validation; an unknown
  // preset or endpoint is reported alone (the schema would only add noise).
  const before = problems.length;
  const expanded = expandPresets(substituted, problems);
  if (problems.length > before) throw new ConfigError(file, problems);
  // reportInput: a wrong-typed value is told apart from a missing one.
  const result = configSchema.safeParse(expanded, { reportInput: true });
  if (!result.success) problems.push(...result.error.issues.map(describeIssue));
  if (problems.length) throw new ConfigError(file, problems);
  return result.data as Config;
}

/** Reads, substitutes and validates a config file; .env beside it is read first. */
export function loadConfig(file = process.env.SYNCLINE_CONFIG ?? DEFAULT_CONFIG_FILE, env: NodeJS.ProcessEnv = process.env): Config {
  const abs = path.resolve(file);
  if (!existsSync(abs)) {
    throw new ConfigError(file, [`the file does not exist — create it (see examples/) or pass --config <file>`]);
  }
  const envFile = path.join(path.dirname(abs), '.env');
  if (env === process.env && existsSync(envFile)) dotenv.config({ path: envFile, quiet: true });
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(abs, 'utf8'));
  } catch (err) {
    throw new ConfigError(file, [`not valid JSON: ${(err as Error).message}`]);
  }
  return parseConfig(raw, env, file);
}

/** The config with every source credential replaced, for printing. */
export function maskSecrets(cfg: Config): Config {
  const sources = Object.fromEntries(Object.entries(cfg.sources).map(([name, s]) => {
    if (s.kind === 'postgres' && s.url) {
      return [name, { ...s, url: s.url.replace(/(\/\/[^:/@]*:)[^@]*@/, '$1***@') }];
    }
    if (s.kind === 'http' && s.auth) {
      const a = s.auth;
      const auth = 'bearer' in a ? { bearer: '***' }
        : 'basic' in a ? { basic: { username: a.basic.username, password: '***' } }
          : 'header' in a ? { header: { name: a.header.name, value: '***' } }
            : { query: { name: a.query.name, value: '***' } };
      return [name, { ...s, auth }];
    }
    if (s.kind === 'csv' && s.headers) {
      return [name, { ...s, headers: Object.fromEntries(Object.keys(s.headers).map((h) => [h, '***'])) }];
    }
    return [name, s];
  }));
  const server = cfg.server?.token ? { ...cfg.server, token: '***' } : cfg.server;
  return { ...cfg, sources, ...(server ? { server } : {}) };
}
