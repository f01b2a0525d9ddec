import type { z } from 'zod';
import type { HttpEntityInput, HttpSourceInput } from '../schema.js';

/**
 * What a preset fills in for one endpoint of its API: the entity's
 * `from.http` options. Anything the user writes beside `"endpoint"` wins.
 */
export type PresetEndpoint = Omit<HttpEntityInput, 'path'> & { path: string };

/**
 * A vendor API as configuration: the source defaults it implies and the
 * endpoints it knows. Presets hold no code paths of their own; every run
 * goes through the same http source with the options they expand to.
 */
export interface Preset<O extends Record<string, unknown> = Record<string, unknown>> {
  name: string;
  /** One line for messages and docs. */
  description: string;
  /**
   * The source-level options this preset reads (e.g. `domainPrefix`,
   * `registers`); they are removed from the source before validation.
   */
  options: z.ZodType<O>;
  /**
   * Source defaults computed from the options; `given` is what the user
   * wrote (so a preset can leave out what is already there). Returns the
   * defaults, or a problem (a sentence, without the JSON path).
   */
  source(options: O, given: Record<string, unknown>): Partial<HttpSourceInput> | { problem: string };
  /** The endpoint of that name, or undefined when the preset has none. */
  endpoint(name: string): PresetEndpoint | undefined;
  /** The endpoint names for messages, or a description when any name goes (a table name). */
  endpointNames: string[] | string;
}
