import cliProgress from 'cli-progress';
import type { Progress, RunResult } from '../engine/run.js';
import { summary, formatCount as n } from '../engine/summary.js';

export interface Reporter {
  /** Total rows expected for an entity (the last run's count), if known. */
  start(entity: string, expected: number | null): void;
  progress(p: Progress): void;
  /**
   * The summary line of a result. Its seconds are the run's own from
   * sync.run (`result.seconds`, filled by withRunSeconds); `ms` is printed
   * only for a result without them.
   */
  finish(result: RunResult, ms?: number): void;
  close(): void;
}

/** Chunks of a backfill: a bar on a terminal, a line a chunk otherwise. */
export function makeChunkReporter(entity: string, tty = Boolean(process.stderr.isTTY)) {
  if (!tty) {
    return {
      chunk: (c: { from: string; to: string; done: boolean }, i: number, total: number) =>
        process.stderr.write(`${entity}: chunk ${i + 1}/${total} [${c.from}, ${c.to})${c.done ? ' already done' : ''}\n`),
      close: () => {},
    };
  }
  const bar = new cliProgress.SingleBar({
    format: ' {bar} {entity} backfill | chunk {value}/{total} | {range}', barCompleteChar: '█', barIncompleteChar: '░',
    hideCursor: true, stream: process.stderr,
  });
  let started = false;
  return {
    chunk: (c: { from: string; to: string }, i: number, total: number) => {
      if (!started) { bar.start(total, 0, { entity, range: '' }); started = true; }
      bar.update(i + 1, { range: `[${c.from}, ${c.to})` });
    },
    close: () => bar.stop(),
  };
}

/** Bars on a terminal; one plain line a phase otherwise (logs, CI, cron mail). */
export function makeReporter(tty = Boolean(process.stderr.isTTY)): Reporter {
  return tty ? barReporter() : lineReporter();
}

function lineReporter(): Reporter {
  const phase = new Map<string, string>();
  return {
    start: (entity) => process.stderr.write(`${entity}: fetching\n`),
    progress(p) {
      // A chunked read: a line as each chunk comes in.
      const at = p.chunks && p.phase === 'fetch' ? `fetch ${p.chunks.done}/${p.chunks.total}` : p.phase;
      if (phase.get(p.entity) === at) return;
      phase.set(p.entity, at);
      if (at !== p.phase && p.chunks!.done > 0) process.stderr.write(`${p.entity}: ${p.chunks!.done} of ${p.chunks!.total} chunks read\n`);
      if (p.phase === 'merge') process.stderr.write(`${p.entity}: merging\n`);
    },
    finish: (r, ms) => process.stdout.write(`${summary(r, ms)}\n`),
    close: () => {},
  };
}

function barReporter(): Reporter {
  const multi = new cliProgress.MultiBar({
    format: ' {bar} {entity} | {phase} | {value} rows{of} | {rate} rows/s',
    barCompleteChar: '█', barIncompleteChar: '░', hideCursor: true, clearOnComplete: false,
    stream: process.stderr, fps: 8,
    formatValue: (v: number, _o: unknown, type: string) => (type === 'value' ? n(v) : String(v)),
  });
  const bars = new Map<string, { bar: cliProgress.SingleBar; started: number; expected: number | null }>();
  const lines: string[] = [];
  return {
    start(entity, expected) {
      const bar = multi.create(expected ?? 1, 0, { entity, phase: 'fetch', of: expected ? ` of ~${n(expected)}` : '', rate: 0 });
      bars.set(entity, { bar, started: Date.now(), expected });
    },
    progress(p) {
      const b = bars.get(p.entity);
      if (!b) return;
      const secs = Math.max((Date.now() - b.started) / 1000, 0.001);
      if (p.phase === 'fetch') {
        if (!b.expected || p.rows > b.expected) b.bar.setTotal(Math.max(p.rows, 1));
        b.bar.update(p.rows, { phase: p.chunks ? `fetch, chunk ${p.chunks.done}/${p.chunks.total}` : 'fetch', rate: n(Math.round(p.rows / secs)) });
      } else {
        b.bar.update({ phase: p.phase });
      }
    },
    finish(r, ms) {
      const b = bars.get(r.entity);
      if (b) {
        b.bar.setTotal(Math.max(r.fetched ?? 1, 1));
        b.bar.update(r.fetched ?? 0, { phase: r.status });
      }
      lines.push(summary(r, ms));
    },
    close() {
      multi.stop();
      for (const line of lines) process.stdout.write(`${line}\n`);
    },
  };
}
