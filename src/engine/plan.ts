import { topoOrder } from '../config/schema.js';
import type { Engine, RunOptions, RunResult } from './run.js';

/**
 * Runs entities in dependency order. An entity whose dependency failed in
 * this pass is skipped with the reason recorded; independent entities carry
 * on. Entities that postponed deletes (rows still referenced by a dependent)
 * run once more after their dependents, so one pass converges.
 */
export async function runMany(engine: Engine, names: string[], opts: RunOptions): Promise<RunResult[]> {
  const { rows } = await engine.pool.query<{ name: string; depends_on: string[] }>(
    'select name, depends_on from sync.entity');
  const graph = Object.fromEntries(rows.map((r) => [r.name, r.depends_on]));
  const unknown = names.filter((n) => !(n in graph));
  if (unknown.length) {
    throw new Error(`unknown entit${unknown.length > 1 ? 'ies' : 'y'} ${unknown.map((u) => `"${u}"`).join(', ')} — `
      + `known: ${Object.keys(graph).sort().join(', ') || '(none; run `syncline config apply`)'}`);
  }
  const order = topoOrder(graph, names);
  const results = new Map<string, RunResult>();
  const broken = new Set<string>();
  for (const name of order) {
    const blocker = graph[name].find((d) => broken.has(d));
    if (blocker && !opts.dryRun) {
      const reason = `skipped: dependency "${blocker}" did not succeed in this run`;
      const { rows: r } = await engine.pool.query(`select sync.record_outcome($1, $2, 'skipped', $3) as id`,
        [name, opts.trigger, reason]);
      results.set(name, { entity: name, runId: r[0].id, status: 'skipped', error: reason });
      broken.add(name);
      continue;
    }
    const previewedParents = opts.dryRun ? graph[name].filter((d) => results.has(d)) : undefined;
    const result = await engine.run(name, { ...opts, previewedParents });
    results.set(name, result);
    if (!['succeeded', 'partial'].includes(result.status)) broken.add(name);
  }
  if (!opts.dryRun) {
    // Children first: a grandparent's delete waits on its child's, which
    // waits on the grandchild's (already done in the first pass).
    for (const name of [...order].reverse()) {
      const first = results.get(name)!;
      if (first.deferred && first.deferred > 0) {
        const again = await engine.run(name, opts);
        results.set(name, mergeResults(first, again));
      }
    }
  }
  return order.map((n) => results.get(n)!);
}

/** A second run's outcome with both runs' changes added up. */
function mergeResults(a: RunResult, b: RunResult): RunResult {
  const add = (k: 'inserted' | 'updated' | 'deleted') => (a[k] ?? 0) + (b[k] ?? 0);
  return { ...b, inserted: add('inserted'), updated: add('updated'), deleted: add('deleted') };
}

/** Process exit code for a set of results: 0 only when every run succeeded. */
export function exitCode(results: RunResult[]): number {
  if (results.some((r) => ['failed', 'cancelled', 'skipped', 'already-running'].includes(r.status))) return 1;
  if (results.some((r) => r.status === 'partial')) return 3;
  return 0;
}
