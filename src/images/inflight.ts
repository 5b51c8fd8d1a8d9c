/**
 * Work that concurrent transfers in one daemon share, as containerd's share it through its content store's
 * ingest locks (the second writer of a ref gets UNAVAILABLE and waits for the first, remotes/handlers.go
 * fetch) and its unpacker's per-chain serialisation:
 *
 *  - a blob download: keyed by digest, across namespaces. The first pull to want a digest downloads it; the
 *    others wait for that download to end, then run their own fetch, which finds the blob (same namespace:
 *    ALREADY_EXISTS, and the blob is put under their lease) or adopts the bytes on disk (another namespace)
 *    without a byte from the registry. If the download failed they try themselves, one at a time: each
 *    waiter's outcome is its own attempt's, never another pull's error.
 *  - a layer unpack: keyed by snapshotter, namespace and chainID (snapshots are namespaced). One pull at a
 *    time checks, extracts and commits a chain; the next one in then finds the snapshot committed and only
 *    puts it under its own lease.
 *
 * One `SharedWork` per daemon (ImageTransfers owns it).
 */

export class SharedWork {
  private readonly downloads = new Map<string, Promise<unknown>>();
  private readonly unpacks = new Map<string, Promise<unknown>>();

  /**
   * Runs `fetch` for `digest` once no download of it is in flight. `onWait` is called when this caller has to
   * wait for another pull's download first.
   */
  async download<T>(digest: string, fetch: () => Promise<T>, onWait?: () => void): Promise<T> {
    let waited = false;
    for (;;) {
      const current = this.downloads.get(digest);
      if (!current) break;
      if (!waited) {
        waited = true;
        onWait?.();
      }
      let failed = false;
      await current.catch(() => (failed = true));
      // The download is in: our own fetch finds the blob (or adopts it) without downloading. Run it outside
      // the map so the other waiters do not queue behind this cheap step.
      if (!failed) return fetch();
      // It failed: the first waiter back in the loop takes over; the rest wait for that attempt.
    }
    return this.lead(this.downloads, digest, fetch);
  }

  /** Runs `fn` with the unpack of `key` (snapshotter, namespace, chainID) to itself. */
  async unpack<T>(key: string, fn: () => Promise<T>): Promise<T> {
    for (;;) {
      const current = this.unpacks.get(key);
      if (!current) break;
      await current.catch(() => undefined);
    }
    return this.lead(this.unpacks, key, fn);
  }

  /** Downloads and unpacks in flight (for tests and debugging). */
  get size(): { downloads: number; unpacks: number } {
    return { downloads: this.downloads.size, unpacks: this.unpacks.size };
  }

  private async lead<T>(map: Map<string, Promise<unknown>>, key: string, fn: () => Promise<T>): Promise<T> {
    // Registered before fn's first await, so nobody else can take the key in between.
    const p = Promise.resolve().then(fn);
    map.set(key, p);
    try {
      return await p;
    } finally {
      if (map.get(key) === p) map.delete(key);
    }
  }
}
