/**
 * The bench table and the changes applied to it. Rows are generated in SQL
 * (generate_series), never row by row. The composite key (tenant, id) is not
 * in physical order, so index inserts land all over the B-tree as they would
 * for real data.
 */

export const COLUMNS = ['tenant', 'id', 'name', 'price', 'qty', 'updated_at', 'attrs'] as const;

export const DDL = (table: string) => `create table ${table} (
  tenant text not null,
  id integer not null,
  name text not null,
  price numeric(12,2),
  qty integer,
  updated_at timestamptz not null,
  attrs jsonb,
  primary key (tenant, id))`;

/** Row g of the data set; `ts` is its updated_at. */
const rowExpr = (ts: string) => `'t' || lpad((g % 50)::text, 2, '0'), g, 'item ' || md5(g::text),
  round((g % 100000) / 100.0 + 0.99, 2), (g * 7) % 1000, ${ts},
  jsonb_build_object('color', (array['red', 'green', 'blue', 'black'])[g % 4 + 1], 'size', g % 13,
                     'tags', jsonb_build_array('bench', g % 7))`;

/** Source rows 1..n, stamped in the past (2024), so later changes sort after them. */
export const generate = (table: string, from: number, to: number) =>
  `insert into ${table} (${COLUMNS.join(', ')})
   select ${rowExpr(`timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second'`)}
     from generate_series(${from}, ${to}) g`;

/**
 * One change set: 1% of the rows updated, 0.1% deleted, 0.1% inserted (ids
 * after `nextId`), all stamped now(). `salt` picks disjoint rows for a second set.
 */
export function changeSet(table: string, rows: number, nextId: number, salt: number) {
  const inserts = Math.floor(rows / 1000);
  return {
    update: `update ${table} set price = price + 1, qty = qty + 1, attrs = attrs || '{"changed": true}', updated_at = now()
              where id % 100 = ${7 + salt}`,
    delete: `delete from ${table} where id % 1000 = ${3 + salt}`,
    insert: inserts > 0 ? `${generate(table, nextId, nextId + inserts - 1).replace(
      `timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second'`, 'now()')}` : null,
    inserts,
  };
}

/** A checksum of a table's rows that both databases compute the same way (same server settings). */
export const checksum = (table: string, where = 'true') =>
  `select count(*)::bigint as n,
          coalesce(sum(hashtextextended(row(${COLUMNS.join(', ')})::text, 0)), 0)::text as h
     from ${table} where ${where}`;
