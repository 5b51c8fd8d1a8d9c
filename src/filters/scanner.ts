/**
 * Tokenizer for the filter syntax. Internal to src/filters (exported only so the tests can drive it).
 *
 * Behaviour follows containerd 1.6's filters scanner: a token is either one of the negative kinds below or,
 * for a character that starts no token, the character's code point itself. Positions are UTF-16 offsets into
 * the input (containerd uses UTF-8 byte offsets; the two agree for ASCII input).
 */

export const tokenEOF = -1;
export const tokenQuoted = -2;
export const tokenValue = -3;
export const tokenField = -4;
export const tokenSeparator = -5;
export const tokenOperator = -6;
export const tokenIllegal = -7;

export type Token = number;

export interface ScannedToken {
  pos: number;
  token: Token;
  text: string;
}

export class Scanner {
  readonly input: string;
  /** Start of the character most recently read. */
  pos = 0;
  /** End of the character most recently read (start of the next one). */
  ppos = 0;
  /** The first error met while scanning (sticky, as in containerd). */
  err = '';
  /** Set after an operator: the next run of characters is a value rather than a field. */
  private inValue = false;

  constructor(input: string) {
    this.input = input;
  }

  /** Reads one character; returns its code point, tokenEOF or tokenIllegal. */
  next(): number {
    if (this.pos >= this.input.length) return tokenEOF;
    this.pos = this.ppos;
    if (this.ppos >= this.input.length) return tokenEOF;
    const r = this.input.codePointAt(this.ppos)!;
    this.ppos += r > 0xffff ? 2 : 1;
    // Go decodes U+FFFD (and anything undecodable, here: lone surrogates) as utf8.RuneError.
    if (r === 0xfffd || (r >= 0xd800 && r <= 0xdfff)) {
      this.error('rune error');
      return tokenIllegal;
    }
    if (r === 0) {
      this.error('unexpected null');
      return tokenIllegal;
    }
    return r;
  }

  peek(): number {
    const { pos, ppos } = this;
    const ch = this.next();
    this.pos = pos;
    this.ppos = ppos;
    return ch;
  }

  scan(): ScannedToken {
    let ch = this.next();
    let pos = this.pos;
    for (;;) {
      if (ch === tokenEOF || ch === tokenIllegal) break;
      if (isQuoteRune(ch)) {
        const ok = this.scanQuoted(ch);
        return { pos, token: ok ? tokenQuoted : tokenIllegal, text: this.input.slice(pos, this.ppos) };
      }
      if (isSeparatorRune(ch)) {
        this.inValue = false;
        return { pos, token: tokenSeparator, text: this.input.slice(pos, this.ppos) };
      }
      if (isOperatorRune(ch)) {
        this.scanWhile(isOperatorRune);
        this.inValue = true;
        return { pos, token: tokenOperator, text: this.input.slice(pos, this.ppos) };
      }
      if (isSpace(ch)) {
        ch = this.next();
        pos = this.pos;
        continue;
      }
      if (this.inValue) {
        // Note: the first character of a value is not checked against isValueRune (containerd neither).
        this.scanWhile(isValueRune);
        this.inValue = false;
        return { pos, token: tokenValue, text: this.input.slice(pos, this.ppos) };
      }
      if (isFieldRune(ch)) {
        this.scanWhile(isFieldRune);
        return { pos, token: tokenField, text: this.input.slice(pos, this.ppos) };
      }
      break;
    }
    return { pos: this.pos, token: ch, text: '' };
  }

  private scanWhile(pred: (ch: number) => boolean): void {
    while (pred(this.peek())) this.next();
  }

  private scanQuoted(quote: number): boolean {
    let illegal = false;
    let ch = this.next();
    while (ch !== quote) {
      if (ch === 0x0a || ch < 0) {
        this.error('quoted literal not terminated');
        return false;
      }
      if (ch === 0x5c /* \ */) {
        const [after, legal] = this.scanEscape(quote);
        ch = after;
        if (!legal) illegal = true;
      } else {
        ch = this.next();
      }
    }
    return !illegal;
  }

  /** Called after a backslash; returns the character following the escape and whether it was legal. */
  private scanEscape(quote: number): [number, boolean] {
    const ch = this.next();
    switch (ch) {
      case 0x61: // a
      case 0x62: // b
      case 0x66: // f
      case 0x6e: // n
      case 0x72: // r
      case 0x74: // t
      case 0x76: // v
      case 0x5c: // \
      case quote:
        return [this.next(), true];
      case 0x78: // x
        return this.scanDigits(this.next(), 16, 2);
      case 0x75: // u
        return this.scanDigits(this.next(), 16, 4);
      case 0x55: // U
        return this.scanDigits(this.next(), 16, 8);
    }
    if (ch >= 0x30 && ch <= 0x37) return this.scanDigits(ch, 8, 3);
    this.error('illegal escape sequence');
    return [ch, false];
  }

  private scanDigits(ch: number, base: number, n: number): [number, boolean] {
    while (n > 0 && digitVal(ch) < base) {
      ch = this.next();
      n--;
    }
    if (n > 0) {
      this.error('illegal numeric escape sequence');
      return [ch, false];
    }
    return [ch, true];
  }

  private error(msg: string): void {
    if (this.err === '') this.err = msg;
  }
}

function digitVal(ch: number): number {
  if (ch >= 0x30 && ch <= 0x39) return ch - 0x30;
  if (ch >= 0x61 && ch <= 0x66) return ch - 0x61 + 10;
  if (ch >= 0x41 && ch <= 0x46) return ch - 0x41 + 10;
  return 16;
}

function isFieldRune(ch: number): boolean {
  return (
    ch === 0x5f || (ch >= 0x41 && ch <= 0x5a) || (ch >= 0x61 && ch <= 0x7a) || (ch >= 0x30 && ch <= 0x39)
  );
}

function isOperatorRune(ch: number): boolean {
  return ch === 0x3d /* = */ || ch === 0x21 /* ! */ || ch === 0x7e /* ~ */;
}

function isQuoteRune(ch: number): boolean {
  // Single quotes are deliberately absent: containerd does not treat ' as a quote character.
  return ch === 0x2f /* / */ || ch === 0x7c /* | */ || ch === 0x22 /* " */;
}

function isSeparatorRune(ch: number): boolean {
  return ch === 0x2c /* , */ || ch === 0x2e /* . */;
}

/** Go's unicode.IsSpace. */
export function isSpace(ch: number): boolean {
  if (ch < 0) return false;
  if (ch <= 0xff) {
    return ch === 0x20 || (ch >= 0x09 && ch <= 0x0d) || ch === 0x85 || ch === 0xa0;
  }
  return WHITE_SPACE.test(String.fromCodePoint(ch));
}

const WHITE_SPACE = /^\p{White_Space}$/u;
/** Go's IsLetter || IsDigit || IsNumber || IsGraphic || IsPunct collapses to the graphic categories. */
const GRAPHIC = /^[\p{L}\p{M}\p{N}\p{P}\p{S}\p{Zs}]$/u;

function isValueRune(ch: number): boolean {
  if (ch < 0 || ch === 0x2c || isSpace(ch)) return false;
  if (ch >= 0x21 && ch <= 0x7e) return true; // printable ASCII fast path
  return GRAPHIC.test(String.fromCodePoint(ch));
}
