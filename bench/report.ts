import { httpNotes, httpOnlyReport, httpRows } from './http-report.js';

export interface Target {
  name: string;
  value: string;
  pass: boolean;
}

interface PhaseLike {
  seconds: number;
  rows_per_s?: number;
  peak_rss_mb?: number;
  wal_bytes?: number;
  wal_bytes_sample?: number;
  fetch_ms?: number | null;
  merge_ms?: number | null;
  run?: { inserted: number; updated: number; deleted: number; unchanged: number; run_change_rows: number };
  target_tuples?: { ins: number; upd: number; del: number };
  sample_rows?: number;
  sample_seconds?: number;
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Result = any;

const pad = (s: string, n: number) => (s.length >= n ? s : s + ' '.repeat(n - s.length));
const lpad = (s: string, n: number) => (s.length >= n ? s : ' '.repeat(n - s.length) + s);
const num = (x: number | undefined | null) => (x === undefined || x === null ? '' : x.toLocaleString('en'));
const walMb = (b: number | undefined) => (b === undefined ? '' : (b / 1024 / 1024).toFixed(1));

export function table(head: string[], rows: string[][], right: boolean[]): string {
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (r: string[]) => r.map((c, i) => (right[i] ? lpad(c, w[i]) : pad(c, w[i]))).join('  ');
  return [line(head), w.map((n) => '-'.repeat(n)).join('  '), ...rows.map(line)].join('\n');
}

/** The readable report printed before the JSON line. */
export function report(r: Result, targets: Target[]): string {
  if (!r.phases && r.http) return httpOnlyReport(r, targets); // BENCH_ONLY=http
  const p = r.phases;
  const phase = (label: string, x: PhaseLike, note = ''): string[] => [
    label,
    x.seconds.toFixed(2),
    num(x.rows_per_s),
    x.peak_rss_mb?.toFixed(1) ?? '',
    walMb(x.wal_bytes ?? x.wal_bytes_sample),
    x.fetch_ms === undefined || x.fetch_ms === null ? '' : `${(x.fetch_ms / 1000).toFixed(2)} / ${((x.merge_ms ?? 0) / 1000).toFixed(2)}`,
    x.run ? `+${num(x.run.inserted)} ~${num(x.run.updated)} -${num(x.run.deleted)} =${num(x.run.unchanged)}` : '',
    x.target_tuples ? `${num(x.target_tuples.ins)}/${num(x.target_tuples.upd)}/${num(x.target_tuples.del)}` : '',
    note,
  ];
  const rows = [
    phase(`initial sync, ${num(r.small_rows)} rows`, p.initial_small, 'RSS reference'),
    phase('floor: COPY TO → COPY FROM', p.floor),
    phase('(a) initial sync', p.a),
    phase('    settle (vacuum, checkpoint)', p.settle, 'not part of a sync'),
    phase('(b) unchanged re-sync', p.b),
    phase('(c) 1% / 0.1% / 0.1%, full', p.c, p.c.verified ? 'target = source' : 'TARGET DIFFERS'),
    phase('(d) same change, by cursor', p.d, p.d.verified ? 'target = source but deletes' : 'TARGET DIFFERS'),
    phase('row-by-row upsert (extrapolated)', p.row_loop, `${num(p.row_loop.sample_rows)} rows in ${p.row_loop.sample_seconds.toFixed(2)} s`),
    phase('batched upsert ×1000 (extrapolated)', p.batched, `${num(p.batched.sample_rows)} rows in ${p.batched.sample_seconds.toFixed(2)} s`),
  ];
  if (r.http) rows.push(...httpRows(r.http)); // the http source phases (bench/http.ts)
  const out: string[] = [];
  out.push('');
  out.push(`Syncline bench — ${num(r.rows)} rows, ${r.server.version}${r.server.embedded ? ' (embedded)' : ''}, ` +
    `checksums ${r.server.data_checksums}, fsync ${r.server.fsync}, synchronous_commit ${r.server.synchronous_commit}, ` +
    `shared_buffers ${r.server.shared_buffers}; node ${r.node}, ${r.platform}`);
  out.push(`source table: ${(r.source.heap_bytes / 1024 / 1024).toFixed(0)} MB heap, ` +
    `${(r.source.total_bytes / 1024 / 1024).toFixed(0)} MB with indexes, generated in ${r.source.generate_seconds.toFixed(1)} s`);
  out.push('');
  out.push(table(
    ['phase', 'seconds', 'rows/s', 'peak RSS MB', 'WAL MB', 'fetch / merge s', 'sync.run +ins ~upd -del =same', 'target ins/upd/del', 'note'],
    rows, [false, true, true, true, true, true, false, false, false]));
  out.push('');
  if (r.experiment) out.push(`EXPERIMENT: ${r.experiment} applied on top of the migrations.`);
  out.push('Every timed phase starts after a CHECKPOINT (and with no autovacuum worker running).');
  out.push(`(b) WAL: ${r.phases.b.wal_bytes.toLocaleString('en')} bytes. ${r.phases.settle.note}.`);
  out.push(`(d) ${r.phases.d.note}.`);
  out.push(`RSS growth: peak of (a) ${r.phases.a.peak_rss_mb} MB (from ${r.phases.a.start_rss_mb}) against ` +
    `${r.phases.initial_small.peak_rss_mb} MB (from ${r.phases.initial_small.start_rss_mb}) at ${num(r.small_rows)} rows; ` +
    'judged on what each run added over its starting RSS.');
  if (r.http) out.push(...httpNotes(r.http)); // the http source phases (bench/http.ts)
  out.push('');
  out.push(table(['target', 'value', ''], targets.map((t) => [t.name, t.value, t.pass ? 'PASS' : 'MISS']), [false, true, false]));
  out.push('');
  out.push(`ratios: ${Object.entries(r.ratios).map(([k, v]) => `${k}=${v}`).join('  ')}`);
  out.push(`RSS: ${r.peak_rss_mb.at_start} MB at start, ${r.peak_rss_mb.after_migrate} MB after migrating, ` +
    `${r.peak_rss_mb.sync_phases} MB peak sampled during syncs, maxRSS ${r.peak_rss_mb.max_rss_through_d} MB through (d) ` +
    `and ${r.peak_rss_mb.process_max} MB at the end (after the baselines); ` +
    `${r.passed} of ${r.passed + r.missed} targets met`);
  out.push('');
  return out.join('\n');
}
