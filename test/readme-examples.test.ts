/**
 * Every example README, followed literally after `npm start` (issue 12): the
 * commands are read from the README itself, so the README cannot drift from
 * what works.
 *
 * The state `npm start` leaves: one embedded PostgreSQL (started here once,
 * its files in a temp dir named by SYNCLINE_HOME, on a free port named by
 * SYNCLINE_EMBEDDED_PORT) with the demo applied and synced in its database
 * `syncline`. Every CLI command the READMEs run finds that server and reuses
 * it, as it does beside a running `npm start`. The commands run in a copy of
 * the working tree (node_modules linked, a git index so `git checkout <file>`
 * works), because READMEs edit files (`sed -i`, `setup.ts` writes `.env`
 * beside a config) that the checkout and other test files must keep.
 *
 * How a README says what to run:
 * - Only fenced blocks whose info string is `sh` or `bash` run, in order,
 *   each command with cwd = the repository root and through bash. A command
 *   is a line, with lines ending in `\` joined to the next; blank lines and
 *   lines starting with `#` (comments, or output shown to the reader) are not
 *   commands.
 * - A command exits 0 unless a comment on its line says `exits <n>`
 *   (`npm run task -- sync $C   # exits 3 (partial: …)`).
 * - A line that only assigns variables (`C="--config …"`, `export X=…`) is
 *   kept, and put before every later command of the README.
 * - `<!-- not run: <reason> -->` on the line before a block skips it: a real
 *   vendor account, a process that runs until Ctrl-C, an interactive psql.
 * - `<!-- background: <reason> -->` before a block of one command (a local
 *   stand-in for a vendor's API) starts it in the background, with PORT set
 *   to a free port, until the README's last block has run. Its comment lines
 *   are the output the README shows: the test waits until the process has
 *   printed each of them (with the address it really serves on), then
 *   exports every `export NAME=value` line it printed, as the reader is told
 *   to, and later commands use the real address wherever the README writes
 *   the one it shows (`http://127.0.0.1:8787`).
 *
 * Afterwards the demo's entities in `syncline` are untouched (same
 * sync.entity rows, no new runs, no new alerts, same target tables), and the
 * example's own database holds its entities, each run at least once, with
 * no open critical alert.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fc from 'fast-check';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { cpSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { configDatabase, EMBEDDED_DATABASE, PROJECT_ROOT } from '../src/db/database.js';
import { freePort, startEmbedded, type EmbeddedServer } from '../src/db/embedded.js';
import { makePool, type Pool } from '../src/db/pool.js';
import { until } from './helpers/until.js';

// ── the convention ─────────────────────────────────────────────────────────

interface ReadmeCommand {
  /** The command as bash runs it (continuation lines joined). */
  text: string;
  /** 1-based line in the README, for messages. */
  line: number;
  exits: number;
  /** Only assigns variables: kept for every later command. */
  assignment: boolean;
}

interface ReadmeBlock {
  line: number;
  mode: 'run' | 'background' | 'skip';
  reason?: string;
  commands: ReadmeCommand[];
  /** The block's comment lines, `#` and indentation removed. */
  comments: string[];
}

const FENCE = /^(\s*)(`{3,})\s*([\w-]*)\s*$/;
const MARKER = /^\s*<!--\s*(not run|background)\s*:\s*(.*?)\s*-->\s*$/;
const RUNNABLE = new Set(['sh', 'bash']);
const EXITS = /(?:^|\s)#.*\bexits (\d+)\b/;
const ASSIGNMENT = /^(?:export\s+)?[A-Za-z_]\w*=(?:"[^"]*"|'[^']*'|[^\s"';&|]*)\s*(?:#.*)?$/;

/** The runnable blocks of a README, in order, per the convention above. */
function readmeBlocks(markdown: string): ReadmeBlock[] {
  const lines = markdown.split('\n');
  const blocks: ReadmeBlock[] = [];
  for (let i = 0; i < lines.length; i++) {
    const open = FENCE.exec(lines[i]);
    if (!open) continue;
    const [, indent, ticks, lang] = open;
    let end = i + 1;
    while (end < lines.length && !(lines[end].trim().startsWith(ticks) && lines[end].trim().replace(/`/g, '') === '')) end++;
    const body = lines.slice(i + 1, end).map((l) => (l.startsWith(indent) ? l.slice(indent.length) : l.trimStart()));
    const startLine = i + 1;
    i = end;
    if (!RUNNABLE.has(lang)) continue;
    let before = startLine - 2;
    while (before >= 0 && lines[before].trim() === '') before--;
    const marker = before >= 0 ? MARKER.exec(lines[before]) : null;
    if (marker && marker[2] === '') throw new Error(`line ${before + 1}: <!-- ${marker[1]}: … --> needs a reason after the colon`);
    const mode = marker ? (marker[1] === 'not run' ? 'skip' : 'background') : 'run';
    blocks.push({ line: startLine, mode, reason: marker?.[2], ...blockCommands(body, startLine + 1) });
  }
  return blocks;
}

function blockCommands(body: string[], firstLine: number): Pick<ReadmeBlock, 'commands' | 'comments'> {
  const commands: ReadmeCommand[] = [];
  const comments: string[] = [];
  for (let k = 0; k < body.length; k++) {
    const line = firstLine + k;
    const trimmed = body[k].trim();
    if (trimmed === '') continue;
    if (trimmed.startsWith('#')) {
      comments.push(trimmed.replace(/^#+/, '').trim());
      continue;
    }
    let text = body[k];
    // bash reads the continuation itself: the backslash and newline stay.
    while (/\\$/.test(text.trimEnd()) && k + 1 < body.length) text = `${text.trimEnd()}\n${body[++k]}`;
    text = text.trim();
    const exits = EXITS.exec(text);
    commands.push({ text, line, exits: exits ? Number(exits[1]) : 0, assignment: ASSIGNMENT.test(text) });
  }
  return { commands, comments };
}

// ── running a README ───────────────────────────────────────────────────────

const EXAMPLES_DIR = path.join(PROJECT_ROOT, 'examples');
const examples = readdirSync(EXAMPLES_DIR).filter((d) => existsSync(path.join(EXAMPLES_DIR, d, 'README.md'))).sort();
// Left out of the copy: big, private to this checkout, or state a README
// must not find (a developer's .env beside a config, a running .syncline/).
const NOT_COPIED = new Set(['node_modules', '.git', '.syncline', 'test-results', 'bench-results', 'coverage', 'scratch', 'test-artifacts']);
// Variables of the developer's shell or of the test runner that would steer
// a command away from what the reader's fresh shell does.
const INHERITED_OUT = /^(DATABASE_URL|TEST_DATABASE_URL|NODE_ENV|PORT|TENANT|SYNCLINE_.*|POSTGRES_.*|REMOTE_.*|CLOUD_.*|EDGE_.*|INVENTORY_.*|LIGHTSPEED_.*|SELLER.*|REGIONS_TAB)$/;
// Far beyond any README command (a sync of every entity of an example), below the test's timeout.
const COMMAND_TIMEOUT_MS = 5 * 60_000;
const EXAMPLE_TIMEOUT_MS = 20 * 60_000;
const ORIGIN = /https?:\/\/127\.0\.0\.1:\d+/;

let repo: string;
let server: EmbeddedServer;
let home: string;
let baseEnv: NodeJS.ProcessEnv;
const pools = new Map<string, Pool>();

function poolFor(database: string): Pool {
  if (!pools.has(database)) pools.set(database, makePool(server.url(database), { max: 2 }));
  return pools.get(database)!;
}

interface Outcome { code: number | null; output: string }

/** Runs `script` through bash in the copy, output (stdout and stderr, interleaved) collected. */
function bash(script: string, env: NodeJS.ProcessEnv): Promise<Outcome> {
  return new Promise((resolve, reject) => {
    const child = spawn('bash', ['-c', script], { cwd: repo, env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    let output = '';
    child.stdout.on('data', (d) => { output += d; });
    child.stderr.on('data', (d) => { output += d; });
    const timer = setTimeout(() => {
      output += `\n(killed after ${COMMAND_TIMEOUT_MS / 1000} s)`;
      try { process.kill(-child.pid!, 'SIGKILL'); } catch { /* already gone */ }
    }, COMMAND_TIMEOUT_MS);
    child.on('error', reject);
    child.on('close', (code) => { clearTimeout(timer); resolve({ code, output }); });
  });
}

interface Background { child: ChildProcess; output: () => string }

function startBackground(script: string, env: NodeJS.ProcessEnv): Background {
  const child = spawn('bash', ['-c', script], { cwd: repo, env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  let output = '';
  child.stdout!.on('data', (d) => { output += d; });
  child.stderr!.on('data', (d) => { output += d; });
  return { child, output: () => output };
}

function stopBackground(b: Background): void {
  if (b.child.exitCode !== null || b.child.signalCode !== null) return;
  // The whole group: bash, npx and the server it started.
  try { process.kill(-b.child.pid!, 'SIGTERM'); } catch { /* already gone */ }
}

const tail = (s: string) => (s.length > 4000 ? `…${s.slice(-4000)}` : s);

/** Follows one README from its first block to its last. */
async function followReadme(example: string): Promise<void> {
  const readme = `examples/${example}/README.md`;
  const blocks = readmeBlocks(readFileSync(path.join(repo, readme), 'utf8'));
  const env: NodeJS.ProcessEnv = { ...baseEnv };
  const assignments: string[] = [];
  const addresses = new Map<string, string>();
  const backgrounds: Background[] = [];
  const literal = (text: string) => [...addresses].reduce((t, [shown, real]) => t.split(shown).join(real), text);
  try {
    for (const block of blocks) {
      if (block.mode === 'skip') continue;
      if (block.mode === 'background') {
        backgrounds.push(await background(readme, block, env, assignments, addresses));
        continue;
      }
      for (const command of block.commands) {
        const text = literal(command.text);
        if (command.assignment) assignments.push(text);
        const r = await bash([...assignments, text].join('\n'), env);
        expect(r.code, `${readme}:${command.line}: \`${text}\` exited ${r.code}, the README says ${command.exits}\n${tail(r.output)}`)
          .toBe(command.exits);
      }
    }
  } finally {
    backgrounds.forEach(stopBackground);
  }
}

/** Starts a background block, waits for the output the README shows, and exports what it prints. */
async function background(readme: string, block: ReadmeBlock, env: NodeJS.ProcessEnv, assignments: string[],
  addresses: Map<string, string>): Promise<Background> {
  expect(block.commands, `${readme}:${block.line}: a background block holds one command`).toHaveLength(1);
  const b = startBackground([...assignments, block.commands[0].text].join('\n'), { ...env, PORT: String(await freePort()) });
  const shown = block.comments.join('\n').match(ORIGIN)?.[0];
  const real = shown
    ? (await until(`${readme}:${block.line} to print the address it serves on`, async () => {
      if (b.child.exitCode !== null) throw new Error(`${readme}:${block.line}: \`${block.commands[0].text}\` exited ${b.child.exitCode}\n${tail(b.output())}`);
      return b.output().match(ORIGIN)?.[0];
    }))
    : undefined;
  if (shown && real) addresses.set(shown, real);
  const expected = block.comments.filter((c) => c !== '…').map((c) => (shown && real ? c.split(shown).join(real) : c));
  await until(`${readme}:${block.line} to print what the README shows:\n${expected.join('\n')}`, async () => {
    const printed = new Set(b.output().split('\n').map((l) => l.trim()));
    return expected.every((line) => printed.has(line));
  });
  for (const [, name, value] of b.output().matchAll(/^\s*export ([A-Za-z_]\w*)=(\S*)\s*$/gm)) env[name] = value;
  return b;
}

// ── the demo's state, and each example's database ──────────────────────────

const DEMO_TABLES = ['metering.tenants', 'metering.meters', 'metering.registers', 'metering.device_register'];

/** What an example must not change in the demo's database. */
async function demoState(): Promise<unknown> {
  const db = poolFor(EMBEDDED_DATABASE);
  const entities = await db.query(`select coalesce(jsonb_agg(to_jsonb(e) order by e.name), '[]') as rows from sync.entity e`);
  const runs = await db.query('select count(*)::int as count, coalesce(max(id), 0)::int as last from sync.run');
  const alerts = await db.query('select count(*)::int as count from sync.alert');
  const tables: Record<string, string> = {};
  for (const t of DEMO_TABLES) {
    const { rows } = await db.query(`select md5(coalesce(string_agg(t::text, ',' order by t::text), '')) as md5 from ${t} t`);
    tables[t] = rows[0].md5;
  }
  return { entities: entities.rows[0].rows, runs: runs.rows[0], alerts: alerts.rows[0].count, tables };
}

beforeAll(async () => {
  repo = mkdtempSync(path.join(os.tmpdir(), 'syncline-readme-'));
  cpSync(PROJECT_ROOT, repo, {
    recursive: true,
    filter: (src) => path.basename(src) !== '.env' && !NOT_COPIED.has(path.relative(PROJECT_ROOT, src)),
  });
  symlinkSync(path.join(PROJECT_ROOT, 'node_modules'), path.join(repo, 'node_modules'), 'dir');
  // An index is all `git checkout <file>` needs to put a file back.
  for (const args of [['init', '-q'], ['add', '-A']]) {
    const r = spawnSync('git', args, { cwd: repo, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`git ${args.join(' ')} in ${repo} failed: ${r.stderr}`);
  }
  home = mkdtempSync(path.join(os.tmpdir(), 'syncline-readme-home-'));
  const port = await freePort();
  // What `npm start` leaves running: the CLI finds it by SYNCLINE_HOME's
  // postmaster.pid. Shared, as npm start's is: this process holds it, so the
  // commands (each the last Syncline process to leave) do not stop it.
  server = await startEmbedded({ dir: home, port, persistent: false, shared: true });
  baseEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !INHERITED_OUT.test(k)));
  Object.assign(baseEnv, { SYNCLINE_HOME: home, SYNCLINE_EMBEDDED_PORT: String(port) });
  // The demo, as `npm start` applies it: seeded, applied, synced.
  const demo = await bash('npm run task -- sync', baseEnv);
  expect(demo.code, `the demo's sync failed:\n${tail(demo.output)}`).toBe(0);
}, 5 * 60_000);

afterAll(async () => {
  for (const pool of pools.values()) await pool.end();
  await server?.stop();
  if (repo) rmSync(repo, { recursive: true, force: true });
}, 2 * 60_000);

describe('the README convention', () => {
  it('reads sh and bash blocks in order; skips `not run` blocks, marks background ones; joins continued lines; reads `exits n`', () => {
    const md = [
      '```sh', 'npm ci', '```', '```json', '{"not": "run"}', '```',
      '<!-- not run: needs a real account -->', '', '```sh', 'curl https://vendor.example', '```',
      '<!-- background: serves until Ctrl-C -->', '```bash', 'npx tsx server.ts', '# serving on http://127.0.0.1:8787', '```',
      '   <!-- not run: a list item -->', '   ```sh', '   X=1', '   ```',
      '```sh', 'C="--config x.json"   # kept', 'sed -i -e a \\', '       -e b f.csv', 'npm run task -- sync $C   # exits 3 (partial)', '```',
    ].join('\n');
    const blocks = readmeBlocks(md);
    expect(blocks.map((b) => [b.mode, b.reason])).toEqual([
      ['run', undefined], ['skip', 'needs a real account'], ['background', 'serves until Ctrl-C'], ['skip', 'a list item'], ['run', undefined],
    ]);
    expect(blocks[2].comments).toEqual(['serving on http://127.0.0.1:8787']);
    expect(blocks[4].commands.map(({ text, exits, assignment }) => ({ text, exits, assignment }))).toEqual([
      { text: 'C="--config x.json"   # kept', exits: 0, assignment: true },
      { text: 'sed -i -e a \\\n       -e b f.csv', exits: 0, assignment: false },
      { text: 'npm run task -- sync $C   # exits 3 (partial)', exits: 3, assignment: false },
    ]);
    expect(() => readmeBlocks('<!-- not run: -->\n```sh\nx\n```')).toThrow(/needs a reason/);
  });

  it('any sequence of commands, each with its exit code, reads back as written', () => {
    const command = fc.record({
      words: fc.array(fc.stringMatching(/^[a-z][a-z0-9.-]{0,8}$/), { minLength: 1, maxLength: 4 }),
      exits: fc.constantFrom(0, 1, 3),
    });
    fc.assert(fc.property(fc.array(command, { minLength: 1, maxLength: 8 }), (cmds) => {
      const lines = cmds.map((c) => `${c.words.join(' ')}${c.exits ? `   # exits ${c.exits}` : ''}`);
      const [block] = readmeBlocks(['```sh', ...lines, '```'].join('\n'));
      expect(block.commands.map((c) => [c.text, c.exits])).toEqual(lines.map((l, i) => [l, cmds[i].exits]));
    }));
  });

  it('every example README has commands to run, and says why it skips a block', () => {
    for (const example of examples) {
      const blocks = readmeBlocks(readFileSync(path.join(EXAMPLES_DIR, example, 'README.md'), 'utf8'));
      expect(blocks.filter((b) => b.mode === 'run').flatMap((b) => b.commands).length, example).toBeGreaterThan(0);
      for (const b of blocks.filter((x) => x.mode !== 'run')) expect(b.reason, `${example}:${b.line}`).toBeTruthy();
    }
  });
});

describe('each example README, followed literally after `npm start`', () => {
  for (const example of examples) {
    it(`${example}: every command exits as the README says; the example's entities land in its own database; the demo's stay untouched`, async () => {
      const before = await demoState();
      await followReadme(example);
      expect(await demoState()).toEqual(before);

      const configFile = path.join(repo, 'examples', example, 'syncline.config.json');
      const database = configDatabase(configFile);
      expect(database, `examples/${example}/syncline.config.json names a database of its own`).not.toBe(EMBEDDED_DATABASE);
      const db = poolFor(database);
      const defined = Object.keys((JSON.parse(readFileSync(configFile, 'utf8')) as { entities: object }).entities);
      const applied = await db.query<{ name: string }>('select name from sync.entity order by name');
      expect(applied.rows.map((r) => r.name)).toEqual([...defined].sort());
      const neverRun = await db.query(`select name from sync.entity e
        where not exists (select 1 from sync.run r where r.entity = e.name and not r.dry_run)`);
      expect(neverRun.rows).toEqual([]);
      const critical = await db.query(`select kind, entity, message from sync.alert
        where severity = 'critical' and resolved_at is null and acknowledged_at is null`);
      expect(critical.rows).toEqual([]);
    }, EXAMPLE_TIMEOUT_MS);
  }

  // Expected to fail until src/cli/health.ts opens the database the config
  // names: `status $C` in the READMEs shows the demo's entities instead.
  it('`status --config` of an example shows none of the demo\'s entities', () => {
    const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', 'status', '--json',
      '--config', 'examples/seller-sheet/syncline.config.json'], { cwd: repo, env: baseEnv, encoding: 'utf8', timeout: COMMAND_TIMEOUT_MS });
    const shown = (JSON.parse(r.stdout) as { entity: string }[]).map((row) => row.entity);
    const demo = Object.keys((JSON.parse(readFileSync(path.join(repo, 'syncline.config.json'), 'utf8')) as { entities: object }).entities);
    expect(shown.filter((name) => demo.includes(name))).toEqual([]);
  }, EXAMPLE_TIMEOUT_MS);
});
