/**
 * Unquoting of quoted filter tokens, following Go's strconv.Unquote rules as extended by containerd so that
 * `/` and `|` (used to delimit regular expressions) behave like `"`. Escapes decode to bytes, the way Go
 * strings do, and the result is decoded as UTF-8 at the end (so `\xe7\x89\x9b` yields "牛"; bytes that do not
 * form valid UTF-8 become U+FFFD, where Go would keep them raw).
 */

export class QuoteSyntaxError extends Error {
  constructor() {
    super('quote syntax error');
    this.name = 'QuoteSyntaxError';
  }
}

const DOUBLE_LIKE = new Set(['"', '/', '|']);

export function unquote(s: string): string {
  if (s.length < 2) throw new QuoteSyntaxError();
  const quote = s[0]!;
  if (quote !== s[s.length - 1]) throw new QuoteSyntaxError();
  const body = s.slice(1, -1);

  if (quote === '`') {
    if (body.includes('`')) throw new QuoteSyntaxError();
    return body.replaceAll('\r', '');
  }
  if (quote !== "'" && !DOUBLE_LIKE.has(quote)) throw new QuoteSyntaxError();
  if (body.includes('\n')) throw new QuoteSyntaxError();

  if (!body.includes('\\') && !body.includes(quote)) {
    if (DOUBLE_LIKE.has(quote)) return body;
    // single quotes hold exactly one character
    const cp = body.codePointAt(0);
    if (cp !== undefined && String.fromCodePoint(cp).length === body.length) return body;
  }

  const bytes: number[] = [];
  let i = 0;
  while (i < body.length) {
    i = unquoteChar(body, i, quote, bytes);
    if (quote === "'" && i < body.length) throw new QuoteSyntaxError();
  }
  return Buffer.from(bytes).toString('utf8');
}

/** Decodes one (possibly escaped) character of s starting at i into out; returns the index after it. */
function unquoteChar(s: string, i: number, quote: string, out: number[]): number {
  const c = s[i]!;
  if (c === quote) throw new QuoteSyntaxError();
  if (c !== '\\') {
    const cp = s.codePointAt(i)!;
    pushUtf8(out, cp);
    return i + (cp > 0xffff ? 2 : 1);
  }
  if (i + 1 >= s.length) throw new QuoteSyntaxError();
  const e = s[i + 1]!;
  i += 2;
  const simple: Record<string, number> = { a: 7, b: 8, f: 12, n: 10, r: 13, t: 9, v: 11, '\\': 0x5c };
  if (e in simple) {
    out.push(simple[e]!);
    return i;
  }
  switch (e) {
    case 'x':
    case 'u':
    case 'U': {
      const n = e === 'x' ? 2 : e === 'u' ? 4 : 8;
      const digits = s.slice(i, i + n);
      if (digits.length < n || !/^[0-9a-fA-F]+$/.test(digits)) throw new QuoteSyntaxError();
      const v = parseInt(digits, 16);
      if (e === 'x') {
        out.push(v); // a single byte, possibly not valid UTF-8 on its own
      } else {
        if (v > 0x10ffff) throw new QuoteSyntaxError();
        pushUtf8(out, v);
      }
      return i + n;
    }
    case '0':
    case '1':
    case '2':
    case '3':
    case '4':
    case '5':
    case '6':
    case '7': {
      const digits = s.slice(i, i + 2);
      if (digits.length < 2 || !/^[0-7]{2}$/.test(digits)) throw new QuoteSyntaxError();
      const v = parseInt(e + digits, 8);
      if (v > 255) throw new QuoteSyntaxError();
      out.push(v);
      return i + 2;
    }
    case "'":
    case '"':
    case '|':
    case '/':
      if (e !== quote) throw new QuoteSyntaxError();
      out.push(e.charCodeAt(0));
      return i;
  }
  throw new QuoteSyntaxError();
}

function pushUtf8(out: number[], cp: number): void {
  // Surrogate code points are not encodable; Go's utf8.EncodeRune writes U+FFFD for them, and so does Buffer.
  for (const b of Buffer.from(String.fromCodePoint(cp), 'utf8')) out.push(b);
}
