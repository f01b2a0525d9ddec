import { ConfigError, DEFAULT_CONFIG_FILE } from '../../config/errors.js';
import { formatPath } from '../../config/issues.js';
import { PRESETS, type Preset } from './presets/index.js';

export { PRESETS } from './presets/index.js';
export type { Preset, PresetEndpoint } from './presets/index.js';

type Obj = Record<string, unknown>;

const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

// Replaced whole, never merged key by key: an auth block is one alternative
// of a union ({"bearer"} merged into {"basic"} would be neither).
const REPLACED_WHOLE = new Set(['auth']);

/**
 * `given` laid over `defaults`: the user's values win; plain objects merge
 * key by key (headers, retries, rateLimit, params, fields), arrays and
 * everything else are replaced. A pagination of another style replaces the
 * preset's whole.
 */
function under(defaults: Obj, given: Obj): Obj {
  const out: Obj = { ...defaults };
  for (const [k, v] of Object.entries(given)) {
    const d = out[k];
    if (v === undefined) continue;
    if (isObj(d) && isObj(v) && !REPLACED_WHOLE.has(k)
      && !(k === 'pagination' && v.style !== undefined && v.style !== d.style)) {
      out[k] = under(d, v);
    } else {
      out[k] = v;
    }
  }
  return out;
}

const list = (names: string[]) => names.map((n) => `"${n}"`).join(', ');

/**
 * Expands presets in a parsed config (after ${ENV} substitution, before
 * validation). For every source with "preset": "<name>", the preset's
 * source defaults go under the user's values and the preset's own options
 * (domainPrefix, registers, baseId, token …) are consumed. For every entity
 * of such a source whose from.http names an "endpoint", the preset's path,
 * params, recordsPath, pagination and fields go under the user's values;
 * preset fields for columns the entity's "columns" map already names are
 * dropped, so the user's mapping wins there too.
 *
 * Problems (unknown preset or endpoint, bad options) are pushed onto
 * `problems` with their JSON path; without that array, they throw a
 * ConfigError. Anything that is not the expected shape is left for the
 * schema to report.
 */
export function expandPresets(raw: unknown, problems?: string[]): unknown {
  const found: string[] = [];
  const out = expand(raw, found);
  if (problems) problems.push(...found);
  else if (found.length) throw new ConfigError(DEFAULT_CONFIG_FILE, found);
  return out;
}

function expand(raw: unknown, problems: string[]): unknown {
  if (!isObj(raw) || !isObj(raw.sources)) return raw;
  const presetOf = new Map<string, Preset>();
  const sources: Obj = {};
  for (const [name, src] of Object.entries(raw.sources)) {
    sources[name] = src;
    if (!isObj(src) || src.preset === undefined) continue;
    const at = ['sources', name];
    if (typeof src.preset !== 'string' || !Object.hasOwn(PRESETS, src.preset)) {
      problems.push(`${formatPath([...at, 'preset'])}: unknown preset ${JSON.stringify(src.preset)} — use one of: ${list(Object.keys(PRESETS))}`);
      continue;
    }
    const preset = PRESETS[src.preset];
    presetOf.set(name, preset);
    const expanded = expandSource(preset, src, at, problems);
    if (expanded) sources[name] = expanded;
  }
  const entities = isObj(raw.entities) ? { ...raw.entities } : raw.entities;
  if (isObj(entities)) {
    for (const [name, e] of Object.entries(entities)) {
      if (!isObj(e) || !isObj(e.from) || !isObj(e.from.http) || e.from.http.endpoint === undefined) continue;
      const at = ['entities', name, 'from', 'http', 'endpoint'];
      const srcName = typeof e.source === 'string' ? e.source : undefined;
      const preset = srcName !== undefined ? presetOf.get(srcName) : undefined;
      if (!preset) {
        // An unknown preset was reported on the source already.
        const src = srcName !== undefined ? raw.sources[srcName] : undefined;
        if (!(isObj(src) && src.preset !== undefined)) {
          problems.push(`${formatPath(at)}: "endpoint" needs a source with a "preset", and source ${JSON.stringify(srcName ?? null)} has none — `
            + `give "path" (and pagination) instead, or add "preset": one of ${list(Object.keys(PRESETS))}`);
        }
        continue;
      }
      const { endpoint, ...given } = e.from.http;
      const ep = typeof endpoint === 'string' ? preset.endpoint(endpoint) : undefined;
      if (!ep) {
        const known = typeof preset.endpointNames === 'string' ? preset.endpointNames : `one of: ${list(preset.endpointNames)}`;
        problems.push(`${formatPath(at)}: unknown endpoint ${JSON.stringify(endpoint)} of preset "${preset.name}" — use ${known}`);
        continue;
      }
      const mapped = isObj(e.columns) ? new Set(Object.keys(e.columns)) : new Set<string>();
      const fields = ep.fields ? Object.fromEntries(Object.entries(ep.fields).filter(([c]) => !mapped.has(c))) : undefined;
      const defaults: Obj = { ...ep, ...(fields && Object.keys(fields).length ? { fields } : {}) };
      if (!fields || !Object.keys(fields).length) delete defaults.fields;
      entities[name] = { ...e, from: { ...e.from, http: under(defaults, given) } };
    }
  }
  return { ...raw, sources, ...(entities !== raw.entities ? { entities } : {}) };
}

function expandSource(preset: Preset, src: Obj, at: string[], problems: string[]): Obj | undefined {
  const optionKeys = Object.keys((preset.options as unknown as { shape: Obj }).shape);
  const given: Obj = {};
  const optionValues: Obj = {};
  for (const [k, v] of Object.entries(src)) {
    // An empty string is an unset "${VAR:-}": not given, so the preset's
    // default applies ("baseUrl": "${API_URL:-}" overrides only when set).
    if (v === '') continue;
    (optionKeys.includes(k) ? optionValues : given)[k] = v;
  }
  const parsed = preset.options.safeParse(optionValues);
  if (!parsed.success) {
    for (const issue of parsed.error.issues) problems.push(`${formatPath([...at, ...issue.path])}: ${issue.message}`);
    return undefined;
  }
  const defaults = preset.source(parsed.data as Obj, given);
  if ('problem' in defaults) {
    problems.push(`${formatPath(at)}: ${defaults.problem}`);
    return undefined;
  }
  return under(defaults as Obj, given);
}
