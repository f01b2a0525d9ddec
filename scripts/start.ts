// `npm start`: the worker with the shipped (or your) syncline.config.json, on
// DATABASE_URL or the embedded PostgreSQL under .syncline/. package.json
// starts this with `exec`, so the shell npm runs the script in becomes this
// process and the SIGTERM npm relays reaches the worker (a shell left in
// between dies of it and leaves the worker running, orphaned).
process.argv.splice(2, 0, 'worker');
await import('../src/cli/main.js');
