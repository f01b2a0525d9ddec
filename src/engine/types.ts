/**
 * What the engine's parts share: a run's options and result, and what they
 * need of the engine (EngineContext, which Engine in run.ts implements).
 * Kept apart from run.ts so the parts run.ts calls never import it back.
 */
import type { Config, EntityConfig } from '../config/schema.js';
import type { Pool } from '../db/pool.js';
import type { Progress, SourceEnv } from '../sources/port.js';
import type { SourcePools } from '../sources/postgres/read.js';

export type { Progress } from '../sources/port.js';

export type Trigger = 'cron' | 'manual' | 'backfill' | 'resync' | 'dependency' | 'api';
export type RunStatus = 'succeeded' | 'partial' | 'failed' | 'cancelled' | 'skipped' | 'already-running';

export interface RunOptions {
  trigger: Trigger;
  dryRun?: boolean;
  full?: boolean;
  jobId?: string;
  /** Aborts the fetch (worker shutdown); the run ends cancelled. */
  signal?: AbortSignal;
  onProgress?: (p: Progress) => void;
  /** Called once the run has its sync.run row (before the fetch). */
  onStart?: (runId: number) => void;
  /** A backfill chunk: the half-open cursor range to read (no deletes; the cursor only moves forward). */
  window?: { from: string; to: string };
  /** The wave (sync.wave) this run belongs to. */
  waveId?: number;
  /** The worker (sync.worker.id) running it. */
  workerId?: string;
  /** Confirms the deletes the entity's latest run held (sync.confirm_deletes) before running. */
  confirmDeletes?: boolean;
  /** Only these records, by the key columns' values as text: a re-sync of gaps or quarantined records. */
  keys?: string[][];
  /**
   * Dry runs only: entities previewed in the same batch before this one. Their
   * target tables count as filled, so rows referencing them are not
   * quarantined for a missing parent that the real run would have inserted.
   */
  previewedParents?: string[];
}

export interface RunResult {
  entity: string;
  runId: number | null;
  status: RunStatus;
  fetched?: number;
  inserted?: number;
  updated?: number;
  deleted?: number;
  unchanged?: number;
  quarantined?: number;
  deferred?: number;
  /** Deletes the delete guard held for confirmation. */
  held?: number;
  /** Why deletes were held or skipped (a doubtful snapshot), and how to confirm. */
  note?: string | null;
  /** The run was another process's, joined rather than started again. */
  joined?: boolean;
  cursor?: string | null;
  sample?: { action: string; key: Record<string, unknown>; changed: string[] | null }[];
  error?: string;
  /** How long the run took by sync.run (finished_at - started_at); see withRunSeconds in summary.ts. */
  seconds?: number;
  /** Each run of an entity run more than once in a wave (a deferred-delete pass), in order. */
  passes?: RunResult[];
}

/** The engine as its parts use it: the Syncline database, the config, the sources, running an entity. */
export interface EngineContext extends SourceEnv {
  readonly pool: Pool;
  readonly syncUrl: string;
  config: Config;
  /** Where relative file paths in the config (csv sources) start. */
  readonly configDir: string;
  readonly sources: SourcePools;
  /** The pool and URL of a postgres source; a clear error for anything else. */
  pgSource(name: string): { pool: Pool; url: string };
  /** The entity as applied to sync.entity (the database is the source of truth for runs). */
  loadEntity(name: string): Promise<{ def: EntityConfig; cursor: string | null; enabled: boolean; dependsOn: string[]; verify: boolean }>;
  run(name: string, opts: RunOptions): Promise<RunResult>;
  close(): Promise<void>;
}
