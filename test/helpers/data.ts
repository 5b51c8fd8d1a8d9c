/** Deterministic test data and digests. */
import { createHash } from 'node:crypto';

export const sha256 = (b: Uint8Array | string) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** `size` bytes of reproducible pseudo-random data, in `chunk`-sized pieces. */
export function* pseudoRandom(size: number, chunk = 1 << 20, seed = 1): Generator<Buffer> {
  let x = seed >>> 0 || 1;
  for (let done = 0; done < size; done += chunk) {
    const n = Math.min(chunk, size - done);
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i += 4) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      b.writeUInt32LE(x >>> 0, i <= n - 4 ? i : n - 4);
    }
    yield b;
  }
}

export function digestOfChunks(chunks: Iterable<Buffer>): string {
  const h = createHash('sha256');
  for (const c of chunks) h.update(c);
  return `sha256:${h.digest('hex')}`;
}
