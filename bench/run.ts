/**
 * `npm run bench`: one table of BENCH_ROWS rows (default 1,000,000) synced
 * Postgres → Postgres, beside the baselines a sync is judged against. Prints a
 * table with PASS/MISS per target, then one line of JSON (last on stdout),
 * also written to bench-results/<timestamp>.json.
 *
 *   BENCH_ROWS=100000 npm run bench           quick check
 *   BENCH_DATABASE_URL=postgres://…/postgres  another server (admin URL) instead of a throwaway embedded one
 *   BENCH_KEEP=1                               keep the bench databases afterwards
 *   BENCH_SQL=my-merge.sql                     SQL applied after the migrations (a changed
 *                                              sync.merge, say): measure a proposal without
 *                                              editing them; the report says so
 *   BENCH_HTTP_ROWS=200000                     records of the http source phases (bench/http.ts),
 *                                              run after the others into the same report and JSON
 *   BENCH_ONLY=http                            run only the http source phases
 *   BENCH_EDGE_ROWS=100000                     readings of the edge push phases (bench/edge.ts, default
 *                                              1,000,000), run last into the same report and JSON;
 *                                              BENCH_EDGE_BATCH the larger batch (10,000)
 *   BENCH_ONLY=edge                            run only the edge push phases
 *   BENCH_ONLY=peers,csv                       run only these Postgres phase groups (comma-separated):
 *                                              sync (floor, (a)–(d), baselines), peers (floor, pgcopydb,
 *                                              pgloader), csv (\copy, csv source, pgloader), verify ((a), verify),
 *                                              chunks (first load in one COPY vs in chunks by the run + 2 workers),
 *                                              log ((a), log capture's snapshot, 1% change, floor and latency)
 *   BENCH_LOG_SECONDS=10                       how long the log latency writer commits 1,000 changes/s (default 60)
 *
 * The exit code is 0 even when a target is missed (this is a report); it is
 * non-zero only when the bench itself fails.
 */

// The engine logs through pino on stdout; keep it to warnings so the JSON line
// stays last. Set before the engine's modules load (they read it at import).
process.env.SYNCLINE_LOG_LEVEL ??= 'warn';

const { main, onlyGroups } = await import('./bench.js');
// The http source phases (bench/http*.ts) run after the Postgres ones; their
// figures join the same report and JSON line, printed once both are done.
const { finishWithHttp, holdReport } = await import('./http-report.js');
// The edge push phases (bench/edge.ts) run last; their figures join the JSON line.
const { edgeOnly, thenEdge } = await import('./edge.js');
try {
  if (process.env.BENCH_ONLY === 'http') await finishWithHttp(null);
  else if (process.env.BENCH_ONLY === 'edge') await edgeOnly();
  else if (process.env.BENCH_ONLY && onlyGroups()) await main();
  else await thenEdge(async () => {
    const held = holdReport();
    try {
      await main();
    } catch (err) {
      held.stop();
      held.flush();
      throw err;
    }
    held.stop();
    await finishWithHttp(held);
  });
  process.exit(0);
} catch (err) {
  console.error('bench failed:', err);
  process.exit(1);
}
