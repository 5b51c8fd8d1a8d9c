import { createHash, randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { Readable } from 'node:stream';
import zlib from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { CompressStream as ZstdCompressStream, DecompressStream as ZstdDecompressStream, compress as zstdCompress } from 'zstd-napi';
import { decompressStream, detectCompression } from '../../src/diff/decompress.js';
import { compressionOf, layerMediaTypes, mayBeMislabelled, type Compression } from '../../src/diff/mediatypes.js';
import { StrataError } from '../../src/core/errdefs.js';

/** `data` as a stream of odd-sized chunks (1, 7, 13, ... bytes up to ~100 KiB), so frame and block boundaries fall anywhere. */
function oddChunks(data: Buffer): Readable {
  const sizes = [1, 7, 13, 4093, 3, 65537, 511, 99991, 2, 16385];
  return Readable.from(
    (function* () {
      let off = 0;
      for (let i = 0; off < data.length; i++) {
        const n = sizes[i % sizes.length]!;
        yield data.subarray(off, off + n);
        off += n;
      }
    })(),
    { objectMode: false },
  );
}

async function collect(s: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of s) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

/** Compressible but not trivial: random runs mixed with repeats of earlier data. */
function layerLike(n: number, seed = 1): Buffer {
  const out = Buffer.alloc(n);
  let s = seed >>> 0 || 1;
  const rnd = () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s;
  };
  let off = 0;
  while (off < n) {
    const len = Math.min(n - off, 64 + (rnd() % 4096));
    if (off > 8192 && rnd() % 2 === 0) {
      const from = rnd() % (off - len > 0 ? off - len : 1);
      out.copy(out, off, from, from + len);
    } else {
      for (let i = 0; i < len; i++) out[off + i] = rnd() & 0xff;
    }
    off += len;
  }
  return out;
}

const gzip = (b: Buffer) => zlib.gzipSync(b, { level: 1 });
const zstd = (b: Buffer) => zstdCompress(b, { compressionLevel: 3, checksumFlag: true });
const compressors: Record<'gzip' | 'zstd', (b: Buffer) => Buffer> = { gzip, zstd };
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

async function expectStreamError(s: Readable): Promise<Error> {
  let got: Buffer | undefined;
  try {
    got = await collect(s);
  } catch (e) {
    return e as Error;
  }
  throw new Error(`expected an error, got a successful stream of ${got.length} bytes`);
}

describe('decompressStream round trips', () => {
  const data = Buffer.concat([randomBytes(300_000), layerLike(700_000, 7)]);

  it('none passes the bytes through', async () => {
    expect((await collect(decompressStream(oddChunks(data), 'none'))).equals(data)).toBe(true);
  });

  for (const c of ['gzip', 'zstd'] as const) {
    it(`${c} over odd-sized chunks`, async () => {
      const z = compressors[c](data);
      const out = await collect(decompressStream(oddChunks(z), c));
      expect(out.length).toBe(data.length);
      expect(out.equals(data)).toBe(true);
    });

    it(`${c} of empty content`, async () => {
      const out = await collect(decompressStream(oddChunks(compressors[c](Buffer.alloc(0))), c));
      expect(out.length).toBe(0);
    });

    it(`${c}: concatenated members/frames decode as one stream`, async () => {
      const a = layerLike(200_000, 3);
      const b = layerLike(150_000, 4);
      const z = Buffer.concat([compressors[c](a), compressors[c](b)]);
      expect((await collect(decompressStream(oddChunks(z), c))).equals(Buffer.concat([a, b]))).toBe(true);
    });
  }

  for (const c of ['none', 'gzip', 'zstd'] as const) {
    it(`'detect' recognises ${c}, even when the magic arrives one byte at a time`, async () => {
      const z = c === 'none' ? data : compressors[c](data);
      expect((await collect(decompressStream(oddChunks(z), 'detect'))).equals(data)).toBe(true);
    });
  }

  it("'detect' on an empty and on a 2-byte stream", async () => {
    expect((await collect(decompressStream(oddChunks(Buffer.alloc(0)), 'detect'))).length).toBe(0);
    expect((await collect(decompressStream(oddChunks(Buffer.from([0x1f, 0x8b])), 'detect'))).equals(Buffer.from([0x1f, 0x8b]))).toBe(
      true,
    );
  });

  it('the zstd command-line tool and gzip(1) output decode too', async () => {
    for (const [cmd, c] of [
      ['zstd', 'zstd'],
      ['gzip', 'gzip'],
    ] as const) {
      const r = spawnSync(cmd, ['-c', '-3'], { input: data, maxBuffer: 64 << 20 });
      if (r.error) continue; // tool not installed; the binding round trips above still hold
      expect(r.status).toBe(0);
      expect((await collect(decompressStream(oddChunks(r.stdout), c))).equals(data)).toBe(true);
      expect((await collect(decompressStream(oddChunks(r.stdout), 'detect'))).equals(data)).toBe(true);
    }
  });
});

describe('decompressStream on a large stream', () => {
  it('zstd with a 2^28-byte window (zstd --long=28), beyond libzstd\'s default limit', async () => {
    const data = layerLike(1 << 20, 5);
    // Streamed (size unknown), so the frame header really declares the 2^28 window; a one-shot compress would
    // shrink the window to the input's size.
    const z = await collect(
      Readable.from([data]).pipe(new ZstdCompressStream({ compressionLevel: 3, windowLog: 28, enableLongDistanceMatching: true })),
    );
    await expectStreamError(Readable.from([z]).pipe(new ZstdDecompressStream({ windowLogMax: 27 })));
    expect((await collect(decompressStream(oddChunks(z), 'zstd'))).equals(data)).toBe(true);
  });

  for (const c of ['gzip', 'zstd'] as const) {
    it(`${c}: 64 MiB digest`, async () => {
      const data = layerLike(64 << 20, 42);
      const want = sha256(data);
      const z = compressors[c](data);
      const h = createHash('sha256');
      let n = 0;
      for await (const chunk of decompressStream(oddChunks(z), c)) {
        h.update(chunk as Buffer);
        n += (chunk as Buffer).length;
      }
      expect(n).toBe(64 << 20);
      expect(h.digest('hex')).toBe(want);
    });
  }
});

describe('decompressStream errors', () => {
  const data = layerLike(1 << 20, 9);

  for (const c of ['gzip', 'zstd'] as const) {
    for (const mode of [c, 'detect'] as const) {
      it(`${c} (${mode}): corrupt data errors`, async () => {
        const z = Buffer.from(compressors[c](data));
        for (let i = Math.floor(z.length / 2); i < Math.floor(z.length / 2) + 16; i++) z[i] = z[i]! ^ 0xa5;
        await expectStreamError(decompressStream(oddChunks(z), mode));
      });

      it(`${c} (${mode}): truncated data errors`, async () => {
        const z = compressors[c](data);
        for (const keep of [z.length - 1, z.length - 8, Math.floor(z.length / 2), 20]) {
          const e = await expectStreamError(decompressStream(oddChunks(z.subarray(0, keep)), mode));
          expect(e).toBeInstanceOf(Error);
        }
      });
    }

    it(`${c}: an error of the source stream reaches the consumer`, async () => {
      const z = compressors[c](data);
      const src = new Readable({
        read() {
          this.push(z.subarray(0, 1000));
          this.destroy(new Error('source broke'));
        },
      });
      const e = await expectStreamError(decompressStream(src, c));
      expect(e.message).toMatch(/source broke/);
    });
  }

  it("'detect': an error of the source stream reaches the consumer", async () => {
    const src = new Readable({
      read() {
        this.push(Buffer.from([0x28, 0xb5]));
        this.destroy(new Error('source broke'));
      },
    });
    const e = await expectStreamError(decompressStream(src, 'detect'));
    expect(e.message).toMatch(/source broke/);
  });

  it('gzip of data that is not gzip errors', async () => {
    await expectStreamError(decompressStream(oddChunks(data), 'gzip'));
  });

  it('zstd of data that is not zstd errors', async () => {
    await expectStreamError(decompressStream(oddChunks(data), 'zstd'));
  });

  for (const mode of ['gzip', 'zstd', 'detect'] as const) {
    it(`${mode}: destroying the output destroys the source`, async () => {
      const z = mode === 'zstd' ? zstd(data) : gzip(data);
      const src = oddChunks(z);
      const out = decompressStream(src, mode);
      for await (const _ of out) break;
      for (let i = 0; i < 10 && !src.destroyed; i++) await new Promise((r) => setTimeout(r, 5));
      expect(out.destroyed).toBe(true);
      expect(src.destroyed).toBe(true);
    });
  }
});

describe('compressionOf', () => {
  const expected: Record<string, Compression> = {
    'application/vnd.oci.image.layer.v1.tar': 'none',
    'application/vnd.oci.image.layer.v1.tar+gzip': 'gzip',
    'application/vnd.oci.image.layer.v1.tar+zstd': 'zstd',
    'application/vnd.oci.image.layer.nondistributable.v1.tar': 'none',
    'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip': 'gzip',
    'application/vnd.oci.image.layer.nondistributable.v1.tar+zstd': 'zstd',
    'application/vnd.docker.image.rootfs.diff.tar': 'none',
    'application/vnd.docker.image.rootfs.foreign.diff.tar': 'none',
    'application/vnd.docker.image.rootfs.diff.tar.gzip': 'gzip',
    'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip': 'gzip',
  };

  for (const [mt, c] of Object.entries(expected)) {
    it(`${mt} → ${c}`, () => {
      expect(compressionOf(mt)).toBe(c);
    });
  }

  it('knows exactly those types', () => {
    expect(Object.fromEntries(layerMediaTypes)).toEqual(expected);
  });

  it("Docker's plain diff.tar types may hold compressed data", () => {
    expect(mayBeMislabelled('application/vnd.docker.image.rootfs.diff.tar')).toBe(true);
    expect(mayBeMislabelled('application/vnd.docker.image.rootfs.foreign.diff.tar')).toBe(true);
    expect(mayBeMislabelled('application/vnd.oci.image.layer.v1.tar')).toBe(false);
  });

  for (const mt of [
    'application/vnd.oci.image.manifest.v1+json',
    'application/vnd.oci.image.layer.v1.tar+gzip+encrypted',
    'application/vnd.oci.image.layer.v1.tar+bzip2',
    'text/plain',
    '',
  ]) {
    it(`unknown ${JSON.stringify(mt)} → invalid argument`, () => {
      let err: unknown;
      try {
        compressionOf(mt);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(StrataError);
      expect((err as StrataError).kind).toBe('invalid argument');
      expect((err as StrataError).message).toContain(`unsupported layer media type ${mt}`);
    });
  }
});

describe('detectCompression', () => {
  it('gzip magic', () => {
    expect(detectCompression(Buffer.from([0x1f, 0x8b, 0x08, 0x00]))).toBe('gzip');
    expect(detectCompression(gzip(Buffer.from('x')))).toBe('gzip');
  });
  it('zstd magic', () => {
    expect(detectCompression(Buffer.from([0x28, 0xb5, 0x2f, 0xfd]))).toBe('zstd');
    expect(detectCompression(zstd(Buffer.from('x')))).toBe('zstd');
  });
  it('anything else, or too few bytes, is none', () => {
    expect(detectCompression(Buffer.alloc(0))).toBe('none');
    expect(detectCompression(Buffer.from([0x1f]))).toBe('none');
    expect(detectCompression(Buffer.from([0x1f, 0x8b]))).toBe('none');
    expect(detectCompression(Buffer.from([0x28, 0xb5, 0x2f]))).toBe('none');
    expect(detectCompression(Buffer.from('ustar\0'))).toBe('none');
    expect(detectCompression(Buffer.alloc(512))).toBe('none');
  });
});
