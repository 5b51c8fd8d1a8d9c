/**
 * The reader against seeded random damage: flipped bytes anywhere in a blob (footer, TOC member, payload)
 * and random edits of TOC fields. Every outcome must be a verified result or a StrataError of a known kind
 * (never a TypeError, a RangeError or a hang), and a chunk that reads must match its digest.
 */
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { StrataError } from '../../src/core/errdefs.js';
import { openEstargz, type TocEntry } from '../../src/estargz/index.js';
import { bufferReadAt, goBuild, sampleTar, tocOf, withToc } from '../helpers/estargz.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

let tmp: TempDir;
let blob: Buffer;
beforeAll(async () => {
  tmp = await tempDir('strata-estargz-fuzz-');
  blob = (await goBuild(tmp.path, await sampleTar(), { chunk: 1000 })).blob;
}, 180_000);
afterAll(() => tmp?.cleanup());

function rng(seed: number) {
  let x = seed * 2654435761 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

/** Opens and reads everything; returns what happened, throws on anything but a StrataError. */
async function exercise(b: Buffer): Promise<string> {
  let layer;
  try {
    layer = await openEstargz(bufferReadAt(b).readAt, b.length);
  } catch (err) {
    if (!(err instanceof StrataError)) throw err;
    expect(['invalid argument', 'data loss']).toContain(err.kind);
    return `open: ${err.kind}`;
  }
  let bad = 0;
  for (const e of layer.toc.entries) {
    if (e.type !== 'reg') continue;
    for (const c of layer.chunks(e.name)) {
      try {
        const data = await layer.readChunk(c);
        expect(`sha256:${createHash('sha256').update(data).digest('hex')}`).toBe(c.digest);
        expect(data.length).toBe(c.size);
      } catch (err) {
        if (!(err instanceof StrataError)) throw err;
        expect(['invalid argument', 'data loss']).toContain(err.kind);
        bad++;
      }
    }
  }
  return bad ? 'read: refused' : 'ok';
}

describe('the eStargz reader under random damage', () => {
  it('300 blobs with flipped bytes: each opens and verifies, or is refused with a StrataError', async () => {
    const outcomes = new Map<string, number>();
    for (let seed = 1; seed <= 300; seed++) {
      const r = rng(seed);
      const b = Buffer.from(blob);
      // A third of the flips land in the last 2 KiB (footer and TOC member), the rest anywhere.
      for (let n = 1 + Math.floor(r() * 3); n > 0; n--) {
        const pos = r() < 0.33 ? b.length - 1 - Math.floor(r() * Math.min(2048, b.length)) : Math.floor(r() * b.length);
        b[pos] ^= 1 << Math.floor(r() * 8);
      }
      const o = await exercise(b);
      outcomes.set(o, (outcomes.get(o) ?? 0) + 1);
    }
    // The damage reached every outcome: refused at open, refused at a chunk, and harmless (e.g. gzip headers' mtime).
    expect(outcomes.get('open: invalid argument') ?? 0).toBeGreaterThan(0);
    expect(outcomes.get('read: refused') ?? 0).toBeGreaterThan(0);
  });

  it('300 TOCs with random field edits: each is served verified or refused with a StrataError', async () => {
    const { toc } = tocOf(blob);
    const values: unknown[] = [-1, 0, 1, 1e300, 2 ** 53, '', '..', '../x', 'a/../../b', null, [], {}, true, 'sha256:' + '0'.repeat(64), 'x\u0000y', 4096, 999999999];
    const fields: (keyof TocEntry)[] = ['name', 'type', 'size', 'offset', 'chunkOffset', 'chunkSize', 'chunkDigest', 'digest', 'linkName', 'mode', 'xattrs', 'innerOffset'];
    const outcomes = new Map<string, number>();
    for (let seed = 1; seed <= 300; seed++) {
      const r = rng(seed + 1000);
      const t = structuredClone(toc) as unknown as { entries: Record<string, unknown>[] };
      for (let n = 1 + Math.floor(r() * 2); n > 0; n--) {
        const e = t.entries[Math.floor(r() * t.entries.length)]!;
        e[fields[Math.floor(r() * fields.length)]!] = values[Math.floor(r() * values.length)];
      }
      const h = await withToc(blob, JSON.stringify(t));
      const o = await exercise(h.blob);
      outcomes.set(o, (outcomes.get(o) ?? 0) + 1);
    }
    expect(outcomes.get('open: invalid argument') ?? 0).toBeGreaterThan(0);
    expect((outcomes.get('ok') ?? 0) + (outcomes.get('read: refused') ?? 0)).toBeGreaterThan(0);
  });
});
