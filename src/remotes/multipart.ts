/**
 * Multipart fetch: one big blob downloaded as several bounded HTTP Range requests at once, handed out as one
 * stream in blob order, so the content writer hashes it as a whole and the ingest stays a plain prefix of the
 * blob (its length is the resume offset, as for every other download).
 *
 * containerd 2.1 added this (#10177: `concurrent_layer_fetch_buffer` bytes per part, up to
 * `max_concurrent_downloads` parts per layer). What this one does differently, and why:
 *
 *  - The decision to split rests on the first response, an open-ended `Range: bytes=<offset>-` request (the
 *    probe): only a 206 whose Content-Range is exactly `<offset>-<size-1>/<size>` (or `/*`) and that says
 *    `Accept-Ranges: bytes` is split; anything else (a 200 with the whole blob, no Accept-Ranges, a content
 *    encoding) is read as one stream, without a second request. It never depends on Content-Length
 *    (containerd #11992: a server without Content-Length made the multipart path fail the pull), and a
 *    registry that ignores Range is detected, not trusted (containerd #12291: a 200 to a part request was
 *    taken as that part, and the blob failed size validation).
 *  - Every part after the probe asks for exactly its bytes, `bytes=<a>-<b>` (containerd asks `bytes=<a>-` for
 *    every part and reads one part's worth, so the server starts sending the whole remainder each time:
 *    containerd #12476). The probe is the one open-ended request, read for the first part only.
 *  - A part that answers 200 (a mirror that ignores Range behind a failover) stops the multipart fetch: the
 *    parts in flight are cancelled and the rest of the blob comes as one stream from the bytes already
 *    handed out, never as a misplaced part.
 *  - No part ever waits for the reader while holding a connection slot, except the part being handed out
 *    (whose reader always makes progress): a part fetched ahead first reserves its bytes from a byte budget,
 *    then takes a slot, reads its whole range into that reservation and frees the slot. So slots cannot all
 *    be held by parts that wait for each other (containerd #12126 and #12205: slots and pipe writers left
 *    held when a worker failed or could not get a slot, so later pulls hung), and memory is bounded by the
 *    budget plus one part's high-water mark per blob being read.
 *  - Every failure ends in one place: the first error destroys the stream with that error (containerd #12205
 *    returned a later "context canceled" instead of the cause), cancels every part, gives their bytes back
 *    to the budget and releases their slots. A part that breaks off mid-way is asked again for its missing
 *    bytes (its own resumes, through the resolver's host failover and retries), not the whole blob.
 *  - Buffers are never pooled or reused (containerd #12685: a pooled buffer returned unreset could corrupt a
 *    later part); each chunk is the network's own buffer, handed out once.
 */
import { Readable } from 'node:stream';
import { StrataError, unavailable } from '../core/errdefs.js';
import type { ByteBudget } from './types.js';

/** containerd's minimum part size: smaller values turn multipart fetch off. */
export const MIN_PART_SIZE = 512;
/** Resumptions of one part after it broke off, before the whole stream fails. */
const MAX_PART_RESUMES = 3;
/** Bytes the part being handed out may get ahead of its reader (it has no reservation of its own). */
const HEAD_HIGH_WATER = 1 << 20;
/** Bytes the stream itself buffers for its reader. */
const STREAM_HIGH_WATER = 256 << 10;

/** A byte allowance shared by multipart fetches; parts fetched ahead of the reader take from it. */
export class Budget implements ByteBudget {
  private used = 0;
  private readonly listeners = new Set<() => void>();

  constructor(readonly capacity: number) {
    if (!Number.isSafeInteger(capacity) || capacity < 0) throw new RangeError(`budget must be a non-negative integer, got ${capacity}`);
  }

  /** Bytes taken right now (for tests and metrics). */
  get inUse(): number {
    return this.used;
  }

  tryTake(n: number): boolean {
    if (this.used + n > this.capacity) return false;
    this.used += n;
    return true;
  }

  give(n: number): void {
    this.used = Math.max(0, this.used - n);
    const waiting = [...this.listeners];
    this.listeners.clear();
    for (const fn of waiting) fn();
  }

  onGive(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => void this.listeners.delete(fn);
  }
}

export interface RangeResponse {
  body: Readable;
  /**
   * The registry answered 206 with exactly the requested range. false: it sent the whole blob (200), and
   * `body` starts at the requested offset (the head dropped by the client).
   */
  ranged: boolean;
  /** The response said `Accept-Ranges: bytes`. */
  acceptRanges: boolean;
}

export interface MultipartEvent {
  type: 'part-retry' | 'fallback';
  part?: number;
  offset: number;
  detail: string;
}

export interface MultipartPlan {
  /** For messages: the digest and media type. */
  what: string;
  size: number;
  /** Where the stream starts (a resumed ingest's offset). */
  start: number;
  partSize: number;
  /** Part requests of this blob in flight at once (downloaded parts waiting in memory do not count). */
  parallelism: number;
  budget: ByteBudget;
  /** The probe's body: an open-ended 206 from `start`; the first part is read from it. */
  probe: Readable;
  /** A bounded range request (through the resolver's hosts, retries and slot limit). */
  open(offset: number, length: number): Promise<RangeResponse>;
  /** One stream from `offset` to the end (the fallback). */
  openSingle(offset: number): Promise<Readable>;
  onEvent?: (e: MultipartEvent) => void;
}

class Part {
  readonly chunks: Buffer[] = [];
  /** Bytes in `chunks`. */
  buffered = 0;
  /** Bytes received so far (handed out or in `chunks`). */
  got = 0;
  done = false;
  /** Bytes taken from the budget for this part (0 for a part started while it was the one being read). */
  reserved = 0;
  resumes = 0;
  body: Readable | undefined;
  private drainWaiter: (() => void) | undefined;

  constructor(
    readonly index: number,
    readonly offset: number,
    readonly length: number,
  ) {}

  drained(): Promise<void> {
    return new Promise((resolve) => (this.drainWaiter = resolve));
  }

  wakeDrain(): void {
    const w = this.drainWaiter;
    this.drainWaiter = undefined;
    w?.();
  }
}

/** The in-order stream over a multipart fetch. See the module comment. */
export class MultipartStream extends Readable {
  private readonly parts: (Part | undefined)[];
  private readonly count: number;
  /** The part being handed out. */
  private head = 0;
  /** Parts started so far (0..launched-1). */
  private launched = 0;
  /** Parts whose requests have not finished (downloading, or waiting for a connection slot). */
  private inFlight = 0;
  /** Bytes handed out: the blob offset the stream has reached. */
  private pos: number;
  private wantMore = false;
  private stopped = false;
  private single: Readable | undefined;
  private fallingBack = false;
  private cancelBudgetWait: (() => void) | undefined;

  constructor(private readonly plan: MultipartPlan) {
    // A little read-ahead so the reader gets several chunks per turn instead of one per _read() call.
    super({ highWaterMark: STREAM_HIGH_WATER });
    this.pos = plan.start;
    this.count = Math.ceil((plan.size - plan.start) / plan.partSize);
    this.parts = new Array<Part | undefined>(this.count);
    this.launch();
  }

  /** Parts the blob was split into (for logs and tests). */
  get partCount(): number {
    return this.count;
  }

  override _read(): void {
    this.wantMore = true;
    if (this.single) this.single.resume();
    else this.pump();
  }

  override _destroy(err: Error | null, cb: (error?: Error | null) => void): void {
    this.stop();
    this.single?.destroy();
    cb(err);
  }

  /** Starts the parts the window and the budget allow. */
  private launch(): void {
    const { plan } = this;
    while (!this.stopped && this.launched < this.count && this.inFlight < plan.parallelism) {
      const i = this.launched;
      const offset = plan.start + i * plan.partSize;
      const length = Math.min(plan.partSize, plan.size - offset);
      let reserved = 0;
      if (i !== this.head) {
        if (!plan.budget.tryTake(length)) {
          this.cancelBudgetWait ??= plan.budget.onGive(() => {
            this.cancelBudgetWait = undefined;
            this.launch();
          });
          return;
        }
        reserved = length;
      }
      const part = new Part(i, offset, length);
      part.reserved = reserved;
      this.parts[i] = part;
      this.launched++;
      this.inFlight++;
      void this.run(part, i === 0 ? plan.probe : undefined).finally(() => {
        this.inFlight--;
        this.launch();
      });
    }
  }

  /** Fetches one part into memory, asking again for its missing bytes when it breaks off. */
  private async run(part: Part, first: Readable | undefined): Promise<void> {
    const { plan } = this;
    let body = first;
    try {
      for (;;) {
        if (!body) {
          const res = await plan.open(part.offset + part.got, part.length - part.got);
          if (this.stopped) {
            res.body.destroy();
            return;
          }
          if (!res.ranged) {
            res.body.destroy();
            this.fallBack(`the registry ignored the Range request for part ${part.index} (answered with the whole blob)`);
            return;
          }
          body = res.body;
        }
        part.body = body;
        let broke: unknown;
        try {
          for await (const c of body as AsyncIterable<Buffer>) {
            let chunk = c;
            const room = part.length - part.got;
            if (chunk.length > room) chunk = chunk.subarray(0, room);
            part.chunks.push(chunk);
            part.buffered += chunk.length;
            part.got += chunk.length;
            if (part.index === this.head) this.notify();
            if (part.got >= part.length || this.stopped) break;
            // The part being handed out has no reservation: it waits for its reader instead of piling up.
            while (part.reserved === 0 && part.buffered >= HEAD_HIGH_WATER && !this.stopped) await part.drained();
            if (this.stopped) break;
          }
        } catch (err) {
          broke = err;
        } finally {
          body.destroy();
          part.body = undefined;
          body = undefined;
        }
        if (this.stopped) return;
        if (part.got >= part.length) {
          part.done = true;
          this.notify();
          return;
        }
        if (broke !== undefined && !(broke instanceof StrataError && broke.kind === 'unavailable')) throw broke;
        if (++part.resumes > MAX_PART_RESUMES) {
          throw broke ?? unavailable(`${plan.what}: part ${part.index} ended at ${part.got} of ${part.length} bytes`);
        }
        plan.onEvent?.({
          type: 'part-retry',
          part: part.index,
          offset: part.offset + part.got,
          detail: broke instanceof Error ? broke.message : `ended at ${part.got} of ${part.length} bytes`,
        });
      }
    } catch (err) {
      if (this.stopped) return;
      this.destroy(err instanceof Error ? err : new Error(String(err)));
    }
  }

  private notify(): void {
    if (this.wantMore && !this.single) this.pump();
  }

  /** Hands out what the part being read has, in order, as far as the reader wants. */
  private pump(): void {
    while (!this.destroyed && !this.fallingBack) {
      if (this.head >= this.count) {
        this.stop();
        this.push(null);
        return;
      }
      // Not started yet: a part that just finished still counted as in flight. launch() starts it when that
      // part's request has wound up, and its bytes then notify().
      const part = this.parts[this.head];
      if (!part) return;
      const chunk = part.chunks.shift();
      if (chunk) {
        part.buffered -= chunk.length;
        part.wakeDrain();
        this.pos += chunk.length;
        this.wantMore = this.push(chunk);
        if (!this.wantMore) return;
        continue;
      }
      if (!part.done) return; // notify() resumes when bytes arrive
      if (part.reserved > 0) this.plan.budget.give(part.reserved);
      part.reserved = 0;
      this.parts[this.head] = undefined;
      this.head++;
      this.launch();
    }
  }

  /** Cancels every part and gives their bytes back. Idempotent. */
  private stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.cancelBudgetWait?.();
    this.cancelBudgetWait = undefined;
    for (let i = this.head; i < this.launched; i++) {
      const part = this.parts[i];
      if (!part) continue;
      part.body?.destroy();
      part.wakeDrain();
      if (part.reserved > 0) this.plan.budget.give(part.reserved);
      part.reserved = 0;
      this.parts[i] = undefined;
    }
  }

  /** Ranges stopped working: the rest of the blob comes as one stream from the bytes handed out so far. */
  private fallBack(why: string): void {
    if (this.stopped || this.fallingBack) return;
    this.fallingBack = true;
    this.stop();
    const from = this.pos;
    this.plan.onEvent?.({ type: 'fallback', offset: from, detail: why });
    this.plan.openSingle(from).then(
      (body) => {
        if (this.destroyed) {
          body.destroy();
          return;
        }
        this.single = body;
        body.on('data', (c: Buffer) => {
          if (!this.push(c)) body.pause();
        });
        body.once('end', () => this.push(null));
        body.once('error', (err) => this.destroy(err));
        if (!this.wantMore) body.pause();
      },
      (err: unknown) => this.destroy(err instanceof Error ? err : new Error(String(err))),
    );
  }
}
