import { httpNotes, httpOnlyReport, httpRows } from './http-report.js';

export interface Target {
  name: string;
  value: string;
  pass: boolean;
  /** Not measurable in this run (a peer or a feature missing); `why` says what. */
  skipped?: boolean;
  /** For a MISS or a SKIP: why, for the closing note. */
  why?: string;
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

const secs = (x: number | null | undefined) => (x === null || x === undefined ? '' : x.toFixed(2));

/** A row of the phase table for a peer tool's load (no sync counts: it only inserts). */
function peerRow(label: string, x: { seconds: number | null; rows: number | null; wal_bytes: number | null; note: string }, rows: number): string[] {
  if (x.seconds === null) return [label, '', '', '', '', '', '', '', x.note.split('\n')[0].slice(0, 100)];
  return [label, secs(x.seconds), num(Math.round(rows / x.seconds)), '', walMb(x.wal_bytes ?? undefined), '', '', '', x.note ? x.note : 'peer tool, whole process'];
}

/** The path a run took (sync.run.detail.diff), when the engine records one. */
function pathOf(x: { diff?: unknown }): string {
  const d = x.diff as { path?: unknown } | null | undefined;
  if (d === null || d === undefined) return '';
  return `path: ${typeof d === 'object' && d.path !== undefined ? String(d.path) : JSON.stringify(d).slice(0, 60)}`;
}

const joinNotes = (...xs: string[]) => xs.filter(Boolean).join('; ');
const pct = (x: number | null | undefined) => (x === null || x === undefined ? 'n/a' : `${(x * 100).toFixed(2)}%`);
const sec = (ms: number) => `${(ms / 1000).toFixed(2)} s`;

/** The log capture phase (bench/log.ts): its snapshot, the change by log, and the latency stream. */
function logRows(r: Result, phase: (label: string, x: PhaseLike, note?: string) => string[]): string[][] {
  const { cost, latency: l } = r.phases.log;
  const ch = cost.changed;
  return [
    phase('log: snapshot into an empty target', cost.snapshot, `${r.ratios.log_snapshot_over_a ?? 'n/a'}× (a)`),
    phase('log: 1% / 0.1% / 0.1%, by log', ch, joinNotes(ch.verified ? 'target = source' : 'TARGET DIFFERS',
      `${num(ch.changes_read)} changes read`, `rest ${sec(ch.other_ms)}`)),
    [`log: floor, the change applied in SQL`, cost.floor.seconds.toFixed(2), '', '', walMb(cost.floor.wal_bytes), '', '',
      `${num(cost.floor.inserted)}/${num(cost.floor.updated)}/${num(cost.floor.deleted)}`, `${pct(r.ratios.log_floor_over_a)} of (a); no read, no diff, no audit`],
    [`log: ${num(l.changes_per_s)} changes/s, ${l.seconds} s`, l.seconds.toFixed(2), num(l.changes_per_s), '', '', '', '', '',
      `commit → target median ${sec(l.latency_ms.median)}, p95 ${sec(l.latency_ms.p95)}, p99 ${sec(l.latency_ms.p99)}, max ${sec(l.latency_ms.max)}; `
      + `${l.verified ? 'target = source' : 'TARGET DIFFERS'}`],
  ];
}

/** The notes under the table about the log phase. */
function logNotes(r: Result): string[] {
  const p = r.phases;
  const { cost, latency: l } = p.log;
  const out = [`log: the same amount of change on ${num(r.rows)} rows (other rows each time) by log ${cost.changed.seconds.toFixed(2)} s `
    + `(${pct(r.ratios.log_over_a)} of (a))`
    + (p.d ? `, by cursor (d) ${p.d.seconds.toFixed(2)} s (${pct(r.ratios.d_over_a)}; no deletes, verify included)` : '')
    + (p.c ? `, by a full refresh (c) ${p.c.seconds.toFixed(2)} s (${pct(r.ratios.c_over_a)}; ${pathOf(p.c) || 'path not recorded'})` : '')
    + `. The floor (${cost.floor.seconds.toFixed(2)} s, ${pct(r.ratios.log_floor_over_a)} of (a)) is ${cost.floor.note}, on the target of (a) (and (b)–(d) when they ran).`
    + ' Before the change a quiet poll moved the slot past the WAL of the initial load (the target shares the server), as a running worker would.'];
  out.push(`log latency: ${num(l.transactions)} transactions of 20 changes (10 inserts, 10 updates) paced by the clock (${l.late_transactions} late), `
    + `${num(l.changes)} changes at ${num(l.changes_per_s)}/s; the worker's log loop polled every ${l.poll_ms} ms and ran ${l.runs.count} runs `
    + `(mean ${l.runs.mean_ms} ms, max ${l.runs.max_ms} ms, ${l.runs.mean_changes} changes each; read ${l.runs.mean_fetch_ms} ms, merge ${l.runs.mean_merge_ms} ms); `
    + `the target was looked at every ${l.observe_ms} ms (event loop delay p99 ${l.event_loop_delay_ms.p99} ms, max ${l.event_loop_delay_ms.max} ms); `
    + `a change's latency is its transaction's (a run applies whole transactions at once).`);
  return out;
}

function phaseRows(r: Result, phase: (label: string, x: PhaseLike, note?: string) => string[]): string[][] {
  const p = r.phases;
  const rows: string[][] = [];
  if (p.initial_small) rows.push(phase(`initial sync, ${num(r.small_rows)} rows`, p.initial_small, 'RSS reference'));
  if (p.floor) rows.push(phase('floor: COPY TO → COPY FROM', p.floor));
  if (p.peers) {
    rows.push(peerRow('peer: pgcopydb copy table-data', p.peers.pgcopydb, r.rows));
    rows.push(peerRow('peer: pgloader (database, data only)', p.peers.pgloader, r.rows));
  }
  if (p.a) rows.push(phase('(a) initial sync', p.a, pathOf(p.a)));
  if (p.settle) rows.push(phase('    settle (vacuum, checkpoint)', p.settle, 'not part of a sync'));
  if (p.b) rows.push(phase('(b) unchanged re-sync', p.b, pathOf(p.b)));
  if (p.verify) {
    rows.push(['count(*) of source + target', secs(p.verify.count_seconds), '', '', '', '', '', '', 'verify reference']);
    rows.push(['verify, unchanged table', secs(p.verify.seconds), '', '', '', '', '', '', p.verify.note || p.verify.how]);
  }
  if (p.c) rows.push(phase('(c) 1% / 0.1% / 0.1%, full', p.c, joinNotes(p.c.verified ? 'target = source' : 'TARGET DIFFERS', pathOf(p.c))));
  if (p.d) {
    rows.push(phase('(d) same change, by cursor', p.d, joinNotes(p.d.verified ? 'target = source but deletes' : 'TARGET DIFFERS',
      p.d.verify_ms === null || p.d.verify_ms === undefined ? 'no verify' : `verify ${(p.d.verify_ms / 1000).toFixed(2)} s`)));
  }
  if (p.row_loop) rows.push(phase('row-by-row upsert (extrapolated)', p.row_loop, `${num(p.row_loop.sample_rows)} rows in ${p.row_loop.sample_seconds!.toFixed(2)} s`));
  if (p.batched) rows.push(phase('batched upsert ×1000 (extrapolated)', p.batched, `${num(p.batched.sample_rows)} rows in ${p.batched.sample_seconds!.toFixed(2)} s`));
  if (p.log) rows.push(...logRows(r, phase));
  if (p.csv) {
    rows.push(peerRow(`csv: ${p.csv.copy.tool}`, p.csv.copy, r.rows));
    rows.push(phase('csv: csv source, empty target', p.csv.empty));
    rows.push(peerRow('csv: pgloader LOAD CSV', p.csv.pgloader, r.rows));
    rows.push(phase('csv: 1% / 0.1% / 0.1%, re-sync', p.csv.changed, p.csv.changed.verified ? 'target = file' : 'TARGET DIFFERS'));
  }
  return rows;
}

/** The report printed before the JSON line. */
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
  const rows = phaseRows(r, phase);
  if (r.http) rows.push(...httpRows(r.http)); // the http source phases (bench/http.ts)
  const out: string[] = [];
  out.push('');
  out.push(`Syncline bench — ${num(r.rows)} rows${r.only ? ` (BENCH_ONLY=${r.only.join(',')})` : ''}, ${r.server.version}${r.server.embedded ? ' (embedded)' : ''}, ` +
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
  if (r.load_average_1m) {
    out.push(`Machine load (1-minute average) ${r.load_average_1m.start} at the start, ${r.load_average_1m.end} at the end of the Postgres phases, ` +
      `on ${r.platform.split(', ').pop()}: ratios between phases far apart in time are only as steady as that.`);
  }
  if (p.b) out.push(`(b) WAL: ${p.b.wal_bytes.toLocaleString('en')} bytes. ${p.settle.note}.`);
  if (p.d) out.push(`(d) ${p.d.note}.`);
  if (p.peers) out.push('Peers: the time of the whole tool process (start-up included), each into an empty table with the same PK on the same server.');
  if (p.csv) out.push(`csv: peak RSS of the csv source ${Math.max(p.csv.empty.peak_rss_mb, p.csv.changed.peak_rss_mb)} MB (not judged: the RSS targets are on (a)–(d)).`);
  if (p.csv) out.push(`csv: the table as generated (${num(r.rows)} rows), written as a csv file with a header; ${p.csv.copy.tool} (${p.csv.copy.note}) is the reference.`);
  if (p.a && p.initial_small) {
    out.push(`RSS growth: peak of (a) ${p.a.peak_rss_mb} MB (from ${p.a.start_rss_mb}) against ` +
      `${p.initial_small.peak_rss_mb} MB (from ${p.initial_small.start_rss_mb}) at ${num(r.small_rows)} rows; ` +
      'judged on what each run added over its starting RSS.');
  }
  if (p.log) out.push(...logNotes(r));
  if (r.http) out.push(...httpNotes(r.http)); // the http source phases (bench/http.ts)
  out.push('');
  // http-report.ts rebuilds the target list from the JSON's names, values and
  // passes; whether a target was skipped, and why, is read back from the JSON.
  const info = (t: Target) => ({ ...t, ...(r.targets?.[t.name] ?? {}) }) as Target;
  const all = targets.map(info);
  out.push(table(['target', 'value', ''], all.map((t) => [t.name, t.value, t.skipped ? 'SKIP' : t.pass ? 'PASS' : 'MISS']), [false, true, false]));
  out.push('');
  out.push(`ratios: ${Object.entries(r.ratios).map(([k, v]) => `${k}=${v}`).join('  ')}`);
  const skips = all.filter((t) => t.skipped).length;
  out.push(`RSS: ${r.peak_rss_mb.at_start} MB at start, ${r.peak_rss_mb.after_migrate} MB after migrating, ` +
    (r.peak_rss_mb.sync_phases === null ? '' : `${r.peak_rss_mb.sync_phases} MB peak sampled during syncs, `) +
    (r.peak_rss_mb.max_rss_through_d === null ? '' : `maxRSS ${r.peak_rss_mb.max_rss_through_d} MB through (d) and `) +
    `${r.peak_rss_mb.process_max} MB at the end; ` +
    `${r.passed} of ${r.passed + r.missed - skips} targets met${skips ? `, ${skips} skipped` : ''}`);
  const notes = all.filter((t) => !t.pass && t.why);
  if (notes.length) {
    out.push('');
    out.push('Why:');
    for (const t of notes) out.push(`  ${t.skipped ? 'SKIP' : 'MISS'} ${t.name}: ${t.why}`);
  }
  out.push('');
  return out.join('\n');
}
