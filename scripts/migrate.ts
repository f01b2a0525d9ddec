// `npm run db:migrate`: graphile-worker schema + committed migrations on the
// database named by DATABASE_URL, or on the embedded server.
import { openDatabase, migrateDatabase } from '../src/db/database.js';
import { describeUrl } from '../src/db/pool.js';

const db = await openDatabase();
try {
  await migrateDatabase(db.url);
  console.log(`migrated ${describeUrl(db.url)}`);
} catch (err) {
  console.error(`migration failed: ${(err as Error).message}`);
  process.exitCode = 1;
} finally {
  await db.close();
}
