/**
 * Server-sent events of runs' progress. One connection LISTENs on
 * sync_progress (the engine NOTIFYs each report) and pushes a fresh reading
 * of the run to its subscribers at once. A run also ends without a report
 * (cancelled, failed), and a notification can be missed while the listener
 * reconnects, so each watched run is also read once a second.
 */
import type { ServerResponse } from 'node:http';
import type { Pool, PoolClient } from '../db/pool.js';
import { log } from '../log.js';
import { readProgress, type RunProgress } from './progress.js';

// How often a watched run is read besides its notifications.
const POLL_MS = 1000;
// A comment line this often keeps proxies from closing an idle stream.
const HEARTBEAT_MS = 15_000;
// After the listening connection fails, wait this long before listening again.
const RELISTEN_MS = 2000;
// EventSource reconnects after this long when a stream drops.
const CLIENT_RETRY_MS = 2000;

type Subscriber = { send: (p: RunProgress) => void; end: (p: RunProgress | null) => void };

interface Watched {
  subscribers: Set<Subscriber>;
  timer: NodeJS.Timeout;
  last: string;
  reading: Promise<void>;
}

export class ProgressHub {
  private readonly runs = new Map<number, Watched>();
  private listener: PoolClient | null = null;
  private closed = false;
  private relisten: NodeJS.Timeout | undefined;

  constructor(private readonly pool: Pool) {}

  /** Starts listening; a failure is logged and retried, polling carries on meanwhile. */
  async start(): Promise<void> {
    if (this.closed) return;
    try {
      const client = await this.pool.connect();
      client.on('notification', (n) => this.onNotification(n.payload));
      client.on('error', (err) => this.lost(client, err));
      await client.query('listen sync_progress');
      this.listener = client;
    } catch (err) {
      log.warn({ err: String(err) }, 'cannot listen for run progress; streams fall back to polling');
      this.relisten = setTimeout(() => void this.start(), RELISTEN_MS);
    }
  }

  private lost(client: PoolClient, err: Error): void {
    if (this.listener !== client) return;
    this.listener = null;
    client.release(err);
    if (this.closed) return;
    log.warn({ err: String(err) }, 'the progress listener lost its connection; listening again');
    this.relisten = setTimeout(() => void this.start(), RELISTEN_MS);
  }

  private onNotification(payload: string | undefined): void {
    try {
      const runId = Number(JSON.parse(payload ?? '{}').run_id);
      if (this.runs.has(runId)) this.read(runId);
    } catch {
      // Not ours to judge: a malformed payload just means no push.
    }
  }

  /** Pushes the run's progress to `sub` now and on every change, then ends it when the run ends. */
  subscribe(runId: number, sub: Subscriber): () => void {
    let w = this.runs.get(runId);
    if (!w) {
      w = { subscribers: new Set(), timer: setInterval(() => this.read(runId), POLL_MS), last: '', reading: Promise.resolve() };
      this.runs.set(runId, w);
    }
    w.subscribers.add(sub);
    // A newcomer gets the current state even when it has not changed.
    this.readNow(runId).then((p) => {
      if (p) sub.send(p);
      if (!p || p.status !== 'running') this.finish(runId, p);
    })
      .catch((err) => log.debug({ err: String(err), runId }, 'could not read progress'));
    return () => this.unsubscribe(runId, sub);
  }

  private unsubscribe(runId: number, sub: Subscriber): void {
    const w = this.runs.get(runId);
    if (!w) return;
    w.subscribers.delete(sub);
    if (!w.subscribers.size) {
      clearInterval(w.timer);
      this.runs.delete(runId);
    }
  }

  private readNow(runId: number): Promise<RunProgress | null> {
    return readProgress(this.pool, runId);
  }

  /** Reads the run (one read at a time per run) and pushes it if it changed. */
  private read(runId: number): void {
    const w = this.runs.get(runId);
    if (!w) return;
    w.reading = w.reading.then(async () => {
      const p = await this.readNow(runId);
      if (!p) return this.finish(runId, null);
      const sig = JSON.stringify({ ...p, elapsedSeconds: 0 });
      if (sig !== w.last) {
        w.last = sig;
        for (const s of w.subscribers) s.send(p);
      }
      if (p.status !== 'running') this.finish(runId, p);
    }).catch((err) => log.debug({ err: String(err), runId }, 'could not read progress'));
  }

  private finish(runId: number, p: RunProgress | null): void {
    const w = this.runs.get(runId);
    if (!w) return;
    clearInterval(w.timer);
    this.runs.delete(runId);
    for (const s of w.subscribers) s.end(p);
  }

  /** Ends every stream and stops listening. */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.relisten);
    for (const runId of [...this.runs.keys()]) this.finish(runId, null);
    const client = this.listener;
    this.listener = null;
    if (client) {
      await client.query('unlisten sync_progress').catch(() => {});
      client.release();
    }
  }
}

/** Streams a run's progress to `res` as server-sent events: "progress" events, then one "end" with the last state. */
export function streamProgress(hub: ProgressHub, res: ServerResponse, runId: number): void {
  res.writeHead(200, {
    'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-store', connection: 'keep-alive',
    // Proxies such as nginx would otherwise buffer the stream.
    'x-accel-buffering': 'no', 'x-content-type-options': 'nosniff',
  });
  // A reading can land after the client has gone: write only while the stream is open.
  const write = (text: string) => { if (!res.writableEnded && !res.destroyed) res.write(text); };
  const event = (name: string, data: unknown) => write(`event: ${name}\ndata: ${JSON.stringify(data)}\n\n`);
  const heartbeat = setInterval(() => write(': keep-alive\n\n'), HEARTBEAT_MS);
  write(`retry: ${CLIENT_RETRY_MS}\n\n`);
  let stop = () => {};
  const close = () => { clearInterval(heartbeat); stop(); };
  stop = hub.subscribe(runId, {
    send: (p) => event('progress', p),
    // Without a final state (the server is stopping) the stream just closes and EventSource reconnects.
    end: (p) => {
      if (p) event('end', p);
      close();
      res.end();
    },
  });
  res.on('close', close);
}
