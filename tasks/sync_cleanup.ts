import type { Task } from 'graphile-worker';

/** Closes runs whose process died and drops staging tables nobody uses. */
export const syncCleanup: Task = async (_payload, helpers) => {
  const { rows } = await helpers.query<{ r: unknown }>('select sync.cleanup() as r');
  helpers.logger.info('cleanup done', { result: rows[0].r });
};
