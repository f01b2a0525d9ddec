/** Prints rows as an aligned text table, the way psql does. */
export function printTable(rows: Record<string, unknown>[], out: NodeJS.WritableStream = process.stdout): void {
  if (!rows.length) {
    out.write('(no rows)\n');
    return;
  }
  const cols = Object.keys(rows[0]);
  const cell = (v: unknown) => (v === null || v === undefined ? '' : typeof v === 'object' ? JSON.stringify(v) : String(v));
  const width = cols.map((c) => Math.max(c.length, ...rows.map((r) => cell(r[c]).length)));
  const line = (vals: string[]) => vals.map((v, i) => v.padEnd(width[i])).join(' │ ').trimEnd();
  out.write(`${line(cols)}\n${width.map((w) => '─'.repeat(w)).join('─┼─')}\n`);
  for (const r of rows) out.write(`${line(cols.map((c) => cell(r[c])))}\n`);
  out.write(`(${rows.length} row${rows.length === 1 ? '' : 's'})\n`);
}
