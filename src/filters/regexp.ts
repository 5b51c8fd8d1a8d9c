/**
 * containerd compiles `~=` values with Go's regexp package (RE2 syntax). This module translates the RE2
 * dialect into an equivalent JavaScript RegExp (compiled with the `u` flag) so that patterns written for
 * containerd behave the same here:
 *
 *  - leading flag groups `(?i)`, `(?s)`, `(?m)` become RegExp flags; flag groups elsewhere and the `U` flag
 *    are rejected (Node 20 has no inline modifiers);
 *  - `.` does not match "\n" (and nothing else is excluded, unlike JavaScript's `.`), `\s` is RE2's
 *    `[\t\n\f\r ]`, `\A`/`\z` anchor the whole text, `\Q...\E` quotes, `\pL`/`\p{Greek}` map to Unicode
 *    property escapes, `[[:alpha:]]` POSIX classes expand to ASCII sets, `(?P<name>...)` becomes a group;
 *  - a `{` that does not start a valid repetition is a literal, as in RE2; escaped punctuation is literal;
 *  - constructs RE2 does not have (backreferences, lookaround) are rejected.
 */

export class RegexpSyntaxError extends Error {
  /** `expr` is the offending part of the pattern (the whole pattern when not given more precisely). */
  constructor(reason: string, expr: string) {
    super(`error parsing regexp: ${reason}: \`${expr}\``);
    this.name = 'RegexpSyntaxError';
  }
}

const SYNTAX_CHARS = new Set([...'^$\\.*+?()[]{}|/']);

const POSIX_CLASSES: Record<string, string> = {
  alnum: '0-9A-Za-z',
  alpha: 'A-Za-z',
  ascii: '\\x00-\\x7f',
  blank: '\\t ',
  cntrl: '\\x00-\\x1f\\x7f',
  digit: '0-9',
  graph: '!-~',
  lower: 'a-z',
  print: ' -~',
  punct: '!-\\/:-@\\[-`\\{-~',
  space: '\\t\\n\\v\\f\\r ',
  upper: 'A-Z',
  word: '0-9A-Za-z_',
  xdigit: '0-9A-Fa-f',
};

const GENERAL_CATEGORIES = new Set(
  'C Cc Cf Co Cs L Ll Lm Lo Lt Lu M Mc Me Mn N Nd Nl No P Pc Pd Pe Pf Pi Po Ps S Sc Sk Sm So Z Zl Zp Zs'.split(' '),
);

const PERL_SPACE = '\\t\\n\\f\\r ';
const MAX_REPEAT = 1000;

/** Compiles an RE2 pattern to a RegExp; throws RegexpSyntaxError when RE2 (or the translation) rejects it. */
export function compileRegexp(pattern: string): RegExp {
  const source = new Translator(pattern);
  const { body, flags } = source.translate();
  try {
    return new RegExp(body, flags);
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    throw new RegexpSyntaxError(msg.replace(/^Invalid regular expression: \/.*\/[a-z]*: /s, ''), pattern);
  }
}

class Translator {
  private i = 0;
  private out = '';
  private dotAll = false;

  constructor(private readonly p: string) {}

  translate(): { body: string; flags: string } {
    let flags = 'u';
    // Leading flag groups apply to the whole expression and can be expressed as RegExp flags.
    for (;;) {
      const m = /^\(\?([imsU]*)(?:-([imsU]*))?\)/.exec(this.p.slice(this.i));
      if (!m) break;
      const [whole, on = '', off] = m;
      if ((on === '' && off === undefined) || off === '') this.fail('missing argument to flag group');
      if (on.includes('U') || off?.includes('U')) this.fail('ungreedy flag (?U) is not supported');
      for (const f of on) if (!flags.includes(f)) flags += f;
      for (const f of off ?? '') flags = flags.replace(f, '');
      this.i += whole.length;
    }
    this.dotAll = flags.includes('s');
    flags = flags.replace('s', '');
    while (this.i < this.p.length) this.atom();
    return { body: this.out, flags };
  }

  private fail(reason: string, expr = this.p): never {
    throw new RegexpSyntaxError(reason, expr);
  }

  private cp(at = this.i): string {
    return String.fromCodePoint(this.p.codePointAt(at)!);
  }

  private atom(): void {
    const c = this.cp();
    switch (c) {
      case '\\':
        this.escape(false);
        return;
      case '[':
        this.charClass();
        return;
      case '(':
        this.group();
        return;
      case '.':
        this.out += this.dotAll ? '[\\s\\S]' : '[^\\n]';
        this.i++;
        return;
      case '{': {
        const m = /^\{(\d+)(?:(,)(\d*))?\}/.exec(this.p.slice(this.i));
        if (!m) {
          this.out += '\\{';
          this.i++;
          return;
        }
        const min = Number(m[1]);
        const max = m[3] ? Number(m[3]) : min;
        if (min > MAX_REPEAT || max > MAX_REPEAT || (m[3] && max < min)) this.fail(`invalid repeat count`);
        this.out += m[0];
        this.i += m[0].length;
        return;
      }
      case '}':
      case ']':
        this.out += '\\' + c;
        this.i++;
        return;
      default:
        this.out += c;
        this.i += c.length;
    }
  }

  private group(): void {
    const rest = this.p.slice(this.i);
    if (!rest.startsWith('(?')) {
      this.out += '(';
      this.i++;
      return;
    }
    if (rest.startsWith('(?:')) {
      this.out += '(?:';
      this.i += 3;
      return;
    }
    const named = /^\(\?P?<([^>]*)>/.exec(rest);
    if (named && !rest.startsWith('(?<=') && !rest.startsWith('(?<!')) {
      if (!/^[A-Za-z0-9_]+$/.test(named[1]!)) this.fail(`invalid named capture`);
      this.out += '('; // names do not matter for matching, and RE2 allows names JavaScript does not
      this.i += named[0].length;
      return;
    }
    if (/^\(\?[imsU-]*[:)]/.test(rest)) this.fail('flag groups are only supported at the start of the expression');
    this.fail('invalid or unsupported Perl syntax');
  }

  /** Handles the escape at this.i (a backslash); appends its translation. */
  private escape(inClass: boolean): void {
    const p = this.p;
    if (this.i + 1 >= p.length) this.fail('trailing backslash at end of expression');
    const e = this.cp(this.i + 1);
    const start = this.i;
    this.i += 1 + e.length;

    // Octal: \0 followed by up to two octal digits, or \1-\7 followed by one or two (a lone \1 would be
    // a backreference, which RE2 does not support).
    if (e >= '0' && e <= '7') {
      const m = /^[0-7]{1,2}/.exec(p.slice(this.i));
      if (e !== '0' && !m) this.fail('invalid escape sequence', p.slice(start, this.i));
      const digits = e + (m ? m[0] : '');
      this.i += digits.length - 1;
      this.codePoint(parseInt(digits, 8));
      return;
    }
    switch (e) {
      case 'x': {
        const m = /^(?:\{([0-9A-Fa-f]+)\}|([0-9A-Fa-f]{2}))/.exec(p.slice(this.i));
        if (!m) this.fail('invalid escape sequence', p.slice(start, this.i + 2));
        const v = parseInt(m[1] ?? m[2]!, 16);
        if (v > 0x10ffff) this.fail('invalid escape sequence');
        this.i += m[0].length;
        this.codePoint(v);
        return;
      }
      case 'a':
        this.out += '\\x07';
        return;
      case 'f':
      case 't':
      case 'n':
      case 'r':
      case 'v':
      case 'd':
      case 'D':
      case 'w':
      case 'W':
        this.out += '\\' + e;
        return;
      case 's':
        this.out += inClass ? PERL_SPACE : `[${PERL_SPACE}]`;
        return;
      case 'S':
        this.out += inClass ? '\\S' : `[^${PERL_SPACE}]`;
        return;
      case 'p':
      case 'P':
        this.unicodeClass(e === 'P');
        return;
    }
    if (!inClass) {
      switch (e) {
        case 'A':
          this.out += '(?<![\\s\\S])';
          return;
        case 'z':
          this.out += '(?![\\s\\S])';
          return;
        case 'b':
        case 'B':
          this.out += '\\' + e;
          return;
        case 'C':
          this.out += '[\\s\\S]';
          return;
        case 'Q': {
          const end = p.indexOf('\\E', this.i);
          const lit = end < 0 ? p.slice(this.i) : p.slice(this.i, end);
          for (const ch of lit) this.literal(ch, false);
          this.i = end < 0 ? p.length : end + 2;
          return;
        }
      }
    }
    if (e.length === 1 && e.charCodeAt(0) < 0x80 && !/[0-9A-Za-z]/.test(e)) {
      this.literal(e, inClass);
      return;
    }
    this.fail('invalid escape sequence', p.slice(start, this.i));
  }

  private unicodeClass(negated: boolean): void {
    const p = this.p;
    let name: string;
    if (p[this.i] === '{') {
      const end = p.indexOf('}', this.i);
      if (end < 0) this.fail('invalid character class range');
      name = p.slice(this.i + 1, end);
      this.i = end + 1;
    } else {
      if (this.i >= p.length) this.fail('invalid character class range');
      name = this.cp();
      this.i += name.length;
    }
    if (name.startsWith('^')) {
      negated = !negated;
      name = name.slice(1);
    }
    const isCategory = GENERAL_CATEGORIES.has(name) || name === 'Any';
    this.out += `\\${negated ? 'P' : 'p'}{${isCategory ? name : `Script=${name}`}}`;
  }

  private charClass(): void {
    const p = this.p;
    const classStart = this.i;
    this.out += '[';
    this.i++;
    if (p[this.i] === '^') {
      this.out += '^';
      this.i++;
    }
    let first = true;
    for (;;) {
      if (this.i >= p.length) this.fail('missing closing ]', p.slice(classStart));
      const c = this.cp();
      if (c === ']' && !first) {
        this.out += ']';
        this.i++;
        return;
      }
      first = false;
      if (c === '[' && p[this.i + 1] === ':') {
        const end = p.indexOf(':]', this.i + 2);
        if (end >= 0) {
          const name = p.slice(this.i + 2, end);
          const set = POSIX_CLASSES[name];
          if (set === undefined) this.fail('invalid character class range', `[:${name}:]`);
          this.out += set;
          this.i = end + 2;
          continue;
        }
      }
      if (c === '\\') {
        this.escape(true);
        continue;
      }
      if (c === '-') {
        this.out += '-';
      } else {
        this.literal(c, true);
      }
      this.i += c.length;
    }
  }

  private literal(ch: string, inClass: boolean): void {
    this.out += SYNTAX_CHARS.has(ch) || (inClass && ch === '-') ? '\\' + ch : ch;
  }

  private codePoint(v: number): void {
    this.out += `\\u{${v.toString(16)}}`;
  }
}
