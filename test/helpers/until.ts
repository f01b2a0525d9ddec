/**
 * Polls `fn` every 100 ms until it returns something truthy; fails after `ms`
 * naming what it waited for. The default is far beyond how long any event a
 * test waits for takes on a loaded machine, and below the tests' timeout.
 */
export async function until<T>(what: string, fn: () => Promise<T | null | undefined | false>, ms = 60_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
