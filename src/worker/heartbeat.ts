import type { Pool } from '../db/pool.js';
import { log } from '../log.js';

// Used until sync.setting answers (and when it cannot be read).
const DEFAULT_HEARTBEAT_MS = 5_000;

/**
 * A worker's pulse in sync.worker: announced at start, stamped every
 * worker_heartbeat (a sync.setting), stopped on a graceful stop. Each beat
 * also looks for dead workers (sync.reap_workers): whichever worker is alive
 * releases a dead one's jobs within worker_timeout plus a beat.
 */
export class Heartbeat {
  private readonly ids = new Set<string>();
  private timer: NodeJS.Timeout | undefined;
  private beating: Promise<void> = Promise.resolve();
  private stopped = false;

  constructor(private readonly pool: Pool, private readonly host: string, private readonly pid: number) {}

  add(id: string): void {
    this.ids.add(id);
  }

  async start(): Promise<void> {
    await this.beat();
    this.schedule(await this.intervalMs());
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.beating;
    if (this.ids.size) await this.pool.query('select sync.worker_stopped($1)', [[...this.ids]]).catch(() => {});
  }

  private schedule(ms: number): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      this.beating = this.beat().then(() => this.intervalMs()).then((next) => this.schedule(next),
        () => this.schedule(DEFAULT_HEARTBEAT_MS));
    }, ms);
  }

  /** One beat: stamp, then reap. A failure is logged; the next beat tries again. */
  private async beat(): Promise<void> {
    if (!this.ids.size) return;
    try {
      await this.pool.query('select sync.worker_beat($1, $2, $3)', [[...this.ids], this.host, this.pid]);
      const { rows } = await this.pool.query<{ r: { dead_workers: number; runs_closed: number } }>('select sync.reap_workers() as r');
      if (rows[0].r.dead_workers || rows[0].r.runs_closed) log.warn(rows[0].r, 'released the jobs and runs of dead workers');
    } catch (err) {
      log.warn({ err: String(err) }, 'heartbeat failed; trying again at the next beat');
    }
  }

  private async intervalMs(): Promise<number> {
    const { rows } = await this.pool.query<{ ms: number }>(
      `select extract(epoch from sync.setting_interval('worker_heartbeat')) * 1000 as ms`).catch(() => ({ rows: [] as { ms: number }[] }));
    return rows[0]?.ms ?? DEFAULT_HEARTBEAT_MS;
  }
}
