import type { AlertingConfig } from '../config/schema.js';

// Secrets shorter than this are not searched for: replacing one or two
// characters everywhere would garble a message without hiding anything.
const MIN_SECRET_LENGTH = 3;

/**
 * The values of an alerting config that must never reach a log line, a
 * table or a job's last_error: the SMTP URL's password, the webhook URL's
 * credentials, path and query (a Slack-style URL is itself the token), and
 * every webhook header value.
 */
export function alertingSecrets(alerting: AlertingConfig | undefined): string[] {
  const out = new Set<string>();
  const add = (v: string | undefined | null) => {
    if (v && v.length >= MIN_SECRET_LENGTH) out.add(v);
  };
  const fromUrl = (raw: string, withPath: boolean) => {
    add(raw);
    try {
      const u = new URL(raw);
      add(u.password);
      add(safeDecode(u.password));
      if (withPath) {
        if (u.pathname.length > 1) add(u.pathname);
        add(u.search.slice(1));
      }
    } catch {
      // Not a URL: the whole string was added above.
    }
  };
  if (alerting?.email) fromUrl(alerting.email.smtp, false);
  if (alerting?.webhook) {
    fromUrl(alerting.webhook.url, true);
    for (const v of Object.values(alerting.webhook.headers ?? {})) add(v);
  }
  // Longest first, so a secret containing another is replaced whole.
  return [...out].sort((a, b) => b.length - a.length);
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

/**
 * Text fit for a log line or a table: known secrets replaced, and the
 * password of any URL of any scheme (smtp://user:pass@host) masked.
 */
export function scrub(text: string, secrets: readonly string[]): string {
  let out = text;
  for (const s of secrets) out = out.split(s).join('***');
  return out.replace(/([a-z][a-z0-9+.-]*:\/\/[^:@/\s]*:)[^@\s]*@/gi, '$1***@');
}

/** Scheme, host and port of a URL: what a message may say about where it sent. */
export function origin(url: string): string {
  try {
    return new URL(url).origin;
  } catch {
    return 'an unparseable URL';
  }
}
