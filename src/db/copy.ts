/** One record as a line of COPY text format (tab-separated, \N for null). */
export function copyLine(values: (string | number | null)[]): string {
  return `${values.map((v) => (v === null ? '\\N' : String(v).replace(/\\/g, '\\\\').replace(/\t/g, '\\t')
    .replace(/\n/g, '\\n').replace(/\r/g, '\\r'))).join('\t')}\n`;
}
