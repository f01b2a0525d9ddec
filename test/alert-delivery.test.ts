import { describe, it, expect, beforeAll, afterAll, afterEach } from 'vitest';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import fc from 'fast-check';
import { pino } from 'pino';
import { SMTPServer } from 'smtp-server';
import { runOnce } from 'graphile-worker';
import { testDatabase, type TestDatabase } from './helpers/db.js';
import { parseConfig } from '../src/config/load.js';
import type { AlertingConfig } from '../src/config/schema.js';
import { quoteIdent, workerLogger } from '../src/db/database.js';
import { log } from '../src/log.js';
import { deliverAlert } from '../src/alerts/deliver.js';
import { syncAlert, type AlertContext } from '../tasks/sync_alert.js';

// ── A real SMTP server on 127.0.0.1 ────────────────────────────────────────

interface Mail { rcptTo: string[]; headers: Map<string, string>; subject: string; text: string }

const SMTP_USER = 'alerts';
// What the config's ${SMTP_PASSWORD} becomes; it must never be seen again.
const SMTP_PASSWORD = 'Tr0ub4dor-and-3-horses';

class MailServer {
  messages: Mail[] = [];
  /** accept; reject at DATA (451); echo-auth: refuse AUTH, repeating the password it was given. */
  mode: 'accept' | 'reject' | 'echo-auth' = 'accept';
  port = 0;
  private server?: SMTPServer;

  async start(port = this.port): Promise<void> {
    const server = new SMTPServer({
      disabledCommands: ['STARTTLS'],
      allowInsecureAuth: true,
      logger: false,
      onAuth: (auth, _session, cb) => {
        if (this.mode === 'echo-auth') return cb(new Error(`no such user ${auth.username} with password ${auth.password}`));
        if (auth.username !== SMTP_USER || auth.password !== SMTP_PASSWORD) return cb(new Error('invalid credentials'));
        cb(null, { user: auth.username });
      },
      onData: (stream, session, cb) => {
        const chunks: Buffer[] = [];
        stream.on('data', (c: Buffer) => chunks.push(c));
        stream.on('end', () => {
          if (this.mode === 'reject') return cb(Object.assign(new Error('mailbox temporarily unavailable'), { responseCode: 451 }));
          this.messages.push({ ...parseMail(Buffer.concat(chunks).toString('latin1')), rcptTo: session.envelope.rcptTo.map((r) => r.address) });
          cb();
        });
      },
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => resolve());
    });
    this.server = server;
    this.port = (server.server.address() as AddressInfo).port;
  }

  async stop(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    if (s) await new Promise<void>((resolve) => s.close(() => resolve()));
  }

  /** The messages about one alert, by its X-Syncline-Alert-Id header. */
  about(id: number): Mail[] {
    return this.messages.filter((m) => m.headers.get('x-syncline-alert-id') === String(id));
  }
}

/** Headers (unfolded, RFC 2047 words decoded) and the text body of a single-part message. */
function parseMail(raw: string): Omit<Mail, 'rcptTo'> {
  const split = raw.indexOf('\r\n\r\n');
  const headers = new Map<string, string>();
  for (const line of raw.slice(0, split).replace(/\r\n[ \t]+/g, ' ').split('\r\n')) {
    const i = line.indexOf(':');
    headers.set(line.slice(0, i).trim().toLowerCase(), decodeWords(line.slice(i + 1).trim()));
  }
  let body = raw.slice(split + 4);
  const cte = headers.get('content-transfer-encoding')?.toLowerCase();
  if (cte === 'quoted-printable') {
    body = Buffer.from(body.replace(/=\r\n/g, '').replace(/=([0-9A-Fa-f]{2})/g, (_m, h: string) => String.fromCharCode(parseInt(h, 16))), 'latin1').toString('utf8');
  } else if (cte === 'base64') {
    body = Buffer.from(body, 'base64').toString('utf8');
  } else {
    body = Buffer.from(body, 'latin1').toString('utf8');
  }
  return { headers, subject: headers.get('subject') ?? '', text: body.replace(/\r\n/g, '\n') };
}

function decodeWords(value: string): string {
  return value.replace(/=\?[^?]+\?([QqBb])\?([^?]*)\?=(\s+(?==\?))?/g, (_m, enc: string, data: string) => (enc.toUpperCase() === 'B'
    ? Buffer.from(data, 'base64')
    : Buffer.from(data.replace(/_/g, ' ').replace(/=([0-9A-Fa-f]{2})/g, (_x, h: string) => String.fromCharCode(parseInt(h, 16))), 'latin1'))
    .toString('utf8'));
}

// ── A real HTTP server for the webhook ─────────────────────────────────────

interface Hook { method: string; url: string; headers: http.IncomingHttpHeaders; body: Record<string, unknown> }

class HookServer {
  requests: Hook[] = [];
  /** The status to answer with; the body repeats the request's URL and authorization (a chatty receiver). */
  status = 200;
  port = 0;
  private server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      this.requests.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body: JSON.parse(Buffer.concat(chunks).toString('utf8')) });
      res.writeHead(this.status, { 'content-type': 'text/plain' });
      res.end(this.status < 300 ? 'ok' : `refused ${req.url} with authorization ${req.headers.authorization}`);
    });
  });

  async start(): Promise<void> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', () => resolve()));
    this.port = (this.server.address() as AddressInfo).port;
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  about(id: number): Hook[] {
    return this.requests.filter((r) => r.body.id === id);
  }
}

// ── The test database, the config and the worker ───────────────────────────

let db: TestDatabase;
const mail = new MailServer();
const hook = new HookServer();
const ctx: AlertContext = { pool: undefined as unknown as AlertContext['pool'], config: {} };

const HOOK_TOKEN = 'Bearer hook-token-4f9c2a71';
const HOOK_PATH = '/services/T0001/B0002/path-secret-8d1e';

/** The "alerts" block as the config file would give it, through ${ENV} substitution and the schema. */
function alerting(opts: { email?: boolean; webhook?: boolean; perHour?: number; smtpPort?: number } = {}): AlertingConfig {
  const raw = {
    ...(opts.email === false ? {} : {
      email: {
        smtp: `smtp://${SMTP_USER}:\${SMTP_PASSWORD}@127.0.0.1:${opts.smtpPort ?? mail.port}`,
        from: 'Syncline <syncline@example.com>',
        to: ['dba@example.com', 'oncall@example.com'],
      },
    }),
    ...(opts.webhook ? { webhook: { url: `http://127.0.0.1:${hook.port}${HOOK_PATH}`, headers: { Authorization: HOOK_TOKEN, 'X-Team': 'data' } } } : {}),
    ...(opts.perHour ? { perHour: opts.perHour } : {}),
  };
  const cfg = parseConfig({ sources: {}, entities: {}, alerts: raw }, { SMTP_PASSWORD });
  return cfg.alerts!;
}

/** Raises an alert the way the engine does (one unresolved alert a kind and entity). */
async function raise(a: { kind: string; entity: string | null; severity?: string; message?: string; details?: unknown }): Promise<number> {
  const { rows } = await db.pool.query<{ id: number }>(
    `select sync.raise_alert($1, $2, $3, $4, $5) as id`,
    [a.kind, a.severity ?? 'warning', a.entity, a.message ?? `${a.kind} on ${a.entity}`, JSON.stringify(a.details ?? {})]);
  return rows[0].id;
}

/**
 * Runs every runnable sync_alert job, as the worker would, until none is left;
 * then waits until their outcomes are written (runOnce, like stop(), can
 * return before graphile-worker has recorded a job's success or failure).
 */
async function work(): Promise<void> {
  await runOnce({ pgPool: db.pool, taskList: { sync_alert: syncAlert(ctx) }, logger: workerLogger() });
  // Far beyond how long writing the outcomes takes on a loaded machine.
  const deadline = Date.now() + 60_000;
  for (;;) {
    const { rows } = await db.pool.query<{ n: number }>(`select count(*)::int as n from graphile_worker.jobs where locked_at is not null`);
    if (rows[0].n === 0) return;
    if (Date.now() > deadline) throw new Error('sync_alert jobs still locked 60 s after the worker ran them');
    await new Promise((r) => setTimeout(r, 20));
  }
}

// graphile-worker 0.17's public jobs view has no payload: the private table has.
const ALERT_JOBS = `select j.id, t.identifier as task_identifier, j.payload, q.queue_name, j.attempts, j.max_attempts, j.last_error
  from graphile_worker._private_jobs j join graphile_worker._private_tasks t on t.id = j.task_id
  left join graphile_worker._private_job_queues q on q.id = j.job_queue_id
 where t.identifier = 'sync_alert' and j.payload ->> 'id' = $1`;

const jobsFor = async (id: number) => (await db.pool.query(`${ALERT_JOBS} order by j.id`, [String(id)])).rows;

/** Makes an alert's failed job runnable now (graphile-worker would wait out its backoff). */
async function retryNow(id: number): Promise<void> {
  await db.pool.query(`select graphile_worker.reschedule_jobs(array(select id from (${ALERT_JOBS}) a), run_at := now())`, [String(id)]);
}

/** A second job for an alert already handled: a worker died after sending, or the job was re-queued by hand. */
async function enqueueAgain(id: number): Promise<void> {
  await db.pool.query(`select graphile_worker.add_job('sync_alert', json_build_object('id', $1::bigint), max_attempts := 5)`, [id]);
}

const deliveries = async (id: number) => (await db.pool.query<{ channel: string; status: string; error: string | null }>(
  `select channel, status, error from sync.alert_delivery where alert_id = $1 order by id`, [id])).rows;

const count = (rows: { channel: string; status: string }[], channel: string, status: string) =>
  rows.filter((r) => r.channel === channel && r.status === status).length;

beforeAll(async () => {
  db = await testDatabase('alerts');
  ctx.pool = db.pool;
  await Promise.all([mail.start(), hook.start()]);
});
afterAll(async () => {
  await Promise.all([mail.stop(), hook.stop()]);
});
afterEach(async () => {
  mail.mode = 'accept';
  hook.status = 200;
  // Jobs a test enqueued but did not run (deliverAlert called directly) do not leak into the next.
  await db.pool.query(`select graphile_worker.complete_jobs(array(select id from graphile_worker.jobs))`);
});

describe('alert delivery', () => {
  it('an alert is e-mailed to every recipient with its subject and a body saying what happened and how to acknowledge it', async () => {
    ctx.config.alerts = alerting();
    const id = await raise({
      kind: 'consecutive_failures', severity: 'critical', entity: 'orders',
      message: '3 consecutive runs of orders failed: connection refused', details: { failures: 3, last_run_id: 41 },
    });
    expect(await jobsFor(id)).toEqual([expect.objectContaining({
      task_identifier: 'sync_alert', payload: { id }, queue_name: null, attempts: 0, max_attempts: 5,
    })]);
    await work();

    const got = mail.about(id);
    expect(got).toHaveLength(1);
    const [m] = got;
    expect(m.rcptTo).toEqual(['dba@example.com', 'oncall@example.com']);
    expect(m.headers.get('to')).toBe('dba@example.com, oncall@example.com');
    expect(m.headers.get('from')).toBe('Syncline <syncline@example.com>');
    expect(m.subject).toBe('[Syncline] critical: consecutive_failures on orders');
    expect(m.text).toContain('3 consecutive runs of orders failed: connection refused');
    expect(m.text).toMatch(/^Entity: +orders$/m);
    expect(m.text).toMatch(/^Kind: +consecutive_failures$/m);
    expect(m.text).toMatch(/^Severity: +critical$/m);
    expect(m.text).toMatch(/^Raised: +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$/m);
    expect(m.text).toContain('"failures": 3');
    expect(m.text).toContain('"last_run_id": 41');
    expect(m.text).toContain(`select sync.ack_alert(${id}, 'your name');`);
    expect(m.text).toContain(`npm run task -- alerts --ack ${id}`);
    expect(await deliveries(id)).toEqual([{ channel: 'email', status: 'sent', error: null }]);
    expect(await jobsFor(id)).toEqual([]);
  });

  it('an alert without an entity says so in the subject and still e-mails', async () => {
    ctx.config.alerts = alerting();
    const id = await raise({ kind: 'worker_down', severity: 'warning', entity: null, message: 'no worker has polled for 10 minutes' });
    await work();
    expect(mail.about(id).map((m) => m.subject)).toEqual(['[Syncline] warning: worker_down']);
    expect(await deliveries(id)).toEqual([{ channel: 'email', status: 'sent', error: null }]);
  });

  it('the webhook receives the alert as JSON with the configured headers', async () => {
    ctx.config.alerts = alerting({ email: false, webhook: true });
    const id = await raise({ kind: 'stale', severity: 'warning', entity: 'hook_entity', message: 'no success for 3 hours', details: { lag: '03:00:00' } });
    await work();

    const got = hook.about(id);
    expect(got).toHaveLength(1);
    const [r] = got;
    expect(r.method).toBe('POST');
    expect(r.url).toBe(HOOK_PATH);
    expect(r.headers.authorization).toBe(HOOK_TOKEN);
    expect(r.headers['x-team']).toBe('data');
    expect(r.headers['content-type']).toBe('application/json');
    expect(r.body).toMatchObject({
      id, kind: 'stale', severity: 'warning', entity: 'hook_entity', message: 'no success for 3 hours',
      details: { lag: '03:00:00' }, acknowledged_at: null, text: '[Syncline] warning: stale on hook_entity: no success for 3 hours',
    });
    expect(new Date(r.body.created_at as string).getTime()).not.toBeNaN();
    expect(await deliveries(id)).toEqual([{ channel: 'webhook', status: 'sent', error: null }]);
    expect(mail.about(id)).toEqual([]);
  });

  it('a webhook answering 500 fails only the webhook: the retry POSTs again and does not e-mail a second time', async () => {
    ctx.config.alerts = alerting({ webhook: true });
    hook.status = 500;
    const id = await raise({ kind: 'gap', entity: 'both_channels' });
    await work();
    expect(mail.about(id)).toHaveLength(1);
    expect(hook.about(id)).toHaveLength(1);
    const [job] = await jobsFor(id);
    expect(job.attempts).toBe(1);
    expect(job.last_error).toMatch(new RegExp(`alert ${id} not delivered: webhook: webhook http://127\\.0\\.0\\.1:\\d+ answered 500`));
    expect(job.last_error).not.toMatch(/email/);
    const first = await deliveries(id);
    expect(count(first, 'email', 'sent')).toBe(1);
    expect(count(first, 'webhook', 'failed')).toBe(1);

    hook.status = 200;
    await retryNow(id);
    await work();
    expect(await jobsFor(id)).toEqual([]);
    expect(mail.about(id)).toHaveLength(1);
    expect(hook.about(id)).toHaveLength(2);
    const after = await deliveries(id);
    expect(count(after, 'email', 'sent')).toBe(1);
    expect(count(after, 'webhook', 'sent')).toBe(1);
    expect(after.filter((d) => d.status === 'sending')).toEqual([]);

    // The job runs once more (a duplicate): neither channel sends again.
    await enqueueAgain(id);
    await work();
    expect(mail.about(id)).toHaveLength(1);
    expect(hook.about(id)).toHaveLength(2);
  });

  it.each(['rejects the message', 'is down'] as const)(
    'when the SMTP server %s the delivery is marked failed and the job throws; a retry sends it once the server is back, never twice',
    async (how) => {
      ctx.config.alerts = alerting();
      const port = mail.port;
      if (how === 'is down') await mail.stop();
      else mail.mode = 'reject';
      const id = await raise({ kind: 'consecutive_failures', severity: 'critical', entity: `smtp_${how.replace(/\W/g, '_')}` });
      try {
        await work();
        expect(mail.about(id)).toEqual([]);
        const [job] = await jobsFor(id);
        expect(job.attempts).toBe(1);
        expect(job.last_error).toMatch(new RegExp(`alert ${id} not delivered: email: SMTP: .*${how === 'is down' ? 'ECONNREFUSED' : '451 mailbox temporarily unavailable'}`));
        const failed = await deliveries(id);
        expect(failed).toEqual([{ channel: 'email', status: 'failed', error: expect.stringMatching(how === 'is down' ? /ECONNREFUSED/ : /451/) }]);
      } finally {
        if (how === 'is down') await mail.start(port);
        mail.mode = 'accept';
      }

      await retryNow(id);
      await work();
      expect(await jobsFor(id)).toEqual([]);
      expect(mail.about(id)).toHaveLength(1);
      expect(mail.about(id)[0].rcptTo).toEqual(['dba@example.com', 'oncall@example.com']);

      // The job runs once more (a worker died after sending, a duplicate job): nothing is sent again.
      await enqueueAgain(id);
      await work();
      expect(await jobsFor(id)).toEqual([]);
      expect(mail.about(id)).toHaveLength(1);
      const rows = await deliveries(id);
      expect(count(rows, 'email', 'sent')).toBe(1);
      expect(count(rows, 'email', 'sending')).toBe(0);
    });

  it('a burst of alerts (a flapping condition) delivered concurrently yields at most perHour e-mails per kind and entity, the rest recorded as suppressed', async () => {
    let round = 0;
    await fc.assert(fc.asyncProperty(
      fc.integer({ min: 1, max: 3 }),
      fc.array(fc.record({ kind: fc.constantFrom('stale', 'gap', 'consecutive_failures'), entity: fc.constantFrom('orders', 'meters', 'línea "1"', null) }),
        { minLength: 1, maxLength: 20 }),
      async (perHour, burst) => {
        // Each round its own kinds: earlier rounds' e-mails, within the hour too, must not count.
        const tag = `r${++round}`;
        ctx.config.alerts = alerting({ perHour, webhook: true });
        // A flapping condition: raised, resolved, raised again; each time a new alert.
        const raised: { kind: string; entity: string | null; id: number }[] = [];
        for (const a of burst) {
          const kind = `${tag}_${a.kind}`;
          raised.push({ kind, entity: a.entity, id: await raise({ kind, entity: a.entity }) });
          await db.pool.query(`select sync.resolve_alerts($1, array[$2])`, [a.entity, kind]);
        }
        expect(new Set(raised.map((a) => a.id)).size).toBe(burst.length);
        const outcomes = await Promise.all(raised.map((a) => deliverAlert(db.pool, ctx.config.alerts, a.id)));

        const groups = new Map<string, number[]>();
        for (const a of raised) {
          const key = JSON.stringify([a.kind, a.entity]);
          groups.set(key, [...(groups.get(key) ?? []), a.id]);
        }
        const ids = raised.map((a) => a.id);
        const { rows } = await db.pool.query<{ alert_id: number; channel: string; status: string }>(
          `select alert_id, channel, status from sync.alert_delivery where alert_id = any($1)`, [ids]);
        for (const [key, group] of groups) {
          const emailed = group.filter((id) => mail.about(id).length > 0);
          expect(emailed.length, `e-mails for ${key}`).toBe(Math.min(perHour, group.length));
          for (const id of group) expect(mail.about(id).length, `e-mails of alert ${id}`).toBeLessThanOrEqual(1);
          const mine = rows.filter((r) => group.includes(r.alert_id) && r.channel === 'email');
          expect(count(mine, 'email', 'sent'), `sent rows for ${key}`).toBe(emailed.length);
          expect(count(mine, 'email', 'suppressed'), `suppressed rows for ${key}`).toBe(group.length - emailed.length);
          expect(mine.length, `e-mail rows for ${key}`).toBe(group.length);
        }
        // The webhook's generous limit lets every alert through, each exactly once.
        for (const id of ids) expect(hook.about(id).length, `POSTs of alert ${id}`).toBe(1);
        expect(rows.filter((r) => r.channel === 'webhook').map((r) => r.status)).toEqual(ids.map(() => 'sent'));
        expect(outcomes.flat().filter((o) => o.status === 'failed')).toEqual([]);
      }), { numRuns: 12 });
  });

  it('secrets of the SMTP URL and the webhook appear in no log line, no sync table and no job error', async () => {
    const lines: string[] = [];
    const logger = log as unknown as Record<symbol, unknown>;
    const stream = logger[pino.symbols.streamSym];
    const level = log.level;
    const stdout = process.stdout.write;
    const stderr = process.stderr.write;
    logger[pino.symbols.streamSym] = { write: (s: string) => { lines.push(s); } };
    log.level = 'trace';
    const capture = (orig: typeof process.stdout.write) => function (this: NodeJS.WriteStream, chunk: unknown, ...rest: unknown[]) {
      lines.push(String(chunk));
      return (orig as (...a: unknown[]) => boolean).call(this, chunk, ...rest);
    } as typeof process.stdout.write;
    process.stdout.write = capture(stdout);
    process.stderr.write = capture(stderr);
    let id: number;
    try {
      ctx.config.alerts = alerting({ webhook: true });
      // Both receivers refuse and repeat the credentials they were given.
      mail.mode = 'echo-auth';
      hook.status = 401;
      id = await raise({ kind: 'consecutive_failures', severity: 'critical', entity: 'secrets' });
      await work();
      const failed = await deliveries(id);
      expect(count(failed, 'email', 'failed')).toBe(1);
      expect(count(failed, 'webhook', 'failed')).toBe(1);
      mail.mode = 'accept';
      hook.status = 200;
      await retryNow(id);
      await work();
    } finally {
      logger[pino.symbols.streamSym] = stream;
      log.level = level;
      process.stdout.write = stdout;
      process.stderr.write = stderr;
    }
    expect(mail.about(id)).toHaveLength(1);
    expect(hook.about(id)).toHaveLength(2);
    // The failures were logged (so the search below searched something), just not the secrets.
    expect(lines.some((l) => l.includes('alert delivery failed'))).toBe(true);
    expect(lines.some((l) => l.includes('alert sent'))).toBe(true);

    const secrets = [SMTP_PASSWORD, 'hook-token-4f9c2a71', 'path-secret-8d1e'];
    const { rows: tables } = await db.pool.query<{ s: string; t: string }>(
      `select table_schema as s, table_name as t from information_schema.tables
        where table_schema in ('sync', 'graphile_worker') and table_type = 'BASE TABLE'`);
    let dump = '';
    for (const { s, t } of tables) {
      const { rows } = await db.pool.query<{ d: string | null }>(`select string_agg(x::text, E'\\n') as d from ${quoteIdent(s)}.${quoteIdent(t)} x`);
      dump += `${s}.${t}: ${rows[0].d ?? ''}\n`;
    }
    expect(dump).toContain('alert_delivery');
    expect(dump).toMatch(/no such user alerts with password \*\*\*/);
    for (const secret of secrets) {
      expect(lines.filter((l) => l.includes(secret)), `log lines with ${secret}`).toEqual([]);
      expect(dump.includes(secret), `a table holding ${secret}`).toBe(false);
    }
  });

  it('without an alerts config a job completes and delivers nothing', async () => {
    ctx.config.alerts = undefined;
    const id = await raise({ kind: 'stale', entity: 'unconfigured' });
    await work();
    expect(await jobsFor(id)).toEqual([]);
    expect(await deliveries(id)).toEqual([]);
    expect(mail.about(id)).toEqual([]);
  });
});
