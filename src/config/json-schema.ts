import { z } from 'zod';
import { config } from './schema.js';

/** JSON Schema of the config file for editors, derived from the zod schema. */
export function configJsonSchema(): Record<string, unknown> {
  const schema = z.toJSONSchema(config, { io: 'input', unrepresentable: 'any' }) as Record<string, unknown>;
  return {
    ...schema,
    $id: 'https://syncline.dev/schema/syncline.config.json',
    title: 'Syncline configuration',
    description: 'Sources and entities of a Syncline deployment. Generated from src/config/schema.ts by `npm run config:schema`; do not edit by hand.',
  };
}

export const CONFIG_SCHEMA_FILE = 'syncline.config.schema.json';
