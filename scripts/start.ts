// `npm start`: the worker with the shipped (or your) syncline.config.json, on
// DATABASE_URL or the embedded PostgreSQL under .syncline/.
process.argv.splice(2, 0, 'worker');
await import('../src/cli/main.js');
