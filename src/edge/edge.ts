import type { EntityConfig } from '../config/schema.js';
import { connectionHint, makePool, type Pool } from '../db/pool.js';
import type { Engine } from '../engine/run.js';
import { sourceUrl } from '../sources/postgres/read.js';
import { describeConnection } from './env.js';
import { batchSql } from './batch.js';
import { planPush } from './plan.js';
import type { PushTarget } from './push.js';

// A remote that does not answer within this is down for this cycle; the
// loop's backoff decides when to try again.
const CONNECT_TIMEOUT_MS = 10_000;

/** The edge's side of the engine: the remote pools pushes write through (the engine's source pools are read-only ones). */
export class Edge {
  private pools = new Map<string, { pool: Pool; url: string }>();
  constructor(readonly engine: Engine) {}

  remote(source: string): { pool: Pool; url: string } {
    let r = this.pools.get(source);
    if (!r) {
      const src = this.engine.config.sources[source];
      if (src?.kind !== 'postgres') throw new Error(`source "${source}" is not a postgres source defined in the config — a push needs one`);
      const url = sourceUrl(src, this.engine.syncUrl);
      r = { url, pool: makePool(url, { max: 2, application_name: 'syncline edge (push)', connectionTimeoutMillis: CONNECT_TIMEOUT_MS, keepAlive: true }) };
      this.pools.set(source, r);
    }
    return r;
  }

  pushTarget(def: EntityConfig): PushTarget {
    const { pool, url } = this.remote(def.source);
    return { pool: this.engine.pool, remote: pool, remoteUrl: url, source: def.source };
  }

  /** Null when the source answers; otherwise what is wrong, naming host, port, database and user. */
  async probe(source: string): Promise<string | null> {
    const { pool, url } = this.remote(source);
    try {
      await pool.query('select 1');
      return null;
    } catch (err) {
      return `${connectionHint(err, url, `source "${source}" (${describeConnection(url)})`).message}`;
    }
  }

  /**
   * For `syncline check`: a push entity resolved against both of its tables,
   * in one line; throws saying what to fix (a missing column, no unique index on the key …).
   */
  async describePush(name: string, def: EntityConfig): Promise<string> {
    const { pool, url } = this.remote(def.source);
    const local = await this.engine.pool.connect();
    try {
      const remote = await pool.connect().catch((err) => { throw connectionHint(err, url, `source "${def.source}"`); });
      try {
        const plan = await planPush(name, def, local, remote, def.source);
        const pending = (await local.query(batchSql(plan).pending)).rows[0].n as number;
        return `pushes ${plan.local} to ${plan.remote} on source "${def.source}": ${plan.remoteColumns.length} columns, `
          + `key (${plan.key.join(', ')}) unique there, ${pending.toLocaleString('en')} rows pending`;
      } finally {
        remote.release();
      }
    } finally {
      local.release();
    }
  }

  async close(): Promise<void> {
    await Promise.all([...this.pools.values()].map((r) => r.pool.end().catch(() => {})));
    this.pools.clear();
  }
}
