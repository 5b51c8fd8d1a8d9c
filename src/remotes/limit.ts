/**
 * A counting semaphore: at most `max` holders at once, waiters served in arrival order. The release
 * function a holder gets is idempotent, so it can be wired to several stream events at once.
 */
export type Release = () => void;

export class Limiter {
  private active = 0;
  private readonly waiting: Array<() => void> = [];

  constructor(readonly max: number) {
    if (!Number.isInteger(max) || max < 1) throw new RangeError(`concurrency limit must be a positive integer, got ${max}`);
  }

  /** Holders right now (for tests and logs). */
  get inUse(): number {
    return this.active;
  }

  /** Waiters right now. */
  get queued(): number {
    return this.waiting.length;
  }

  async acquire(): Promise<Release> {
    if (this.active < this.max) {
      this.active++;
    } else {
      // The releasing holder hands its slot straight to us (active stays the same).
      await new Promise<void>((resolve) => this.waiting.push(resolve));
    }
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.waiting.shift();
      if (next) next();
      else this.active--;
    };
  }

  /** Runs `fn` holding a slot. */
  async run<T>(fn: () => Promise<T>): Promise<T> {
    const release = await this.acquire();
    try {
      return await fn();
    } finally {
      release();
    }
  }
}
