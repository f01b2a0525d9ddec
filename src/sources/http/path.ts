/**
 * The value at a dotted path (`data.items`, `lines.0.sku`) in parsed JSON,
 * or undefined when any step is missing. A key containing a dot itself is
 * found too when it exists literally (`{"a.b": 1}` at "a.b").
 */
export function getPath(value: unknown, path: string | undefined): unknown {
  if (path === undefined || path === '') return value;
  if (isObject(value) && Object.hasOwn(value, path)) return value[path];
  let cur: unknown = value;
  for (const step of path.split('.')) {
    if (Array.isArray(cur) && /^\d+$/.test(step)) cur = cur[Number(step)];
    else if (isObject(cur) && Object.hasOwn(cur, step)) cur = cur[step];
    else return undefined;
  }
  return cur;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
