/**
 * Layer decompression, as containerd's archive/compression.DecompressStream: gzip (node's zlib, run on the libuv
 * thread pool), zstd (libzstd through the zstd-napi binding) or none, chosen by the layer's media type
 * (see compressionOf in ./mediatypes.ts) or sniffed from the magic number at the head of the stream.
 *
 * Errors of the source stream and of the decoder surface as 'error' on the returned stream; a corrupt or
 * truncated gzip/zstd stream is an error, never a short success. Destroying the returned stream destroys the
 * source.
 */
import { Readable, Transform, pipeline } from 'node:stream';
import zlib from 'node:zlib';
import { DecompressStream as ZstdDecompressStream } from 'zstd-napi';
import type { Compression } from './mediatypes.js';

export type { Compression } from './mediatypes.js';

const gzipMagic = Buffer.from([0x1f, 0x8b, 0x08]);
const zstdMagic = Buffer.from([0x28, 0xb5, 0x2f, 0xfd]);

/** Largest zstd window accepted, as log2 (containerd's decoder: 1 << 29). */
export const zstdWindowLogMax = 29;

/** Output chunk size of the gunzip stream. */
export const gunzipChunkSize = 1 << 20;

/** Bytes detectCompression wants to see (fewer only at the end of the stream). */
export const detectBytes = 4;

/**
 * The compression of a stream whose first bytes are `firstBytes`, by magic number: gzip 1f 8b 08
 * (deflate, the only method gzip defines), zstd 28 b5 2f fd; anything else (including too few bytes) is 'none'.
 */
export function detectCompression(firstBytes: Buffer): Compression {
  if (firstBytes.length >= zstdMagic.length && firstBytes.subarray(0, zstdMagic.length).equals(zstdMagic)) {
    return 'zstd';
  }
  if (firstBytes.length >= gzipMagic.length && firstBytes.subarray(0, gzipMagic.length).equals(gzipMagic)) {
    return 'gzip';
  }
  return 'none';
}

function decoder(compression: 'gzip' | 'zstd'): Transform {
  if (compression === 'gzip') {
    // 1 MiB output chunks: fewer round trips to the thread pool than the default 16 KiB, about 1.8x the
    // throughput (bench/RESULTS.md, "Layer decompression").
    return zlib.createGunzip({ chunkSize: gunzipChunkSize });
  }
  // containerd's zstd reader (klauspost/compress) accepts windows up to 2^29 bytes (frames made with
  // `zstd --long=29`); libzstd's own default stops at 2^27.
  return new ZstdDecompressStream({ windowLogMax: zstdWindowLogMax });
}

/**
 * The uncompressed content of `input`. With 'detect', the compression is read from the stream's magic number,
 * as containerd does for every layer it applies (Docker's plain `diff.tar` type may hold gzip).
 */
export function decompressStream(input: Readable, compression: Compression | 'detect'): Readable {
  switch (compression) {
    case 'none':
      return input;
    case 'gzip':
    case 'zstd': {
      const d = decoder(compression);
      // pipeline destroys every stream with the first error, so the source's errors reach the consumer of `d`,
      // and the consumer destroying `d` destroys the source.
      pipeline(input, d, () => {});
      return d;
    }
    case 'detect':
      return detectAndDecompress(input);
    default:
      throw new TypeError(`unknown compression ${String(compression)}`);
  }
}

function detectAndDecompress(input: Readable): Readable {
  const it = input[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  const head: Buffer[] = [];
  let headLen = 0;
  let inputDone = false;

  async function* rest(): AsyncGenerator<Buffer> {
    try {
      for (const h of head) yield h;
      while (!inputDone) {
        const r = await it.next();
        if (r.done) return;
        yield r.value;
      }
    } finally {
      // Stopped early (downstream destroyed, or an error): release the source.
      await it.return?.();
    }
  }

  async function* all(): AsyncGenerator<Buffer> {
    let inner: Readable | undefined;
    try {
      while (headLen < detectBytes) {
        const r = await it.next();
        if (r.done) {
          inputDone = true;
          break;
        }
        const chunk = Buffer.isBuffer(r.value) ? r.value : Buffer.from(r.value);
        head.push(chunk);
        headLen += chunk.length;
      }
      const c = detectCompression(Buffer.concat(head, Math.min(headLen, 16)));
      inner = decompressStream(Readable.from(rest(), { objectMode: false }), c);
      for await (const chunk of inner) yield chunk as Buffer;
    } finally {
      if (inner === undefined) await it.return?.();
      else if (!inner.destroyed) inner.destroy();
    }
  }

  return Readable.from(all(), { objectMode: false });
}
