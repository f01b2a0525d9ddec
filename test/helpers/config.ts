import { ConfigError, parseConfig } from '../../src/config/load.js';

/** The problems parseConfig reports for `raw` (none when it is valid); any other error is thrown. */
export function configProblems(raw: unknown, env: NodeJS.ProcessEnv = {}): string[] {
  try {
    parseConfig(raw, env);
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  return [];
}
