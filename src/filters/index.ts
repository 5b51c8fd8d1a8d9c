/**
 * containerd's filter syntax, as used by `ctr ... ls <filter>` and by the List calls of the gRPC API.
 *
 * A filter string is a comma separated list of selectors, all of which must match (AND):
 *
 *     selectors := selector ("," selector)*
 *     selector  := fieldpath [operator value]
 *     fieldpath := field ("." field)*
 *     field     := [A-Za-z0-9_]+ | "double quoted"
 *     operator  := "==" | "!=" | "~="
 *     value     := [^\s,]+ | "double quoted" | /regexp/ | |regexp|     (the last two only after ~=)
 *
 * A selector without operator tests that the field is present. `!=` and `~=` also apply to absent fields
 * (whose value is ""), exactly as in containerd. A list of filter strings matches when any of them matches
 * (OR); an empty list matches everything. Quoted strings take Go escapes (\n, \t, \xff, \u1234, \", ...).
 *
 * Parse errors are StrataErrors of kind 'invalid argument' whose text is containerd's, e.g.
 * `filters: parse error: [name==foo >|,|< ]: expected field or quoted: invalid argument`.
 */
import { invalidArgument } from '../core/errdefs.js';
import { compileRegexp } from './regexp.js';
import { QuoteSyntaxError, unquote } from './quote.js';
import {
  Scanner,
  tokenEOF,
  tokenField,
  tokenIllegal,
  tokenOperator,
  tokenQuoted,
  tokenSeparator,
  tokenValue,
} from './scanner.js';

/** Maps a field path (e.g. ['labels', 'foo']) of some object to its value and whether it is present. */
export interface Adaptor {
  field(fieldpath: string[]): { value: string; present: boolean };
}

export interface Filter {
  match(a: Adaptor): boolean;
}

/** The filter that matches everything. */
export const always: Filter = Object.freeze({ match: () => true });

class AnyOf implements Filter {
  constructor(private readonly filters: readonly Filter[]) {}
  match(a: Adaptor): boolean {
    return this.filters.some((f) => f.match(a));
  }
}

class AllOf implements Filter {
  constructor(private readonly filters: readonly Filter[]) {}
  match(a: Adaptor): boolean {
    return this.filters.every((f) => f.match(a));
  }
}

type Operator = 'present' | '==' | '!=' | '~=';

class Selector implements Filter {
  constructor(
    readonly fieldpath: string[],
    readonly operator: Operator,
    readonly value: string,
    private readonly re?: RegExp,
  ) {}

  match(a: Adaptor): boolean {
    const { value, present } = a.field(this.fieldpath);
    switch (this.operator) {
      case 'present':
        return present;
      case '==':
        return present && value === this.value;
      case '!=':
        return value !== this.value;
      case '~=':
        return this.re!.test(value);
    }
  }
}

/**
 * Parses one filter string. The empty string matches everything.
 * @throws StrataError (invalid argument) on a syntax error or an invalid regular expression.
 */
export function parse(s: string): Filter {
  if (s === '') return always;
  try {
    return new Parser(s).selectors();
  } catch (e) {
    if (e instanceof ParseError) throw invalidArgument(`filters: ${e.message}`);
    throw e;
  }
}

/** Parses a list of filter strings into a filter matching when any of them matches; none → always. */
export function parseAll(filters: string[] | undefined): Filter {
  if (!filters || filters.length === 0) return always;
  const parsed = filters.map(parse);
  return parsed.length === 1 ? parsed[0]! : new AnyOf(parsed);
}

/** Builds an adaptor from a lookup function; `undefined` means the field is not present. */
export function adapt(fn: (fieldpath: string[]) => string | undefined): Adaptor {
  return {
    field(fieldpath: string[]) {
      const value = fn(fieldpath);
      return value === undefined ? { value: '', present: false } : { value, present: true };
    },
  };
}

/**
 * Resolves the part of a field path after `labels` against a label map: the components are joined with "."
 * (so `labels.a.b` and `labels."a.b"` both address the label "a.b"). Missing label → undefined.
 */
export function labelField(labels: Record<string, string> | undefined, rest: string[]): string | undefined {
  if (!labels) return undefined;
  const key = rest.join('.');
  return Object.hasOwn(labels, key) ? labels[key] : undefined;
}

class ParseError extends Error {
  constructor(input: string, pos: number, msg: string) {
    let where: string;
    if (pos < input.length) {
      const loc = String.fromCodePoint(input.codePointAt(pos)!);
      where = `${input.slice(0, pos)} >|${loc}|< ${input.slice(pos + loc.length)}`;
    } else {
      where = input;
    }
    super(`parse error: [${where}]: ${msg}`);
    this.name = 'ParseError';
  }
}

class Parser {
  private readonly scanner: Scanner;

  constructor(private readonly input: string) {
    this.scanner = new Scanner(input);
  }

  private error(pos: number, msg: string): ParseError {
    return new ParseError(this.input, pos, msg);
  }

  selectors(): Filter {
    const all: Filter[] = [this.selector()];
    for (;;) {
      const ch = this.scanner.peek();
      if (ch === tokenEOF) break;
      if (ch !== 0x2c /* , */) {
        const shown = ch === tokenIllegal ? '\ufffd' : String.fromCodePoint(ch);
        throw this.error(this.scanner.ppos, `unexpected input: ${shown}`);
      }
      const { pos, token } = this.scanner.scan();
      if (token !== tokenSeparator) throw this.error(pos, 'expected a separator');
      all.push(this.selector());
    }
    return new AllOf(all);
  }

  private selector(): Selector {
    const fieldpath = this.fieldpath();
    const ch = this.scanner.peek();
    if (ch === 0x2c || ch === tokenEOF) return new Selector(fieldpath, 'present', '');

    const op = this.operator();
    const { pos, value } = this.value(op === '~=');
    let re: RegExp | undefined;
    if (op === '~=') {
      // containerd compiles the expression when first matching and treats a bad one as "no match";
      // rejecting it up front gives the caller an invalid-argument error instead.
      try {
        re = compileRegexp(value);
      } catch (e) {
        throw this.error(pos, e instanceof Error ? e.message : String(e));
      }
    }
    return new Selector(fieldpath, op, value, re);
  }

  private fieldpath(): string[] {
    const fields = [this.field()];
    while (this.scanner.peek() === 0x2e /* . */) {
      const { pos, token } = this.scanner.scan();
      if (token !== tokenSeparator) throw this.error(pos, 'expected a field separator (`.`)');
      fields.push(this.field());
    }
    return fields;
  }

  private field(): string {
    const { pos, token, text } = this.scanner.scan();
    switch (token) {
      case tokenField:
        return text;
      case tokenQuoted:
        return this.unquote(pos, text, false);
      case tokenIllegal:
        throw this.error(pos, this.scanner.err);
    }
    throw this.error(pos, 'expected field or quoted');
  }

  private operator(): Operator {
    const { pos, token, text } = this.scanner.scan();
    switch (token) {
      case tokenOperator:
        if (text === '==' || text === '!=' || text === '~=') return text;
        throw this.error(pos, `unsupported operator ${JSON.stringify(text)}`);
      case tokenIllegal:
        throw this.error(pos, this.scanner.err);
    }
    throw this.error(pos, 'expected an operator ("=="|"!="|"~=")');
  }

  private value(allowAltQuotes: boolean): { pos: number; value: string } {
    const { pos, token, text } = this.scanner.scan();
    switch (token) {
      case tokenValue:
      case tokenField:
        return { pos, value: text };
      case tokenQuoted:
        return { pos, value: this.unquote(pos, text, allowAltQuotes) };
      case tokenIllegal:
        throw this.error(pos, this.scanner.err);
    }
    throw this.error(pos, 'expected value or quoted');
  }

  /** `/` and `|` quoting is only for regular expressions; fields and other values take double quotes. */
  private unquote(pos: number, text: string, allowAlts: boolean): string {
    if (!allowAlts && text[0] !== "'" && text[0] !== '"') throw this.error(pos, 'invalid quote encountered');
    try {
      return unquote(text);
    } catch (e) {
      if (e instanceof QuoteSyntaxError) throw this.error(pos, `unquoting failed: ${e.message}`);
      throw e;
    }
  }
}
