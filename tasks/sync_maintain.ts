import type { Task } from 'graphile-worker';

/** Every minute: freshness alerts and due retries of quarantined records, as SQL decides (sync.tick). */
export const syncTick: Task = async (_payload, helpers) => {
  const { rows } = await helpers.query<{ r: { stale: number; retries: number } }>('select sync.tick() as r');
  if (rows[0].r.stale || rows[0].r.retries) helpers.logger.info('tick', { result: rows[0].r });
};

/** Daily: drops logs past the retention setting and cleans staging (sync.maintain). */
export const syncMaintain: Task = async (_payload, helpers) => {
  const { rows } = await helpers.query<{ r: unknown }>('select sync.maintain() as r');
  helpers.logger.info('maintenance done', { result: rows[0].r });
};
