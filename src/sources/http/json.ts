/**
 * True when a body that failed to parse stops in the middle of a value: an
 * open string, object or array, or nothing at all. That is what a cut
 * connection or a proxy timeout leaves, so it is worth another attempt; any
 * other syntax error is the server sending something that is not JSON.
 */
export function looksTruncated(text: string): boolean {
  if (text.trim() === '') return true;
  let depth = 0;
  let inString = false;
  let escaped = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (escaped) escaped = false;
      else if (c === 0x5c) escaped = true; // backslash
      else if (c === 0x22) inString = false; // quote
    } else if (c === 0x22) inString = true;
    else if (c === 0x7b || c === 0x5b) depth++; // { [
    else if (c === 0x7d || c === 0x5d) depth--; // } ]
  }
  if (inString || depth > 0) return true;
  // A literal cut short at the very end: `{"a": tru` is caught by depth, a
  // bare top-level `tru` or `1.` is not worth special casing.
  return /[,:]\s*$/.test(text);
}

export type ParsedBody = { ok: true; value: unknown } | { ok: false; truncated: boolean; error: Error };

export function parseJson(text: string): ParsedBody {
  try {
    return { ok: true, value: JSON.parse(text) };
  } catch (err) {
    return { ok: false, truncated: looksTruncated(text), error: err as Error };
  }
}
