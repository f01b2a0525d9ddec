/**
 * `syncline check`: what the first run of each entity would hit, found
 * before it runs. Per entity: the target exists and has every column the
 * config names, the key is unique there, the cursor can be ordered, the
 * source yields what the mapping reads (read as the first run reads it),
 * and every foreign key to another entity's target has its dependsOn.
 */
import { Edge } from '../edge/edge.js';
import { closest } from '../config/issues.js';
import { formatPath } from '../config/load.js';
import { derivedDependencies, foreignKeysOf, pullTargets, tableName, type DerivedDependency } from '../config/depends-on.js';
import type { Config, EntityConfig, TableRef } from '../config/schema.js';
import { quoteIdent } from '../db/database.js';
import { describeUrl, type Pool } from '../db/pool.js';
import { prepareDemo } from '../demo/seed.js';
import { entitySourceKind, sourceKind } from '../sources/registry.js';
import { logNames, logProblems, slotState } from '../sources/postgres/log/slot.js';
import { EXIT, openSession, type GlobalOptions, type Session } from './context.js';

/** What a line says about a check: passed, blocks a run, or worth fixing though a run goes ahead. */
type Mark = '✓' | '✗' | '!';

interface Finding {
  mark: Mark;
  text: string;
}

const fail = (text: string): Finding => ({ mark: '✗', text });
const warn = (text: string): Finding => ({ mark: '!', text });

// Source columns listed in a message about a missing one: enough to spot the
// right name, not a wide table's every column.
const MAX_LISTED_COLUMNS = 12;

/**
 * The database, every source, then every entity. Exit 1 when a ✗ line was
 * printed; "!" lines (a missing dependsOn) do not block a run and leave the
 * exit code alone.
 */
export async function check(opts: GlobalOptions): Promise<number> {
  const s = await openSession(opts);
  try {
    await prepareDemo(s.db.url, s.config, Boolean(s.db.embedded));
    const out = new Printer();
    await checkDatabase(s, out);
    await checkSources(s, out);
    await checkEntities(s, out);
    return out.failed ? EXIT.failed : EXIT.ok;
  } finally {
    await s.close();
  }
}

class Printer {
  failed = false;

  line(mark: Mark, text: string): void {
    if (mark === '✗') this.failed = true;
    process.stdout.write(`${mark} ${text}\n`);
  }
}

async function checkDatabase(s: Session, out: Printer): Promise<void> {
  const v = await s.pool.query('select current_setting($1) as v', ['server_version']);
  out.line('✓', `database ${describeUrl(s.db.url)} (PostgreSQL ${v.rows[0].v}), sync schema migrated`);
}

/** Each source that can be reached by itself (a database); a file or http source is checked through its entities. */
async function checkSources(s: Session, out: Printer): Promise<void> {
  for (const [name, src] of Object.entries(s.config.sources)) {
    const kind = sourceKind(src.kind);
    if (!kind?.check) continue;
    try {
      out.line('✓', `source ${name}: ${await kind.check(s.engine, name)}`);
    } catch (err) {
      out.line('✗', `source ${name}: ${(err as Error).message}`);
    }
  }
}

async function checkEntities(s: Session, out: Printer): Promise<void> {
  const applied = new Set((await s.pool.query<{ name: string }>('select name from sync.entity')).rows.map((r) => r.name));
  const missingDeps = await missingDependencies(s.pool, s.config);
  const edge = new Edge(s.engine);
  try {
    for (const [name, e] of Object.entries(s.config.entities)) {
      if (e.direction === 'push') {
        // Its target is on the remote: the push plan checks both sides.
        await edge.describePush(name, e).then((d) => out.line('✓', `entity ${name}: ${d}`),
          (err) => out.line('✗', `entity ${name}: ${(err as Error).message}`));
        continue;
      }
      const { findings, summary } = await checkPullEntity(s, name, e);
      const dep = missingDeps.get(name);
      if (dep) findings.push(warn(dep));
      if (!findings.some((f) => f.mark === '✗')) {
        out.line('✓', `entity ${name}: ${summary}${applied.has(name) ? '' : ' (not applied yet: run `config apply`)'}`);
      }
      for (const f of findings) out.line(f.mark, `entity ${name}: ${f.text}`);
    }
  } finally {
    await edge.close();
  }
}

/** The findings about one pull entity, and the line that sums it up when none of them is a ✗. */
async function checkPullEntity(s: Session, name: string, e: EntityConfig): Promise<{ findings: Finding[]; summary: string }> {
  const findings = await targetFindings(s.pool, name, e);
  const source = await sourceFindings(s, name, e);
  const cursor = e.cursor ? `, cursor ${e.cursor.column} orderable` : '';
  const log = e.capture === 'log' ? await logFindings(s, name, e) : { findings: [], summary: '' };
  return {
    findings: [...findings, ...source.findings, ...log.findings],
    summary: `source yields ${source.count} columns, target ${tableName(e.target as TableRef)} exists, key (${e.key.join(', ')}) unique${cursor}${log.summary}`,
  };
}

/** Log capture: what the source lacks for it, and its slot as the source sees it. */
async function logFindings(s: Session, name: string, e: EntityConfig): Promise<{ findings: Finding[]; summary: string }> {
  try {
    const { pool } = s.engine.pgSource(e.source);
    const problems = await logProblems(pool, e);
    const { slot } = logNames(name);
    const state = await slotState(pool, slot);
    const findings = problems.map((p) => fail(`log capture: ${p}`));
    if (state?.wal_status === 'lost') findings.push(fail(`log capture: the slot ${slot} is lost (the source removed WAL it needed): take a new snapshot with \`syncline sync ${name} --full\``));
    else if (state?.wal_status === 'unreserved') findings.push(warn(`log capture: the slot ${slot} keeps ${state.retained_bytes} bytes of WAL and is about to be lost (wal_status unreserved)`));
    const where = state ? `slot ${slot} keeps ${Math.round(Number(state.retained_bytes) / 1024)} kB of WAL` : `the first run creates the slot ${slot}`;
    return { findings, summary: `, log capture ready (${where})` };
  } catch (err) {
    return { findings: [fail(`log capture: ${(err as Error).message}`)], summary: '' };
  }
}

async function targetFindings(pool: Pool, name: string, e: EntityConfig): Promise<Finding[]> {
  const ref = e.target as TableRef;
  const target = await targetCatalog(pool, ref);
  if (!target) return [fail(`target table ${tableName(ref)} does not exist — create it with your migrations`)];
  return [...targetColumnProblems(name, e, target), ...keyProblems(name, e, target), ...await cursorProblems(pool, name, e, target)];
}

/** The source read as the first run reads it, and (a postgres source) the columns the mapping reads from it. */
async function sourceFindings(s: Session, name: string, e: EntityConfig): Promise<{ findings: Finding[]; count: number }> {
  let yielded: string[] | number;
  try {
    yielded = await sourceYields(s, name, e);
  } catch (err) {
    // A message that already says how to fix it (after " — ") needs no second hint.
    const message = (err as Error).message;
    return { findings: [fail(`the source cannot be read: ${message}${message.includes(' — ') ? '' : ' — check "from" in the config'}`)], count: 0 };
  }
  if (!Array.isArray(yielded)) return { findings: [], count: yielded };
  return { findings: sourceColumnProblems(name, e, yielded), count: yielded.length };
}

/** A target table as the catalog describes it: its columns and the column sets of its unique indexes. */
interface TargetCatalog {
  columns: { name: string; type: string; generated: boolean }[];
  /** Each unique index (or primary key) without predicate or expressions, as its column names. */
  uniqueKeys: string[][];
}

/** One round trip: null when the table does not exist. */
async function targetCatalog(pool: Pool, t: TableRef): Promise<TargetCatalog | null> {
  const { rows } = await pool.query<{ found: boolean; columns: TargetCatalog['columns']; unique_keys: string[][] }>(
    `with t as (select to_regclass(format('%I.%I', $1::text, $2::text)) as rel)
     select t.rel is not null as found,
            coalesce((select json_agg(json_build_object('name', a.attname, 'type', format_type(a.atttypid, a.atttypmod),
                                                        'generated', a.attgenerated <> '') order by a.attnum)
                        from pg_attribute a where a.attrelid = t.rel and a.attnum > 0 and not a.attisdropped), '[]') as columns,
            coalesce((select json_agg(u.cols)
                        from (select array_agg(a.attname::text order by a.attnum) as cols
                                from pg_index i join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any (i.indkey::int2[])
                               where i.indrelid = t.rel and i.indisunique and i.indpred is null and i.indexprs is null
                               group by i.indexrelid) u), '[]') as unique_keys
       from t`, [t.schema, t.table]);
  const r = rows[0];
  return r.found ? { columns: r.columns, uniqueKeys: r.unique_keys } : null;
}

/** Every target column the entity names, with the config path that names it. */
function namedTargetColumns(name: string, e: EntityConfig): { column: string; role: string; path: string }[] {
  const at = (...p: PropertyKey[]) => formatPath(['entities', name, ...p]);
  // Roles before plain mapped columns: a column named twice is reported under its role.
  const named = e.key.map((c, i) => ({ column: c, role: 'key column', path: at('key', i) }));
  if (e.tenant) named.push({ column: e.tenant.column, role: 'tenant column', path: at('tenant', 'column') });
  if (e.cursor) named.push({ column: e.cursor.column, role: 'cursor column', path: at('cursor', 'column') });
  if (e.softDelete) named.push({ column: e.softDelete.column, role: 'soft-delete column', path: at('softDelete', 'column') });
  if (e.version) named.push({ column: e.version.column, role: 'version column', path: at('version', 'column') });
  if (Array.isArray(e.columns)) named.push(...e.columns.map((c, i) => ({ column: c, role: 'column', path: at('columns', i) })));
  else if (e.columns) named.push(...Object.keys(e.columns).map((c) => ({ column: c, role: 'mapped column', path: at('columns', c) })));
  if ('nested' in e.from) {
    named.push(...Object.keys(e.from.nested.parent).map((c) => ({ column: c, role: 'parent column', path: at('from', 'nested', 'parent', c) })));
  }
  return named;
}

/** Named columns the target lacks or computes itself; one finding a column, the first path that names it. */
function targetColumnProblems(name: string, e: EntityConfig, target: TargetCatalog): Finding[] {
  const ref = tableName(e.target as TableRef);
  const byName = new Map(target.columns.map((c) => [c.name, c]));
  const seen = new Set<string>();
  const findings: Finding[] = [];
  for (const n of namedTargetColumns(name, e)) {
    if (seen.has(n.column)) continue;
    seen.add(n.column);
    const col = byName.get(n.column);
    if (!col) {
      const near = closest(n.column, target.columns.map((c) => c.name));
      findings.push(fail(`${n.role} "${n.column}" is not a column of target ${ref} — `
        + (near ? `did you mean "${near}"? Correct ${n.path}` : `add it to ${ref} with your migrations, or correct ${n.path}`)));
    } else if (col.generated) {
      findings.push(fail(`${n.role} "${n.column}" of target ${ref} is generated, so a sync cannot write it — name another column in ${n.path}`));
    }
  }
  // A nested child's parent columns (a sale's version on its line items) are synced beside its own.
  const fromParent = 'nested' in e.from ? Object.keys(e.from.nested.parent) : [];
  const own = Array.isArray(e.columns) ? e.columns : e.columns ? Object.keys(e.columns) : null;
  const mapped = own && [...own, ...fromParent];
  if (e.cursor && mapped && !mapped.includes(e.cursor.column)) {
    findings.push(fail(`cursor column "${e.cursor.column}" is not among the synced columns — add it to ${formatPath(['entities', name, 'columns'])}`));
  }
  return findings;
}

/** The key must be unique in the target: a primary key or unique index on some of its columns. */
function keyProblems(name: string, e: EntityConfig, target: TargetCatalog): Finding[] {
  const present = new Set(target.columns.map((c) => c.name));
  if (!e.key.every((k) => present.has(k))) return []; // the missing column is the finding
  if (target.uniqueKeys.some((u) => u.every((c) => e.key.includes(c)))) return [];
  const ref = e.target as TableRef;
  const sql = `create unique index on ${quoteIdent(ref.schema)}.${quoteIdent(ref.table)} (${e.key.map(quoteIdent).join(', ')})`;
  return [fail(`no primary key or unique index of target ${tableName(ref)} covers the key (${e.key.join(', ')}), so nothing keeps a record `
    + `from landing twice — add one with your migrations (${sql}), or correct ${formatPath(['entities', name, 'key'])}`)];
}

/**
 * The cursor column must be orderable: a run's new cursor is max() of it,
 * taken on the target. Planned against an empty scan (no row is read), so
 * the answer is exactly the run's, domains and coercions included.
 */
async function cursorProblems(pool: Pool, name: string, e: EntityConfig, target: TargetCatalog): Promise<Finding[]> {
  const col = e.cursor && target.columns.find((c) => c.name === e.cursor!.column);
  if (!col) return [];
  const ref = e.target as TableRef;
  try {
    await pool.query(`select max(t.${quoteIdent(col.name)})::text from ${quoteIdent(ref.schema)}.${quoteIdent(ref.table)} t where false`);
    return [];
  } catch (err) {
    if ((err as { code?: string }).code !== '42883') throw err; // undefined_function: the type has no ordering
    return [fail(`cursor column "${col.name}" is of type ${col.type}, which has no order (max() is undefined for it) — `
      + `point ${formatPath(['entities', name, 'cursor', 'column'])} at a timestamp, number or text column`)];
  }
}

/**
 * What the entity's source yields, read as its first run reads it: a
 * postgres query's column names ({{cursor}} null), an http endpoint's first
 * page (the number of fields of its first record), a csv file's header.
 */
function sourceYields(s: Session, name: string, e: EntityConfig): Promise<string[] | number> {
  return entitySourceKind(s.config, name, e).columns(s.engine, name, e);
}

/** Source columns the mapping reads that a postgres source does not yield. */
function sourceColumnProblems(name: string, e: EntityConfig, yielded: string[]): Finding[] {
  const have = new Set(yielded);
  const listed = yielded.length > MAX_LISTED_COLUMNS ? `${yielded.slice(0, MAX_LISTED_COLUMNS).join(', ')}, …` : yielded.join(', ');
  const at = (...p: PropertyKey[]) => formatPath(['entities', name, ...p]);
  const read: { source: string; target: string; path: string }[] = [];
  if (Array.isArray(e.columns)) read.push(...e.columns.map((c, i) => ({ source: c, target: c, path: at('columns', i) })));
  else if (e.columns) read.push(...Object.entries(e.columns).map(([t, c]) => ({ source: c, target: t, path: at('columns', t) })));
  else {
    // By default the columns both sides have are synced: the key, tenant and cursor must be among them.
    read.push(...e.key.map((k, i) => ({ source: k, target: k, path: at('key', i) })));
    if (e.tenant) read.push({ source: e.tenant.column, target: e.tenant.column, path: at('tenant', 'column') });
    if (e.cursor) read.push({ source: e.cursor.column, target: e.cursor.column, path: at('cursor', 'column') });
  }
  if (e.deletedWhen) read.push({ source: e.deletedWhen.column, target: '', path: at('deletedWhen', 'column') });
  const findings: Finding[] = [];
  for (const r of read) {
    if (have.has(r.source) || findings.some((f) => f.text.startsWith(`source column "${r.source}"`))) continue;
    const near = closest(r.source, yielded);
    findings.push(fail(`source column "${r.source}"${r.target && r.target !== r.source ? ` (for target column "${r.target}")` : ''} `
      + `is not among the columns the source yields (${listed}) — ${near ? `did you mean "${near}"? ` : ''}correct ${r.path}, or the source's "from"`));
  }
  return findings;
}

/**
 * Entity → a warning naming the entities its target's foreign keys point
 * at (through their targets) that its dependsOn leaves out, and the
 * dependsOn that has them. "auto" has them all by construction.
 */
async function missingDependencies(pool: Pool, cfg: Config): Promise<Map<string, string>> {
  const derived = derivedDependencies(cfg, await foreignKeysOf(pool, pullTargets(cfg)));
  const out = new Map<string, string>();
  for (const [name, e] of Object.entries(cfg.entities)) {
    if (e.direction !== 'pull' || e.dependsOn === 'auto') continue;
    const listed = e.dependsOn;
    const missing = (derived.get(name) ?? []).filter((d) => !listed.includes(d.entity));
    if (missing.length) out.set(name, dependencyWarning(name, e, listed, missing));
  }
  return out;
}

function dependencyWarning(name: string, e: EntityConfig, listed: string[], missing: DerivedDependency[]): string {
  const refs = missing.map((d) => `${tableName(d.via.to)} by ${d.via.name} (filled by entity ${d.entity})`);
  const names = missing.map((d) => d.entity);
  const wanted = JSON.stringify([...listed, ...names]).replaceAll('","', '", "');
  return `target ${tableName(e.target as TableRef)} references ${refs.join(', ')}, but dependsOn does not list `
    + `${names.join(', ')} — set ${formatPath(['entities', name, 'dependsOn'])} to ${wanted} (or "auto"), `
    + `else a run may load ${name} before ${names.join(' and ')}`;
}
