import { formatPath } from './issues.js';

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * Entities naming a source or a dependency the config does not define (or
 * asking a source for what its kind cannot do), as "path: message" lines:
 * the one place these names are checked. Read from
 * the raw (substituted) config, so a config with a typo elsewhere still has
 * its unknown names reported in the same run. Shapes the schema judges
 * itself (a "sources" that is not an object, a dependsOn that is "auto" or
 * not a list) are skipped here.
 */
export function referenceProblems(raw: unknown): string[] {
  if (!isObject(raw) || !isObject(raw.entities)) return [];
  const { entities } = raw;
  const sources = isObject(raw.sources) ? raw.sources : undefined;
  const problems: string[] = [];
  for (const [name, e] of Object.entries(entities)) {
    if (!isObject(e)) continue;
    if (sources && typeof e.source === 'string' && !Object.hasOwn(sources, e.source)) {
      problems.push(`${formatPath(['entities', name, 'source'])}: source "${e.source}" is not defined — add it under "sources" or use one of: ${Object.keys(sources).join(', ') || '(none)'}`);
    }
    const source = sources && typeof e.source === 'string' ? sources[e.source] : undefined;
    if (e.capture === 'log' && isObject(source) && source.kind !== 'postgres') {
      problems.push(`${formatPath(['entities', name, 'capture'])}: log capture reads a PostgreSQL source's write-ahead log, and source "${e.source}" is ${String(source.kind)} — remove "capture"`);
    }
    if (!Array.isArray(e.dependsOn)) continue;
    e.dependsOn.forEach((d, i) => {
      if (typeof d === 'string' && !Object.hasOwn(entities, d)) {
        problems.push(`${formatPath(['entities', name, 'dependsOn', i])}: entity "${d}" is not defined`);
      }
    });
  }
  return problems;
}
