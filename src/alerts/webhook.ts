import type { AlertingConfig } from '../config/schema.js';
import { alertWebhookBody, type AlertRow } from './message.js';
import { origin } from './secrets.js';

// A receiver that hangs must not hold the job: past this the POST is
// aborted, the delivery is marked failed and the job retried later.
export const WEBHOOK_TIMEOUT_MS = 10_000;
// How much of a refusing receiver's answer goes into the error: enough to
// read "invalid token", not a whole HTML error page.
const ERROR_BODY_CHARS = 200;

export type WebhookConfig = NonNullable<AlertingConfig['webhook']>;

/** POSTs the alert as JSON; any answer other than 2xx (redirects included) is an error. */
export async function postAlertWebhook(webhook: WebhookConfig, alert: AlertRow): Promise<void> {
  const headers = new Headers({ 'content-type': 'application/json', 'user-agent': 'Syncline' });
  for (const [name, value] of Object.entries(webhook.headers ?? {})) headers.set(name, value);
  const where = origin(webhook.url);
  let res: Response;
  try {
    res = await fetch(webhook.url, {
      method: 'POST',
      headers,
      body: JSON.stringify(alertWebhookBody(alert)),
      // Following a redirect would re-send the headers (tokens) to wherever it points.
      redirect: 'manual',
      signal: AbortSignal.timeout(WEBHOOK_TIMEOUT_MS),
    });
  } catch (err) {
    const e = err as Error & { cause?: { message?: string } };
    if (e.name === 'TimeoutError') throw new Error(`webhook ${where} did not answer within ${WEBHOOK_TIMEOUT_MS / 1000} s`, { cause: err });
    throw new Error(`webhook ${where} unreachable: ${e.cause?.message ?? e.message}`, { cause: err });
  }
  if (res.status >= 200 && res.status < 300) {
    await res.body?.cancel();
    return;
  }
  const body = (await res.text().catch(() => '')).replace(/\s+/g, ' ').trim().slice(0, ERROR_BODY_CHARS);
  const hint = res.status >= 300 && res.status < 400 ? ' (redirects are not followed: configure the final URL)' : '';
  throw new Error(`webhook ${where} answered ${res.status} ${res.statusText}${hint}${body ? `: ${body}` : ''}`);
}
