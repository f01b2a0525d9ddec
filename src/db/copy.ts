/** One record as a line of COPY text format (tab-separated, \N for null). */
export function copyLine(values: (string | number | null)[]): string {
  return `${values.map((v) => (v === null ? '\\N' : escaped(String(v)))).join('\t')}\n`;
}

// Most values need no escaping: testing first spares four copies of each.
const SPECIAL = /[\\\t\n\r]/;

function escaped(s: string): string {
  if (!SPECIAL.test(s)) return s;
  return s.replace(/\\/g, '\\\\').replace(/\t/g, '\\t').replace(/\n/g, '\\n').replace(/\r/g, '\\r');
}
