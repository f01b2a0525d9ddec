export const DEFAULT_CONFIG_FILE = 'syncline.config.json';

/** A config that cannot be used: the file and one "path: problem — fix" line a problem. */
export class ConfigError extends Error {
  constructor(readonly file: string, readonly problems: string[]) {
    super(`${file} is not valid:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
    this.name = 'ConfigError';
  }
}
