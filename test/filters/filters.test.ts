import { describe, it, expect } from 'vitest';
import { StrataError } from '../../src/core/errdefs.js';
import { adapt, always, labelField, parse, parseAll, type Adaptor, type Filter } from '../../src/filters/index.js';
import {
  Scanner,
  tokenEOF,
  tokenField,
  tokenIllegal,
  tokenOperator,
  tokenQuoted,
  tokenSeparator,
  tokenValue,
  type Token,
} from '../../src/filters/scanner.js';
import { compileRegexp } from '../../src/filters/regexp.js';
import { unquote } from '../../src/filters/quote.js';

function expectParseError(input: string, detail: string): void {
  let err: unknown;
  try {
    parse(input);
  } catch (e) {
    err = e;
  }
  expect(err, `parse(${JSON.stringify(input)}) should fail`).toBeInstanceOf(StrataError);
  const se = err as StrataError;
  expect(se.kind).toBe('invalid argument');
  expect(se.detail).toBe(detail);
  expect(se.message).toBe(`${detail}: invalid argument`);
}

function select<T>(filter: Filter, corpus: T[], adaptor: (o: T) => Adaptor): number[] {
  return corpus.flatMap((o, i) => (filter.match(adaptor(o)) ? [i] : []));
}

// ---------------------------------------------------------------------------------------------------------
// Port of containerd 1.6 filters/filter_test.go (TestFilters)
// ---------------------------------------------------------------------------------------------------------
describe('containerd TestFilters', () => {
  interface CEntry {
    name: string;
    other?: string;
    labels?: Record<string, string>;
  }
  const corpus: CEntry[] = [
    { name: 'foo', labels: { foo: 'true' } },
    { name: 'bar' },
    { name: 'foo', labels: { foo: 'present', 'more complex label': 'present' } },
    { name: 'bar', labels: { bar: 'true' } },
    { name: 'fooer', labels: { 'more complex label with \\ and "': 'present' } },
    { name: 'fooer', labels: { 'more complex label with \\ and ".post': 'present' } },
    { name: 'baz', other: 'too complex, yo' },
    { name: 'bazo', other: 'abc' },
    { name: 'compound', labels: { foo: 'omg_asdf.asdf-qwer' } },
  ];
  // Same shape as the adaptor of the Go test: fields are present when non-empty, labels joined by ".".
  const adaptor = (o: CEntry): Adaptor => ({
    field(fieldpath) {
      switch (fieldpath[0]) {
        case 'name':
          return { value: o.name, present: o.name.length > 0 };
        case 'other':
          return { value: o.other ?? '', present: (o.other ?? '').length > 0 };
        case 'labels': {
          const key = fieldpath.slice(1).join('.');
          const has = o.labels !== undefined && Object.hasOwn(o.labels, key);
          return { value: has ? o.labels![key]! : '', present: has };
        }
      }
      return { value: '', present: false };
    },
  });
  const all = corpus.map((_, i) => i);

  const cases: { name: string; input: string; expected?: number[]; errString?: string }[] = [
    { name: 'Empty', input: '', expected: all },
    { name: 'Present', input: 'name', expected: all },
    { name: 'LabelPresent', input: 'labels.foo', expected: [0, 2, 8] },
    { name: 'NameAndLabelPresent', input: 'labels.foo,name', expected: [0, 2, 8] },
    { name: 'LabelValue', input: 'labels.foo==true', expected: [0] },
    { name: 'LabelValuePunctuated', input: 'labels.foo==omg_asdf.asdf-qwer', expected: [8] },
    {
      name: 'LabelValueNoAltQuoting',
      input: 'labels.|foo|==omg_asdf.asdf-qwer',
      errString: 'filters: parse error: [labels. >|||< foo|==omg_asdf.asdf-qwer]: invalid quote encountered',
    },
    { name: 'Name', input: 'name==bar', expected: [1, 3] },
    { name: 'NameNotEqual', input: 'name!=bar', expected: [0, 2, 4, 5, 6, 7, 8] },
    { name: 'NameAndLabelPresent (2)', input: 'name==bar,labels.bar', expected: [3] },
    { name: 'QuotedValue', input: 'other=="too complex, yo"', expected: [6] },
    { name: 'RegexpValue', input: 'other~=[abc]+,name!=foo', expected: [6, 7] },
    { name: 'RegexpQuotedValue', input: 'other~=/[abc]+/,name!=foo', expected: [6, 7] },
    { name: 'RegexpQuotedValue (repeat)', input: 'other~=/[abc]{1,2}/,name!=foo', expected: [6, 7] },
    { name: 'RegexpQuotedValueGarbage', input: 'other~=/[abc]{0,1}"\\//,name!=foo', expected: [] },
    { name: 'NameAndLabelValue', input: 'name==bar,labels.bar==true', expected: [3] },
    { name: 'NameAndLabelValueNoMatch', input: 'name==bar,labels.bar==wrong', expected: [] },
    { name: 'LabelQuotedFieldPathPresent', input: 'name==foo,labels."more complex label"', expected: [2] },
    {
      name: 'LabelQuotedFieldPathPresentWithQuoted',
      input: 'labels."more complex label with \\\\ and \\""==present',
      expected: [4],
    },
    {
      name: 'LabelQuotedFieldPathPresentWithQuotedEmbed',
      input: 'labels."more complex label with \\\\ and \\"".post==present',
      expected: [5],
    },
    {
      name: 'LabelQuotedFieldPathPresentWithQuotedEmbedInvalid',
      input: 'labels.?"more complex label with \\\\ and \\"".post==present',
      errString:
        'filters: parse error: [labels. >|?|< "more complex label with \\\\ and \\"".post==present]: expected field or quoted',
    },
    {
      name: 'TrailingComma',
      input: 'name==foo,',
      errString: 'filters: parse error: [name==foo,]: expected field or quoted',
    },
    {
      name: 'TrailingFieldSeparator',
      input: 'labels.',
      errString: 'filters: parse error: [labels.]: expected field or quoted',
    },
    {
      name: 'MissingValue',
      input: 'image~=,id?=?fbaq',
      errString: 'filters: parse error: [image~= >|,|< id?=?fbaq]: expected value or quoted',
    },
    {
      name: 'FieldQuotedLiteralNotTerminated',
      input: 'labels.ns/key==value',
      errString: 'filters: parse error: [labels.ns >|/|< key==value]: quoted literal not terminated',
    },
    {
      name: 'ValueQuotedLiteralNotTerminated',
      input: 'labels.key==/value',
      errString: 'filters: parse error: [labels.key== >|/|< value]: quoted literal not terminated',
    },
  ];

  for (const tc of cases) {
    it(tc.name, () => {
      if (tc.errString !== undefined) {
        expectParseError(tc.input, tc.errString);
        return;
      }
      const filter = parse(tc.input);
      expect(select(filter, corpus, adaptor)).toEqual(tc.expected);
    });
  }
});

// ---------------------------------------------------------------------------------------------------------
// Port of containerd 1.6 filters/scanner_test.go (TestScanner). Positions are UTF-16 offsets here, so the
// two cases with "牛" (3 bytes in UTF-8, 1 code unit here) have shifted positions; all others are identical.
// ---------------------------------------------------------------------------------------------------------
describe('containerd TestScanner', () => {
  interface R {
    pos: number;
    token: Token;
    text?: string;
    err?: string;
  }
  const cases: { name: string; input: string; expected: R[] }[] = [
    {
      name: 'Field',
      input: 'name',
      expected: [
        { pos: 0, token: tokenField, text: 'name' },
        { pos: 4, token: tokenEOF },
      ],
    },
    {
      name: 'SelectorsWithOperators',
      input: 'name==value,foo!=bar',
      expected: [
        { pos: 0, token: tokenField, text: 'name' },
        { pos: 4, token: tokenOperator, text: '==' },
        { pos: 6, token: tokenValue, text: 'value' },
        { pos: 11, token: tokenSeparator, text: ',' },
        { pos: 12, token: tokenField, text: 'foo' },
        { pos: 15, token: tokenOperator, text: '!=' },
        { pos: 17, token: tokenValue, text: 'bar' },
        { pos: 20, token: tokenEOF },
      ],
    },
    {
      name: 'SelectorsWithFieldPaths',
      input: 'name==value,labels.foo=value,other.bar~=match',
      expected: [
        { pos: 0, token: tokenField, text: 'name' },
        { pos: 4, token: tokenOperator, text: '==' },
        { pos: 6, token: tokenValue, text: 'value' },
        { pos: 11, token: tokenSeparator, text: ',' },
        { pos: 12, token: tokenField, text: 'labels' },
        { pos: 18, token: tokenSeparator, text: '.' },
        { pos: 19, token: tokenField, text: 'foo' },
        { pos: 22, token: tokenOperator, text: '=' },
        { pos: 23, token: tokenValue, text: 'value' },
        { pos: 28, token: tokenSeparator, text: ',' },
        { pos: 29, token: tokenField, text: 'other' },
        { pos: 34, token: tokenSeparator, text: '.' },
        { pos: 35, token: tokenField, text: 'bar' },
        { pos: 38, token: tokenOperator, text: '~=' },
        { pos: 40, token: tokenValue, text: 'match' },
        { pos: 45, token: tokenEOF },
      ],
    },
    {
      name: 'RegexpValue',
      input: 'name~=[abc]+,foo=test',
      expected: [
        { pos: 0, token: tokenField, text: 'name' },
        { pos: 4, token: tokenOperator, text: '~=' },
        { pos: 6, token: tokenValue, text: '[abc]+' },
        { pos: 12, token: tokenSeparator, text: ',' },
        { pos: 13, token: tokenField, text: 'foo' },
        { pos: 16, token: tokenOperator, text: '=' },
        { pos: 17, token: tokenValue, text: 'test' },
        { pos: 21, token: tokenEOF },
      ],
    },
    {
      name: 'RegexpEscapedValue',
      input: 'name~=[abc]\\+,foo=test',
      expected: [
        { pos: 0, token: tokenField, text: 'name' },
        { pos: 4, token: tokenOperator, text: '~=' },
        { pos: 6, token: tokenValue, text: '[abc]\\+' },
        { pos: 13, token: tokenSeparator, text: ',' },
        { pos: 14, token: tokenField, text: 'foo' },
        { pos: 17, token: tokenOperator, text: '=' },
        { pos: 18, token: tokenValue, text: 'test' },
        { pos: 22, token: tokenEOF },
      ],
    },
    {
      name: 'RegexpQuotedValue',
      input: 'name~=/[abc]{0,2}/,foo=test',
      expected: [
        { pos: 0, token: tokenField, text: 'name' },
        { pos: 4, token: tokenOperator, text: '~=' },
        { pos: 6, token: tokenQuoted, text: '/[abc]{0,2}/' },
        { pos: 18, token: tokenSeparator, text: ',' },
        { pos: 19, token: tokenField, text: 'foo' },
        { pos: 22, token: tokenOperator, text: '=' },
        { pos: 23, token: tokenValue, text: 'test' },
        { pos: 27, token: tokenEOF },
      ],
    },
    {
      name: 'Cowsay',
      input: 'name~=牛,labels.moo=true',
      expected: [
        { pos: 0, token: tokenField, text: 'name' },
        { pos: 4, token: tokenOperator, text: '~=' },
        { pos: 6, token: tokenValue, text: '牛' },
        { pos: 7, token: tokenSeparator, text: ',' }, // Go: 9
        { pos: 8, token: tokenField, text: 'labels' }, // 10
        { pos: 14, token: tokenSeparator, text: '.' }, // 16
        { pos: 15, token: tokenField, text: 'moo' }, // 17
        { pos: 18, token: tokenOperator, text: '=' }, // 20
        { pos: 19, token: tokenValue, text: 'true' }, // 21
        { pos: 23, token: tokenEOF }, // 25
      ],
    },
    {
      name: 'CowsayRegexpQuoted',
      input: 'name~=|牛|,labels.moo=true',
      expected: [
        { pos: 0, token: tokenField, text: 'name' },
        { pos: 4, token: tokenOperator, text: '~=' },
        { pos: 6, token: tokenQuoted, text: '|牛|' },
        { pos: 9, token: tokenSeparator, text: ',' }, // Go: 11
        { pos: 10, token: tokenField, text: 'labels' }, // 12
        { pos: 16, token: tokenSeparator, text: '.' }, // 18
        { pos: 17, token: tokenField, text: 'moo' }, // 19
        { pos: 20, token: tokenOperator, text: '=' }, // 22
        { pos: 21, token: tokenValue, text: 'true' }, // 23
        { pos: 25, token: tokenEOF }, // 27
      ],
    },
    {
      name: 'Escapes',
      input: 'name~="asdf\\n\\tfooo"',
      expected: [
        { pos: 0, token: tokenField, text: 'name' },
        { pos: 4, token: tokenOperator, text: '~=' },
        { pos: 6, token: tokenQuoted, text: '"asdf\\n\\tfooo"' },
        { pos: 20, token: tokenEOF },
      ],
    },
    {
      name: 'NullInput',
      input: 'foo\x00bar',
      expected: [
        { pos: 0, token: tokenField, text: 'foo' },
        { pos: 3, token: tokenIllegal, err: 'unexpected null' },
        { pos: 4, token: tokenField, text: 'bar' },
        { pos: 7, token: tokenEOF },
      ],
    },
    {
      name: 'SpacesChomped',
      input: 'foo = bar    ',
      expected: [
        { pos: 0, token: tokenField, text: 'foo' },
        { pos: 4, token: tokenOperator, text: '=' },
        { pos: 6, token: tokenValue, text: 'bar' },
        { pos: 13, token: tokenEOF },
      ],
    },
    {
      name: 'ValuesPunctauted',
      input: 'compound.labels==punctuated_value.foo-bar',
      expected: [
        { pos: 0, token: tokenField, text: 'compound' },
        { pos: 8, token: tokenSeparator, text: '.' },
        { pos: 9, token: tokenField, text: 'labels' },
        { pos: 15, token: tokenOperator, text: '==' },
        { pos: 17, token: tokenValue, text: 'punctuated_value.foo-bar' },
        { pos: 41, token: tokenEOF },
      ],
    },
    {
      name: 'PartialInput',
      input: 'interrupted=',
      expected: [
        { pos: 0, token: tokenField, text: 'interrupted' },
        { pos: 11, token: tokenOperator, text: '=' },
        { pos: 12, token: tokenEOF },
      ],
    },
    {
      name: 'DoubleValue',
      input: 'doublevalue=value value',
      expected: [
        { pos: 0, token: tokenField, text: 'doublevalue' },
        { pos: 11, token: tokenOperator, text: '=' },
        { pos: 12, token: tokenValue, text: 'value' },
        { pos: 18, token: tokenField, text: 'value' },
        { pos: 23, token: tokenEOF },
      ],
    },
    {
      name: 'LeadingWithQuoted',
      input: '"leading quote".postquote==value',
      expected: [
        { pos: 0, token: tokenQuoted, text: '"leading quote"' },
        { pos: 15, token: tokenSeparator, text: '.' },
        { pos: 16, token: tokenField, text: 'postquote' },
        { pos: 25, token: tokenOperator, text: '==' },
        { pos: 27, token: tokenValue, text: 'value' },
        { pos: 32, token: tokenEOF },
      ],
    },
    {
      name: 'MissingValue',
      input: 'input==,id!=ff',
      expected: [
        { pos: 0, token: tokenField, text: 'input' },
        { pos: 5, token: tokenOperator, text: '==' },
        { pos: 7, token: tokenSeparator, text: ',' },
        { pos: 8, token: tokenField, text: 'id' },
        { pos: 10, token: tokenOperator, text: '!=' },
        { pos: 12, token: tokenValue, text: 'ff' },
        { pos: 14, token: tokenEOF },
      ],
    },
    {
      name: 'QuotedRegexp',
      input: 'input~=/foo\\/bar/,id!=ff',
      expected: [
        { pos: 0, token: tokenField, text: 'input' },
        { pos: 5, token: tokenOperator, text: '~=' },
        { pos: 7, token: tokenQuoted, text: '/foo\\/bar/' },
        { pos: 17, token: tokenSeparator, text: ',' },
        { pos: 18, token: tokenField, text: 'id' },
        { pos: 20, token: tokenOperator, text: '!=' },
        { pos: 22, token: tokenValue, text: 'ff' },
        { pos: 24, token: tokenEOF },
      ],
    },
    {
      name: 'QuotedRegexpAlt',
      input: 'input~=|foo/bar|,id!=ff',
      expected: [
        { pos: 0, token: tokenField, text: 'input' },
        { pos: 5, token: tokenOperator, text: '~=' },
        { pos: 7, token: tokenQuoted, text: '|foo/bar|' },
        { pos: 16, token: tokenSeparator, text: ',' },
        { pos: 17, token: tokenField, text: 'id' },
        { pos: 19, token: tokenOperator, text: '!=' },
        { pos: 21, token: tokenValue, text: 'ff' },
        { pos: 23, token: tokenEOF },
      ],
    },
    {
      name: 'IllegalQuoted',
      input: 'labels.containerd.io/key==value',
      expected: [
        { pos: 0, token: tokenField, text: 'labels' },
        { pos: 6, token: tokenSeparator, text: '.' },
        { pos: 7, token: tokenField, text: 'containerd' },
        { pos: 17, token: tokenSeparator, text: '.' },
        { pos: 18, token: tokenField, text: 'io' },
        { pos: 20, token: tokenIllegal, text: '/key==value', err: 'quoted literal not terminated' },
        { pos: 31, token: tokenEOF },
      ],
    },
    {
      name: 'IllegalQuotedWithNewLine',
      input: 'labels."containerd.io\nkey"==value',
      expected: [
        { pos: 0, token: tokenField, text: 'labels' },
        { pos: 6, token: tokenSeparator, text: '.' },
        { pos: 7, token: tokenIllegal, text: '"containerd.io\n', err: 'quoted literal not terminated' },
        { pos: 22, token: tokenField, text: 'key' },
        { pos: 25, token: tokenIllegal, text: '"==value', err: 'quoted literal not terminated' },
        { pos: 33, token: tokenEOF },
      ],
    },
    {
      name: 'IllegalEscapeSequence',
      input: 'labels."\\g"',
      expected: [
        { pos: 0, token: tokenField, text: 'labels' },
        { pos: 6, token: tokenSeparator, text: '.' },
        { pos: 7, token: tokenIllegal, text: '"\\g"', err: 'illegal escape sequence' },
        { pos: 11, token: tokenEOF },
      ],
    },
    {
      name: 'IllegalNumericEscapeSequence',
      input: 'labels."\\xaz"',
      expected: [
        { pos: 0, token: tokenField, text: 'labels' },
        { pos: 6, token: tokenSeparator, text: '.' },
        { pos: 7, token: tokenIllegal, text: '"\\xaz"', err: 'illegal numeric escape sequence' },
        { pos: 13, token: tokenEOF },
      ],
    },
  ];

  for (const tc of cases) {
    it(tc.name, () => {
      const sc = new Scanner(tc.input);
      const got: R[] = [];
      for (let i = 0; i < 100; i++) {
        const { pos, token, text } = sc.scan();
        const r: R = { pos, token };
        if (text !== '') r.text = text;
        if (token === tokenIllegal) r.err = sc.err;
        got.push(r);
        if (token === tokenEOF) break;
      }
      expect(got).toEqual(tc.expected);
      expect(sc.scan().token).toBe(tokenEOF); // all input consumed
    });
  }
});

// ---------------------------------------------------------------------------------------------------------
// Further parser behaviour, derived from containerd's parser.go
// ---------------------------------------------------------------------------------------------------------
describe('parse errors', () => {
  const cases: [string, string][] = [
    ['name=foo', '[name >|=|< foo]: unsupported operator "="'],
    ['name===foo', '[name >|=|< ==foo]: unsupported operator "==="'],
    ['name!', '[name >|!|< ]: unsupported operator "!"'],
    ['name?', '[name >|?|< ]: expected an operator ("=="|"!="|"~=")'],
    ['labels.foo bar', '[labels.foo  >|b|< ar]: expected an operator ("=="|"!="|"~=")'],
    ['name==', '[name==]: expected value or quoted'],
    ['name~=', '[name~=]: expected value or quoted'],
    ['name==.foo', '[name== >|.|< foo]: expected value or quoted'],
    [',name', '[ >|,|< name]: expected field or quoted'],
    ['name,', '[name,]: expected field or quoted'],
    ['labels.foo.', '[labels.foo.]: expected field or quoted'],
    ['   ', '[   ]: expected field or quoted'],
    ["labels.'foo'", "[labels. >|'|< foo']: expected field or quoted"],
    ['name==foo,牛', '[name==foo, >|牛|< ]: expected field or quoted'],
    // whitespace is skipped before tokens, but not where the parser only peeks (after a value)
    ['name==foo bar', '[name==foo >| |< bar]: unexpected input:  '],
    ['name==foo ', '[name==foo >| |< ]: unexpected input:  '],
    ['name==foo\x00', '[name==foo >|\x00|< ]: unexpected input: \ufffd'],
    ['name\x00', '[name >|\x00|< ]: unexpected null'],
    ['name==\ufffd', '[name== >|\ufffd|< ]: rune error'],
    // alternative quotes are for regular expressions only
    ['name==/foo/', '[name== >|/|< foo/]: invalid quote encountered'],
    ['name!=|foo|', '[name!= >|||< foo|]: invalid quote encountered'],
    ['name==x,|b|', '[name==x, >|||< b|]: invalid quote encountered'],
    ['"a"|b|', '["a" >|||< b|]: expected an operator ("=="|"!="|"~=")'],
    // quoted strings
    ['labels."foo', '[labels. >|"|< foo]: quoted literal not terminated'],
    ['labels."foo\nbar"', '[labels. >|"|< foo\nbar"]: quoted literal not terminated'],
    ['name~=/\\d+/', '[name~= >|/|< \\d+/]: illegal escape sequence'],
    ['name~=/a\\|b/', '[name~= >|/|< a\\|b/]: illegal escape sequence'],
    ["name==\"it\\'s\"", '[name== >|"|< it\\\'s"]: illegal escape sequence'],
    ['labels."\\777"', '[labels. >|"|< \\777"]: unquoting failed: quote syntax error'],
    ['labels."\\U00110000"', '[labels. >|"|< \\U00110000"]: unquoting failed: quote syntax error'],
    ['labels."\\u12"', '[labels. >|"|< \\u12"]: illegal numeric escape sequence'],
  ];
  for (const [input, msg] of cases) {
    it(JSON.stringify(input), () => expectParseError(input, `filters: parse error: ${msg}`));
  }

  it('rejects invalid regular expressions at parse time', () => {
    for (const input of ['name~=(', 'name~=[a', 'name~=/a)/', 'name~=a**', 'name~=\\1', 'name~=(?=a)']) {
      expect(() => parse(input), input).toThrow(StrataError);
    }
    expectParseError('name~=[a', 'filters: parse error: [name~= >|[|< a]: error parsing regexp: missing closing ]: `[a`');
    expect(() => parse('labels.x==1,name~=(')).toThrow(
      /^filters: parse error: \[labels\.x==1,name~= >\|\(\|< \]: error parsing regexp: .*: invalid argument$/,
    );
    expectParseError('name~=\\8', 'filters: parse error: [name~= >|\\|< 8]: error parsing regexp: invalid escape sequence: `\\8`');
  });

  it('parseAll wraps errors of any element', () => {
    expect(() => parseAll(['name==foo', 'name=='])).toThrow(
      'filters: parse error: [name==]: expected value or quoted: invalid argument',
    );
  });
});

describe('quoting', () => {
  const one = (fieldpath: string[], value: string) =>
    adapt((fp) => (fp.length === fieldpath.length && fp.every((f, i) => f === fieldpath[i]) ? value : undefined));

  it('accepts quoted field components anywhere in the path', () => {
    expect(parse('"leading quote".postquote==value').match(one(['leading quote', 'postquote'], 'value'))).toBe(true);
    expect(parse('labels."a"."b"==c').match(one(['labels', 'a', 'b'], 'c'))).toBe(true);
    expect(parse('labels."a.b"==c').match(one(['labels', 'a.b'], 'c'))).toBe(true);
    expect(parse('labels."a.b"==c').match(one(['labels', 'a', 'b'], 'c'))).toBe(false);
  });

  it('decodes Go escapes in quoted values', () => {
    const cases: [string, string][] = [
      ['"a\\x41"', 'aA'],
      ['"\\101\\102"', 'AB'],
      ['"\\u00e9"', 'é'],
      ['"\\U0001F600"', '😀'],
      ['"\\xc3\\xa9"', 'é'], // bytes, then UTF-8
      ['"tab\\there"', 'tab\there'],
      ['"\\a\\b\\f\\n\\r\\v\\\\\\""', '\x07\b\f\n\r\v\\"'],
      ['"with, comma and space"', 'with, comma and space'],
      ['""', ''],
    ];
    for (const [quoted, value] of cases) {
      expect(parse(`name==${quoted}`).match(one(['name'], value)), quoted).toBe(true);
    }
  });

  it('treats single quotes as ordinary value characters (as containerd does)', () => {
    expect(parse("name=='foo'").match(one(['name'], "'foo'"))).toBe(true);
    expect(parse("name=='foo'").match(one(['name'], 'foo'))).toBe(false);
  });

  it('keeps punctuation in unquoted values', () => {
    expect(parse('name==a=b').match(one(['name'], 'a=b'))).toBe(true);
    expect(parse('name==foo.bar-baz_1:2/3@sha256').match(one(['name'], 'foo.bar-baz_1:2/3@sha256'))).toBe(true);
    expect(parse('name==牛').match(one(['name'], '牛'))).toBe(true);
  });

  it('skips whitespace around fields and operators', () => {
    for (const input of ['name == foo', ' name==foo', 'name ==foo', 'name==foo, other', 'name== foo,other']) {
      expect(parse(input).match(adapt((fp) => (fp[0] === 'name' ? 'foo' : fp[0] === 'other' ? 'x' : undefined))), input).toBe(
        true,
      );
    }
  });

  it('unquote (containerd quote.go rules)', () => {
    expect(unquote('/a\\/b/')).toBe('a/b');
    expect(unquote('|a/b|')).toBe('a/b');
    expect(unquote('|a\\|b|')).toBe('a|b');
    expect(unquote("'x'")).toBe('x');
    expect(unquote('`raw\\n`')).toBe('raw\\n');
    for (const bad of ['"', '"a', 'a"', '"a"b"', "'ab'", '"\\z"', '"\\x4"', '"\\400"', '/a\\"/', '"\n"']) {
      expect(() => unquote(bad), bad).toThrow('quote syntax error');
    }
  });
});

// ---------------------------------------------------------------------------------------------------------
// Matching against label-carrying objects through adapt()/labelField()
// ---------------------------------------------------------------------------------------------------------
describe('matching', () => {
  interface Obj {
    name: string;
    other?: string;
    labels: Record<string, string>;
  }
  const corpus: Obj[] = [
    { name: 'foo', other: 'bar', labels: { 'foo.bar': 'x', empty: '' } },
    { name: 'bar', labels: { 'foo.bar': 'y' } },
    { name: 'baz', other: 'too complex, yo', labels: {} },
    { name: 'foo.bar', labels: { foo: 'x', 'with space': 'a b' } },
    { name: 'FOO', labels: { 'containerd.io/gc.ref.content': 'sha256:abc' } },
  ];
  const adaptor = (o: Obj) =>
    adapt((fp) => {
      if (fp.length === 0) return undefined;
      switch (fp[0]) {
        case 'name':
          return fp.length === 1 && o.name ? o.name : undefined;
        case 'other':
          return fp.length === 1 ? o.other : undefined;
        case 'labels':
          return labelField(o.labels, fp.slice(1));
      }
      return undefined;
    });
  const run = (filters: string | string[]) =>
    select(typeof filters === 'string' ? parse(filters) : parseAll(filters), corpus, adaptor);

  it('== and !=', () => {
    expect(run('name==foo')).toEqual([0]);
    expect(run('name!=foo')).toEqual([1, 2, 3, 4]);
    expect(run('other==bar')).toEqual([0]);
    expect(run('other!=bar')).toEqual([1, 2, 3, 4]); // absent fields compare as "" for !=
    expect(run('name==foo.bar')).toEqual([3]);
  });

  it('presence', () => {
    expect(run('name')).toEqual([0, 1, 2, 3, 4]);
    expect(run('other')).toEqual([0, 2]);
    expect(run('labels.empty')).toEqual([0]); // present even though empty
    expect(run('labels.foo')).toEqual([3]);
    expect(run('labels')).toEqual([]);
    expect(run('nosuchfield')).toEqual([]);
  });

  it('label paths join the remaining components with "."', () => {
    expect(run('labels.foo.bar')).toEqual([0, 1]);
    expect(run('labels."foo.bar"')).toEqual([0, 1]);
    expect(run('labels."foo".bar==x')).toEqual([0]);
    expect(run('labels.foo.bar==x')).toEqual([0]);
    expect(run('labels.foo.bar!=x')).toEqual([1, 2, 3, 4]);
    expect(run('labels."with space"=="a b"')).toEqual([3]);
    expect(run('labels."containerd.io/gc.ref.content"==sha256:abc')).toEqual([4]);
    expect(() => run('labels.containerd.io/gc.ref.content')).toThrow(/quoted literal not terminated/);
  });

  it('empty values', () => {
    expect(run('labels.empty==""')).toEqual([0]);
    expect(run('labels.empty!=""')).toEqual([]); // absent labels also read as ""
    expect(run('labels.empty~=^$')).toEqual([0, 1, 2, 3, 4]); // ~= tests absent fields against ""
  });

  it('~= regular expressions, bare and quoted', () => {
    expect(run('name~=^ba')).toEqual([1, 2]);
    expect(run('name~=/^ba/')).toEqual([1, 2]);
    expect(run('name~=|^ba|')).toEqual([1, 2]);
    expect(run('name~="^ba"')).toEqual([1, 2]);
    expect(run('name~=r$')).toEqual([1, 3]);
    expect(run('name~=o\\.b')).toEqual([3]); // unquoted: backslash reaches the regexp
    expect(run('name~="o\\\\.b"')).toEqual([3]); // double quoted: \\ unescapes to one backslash
    expect(run('name~=(?i)^foo$')).toEqual([0, 4]);
    expect(run('other~="complex, yo$"')).toEqual([2]);
    expect(run('other~=/[abc]{1,2}/,name!=foo')).toEqual([2]);
    expect(run('labels.foo.bar~=^[xy]$')).toEqual([0, 1]);
  });

  it('AND with commas', () => {
    expect(run('name==foo,other==bar')).toEqual([0]);
    expect(run('name==foo,other==baz')).toEqual([]);
    expect(run('labels.foo.bar,name!=bar')).toEqual([0]);
    expect(run('name~=^b,other')).toEqual([2]);
  });

  it('OR across the list', () => {
    expect(run(['name==bar', 'name==baz'])).toEqual([1, 2]);
    expect(run(['name==foo,other==bar', 'labels.foo'])).toEqual([0, 3]);
    expect(run(['name==nope'])).toEqual([]);
    expect(run([''])).toEqual([0, 1, 2, 3, 4]);
    expect(run(['name==nope', ''])).toEqual([0, 1, 2, 3, 4]);
    expect(run([])).toEqual([0, 1, 2, 3, 4]);
  });

  it('always, parse("") and parseAll(undefined) match everything', () => {
    const a = adapt(() => undefined);
    expect(always.match(a)).toBe(true);
    expect(parse('').match(a)).toBe(true);
    expect(parseAll(undefined).match(a)).toBe(true);
    expect(parseAll([]).match(a)).toBe(true);
  });

  it('labelField', () => {
    expect(labelField({ 'a.b': '1', a: '2', '': '3' }, ['a', 'b'])).toBe('1');
    expect(labelField({ 'a.b': '1', a: '2', '': '3' }, ['a'])).toBe('2');
    expect(labelField({ 'a.b': '1', a: '2', '': '3' }, [])).toBe('3');
    expect(labelField({ a: '' }, ['a'])).toBe('');
    expect(labelField({}, ['a'])).toBeUndefined();
    expect(labelField({}, ['constructor'])).toBeUndefined();
    expect(labelField({}, ['__proto__'])).toBeUndefined();
  });

  it('adapt maps undefined to not present', () => {
    const a = adapt((fp) => (fp[0] === 'x' ? '' : undefined));
    expect(a.field(['x'])).toEqual({ value: '', present: true });
    expect(a.field(['y'])).toEqual({ value: '', present: false });
  });
});

// ---------------------------------------------------------------------------------------------------------
// RE2 (Go regexp) dialect on top of JavaScript RegExp
// ---------------------------------------------------------------------------------------------------------
describe('regexp dialect', () => {
  const m = (re: string, s: string) => compileRegexp(re).test(s);

  it('flags', () => {
    expect(m('(?i)abc', 'xABCx')).toBe(true);
    expect(m('abc', 'ABC')).toBe(false);
    expect(m('(?s)a.b', 'a\nb')).toBe(true);
    expect(m('a.b', 'a\nb')).toBe(false);
    expect(m('a.b', 'a\rb')).toBe(true); // RE2's . only excludes \n
    expect(m('(?m)^b$', 'a\nb\nc')).toBe(true);
    expect(m('^b$', 'a\nb\nc')).toBe(false);
    expect(m('(?i)(?s)A.B', 'a\nb')).toBe(true);
    expect(() => compileRegexp('a(?i)b')).toThrow(/flag groups/);
    expect(() => compileRegexp('(?i:a)')).toThrow(/flag groups/);
    expect(() => compileRegexp('(?U)a+')).toThrow(/ungreedy/);
  });

  it('escapes and classes', () => {
    expect(m('^\\pL+$', 'héllo')).toBe(true);
    expect(m('^\\p{Greek}+$', 'αβγ')).toBe(true);
    expect(m('^\\PL+$', '123')).toBe(true);
    expect(m('^[\\p{Lu}]+$', 'ABC')).toBe(true);
    expect(m('^[[:digit:]]+$', '0123')).toBe(true);
    expect(m('^[[:alpha:]_]+$', 'a_b')).toBe(true);
    expect(m('^[^[:space:]]+$', 'a b')).toBe(false);
    expect(m('\\s', '\v')).toBe(false); // RE2 \s is [\t\n\f\r ]
    expect(m('\\s', '\t')).toBe(true);
    expect(m('^\\x41\\x{263a}\\101$', 'A☺A')).toBe(true);
    expect(m('\\Aab\\z', 'ab')).toBe(true);
    expect(m('\\Aab\\z', 'ab\n')).toBe(false);
    expect(m('^\\Q.*+\\E$', '.*+')).toBe(true);
    expect(m('^\\Q.*+\\E$', 'abc')).toBe(false);
    expect(m('^a\\-b\\,c\\:d\\/e$', 'a-b,c:d/e')).toBe(true);
    expect(m('^[a\\-z]+$', 'a-z')).toBe(true);
    expect(m('^[]a]+$', ']a')).toBe(true);
    expect(m('^a]$', 'a]')).toBe(true);
    expect(m('^(?P<word>ab)+$', 'abab')).toBe(true);
    expect(m('^(?:ab)+$', 'abab')).toBe(true);
  });

  it('braces', () => {
    expect(m('^a{2}$', 'aa')).toBe(true);
    expect(m('^a{2,}$', 'aaa')).toBe(true);
    expect(m('^a{1,2}$', 'aaa')).toBe(false);
    expect(m('^a{$', 'a{')).toBe(true);
    expect(m('^a{,2}$', 'a{,2}')).toBe(true);
    expect(m('^a}$', 'a}')).toBe(true);
    expect(() => compileRegexp('a{1001}')).toThrow(/invalid repeat count/);
    expect(() => compileRegexp('a{3,2}')).toThrow(/invalid repeat count/);
  });

  it('rejects what RE2 rejects', () => {
    for (const bad of ['(a)\\1', '(?=a)', '(?!a)', '(?<=a)b', '\\8', '\\g', '[\\b]', 'a\\', '[a', '(', ')', '*', 'a**', '[[:nope:]]', '(?P<a-b>x)']) {
      expect(() => compileRegexp(bad), bad).toThrow(/error parsing regexp/);
    }
  });
});
