/**
 * The fallback of a mounted layer whose Range reads fail (lazyfs.ts): the whole blob downloaded once, in one
 * ordinary GET (through the same resolver: mirrors, credentials, retries), to `<cacheDir>/blob`, checked against
 * the layer's digest at the end. Reads are served from the file as soon as the bytes they need have arrived, so
 * a reader waits for the download to reach its chunk, not for the whole layer; each chunk is still checked
 * against its TOC digest by the reader (EstargzLayer.readChunk). A download that stalls (no byte for
 * `stallMs`), ends short or does not match the digest fails every waiting and later read.
 */
import { createHash } from 'node:crypto';
import { closeSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import type { Readable } from 'node:stream';
import { dataLoss, unavailable } from '../../core/errdefs.js';

export class WholeBlob {
  private have = 0;
  private failure: Error | undefined;
  private finished = false;
  private readonly waiters = new Set<() => void>();
  private fd: number | undefined;
  private stream: Readable | undefined;
  private stopped = false;

  private constructor(
    private readonly path: string,
    private readonly size: number,
    private readonly digest: string,
  ) {}

  /** Starts the download (`open` makes the request) and returns at once. */
  static start(open: () => Promise<Readable>, path: string, size: number, digest: string, stallMs: number): WholeBlob {
    const w = new WholeBlob(path, size, digest);
    void w.run(open, stallMs);
    return w;
  }

  /** Whether the download failed (a later read may start a new one). */
  get failed(): boolean {
    return this.failure !== undefined;
  }

  /** Bytes of the blob on disk so far. */
  get downloaded(): number {
    return this.have;
  }

  private async run(open: () => Promise<Readable>, stallMs: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    let stalled: Error | undefined;
    // No answer (headers) or no byte for stallMs: the download fails.
    const stall = () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        stalled = unavailable(`no byte of the layer for ${stallMs} ms`);
        this.stream?.destroy(stalled);
        this.fail(stalled);
      }, stallMs);
    };
    try {
      this.fd = openSync(this.path, 'w+', 0o600);
      const hash = createHash(this.digest.split(':')[0] === 'sha512' ? 'sha512' : 'sha256');
      stall();
      const stream = await open();
      this.stream = stream;
      if (stalled || this.stopped) {
        stream.destroy();
        throw stalled ?? unavailable('the layer was unmounted');
      }
      for await (const chunk of stream as AsyncIterable<Buffer>) {
        stall();
        let off = 0;
        while (off < chunk.length) off += writeSync(this.fd, chunk, off, chunk.length - off, this.have + off);
        hash.update(chunk);
        this.have += chunk.length;
        this.wake();
      }
      if (this.have !== this.size) throw unavailable(`the download ended after ${this.have} of ${this.size} bytes`);
      const got = `${this.digest.split(':')[0]}:${hash.digest('hex')}`;
      if (got !== this.digest) throw dataLoss(`the downloaded layer is ${got}, not ${this.digest}`);
      this.finished = true;
    } catch (err) {
      this.fail(err);
    } finally {
      clearTimeout(timer);
      this.wake();
    }
  }

  private fail(err: unknown): void {
    if (this.failure || this.finished) return;
    this.failure = err instanceof Error ? err : new Error(String(err));
    this.have = 0;
    this.close();
    rmSync(this.path, { force: true });
    this.wake();
  }

  private wake(): void {
    for (const w of [...this.waiters]) w();
  }

  /** Bytes [offset, offset+length) of the blob (fewer at its end), once downloaded. */
  async readAt(offset: number, length: number): Promise<Buffer> {
    const end = Math.min(this.size, offset + length);
    while (!this.failure && this.have < end) {
      await new Promise<void>((resolve) => {
        const w = () => {
          this.waiters.delete(w);
          resolve();
        };
        this.waiters.add(w);
      });
    }
    if (this.failure) throw this.failure;
    const buf = Buffer.alloc(Math.max(0, end - offset));
    let done = 0;
    while (done < buf.length) {
      const n = readSync(this.fd!, buf, done, buf.length - done, offset + done);
      if (n === 0) break;
      done += n;
    }
    return buf.subarray(0, done);
  }

  /** Whether every byte is here and checked. */
  get complete(): boolean {
    return this.finished;
  }

  /** Stops the download (the layer is unmounted); waiting reads fail. */
  stop(): void {
    this.stopped = true;
    this.stream?.destroy(unavailable('the layer was unmounted'));
    this.fail(unavailable('the layer was unmounted'));
    this.close();
  }

  private close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }
}
