/**
 * What of an entity sync.entity may hold. Its definition is stored for the
 * runs, the audit and the API, but a secret written in an entity (a signed
 * csv URL's ?sig=, an API key passed as a param from ${ENV}) must not be:
 * those values are stored as *** and taken from the config file at each run.
 */
import { envValues, maskQuery } from './load.js';
import type { Config, EntityConfig } from './schema.js';

export const STORED_MASK = '***';

/** The entity as sync.entity stores it: secret-bearing values masked. */
export function storedDefinition(cfg: Config, e: EntityConfig): EntityConfig {
  const from = e.from as Record<string, unknown>;
  if ('file' in from && typeof from.file === 'string' && from.file.includes('?')) {
    return { ...e, from: { ...from, file: maskQuery(from.file) } } as EntityConfig;
  }
  if ('http' in from) {
    const http = from.http as { params: Record<string, string> };
    const secrets = [...envValues(cfg)].filter((v) => v.length >= 3);
    const params = Object.fromEntries(Object.entries(http.params).map(([k, v]) =>
      [k, secrets.some((s) => v.includes(s)) ? STORED_MASK : v]));
    return { ...e, from: { ...from, http: { ...http, params } } } as EntityConfig;
  }
  return e;
}

/**
 * The stored definition with its masked values taken back from the config
 * file's entity; a clear error when this process's config lacks them.
 */
export function withSecrets(name: string, stored: EntityConfig, fromFile: EntityConfig | undefined): EntityConfig {
  const from = stored.from as Record<string, unknown>;
  const file = fromFile?.from as Record<string, unknown> | undefined;
  const missing = () => new Error(`entity "${name}": its definition in sync.entity holds a secret that is not stored there (a masked `
    + 'URL query or param); run it from a process whose config file defines the entity, e.g. `syncline sync --config <file>`');
  if (typeof from.file === 'string' && from.file.includes(`=${STORED_MASK}`)) {
    if (typeof file?.file !== 'string') throw missing();
    return { ...stored, from: { ...from, file: file.file } } as EntityConfig;
  }
  if ('http' in from) {
    const http = from.http as { params: Record<string, string> };
    const masked = Object.entries(http.params).filter(([, v]) => v === STORED_MASK).map(([k]) => k);
    if (!masked.length) return stored;
    const real = (file?.http as { params?: Record<string, string> } | undefined)?.params;
    if (!real || masked.some((k) => real[k] === undefined)) throw missing();
    return { ...stored, from: { ...from, http: { ...http, params: { ...http.params, ...Object.fromEntries(masked.map((k) => [k, real[k]])) } } } } as EntityConfig;
  }
  return stored;
}
