/**
 * Exactly once under kill -9 for log capture (issue 15, "Tests"): a
 * `syncline sync items` child process of a "capture": "log" entity is
 * SIGKILLed at random moments of its run: while it reads the slot's changes
 * (the source peeks, the target COPYs into staging), while sync.log_prepare
 * or sync.merge runs, and right after the merge committed. A merge whose
 * client died goes on to its commit on the server, so a kill during the
 * merge also leaves the slot behind the applied position: the next run reads
 * those changes again and must skip them.
 *
 * After each kill the target is at the state before or after the run, the
 * next run converges to the source, and every change of the source is
 * applied exactly once: a source-side audit trigger records each row change
 * with its transaction, and across all runs each change is staged by exactly
 * one succeeded run, each key is inserted and deleted at most once (keys are
 * never reused), and a key is updated at most once per source transaction
 * that updated it.
 */
import { describe, it, expect, beforeAll } from 'vitest';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { testDatabases, type TestDatabase } from './helpers/db.js';
import { engineFor } from './helpers/engine.js';
import { checksum, withFlushedEngine } from './helpers/gen.js';
import { aim, killAfter, syncChild, type KillTarget } from './helpers/kill.js';
import type { RunResult } from '../src/engine/run.js';

let sync: TestDatabase;
let source: TestDatabase;
let configFile: string;

const TENANTS = ['acme', 'globex', 'initech', 'umbrella'];
// Enough rows and changes that the read and the merge each take a while, so a kill aimed at one finds it going on.
const ROWS = 20_000;
const SLOT = 'syncline_kill_items';

// Slot names are server-wide and test files run side by side on one server: an entity name of this file's own.
const ENTITY = 'kill_items';
const ENTITIES = { [ENTITY]: { source: 'src', from: { table: 'items' }, target: 'items', key: ['tenant', 'id'], capture: 'log', deleteGuard: false } };
// Every update increments counter; new keys (inserts, key changes) come from a sequence, so no key is ever used twice.
const DDL = `create table items (tenant text not null, id int not null, name text, counter int not null default 0, payload text,
  primary key (tenant, id))`;
const AUDIT = `create sequence fresh start ${ROWS + 1};
  create table audit (tx bigint not null, op text not null, old_key text, new_key text);
  create function audit() returns trigger language plpgsql as $$
  begin
    insert into audit values (txid_current(), tg_op,
      case when tg_op <> 'INSERT' then old.tenant || '/' || old.id end,
      case when tg_op <> 'DELETE' then new.tenant || '/' || new.id end);
    return null;
  end $$;
  create trigger audit after insert or update or delete on items for each row execute function audit()`;

const state = (db: TestDatabase) => checksum(db.pool, 'items');

/** One source transaction: updates (counter + 1), inserts of new keys, deletes and key changes of random rows. */
interface Tx { updates: number; inserts: number; deletes: number; moves: number }
interface Changes { seed: number; txs: Tx[] }
const changes: fc.Arbitrary<Changes> = fc.record({
  seed: fc.integer({ min: 1, max: 1_000_000 }),
  txs: fc.array(fc.record({
    updates: fc.integer({ min: 0, max: 1500 }),
    inserts: fc.integer({ min: 0, max: 400 }),
    deletes: fc.integer({ min: 0, max: 200 }),
    moves: fc.integer({ min: 0, max: 100 }),
  }), { minLength: 1, maxLength: 4 }),
});

async function applyChanges(c: Changes, version: number): Promise<void> {
  for (const [i, tx] of c.txs.entries()) {
    const pick = (salt: string, n: number) =>
      `(select tenant, id from items order by md5(tenant || ':' || id || ':${salt}:${i}:${c.seed}') limit ${n})`;
    // One query string: one transaction. A row may be updated twice in it (once directly, once by its move).
    await source.pool.query(`
      update items s set counter = s.counter + 1, name = case when (s.id + ${c.seed}) % 5 = 0 then null else 'v${version}.${i}-' || s.id end
        from ${pick('u', tx.updates)} p where s.tenant = p.tenant and s.id = p.id;
      update items s set id = nextval('fresh'), counter = s.counter + 1 from ${pick('m', tx.moves)} p where s.tenant = p.tenant and s.id = p.id;
      delete from items s using ${pick('d', tx.deletes)} p where s.tenant = p.tenant and s.id = p.id;
      insert into items (tenant, id, name, payload)
        select (array[${TENANTS.map((t) => `'${t}'`).join(', ')}])[1 + g % ${TENANTS.length}], nextval('fresh'), 'new', repeat('n', 100)
          from generate_series(1, ${tx.inserts}) g`);
  }
}

/** Where a kill is aimed: once the run started, or its read, prepare or merge is seen going on, or its merge committed. */
interface Moment { phase: 'run' | 'read' | 'prepare' | 'merge' | 'merged'; delayMs: number }
type Phase = 'read' | 'prepare' | 'merge';
/** What was in flight when the kill was sent; 'merged': the merge had committed and the slot was not confirmed. */
type Landed = 'read' | 'prepare' | 'merge' | 'merged' | 'elsewhere' | 'after the end';

function phaseOf(query: string): Phase | 'other' {
  if (/sync\.merge\(/.test(query)) return 'merge';
  if (/sync\.log_prepare\(/.test(query)) return 'prepare';
  // On the source, the peek of the slot through a cursor; on the Syncline database, the COPY of the changes into staging.
  if (/pg_logical_slot_peek_binary_changes|^\s*fetch\b/i.test(query)) return 'read';
  if (/^\s*copy\b[\s\S]*\bfrom stdin/i.test(query)) return 'read';
  return 'other';
}

const target = (): KillTarget<Phase> => ({ sync, source, configFile, entity: ENTITY, phaseOf, rank: ['merge', 'prepare', 'read'] });

/** Where the slot is confirmed to and the position the target holds: the slot behind means a merge whose confirmation never came. */
async function positions(): Promise<{ confirmed: string; applied: string; behind: boolean }> {
  const { rows: [lc] } = await sync.pool.query('select applied_lsn::text as applied from sync.log_capture where entity = $1', [ENTITY]);
  const { rows: [s] } = await source.pool.query(
    `select confirmed_flush_lsn::text as confirmed, confirmed_flush_lsn < $2::pg_lsn as behind from pg_replication_slots where slot_name = $1`,
    [SLOT, lc.applied]);
  return { confirmed: s.confirmed, applied: lc.applied, behind: s.behind };
}

const runStatus = async (runId: number) => (await sync.pool.query('select status from sync.run where id = $1', [runId])).rows[0]?.status as string;

/** Runs `sync items` in a child process, SIGKILLs it at `moment`, and resolves once it and all its sessions are gone. */
async function syncKilledAt(moment: Moment): Promise<{ landed: Landed; runId: number | null }> {
  const t = target();
  const child = syncChild(t, 'kill-log');
  const aimed = await aim(t, child, moment.phase === 'merged' ? 'merge' : moment.phase);
  let at = null;
  if (child.alive() && moment.phase === 'merged' && aimed.runId !== null) {
    // The merge commits in its one statement: kill as soon as its run shows succeeded, before the child confirms the slot.
    while (child.alive() && (await runStatus(aimed.runId)) === 'running') { /* look again at once */ }
    at = aimed.seen;
    child.kill();
  } else if (child.alive()) {
    at = await killAfter(t, child, aimed.seen, moment.delayMs);
  }
  const signal = await child.gone();
  const runId = at?.runId ?? aimed.runId;
  if (signal !== 'SIGKILL') return { landed: 'after the end', runId };
  if (!at || at.runId === null || at.phase === 'other') return { landed: 'elsewhere', runId };
  const run = (await sync.pool.query(
    `select status, detail ? 'log' as read, finished_at > $2 as finished_after from sync.run where id = $1`, [at.runId, at.at])).rows[0];
  if (moment.phase === 'merged') return { landed: run.status === 'succeeded' && (await positions()).behind ? 'merged' : 'after the end', runId };
  // The read records detail.log when it finished.
  if (at.phase === 'read' && !run.read) return { landed: 'read', runId };
  if (at.phase === 'prepare' && run.status === 'running') return { landed: 'prepare', runId };
  if (at.phase === 'merge' && (run.status !== 'succeeded' || run.finished_after)) return { landed: 'merge', runId };
  return { landed: 'elsewhere', runId };
}

const runInProcess = (full = false) => withFlushedEngine(sync, source, ENTITIES, (engine) => engine.run(ENTITY, { trigger: 'manual', full }));

/**
 * Exactly once, across every run since the snapshot: each row change the
 * source's audit recorded is staged by one succeeded run (a key change is
 * two: the old key's delete and the new key's insert), each key is inserted
 * and deleted at most once, a key alive at the end that was born after the
 * snapshot was inserted exactly once, a dead one inserted as often as
 * deleted, and no key was updated more often than transactions updated it.
 */
async function expectExactlyOnce(): Promise<void> {
  const { rows: [expected] } = await source.pool.query(`select count(*) filter (where op <> 'UPDATE' or old_key = new_key)
    + 2 * count(*) filter (where op = 'UPDATE' and old_key <> new_key) as n from audit`);
  const { rows: [staged] } = await sync.pool.query(`select coalesce(sum((detail #>> '{log,changes_read}')::bigint), 0) as n
    from sync.run where entity = $1 and status = 'succeeded' and (detail #>> '{log,changes}')::boolean`, [ENTITY]);
  expect(Number(staged.n), 'changes staged by succeeded runs vs changes on the source').toBe(Number(expected.n));

  const { rows: born } = await source.pool.query<{ key: string; alive: boolean }>(
    `select a.new_key as key, exists (select 1 from items i where i.tenant || '/' || i.id = a.new_key) as alive
       from audit a where a.op = 'INSERT' or (a.op = 'UPDATE' and a.old_key <> a.new_key)`);
  const { rows: updated } = await source.pool.query<{ key: string; txs: number }>(
    `select new_key as key, count(distinct tx)::int as txs from audit where op = 'UPDATE' and old_key = new_key group by 1`);
  const { rows: logged } = await sync.pool.query<{ key: string; action: string; n: number }>(
    `select array_to_string(c.key, '/') as key, c.action, count(*)::int as n
       from sync.run_change c join sync.run r on r.id = c.run_id where r.entity = $1 group by 1, 2`, [ENTITY]);
  const count = new Map(logged.map((l) => [`${l.action} ${l.key}`, l.n]));
  const bad: string[] = [];
  for (const l of logged) if ((l.action === 'insert' || l.action === 'delete') && l.n > 1) bad.push(`${l.action} ${l.key} x${l.n}`);
  for (const b of born) {
    const ins = count.get(`insert ${b.key}`) ?? 0;
    const del = count.get(`delete ${b.key}`) ?? 0;
    if (b.alive ? ins !== 1 : ins !== del) bad.push(`${b.key} (${b.alive ? 'alive' : 'gone'}): ${ins} insert(s), ${del} delete(s)`);
  }
  const txs = new Map(updated.map((u) => [u.key, u.txs]));
  for (const l of logged) {
    if (l.action === 'update' && l.n > (txs.get(l.key) ?? 0)) bad.push(`${l.key}: ${l.n} update(s), ${txs.get(l.key) ?? 0} transaction(s)`);
  }
  expect(bad.slice(0, 20), `${bad.length} key(s) not applied exactly once`).toEqual([]);
}

const changesOf = async (runId: number | null) =>
  (await sync.pool.query('select count(*)::int as n from sync.run_change where run_id = $1', [runId])).rows[0].n as number;
const changesRead = async (runId: number | null) =>
  Number((await sync.pool.query(`select detail #>> '{log,changes_read}' as n from sync.run where id = $1`, [runId])).rows[0].n);

beforeAll(async () => {
  ({ sync, source } = await testDatabases('kill_log'));
  await source.pool.query(`${DDL}; ${AUDIT};
    insert into items (tenant, id, name, payload)
      select (array[${TENANTS.map((t) => `'${t}'`).join(', ')}])[1 + i % ${TENANTS.length}], i, 'v0-' || i, repeat('x', 100)
        from generate_series(1, ${ROWS}) i`);
  await sync.pool.query(DDL);
  const dir = mkdtempSync(path.join(os.tmpdir(), 'syncline-kill-log-'));
  configFile = path.join(dir, 'syncline.config.json');
  writeFileSync(configFile, JSON.stringify({ sources: { src: { kind: 'postgres', url: source.url } }, entities: ENTITIES }));
  await (await engineFor(sync, source, ENTITIES)).close();
  // The first run creates the slot and loads the snapshot it exported; the audit counts from there.
  const first = await runInProcess();
  expect(first).toMatchObject({ status: 'succeeded', inserted: ROWS });
  await source.pool.query('truncate audit');
  expect(await state(sync)).toEqual(await state(source));
}, 120_000);

describe('killing a log-capture run with SIGKILL at any moment', () => {
  it('leaves the target before or after the run, the next run converges, and every source change is applied exactly once', async () => {
    let version = 0;
    const landed: Landed[] = [];
    let leftBehind = 0;
    const moment = fc.record({
      phase: fc.constantFrom<Moment['phase']>('run', 'read', 'prepare', 'merge', 'merged'),
      delayMs: fc.integer({ min: 0, max: 150 }),
    });
    await fc.assert(fc.asyncProperty(changes, moment, async (c, m) => {
      version += 1;
      await applyChanges(c, version);
      const before = await state(sync);
      const after = await state(source);

      const killed = await syncKilledAt(m);
      landed.push(killed.landed);
      expect([before, after]).toContainEqual(await state(sync));
      expect((await sync.pool.query(`select count(*)::int as n from sync.run_change c join sync.run r on r.id = c.run_id
        where r.status = 'running'`)).rows[0].n).toBe(0);
      // A merge that committed without its confirmation: the next run reads its changes again.
      const behind = (await positions()).behind;
      if (behind) {
        leftBehind += 1;
        expect(await state(sync)).toEqual(after);
      }

      const r: RunResult = await runInProcess();
      expect(r.status, r.error).toBe('succeeded');
      expect(await state(sync)).toEqual(after);
      if (behind) {
        // Everything it read again had been applied: it skips it, writes nothing, records nothing.
        expect(r).toMatchObject({ inserted: 0, updated: 0, deleted: 0 });
        expect(await changesRead(r.runId)).toBe(0);
        expect(await changesOf(r.runId)).toBe(0);
      }
      const p = await positions();
      expect(p.confirmed).toBe(p.applied);
      expect((await sync.pool.query(`select count(*)::int as n from sync.run where status = 'running'`)).rows[0].n).toBe(0);

      // Nothing new: a further run reads nothing and writes nothing.
      const again = await runInProcess();
      expect(again).toMatchObject({ status: 'succeeded', inserted: 0, updated: 0, deleted: 0, fetched: 0 });
      expect(await changesOf(again.runId)).toBe(0);
      await expectExactlyOnce();
    }), {
      numRuns: 9,
      // The databases carry each case's state into the next: a shrunk case would not replay the failure.
      endOnFailure: true,
      examples: [
        [{ seed: 1, txs: [{ updates: 1500, inserts: 400, deletes: 200, moves: 100 }, { updates: 1500, inserts: 400, deletes: 200, moves: 100 }] },
          { phase: 'read', delayMs: 0 }],
        [{ seed: 2, txs: [{ updates: 1500, inserts: 400, deletes: 200, moves: 100 }, { updates: 800, inserts: 0, deletes: 0, moves: 50 }] },
          { phase: 'merge', delayMs: 0 }],
        [{ seed: 3, txs: [{ updates: 1000, inserts: 100, deletes: 100, moves: 100 }, { updates: 1000, inserts: 100, deletes: 0, moves: 0 }] },
          { phase: 'merged', delayMs: 0 }],
        [{ seed: 4, txs: [{ updates: 1500, inserts: 400, deletes: 200, moves: 100 }] }, { phase: 'prepare', delayMs: 0 }],
      ],
    });
    console.log(`kill-log: kills landed ${JSON.stringify(landed)}; ${leftBehind} left the slot behind the applied position`);
    expect(landed, JSON.stringify(landed)).toContain('read');
    expect(landed, JSON.stringify(landed)).toContain('merge');
    // Whether a kill fell between a merge's commit and its slot's confirmation
    // is a race of milliseconds (the count is printed above); the test below
    // puts the skip of what was applied already to work every time.
  }, 600_000);

  it('a merge whose slot confirmation was lost is not applied again, and later changes apply once', async () => {
    await source.pool.query(`select pg_copy_logical_replication_slot($1, 'syncline_kill_items_copy')`, [SLOT]);
    await applyChanges({ seed: 7, txs: [{ updates: 300, inserts: 50, deletes: 30, moves: 20 }, { updates: 100, inserts: 10, deletes: 0, moves: 0 }] }, 1000);
    const applied = await runInProcess();
    expect(applied.status, applied.error).toBe('succeeded');
    expect(applied.updated).toBeGreaterThan(0);
    expect(await state(sync)).toEqual(await state(source));
    // The source forgets the confirmation: the slot is back where it was before that run.
    await source.pool.query(`select pg_drop_replication_slot($1); select pg_copy_logical_replication_slot('syncline_kill_items_copy', $1);
      select pg_drop_replication_slot('syncline_kill_items_copy')`.replaceAll('$1', `'${SLOT}'`));
    expect((await positions()).behind).toBe(true);

    const again = await runInProcess();
    expect(again).toMatchObject({ status: 'succeeded', inserted: 0, updated: 0, deleted: 0 });
    expect(await changesRead(again.runId)).toBe(0);
    expect(await changesOf(again.runId)).toBe(0);
    const p = await positions();
    expect(p.confirmed).toBe(p.applied);

    await applyChanges({ seed: 8, txs: [{ updates: 200, inserts: 20, deletes: 10, moves: 10 }] }, 1001);
    const later = await runInProcess();
    expect(later.status, later.error).toBe('succeeded');
    expect(later.updated).toBeGreaterThan(0);
    expect(await state(sync)).toEqual(await state(source));
    await expectExactlyOnce();
  }, 120_000);
});
