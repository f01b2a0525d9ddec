/**
 * `syncline verify <entity> [--fix] [--json]`: the entity's source against
 * its target by key-hash bucket checksums, printed like a diff. Exit 0 when
 * they are equal (or --fix healed every difference), EXIT.differs when
 * keys differ, 1 when the comparison failed.
 */
import { verifyEntity, type VerificationResult, type VerifiedKey } from '../engine/verification.js';
import { EXIT, openSession, UsageError, type GlobalOptions } from './context.js';

export interface VerifyOptions extends GlobalOptions {
  fix?: boolean;
  json?: boolean;
}

const WHY: Record<VerifiedKey['kind'], string> = {
  '-': 'in the source, missing from the target',
  '+': 'in the target, not in the source',
  '~': 'differs',
};

export async function verify(entity: string, opts: VerifyOptions): Promise<number> {
  const s = await openSession(opts);
  try {
    const { rows } = await s.pool.query('select 1 from sync.entity where name = $1', [entity]);
    if (!rows.length) {
      throw new UsageError(`unknown entity "${entity}" — the config defines: ${Object.keys(s.config.entities).sort().join(', ') || '(none)'}`
        + ' (run `syncline config apply` after adding one)');
    }
    const r = await verifyEntity(s.engine, entity, { fix: opts.fix });
    process.stdout.write(opts.json ? `${JSON.stringify(r, null, 2)}\n` : formatResult(r));
    if (r.status === 'failed' || r.fix?.after.status === 'failed') return EXIT.failed;
    return r.status === 'equal' || r.status === 'fixed' ? EXIT.ok : EXIT.differs;
  } finally {
    await s.close();
  }
}

/** The keys as a diff reads, then a summary line (and, after --fix, what the re-sync did and the second comparison). */
export function formatResult(r: VerificationResult): string {
  if (r.error) return `✗ ${r.entity}: verification ${r.id} failed: ${r.error}\n`;
  const lines = r.keys.map((k) => `${k.kind} ${keyText(r.keyColumns, k.key)}  (${WHY[k.kind]}${k.kind === '~' && k.columns?.length ? `: ${k.columns.join(', ')}` : ''})`);
  lines.push(summaryLine(r));
  if (r.columnsNote) lines.push(`  note: ${r.columnsNote}`);
  if (r.fix) {
    const x = r.fix.run;
    lines.push(x.status === 'succeeded' || x.status === 'partial'
      ? `fix: run ${x.runId} re-synced ${r.keys.length} key${r.keys.length === 1 ? '' : 's'}: +${x.inserted ?? 0} inserted, ~${x.updated ?? 0} updated, -${x.deleted ?? 0} deleted${x.quarantined ? `, ${x.quarantined} quarantined` : ''}`
      : `fix: run ${x.runId ?? '–'} ${x.status}${x.error ? `: ${x.error}` : ''}`);
    lines.push(`verified again: ${summaryLine(r.fix.after)}`);
    for (const k of r.fix.after.keys) lines.push(`  ${k.kind} ${keyText(r.keyColumns, k.key)}  (${WHY[k.kind]})`);
  }
  return `${lines.join('\n')}\n`;
}

function summaryLine(r: VerificationResult): string {
  if (r.error) return `verification ${r.id} failed: ${r.error}`;
  const scope = r.range ? ` with ${r.range.column} from ${r.range.lo} to ${r.range.hi}` : '';
  const found = r.missing + r.extra + r.changed === 0 ? 'equal'
    : `${r.missing} missing, ${r.extra} extra, ${r.changed} differing`;
  return `${r.entity}: ${r.rowsCompared} rows${scope} compared in ${r.segments} segments: ${found} (${(r.ms / 1000).toFixed(1)} s, verification ${r.id})`;
}

/** A key as the dry run prints one: {"column": "value"}. */
function keyText(columns: string[], key: string[]): string {
  return columns.length === key.length ? JSON.stringify(Object.fromEntries(columns.map((c, i) => [c, key[i]]))) : JSON.stringify(key);
}
