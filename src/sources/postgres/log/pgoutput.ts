/**
 * A decoder of PostgreSQL's pgoutput protocol (version 1), the messages
 * `pg_logical_slot_peek_binary_changes(…, 'proto_version', '1', …)` returns.
 *
 * Values stay exactly as the source's output functions printed them: a
 * change is staged as COPY text into typed columns, so nothing is parsed
 * into JavaScript numbers or dates (which would lose a numeric's digits or
 * a timestamp's microseconds). That is also why we do not use the parser of
 * pg-logical-replication, which converts every value with pg's type parsers.
 */

/** A column value: its text form, null, or "unchanged" (a TOASTed value an update did not touch, which pgoutput leaves out). */
export type Value = string | null | typeof UNCHANGED;
export const UNCHANGED = Symbol('unchanged toast value');

export interface RelationColumn { name: string; key: boolean; typeOid: number; typmod: number }
export interface Relation { id: number; schema: string; table: string; replicaIdentity: string; columns: RelationColumn[] }

export type Message =
  | { tag: 'begin'; commitLsn: string; commitTime: Date; xid: number }
  | { tag: 'commit'; commitLsn: string; endLsn: string; commitTime: Date }
  | { tag: 'relation'; relation: Relation }
  | { tag: 'insert'; relation: number; values: Value[] }
  | { tag: 'update'; relation: number; old: Value[] | null; values: Value[] }
  | { tag: 'delete'; relation: number; old: Value[] }
  | { tag: 'truncate'; relations: number[]; cascade: boolean }
  | { tag: 'other'; type: string };

// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_US = 946_684_800_000_000n;

class Reader {
  private pos = 0;
  constructor(private buf: Buffer) {}
  u8(): number { return this.buf.readUInt8(this.pos++); }
  i16(): number { const v = this.buf.readInt16BE(this.pos); this.pos += 2; return v; }
  i32(): number { const v = this.buf.readInt32BE(this.pos); this.pos += 4; return v; }
  u64(): bigint { const v = this.buf.readBigUInt64BE(this.pos); this.pos += 8; return v; }
  lsn(): string { const v = this.u64(); return `${(v >> 32n).toString(16).toUpperCase()}/${(v & 0xffffffffn).toString(16).toUpperCase()}`; }
  time(): Date { return new Date(Number((this.buf.readBigInt64BE((this.pos += 8) - 8) + PG_EPOCH_US) / 1000n)); }
  str(): string {
    const end = this.buf.indexOf(0, this.pos);
    const s = this.buf.toString('utf8', this.pos, end);
    this.pos = end + 1;
    return s;
  }
  bytes(n: number): string { const s = this.buf.toString('utf8', this.pos, this.pos + n); this.pos += n; return s; }
}

function tuple(r: Reader): Value[] {
  const n = r.i16();
  const values: Value[] = new Array(n);
  for (let i = 0; i < n; i++) {
    const kind = String.fromCharCode(r.u8());
    if (kind === 'n') values[i] = null;
    else if (kind === 'u') values[i] = UNCHANGED;
    else if (kind === 't') values[i] = r.bytes(r.i32());
    else throw new Error(`pgoutput: a column value of kind "${kind}" (only text is asked for)`);
  }
  return values;
}

function relation(r: Reader): Relation {
  const id = r.i32();
  const schema = r.str();
  const table = r.str();
  const replicaIdentity = String.fromCharCode(r.u8());
  const n = r.i16();
  const columns: RelationColumn[] = [];
  for (let i = 0; i < n; i++) {
    const flags = r.u8();
    columns.push({ name: r.str(), key: (flags & 1) === 1, typeOid: r.i32(), typmod: r.i32() });
  }
  return { id, schema, table, replicaIdentity, columns };
}

/** One pgoutput message. */
export function decode(buf: Buffer): Message {
  const r = new Reader(buf);
  const type = String.fromCharCode(r.u8());
  switch (type) {
    case 'B': return { tag: 'begin', commitLsn: r.lsn(), commitTime: r.time(), xid: r.i32() };
    case 'C': r.u8(); return { tag: 'commit', commitLsn: r.lsn(), endLsn: r.lsn(), commitTime: r.time() };
    case 'R': return { tag: 'relation', relation: relation(r) };
    case 'I': { const rel = r.i32(); r.u8(); return { tag: 'insert', relation: rel, values: tuple(r) }; }
    case 'U': {
      const rel = r.i32();
      let sub = String.fromCharCode(r.u8());
      let old: Value[] | null = null;
      // 'K': the old key (the key changed), 'O': the whole old row (replica identity full).
      if (sub === 'K' || sub === 'O') { old = tuple(r); sub = String.fromCharCode(r.u8()); }
      return { tag: 'update', relation: rel, old, values: tuple(r) };
    }
    case 'D': { const rel = r.i32(); r.u8(); return { tag: 'delete', relation: rel, old: tuple(r) }; }
    case 'T': {
      const n = r.i32();
      const cascade = (r.u8() & 1) === 1;
      return { tag: 'truncate', cascade, relations: Array.from({ length: n }, () => r.i32()) };
    }
    default: return { tag: 'other', type };
  }
}

/** LSN text ("16/B374D848") as a number, for comparing. */
export function lsnValue(lsn: string): bigint {
  const [hi, lo] = lsn.split('/');
  return (BigInt(`0x${hi}`) << 32n) | BigInt(`0x${lo}`);
}
