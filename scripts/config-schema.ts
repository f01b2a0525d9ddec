// `npm run config:schema`: regenerates syncline.config.schema.json from the zod schema.
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { configJsonSchema, CONFIG_SCHEMA_FILE } from '../src/config/json-schema.js';
import { PROJECT_ROOT } from '../src/db/database.js';

const file = path.join(PROJECT_ROOT, CONFIG_SCHEMA_FILE);
writeFileSync(file, `${JSON.stringify(configJsonSchema(), null, 2)}\n`);
console.log(`wrote ${file}`);
