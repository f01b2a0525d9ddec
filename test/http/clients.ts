import { HttpClient, type HttpClientOptions } from '../../src/sources/http/client.js';
import { httpEntityOptions, httpSource, type HttpEntityOptions, type HttpSourceInput } from '../../src/sources/http/schema.js';
import { ENDPOINTS, type EndpointName } from './vendor.js';

// Fast retries keep fault-heavy tests within seconds. The request timeout is
// wide: on a loaded machine a healthy local request can take a good fraction
// of a second, and one that times out is retried, which adds a request the
// test did not expect. Tests of the 'timeout' fault set TIMEOUT_FAULT_MS.
export const FAST = { timeoutMs: 30_000, retries: { max: 4, baseMs: 1, maxMs: 5, rateLimited: 20 } } as const;

/**
 * The request timeout of a client that must see the vendor's 'timeout'
 * fault (a request never answered): each such fault costs this long, and a
 * healthy request on a loaded machine stays far below it.
 */
export const TIMEOUT_FAULT_MS = 2_000;

/** A client for the test vendor at baseUrl, with fast retries unless overridden. */
export function testClient(baseUrl: string, source: Partial<HttpSourceInput> = {}, opts: Partial<HttpClientOptions> = {}): HttpClient {
  const parsed = httpSource.parse({ kind: 'http', baseUrl, ...FAST, ...source });
  return new HttpClient(parsed, { name: 'shop', ...opts });
}

export function endpoint(name: EndpointName, extra: Record<string, unknown> = {}): HttpEntityOptions {
  return httpEntityOptions.parse({ ...ENDPOINTS[name], ...extra });
}
