/** The categories of sync.run_error.category that an HTTP failure can fall in. */
export type ErrorCategory = 'network' | 'rate_limit' | 'auth' | 'validation' | 'internal';

/**
 * A failure that may pass by itself (server error, reset, timeout, rate
 * limit) and outlasted the configured retries. The run can be retried later;
 * nothing the user wrote is wrong.
 */
export class TransientError extends Error {
  override name = 'TransientError';
  constructor(message: string, readonly category: ErrorCategory, readonly url: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

/**
 * A failure retrying cannot fix (bad token, unknown endpoint, malformed
 * request or response): stop the run and tell the user what to change.
 */
export class CriticalError extends Error {
  override name = 'CriticalError';
  constructor(message: string, readonly category: ErrorCategory, readonly url: string,
    readonly status?: number, options?: { cause?: unknown }) {
    super(message, options);
  }
}
