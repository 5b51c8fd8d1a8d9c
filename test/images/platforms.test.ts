/**
 * Platforms: parsing and normalisation as containerd's platforms.Parse/Normalize, formatting, the host
 * default, and platforms.Only's matching and order of preference.
 */
import { describe, expect, it } from 'vitest';
import {
  allPlatforms,
  defaultPlatform,
  formatPlatform,
  normalizePlatform,
  parsePlatform,
  platformMatcher,
  platformMatcherStrict,
  platformOrder,
} from '../../src/images/platforms.js';
import type { Platform } from '../../src/core/descriptor.js';
import { kindOf } from '../helpers/errors.js';

const host = defaultPlatform();

describe('defaultPlatform', () => {
  it('maps the Node architecture to GOARCH', () => {
    const expected: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'arm', ia32: '386', s390x: 's390x' };
    expect(host.os).toBe('linux');
    if (expected[process.arch]) expect(host.architecture).toBe(expected[process.arch]);
    if (process.arch === 'arm64') expect(host.variant).toBe('v8');
    if (process.arch === 'x64') expect(host.variant).toBeUndefined();
  });
  it('is matched by its own matcher and by the parsed os', () => {
    expect(platformMatcher(host)(host)).toBe(true);
    expect(platformMatcher(parsePlatform('linux'))(host)).toBe(true);
  });
});

describe('parsePlatform', () => {
  const cases: [string, Platform][] = [
    ['linux/amd64', { os: 'linux', architecture: 'amd64' }],
    ['linux/x86_64', { os: 'linux', architecture: 'amd64' }],
    ['Linux/X86-64', { os: 'linux', architecture: 'amd64' }],
    ['linux/amd64/v1', { os: 'linux', architecture: 'amd64' }],
    ['linux/amd64/v3', { os: 'linux', architecture: 'amd64', variant: 'v3' }],
    ['linux/aarch64', { os: 'linux', architecture: 'arm64' }],
    ['linux/arm64', { os: 'linux', architecture: 'arm64' }],
    ['linux/arm64/v8', { os: 'linux', architecture: 'arm64', variant: 'v8' }],
    ['linux/aarch64/8', { os: 'linux', architecture: 'arm64', variant: 'v8' }],
    ['linux/arm', { os: 'linux', architecture: 'arm' }],
    ['linux/arm/7', { os: 'linux', architecture: 'arm', variant: 'v7' }],
    ['linux/arm/v6', { os: 'linux', architecture: 'arm', variant: 'v6' }],
    ['linux/armhf', { os: 'linux', architecture: 'arm' }],
    ['linux/armel', { os: 'linux', architecture: 'arm', variant: 'v6' }],
    ['linux/i386', { os: 'linux', architecture: '386' }],
    ['macos/arm64', { os: 'darwin', architecture: 'arm64' }],
    ['windows/amd64', { os: 'windows', architecture: 'amd64' }],
    ['amd64', { os: 'linux', architecture: 'amd64' }],
    ['aarch64', { os: 'linux', architecture: 'arm64' }],
    ['armhf', { os: 'linux', architecture: 'arm' }],
    ['linux/riscv64', { os: 'linux', architecture: 'riscv64' }],
  ];
  it.each(cases)('%s', (spec, expected) => {
    expect(parsePlatform(spec)).toEqual(expected);
  });

  it('a lone known os takes the host architecture', () => {
    const p = parsePlatform('linux');
    expect(p.os).toBe('linux');
    expect(p.architecture).toBe(host.architecture);
    expect(parsePlatform('windows').os).toBe('windows');
  });

  it.each(['', 'linux/', 'linux/*', 'linux amd64', 'linux/amd64/v8/x', 'notanos', 'a/b.c'])('rejects %j', async (spec) => {
    expect(await kindOf(Promise.resolve().then(() => parsePlatform(spec)))).toBe('invalid argument');
  });
});

describe('formatPlatform and normalizePlatform', () => {
  it('formats os/arch/variant and unknown without an os', () => {
    expect(formatPlatform({ os: 'linux', architecture: 'amd64' })).toBe('linux/amd64');
    expect(formatPlatform({ os: 'linux', architecture: 'arm', variant: 'v7' })).toBe('linux/arm/v7');
    expect(formatPlatform({ os: '', architecture: 'amd64' })).toBe('unknown');
  });
  it('round-trips through parse for the usual specifiers', () => {
    for (const s of ['linux/amd64', 'linux/arm64/v8', 'linux/arm/v6', 'windows/amd64', 'linux/s390x']) {
      expect(formatPlatform(parsePlatform(s))).toBe(s);
    }
  });
  it('normalises like containerd (arm64 v8 dropped, arm gets v7, os.version kept)', () => {
    expect(normalizePlatform({ os: 'linux', architecture: 'arm64', variant: 'v8' })).toEqual({ os: 'linux', architecture: 'arm64' });
    expect(normalizePlatform({ os: 'linux', architecture: 'arm' })).toEqual({ os: 'linux', architecture: 'arm', variant: 'v7' });
    expect(normalizePlatform({ os: 'Windows', architecture: 'AMD64', 'os.version': '10.0.17763' })).toEqual({
      os: 'windows',
      architecture: 'amd64',
      'os.version': '10.0.17763',
    });
    expect(normalizePlatform({ os: '', architecture: 'x86_64' }).os).toBe('linux');
  });
});

describe('platformMatcher (containerd platforms.Only)', () => {
  const P = (s: string) => parsePlatform(s);
  it('amd64 matches amd64 and 386, not arm64', () => {
    const m = platformMatcher(P('linux/amd64'));
    expect(m(P('linux/amd64'))).toBe(true);
    expect(m({ os: 'linux', architecture: 'x86_64' })).toBe(true);
    expect(m(P('linux/386'))).toBe(true);
    expect(m(P('linux/arm64'))).toBe(false);
    expect(m(P('windows/amd64'))).toBe(false);
    expect(m(P('linux/amd64/v2'))).toBe(false);
  });
  it('amd64/v3 accepts v3, v2, v1 and 386, best first', () => {
    const m = platformMatcher(P('linux/amd64/v3'));
    expect(m(P('linux/amd64/v2'))).toBe(true);
    expect(m(P('linux/amd64'))).toBe(true);
    expect(m(P('linux/amd64/v4'))).toBe(false);
    const list = ['linux/386', 'linux/amd64', 'linux/amd64/v3', 'linux/amd64/v2'].map(P);
    expect([...list].sort(m.compare).map(formatPlatform)).toEqual(['linux/amd64/v3', 'linux/amd64/v2', 'linux/amd64', 'linux/386']);
  });
  it('arm/v7 also matches v6 and v5, not v8', () => {
    const m = platformMatcher(P('linux/arm/v7'));
    for (const s of ['linux/arm/v7', 'linux/arm', 'linux/arm/v6', 'linux/arm/v5']) expect(m(P(s))).toBe(true);
    expect(m(P('linux/arm/v8'))).toBe(false);
    expect(m(P('linux/arm64'))).toBe(false);
    const m6 = platformMatcher(P('linux/arm/v6'));
    expect(m6(P('linux/arm/v7'))).toBe(false);
    expect(m6(P('linux/arm/v5'))).toBe(true);
  });
  it('arm64 matches arm64 (with or without v8) and 32-bit arm v8..v5', () => {
    const m = platformMatcher(P('linux/arm64'));
    expect(m(P('linux/arm64/v8'))).toBe(true);
    expect(m({ os: 'linux', architecture: 'aarch64' })).toBe(true);
    expect(m(P('linux/arm/v7'))).toBe(true);
    expect(m(P('linux/arm/v5'))).toBe(true);
    expect(m(P('linux/amd64'))).toBe(false);
    const order = platformOrder(P('linux/arm64/v8'));
    const list = ['linux/arm/v5', 'linux/amd64', 'linux/arm/v7', 'linux/arm64'].map(P);
    expect([...list].sort(order).map(formatPlatform)).toEqual(['linux/arm64', 'linux/arm/v7', 'linux/arm/v5', 'linux/amd64']);
  });
  it('strict matches only the platform itself', () => {
    const m = platformMatcherStrict(P('linux/amd64'));
    expect(m(P('linux/amd64'))).toBe(true);
    expect(m(P('linux/386'))).toBe(false);
  });
  it('allPlatforms matches everything with no preference', () => {
    expect(allPlatforms(P('windows/arm64'))).toBe(true);
    expect(allPlatforms.compare(P('linux/amd64'), P('linux/386'))).toBe(0);
  });
});
