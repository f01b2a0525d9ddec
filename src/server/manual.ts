/**
 * Manual syncs started through the API. They run in this process (trigger
 * 'api'), in dependency order, in the background: the request is answered
 * as soon as the first run has its sync.run row. An entity already running
 * (here or in any worker) is not started again; its running run is returned.
 */
import { topoOrder } from '../config/schema.js';
import { runMany } from '../engine/plan.js';
import type { Engine, RunOptions, RunResult } from '../engine/run.js';
import { log } from '../log.js';
import { HttpError } from './http.js';

// How long a request waits for its first run id. A run that waits on a
// dependency's lock has no row yet; the answer then says it is waiting.
const START_WAIT_MS = 10_000;
// On shutdown, how long running manual syncs get to end (cancelled) before the server closes anyway.
const SHUTDOWN_WAIT_MS = 10_000;

export type StartState = 'started' | 'already-running' | 'waiting';

export interface StartedRun {
  entity: string;
  /** The run's id in sync.run; null while it waits for its turn or a dependency. */
  runId: number | null;
  state: StartState;
}

export interface StartRequest {
  /** Entities to sync; null: every enabled one. */
  entities: string[] | null;
  dryRun: boolean;
  full: boolean;
}

/** An entity this server has taken on: its run id once the run row exists. */
interface Claim {
  runId: number | null;
}

export class ManualSyncs {
  private readonly claims = new Map<string, Claim>();
  private readonly batches = new Set<Promise<unknown>>();
  private readonly stopping = new AbortController();

  constructor(private readonly engine: Engine) {}

  /** Starts the runs asked for; resolves once the first has its run id (or after START_WAIT_MS). */
  async start(req: StartRequest): Promise<StartedRun[]> {
    if (this.stopping.signal.aborted) throw new HttpError(503, 'the server is shutting down', 'try again once it is back');
    const order = await this.plan(req.entities);
    const out = new Map<string, StartedRun>();
    const running = await this.runningRuns(order);
    for (const name of order) {
      const claim = this.claims.get(name);
      if (claim) out.set(name, { entity: name, runId: claim.runId, state: claim.runId ? 'already-running' : 'waiting' });
      else if (running.has(name)) out.set(name, { entity: name, runId: running.get(name)!, state: 'already-running' });
    }
    const toRun = order.filter((n) => !out.has(n));
    if (toRun.length) await this.launch(toRun, req, out);
    return order.map((n) => out.get(n)!);
  }

  /** The entities in dependency order; unknown names are a 404 naming the known ones. */
  private async plan(entities: string[] | null): Promise<string[]> {
    const { rows } = await this.engine.pool.query<{ name: string; depends_on: string[]; enabled: boolean }>(
      'select name, depends_on, enabled from sync.entity');
    const graph = Object.fromEntries(rows.map((r) => [r.name, r.depends_on]));
    const known = rows.map((r) => r.name).sort();
    const unknown = (entities ?? []).filter((n) => !(n in graph));
    if (unknown.length) {
      throw new HttpError(404, `unknown entit${unknown.length > 1 ? 'ies' : 'y'} ${unknown.map((u) => `"${u}"`).join(', ')}`,
        `sync.entity has: ${known.join(', ') || '(none)'}; a new entity needs \`syncline config apply\``);
    }
    const selection = entities ? [...new Set(entities)] : rows.filter((r) => r.enabled).map((r) => r.name);
    if (!selection.length) throw new HttpError(409, 'no enabled entities to sync', 'enable one (PUT /api/sync/config/:entity {"enabled": true}) or name it');
    return topoOrder(graph, selection);
  }

  private async runningRuns(names: string[]): Promise<Map<string, number>> {
    const { rows } = await this.engine.pool.query<{ entity: string; id: number }>(
      `select distinct on (entity) entity, id::float8 as id from sync.run
        where entity = any($1) and status = 'running' order by entity, id desc`, [names]);
    return new Map(rows.map((r) => [r.entity, r.id]));
  }

  /** Runs `names` in the background; fills `out` as runs start, resolving at the first (or after the wait). */
  private async launch(names: string[], req: StartRequest, out: Map<string, StartedRun>): Promise<void> {
    let first: () => void = () => {};
    const firstStarted = new Promise<void>((resolve) => { first = resolve; });
    for (const n of names) {
      this.claims.set(n, { runId: null });
      out.set(n, { entity: n, runId: null, state: 'waiting' });
    }
    const note = (name: string, runId: number | null, state: StartState) => {
      const claim = this.claims.get(name);
      if (claim && runId) claim.runId = runId;
      if (runId) out.set(name, { entity: name, runId, state });
      first();
    };
    const opts: RunOptions = { trigger: 'api', dryRun: req.dryRun, full: req.full, signal: this.stopping.signal };
    const batch = runMany(this.tracking(note), names, opts)
      .catch((err) => log.error({ err: String(err), entities: names }, 'manual sync failed'))
      .finally(() => {
        for (const n of names) this.claims.delete(n);
        this.batches.delete(batch);
        first();
      });
    this.batches.add(batch);
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([firstStarted, new Promise((r) => { timer = setTimeout(r, START_WAIT_MS); })]);
    clearTimeout(timer);
  }

  /**
   * The engine as runMany sees it, reporting each run's id as it starts and
   * each result as it ends (a skipped or refused run never "starts").
   */
  private tracking(note: (name: string, runId: number | null, state: StartState) => void): Engine {
    const { engine } = this;
    const run = (name: string, o: RunOptions) => engine.run(name, {
      ...o, onStart: (runId) => { o.onStart?.(runId); note(name, runId, 'started'); },
    }).then((r: RunResult) => {
      note(name, r.runId, r.status === 'already-running' ? 'already-running' : 'started');
      this.claims.delete(name);
      return r;
    });
    // Everything else (pool, config) is the engine's own.
    return Object.create(engine, { run: { value: run } }) as Engine;
  }

  /** Cancels the running manual syncs (they end cancelled) and waits a while for them. */
  async close(): Promise<void> {
    this.stopping.abort();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([Promise.allSettled([...this.batches]), new Promise((r) => { timer = setTimeout(r, SHUTDOWN_WAIT_MS); })]);
    clearTimeout(timer);
  }
}
