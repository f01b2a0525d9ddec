import type { Task } from 'graphile-worker';
import { z } from 'zod';

const Payload = z.object({ _cron: z.object({ ts: z.string() }).partial().optional() }).passthrough();

/**
 * Every minute: one wave of every entity whose schedule fires this minute,
 * and of their dependents (sync.schedule_wave reads the schedules from
 * sync.entity, so a change counts from the next minute).
 */
export const syncSchedule: Task = async (payload, helpers) => {
  const p = Payload.parse(payload ?? {});
  const tick = p._cron?.ts ?? new Date().toISOString();
  const { rows } = await helpers.query<{ wave: string | null }>('select sync.schedule_wave($1) as wave', [tick]);
  if (rows[0].wave) helpers.logger.info('scheduled wave started', { wave: rows[0].wave, tick });
};
