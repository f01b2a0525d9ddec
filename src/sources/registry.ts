/**
 * Every source kind by the name a config's `kind` gives it. A new kind is a
 * folder in src/sources implementing SourceKind (port.ts) and one line here.
 */
import { csvSource } from './csv/index.js';
import { httpSource } from './http/index.js';
import { jsonlSource } from './jsonl/index.js';
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
