import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import { fieldPaths, mapRecord, recordMapper, toText } from '../../src/sources/http/fields.js';
import { getPath } from '../../src/sources/http/path.js';
import { looksTruncated } from '../../src/sources/http/json.js';

const sale = {
  id: 'a1b2', total: 12.5, paid: true, deleted_at: null,
  customer: { id: 7, name: 'Ann' },
  lines: [{ sku: 'X', qty: 2 }, { sku: 'Y', qty: 1 }],
  'odd.key': 'literal',
};

describe('field mapping', () => {
  test('columns map by dotted path where configured and by their own name otherwise', () => {
    const row = mapRecord(sale, ['id', 'customer_id', 'customer_name', 'first_sku', 'total', 'paid', 'deleted_at', 'missing', 'lines', 'odd.key'],
      { customer_id: 'customer.id', customer_name: 'customer.name', first_sku: 'lines.0.sku' });
    expect(row).toEqual({
      id: 'a1b2', customer_id: '7', customer_name: 'Ann', first_sku: 'X', total: '12.5', paid: 'true',
      deleted_at: null, missing: null, lines: '[{"sku":"X","qty":2},{"sku":"Y","qty":1}]', 'odd.key': 'literal',
    });
  });

  test('a path through a scalar or past an array\'s end is null, not an error', () => {
    expect(getPath(sale, 'total.amount')).toBeUndefined();
    expect(getPath(sale, 'lines.5.sku')).toBeUndefined();
    expect(getPath(sale, 'lines.x')).toBeUndefined();
    expect(getPath({ a: { constructor: 1 } }, 'a.toString')).toBeUndefined(); // no prototype lookups
    expect(recordMapper(['x'], { x: 'total.amount' })(sale)).toEqual([null]);
  });

  test('fieldPaths lists the path each column reads', () => {
    expect(fieldPaths(['a', 'b'], { b: 'x.y' })).toEqual(['a', 'x.y']);
  });

  test('any JSON value survives as text: strings as they are, everything else as JSON', () => {
    fc.assert(fc.property(fc.jsonValue(), (v) => {
      const t = toText(v);
      if (v === null) expect(t).toBeNull();
      else if (typeof v === 'string') expect(t).toBe(v);
      else expect(JSON.parse(t!)).toEqual(JSON.parse(JSON.stringify(v)));
    }), { numRuns: 300 });
  });

  test('any record\'s nested values are found at their dotted paths', () => {
    const key = fc.stringMatching(/^[a-z_][a-z0-9_]{0,6}$/);
    fc.assert(fc.property(fc.dictionary(key, fc.dictionary(key, fc.oneof(fc.integer(), fc.string(), fc.boolean()), { minKeys: 1 }), { minKeys: 1 }), (rec) => {
      for (const [k, inner] of Object.entries(rec)) {
        for (const [k2, v] of Object.entries(inner)) expect(mapRecord(rec, ['c'], { c: `${k}.${k2}` }).c).toBe(String(v));
      }
    }), { numRuns: 200 });
  });
});

describe('truncated JSON', () => {
  test('every strict prefix of an object or array body is recognised as cut short', () => {
    fc.assert(fc.property(fc.oneof(fc.array(fc.jsonValue()), fc.dictionary(fc.string(), fc.jsonValue())), fc.nat(), (v, n) => {
      const text = JSON.stringify(v);
      const prefix = text.slice(0, n % text.length);
      expect(looksTruncated(prefix)).toBe(true);
    }), { numRuns: 500 });
  });

  test('complete documents and non-JSON answers are not mistaken for truncation', () => {
    expect(looksTruncated('{"a":"}{"}')).toBe(false);
    expect(looksTruncated('<html><body>Bad gateway</body></html>')).toBe(false);
    expect(looksTruncated('{"a":1}}')).toBe(false);
    expect(looksTruncated('{"a":"x\\"')).toBe(true);
    expect(looksTruncated('')).toBe(true);
  });
});
