import { HttpClient, type HttpClientOptions } from '../../src/sources/http/client.js';
import { httpEntityOptions, httpSource, type HttpEntityOptions, type HttpSourceInput } from '../../src/sources/http/schema.js';
import { ENDPOINTS, type EndpointName } from './vendor.js';

// Fast retries and short timeouts keep fault-heavy tests within seconds.
export const FAST = { timeoutMs: 250, retries: { max: 4, baseMs: 1, maxMs: 5, rateLimited: 20 } } as const;

/** A client for the test vendor at baseUrl, with fast retries unless overridden. */
export function testClient(baseUrl: string, source: Partial<HttpSourceInput> = {}, opts: Partial<HttpClientOptions> = {}): HttpClient {
  const parsed = httpSource.parse({ kind: 'http', baseUrl, ...FAST, ...source });
  return new HttpClient(parsed, { name: 'shop', ...opts });
}

export function endpoint(name: EndpointName, extra: Record<string, unknown> = {}): HttpEntityOptions {
  return httpEntityOptions.parse({ ...ENDPOINTS[name], ...extra });
}
