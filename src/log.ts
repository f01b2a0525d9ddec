import { pino } from 'pino';

// Anything that may carry a credential is redacted wherever it appears in a
// log object: connection strings, auth blocks, headers.
const REDACT_PATHS = [
  'password', '*.password', 'connectionString', '*.connectionString',
  'url', '*.url', '*.*.url', 'auth', '*.auth', '*.*.auth', 'headers.authorization',
  '*.headers.authorization', 'token', '*.token',
];

// JSON lines for log collectors; readable lines for a person at a terminal.
const pretty = Boolean(process.stdout.isTTY) && process.env.SYNCLINE_LOG_FORMAT !== 'json';

export const log = pino({
  level: process.env.SYNCLINE_LOG_LEVEL ?? (process.env.NODE_ENV === 'test' ? 'silent' : 'info'),
  redact: { paths: REDACT_PATHS, censor: '[redacted]' },
  base: undefined,
  ...(pretty ? { transport: { target: 'pino-pretty', options: { translateTime: 'SYS:HH:MM:ss', ignore: 'component' } } } : {}),
// Synchronous writes: the CLI ends with process.exit, which must not drop the last lines.
}, pretty ? undefined : pino.destination({ dest: 1, sync: true }));

export type Logger = typeof log;

/** Replaces the password of any postgres:// URL inside a message. */
export function maskUrls(text: string): string {
  return text.replace(/(postgres(?:ql)?:\/\/[^:@/\s]*:)[^@\s]*@/gi, '$1***@');
}
