/**
 * The one-line summary of a run: its seconds are the run's own (sync.run's
 * finished_at - started_at), an entity run twice in a wave is one line over
 * both runs, and a result without a run says why instead of "run null".
 */
import { describe, it, expect, beforeAll } from 'vitest';
import type { RunResult } from '../src/engine/run.js';
import { summary, withRunSeconds } from '../src/engine/summary.js';
import { testDatabase, type TestDatabase } from './helpers/db.js';

const ok = (runId: number, extra: Partial<RunResult> = {}): RunResult => ({
  entity: 'orders', runId, status: 'succeeded', fetched: 10, inserted: 2, updated: 3, deleted: 1, unchanged: 4,
  quarantined: 0, deferred: 0, ...extra,
});

describe('summary', () => {
  it('prints the run\'s own seconds, not the milliseconds the caller counted; those only when it has none', () => {
    const line = summary(ok(42, { seconds: 2.4 }), 60_000);
    expect(line).toMatch(/ — run 42, 2\.4 s$/);
    expect(line).not.toContain('60.0 s');
    expect(summary(ok(42), 1500)).toMatch(/ — run 42, 1\.5 s$/);
  });

  it('an entity run twice in a wave: "2 runs (42, 43)" with the counts and seconds of both added up', () => {
    const first = ok(42, { fetched: 10, inserted: 2, updated: 3, deleted: 0, unchanged: 5, deferred: 1, seconds: 1.5 });
    const second = ok(43, { fetched: 10, inserted: 0, updated: 0, deleted: 1, unchanged: 9, deferred: 0, seconds: 0.5 });
    const line = summary({ ...second, passes: [first, second] }, 60_000);
    expect(line).toBe('✓ orders: fetched 20, +2 inserted, ~3 updated, -1 deleted, 14 unchanged — 2 runs (42, 43), 2.0 s');
    // Deletes still deferred are what the last pass left, not a sum.
    const again = ok(44, { deferred: 1, seconds: 1 });
    expect(summary({ ...again, passes: [ok(43, { deferred: 3, seconds: 1 }), again] }))
      .toMatch(/1 deletes deferred — 2 runs \(43, 44\), 2\.0 s$/);
  });

  it('never says "run null": a result without a run says why', () => {
    const lines = [
      summary({ entity: 'orders', runId: null, status: 'already-running' }),
      summary({ entity: 'orders', runId: null, status: 'skipped', error: 'a push entity runs in the edge cycle' }),
      summary({ entity: 'orders', runId: null, status: 'failed', error: 'no connection' }),
      summary({ ...ok(0), runId: null }, 1000),
    ];
    for (const line of lines) expect(line).not.toMatch(/\bnull\b/);
    expect(lines[0]).toBe('… orders: already running (its run has not recorded itself yet); not started again');
    expect(lines[1]).toBe('- orders: skipped before it started — a push entity runs in the edge cycle');
    expect(lines[2]).toBe('✗ orders: failed before it started — no connection');
    expect(lines[3]).toMatch(/ — no run recorded, 1\.0 s$/);
  });
});

describe('withRunSeconds', () => {
  let db: TestDatabase;
  beforeAll(async () => {
    db = await testDatabase('summary');
  });

  it('reads each run\'s seconds from sync.run, passes included, and leaves a run still going alone', async () => {
    const { rows } = await db.pool.query<{ id: number }>(
      `insert into sync.run (entity, trigger, status, started_at, finished_at)
       values ('orders', 'manual', 'succeeded', '2026-01-01 08:00+00', '2026-01-01 08:00:42.5+00'),
              ('orders', 'manual', 'succeeded', '2026-01-01 08:01+00', '2026-01-01 08:01:01.5+00'),
              ('stock', 'manual', 'running', '2026-01-01 08:00+00', null)
       returning id`);
    const [a, b, running] = rows.map((r) => Number(r.id));
    const [orders, stock, none] = await withRunSeconds(db.pool, [
      { ...ok(b), passes: [ok(a), ok(b)] },
      { entity: 'stock', runId: running, status: 'already-running' },
      { entity: 'x', runId: null, status: 'skipped', error: 'dependency failed' },
    ]);
    expect(orders.seconds).toBe(1.5);
    expect(orders.passes!.map((p) => p.seconds)).toEqual([42.5, 1.5]);
    expect(summary(orders, 999_000)).toMatch(new RegExp(` — 2 runs \\(${a}, ${b}\\), 44\\.0 s$`));
    expect(stock.seconds).toBeUndefined();
    expect(none).toEqual({ entity: 'x', runId: null, status: 'skipped', error: 'dependency failed' });
  });
});
