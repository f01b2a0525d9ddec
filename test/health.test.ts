/**
 * The health, alert and settings SQL of migration 000003, against a real
 * database: alert triggers (consecutive failures, throughput), freshness,
 * the validation and audit of sync.entity's tunables, retention
 * (sync.maintain), the cron helpers, and the sync.health / sync.trend views.
 * Each property case works in an entity of its own, so cases do not meet.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fc from 'fast-check';
import pg from 'pg';
import { parseCronItems } from 'graphile-worker';
import { testDatabase, type TestDatabase } from './helpers/db.js';
import { q } from './helpers/gen.js';

let db: TestDatabase;
beforeAll(async () => {
  db = await testDatabase('health');
});

let seq = 0;
const fresh = (prefix: string) => `${prefix}_${seq++}`;

type Outcome = 'succeeded' | 'partial' | 'failed' | 'skipped' | 'cancelled';

async function addEntity(pool: pg.Pool, name: string, settings: Record<string, unknown> = {}): Promise<void> {
  const cols = Object.keys(settings);
  await pool.query(
    `insert into sync.entity (name, source, mode, target_schema, target_table, key_columns${cols.map((c) => `, ${q(c)}`).join('')})
     values ($1, 'src', 'mirror', 'public', 'items', '{id}'${cols.map((_, i) => `, $${i + 2}`).join('')})`,
    [name, ...cols.map((c) => settings[c])]);
}

/** A finished run: recorded whole (sync.record_outcome, an insert) or started and then finished (an update from running). */
async function finishRun(entity: string, status: Outcome, via: 'insert' | 'update', error: string | null = null): Promise<number> {
  if (via === 'insert') {
    return Number((await db.pool.query('select sync.record_outcome($1, $2, $3, $4) as id', [entity, 'cron', status, error])).rows[0].id);
  }
  const { rows } = await db.pool.query(`insert into sync.run (entity, trigger) values ($1, 'cron') returning id`, [entity]);
  await db.pool.query(`update sync.run set status = $2, finished_at = now(), error = $3 where id = $1 and status = 'running'`,
    [rows[0].id, status, error]);
  return Number(rows[0].id);
}

interface AlertRow { id: string; occurrences: number; message: string; resolved_at: Date | null; acknowledged_at: Date | null }
async function alertsOf(entity: string, kind: string, pool: pg.Pool = db.pool): Promise<AlertRow[]> {
  return (await pool.query<AlertRow>(
    'select id, occurrences, message, resolved_at, acknowledged_at from sync.alert where entity = $1 and kind = $2 order by id',
    [entity, kind])).rows;
}
const unresolved = (alerts: AlertRow[]) => alerts.filter((a) => a.resolved_at === null);

/** Runs fn on a client whose session time zone is UTC (date_trunc on timestamptz follows the session's zone). */
async function inUtc<T>(fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
  const c = await db.pool.connect();
  try {
    await c.query(`set time zone 'UTC'`);
    return await fn(c);
  } finally {
    await c.query('reset time zone');
    c.release();
  }
}

describe('alerts raised by the run trigger', () => {
  it('consecutive failures: one unresolved alert exactly while the trailing failure streak reaches the threshold; occurrences count the failures at or above it', async () => {
    const run = fc.record({
      status: fc.constantFrom<Outcome>('succeeded', 'partial', 'failed', 'failed', 'failed', 'skipped', 'cancelled'),
      via: fc.constantFrom<'insert' | 'update'>('insert', 'update'),
    });
    await fc.assert(fc.asyncProperty(fc.integer({ min: 1, max: 5 }), fc.array(run, { maxLength: 14 }), async (threshold, runs) => {
      const entity = fresh('fail');
      await addEntity(db.pool, entity, { failure_threshold: threshold });
      let streak = 0; // failed runs since the last succeeded or partial one; skipped and cancelled ones aside
      let episodes = 0; // times the streak reached the threshold
      for (const r of runs) {
        await finishRun(entity, r.status, r.via, r.status === 'failed' ? `boom ${streak}` : null);
        if (r.status === 'failed') {
          streak += 1;
          if (streak === threshold) episodes += 1;
        } else if (r.status === 'succeeded' || r.status === 'partial') {
          streak = 0;
        }
        const alerts = await alertsOf(entity, 'consecutive_failures');
        expect(alerts).toHaveLength(episodes);
        const open = unresolved(alerts);
        if (streak >= threshold) {
          expect(open).toHaveLength(1);
          expect(open[0].occurrences).toBe(streak - threshold + 1);
          expect(open[0].message).toContain(`${streak} runs of ${entity} failed in a row`);
        } else {
          expect(open).toHaveLength(0);
        }
      }
    }), { numRuns: 25 });
  });

  it('a failing entity whose alert was acknowledged keeps one alert, counting on, until a success resolves it', async () => {
    const entity = fresh('ack');
    await addEntity(db.pool, entity, { failure_threshold: 2 });
    await finishRun(entity, 'failed', 'insert');
    await finishRun(entity, 'failed', 'update');
    const [alert] = await alertsOf(entity, 'consecutive_failures');
    expect((await db.pool.query('select sync.ack_alert($1, $2) as ok', [alert.id, 'tester'])).rows[0].ok).toBe(true);
    expect((await db.pool.query('select sync.ack_alert($1, $2) as ok', [alert.id, 'tester'])).rows[0].ok).toBe(false);
    await finishRun(entity, 'failed', 'insert');
    let alerts = await alertsOf(entity, 'consecutive_failures');
    expect(alerts).toHaveLength(1);
    expect(alerts[0]).toMatchObject({ occurrences: 2, resolved_at: null });
    expect(alerts[0].acknowledged_at).not.toBeNull();
    await finishRun(entity, 'succeeded', 'update');
    alerts = await alertsOf(entity, 'consecutive_failures');
    expect(alerts).toHaveLength(1);
    expect(alerts[0].resolved_at).not.toBeNull();
    await expect(db.pool.query('select sync.ack_alert($1, $2)', [alert.id, ' '])).rejects.toThrow(/say who acknowledges/);
  });

  it('throughput: after five or more runs, a run over 1 s and slower than throughput_factor × the median of the last 20 raises one alert; a normal one resolves it', async () => {
    // Durations in whole milliseconds and the factor in tenths keep the model's comparison exact.
    const scenario = fc.record({
      factor10: fc.constantFrom(15, 20, 25, 30, 50),
      baseMs: fc.integer({ min: 150, max: 20_000 }),
      // Percent of the base: five normal runs first, then a mix with slow ones.
      head: fc.array(fc.integer({ min: 70, max: 130 }), { minLength: 5, maxLength: 8 }),
      tail: fc.array(fc.oneof({ weight: 3, arbitrary: fc.integer({ min: 60, max: 140 }) },
        { weight: 2, arbitrary: fc.integer({ min: 150, max: 1200 }) }), { minLength: 1, maxLength: 14 }),
    });
    let raisedSomewhere = false;
    await fc.assert(fc.asyncProperty(scenario, async ({ factor10, baseMs, head, tail }) => {
      const entity = fresh('slow');
      await addEntity(db.pool, entity, { throughput_factor: factor10 / 10 });
      const prior: number[] = [];
      let open = false;
      let occurrences = 0;
      let raised = 0;
      const durations = [...head, ...tail].map((p) => Math.round((baseMs * p) / 100));
      for (const [i, ms] of durations.entries()) {
        await db.pool.query(
          `insert into sync.run (entity, trigger, status, started_at, finished_at)
           select $1, 'cron', 'succeeded', t, t + ($3::text || ' milliseconds')::interval
             from (select now() - interval '30 days' + make_interval(hours => $2) as t) x`, [entity, i, ms]);
        const window = prior.slice(-20).sort((a, b) => a - b);
        if (window.length >= 5) {
          const n = window.length;
          const twiceMedian = n % 2 ? 2 * window[(n - 1) / 2] : window[n / 2 - 1] + window[n / 2];
          // ms / 1000 > 1 and ms > factor × median  ⇔  20·ms > factor10 · 2·median
          if (ms > 1000 && 20 * ms > factor10 * twiceMedian) {
            if (!open) raised += 1;
            open = true;
            occurrences += 1;
          } else {
            open = false;
            occurrences = 0;
          }
        }
        prior.push(ms);
        const alerts = await alertsOf(entity, 'throughput');
        expect(alerts).toHaveLength(raised);
        const still = unresolved(alerts);
        expect(still).toHaveLength(open ? 1 : 0);
        if (open) expect(still[0].occurrences).toBe(occurrences);
      }
      raisedSomewhere ||= raised > 0;
    }), { numRuns: 20 });
    expect(raisedSomewhere).toBe(true);
  });

  it('throughput: five 2 s runs, then a 10 s run with factor 3 alerts once; a 2 s run resolves it; backfill runs do not count', async () => {
    const entity = fresh('slow');
    await addEntity(db.pool, entity);
    const run = (i: number, seconds: number, trigger = 'cron') => db.pool.query(
      `insert into sync.run (entity, trigger, status, started_at, finished_at)
       select $1, $4, 'succeeded', t, t + make_interval(secs => $3) from (select now() - interval '1 day' + make_interval(mins => $2) as t) x`,
      [entity, i, seconds, trigger]);
    for (let i = 0; i < 5; i++) await run(i, 2);
    await run(5, 30, 'backfill');
    expect(await alertsOf(entity, 'throughput')).toHaveLength(0);
    await run(6, 10);
    const [alert, ...rest] = await alertsOf(entity, 'throughput');
    expect(rest).toHaveLength(0);
    expect(alert).toMatchObject({ occurrences: 1, resolved_at: null });
    expect(alert.message).toMatch(/took 10(\.0)? s against a median of 2(\.0)? s/);
    await run(7, 2);
    expect(unresolved(await alertsOf(entity, 'throughput'))).toHaveLength(0);
  });
});

describe('freshness', () => {
  it('an entity past its freshness window gets exactly one stale alert from sync.check_freshness(), however often it runs; a fresh one none; a success resolves it', async () => {
    const scenario = fc.record({
      freshness: fc.integer({ min: 1, max: 240 }), // minutes
      lastSuccess: fc.option(fc.integer({ min: 0, max: 600 }), { nil: null }), // minutes ago
      created: fc.integer({ min: 0, max: 600 }), // minutes ago
      calls: fc.integer({ min: 1, max: 3 }),
    }).filter(({ freshness, lastSuccess, created }) => Math.abs((lastSuccess ?? created) - freshness) >= 2);
    await fc.assert(fc.asyncProperty(scenario, async ({ freshness, lastSuccess, created, calls }) => {
      const entity = fresh('fresh');
      await addEntity(db.pool, entity, { freshness: `${freshness} minutes` });
      await db.pool.query('update sync.entity set created_at = now() - make_interval(mins => $2) where name = $1', [entity, created]);
      if (lastSuccess !== null) {
        await db.pool.query(`insert into sync.run (entity, trigger, status, started_at, finished_at)
          values ($1, 'cron', 'succeeded', now() - make_interval(mins => $2), now() - make_interval(mins => $2))`, [entity, lastSuccess]);
      }
      const stale = (lastSuccess ?? created) > freshness;
      for (let i = 0; i < calls; i++) await db.pool.query('select sync.check_freshness()');
      let alerts = await alertsOf(entity, 'stale');
      expect(alerts).toHaveLength(stale ? 1 : 0);
      if (stale) {
        expect(alerts[0]).toMatchObject({ occurrences: calls, resolved_at: null });
        expect(alerts[0].message).toContain(`${entity} has had no successful run for`);
      }
      expect((await db.pool.query('select stale from sync.status where entity = $1', [entity])).rows[0].stale).toBe(stale);
      await finishRun(entity, 'succeeded', lastSuccess === null ? 'insert' : 'update');
      alerts = await alertsOf(entity, 'stale');
      expect(unresolved(alerts)).toHaveLength(0);
      expect(alerts).toHaveLength(stale ? 1 : 0);
      await db.pool.query('select sync.check_freshness()');
      expect(await alertsOf(entity, 'stale')).toHaveLength(stale ? 1 : 0);
    }), { numRuns: 25 });
  });

  it('a disabled entity or one without a freshness window is never stale', async () => {
    const off = fresh('fresh_off');
    const none = fresh('fresh_none');
    await addEntity(db.pool, off, { freshness: '1 minute', enabled: false });
    await addEntity(db.pool, none);
    await db.pool.query(`update sync.entity set created_at = now() - interval '30 days' where name = any($1)`, [[off, none]]);
    await db.pool.query('select sync.check_freshness()');
    expect(await alertsOf(off, 'stale')).toHaveLength(0);
    expect(await alertsOf(none, 'stale')).toHaveLength(0);
  });
});

/** LISTEN sync_config on a client of its own. */
class ConfigListener {
  private client!: pg.Client;
  private received: string[] = [];
  private waiters: (() => void)[] = [];

  async start(url: string): Promise<void> {
    this.client = new pg.Client(url);
    await this.client.connect();
    this.client.on('notification', (n) => {
      if (n.channel !== 'sync_config') return;
      this.received.push(n.payload ?? '');
      const w = this.waiters;
      this.waiters = [];
      for (const f of w) f();
    });
    await this.client.query('listen sync_config');
  }

  /**
   * Every payload committed before now: a marker is sent and awaited, and
   * notifications arrive in commit order, so what precedes it is exactly what
   * earlier transactions sent. No sleeps.
   */
  async drain(pool: pg.Pool): Promise<unknown[]> {
    const marker = `marker ${Math.random()}`;
    await pool.query('select pg_notify($1, $2)', ['sync_config', marker]);
    while (!this.received.includes(marker)) await new Promise<void>((r) => this.waiters.push(r));
    const i = this.received.indexOf(marker);
    const before = this.received.slice(0, i);
    this.received = this.received.slice(i + 1);
    return before.map((p) => JSON.parse(p));
  }

  async stop(): Promise<void> {
    await this.client.end();
  }
}

describe('validation and audit of sync.entity settings', () => {
  const listener = new ConfigListener();
  beforeAll(async () => listener.start(db.url));
  afterAll(async () => listener.stop());

  const INVALID: [string, Record<string, unknown>][] = [
    ['sync_interval below 1 minute', { sync_interval: '30 seconds' }],
    ['a sync_interval dividing neither an hour nor a day (7 minutes)', { sync_interval: '7 minutes' }],
    ['a sync_interval dividing neither an hour nor a day (90 minutes)', { sync_interval: '90 minutes' }],
    ['a sync_interval of 5 hours', { sync_interval: '5 hours' }],
    ['a schedule that is not cron', { schedule: 'every 5 minutes' }],
    ['a schedule with four fields', { schedule: '*/5 * * *' }],
    ['a schedule with minute 61', { schedule: '61 * * * *' }],
    ['a schedule that never fires (31 February)', { schedule: '0 0 31 2 *' }],
    ['schedule and sync_interval both set', { schedule: '*/5 * * * *', sync_interval: '5 minutes' }],
    ['failure_threshold 0', { failure_threshold: 0 }],
    ['failure_threshold 101', { failure_threshold: 101 }],
    ['throughput_factor 1', { throughput_factor: 1 }],
    ['retry_delay 1 second', { retry_delay: '1 second' }],
    ['freshness 10 seconds', { freshness: '10 seconds' }],
    ['gap_threshold -1', { gap_threshold: -1 }],
    ['retry_limit 101', { retry_limit: 101 }],
  ];

  it.each(INVALID)('rejects %s, naming the entity and the field, with a hint; nothing is audited or announced', async (_, change) => {
    const entity = fresh('bad "entity"');
    await addEntity(db.pool, entity);
    await listener.drain(db.pool);
    const before = (await db.pool.query('select to_jsonb(e) as row from sync.entity e where name = $1', [entity])).rows[0].row;
    const cols = Object.keys(change);
    const err = await db.pool.query(`update sync.entity set ${cols.map((c, i) => `${q(c)} = $${i + 2}`).join(', ')} where name = $1`,
      [entity, ...cols.map((c) => change[c])]).then(() => null, (e: pg.DatabaseError) => e);
    expect(err, 'the update was accepted').not.toBeNull();
    expect(err!.code).toBe('23514');
    expect(err!.message).toMatch(new RegExp(`^entity ${entity.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: `));
    for (const c of cols) expect(err!.message).toContain(c);
    expect(err!.hint).toBeTruthy();
    expect((await db.pool.query('select to_jsonb(e) as row from sync.entity e where name = $1', [entity])).rows[0].row).toEqual(before);
    expect((await db.pool.query(`select count(*)::int as n from sync.config_change where entity = $1 and action = 'update'`, [entity])).rows[0].n).toBe(0);
    expect(await listener.drain(db.pool)).toEqual([]);
  });

  it('valid updates succeed; each that changes something writes one sync.config_change row with old and new values and one NOTIFY sync_config naming the entity and the columns', async () => {
    const timing = fc.oneof(
      fc.constant({}),
      fc.record({ schedule: fc.constantFrom('*/5 * * * *', '0 3 * * *', '15 */2 * * 1-5', '0,30 8-18 * * *'), sync_interval: fc.constant(null) }),
      fc.record({ schedule: fc.constant(null), sync_interval: fc.constantFrom('1 minute', '5 minutes', '15 minutes', '30 minutes', '1 hour', '6 hours', '1 day') }),
      fc.constant({ schedule: null, sync_interval: null }),
    );
    const tunables = fc.record({
      failure_threshold: fc.integer({ min: 1, max: 100 }),
      throughput_factor: fc.constantFrom(1.01, 1.5, 2, 3, 10),
      retry_delay: fc.constantFrom('10 seconds', '5 minutes', '1 hour'),
      freshness: fc.constantFrom(null, '1 minute', '1 hour', '2 days'),
      gap_threshold: fc.integer({ min: 0, max: 1000 }),
      retry_limit: fc.integer({ min: 0, max: 100 }),
      enabled: fc.boolean(),
      verify: fc.boolean(),
    }, { requiredKeys: [] });
    const change = fc.tuple(timing, tunables).map(([a, b]) => ({ ...a, ...b }) as Record<string, unknown>);
    let audited = 0;
    await fc.assert(fc.asyncProperty(fc.array(change, { minLength: 1, maxLength: 3 }), async (changes) => {
      const entity = fresh('ok entity');
      await addEntity(db.pool, entity);
      const inserted = await listener.drain(db.pool);
      expect(inserted).toHaveLength(1);
      expect(inserted[0]).toMatchObject({ entity, action: 'insert' });
      for (const ch of changes) {
        const cols = Object.keys(ch);
        if (!cols.length) continue;
        const row = async () => (await db.pool.query('select to_jsonb(e) as row from sync.entity e where name = $1', [entity])).rows[0].row;
        const before = await row();
        const maxId = (await db.pool.query('select coalesce(max(id), 0) as id from sync.config_change')).rows[0].id;
        await db.pool.query(`update sync.entity set ${cols.map((c, i) => `${q(c)} = $${i + 2}`).join(', ')} where name = $1`,
          [entity, ...cols.map((c) => ch[c])]);
        const after = await row();
        const changed = cols.filter((c) => JSON.stringify(before[c]) !== JSON.stringify(after[c])).sort();
        const audit = (await db.pool.query('select entity, action, changes from sync.config_change where id > $1 order by id', [maxId])).rows;
        const notes = await listener.drain(db.pool) as { entity: string; action: string; columns: string[] }[];
        if (!changed.length) {
          expect(audit).toEqual([]);
          expect(notes).toEqual([]);
          continue;
        }
        audited += 1;
        expect(audit).toEqual([{ entity, action: 'update',
          changes: Object.fromEntries(changed.map((c) => [c, { old: before[c], new: after[c] }])) }]);
        expect(notes).toHaveLength(1);
        expect(notes[0].entity).toBe(entity);
        expect(notes[0].action).toBe('update');
        expect([...notes[0].columns].sort()).toEqual(changed);
      }
    }), { numRuns: 20 });
    expect(audited).toBeGreaterThan(0);
  });

  it('moving the cursor is neither audited nor announced', async () => {
    const entity = fresh('cursor');
    await addEntity(db.pool, entity);
    await listener.drain(db.pool);
    await db.pool.query(`update sync.entity set cursor_value = '42' where name = $1`, [entity]);
    expect((await db.pool.query(`select count(*)::int as n from sync.config_change where entity = $1 and action = 'update'`, [entity])).rows[0].n).toBe(0);
    expect(await listener.drain(db.pool)).toEqual([]);
  });

  // Listeners of sync_config (a dashboard, a DBA's script) learn of changes to
  // the definition too: fullSchedule and the validate rules live there.
  it('a change of definition (fullSchedule) is announced on sync_config', async () => {
    const entity = fresh('fullschedule');
    await addEntity(db.pool, entity);
    await listener.drain(db.pool);
    await db.pool.query(`update sync.entity set definition = definition || '{"fullSchedule": "0 3 * * *"}' where name = $1`, [entity]);
    const notes = await listener.drain(db.pool) as { entity: string; columns: string[] }[];
    expect(notes).toHaveLength(1);
    expect(notes[0].columns).toContain('definition');
  });
});

describe('sync.setting', () => {
  it('retention must be an interval of at least a day', async () => {
    const set = (value: string) => db.pool.query(`update sync.setting set value = $1 where name = 'retention'`, [value])
      .then(() => null, (e: pg.DatabaseError) => e);
    for (const bad of ['abc', '', '12 hours', '23:59:59', '-3 days', '0']) {
      const err = await set(bad);
      expect(err, bad).not.toBeNull();
      expect(err!.code).toBe('23514');
      expect(err!.message).toMatch(/^setting retention: /);
      expect(err!.hint).toBeTruthy();
    }
    await fc.assert(fc.asyncProperty(fc.integer({ min: -2000, max: 2000 }), async (hours) => {
      const err = await set(`${hours} hours`);
      expect(err === null).toBe(hours >= 24);
    }), { numRuns: 25 });
    for (const good of ['1 day', '45 days', '1 year']) expect(await set(good), good).toBeNull();
    expect(await set('90 days')).toBeNull();
    expect((await db.pool.query(`select value from sync.setting where name = 'retention'`)).rows[0].value).toBe('90 days');
  });
});

describe('sync.maintain() retention', () => {
  // A database of its own: maintain() deletes across every entity.
  let mdb: TestDatabase;
  beforeAll(async () => {
    mdb = await testDatabase('health_maint');
  });

  const HOUR = 3_600_000;
  const DAY = 24 * HOUR;
  // Rows this close to the cutoff are left out: now() moves between statements.
  const MARGIN = 2 * HOUR;

  it('removes exactly the runs, errors, closed alerts, config changes and run_change months older than the retention, keeping open alerts', async () => {
    const age = fc.integer({ min: 0, max: 400 * 24 }); // hours
    const scenario = fc.record({
      retentionDays: fc.integer({ min: 1, max: 200 }),
      runs: fc.array(age, { maxLength: 8 }),
      errors: fc.array(age, { maxLength: 8 }),
      alerts: fc.array(fc.record({ age, state: fc.constantFrom('open', 'acknowledged', 'resolved', 'both') }), { maxLength: 8 }),
      configChanges: fc.array(age, { maxLength: 6 }),
      changes: fc.array(age, { maxLength: 10 }),
    });
    let dropped = 0;
    await fc.assert(fc.asyncProperty(scenario, async (s) => {
      const pool = mdb.pool;
      const tag = fresh('maint');
      const now = (await pool.query<{ t: Date }>('select now() as t')).rows[0].t.getTime();
      const cutoff = now - s.retentionDays * DAY;
      const at = (hours: number) => new Date(now - hours * HOUR).toISOString();
      const clear = (hours: number) => Math.abs(now - hours * HOUR - cutoff) > MARGIN;
      const old = (hours: number) => now - hours * HOUR < cutoff;
      const runs = s.runs.filter(clear);
      const errors = s.errors.filter(clear);
      const alerts = s.alerts.filter((a) => clear(a.age));
      const configChanges = s.configChanges.filter(clear);
      // A run_change row goes with its month, when the month's end (UTC) is past the cutoff.
      const monthEnd = (hours: number) => {
        const d = new Date(now - hours * HOUR);
        return Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + 1, 1);
      };
      const changes = s.changes.filter((h) => Math.abs(monthEnd(h) - cutoff) > MARGIN);

      for (const h of runs) {
        await pool.query(`insert into sync.run (entity, trigger, status, started_at, finished_at)
          values ($1, 'cron', 'succeeded', $2::timestamptz - interval '1 second', $2)`, [tag, at(h)]);
      }
      for (const h of errors) {
        await pool.query(`insert into sync.run_error (run_id, entity, category, message, created_at) values (0, $1, 'network', $2, $3)`,
          [tag, `error ${h}`, at(h)]);
      }
      for (const [i, a] of alerts.entries()) {
        await pool.query(`insert into sync.alert (kind, entity, message, created_at, last_seen_at, acknowledged_by, acknowledged_at, resolved_at)
          values ($1, $2, 'm', $3::timestamptz, $3::timestamptz, $4, $5::timestamptz, $6::timestamptz)`,
        [`kind_${i}`, tag, at(a.age), a.state === 'acknowledged' || a.state === 'both' ? 'tester' : null,
          a.state === 'acknowledged' || a.state === 'both' ? at(a.age) : null, a.state === 'resolved' || a.state === 'both' ? at(a.age) : null]);
      }
      for (const h of configChanges) {
        await pool.query(`insert into sync.config_change (entity, action, changes, changed_at) values ($1, 'update', '{}', $2)`, [tag, at(h)]);
      }
      for (const [i, h] of changes.entries()) {
        await pool.query('select sync.ensure_log_partitions($1)', [at(h)]);
        await pool.query(`insert into sync.run_change (run_id, action, key, at) values ($1, 'insert', array[$2, $3::text], $4)`,
          [i, tag, String(i), at(h)]);
      }

      await pool.query(`update sync.setting set value = $1 where name = 'retention'`, [`${s.retentionDays} days`]);
      const result = (await pool.query('select sync.maintain() as r')).rows[0].r;
      expect(result.retention).toBe(`${s.retentionDays} day${s.retentionDays === 1 ? '' : 's'}`);
      dropped += result.change_partitions_dropped;

      const left = async (sql: string) => (await pool.query(sql, [tag])).rows.map((r) => r.v).sort();
      const sorted = <T>(xs: T[]) => [...xs].sort();
      expect(await left(`select (extract(epoch from finished_at) * 1000)::float8 as v from sync.run where entity = $1`))
        .toEqual(sorted(runs.filter((h) => !old(h)).map((h) => Date.parse(at(h)))));
      expect(await left(`select message as v from sync.run_error where entity = $1`))
        .toEqual(sorted(errors.filter((h) => !old(h)).map((h) => `error ${h}`)));
      expect(await left(`select kind as v from sync.alert where entity = $1`))
        .toEqual(sorted(alerts.flatMap((a, i) => (a.state === 'open' || !old(a.age) ? [`kind_${i}`] : []))));
      expect((await pool.query(`select count(*)::int as n from sync.config_change where entity = $1`, [tag])).rows[0].n)
        .toBe(configChanges.filter((h) => !old(h)).length);
      expect(await left(`select key[2] as v from sync.run_change where key[1] = $1`))
        .toEqual(sorted(changes.flatMap((h, i) => (monthEnd(h) > cutoff ? [String(i)] : []))));
    }), { numRuns: 20 });
    expect(dropped).toBeGreaterThan(0);
  });
});

// ------------------------------------------------------------------ cron

const FIELDS = [
  { name: 'minute', min: 0, max: 59 },
  { name: 'hour', min: 0, max: 23 },
  { name: 'day of month', min: 1, max: 31 },
  { name: 'month', min: 1, max: 12 },
  { name: 'day of week', min: 0, max: 7 }, // 7 is Sunday too
] as const;

function values(field: string, min: number, max: number): Set<number> {
  const out = new Set<number>();
  for (const part of field.split(',')) {
    const star = /^\*(?:\/(\d+))?$/.exec(part);
    const range = /^(\d+)-(\d+)$/.exec(part);
    if (star) for (let i = min; i <= max; i += Number(star[1] ?? 1)) out.add(i);
    else if (range) for (let i = Number(range[1]); i <= Number(range[2]); i++) out.add(i);
    else out.add(Number(part));
  }
  return out;
}

/**
 * Reference: the first minute after `after` (UTC) the expression matches,
 * searched minute by minute up to the end of the 366th day after, with
 * graphile-worker's rule for the two day fields (the worker is what runs
 * the schedule): when both are restricted, either may match.
 */
function referenceNext(expr: string, after: Date): Date | null {
  const f = expr.split(' ');
  const [mins, hours, doms, months] = [0, 1, 2, 3].map((i) => values(f[i], FIELDS[i].min, FIELDS[i].max));
  const dows = new Set([...values(f[4], 0, 7)].map((d) => d % 7));
  const domRestricted = doms.size < 31;
  const dowRestricted = dows.size < 7;
  const start = Math.floor(after.getTime() / 60_000) * 60_000;
  const first = new Date(start);
  const end = Date.UTC(first.getUTCFullYear(), first.getUTCMonth(), first.getUTCDate() + 367);
  for (let t = start + 60_000; t < end;) {
    const d = new Date(t);
    const dayOk = months.has(d.getUTCMonth() + 1) && (domRestricted && dowRestricted
      ? doms.has(d.getUTCDate()) || dows.has(d.getUTCDay())
      : (!domRestricted || doms.has(d.getUTCDate())) && (!dowRestricted || dows.has(d.getUTCDay())));
    if (!dayOk) {
      t = Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate() + 1);
    } else if (!hours.has(d.getUTCHours())) {
      t = Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate(), d.getUTCHours() + 1);
    } else if (!mins.has(d.getUTCMinutes())) {
      t += 60_000;
    } else {
      return d;
    }
  }
  return null;
}

/** graphile-worker's own matcher for an expression (throws when the worker cannot parse it). */
function workerMatcher(expr: string): (d: Date) => boolean {
  const [item] = parseCronItems([{ task: 'sync_entity', match: expr, identifier: 'test' }]);
  return (d) => item.match({ min: d.getUTCMinutes(), hour: d.getUTCHours(), date: d.getUTCDate(), month: d.getUTCMonth() + 1, dow: d.getUTCDay() });
}

function cronField(i: number): fc.Arbitrary<string> {
  const { min, max } = FIELDS[i];
  const part = fc.oneof(
    { weight: 2, arbitrary: fc.constant('*') },
    { weight: 2, arbitrary: fc.integer({ min: 2, max: Math.max(2, Math.ceil((max - min) / 2)) }).map((n) => `*/${n}`) },
    { weight: 3, arbitrary: fc.integer({ min, max }).map(String) },
    { weight: 2, arbitrary: fc.tuple(fc.integer({ min, max }), fc.integer({ min, max })).filter(([a, b]) => a < b).map(([a, b]) => `${a}-${b}`) },
  );
  return fc.oneof(part, fc.array(part, { minLength: 2, maxLength: 3 }).map((ps) => ps.join(',')))
    .filter((s) => !(s.includes('*') && s !== '*' && s.includes(','))); // "*,5": a list with a star
}

// Day fields written other than "*" but allowing every day ("1-31", "0-6")
// are where cron dialects part: a test of their own below. Kept out here.
const cronExpr = fc.tuple(...[0, 1, 2, 3, 4].map(cronField)).map((fs) => fs.join(' ')).filter((e) => {
  const f = e.split(' ');
  const full = (i: number) => (i === 2 ? values(f[2], 1, 31).size === 31 : new Set([...values(f[4], 0, 7)].map((d) => d % 7)).size === 7);
  return (f[2] === '*') === full(2) && (f[4] === '*') === full(4);
});
const instant = fc.integer({ min: Date.UTC(2000, 0, 1), max: Date.UTC(2099, 11, 31) }).map((t) => new Date(t));

describe('cron helpers', () => {
  it('sync.cron_next agrees with a reference implementation for random expressions and times', async () => {
    let fired = 0;
    await fc.assert(fc.asyncProperty(cronExpr, instant, async (expr, after) => {
      const matches = workerMatcher(expr); // the worker accepts every generated expression
      const expected = referenceNext(expr, after);
      const { rows } = await db.pool.query<{ t: Date | null }>('select sync.cron_next($1, $2) as t', [expr, after.toISOString()]);
      expect(rows[0].t?.toISOString() ?? null, `${expr} after ${after.toISOString()}`).toBe(expected?.toISOString() ?? null);
      if (expected) {
        fired += 1;
        expect(matches(expected)).toBe(true);
      }
    }), { numRuns: 300 });
    expect(fired).toBeGreaterThan(150);
  });

  it('sync.cron_next: examples at month, year and leap-day edges; invalid expressions give null', async () => {
    const next = async (expr: string, after: string) =>
      (await db.pool.query<{ t: Date | null }>('select sync.cron_next($1, $2) as t', [expr, after])).rows[0].t?.toISOString() ?? null;
    expect(await next('*/15 * * * *', '2026-01-31T23:59:30Z')).toBe('2026-02-01T00:00:00.000Z');
    expect(await next('0 0 1 1 *', '2026-12-31T23:59:59Z')).toBe('2027-01-01T00:00:00.000Z');
    expect(await next('0 12 29 2 *', '2027-06-01T00:00:00Z')).toBe('2028-02-29T12:00:00.000Z');
    expect(await next('0 0 * * 7', '2026-01-06T12:00:00Z')).toBe('2026-01-11T00:00:00.000Z'); // 7 is Sunday
    expect(await next('5 4 * * *', '2026-01-06T04:05:00Z')).toBe('2026-01-07T04:05:00.000Z'); // strictly after
    for (const bad of ['* * * *', '* * * * * *', '60 * * * *', '* 24 * * *', '* * 0 * *', '* * * 13 *', '* * * * 8', '*/0 * * * *',
      '5-1 * * * *', 'a * * * *', '1,,2 * * * *', '0 0 30 2 *']) {
      expect(await next(bad, '2026-01-06T12:00:00Z'), bad).toBeNull();
    }
  });

  // graphile-worker, which runs the schedules, treats a day field as
  // restricted when it does not allow every value ("1-31", "*/1", "0-6" are
  // not): sync.status.next_run_at must name a time the worker runs.
  it('sync.cron_next agrees with graphile-worker when a day field allows every day without being "*"', async () => {
    for (const expr of ['0 0 1-31 * 1', '0 0 1 * 0-6', '0 0 */1 * 1']) {
      const after = new Date('2026-01-06T12:00:00Z'); // a Tuesday
      const expected = referenceNext(expr, after)!;
      expect(workerMatcher(expr)(expected)).toBe(true);
      const { rows } = await db.pool.query<{ t: Date }>('select sync.cron_next($1, $2) as t', [expr, after.toISOString()]);
      expect(rows[0].t.toISOString(), expr).toBe(expected.toISOString());
    }
  });

  it('graphile-worker cannot parse a range with a step, n/step or a one-value range', () => {
    for (const expr of ['0-30/5 * * * *', '5/15 * * * *', '5-5 * * * *']) expect(() => workerMatcher(expr), expr).toThrow();
  });

  // A schedule set with UPDATE that the worker cannot parse would fail its reload.
  it('the schedule check rejects cron syntax the worker cannot schedule', async () => {
    const entity = fresh('gw');
    await addEntity(db.pool, entity);
    for (const expr of ['0-30/5 * * * *', '5/15 * * * *', '5-5 * * * *']) {
      await expect(db.pool.query('update sync.entity set schedule = $2 where name = $1', [entity, expr]), expr)
        .rejects.toThrow(/schedule/);
    }
  });

  // Not "integer out of range": the entity check's message must name the entity and the field.
  it('a number too large for a cron field is invalid, not an error', async () => {
    expect((await db.pool.query(`select sync.cron_next('99999999999 * * * *') as t`)).rows[0].t).toBeNull();
  });

  it('sync.interval_cron maps 1–59 minute intervals dividing 60 to */N and rejects the others', async () => {
    for (let n = 1; n <= 59; n++) {
      const expected = 60 % n === 0 ? `*/${n} * * * *` : null;
      const { rows } = await db.pool.query('select sync.interval_cron(make_interval(mins => $1)) as a, sync.interval_cron(($2)::interval) as b',
        [n, `${n * 60} seconds`]);
      expect(rows[0], `${n} minutes`).toEqual({ a: expected, b: expected });
      if (expected) workerMatcher(expected);
    }
  });

  it('sync.interval_cron: hours dividing a day and one day map to cron, anything else to null', async () => {
    const reference = (s: number): string | null => {
      if (s < 60) return null;
      if (s < 3600) return s % 60 === 0 && 60 % (s / 60) === 0 ? `*/${s / 60} * * * *` : null;
      if (s < 86_400) return s % 3600 === 0 && 24 % (s / 3600) === 0 ? `0 */${s / 3600} * * *` : null;
      return s === 86_400 ? '0 0 * * *' : null;
    };
    const seconds = fc.oneof(fc.integer({ min: -100, max: 200_000 }), fc.integer({ min: 1, max: 30 }).map((h) => h * 3600),
      fc.integer({ min: 1, max: 60 }).map((m) => m * 60));
    await fc.assert(fc.asyncProperty(seconds, async (s) => {
      const { rows } = await db.pool.query('select sync.interval_cron(make_interval(secs => $1)) as c', [s]);
      expect(rows[0].c, `${s} s`).toBe(reference(s));
    }), { numRuns: 100 });
    const { rows } = await db.pool.query(`select sync.interval_cron(null) as a, sync.interval_cron('1 day') as b,
      sync.interval_cron('24 hours') as c, sync.interval_cron('2 days') as d, sync.interval_cron('1 mon') as e`);
    expect(rows[0]).toEqual({ a: null, b: '0 0 * * *', c: '0 0 * * *', d: null, e: null });
  });
});

// ------------------------------------------------------------------ views

describe('sync.health and sync.trend', () => {
  const MIN = 60_000;
  const HOURS = 60 * MIN;
  // Window edges (24 h, 48 h, 7 d, 90 d) with this much room: now() moves between the insert and the query.
  const EDGES = [24, 48, 7 * 24, 90 * 24].map((h) => h * HOURS);
  const run = fc.record({
    ageMs: fc.integer({ min: 0, max: 100 * 24 * HOURS }),
    status: fc.constantFrom('running', 'succeeded', 'partial', 'failed', 'failed', 'skipped', 'cancelled'),
    dryRun: fc.oneof({ weight: 4, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
    durationMs: fc.integer({ min: 0, max: 120_000 }),
    fetched: fc.option(fc.integer({ min: 0, max: 10_000 }), { nil: null }),
    counts: fc.option(fc.tuple(fc.integer({ min: 0, max: 500 }), fc.integer({ min: 0, max: 500 }), fc.integer({ min: 0, max: 500 })), { nil: null }),
  }).filter((r) => EDGES.every((e) => Math.abs(r.ageMs - e) > 5 * MIN));
  // Many runs in the last two days, so hourly buckets hold several.
  const recent = run.map((r) => ({ ...r, ageMs: r.ageMs % (47 * HOURS) })).filter((r) => EDGES.every((e) => Math.abs(r.ageMs - e) > 5 * MIN));

  /** round(p/q, 1) as numeric does it (half away from zero), from integers. */
  const round1 = (p: number, q: number) => Math.floor((20 * p + q) / (2 * q)) / 10;

  it('success rates and trend buckets equal counts computed from the inserted rows', async () => {
    await fc.assert(fc.asyncProperty(fc.array(fc.oneof(run, recent), { maxLength: 30 }), async (runs) => {
      const entity = fresh('trend');
      await addEntity(db.pool, entity);
      const now = (await db.pool.query<{ t: Date }>('select now() as t')).rows[0].t.getTime();
      const rows = runs.map((r) => {
        const started = now - r.ageMs;
        return { ...r, started, finished: r.status === 'running' ? null : started + r.durationMs };
      });
      for (const r of rows) {
        await db.pool.query(`insert into sync.run (entity, trigger, status, dry_run, started_at, finished_at, fetched, inserted, updated, deleted)
          values ($1, 'cron', $2, $3, $4, $5, $6, $7, $8, $9)`,
        [entity, r.status, r.dryRun, new Date(r.started).toISOString(), r.finished === null ? null : new Date(r.finished).toISOString(),
          r.fetched, r.counts?.[0] ?? null, r.counts?.[1] ?? null, r.counts?.[2] ?? null]);
      }

      const counted = rows.filter((r) => !r.dryRun && r.status !== 'running');
      const rate = (rs: typeof rows) => {
        const ok = rs.filter((r) => r.status === 'succeeded' || r.status === 'partial').length;
        const finished = rs.filter((r) => ['succeeded', 'partial', 'failed'].includes(r.status)).length;
        return finished ? round1(100 * ok, finished) : null;
      };
      const day = counted.filter((r) => r.ageMs < 24 * HOURS);
      const week = counted.filter((r) => r.ageMs < 7 * 24 * HOURS);
      const health = (await db.pool.query('select * from sync.health where entity = $1', [entity])).rows[0];
      expect({
        runs_24h: Number(health.runs_24h), success_rate_24h: health.success_rate_24h === null ? null : Number(health.success_rate_24h),
        runs_7d: Number(health.runs_7d), success_rate_7d: health.success_rate_7d === null ? null : Number(health.success_rate_7d),
      }).toEqual({ runs_24h: day.length, success_rate_24h: rate(day), runs_7d: week.length, success_rate_7d: rate(week) });

      const trendOf = (granularity: 'hour' | 'day', windowMs: number) => {
        const buckets = new Map<number, typeof rows>();
        for (const r of rows.filter((x) => !x.dryRun && x.finished !== null && x.ageMs < windowMs)) {
          const d = new Date(r.started);
          const b = granularity === 'hour'
            ? Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate(), d.getUTCHours())
            : Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate());
          buckets.set(b, [...(buckets.get(b) ?? []), r]);
        }
        return [...buckets].map(([bucket, rs]) => {
          const ms = rs.map((r) => r.finished! - r.started);
          const total = ms.reduce((a, b) => a + b, 0);
          return {
            granularity, bucket: new Date(bucket).toISOString(), runs: rs.length,
            failed: rs.filter((r) => r.status === 'failed').length,
            rows_fetched: rs.reduce((a, r) => a + (r.fetched ?? 0), 0),
            rows_changed: rs.reduce((a, r) => a + (r.counts ? r.counts[0] + r.counts[1] + r.counts[2] : 0), 0),
            avg_seconds: Math.floor((2 * total + rs.length) / (2 * rs.length)) / 1000,
            max_seconds: Math.max(...ms) / 1000,
          };
        });
      };
      const expected = [...trendOf('hour', 48 * HOURS), ...trendOf('day', 90 * 24 * HOURS)]
        .sort((a, b) => (a.granularity + a.bucket < b.granularity + b.bucket ? -1 : 1));
      const trend = await inUtc(async (c) => (await c.query('select * from sync.trend where entity = $1', [entity])).rows);
      const actual = trend.map((t) => ({
        granularity: t.granularity, bucket: (t.bucket as Date).toISOString(), runs: Number(t.runs), failed: Number(t.failed),
        rows_fetched: Number(t.rows_fetched), rows_changed: Number(t.rows_changed),
        avg_seconds: Number(t.avg_seconds), max_seconds: Number(t.max_seconds),
      })).sort((a, b) => (a.granularity + a.bucket < b.granularity + b.bucket ? -1 : 1));
      expect(actual).toEqual(expected);
    }), { numRuns: 20 });
  });
});
