import type { AlertingConfig } from '../config/schema.js';
import type { Pool } from '../db/pool.js';
import { log } from '../log.js';
import { sendAlertEmail } from './email.js';
import type { AlertRow } from './message.js';
import { alertingSecrets, scrub } from './secrets.js';
import { postAlertWebhook } from './webhook.js';

export type AlertChannel = 'email' | 'webhook';

/**
 * What became of one channel: `sent`; `skipped` when sync.claim_alert_delivery
 * said no (this alert was already sent there, or the hourly limit for its
 * kind and entity is reached: sync.alert_delivery says which); `failed`
 * with the reason, secrets removed.
 */
export interface ChannelOutcome {
  channel: AlertChannel;
  status: 'sent' | 'skipped' | 'failed';
  error?: string;
}

// The webhook is claimed too, with a limit no real burst reaches: the claim is
// what stops a retried job from POSTing an alert a second time.
export const WEBHOOK_PER_HOUR = 60;

/**
 * Delivers one sync.alert row on every configured channel: claim (SQL decides
 * whether to send), send, record the outcome. Channels are independent: one
 * failing does not hold back the other, and a retry re-sends only the one
 * that failed. Never throws for a failed send (see the outcomes); throws
 * when the database does.
 */
export async function deliverAlert(pool: Pool, alerting: AlertingConfig | undefined, alertId: number): Promise<ChannelOutcome[]> {
  const channels: { channel: AlertChannel; perHour: number; send: (a: AlertRow) => Promise<void> }[] = [];
  const perHour = alerting?.perHour ?? 1;
  const email = alerting?.email;
  const webhook = alerting?.webhook;
  if (email) channels.push({ channel: 'email', perHour, send: (a) => sendAlertEmail(email, a, perHour) });
  if (webhook) channels.push({ channel: 'webhook', perHour: WEBHOOK_PER_HOUR, send: (a) => postAlertWebhook(webhook, a) });
  if (!channels.length) return [];

  const { rows } = await pool.query<{ alert: AlertRow }>('select to_jsonb(a) as alert from sync.alert a where a.id = $1', [alertId]);
  if (!rows.length) {
    log.warn({ alertId }, 'alert no longer exists (deleted after it was raised); nothing to deliver');
    return [];
  }
  const alert = rows[0].alert;
  const secrets = alertingSecrets(alerting);
  const about = { alertId, kind: alert.kind, entity: alert.entity, severity: alert.severity };

  return Promise.all(channels.map(async ({ channel, perHour: limit, send }): Promise<ChannelOutcome> => {
    const { rows: claim } = await pool.query<{ ok: boolean }>(
      'select sync.claim_alert_delivery($1, $2, $3) as ok', [alertId, channel, limit]);
    if (!claim[0].ok) {
      log.info({ ...about, channel }, 'alert not sent: already sent on this channel, or the hourly limit for its kind and entity is reached');
      return { channel, status: 'skipped' };
    }
    try {
      await send(alert);
    } catch (err) {
      const error = scrub(`${channel === 'email' ? 'SMTP: ' : ''}${(err as Error).message ?? String(err)}`, secrets);
      await pool.query('select sync.alert_delivered($1, $2, $3)', [alertId, channel, error]);
      log.warn({ ...about, channel, error }, 'alert delivery failed; the job will be retried');
      return { channel, status: 'failed', error };
    }
    await pool.query('select sync.alert_delivered($1, $2, $3)', [alertId, channel, null]);
    log.info({ ...about, channel }, 'alert sent');
    return { channel, status: 'sent' };
  }));
}
