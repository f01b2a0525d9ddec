import type { Pool, PoolClient } from '../db/pool.js';
import { log } from '../log.js';

export interface ConfigChange {
  entity: string;
  action: 'insert' | 'update' | 'delete';
  columns: string[];
}

// Reconnect backoff after the listening connection is lost.
const RECONNECT_MIN_MS = 500;
const RECONNECT_MAX_MS = 30_000;

/**
 * LISTEN sync_config (sync.entity's audit trigger NOTIFYs every change):
 * calls onChange for each. A lost connection is re-established with
 * exponential backoff, and a reconnect reports a change of everything, since
 * notifications sent meanwhile are gone.
 */
export async function listenForConfig(pool: Pool, onChange: (c: ConfigChange) => void): Promise<{ stop(): Promise<void> }> {
  let client: PoolClient | null = null;
  let stopped = false;
  let delay = RECONNECT_MIN_MS;
  const connect = async (): Promise<void> => {
    const c = await pool.connect();
    c.on('notification', (n) => {
      if (n.channel !== 'sync_config' || !n.payload) return;
      try {
        onChange(JSON.parse(n.payload) as ConfigChange);
      } catch (err) {
        log.warn({ err: String(err) }, 'unreadable sync_config notification');
      }
    });
    c.on('error', (err) => {
      log.warn({ err: String(err) }, 'lost the connection listening for config changes; reconnecting');
      c.release(true);
      if (client === c) client = null;
      if (!stopped) setTimeout(retry, delay);
    });
    await c.query('listen sync_config');
    client = c;
    delay = RECONNECT_MIN_MS;
  };
  const retry = () => {
    if (stopped) return;
    connect().then(() => onChange({ entity: '*', action: 'insert', columns: [] })).catch((err) => {
      delay = Math.min(delay * 2, RECONNECT_MAX_MS);
      log.warn({ err: String(err), retryInMs: delay }, 'cannot listen for config changes yet');
      setTimeout(retry, delay);
    });
  };
  await connect();
  return {
    async stop() {
      stopped = true;
      const c = client;
      client = null;
      if (c) {
        await c.query('unlisten sync_config').catch(() => {});
        c.release();
      }
    },
  };
}
