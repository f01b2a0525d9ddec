import { createTransport } from 'nodemailer';
import type { AlertingConfig } from '../config/schema.js';
import { alertSubject, alertText, type AlertRow } from './message.js';

// An SMTP server that accepts the connection but never answers would hold the
// job (and a worker slot) forever: every phase has a deadline, and a missed
// one fails the delivery so graphile-worker retries it later.
const SMTP_CONNECT_TIMEOUT_MS = 10_000;
const SMTP_GREETING_TIMEOUT_MS = 10_000;
const SMTP_SOCKET_TIMEOUT_MS = 30_000;

export type EmailConfig = NonNullable<AlertingConfig['email']>;

/** Sends one alert to every recipient in one message; throws what the server said. */
export async function sendAlertEmail(email: EmailConfig, alert: AlertRow, perHour: number): Promise<void> {
  const transport = createTransport({
    url: email.smtp,
    connectionTimeout: SMTP_CONNECT_TIMEOUT_MS,
    greetingTimeout: SMTP_GREETING_TIMEOUT_MS,
    socketTimeout: SMTP_SOCKET_TIMEOUT_MS,
    // nodemailer's own logger would print the conversation, AUTH included.
    logger: false,
    debug: false,
  });
  try {
    await transport.sendMail({
      from: email.from,
      to: email.to,
      subject: alertSubject(alert),
      text: alertText(alert, perHour),
      priority: alert.severity === 'critical' ? 'high' : 'normal',
      // For mail filters and for a person replying about one alert.
      headers: {
        'X-Syncline-Alert-Id': String(alert.id),
        'X-Syncline-Alert-Kind': alert.kind,
        'X-Syncline-Alert-Severity': alert.severity,
      },
    });
  } finally {
    transport.close();
  }
}
