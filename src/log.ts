import { pino } from 'pino';

// Anything that may carry a credential is redacted wherever it appears in a
// log object: connection strings, auth blocks, headers (a configured header
// may be any name: X-Api-Key, X-Shop-Token …), tokens.
const REDACT_PATHS = [
  'password', '*.password', 'connectionString', '*.connectionString',
  'url', '*.url', '*.*.url', 'auth', '*.auth', '*.*.auth', 'headers', '*.headers', '*.*.headers',
  'token', '*.token',
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

/**
 * Replaces the password of any URL inside a message (postgres://user:pw@,
 * smtp://, https://), and the password, sslpassword and sslkey parameters of
 * a postgres URL.
 */
export function maskUrls(text: string): string {
  return text.replace(/(\b[a-z][a-z0-9+.-]*:\/\/[^:@/\s]*:)[^@\s]*@/gi, '$1***@')
    .replace(/\bpostgres(?:ql)?:\/\/\S+/gi, (url) => url.replace(/([?&](?:password|sslpassword|sslkey)=)[^&#\s]*/gi, '$1***'));
}
