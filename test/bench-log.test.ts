/**
 * The log phase of the bench (bench/log.ts) reports commit-to-target
 * latencies as nearest-rank percentiles: each is one of the measured values,
 * at least a share q of them lie at or below it, and fewer than q lie below it.
 */
import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { percentile } from '../bench/log.js';

describe('bench log latency percentiles', () => {
  it('picks the nearest-rank value: one of the samples, with a share q at or below it', () => {
    fc.assert(fc.property(
      fc.array(fc.double({ min: 0, max: 1e5, noNaN: true }), { minLength: 1, maxLength: 300 }),
      fc.double({ min: 0.01, max: 1, noNaN: true }),
      (xs, q) => {
        const sorted = [...xs].sort((a, b) => a - b);
        const p = percentile(sorted, q);
        expect(sorted).toContain(p);
        expect(sorted.filter((x) => x <= p).length).toBeGreaterThanOrEqual(Math.ceil(q * sorted.length));
        expect(sorted.filter((x) => x < p).length).toBeLessThan(Math.ceil(q * sorted.length));
      }));
  });

  it('gives the median of 1..100 as 50 and the p99 as 99', () => {
    const xs = Array.from({ length: 100 }, (_, i) => i + 1);
    expect([percentile(xs, 0.5), percentile(xs, 0.99), percentile(xs, 1)]).toEqual([50, 99, 100]);
  });
});
