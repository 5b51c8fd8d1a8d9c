/**
 * Digest strings ("<algorithm>:<hex>") as used by OCI and containerd: parsing, validation and hashing.
 *
 * Only the algorithms go-digest registers by default are accepted, and the hex part must be lowercase and of
 * exactly the algorithm's length, so a digest maps to exactly one blob path.
 */
import { createHash, type Hash } from 'node:crypto';
import { invalidArgument } from '../core/errdefs.js';

export type DigestAlgorithm = 'sha256' | 'sha384' | 'sha512';

/** Length of the hex encoding of each algorithm's sum. */
const hexLength: Record<DigestAlgorithm, number> = { sha256: 64, sha384: 96, sha512: 128 };

export const DIGEST_ALGORITHMS: readonly DigestAlgorithm[] = ['sha256', 'sha384', 'sha512'];

export const isDigestAlgorithm = (s: string): s is DigestAlgorithm => Object.hasOwn(hexLength, s);

const lowerHex = /^[0-9a-f]+$/;

/** True when `hex` is a well-formed encoded sum for `algorithm`. */
export function isValidHex(algorithm: DigestAlgorithm, hex: string): boolean {
  return hex.length === hexLength[algorithm] && lowerHex.test(hex);
}

/** Splits and validates a digest; anything malformed is an 'invalid argument'. */
export function parseDigest(d: string): { algorithm: DigestAlgorithm; hex: string } {
  if (typeof d === 'string') {
    const i = d.indexOf(':');
    if (i > 0) {
      const algorithm = d.slice(0, i);
      const hex = d.slice(i + 1);
      if (isDigestAlgorithm(algorithm) && isValidHex(algorithm, hex)) return { algorithm, hex };
    }
  }
  throw invalidArgument(`invalid digest "${String(d)}"`);
}

export function isValidDigest(d: string): boolean {
  try {
    parseDigest(d);
    return true;
  } catch {
    return false;
  }
}

/** The digest of a whole buffer or string (strings are hashed as UTF-8). */
export function digestOf(data: Uint8Array | string, algorithm: DigestAlgorithm = 'sha256'): string {
  return `${algorithm}:${createHash(algorithm).update(data).digest('hex')}`;
}

/** An incremental digest. digest() does not finish the hash, so writing may continue after it. */
export class Digester {
  readonly algorithm: DigestAlgorithm;
  private hash: Hash;

  constructor(algorithm: DigestAlgorithm = 'sha256') {
    if (!isDigestAlgorithm(algorithm)) throw invalidArgument(`unsupported digest algorithm "${String(algorithm)}"`);
    this.algorithm = algorithm;
    this.hash = createHash(algorithm);
  }

  update(b: Uint8Array): void {
    this.hash.update(b);
  }

  digest(): string {
    return `${this.algorithm}:${this.hash.copy().digest('hex')}`;
  }

  /** An independent copy holding the same state. */
  clone(): Digester {
    const d = Object.create(Digester.prototype) as Digester;
    (d as { algorithm: DigestAlgorithm }).algorithm = this.algorithm;
    d.hash = this.hash.copy();
    return d;
  }

  /** Starts over, as if nothing had been written. */
  reset(): void {
    this.hash = createHash(this.algorithm);
  }
}
