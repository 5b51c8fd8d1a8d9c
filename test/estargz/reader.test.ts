/**
 * The eStargz reader against blobs built by stargz-snapshotter's own Go `estargz` package, and against
 * hostile TOCs spliced into such blobs.
 */
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isDataLoss, isInvalidArgument } from '../../src/core/errdefs.js';
import {
  FOOTER_SIZE,
  NO_PREFETCH_LANDMARK,
  PREFETCH_LANDMARK,
  footerBytes,
  openEstargz,
  parseFooter,
  type EstargzLayer,
} from '../../src/estargz/index.js';
import { bufferReadAt, goBuild, sampleFiles, sampleTar, sha256, tocOf, withToc } from '../helpers/estargz.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

let tmp: TempDir;
let go: Awaited<ReturnType<typeof goBuild>>;

beforeAll(async () => {
  tmp = await tempDir('strata-estargz-');
  go = await goBuild(tmp.path, await sampleTar(), { chunk: 1000 });
}, 180_000);
afterAll(() => tmp?.cleanup());

async function readFile(layer: EstargzLayer, path: string): Promise<Buffer> {
  const parts: Buffer[] = [];
  for (const c of layer.chunks(path)) parts.push(await layer.readChunk(c));
  return Buffer.concat(parts);
}

async function refusal(p: Promise<unknown>, what = 'expected a refusal'): Promise<Error> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e as Error,
  );
  expect(err, what).toBeInstanceOf(Error);
  return err!;
}

describe('the eStargz reader', () => {
  it('opens a blob built by Go estargz.Build in at most two reads and finds the TOC digest Go reported', async () => {
    const { readAt, stats } = bufferReadAt(go.blob);
    const layer = await openEstargz(readAt, go.blob.length, { tocDigest: go.tocDigest });
    expect(layer.tocDigest).toBe(go.tocDigest);
    expect(stats.calls).toBeLessThanOrEqual(2);
    expect(layer.toc.version).toBe(1);
    expect(layer.tocOffset).toBe(tocOf(go.blob).tocOffset);
  });

  it('reads every chunk of every regular file verified, and the bytes equal the tar\'s', async () => {
    const layer = await openEstargz(bufferReadAt(go.blob).readAt, go.blob.length);
    const files = sampleFiles();
    for (const [path, want] of files) {
      const e = layer.entry(path);
      expect(e?.type, path).toBe('reg');
      expect(e?.size ?? 0, path).toBe(want.length);
      const got = await readFile(layer, path);
      expect(sha256(got), path).toBe(sha256(want));
    }
    // 5000 bytes at a chunk size of 1000: five chunks, contiguous, each its own gzip member.
    const chunks = layer.chunks('bin/tool');
    expect(chunks.map((c) => [c.fileOffset, c.size])).toEqual([[0, 1000], [1000, 1000], [2000, 1000], [3000, 1000], [4000, 1000]]);
    expect(new Set(chunks.map((c) => c.blobOffset)).size).toBe(5);
    expect(layer.chunks('bin/one-more').map((c) => c.size)).toEqual([1000, 1]);
    expect(layer.chunks('etc/empty')).toEqual([]);
  });

  it('gives the tree with implicit parents, hard links resolved, symlinks, devices, modes, owners and xattrs', async () => {
    const layer = await openEstargz(bufferReadAt(go.blob).readAt, go.blob.length);
    expect([...layer.children('').keys()]).toEqual([NO_PREFETCH_LANDMARK, 'bin', 'dev', 'etc', 'run', 'usr']);
    expect(layer.entry('usr/share')?.type).toBe('dir'); // implicit: the tar has no entry for it
    expect(layer.entry('/bin/link-to-tool')).toBe(layer.entry('bin/tool'));
    expect(layer.linkCount(layer.entry('bin/tool')!)).toBe(2);
    expect(layer.entry('./bin/sh')).toMatchObject({ type: 'symlink', linkName: 'tool' });
    expect(layer.entry('dev/null')).toMatchObject({ type: 'char', devMajor: 1, devMinor: 3 });
    expect(layer.entry('run/fifo')?.type).toBe('fifo');
    expect(layer.entry('bin/one-more')?.mode! & 0o7777).toBe(0o4755);
    expect(layer.entry('etc/empty')).toMatchObject({ uid: 1000, gid: 1000 });
    expect(Buffer.from(layer.entry('usr/share/doc/readme')!.xattrs!['user.note']!, 'base64').toString()).toBe('hello');
    expect(layer.entry('nope')).toBeUndefined();
    expect(layer.entry('../etc/hostname')).toBeUndefined();
    expect(layer.prefetchSize).toBe(0);
  });

  it('puts the prioritized files before the prefetch landmark and reports its offset as the prefetch size', async () => {
    const p = await goBuild(tmp.path, await sampleTar(), { chunk: 1000, prioritized: ['bin/tool', 'etc/hostname'] });
    const layer = await openEstargz(bufferReadAt(p.blob).readAt, p.blob.length, { tocDigest: p.tocDigest });
    const landmark = layer.entry(PREFETCH_LANDMARK)!;
    expect(landmark.offset).toBeGreaterThan(0);
    expect(layer.prefetchSize).toBe(landmark.offset);
    for (const c of layer.chunks('bin/tool')) expect(c.blobOffset).toBeLessThan(layer.prefetchSize);
    for (const c of layer.chunks('usr/share/doc/readme')) expect(c.blobOffset).toBeGreaterThan(layer.prefetchSize);
  });

  it('writes the footer byte for byte as Go does, and reads the legacy 47-byte stargz footer too', async () => {
    const { tocOffset } = tocOf(go.blob);
    expect(footerBytes(tocOffset).equals(go.blob.subarray(go.blob.length - FOOTER_SIZE))).toBe(true);
    expect(parseFooter(go.blob.subarray(go.blob.length - 200))).toEqual({ tocOffset, legacy: false });

    // Legacy stargz: the extra field is the 22 bytes themselves (gzip header flags FEXTRA, XLEN 22).
    const legacyFooter = Buffer.concat([
      Buffer.from([0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 255, 22, 0]),
      Buffer.from(tocOffset.toString(16).padStart(16, '0') + 'STARGZ', 'latin1'),
      Buffer.from([1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]),
    ]);
    expect(legacyFooter.length).toBe(47);
    const legacy = Buffer.concat([go.blob.subarray(0, go.blob.length - FOOTER_SIZE), legacyFooter]);
    expect(parseFooter(legacy.subarray(legacy.length - 51))).toEqual({ tocOffset, legacy: true });
    const layer = await openEstargz(bufferReadAt(legacy).readAt, legacy.length, { tocDigest: go.tocDigest });
    expect(sha256(await readFile(layer, 'bin/tool'))).toBe(sha256(sampleFiles().get('bin/tool')!));
  });
});

describe('hostile and foreign blobs', () => {
  it('refuses a plain gzip layer as not an eStargz blob', async () => {
    const plain = gzipSync(await sampleTar());
    const err = await refusal(openEstargz(bufferReadAt(plain).readAt, plain.length));
    expect(isInvalidArgument(err)).toBe(true);
    expect(err.message).toMatch(/^not an eStargz blob: /);
  });

  it('refuses a footer pointing outside the blob', async () => {
    const b = Buffer.concat([go.blob.subarray(0, go.blob.length - FOOTER_SIZE), footerBytes(go.blob.length * 4)]);
    const err = await refusal(openEstargz(bufferReadAt(b).readAt, b.length));
    expect(err.message).toMatch(/not an eStargz blob: the footer's TOC offset \d+ is outside the blob/);
  });

  it('refuses a TOC digest that differs from the annotation as data loss', async () => {
    const err = await refusal(openEstargz(bufferReadAt(go.blob).readAt, go.blob.length, { tocDigest: sha256('other') }));
    expect(isDataLoss(err)).toBe(true);
    expect(err.message).toContain(go.tocDigest);
  });

  it('refuses a TOC larger than the limit, compressed or as a gzip bomb, before parsing it', async () => {
    const small = await refusal(openEstargz(bufferReadAt(go.blob).readAt, go.blob.length, { maxTocBytes: 100 }));
    expect(small.message).toMatch(/eStargz TOC of \d+ bytes is larger than the limit of 100 bytes/);
    // 200 MB of spaces compresses to about 200 KB: refused while inflating, not after.
    const { toc } = tocOf(go.blob);
    const bomb = Buffer.concat([Buffer.from(JSON.stringify(toc)), Buffer.alloc(1 << 20, 0x20)]);
    const h = await withToc(go.blob, bomb);
    const err = await refusal(openEstargz(bufferReadAt(h.blob).readAt, h.blob.length, { maxTocBytes: 512 << 10 }));
    expect(isInvalidArgument(err)).toBe(true);
    expect(err.message).toMatch(/larger than the limit/);
  });

  it('refuses data offsets outside the payload, shared offsets, and chunks that do not cover their file', async () => {
    const { toc, tocOffset } = tocOf(go.blob);
    const cases: [string, (t: typeof toc) => void, RegExp][] = [
      ['past the TOC', (t) => void (t.entries.find((e) => e.name === 'bin/exact')!.offset = tocOffset + 10), /outside the blob's payload/],
      ['negative', (t) => void (t.entries.find((e) => e.name === 'bin/exact')!.offset = -5), /has a bad offset/],
      ['shared', (t) => {
        const [a, b] = t.entries.filter((e) => e.type === 'chunk');
        b!.offset = a!.offset;
      }, /offset \d+ is used by two chunks/],
      ['gap', (t) => void (t.entries.filter((e) => e.type === 'chunk')[0]!.chunkOffset = 1500), /do not cover its 5000 bytes/],
      ['oversized file', (t) => void (t.entries.find((e) => e.name === 'bin/tool')!.size = 1 << 30), /do not cover/],
      ['no digest', (t) => {
        const e = t.entries.find((x) => x.name === 'bin/exact')!;
        delete e.chunkDigest;
        delete e.digest;
      }, /has no chunkDigest/],
      ['bad digest syntax', (t) => void (t.entries.find((e) => e.name === 'bin/exact')!.chunkDigest = 'md5:abc'), /bad chunkDigest/],
      ['dangling hard link', (t) => void (t.entries.find((e) => e.type === 'hardlink')!.linkName = 'bin/missing'), /not in the layer/],
      ['hard link to a dir', (t) => void (t.entries.find((e) => e.type === 'hardlink')!.linkName = 'etc'), /points at a directory/],
      ['orphan chunk', (t) => void t.entries.splice(0, 0, { name: 'x', type: 'chunk', offset: 1, chunkSize: 1 }), /does not follow a regular file/],
      ['parent not a dir', (t) => void t.entries.push({ name: 'etc/hostname/inner', type: 'dir' }), /is a reg but has entries under it/],
      ['unknown type', (t) => void (t.entries[1]!.type = 'socket' as never), /unknown type "socket"/],
      ['string size', (t) => void ((t.entries.find((e) => e.name === 'bin/tool') as unknown as Record<string, unknown>).size = '5000'), /has a bad size/],
    ];
    for (const [what, mutate, msg] of cases) {
      const t = structuredClone(toc);
      mutate(t);
      const h = await withToc(go.blob, JSON.stringify(t));
      const err = await refusal(openEstargz(bufferReadAt(h.blob).readAt, h.blob.length, { tocDigest: h.tocDigest }), what);
      expect(isInvalidArgument(err), `${what}: ${err.message}`).toBe(true);
      expect(err.message, what).toMatch(msg);
      expect(err.message, what).toMatch(/^invalid eStargz TOC: /);
    }
  });

  it('refuses names that climb out of the root, and NUL bytes', async () => {
    const { toc } = tocOf(go.blob);
    for (const name of ['../etc/passwd', 'bin/../../x', 'a\0b']) {
      const t = structuredClone(toc);
      t.entries.push({ name, type: 'dir' });
      const h = await withToc(go.blob, JSON.stringify(t));
      const err = await refusal(openEstargz(bufferReadAt(h.blob).readAt, h.blob.length));
      expect(err.message).toMatch(/leaves the layer's root|contains a NUL byte/);
    }
  });

  it('refuses a chunk whose digest does not match as data loss, and never returns its bytes', async () => {
    const { toc } = tocOf(go.blob);
    const t = structuredClone(toc);
    t.entries.find((e) => e.name === 'etc/hostname')!.chunkDigest = sha256('not the file');
    const h = await withToc(go.blob, JSON.stringify(t));
    const layer = await openEstargz(bufferReadAt(h.blob).readAt, h.blob.length, { tocDigest: h.tocDigest });
    const err = await refusal(layer.readChunk(layer.chunks('etc/hostname')[0]!));
    expect(isDataLoss(err)).toBe(true);
    expect(err.message).toMatch(/has digest sha256:[0-9a-f]{64}, the TOC says/);
    // Other files still read.
    expect((await readFile(layer, 'etc/empty')).length).toBe(0);
    expect(sha256(await readFile(layer, 'bin/tool'))).toBe(sha256(sampleFiles().get('bin/tool')!));
  });

  it('refuses corrupt member bytes as data loss', async () => {
    const layer0 = await openEstargz(bufferReadAt(go.blob).readAt, go.blob.length);
    const c = layer0.chunks('bin/tool')[2]!;
    const bad = Buffer.from(go.blob);
    bad[c.blobOffset + 20] ^= 0xff;
    const layer = await openEstargz(bufferReadAt(bad).readAt, bad.length);
    const err = await refusal(layer.readChunk(layer.chunks('bin/tool')[2]!));
    expect(isDataLoss(err)).toBe(true);
    // A forged chunk outside the payload is refused before any read.
    const forged = await refusal(layer.readChunk({ ...c, blobLength: go.blob.length }));
    expect(forged.message).toMatch(/outside the eStargz payload/);
  });
});
