import { airtable } from './airtable.js';
import { directus } from './directus.js';
import { lightspeedX } from './lightspeed-x.js';
import type { Preset } from './types.js';

export type { Preset, PresetEndpoint } from './types.js';

/** Every preset by name; "preset": "<name>" on an http source picks one. */
export const PRESETS: Record<string, Preset> = {
  [lightspeedX.name]: lightspeedX as unknown as Preset,
  [airtable.name]: airtable as unknown as Preset,
  [directus.name]: directus as unknown as Preset,
};
