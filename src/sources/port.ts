/**
 * The port every source kind implements (src/sources/<kind>/), and what the
 * engine lends a source while it reads. The engine never asks which kind it
 * holds: it plans a run with the source, opens the run, has the source stage
 * its records, casts text staging, merges, and verifies with what the source
 * can do (a key-range read, say), asked for by name.
 *
 * Sources never import the engine: what they need of it comes in here.
 */
import type { Config, EntityConfig } from '../config/schema.js';
import type { Pool, PoolClient } from '../db/pool.js';

/** A run's progress, as a source reports it while staging and the engine after. */
export interface Progress {
  entity: string;
  runId: number;
  phase: 'fetch' | 'merge' | 'done';
  rows: number;
  bytes: number;
  /** Pages fetched (http sources). */
  pages?: number;
  /** Records expected in all, where the source says. */
  total?: number;
  /** A full read split into chunks (postgres "snapshot": {"chunks": N}): how many, how many are in. */
  chunks?: { total: number; done: number };
}

/** What a source may use of Syncline: its database, the config, where relative paths start. */
export interface SourceEnv {
  readonly pool: Pool;
  readonly syncUrl: string;
  readonly config: Config;
  /** Where relative file paths in the config start. */
  readonly configDir: string;
  /** The pool and URL of a postgres source, shared by every entity reading it. */
  pgSource(name: string): { pool: Pool; url: string };
  /** An entity as applied to sync.entity (a nested entity reads its parent's definition). */
  loadEntity(name: string): Promise<{ def: EntityConfig; cursor: string | null; enabled: boolean; dependsOn: string[]; verify: boolean }>;
}

/** What a run asks for (a subset of the engine's run options). */
export interface ReadOptions {
  dryRun?: boolean;
  full?: boolean;
  /** Only these records, by the key columns' values as text. */
  keys?: string[][];
  /** A backfill chunk: the half-open cursor range to read. */
  window?: { from: string; to: string };
  onProgress?: (p: Progress) => void;
}

/** A run being planned: the entity, its stored cursor, and the target's writable columns. */
export interface PlanInput {
  env: SourceEnv;
  name: string;
  def: EntityConfig;
  cursor: string | null;
  opts: ReadOptions;
  /** The target's columns a sync may write, in table order, with their types (an error when the table is missing). */
  targetColumns: () => Promise<{ attname: string; type: string }[]>;
}

/** An opened run, handed to the source to stage its records. */
export interface StageRun {
  env: SourceEnv;
  /** The connection holding the entity lock: stages into sync_staging, in its own transactions. */
  target: PoolClient;
  name: string;
  def: EntityConfig;
  runId: number;
  opts: ReadOptions;
  /**
   * The fetch phase: `fn` gets a signal that fires on sync.cancel and on
   * shutdown (the run then ends cancelled); its time goes into sync.run.phases.
   */
  fetchPhase: <T>(fn: (signal: AbortSignal) => Promise<T>) => Promise<T>;
}

/** What the engine does with staged records before and after the merge. */
export interface Staged {
  /** Text staging (sync_staging.run_<id>_raw) the engine types with sync.cast_raw; absent when staged typed. */
  cast?: { timeZone?: string; keepLast: boolean };
  /** After the cast, before the merge: the source's own checks of its snapshot. */
  beforeMerge?: () => Promise<void>;
  /** After the merge (clean-up of what the source kept for the run). */
  afterMerge?: () => Promise<void>;
}

/** A cursor range of the target a key-range read covers (target column, bounds as text, the column's type). */
export interface KeyRange {
  column: string;
  lo: string;
  hi: string;
  type: string;
}

/** Reads of the source by key range: what verification after an incremental run needs. */
export interface KeyRangeReads {
  /** The source's records in the range (all of them when null), counted on the source. */
  count(range: KeyRange | null): Promise<number>;
  /** COPY the key columns of the source's records in the range into `into` on the target connection. */
  copyKeys(range: KeyRange | null, target: PoolClient, into: string): Promise<void>;
}

/** How a checksum hashes rows: see rowHash in ./buckets.ts. */
export type HashKind = 'record' | 'text';

/**
 * A synced target column as the checksum diff takes it. Both sides take a
 * value as the TARGET type holds it (what a full fetch would leave in the
 * target), so equal hashes on both sides mean a full fetch would change
 * nothing there.
 */
export interface ChecksumColumn {
  /** The target column. */
  column: string;
  /** Its type, as format_type prints it on the target. */
  type: string;
  /** Its type's oid and typmod on the target (built-in types keep their oid on every server). */
  typeOid: number;
  typmod: number;
  /**
   * Compare as text on both sides: a type that is not built in (the source
   * may not have it), or a length-limited char or bit type (an explicit cast
   * to it truncates silently where COPY refuses the value).
   */
  asText: boolean;
}

/**
 * Buckets of the key hash: rows whose key hash, masked to its low `bits`
 * bits, is one of `buckets` (int8 values as decimal text).
 */
export interface BucketFilter {
  bits: number;
  buckets: string[];
}

/**
 * Reads of the source in ONE snapshot (a read-only repeatable-read
 * transaction held open until close()): every level of a checksum diff and
 * the fetch of the differing rows see the same data. All COPY into tables on
 * the target connection given to open(). Each call may throw (a cast the
 * source refuses, a lost connection): the caller falls back to a full fetch.
 */
export interface ChecksumSession {
  /** How this source hashes rows (what the source's server can compute); the target hashes the same way. */
  hash: HashKind;
  /**
   * COPY one row a bucket at `bits` bits, (bucket int8, n int8, s numeric):
   * the source's rows in the bucket and the sum of their row hashes, for the
   * rows within `within` (all when null) into `into` (columns bucket, n, s).
   * Returns the buckets copied.
   */
  copyBuckets(bits: number, within: BucketFilter | null, into: string): Promise<number>;
  /**
   * COPY the source's records of the buckets in `within`, as a full fetch
   * stages them (the run's target columns), into `into`. Returns the rows copied.
   */
  copyRows(within: BucketFilter, into: string, opts?: { signal?: AbortSignal; onRows?: (rows: number, bytes: number) => void }): Promise<number>;
  /**
   * COPY the key and hashes of the source's records in the buckets of
   * `within` into `into`, whose columns are the entity's key columns (text:
   * each key value as the target prints it), `_sl_h` int8 (the key hash) and
   * `_sl_r` int8 (the row hash): what lists the differing keys
   * (verification). Returns the rows.
   */
  copyRowHashes(within: BucketFilter, into: string): Promise<number>;
  /** Ends the snapshot. Always call it (also after an error). */
  close(): Promise<void>;
}

/** Capability: checksums of the source's records by key-hash bucket (the checksum diff, verification). */
export interface ChecksumReads {
  /**
   * Opens a snapshot of the entity's records (its tenant's; within `range`
   * of the cursor when given), printing `columns` (the run's target columns,
   * in order) as the target does. Throws when the source cannot be read so.
   */
  open(args: { target: PoolClient; columns: ChecksumColumn[]; range?: KeyRange | null;
    /** The run whose staging copyRows fills (lets a source split a read of everything across workers). */
    runId?: number }): Promise<ChecksumSession>;
  /** The planner's row estimate of the source (for the first level's size); undefined when unknown. */
  estimatedRows(): Promise<number | undefined>;
}

/** A planned run: its columns and what the source guarantees and can do. */
export interface PlannedRun {
  /** Target columns the run writes, and the source field or column feeding each (same order). */
  targetColumns: string[];
  sourceColumns: string[];
  /** The source cannot repeat a key (a unique index on a table source). */
  sourceKeyUnique: boolean;
  /** The run reads a whole listing whose records can be counted against the target after a full run. */
  countable: boolean;
  /** Stage the run's records. */
  stage(run: StageRun): Promise<Staged>;
  /** Capability: COPY the records, typed, straight into a table (the engine loads an empty target directly). */
  copyInto?: (run: StageRun, table: string) => Promise<number>;
  /** Capability: key-range reads (gap detection after incremental runs). */
  keyRange?: KeyRangeReads;
  /** Capability: checksums by key-hash bucket, in one snapshot (the checksum diff; verification). */
  checksums?: ChecksumReads;
  /** The run stages the changes since the last run (a log), not a snapshot: nothing to diff, nothing to load directly. */
  changesOnly?: boolean;
}

/** One source kind: a folder in src/sources and a line in the registry. */
export interface SourceKind {
  /** The columns the entity's source yields as a first run reads them; a count where the source names no columns (a file's header, an API's first record). */
  columns(env: SourceEnv, name: string, def: EntityConfig): Promise<string[] | number>;
  /** Whether the source itself is reachable, as a line for `check`; throws with a hint. Absent: checked through its entities. */
  check?(env: SourceEnv, source: string): Promise<string>;
  /** Whether a run can read just chosen keys (else a re-sync by key reads everything). */
  readsKeys(def: EntityConfig): boolean;
  plan(input: PlanInput): Promise<PlannedRun>;
  /**
   * Capability: whether a run would find anything to do, asked without
   * starting one (log capture polls its slot every second or so). Absent: always.
   * `watchOnly`: the entity will not run (it is disabled): only record what
   * the source says (a slot keeps WAL whether its entity runs or not).
   */
  pending?(env: SourceEnv, name: string, def: EntityConfig, opts?: { watchOnly?: boolean }): Promise<boolean>;
}
