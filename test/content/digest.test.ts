import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { Digester, digestOf, isValidDigest, parseDigest } from '../../src/content/index.js';
import { StrataError } from '../../src/core/errdefs.js';

const EMPTY_SHA256 = 'sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';

describe('digest', () => {
  it('parses the supported algorithms', () => {
    expect(parseDigest(EMPTY_SHA256)).toEqual({
      algorithm: 'sha256',
      hex: 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
    });
    for (const alg of ['sha384', 'sha512'] as const) {
      const d = digestOf('abc', alg);
      expect(d).toBe(`${alg}:${createHash(alg).update('abc').digest('hex')}`);
      expect(parseDigest(d).algorithm).toBe(alg);
      expect(isValidDigest(d)).toBe(true);
    }
  });

  it('rejects malformed digests with invalid argument', () => {
    const hex = EMPTY_SHA256.slice('sha256:'.length);
    const bad = [
      '',
      'sha256',
      'sha256:',
      ':' + hex,
      hex,
      'md5:d41d8cd98f00b204e9800998ecf8427e',
      'sha256:' + hex.toUpperCase(),
      'SHA256:' + hex,
      'sha256:' + hex.slice(1),
      'sha256:' + hex + '0',
      'sha256:' + hex.slice(1) + 'g',
      ' sha256:' + hex,
      'sha256:' + hex + '\n',
      'sha512:' + hex,
      'sha256::' + hex,
    ];
    for (const d of bad) {
      expect(isValidDigest(d), d).toBe(false);
      let err: unknown;
      try {
        parseDigest(d);
      } catch (e) {
        err = e;
      }
      expect(err, d).toBeInstanceOf(StrataError);
      expect((err as StrataError).kind).toBe('invalid argument');
      expect((err as StrataError).message).toBe(`invalid digest "${d}": invalid argument`);
    }
  });

  it('digestOf hashes strings as UTF-8 and defaults to sha256', () => {
    expect(digestOf('')).toBe(EMPTY_SHA256);
    expect(digestOf(new Uint8Array())).toBe(EMPTY_SHA256);
    expect(digestOf('héllo')).toBe(digestOf(Buffer.from('héllo', 'utf8')));
  });

  it('Digester.digest() is repeatable and does not end the hash', () => {
    const d = new Digester();
    expect(d.digest()).toBe(EMPTY_SHA256);
    d.update(Buffer.from('ab'));
    expect(d.digest()).toBe(digestOf('ab'));
    expect(d.digest()).toBe(digestOf('ab'));
    const c = d.clone();
    d.update(Buffer.from('c'));
    expect(d.digest()).toBe(digestOf('abc'));
    expect(c.digest()).toBe(digestOf('ab'));
    d.reset();
    expect(d.digest()).toBe(EMPTY_SHA256);
    const s512 = new Digester('sha512');
    s512.update(Buffer.from('abc'));
    expect(s512.digest()).toBe(digestOf('abc', 'sha512'));
  });
});
