/**
 * The eStargz writer (and tarToEstargz, the layer conversion that feeds it from a tar) checked by
 * stargz-snapshotter's own Go `estargz` package (Open, VerifyTOC, chunk verifiers), by Strata's reader, and
 * as an ordinary gzip layer whose uncompressed stream is the diffID.
 */
import { gunzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodeHeader, TarParser, type TarHeader } from '../../src/diff/tar.js';
import { EstargzWriter, NO_PREFETCH_LANDMARK, openEstargz, PREFETCH_LANDMARK, TOC_TAR_NAME } from '../../src/estargz/index.js';
import { tarToEstargz, tarToEstargzPrioritized } from '../../src/images/convert.js';
import { bufferReadAt, bytes, goBuild, goVerify, sampleFiles, sampleTar, sha256 } from '../helpers/estargz.js';
import { makeTar } from '../helpers/tar.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

let tmp: TempDir;
beforeAll(async () => {
  tmp = await tempDir('strata-estargz-w-');
});
afterAll(() => tmp?.cleanup());

async function* chunked(b: Buffer, size = 777): AsyncGenerator<Buffer> {
  for (let i = 0; i < b.length; i += size) yield b.subarray(i, i + size);
}

async function convert(tar: Buffer, opts: { chunkSize?: number; compressionLevel?: number } = {}) {
  const parts: Buffer[] = [];
  const r = await tarToEstargz(chunked(tar), (b) => void parts.push(b), opts);
  return { ...r, blob: Buffer.concat(parts) };
}

function tarEntries(tar: Buffer): { h: TarHeader; data: Buffer }[] {
  const out: { h: TarHeader; data: Buffer[] }[] = [];
  const p = new TarParser({
    header: (h) => void out.push({ h, data: [] }),
    data: (c) => void out.at(-1)!.data.push(Buffer.from(c)),
    endEntry: () => undefined,
  });
  p.push(tar);
  p.end();
  return out.map((e) => ({ h: e.h, data: Buffer.concat(e.data) }));
}

describe('the eStargz writer', () => {
  it('writes a blob that stargz-snapshotter\'s Go estargz package opens and verifies, with every file intact', async () => {
    const r = await convert(await sampleTar(), { chunkSize: 1000 });
    expect(r.blobSize).toBe(r.blob.length);
    expect(r.blobDigest).toBe(sha256(r.blob));
    const v = await goVerify(tmp.path, r.blob, r.tocDigest);
    expect(v.ok, v.output).toBe(true);
    const byName = new Map(v.entries.map((e) => [e.name as string, e]));
    for (const [path, want] of sampleFiles()) {
      expect(byName.get(path)?.sha256, path).toBe(sha256(want));
    }
    expect(byName.get('bin/sh')).toMatchObject({ type: 'symlink', linkName: 'tool' });
    expect(byName.get('dev/null')?.type).toBe('char');
    expect(byName.get(NO_PREFETCH_LANDMARK)?.type).toBe('reg');
  });

  it('is read back chunk by chunk by Strata\'s reader, one gzip member per chunk of the chunk size', async () => {
    const r = await convert(await sampleTar(), { chunkSize: 1000 });
    const layer = await openEstargz(bufferReadAt(r.blob).readAt, r.blob.length, { tocDigest: r.tocDigest });
    expect(layer.chunks('bin/tool').map((c) => c.size)).toEqual([1000, 1000, 1000, 1000, 1000]);
    for (const [path, want] of sampleFiles()) {
      const parts = [];
      for (const c of layer.chunks(path)) parts.push(await layer.readChunk(c));
      expect(sha256(Buffer.concat(parts)), path).toBe(sha256(want));
    }
    expect(layer.prefetchSize).toBe(0);
    expect([...layer.children('').keys()][0]).toBe(NO_PREFETCH_LANDMARK);
  });

  it('gunzips as an ordinary layer whose tar is the diffID: the entries in order, the landmark first and the TOC last', async () => {
    const tar = await sampleTar();
    const r = await convert(tar);
    const plain = gunzipSync(r.blob);
    expect(sha256(plain)).toBe(r.diffID);
    expect(plain.length).toBe(r.uncompressedSize);
    const entries = tarEntries(plain);
    const names = entries.map((e) => e.h.name);
    expect(names[0]).toBe(NO_PREFETCH_LANDMARK);
    expect(names.at(-1)).toBe(TOC_TAR_NAME);
    expect(names.slice(1, -1)).toEqual(tarEntries(tar).map((e) => e.h.name));
    const readme = entries.find((e) => e.h.name === 'usr/share/doc/readme')!;
    expect(readme.h.xattrs.map(([k, v]) => [k, v.toString()])).toEqual([['user.note', 'hello']]);
    expect(sha256(entries.find((e) => e.h.name === TOC_TAR_NAME)!.data)).toBe(r.tocDigest);
  });

  it('splits a 9 MiB file into 4 MiB chunks by default, as ctr-remote does, and Go verifies them', async () => {
    const big = bytes(9 << 20, 3);
    const r = await convert(await makeTar([{ name: 'big', body: big }]), { compressionLevel: 1 });
    const layer = await openEstargz(bufferReadAt(r.blob).readAt, r.blob.length);
    expect(layer.chunks('big').map((c) => c.size)).toEqual([4 << 20, 4 << 20, 1 << 20]);
    const v = await goVerify(tmp.path, r.blob, r.tocDigest);
    expect(v.ok, v.output).toBe(true);
    expect(v.entries.find((e) => e.name === 'big')?.sha256).toBe(sha256(big));
  });

  it('gives the same blob for the same layer, and drops an old TOC and landmark when converting an eStargz layer again', async () => {
    const tar = await sampleTar();
    const a = await convert(tar, { chunkSize: 1000 });
    const b = await convert(tar, { chunkSize: 1000 });
    expect(b.blobDigest).toBe(a.blobDigest);
    const again = await convert(gunzipSync(a.blob), { chunkSize: 1000 });
    const names = tarEntries(gunzipSync(again.blob)).map((e) => e.h.name);
    expect(names.filter((n) => n === TOC_TAR_NAME)).toHaveLength(1);
    expect(names.filter((n) => n === NO_PREFETCH_LANDMARK)).toHaveLength(1);
    expect(again.diffID).toBe(a.diffID);
  });

  it('closes a member of headers only past 8 MiB (many directories), and every reader still finds each file', async () => {
    const entries = [
      { name: 'first', body: bytes(3000, 4) },
      ...Array.from({ length: 18000 }, (_, i) => ({ name: `d/${String(i).padStart(5, '0')}/`, type: 'directory' as const })),
      { name: 'last', body: bytes(3000, 5) },
    ];
    const r = await convert(await makeTar(entries), { compressionLevel: 1 });
    const layer = await openEstargz(bufferReadAt(r.blob).readAt, r.blob.length, { tocDigest: r.tocDigest });
    const [first] = layer.chunks('first');
    // The member after 'first' holds its padding and 9 MB of directory headers: more than one member up to 'last'.
    let members = 0;
    for (let i = first!.blobOffset; i < first!.blobOffset + first!.blobLength - 3; i++) {
      if (r.blob[i] === 0x1f && r.blob[i + 1] === 0x8b && r.blob[i + 2] === 8 && r.blob[i + 3] === 0) members++;
    }
    expect(members).toBeGreaterThanOrEqual(2);
    expect(sha256(await layer.readChunk(first!))).toBe(sha256(bytes(3000, 4)));
    expect(sha256(await layer.readChunk(layer.chunks('last')[0]!))).toBe(sha256(bytes(3000, 5)));
    expect(layer.children('d').size).toBe(18000);
    const v = await goVerify(tmp.path, r.blob, r.tocDigest);
    expect(v.ok, v.output).toBe(true);
    expect(sha256(gunzipSync(r.blob))).toBe(r.diffID);
  });

  it('puts prioritized files before the prefetch landmark, which Go and Strata\'s reader both see', async () => {
    const parts: Buffer[] = [];
    const w = new EstargzWriter((b) => void parts.push(b), { prioritized: true, chunkSize: 1000 });
    const file = async (name: string, body: Buffer) => {
      await w.begin({ name, type: 'reg', mode: 0o644, uid: 0, gid: 0, size: body.length, mtime: 946684800 },
        encodeHeader({ name, type: '0', mode: 0o644, uid: 0, gid: 0, size: body.length, mtime: 946684800n }));
      await w.data(body);
      await w.end();
    };
    await file('first', bytes(3000, 1));
    await w.prefetchLandmark();
    await file('later', bytes(3000, 2));
    const r = await w.close();
    const blob = Buffer.concat(parts);
    const layer = await openEstargz(bufferReadAt(blob).readAt, blob.length, { tocDigest: r.tocDigest });
    expect(layer.prefetchSize).toBe(layer.entry(PREFETCH_LANDMARK)!.offset);
    expect(Math.max(...layer.chunks('first').map((c) => c.blobOffset + c.blobLength))).toBeLessThanOrEqual(layer.prefetchSize);
    expect(Math.min(...layer.chunks('later').map((c) => c.blobOffset))).toBeGreaterThan(layer.prefetchSize);
    const v = await goVerify(tmp.path, blob, r.tocDigest);
    expect(v.ok, v.output).toBe(true);
    expect(v.entries.map((e) => e.name)).toContain(PREFETCH_LANDMARK);
  });

  it('builds the same TOC layout as Go\'s estargz.Build for the same tar (entries, sizes, chunking)', async () => {
    const tar = await sampleTar();
    const mine = await convert(tar, { chunkSize: 1000 });
    const go = await goBuild(tmp.path, tar, { chunk: 1000 });
    const shape = async (blob: Buffer) => {
      const l = await openEstargz(bufferReadAt(blob).readAt, blob.length);
      return l.toc.entries.map((e) => [e.name, e.type, e.size ?? 0, e.chunkOffset ?? 0, e.chunkSize ?? 0, e.chunkDigest ?? '', e.digest ?? '']);
    };
    expect(await shape(mine.blob)).toEqual(await shape(go.blob));
  });
});
