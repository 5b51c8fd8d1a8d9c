/**
 * The distribution-source label rules of src/core/labels.ts against containerd's remotes/docker/handler.go:
 * the key's host drops the port, the value is a merged, de-duplicated, byte-sorted repository list, and a
 * push picks the mount source with the longest common path prefix (the last listed winning ties).
 */
import { describe, expect, it } from 'vitest';
import { appendDistributionSource, distributionSourceHost, distributionSourceKey, selectMountCandidate } from '../../src/core/labels.js';

describe('distribution-source labels', () => {
  it('keys by the registry host without its port', () => {
    expect(distributionSourceHost('127.0.0.1:5000')).toBe('127.0.0.1');
    expect(distributionSourceHost('[::1]:5000')).toBe('::1');
    expect(distributionSourceHost('localhost')).toBe('localhost');
    expect(distributionSourceKey('docker.io')).toBe('containerd.io/distribution.source.docker.io');
    expect(distributionSourceKey('registry.example.com:443')).toBe('containerd.io/distribution.source.registry.example.com');
  });

  it('merges repositories into a sorted list without duplicates or empty entries', () => {
    expect(appendDistributionSource(undefined, 'library/busybox')).toBe('library/busybox');
    expect(appendDistributionSource('team/zeta', 'alpha')).toBe('alpha,team/zeta');
    expect(appendDistributionSource('alpha,team/zeta', 'team/zeta')).toBe('alpha,team/zeta');
    expect(appendDistributionSource('b,,a,b', 'C')).toBe('C,a,b');
  });

  it('selects the mount source sharing the most leading path components, never the target itself', () => {
    const key = 'containerd.io/distribution.source.127.0.0.1';
    expect(selectMountCandidate({ [key]: 'org/team/a,org/x,other' }, '127.0.0.1:5000', 'org/team/b')).toBe('org/team/a');
    expect(selectMountCandidate({ [key]: 'a,b' }, '127.0.0.1:6000', 'c')).toBe('b');
    expect(selectMountCandidate({ [key]: 'org/app' }, '127.0.0.1:5000', 'org/app')).toBeUndefined();
    expect(selectMountCandidate({ [key]: 'org/app' }, 'registry.example.com', 'org/b')).toBeUndefined();
  });
});
