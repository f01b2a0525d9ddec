/**
 * Every source kind by the name a config's `kind` gives it. A new kind is a
 * folder in src/sources implementing SourceKind (port.ts) and one line here.
 */
import { csvSource } from './csv/index.js';
import { httpSource } from './http/index.js';
import { jsonlSource } from './jsonl/index.js';
import type { Config, EntityConfig } from '../config/schema.js';
import type { SourceKind } from './port.js';
import { postgresSource } from './postgres/index.js';

const KINDS: Record<string, SourceKind> = {
  postgres: postgresSource,
  csv: csvSource,
  http: httpSource,
  jsonl: jsonlSource,
};

/** The kind of a configured source; undefined for a kind nothing implements. */
export function sourceKind(kind: string): SourceKind | undefined {
  return KINDS[kind];
}

/** The kind of source an entity reads; a clear error for a source the config lacks or a kind nothing implements. */
export function entitySourceKind(config: Config, name: string, def: EntityConfig): SourceKind {
  const src = Object.hasOwn(config.sources, def.source) ? config.sources[def.source] : undefined;
  if (!src) {
    throw new Error(`entity "${name}" reads from source "${def.source}", which the config file does not define — add it under "sources"`);
  }
  const kind = sourceKind(src.kind);
  if (!kind) throw new Error(`source "${def.source}" is of kind "${src.kind}", which this Syncline cannot read`);
  return kind;
}
