import { getPath } from './path.js';

/**
 * A record value as the text COPY loads into staging: null stays null,
 * strings as they are, numbers and booleans in their JSON spelling, objects
 * and arrays as JSON text (they land in json/jsonb columns or are cast in
 * SQL). Coercion into the target column's type happens in SQL, not here.
 */
export function toText(value: unknown): string | null {
  if (value === null || value === undefined) return null;
  if (typeof value === 'string') return value;
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint') return String(value);
  return JSON.stringify(value);
}

/** For each target column, the dotted path it reads: `fields` where given, else the column's own name. */
export function fieldPaths(columns: readonly string[], fields: Record<string, string> = {}): string[] {
  return columns.map((c) => fields[c] ?? c);
}

/**
 * A function turning a record into one text value a column, in `columns`
 * order. Paths are resolved once, so mapping a page costs no more than
 * walking its records.
 */
export function recordMapper(columns: readonly string[], fields?: Record<string, string>): (record: unknown) => (string | null)[] {
  const paths = fieldPaths(columns, fields);
  return (record) => paths.map((p) => toText(getPath(record, p)));
}

/** A record's values a column, and the columns whose field it lacks (a missing field is not a null). */
export interface MappedRecord {
  values: (string | null)[];
  absent?: string[];
}

/**
 * Like recordMapper, and also noting the columns whose path the record does
 * not have at all, so the merge can leave those values alone.
 */
export function recordReader(columns: readonly string[], fields?: Record<string, string>): (record: unknown) => MappedRecord {
  const paths = fieldPaths(columns, fields);
  return (record) => {
    let absent: string[] | undefined;
    const values = paths.map((p, i) => {
      const v = getPath(record, p);
      if (v === undefined) (absent ??= []).push(columns[i]);
      return toText(v);
    });
    return { values, absent };
  };
}

/** The same values keyed by column name, for messages and quarantined payloads. */
export function mapRecord(record: unknown, columns: readonly string[], fields?: Record<string, string>): Record<string, string | null> {
  const values = recordMapper(columns, fields)(record);
  return Object.fromEntries(columns.map((c, i) => [c, values[i]]));
}
