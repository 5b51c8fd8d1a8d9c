/**
 * Reference parsing and normalization (containerd's reference/docker rules), and the small host helpers.
 */
import { describe, expect, it } from 'vitest';
import { StrataError } from '../../src/core/errdefs.js';
import {
  apiHost,
  familiarName,
  isLocalhost,
  isValidDigest,
  normalizeReference,
  parseReference,
} from '../../src/remotes/reference.js';

const D = 'sha256:' + 'a'.repeat(64);
const D512 = 'sha512:' + 'b'.repeat(128);

describe('parseReference', () => {
  const valid: Array<[string, { host: string; repository: string; tag?: string; digest?: string; name: string }]> = [
    ['busybox', { host: 'docker.io', repository: 'library/busybox', tag: 'latest', name: 'docker.io/library/busybox:latest' }],
    ['busybox:1.36', { host: 'docker.io', repository: 'library/busybox', tag: '1.36', name: 'docker.io/library/busybox:1.36' }],
    ['library/busybox', { host: 'docker.io', repository: 'library/busybox', tag: 'latest', name: 'docker.io/library/busybox:latest' }],
    ['docker.io/busybox', { host: 'docker.io', repository: 'library/busybox', tag: 'latest', name: 'docker.io/library/busybox:latest' }],
    ['index.docker.io/library/busybox:1', { host: 'docker.io', repository: 'library/busybox', tag: '1', name: 'docker.io/library/busybox:1' }],
    ['foo/bar', { host: 'docker.io', repository: 'foo/bar', tag: 'latest', name: 'docker.io/foo/bar:latest' }],
    ['foo/bar/baz:v1', { host: 'docker.io', repository: 'foo/bar/baz', tag: 'v1', name: 'docker.io/foo/bar/baz:v1' }],
    ['127.0.0.1:5000/busybox:latest', { host: '127.0.0.1:5000', repository: 'busybox', tag: 'latest', name: '127.0.0.1:5000/busybox:latest' }],
    ['127.0.0.1:5000/busybox', { host: '127.0.0.1:5000', repository: 'busybox', tag: 'latest', name: '127.0.0.1:5000/busybox:latest' }],
    ['localhost/foo', { host: 'localhost', repository: 'foo', tag: 'latest', name: 'localhost/foo:latest' }],
    ['localhost:5000/a/b/c:v1.2-rc_3', { host: 'localhost:5000', repository: 'a/b/c', tag: 'v1.2-rc_3', name: 'localhost:5000/a/b/c:v1.2-rc_3' }],
    ['ghcr.io/a/b@' + D, { host: 'ghcr.io', repository: 'a/b', digest: D, name: 'ghcr.io/a/b@' + D }],
    ['host.example.com/a/b@' + D512, { host: 'host.example.com', repository: 'a/b', digest: D512, name: 'host.example.com/a/b@' + D512 }],
    // Tag and digest: both parsed, the name keeps only the digest (ParseDockerRef).
    ['quay.io/x/y:v3@' + D, { host: 'quay.io', repository: 'x/y', tag: 'v3', digest: D, name: 'quay.io/x/y@' + D }],
    ['busybox:1@' + D, { host: 'docker.io', repository: 'library/busybox', tag: '1', digest: D, name: 'docker.io/library/busybox@' + D }],
    // "foo:5000" has no '/': a repository with tag 5000, not a host.
    ['foo:5000', { host: 'docker.io', repository: 'library/foo', tag: '5000', name: 'docker.io/library/foo:5000' }],
    ['example.com:8080/x', { host: 'example.com:8080', repository: 'x', tag: 'latest', name: 'example.com:8080/x:latest' }],
    // Domains may carry uppercase; repositories may not.
    ['Example.com/foo', { host: 'Example.com', repository: 'foo', tag: 'latest', name: 'Example.com/foo:latest' }],
    ['a/b__c/d-e.f_g', { host: 'docker.io', repository: 'a/b__c/d-e.f_g', tag: 'latest', name: 'docker.io/a/b__c/d-e.f_g:latest' }],
    ['a/b---c', { host: 'docker.io', repository: 'a/b---c', tag: 'latest', name: 'docker.io/a/b---c:latest' }],
  ];

  it.each(valid)('%s', (ref, want) => {
    const got = parseReference(ref);
    expect(got).toEqual(want);
    expect(normalizeReference(ref)).toBe(want.name);
    // Normalizing is idempotent.
    expect(parseReference(got.name).name).toBe(want.name);
  });

  const invalid: Array<[string, RegExp]> = [
    ['', /at least one component/],
    ['Busybox', /must be lowercase/],
    ['foo/Bar', /must be lowercase/],
    ['127.0.0.1:5000/Foo:latest', /must be lowercase/],
    ['a:b:c', /invalid reference format/],
    ['foo//bar', /invalid reference format/],
    ['-foo', /invalid reference format/],
    ['foo_/bar', /invalid reference format/],
    ['foo:', /invalid reference format/],
    ['foo@', /invalid reference format/],
    ['foo:-bad', /invalid reference format/],
    ['foo@sha256:abc', /invalid reference format/],
    ['foo@sha256:' + 'A'.repeat(64), /invalid digest/],
    ['foo@md5:' + 'a'.repeat(32), /invalid digest/],
    ['foo@sha256:' + 'a'.repeat(63), /invalid digest/],
    ['a'.repeat(64), /64-byte hexadecimal/],
    ['foo:' + 'a'.repeat(129), /invalid reference format/],
    ['x.io/' + 'a'.repeat(260), /not be more than 255/],
    ['foo bar', /invalid reference format/],
  ];

  it.each(invalid)('rejects %j', (ref, msg) => {
    let err: unknown;
    try {
      parseReference(ref);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(StrataError);
    expect((err as StrataError).kind).toBe('invalid argument');
    expect((err as StrataError).message).toMatch(msg);
  });
});

describe('reference helpers', () => {
  it('familiarName shortens docker.io names only', () => {
    expect(familiarName('docker.io/library/busybox:latest')).toBe('busybox:latest');
    expect(familiarName('busybox@' + D)).toBe('busybox@' + D);
    expect(familiarName('docker.io/foo/bar:1')).toBe('foo/bar:1');
    expect(familiarName('docker.io/library/a/b:1')).toBe('library/a/b:1');
    expect(familiarName('127.0.0.1:5000/busybox')).toBe('127.0.0.1:5000/busybox:latest');
  });

  it('apiHost maps docker.io to registry-1.docker.io', () => {
    expect(apiHost('docker.io')).toBe('registry-1.docker.io');
    expect(apiHost('ghcr.io')).toBe('ghcr.io');
    expect(apiHost('127.0.0.1:5000')).toBe('127.0.0.1:5000');
  });

  it('isLocalhost knows loopback hosts with and without ports', () => {
    for (const h of ['localhost', 'localhost:5000', '127.0.0.1', '127.0.0.1:5000', '127.1.2.3:80', '::1', '[::1]:5000']) {
      expect(isLocalhost(h), h).toBe(true);
    }
    for (const h of ['docker.io', '10.0.0.1:5000', '128.0.0.1', 'localhost.example.com', '127.0.0.256', '[::2]:5000', 'my-localhost']) {
      expect(isLocalhost(h), h).toBe(false);
    }
  });

  it('isValidDigest accepts sha256/384/512 lowercase hex of the right length', () => {
    expect(isValidDigest(D)).toBe(true);
    expect(isValidDigest('sha384:' + 'c'.repeat(96))).toBe(true);
    expect(isValidDigest(D512)).toBe(true);
    expect(isValidDigest('sha256:' + 'a'.repeat(63))).toBe(false);
    expect(isValidDigest('sha256:' + 'g'.repeat(64))).toBe(false);
    expect(isValidDigest('SHA256:' + 'a'.repeat(64))).toBe(false);
    expect(isValidDigest('a'.repeat(64))).toBe(false);
  });
});
