/**
 * Manifest helpers: typed parsing with shape checks, media type predicates, children, chain IDs against an
 * independently computed vector, containerd's gc.ref label keys, manifest resolution for a platform, and the one
 * manifest selection every caller shares.
 */
import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  chainID,
  chainIDs,
  childGCLabel,
  children,
  gcRefLabels,
  isConfigType,
  isIndexType,
  isLayerType,
  isManifestType,
  matchingManifests,
  parseConfig,
  parseIndex,
  parseManifest,
  resolveManifest,
  selectManifests,
} from '../../src/images/manifest.js';
import { requiredDescriptors } from '../../src/images/inspect.js';
import { parsePlatform, platformMatcher } from '../../src/images/platforms.js';
import { MediaTypeDockerConfig, MediaTypeDockerManifest, MediaTypeDockerManifestList, MediaTypeOCIConfig, MediaTypeOCIIndex, MediaTypeOCIManifest } from '../../src/images/types.js';
import { type Descriptor } from '../../src/core/descriptor.js';
import { kindOf } from '../helpers/errors.js';

const sha = (s: string) => `sha256:${createHash('sha256').update(s).digest('hex')}`;
const LAYER = 'application/vnd.oci.image.layer.v1.tar+gzip';
const desc = (mediaType: string, body: string, extra: Partial<Descriptor> = {}): Descriptor => ({
  mediaType,
  digest: sha(body),
  size: Buffer.byteLength(body),
  ...extra,
});
const kind = (f: () => unknown) => kindOf(Promise.resolve().then(f));

const configBody = JSON.stringify({
  architecture: 'amd64',
  os: 'linux',
  config: { Cmd: ['sh'] },
  rootfs: { type: 'layers', diff_ids: [sha('diff0'), sha('diff1')] },
  history: [{ created_by: 'ADD busybox' }],
  'x-extra': 1,
});
const config = desc(MediaTypeOCIConfig, configBody);
const layers = [desc(LAYER, 'layer0'), desc(LAYER, 'layer1')];
const manifestBody = JSON.stringify({ schemaVersion: 2, mediaType: MediaTypeOCIManifest, config, layers });

describe('parsing', () => {
  it('parses a manifest, an index and a config', () => {
    const m = parseManifest(Buffer.from(manifestBody));
    expect(m.config).toEqual(config);
    expect(m.layers).toEqual(layers);
    const idx = parseIndex(JSON.stringify({ schemaVersion: 2, manifests: [desc(MediaTypeOCIManifest, manifestBody, { platform: { os: 'linux', architecture: 'amd64' } })] }));
    expect(idx.manifests[0]!.platform).toEqual({ os: 'linux', architecture: 'amd64' });
    const c = parseConfig(configBody);
    expect(c.rootfs.diff_ids).toEqual([sha('diff0'), sha('diff1')]);
    expect(c.config?.Cmd).toEqual(['sh']);
    expect(c['x-extra']).toBe(1);
  });

  it('a manifest without layers has none', () => {
    expect(parseManifest(JSON.stringify({ schemaVersion: 2, config })).layers).toEqual([]);
  });

  it.each([
    ['not JSON', '{"schemaVersion": 2,'],
    ['an array', '[]'],
    ['no config', JSON.stringify({ schemaVersion: 2, layers })],
    ['bad config digest', JSON.stringify({ schemaVersion: 2, config: { ...config, digest: 'sha256:xyz' }, layers })],
    ['negative size', JSON.stringify({ schemaVersion: 2, config: { ...config, size: -1 }, layers })],
    ['fractional size', JSON.stringify({ schemaVersion: 2, config: { ...config, size: 1.5 }, layers })],
    ['no mediaType', JSON.stringify({ schemaVersion: 2, config: { digest: config.digest, size: 1 }, layers })],
    ['layers not a list', JSON.stringify({ schemaVersion: 2, config, layers: {} })],
    ['index content', JSON.stringify({ schemaVersion: 2, config, manifests: [] })],
    ['schema 1', JSON.stringify({ schemaVersion: 1, fsLayers: [] })],
    ['bad annotations', JSON.stringify({ schemaVersion: 2, config, layers, annotations: { a: 1 } })],
  ])('rejects a manifest: %s', async (_, body) => {
    expect(await kind(() => parseManifest(body))).toBe('invalid argument');
  });

  it.each([
    ['no manifests', JSON.stringify({ schemaVersion: 2 })],
    ['manifest content', JSON.stringify({ schemaVersion: 2, manifests: [], config })],
    ['bad entry', JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: MediaTypeOCIManifest }] })],
    ['bad platform', JSON.stringify({ schemaVersion: 2, manifests: [{ ...config, platform: { os: 'linux' } }] })],
    ['manifest media type', JSON.stringify({ schemaVersion: 2, mediaType: MediaTypeOCIManifest, manifests: [] })],
  ])('rejects an index: %s', async (_, body) => {
    expect(await kind(() => parseIndex(body))).toBe('invalid argument');
  });

  it.each([
    ['no rootfs', JSON.stringify({ architecture: 'amd64', os: 'linux' })],
    ['bad diff id', JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: ['x'] } })],
    ['no os', JSON.stringify({ architecture: 'amd64', rootfs: { type: 'layers', diff_ids: [] } })],
    ['garbage', 'nope'],
  ])('rejects a config: %s', async (_, body) => {
    expect(await kind(() => parseConfig(body))).toBe('invalid argument');
  });
});

describe('media types and children', () => {
  it('classifies media types', () => {
    expect(isManifestType(MediaTypeOCIManifest) && isManifestType(MediaTypeDockerManifest)).toBe(true);
    expect(isManifestType(MediaTypeOCIIndex)).toBe(false);
    expect(isIndexType(MediaTypeOCIIndex) && isIndexType(MediaTypeDockerManifestList)).toBe(true);
    expect(isIndexType(MediaTypeOCIManifest)).toBe(false);
    expect(isConfigType(MediaTypeOCIConfig) && isConfigType(MediaTypeDockerConfig)).toBe(true);
    expect(isConfigType(LAYER)).toBe(false);
    expect(isLayerType(LAYER) && isLayerType('application/vnd.docker.image.rootfs.diff.tar.gzip')).toBe(true);
    expect(isLayerType('application/vnd.oci.image.layer.v1.tar+zstd+encrypted')).toBe(true);
    expect(isLayerType(MediaTypeOCIConfig)).toBe(false);
  });

  it('children of a manifest are config then layers; of an index its manifests; others none', () => {
    expect(children({ mediaType: MediaTypeOCIManifest }, manifestBody)).toEqual([config, ...layers]);
    const m = desc(MediaTypeOCIManifest, manifestBody);
    const idxBody = JSON.stringify({ schemaVersion: 2, manifests: [m] });
    expect(children({ mediaType: MediaTypeOCIIndex }, idxBody)).toEqual([m]);
    expect(children({ mediaType: LAYER }, 'binary')).toEqual([]);
    expect(children({ mediaType: MediaTypeOCIConfig }, configBody)).toEqual([]);
  });

  it('children refuses bytes that contradict the media type', async () => {
    const idxBody = JSON.stringify({ schemaVersion: 2, manifests: [] });
    expect(await kind(() => children({ mediaType: MediaTypeOCIManifest }, idxBody))).toBe('invalid argument');
    expect(await kind(() => children({ mediaType: MediaTypeOCIIndex }, manifestBody))).toBe('invalid argument');
  });
});

describe('chainIDs', () => {
  it('matches an independently computed vector', () => {
    const d = [sha('a'), sha('b'), sha('c')];
    const c1 = sha(`${d[0]} ${d[1]}`);
    const c2 = sha(`${c1} ${d[2]}`);
    expect(chainIDs(d)).toEqual([d[0], c1, c2]);
    expect(chainID(d)).toBe(c2);
    expect(chainIDs([])).toEqual([]);
    expect(chainID([])).toBeUndefined();
  });

  it('a single layer is its own chain; later links hash "<prev> <diff>" (with the space)', () => {
    const d = ['sha256:3d24ee258efc3bfe4066a1a9fb83febf6dc0b1548dfe896161533668281c9f4f', sha('second')];
    expect(chainIDs(d)[0]).toBe(d[0]);
    expect(chainIDs(d)[1]).not.toBe(sha(`${d[0]}${d[1]}`));
    expect(chainIDs(d)[1]).toBe(sha(`${d[0]} ${d[1]}`));
  });
});

describe('gc.ref labels', () => {
  it('uses containerd keys for a manifest: config, l.0, l.1', () => {
    expect(gcRefLabels({ mediaType: MediaTypeOCIManifest }, [config, ...layers])).toEqual({
      'containerd.io/gc.ref.content.config': config.digest,
      'containerd.io/gc.ref.content.l.0': layers[0]!.digest,
      'containerd.io/gc.ref.content.l.1': layers[1]!.digest,
    });
  });

  it('uses m.<i> for an index, <i> for unknown children, counters per key', () => {
    const m0 = desc(MediaTypeOCIManifest, 'm0');
    const m1 = desc(MediaTypeDockerManifest, 'm1');
    const nested = desc(MediaTypeOCIIndex, 'nested');
    const other = desc('application/vnd.example+json', 'other');
    expect(gcRefLabels({ mediaType: MediaTypeOCIIndex }, [m0, nested, m1, other])).toEqual({
      'containerd.io/gc.ref.content.m.0': m0.digest,
      'containerd.io/gc.ref.content.0': nested.digest,
      'containerd.io/gc.ref.content.m.1': m1.digest,
      'containerd.io/gc.ref.content.1': other.digest,
    });
    expect(childGCLabel(desc(MediaTypeDockerConfig, 'c'))).toBe('containerd.io/gc.ref.content.config');
  });

  it('a second config gets a counter (config1)', () => {
    const c2 = desc(MediaTypeDockerConfig, 'c2');
    expect(gcRefLabels(undefined, [config, c2])).toEqual({
      'containerd.io/gc.ref.content.config': config.digest,
      'containerd.io/gc.ref.content.config1': c2.digest,
    });
  });
});

describe('resolveManifest', () => {
  const blobs = new Map<string, string>();
  const put = (mediaType: string, body: string, extra: Partial<Descriptor> = {}) => {
    blobs.set(sha(body), body);
    return desc(mediaType, body, extra);
  };
  const read = async (d: Descriptor) => {
    const b = blobs.get(d.digest);
    if (b === undefined) throw new Error(`missing ${d.digest}`);
    return Buffer.from(b);
  };
  const mk = (arch: string, variant?: string) => {
    const c = put(MediaTypeOCIConfig, JSON.stringify({ architecture: arch, os: 'linux', ...(variant ? { variant } : {}), rootfs: { type: 'layers', diff_ids: [] } }));
    return put(MediaTypeOCIManifest, JSON.stringify({ schemaVersion: 2, config: c, layers: [] }));
  };
  const amd = mk('amd64');
  const arm7 = mk('arm', 'v7');
  const arm64 = mk('arm64');
  const idx = put(
    MediaTypeOCIIndex,
    JSON.stringify({
      schemaVersion: 2,
      manifests: [
        { ...arm7, platform: { os: 'linux', architecture: 'arm', variant: 'v7' } },
        { ...amd, platform: { os: 'linux', architecture: 'amd64' } },
        { ...arm64, platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
      ],
    }),
  );

  it('picks the best match for the platform', async () => {
    expect((await resolveManifest(read, idx, platformMatcher(parsePlatform('linux/amd64')))).descriptor.digest).toBe(amd.digest);
    expect((await resolveManifest(read, idx, platformMatcher(parsePlatform('linux/arm64')))).descriptor.digest).toBe(arm64.digest);
    expect((await resolveManifest(read, idx, platformMatcher(parsePlatform('linux/arm/v7')))).descriptor.digest).toBe(arm7.digest);
  });

  it('no match is not found; without a matcher the first entry', async () => {
    expect(await kindOf(resolveManifest(read, idx, platformMatcher(parsePlatform('linux/s390x'))))).toBe('not found');
    await expect(resolveManifest(read, idx, platformMatcher(parsePlatform('linux/s390x')))).rejects.toThrow(/no match for platform in manifest/);
    expect((await resolveManifest(read, idx)).descriptor.digest).toBe(arm7.digest);
  });

  it('checks the config of platform-less entries, and returns a root manifest as is', async () => {
    const plain = put(MediaTypeOCIIndex, JSON.stringify({ schemaVersion: 2, manifests: [arm64] }));
    expect(await kindOf(resolveManifest(read, plain, platformMatcher(parsePlatform('linux/amd64'))))).toBe('not found');
    expect((await resolveManifest(read, plain, platformMatcher(parsePlatform('linux/arm64')))).descriptor.digest).toBe(arm64.digest);
    expect((await resolveManifest(read, arm64, platformMatcher(parsePlatform('linux/amd64')))).manifest.layers).toEqual([]);
  });
});

describe('manifest selection: one order for resolveManifest, pull, push, unpack, image check and export', () => {
  // An index whose best entry for linux/amd64 comes after a platform-less one and a worse match (386): the old
  // comparator of pull and image check called a platform-less entry "equal" to any other, which is no order,
  // and the sort then kept 386 (or the platform-less entry) first.
  const blobs = new Map<string, string>();
  const put = (mediaType: string, body: string) => {
    blobs.set(sha(body), body);
    return desc(mediaType, body);
  };
  const read = async (d: Descriptor) => Buffer.from(blobs.get(d.digest)!);
  const mk = (arch: string) => {
    const c = put(MediaTypeOCIConfig, JSON.stringify({ architecture: arch, os: 'linux', rootfs: { type: 'layers', diff_ids: [] } }));
    return { config: c, manifest: put(MediaTypeOCIManifest, JSON.stringify({ schemaVersion: 2, config: c, layers: [] })) };
  };
  const i386 = { ...mk('386').manifest, platform: { os: 'linux', architecture: '386' } };
  const plain = mk('amd64').manifest;
  const amd = mk('amd64');
  const amd64 = { ...amd.manifest, platform: { os: 'linux', architecture: 'amd64' } };
  const arm = { ...mk('arm').manifest, platform: { os: 'linux', architecture: 'arm', variant: 'v7' } };
  const entries = [i386, plain, arm, amd64];
  const idx = put(MediaTypeOCIIndex, JSON.stringify({ schemaVersion: 2, manifests: entries }));
  const linuxAmd64 = parsePlatform('linux/amd64');

  it('keeps the matches and platform-less entries, best first, platform-less last (containerd LimitManifests)', () => {
    expect(matchingManifests(entries, platformMatcher(linuxAmd64)).map((d) => d.digest)).toEqual([amd64.digest, i386.digest, plain.digest]);
    expect(matchingManifests([plain, amd64], platformMatcher(linuxAmd64))[0]!.digest).toBe(amd64.digest);
    expect(matchingManifests(entries, platformMatcher(parsePlatform('linux/s390x'))).map((d) => d.digest)).toEqual([plain.digest]);
  });

  it('pull/push/unpack (selectManifests) and image check (requiredDescriptors) pick what resolveManifest picks', async () => {
    expect(selectManifests(entries, [linuxAmd64], false).map((d) => d.digest)).toEqual([amd64.digest]);
    expect(selectManifests([plain, amd64], [linuxAmd64], false).map((d) => d.digest)).toEqual([amd64.digest]);
    expect((await resolveManifest(read, idx, platformMatcher(linuxAmd64))).descriptor.digest).toBe(amd64.digest);
    const { required } = await requiredDescriptors(read, idx, linuxAmd64);
    expect(required.map((d) => d.digest)).toEqual([idx.digest, amd64.digest, amd.config.digest]);
  });
});
