import type { z } from 'zod';

/** JSON path of an issue in the form people read: entities.meters.key[0]. */
export function formatPath(segments: readonly PropertyKey[]): string {
  let out = '';
  for (const s of segments) {
    if (typeof s === 'number') out += `[${s}]`;
    else if (/^[A-Za-z_$][\w$]*$/.test(String(s))) out += out ? `.${String(s)}` : String(s);
    else out += `[${JSON.stringify(String(s))}]`;
  }
  return out || '(top level)';
}

/** What describeIssue needs besides the issue: the schema and input it came from, and the secrets not to repeat. */
export interface IssueContext {
  schema: z.ZodType;
  /** The input the schema was given (after ${ENV} substitution and presets). */
  input: unknown;
  /** Values taken from the environment: a value containing one is never repeated. */
  fromEnv: ReadonlySet<string>;
}

// Known fields are listed after "unknown field" when there are at most this
// many; a longer list (an entity has ~30) would bury the message.
const MAX_LISTED_FIELDS = 12;

/** One line per problem: "path: what is wrong — what to do". */
export function describeIssue(issue: z.core.$ZodIssue, ctx: IssueContext): string[] {
  const where = formatPath(issue.path);
  if (issue.code === 'unrecognized_keys') {
    const known = knownKeys(ctx.schema, issue.path, ctx.input);
    return issue.keys.map((k) => `${where}: unknown field "${k}" — ${fieldHint(k, known)}`);
  }
  if (issue.code === 'invalid_value') {
    return [`${where}: ${notAllowed(issue.input, issue.values, ctx)}`];
  }
  if (issue.code === 'invalid_union' && issue.discriminator && 'options' in issue && issue.options && issue.errors.length === 0) {
    // A discriminated union whose "kind" or "style" matched no option: the path already ends at that field.
    const { options } = issue;
    const given = isObject(issue.input) ? issue.input[issue.discriminator] : undefined;
    if (given === undefined) return [`${where}: is required — use one of ${quoted(options)}`];
    return [`${where}: ${notAllowed(given, options, ctx)}`];
  }
  if (issue.code === 'invalid_union' && issue.errors.length) return describeUnion(issue, ctx);
  if (issue.code === 'invalid_type' && issue.input === undefined) {
    return [`${where}: is required (${issue.expected}) — add it`];
  }
  if (issue.code === 'invalid_type') {
    // The value itself is not repeated: it may be a secret from ${ENV}.
    return [`${where}: must be ${article(issue.expected)}, not ${article(kindOf(issue.input))}`];
  }
  return [`${where}: ${issue.message}`];
}

/**
 * A value that matched none of a union's alternatives. Reported as: the
 * fields no alternative knows (a misspelt "tabel" in "from"); else, when
 * each alternative only wanted another type or value, all of them at once
 * ("must be false or an object"); else the problems of the alternative the
 * value resembles most — the one it names no unknown and lacks no required
 * field of, fewest problems first.
 */
function describeUnion(issue: z.core.$ZodIssueInvalidUnion, ctx: IssueContext): string[] {
  const at = (i: z.core.$ZodIssue): z.core.$ZodIssue => ({ ...i, path: [...issue.path, ...i.path] });
  const unknownIn = (branch: z.core.$ZodIssue[]) => branch.flatMap((i) => (i.code === 'unrecognized_keys' && i.path.length === 0 ? i.keys : []));
  const [first, ...rest] = issue.errors.map(unknownIn);
  const everywhere = first.filter((k) => rest.every((keys) => keys.includes(k)));
  if (everywhere.length) {
    return describeIssue({ code: 'unrecognized_keys', keys: everywhere, path: issue.path, message: '' }, ctx);
  }
  const mismatches = issue.errors.map((b) => (b.length === 1 && b[0].path.length === 0 ? b[0] : undefined));
  if (mismatches.every((m) => m?.code === 'invalid_type' || m?.code === 'invalid_value')) {
    return [`${formatPath(issue.path)}: ${mismatch(mismatches as Mismatch[], ctx)}`];
  }
  const unlike = (branch: z.core.$ZodIssue[]) => unknownIn(branch).length
    + branch.filter((i) => i.code === 'invalid_type' && i.input === undefined && i.path.length === 1).length;
  const best = issue.errors.map((b, i) => ({ b, score: unlike(b), i }))
    .sort((x, y) => x.score - y.score || x.b.length - y.b.length || x.i - y.i)[0].b;
  return best.flatMap((i) => describeIssue(at(i), ctx));
}

type Mismatch = z.core.$ZodIssueInvalidType | z.core.$ZodIssueInvalidValue;

/** A value each alternative of a union refused for its type or value alone: "must be false or an object". */
function mismatch(ms: Mismatch[], ctx: IssueContext): string {
  const values = ms.flatMap((m) => (m.code === 'invalid_value' ? m.values : []));
  const types = ms.flatMap((m) => (m.code === 'invalid_type' ? [article(m.expected)] : []));
  const wanted = [...new Set([...values.map((v) => JSON.stringify(v)), ...types])];
  const either = `${wanted.slice(0, -1).join(', ')}${wanted.length > 1 ? ' or ' : ''}${wanted.at(-1)}`;
  const { input } = ms[0];
  if (input === undefined) return `must be ${either} — add it`;
  const near = typeof input === 'string' && !isFromEnv(input, ctx.fromEnv)
    ? closest(input, values.filter((v): v is string => typeof v === 'string')) : undefined;
  if (near !== undefined) return `${shown(input)} is not allowed — did you mean "${near}"? (must be ${either})`;
  return `must be ${either}, not ${article(kindOf(input))}`;
}

/** "…" is not allowed — did you mean / use one of …, without repeating a value from the environment. */
function notAllowed(given: unknown, allowed: readonly unknown[], ctx: IssueContext): string {
  const options = quoted(allowed);
  if (typeof given === 'string' && isFromEnv(given, ctx.fromEnv)) {
    return `the value taken from the environment is not allowed — use one of ${options}`;
  }
  if (allowed.length === 1) return `must be ${options}, not ${shown(given)}`;
  const near = typeof given === 'string' ? closest(given, allowed.filter((a): a is string => typeof a === 'string')) : undefined;
  return near !== undefined
    ? `${shown(given)} is not allowed — did you mean "${near}"? (one of ${options})`
    : `${shown(given)} is not allowed — use one of ${options}`;
}

function fieldHint(key: string, known: string[]): string {
  const near = closest(key, known);
  if (near !== undefined) return `did you mean "${near}"?`;
  if (known.length && known.length <= MAX_LISTED_FIELDS) return `remove it, or use one of ${quoted(known)}`;
  return 'remove it, or check the spelling against syncline.config.schema.json';
}

function isFromEnv(value: string, fromEnv: ReadonlySet<string>): boolean {
  for (const v of fromEnv) if (v !== '' && value.includes(v)) return true;
  return false;
}

const MASK = '***';

// Shorter values are masked only where a message quotes them whole:
// replacing one or two characters everywhere would garble it, hiding nothing.
const MIN_MASKED_LENGTH = 3;

/**
 * A problem line with every value taken from ${ENV} masked, as written and
 * as JSON escapes it — a schema's own message may quote the value it
 * refused. The path before ": " is left alone: it holds field names, which
 * are never substituted.
 */
export function hideEnvValues(problem: string, fromEnv: ReadonlySet<string>): string {
  const cut = problem.indexOf(': ');
  if (cut < 0 || fromEnv.size === 0) return problem;
  // Longest first, so a value containing another is masked whole.
  const spellings = [...new Set([...fromEnv].flatMap((v) => [v, JSON.stringify(v).slice(1, -1)]))]
    .filter((v) => v !== '').sort((a, b) => b.length - a.length);
  let text = problem.slice(cut);
  for (const v of spellings) {
    text = v.length >= MIN_MASKED_LENGTH ? text.split(v).join(MASK) : text.split(`"${v}"`).join(`"${MASK}"`);
  }
  return problem.slice(0, cut) + text;
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

const quoted = (values: readonly unknown[]) => values.map((v) => JSON.stringify(v)).join(', ');

function kindOf(v: unknown): string {
  return v === null ? 'null' : Array.isArray(v) ? 'array' : typeof v;
}

function article(kind: string): string {
  if (kind === 'null') return 'null';
  if (kind === 'record') return 'an object';
  return /^[aeiou]/.test(kind) ? `an ${kind}` : `a ${kind}`;
}

/** A value as a message may show it: strings quoted, objects and arrays named, not spelt out. */
function shown(v: unknown): string {
  return typeof v === 'object' && v !== null ? article(kindOf(v)) : JSON.stringify(v) ?? String(v);
}

const normalize = (s: string) => s.toLowerCase().replace(/[-_\s]/g, '');

/** Edit distance, a swap of two neighbours counting as one edit (tabel → table). */
function distance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.length][b.length];
}

// A suggestion further than this from what was written is a guess, not a correction.
const MAX_SUGGESTION_DISTANCE = 3;

/**
 * The candidate `given` most likely means: the nearest by edit distance,
 * ignoring case, "_" and "-" (dependOn → dependsOn, depends_on → dependsOn,
 * delimeter → delimiter); else a candidate that is one word of it
 * (primaryKey → key). Undefined when nothing is near.
 */
export function closest(given: string, candidates: readonly string[]): string | undefined {
  const g = normalize(given);
  const limit = Math.min(MAX_SUGGESTION_DISTANCE, Math.max(1, Math.floor(g.length / 3)));
  let best: string | undefined;
  let bestDistance = limit + 1;
  for (const c of candidates) {
    const d = distance(g, normalize(c));
    if (d < bestDistance) [best, bestDistance] = [c, d];
  }
  if (best !== undefined) return best;
  const words = given.split(/[-_\s]+|(?<=[a-z0-9])(?=[A-Z])/).map((w) => w.toLowerCase()).reverse();
  for (const w of words) {
    const c = candidates.find((k) => normalize(k) === w);
    if (c !== undefined) return c;
  }
  return undefined;
}

// The parts of zod's schema definitions this module walks.
interface Def {
  type: string;
  shape?: Record<string, Node>;
  innerType?: Node;
  in?: Node;
  options?: Node[];
  discriminator?: string;
  valueType?: Node;
  element?: Node;
  getter?: () => Node;
  left?: Node;
  right?: Node;
  values?: unknown[];
}
interface Node { _zod: { def: Def } }

/** The object, record and array schemas `schema` may stand for, through wrappers, pipes and unions. */
function shapes(schema: Node, value: unknown, depth = 0): Node[] {
  if (depth > 20) return [];
  const def = schema._zod.def;
  const again = (s: Node | undefined) => (s ? shapes(s, value, depth + 1) : []);
  switch (def.type) {
    case 'object': case 'record': case 'array': return [schema];
    case 'pipe': return again(def.in);
    case 'lazy': return again(def.getter?.());
    case 'intersection': return [...again(def.left), ...again(def.right)];
    case 'union': {
      const options = def.options ?? [];
      const disc = def.discriminator;
      const given = disc && isObject(value) ? value[disc] : undefined;
      const chosen = given === undefined ? [] : options.filter((o) => {
        const lit = o._zod.def.shape?.[disc!]?._zod.def;
        return lit?.values?.includes(given);
      });
      return (chosen.length ? chosen : options).flatMap(again);
    }
    default: return again(def.innerType);
  }
}

/** The field names the schema knows for the object at `path` of `root`. */
export function knownKeys(schema: z.ZodType, path: readonly PropertyKey[], root: unknown): string[] {
  let nodes = shapes(schema as unknown as Node, root);
  let value = root;
  for (const seg of path) {
    value = isObject(value) || Array.isArray(value) ? (value as Record<PropertyKey, unknown>)[seg] : undefined;
    nodes = nodes.flatMap((n) => {
      const def = n._zod.def;
      const next = def.type === 'object' ? def.shape?.[String(seg)] : def.type === 'record' ? def.valueType : def.element;
      return next ? shapes(next, value) : [];
    });
  }
  return [...new Set(nodes.flatMap((n) => Object.keys(n._zod.def.shape ?? {})))];
}
