import { readFileSync, existsSync } from 'node:fs';
import path from 'node:path';
import dotenv from 'dotenv';
import { config as configSchema, type Config } from './schema.js';
import { describeIssue, formatPath, hideEnvValues } from './issues.js';
import { describeJsonError } from './json-error.js';
import { referenceProblems } from './references.js';
import { expandPresets } from '../sources/http/presets.js';
import { spellings } from '../sources/http/secrets.js';

import { ConfigError, DEFAULT_CONFIG_FILE } from './errors.js';

// Defined beside what they need, exported here too: one place to import the config's surface from.
export { formatPath, ConfigError, DEFAULT_CONFIG_FILE };

const ENV_REF = /\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}/g;

/**
 * Replaces ${NAME} and ${NAME:-default} in every string of the parsed JSON.
 * Missing variables are collected with the path of the string that uses them;
 * the values taken from the environment (not a default written in the file)
 * are added to `fromEnv`, so `config show` can mask them.
 */
export function substituteEnv(value: unknown, env: NodeJS.ProcessEnv, problems: string[], at: PropertyKey[] = [],
  fromEnv: Set<string> = new Set()): unknown {
  if (typeof value === 'string') {
    return value.replace(ENV_REF, (_m, name: string, fallback: string | undefined) => {
      const v = env[name];
      if (v !== undefined && v !== '') {
        fromEnv.add(v);
        return v;
      }
      if (fallback !== undefined) return fallback;
      problems.push(`${formatPath(at)}: environment variable ${name} is not set — export it or put it in .env`);
      return '';
    });
  }
  if (Array.isArray(value)) return value.map((v, i) => substituteEnv(v, env, problems, [...at, i], fromEnv));
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, substituteEnv(v, env, problems, [...at, k], fromEnv)]));
  }
  return value;
}

// The values each parsed config took from the environment, for maskSecrets.
// Beside the config rather than in it: the schema knows no such field, and
// a config re-parsed from its own JSON must stay the same.
const ENV_VALUES = new WeakMap<Config, ReadonlySet<string>>();

/** The values `cfg` took from ${ENV} substitution (empty for a config parseConfig did not make). */
export function envValues(cfg: Config): ReadonlySet<string> {
  return ENV_VALUES.get(cfg) ?? new Set();
}

export function parseConfig(raw: unknown, env: NodeJS.ProcessEnv = process.env, file = DEFAULT_CONFIG_FILE): Config {
  const problems: string[] = [];
  const fromEnv = new Set<string>();
  const substituted = substituteEnv(raw, env, problems, [], fromEnv);
  // A schema message may quote what was written: a value from ${ENV} never reaches the screen.
  const invalid = () => new ConfigError(file, problems.map((p) => hideEnvValues(p, fromEnv)));
  // Presets expand into plain http options before validation; an unknown
  // preset or endpoint is reported alone (the schema would only add noise).
  const before = problems.length;
  const expanded = expandPresets(substituted, problems);
  if (problems.length > before) throw invalid();
  // reportInput: a wrong-typed value is told apart from a missing one.
  const result = configSchema.safeParse(expanded, { reportInput: true });
  if (!result.success) {
    const ctx = { schema: configSchema, input: expanded, fromEnv };
    problems.push(...result.error.issues.flatMap((issue) => describeIssue(issue, ctx)));
  }
  // Names are checked apart from the schema: zod's config-level refinement
  // runs only once all else parsed, and a misspelt name belongs beside the
  // other errors (looked up by own keys: a source named "constructor" is no source).
  problems.push(...referenceProblems(expanded));
  if (problems.length) throw invalid();
  const cfg = result.data as Config;
  ENV_VALUES.set(cfg, fromEnv);
  return cfg;
}

/** Reads, substitutes and validates a config file; .env beside it is read first. */
export function loadConfig(file = process.env.SYNCLINE_CONFIG ?? DEFAULT_CONFIG_FILE, env: NodeJS.ProcessEnv = process.env): Config {
  const abs = path.resolve(file);
  if (!existsSync(abs)) {
    throw new ConfigError(file, [`the file does not exist — create it (see examples/) or pass --config <file>`]);
  }
  const envFile = path.join(path.dirname(abs), '.env');
  if (env === process.env && existsSync(envFile)) dotenv.config({ path: envFile, quiet: true });
  const text = readFileSync(abs, 'utf8');
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new ConfigError(file, [describeJsonError(text, err as Error)]);
  }
  return parseConfig(raw, env, file);
}

const MASK = '***';

// Values from the environment shorter than this are masked only where they
// are the whole string: replacing one or two characters everywhere would
// garble the output without hiding anything.
const MIN_ENV_MASK_LENGTH = 3;

// Query parameters of a postgres URL that carry a credential (libpq's names).
const POSTGRES_SECRET_PARAMS = new Set(['password', 'sslpassword', 'sslkey']);

// scheme://user:password@host — the password may itself hold "@": it ends at
// the first "@" that a host (no "@" up to /, ?, # or the end) follows.
const URL_PASSWORD = /(\b[a-z][a-z0-9+.-]*:\/\/[^:@/\s]*:)[^\s]*?@(?=[^@\s/?#]*(?:[/?#\s]|$))/gi;

/** A URL with the password of its user part masked. */
function maskUserinfo(url: string): string {
  return url.replace(URL_PASSWORD, `$1${MASK}@`);
}

/** A URL with the values of its query parameters masked (all, or those `which` names); the names stay. */
export function maskQuery(url: string, which?: (name: string) => boolean): string {
  const q = url.indexOf('?');
  if (q < 0) return url;
  const hash = url.indexOf('#', q);
  const end = hash < 0 ? url.length : hash;
  const params = url.slice(q + 1, end).split('&').map((p) => {
    const eq = p.indexOf('=');
    if (eq < 0) return p && !which ? MASK : p; // a bare "?token" is a value too
    const name = p.slice(0, eq);
    let decoded = name;
    try { decoded = decodeURIComponent(name.replace(/\+/g, ' ')); } catch { /* keep it as written */ }
    return eq === p.length - 1 || (which && !which(decoded.toLowerCase())) ? p : `${name}=${MASK}`;
  });
  return `${url.slice(0, q + 1)}${params.join('&')}${url.slice(end)}`;
}

/** Every value of a record masked, the names kept. */
function maskValues(record: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.keys(record).map((k) => [k, MASK]));
}

/** Every string of a JSON value passed through `fn`. */
function mapStrings<T>(value: T, fn: (s: string) => string): T {
  if (typeof value === 'string') return fn(value) as T;
  if (Array.isArray(value)) return value.map((v) => mapStrings(v, fn)) as T;
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, mapStrings(v, fn)])) as T;
  }
  return value;
}

/**
 * The config as `config show` prints it: every value that came from
 * ${ENV} masked wherever it occurs, and every field known to hold a secret
 * masked whether it came from the environment or was written in the file —
 * http auth and header values, csv header values, the query strings of csv
 * and webhook URLs, postgres passwords (in the user part or as
 * password/sslpassword/sslkey parameters), the SMTP password, webhook
 * headers, server.token — and the password of any URL anywhere.
 */
export function maskSecrets(cfg: Config): Config {
  const sources = Object.fromEntries(Object.entries(cfg.sources).map(([name, s]) => {
    if (s.kind === 'postgres') {
      return [name, s.url ? { ...s, url: maskQuery(maskUserinfo(s.url), (p) => POSTGRES_SECRET_PARAMS.has(p)) } : s];
    }
    if (s.kind === 'http') {
      const a = s.auth;
      const auth = !a ? undefined
        : 'bearer' in a ? { bearer: MASK }
          : 'basic' in a ? { basic: { username: a.basic.username, password: MASK } }
            : 'header' in a ? { header: { name: a.header.name, value: MASK } }
              : { query: { name: a.query.name, value: MASK } };
      return [name, { ...s, ...(auth ? { auth } : {}), headers: maskValues(s.headers) }];
    }
    return [name, {
      ...s,
      ...(s.location !== undefined ? { location: maskQuery(s.location) } : {}),
      ...(s.headers ? { headers: maskValues(s.headers) } : {}),
    }];
  })) as Config['sources'];
  const entities = Object.fromEntries(Object.entries(cfg.entities).map(([name, e]) => {
    // A file's URL (or its name under a URL location) may carry a token: a signed URL's ?sig=.
    if (!['csv', 'jsonl'].includes(cfg.sources[e.source]?.kind ?? '') || !('file' in e.from)) return [name, e];
    return [name, { ...e, from: { ...e.from, file: maskQuery(e.from.file) } }];
  })) as Config['entities'];
  const { email, webhook } = cfg.alerts ?? {};
  const alerts = cfg.alerts && {
    ...cfg.alerts,
    ...(email ? { email: { ...email, smtp: maskUserinfo(email.smtp) } } : {}),
    ...(webhook ? {
      webhook: {
        ...webhook,
        // A chat webhook's path is its token (hooks.slack.com/services/…), as alerts/secrets.ts holds too.
        url: maskQuery(maskUserinfo(webhook.url)).replace(/^([a-z][a-z0-9+.-]*:\/\/[^/?#]*)\/[^?#]+/i, `$1/${MASK}`),
        ...(webhook.headers ? { headers: maskValues(webhook.headers) } : {}),
      },
    } : {}),
  };
  const server = cfg.server?.token ? { ...cfg.server, token: MASK } : cfg.server;
  const masked: Config = { ...cfg, sources, entities, ...(alerts ? { alerts } : {}), ...(server ? { server } : {}) };
  // Longest first, so a value containing another is masked whole.
  const fromEnv = [...envValues(cfg)].flatMap(spellings).sort((a, b) => b.length - a.length);
  return mapStrings(masked, (text) => {
    let out = text;
    for (const v of fromEnv) {
      if (out === v) return MASK;
      if (v.length >= MIN_ENV_MASK_LENGTH) out = out.split(v).join(MASK);
    }
    return maskUserinfo(out);
  });
}
