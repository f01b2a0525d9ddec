/** A row of sync.alert as to_jsonb gives it: timestamps are ISO strings. */
export interface AlertRow {
  id: number;
  kind: string;
  severity: string;
  entity: string | null;
  message: string;
  details: unknown;
  created_at: string;
  acknowledged_by?: string | null;
  acknowledged_at?: string | null;
  resolved_at?: string | null;
  occurrences?: number | null;
  last_seen_at?: string | null;
  [column: string]: unknown;
}

/** `[Syncline] critical: consecutive_failures on orders` */
export function alertSubject(a: AlertRow): string {
  return `[Syncline] ${a.severity}: ${a.kind}${a.entity === null ? '' : ` on ${a.entity}`}`;
}

/** 2026-11-22 02:40:12 UTC */
export function utc(iso: string): string {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC');
}

const sqlLiteral = (s: string) => `'${s.replace(/'/g, "''")}'`;

/** The e-mail's plain-text body: what happened, where, and what to do about it. */
export function alertText(a: AlertRow, perHour: number): string {
  const where = a.entity === null ? '' : ` on entity ${a.entity}`;
  const lines = [
    `Syncline raised a ${a.severity} alert${where}: ${a.kind}.`,
    '',
    a.message,
    '',
    `Entity:    ${a.entity ?? '(none)'}`,
    `Kind:      ${a.kind}`,
    `Severity:  ${a.severity}`,
    `Raised:    ${utc(a.created_at)}`,
  ];
  if (a.occurrences && a.occurrences > 1) {
    lines.push(`Seen:      ${a.occurrences} times${a.last_seen_at ? `, last at ${utc(a.last_seen_at)}` : ''}`);
  }
  if (a.resolved_at) lines.push(`Resolved:  ${utc(a.resolved_at)}`);
  if (a.acknowledged_at) lines.push(`Acknowledged by ${a.acknowledged_by ?? 'someone'} at ${utc(a.acknowledged_at)}`);
  lines.push(`Alert id:  ${a.id}`);
  const hasDetails = a.details !== null && a.details !== undefined
    && !(typeof a.details === 'object' && Object.keys(a.details as object).length === 0);
  if (hasDetails) {
    lines.push('', 'Details:', ...JSON.stringify(a.details, null, 2).split('\n').map((l) => `  ${l}`));
  }
  lines.push('', 'Look closer (psql):');
  if (a.entity !== null) {
    const e = sqlLiteral(a.entity);
    lines.push(
      `  select * from sync.status where entity = ${e};`,
      `  select id, status, error, started_at from sync.run where entity = ${e} order by id desc limit 10;`,
      `  select category, message from sync.run_error where entity = ${e} order by id desc limit 20;`,
    );
  } else {
    lines.push('  select * from sync.status;');
  }
  lines.push(
    '',
    'Acknowledge it once handled (it then no longer counts as open in sync.status):',
    `  select sync.ack_alert(${a.id}, 'your name');`,
    `  npm run task -- alerts --ack ${a.id}`,
    '',
    '-- ',
    `Syncline sends at most ${perHour} e-mail${perHour === 1 ? '' : 's'} an hour for one alert kind on one entity;`,
    'the others are recorded in sync.alert_delivery as suppressed, and every alert stays in sync.alert.',
  );
  return `${lines.join('\n')}\n`;
}

/** What the webhook receives: the sync.alert row, plus a one-line `text` (chat webhooks show it). */
export function alertWebhookBody(a: AlertRow): Record<string, unknown> {
  return { ...a, text: `${alertSubject(a)}: ${a.message}` };
}
