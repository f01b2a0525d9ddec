/**
 * What a sync is judged against: the raw COPY floor, and the upserts a
 * hand-written sync does (row by row, and batched 1,000 rows a statement).
 */
import { pipeline } from 'node:stream/promises';
import type pg from 'pg';
import { to as copyTo, from as copyFrom } from 'pg-copy-streams';
import { COLUMNS } from './workload.js';

const cols = COLUMNS.join(', ');

/** COPY … TO STDOUT on the source piped (through this process) into COPY … FROM STDIN on the target. */
export async function copyFloor(src: pg.Pool, dst: pg.Pool, from: string, into: string): Promise<void> {
  const a = await src.connect();
  const b = await dst.connect();
  try {
    await pipeline(
      a.query(copyTo(`copy ${from} (${cols}) to stdout`)),
      b.query(copyFrom(`copy ${into} (${cols}) from stdin`)),
    );
  } finally {
    a.release();
    b.release();
  }
}

const upsertTail = `on conflict (tenant, id) do update set
  ${COLUMNS.filter((c) => c !== 'tenant' && c !== 'id').map((c) => `${c} = excluded.${c}`).join(', ')}`;

/** Reads the source in key order, 1,000 rows a page (keyset pagination), as a hand-written sync would. */
async function* pages(src: pg.Pool, from: string, limit: number): AsyncGenerator<unknown[][]> {
  let last: [string, number] = ['', 0];
  let done = 0;
  while (done < limit) {
    const { rows } = await src.query<{ tenant: string; id: number }>({
      text: `select ${cols} from ${from} where (tenant, id) > ($1, $2) order by tenant, id limit $3`,
      values: [last[0], last[1], Math.min(1000, limit - done)],
      rowMode: 'array',
    } as pg.QueryConfig);
    if (!rows.length) return;
    const arr = rows as unknown as unknown[][];
    const tail = arr[arr.length - 1];
    last = [tail[0] as string, tail[1] as number];
    done += arr.length;
    yield arr.map((r) => r.map((v, i) => (COLUMNS[i] === 'attrs' && v !== null ? JSON.stringify(v) : v)));
  }
}

/** One INSERT … ON CONFLICT a row, autocommit (one transaction a row). Returns the rows written. */
export async function rowByRow(src: pg.Pool, dst: pg.Pool, from: string, into: string, limit: number): Promise<number> {
  const c = await dst.connect();
  let n = 0;
  try {
    const text = `insert into ${into} (${cols}) values (${COLUMNS.map((_, i) => `$${i + 1}`).join(', ')}) ${upsertTail}`;
    for await (const page of pages(src, from, limit)) {
      for (const row of page) {
        await c.query({ name: 'bench_upsert_row', text, values: row });
        n++;
      }
    }
  } finally {
    c.release();
  }
  return n;
}

/** The same upsert, 1,000 rows a statement, autocommit. Returns the rows written. */
export async function batched(src: pg.Pool, dst: pg.Pool, from: string, into: string, limit: number): Promise<number> {
  const c = await dst.connect();
  let n = 0;
  const w = COLUMNS.length;
  const textFor = (rows: number) => `insert into ${into} (${cols}) values ${Array.from({ length: rows },
    (_, r) => `(${COLUMNS.map((_, i) => `$${r * w + i + 1}`).join(', ')})`).join(', ')} ${upsertTail}`;
  const full = textFor(1000);
  try {
    for await (const page of pages(src, from, limit)) {
      const values = page.flat();
      if (page.length === 1000) await c.query({ name: 'bench_upsert_1000', text: full, values });
      else await c.query(textFor(page.length), values);
      n += page.length;
    }
  } finally {
    c.release();
  }
  return n;
}
