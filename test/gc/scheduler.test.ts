/**
 * The GC scheduler (src/gc/scheduler.ts).
 *
 * The trigger rules (startup delay, thresholds, pause backoff, coalescing, failures, close) are observed with a
 * counting FAKE collector: it only records when it is called and returns a report with a chosen pause, so the
 * rules can be checked without depending on what a real collection costs. Everything about what a collection
 * removes (the mutation feed from the metadata store, a synchronous lease delete, an expired lease collected on
 * time) uses a real MetadataStore on a temp dir and the real MetadataCollector.
 *
 * Timing: only generous deadlines for "eventually happens", and lower bounds where the rule is a lower bound
 * (timers never fire early). "Does not happen" is checked over a window far shorter than the configured delay.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { parseGoDuration, Scheduler, schedulerDefaults, schedulerSettings, type SchedulerConfig } from '../../src/gc/scheduler.js';
import type { Collector, GCReport } from '../../src/gc/types.js';
import { MetadataCollector } from '../../src/gc/index.js';
import { MetadataStore } from '../../src/metadata/index.js';
import { LABEL_GC_EXPIRE } from '../../src/core/labels.js';
import { openLocalContentStore } from '../../src/content/local.js';
import { tempDir, type TempDir } from '../helpers/temp.js';
import { sha256 } from '../helpers/data.js';

/** A collector that only counts (see the header): each call records its start and end time. */
class CountingCollector implements Collector {
  calls: { start: number; end: number; report: GCReport }[] = [];
  started = 0;
  /** Reported pause of each run (drives the backoff). */
  pauseMs = 0;
  /** Real time each run takes. */
  durationMs = 0;
  fail: Error | undefined;

  async collect(): Promise<GCReport> {
    const start = Date.now();
    this.started++;
    if (this.durationMs > 0) await sleep(this.durationMs);
    if (this.fail) {
      this.calls.push({ start, end: Date.now(), report: undefined as unknown as GCReport });
      throw this.fail;
    }
    const report: GCReport = { dryRun: false, pauseMs: this.pauseMs, elapsedMs: this.durationMs, removed: [], expiredLeases: [], errors: [] };
    this.calls.push({ start, end: Date.now(), report });
    return report;
  }
  async why(): Promise<never> {
    throw new Error('not used');
  }
  async prune(): Promise<never> {
    throw new Error('not used');
  }
  get count(): number {
    return this.calls.length;
  }
}

const schedulers: Scheduler[] = [];
const dirs: TempDir[] = [];
const stores: MetadataStore[] = [];

function scheduler(c: Collector, config: Partial<SchedulerConfig>, opts: ConstructorParameters<typeof Scheduler>[2] = {}): Scheduler {
  const s = new Scheduler(c, config, opts);
  schedulers.push(s);
  return s;
}

afterEach(async () => {
  for (const s of schedulers.splice(0)) await s.close();
  for (const m of stores.splice(0)) m.close();
  for (const d of dirs.splice(0)) await d.cleanup();
});

async function eventually(what: string, cond: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`);
    await sleep(10);
  }
}

describe('configuration', () => {
  it("has containerd's defaults and clamps as containerd does", () => {
    expect(schedulerDefaults()).toEqual({
      pause_threshold: 0.02,
      deletion_threshold: 0,
      mutation_threshold: 100,
      schedule_delay: '0ms',
      startup_delay: '100ms',
    });
    expect(schedulerSettings()).toEqual({ pauseThreshold: 0.02, deletionThreshold: 0, mutationThreshold: 100, scheduleDelayMs: 0, startupDelayMs: 100 });
    const s = schedulerSettings({ pause_threshold: 0.9, mutation_threshold: -3, schedule_delay: '-1s', startup_delay: '1m30s' });
    expect(s).toMatchObject({ pauseThreshold: 0.5, mutationThreshold: 0, scheduleDelayMs: 0, startupDelayMs: 90_000 });
  });

  it('reads Go durations and refuses what is not one', () => {
    expect(parseGoDuration('0')).toBe(0);
    expect(parseGoDuration('0ms')).toBe(0);
    expect(parseGoDuration('100ms')).toBe(100);
    expect(parseGoDuration('1.5s')).toBe(1500);
    expect(parseGoDuration('1h2m')).toBe(3_720_000);
    expect(parseGoDuration('250us')).toBeCloseTo(0.25);
    for (const bad of ['', '10', 'ms', '1d', '1 s']) expect(() => parseGoDuration(bad), bad).toThrow(/invalid duration/);
    expect(() => schedulerSettings({ startup_delay: 100 as unknown as string })).toThrow(/startup_delay must be a duration/);
    expect(() => schedulerSettings({ deletion_threshold: 1.5 })).toThrow(/deletion_threshold must be a whole number/);
  });
});

describe('trigger rules (counting fake collector)', () => {
  it('runs once startup_delay after start, then stays idle without changes', async () => {
    const c = new CountingCollector();
    const t0 = Date.now();
    scheduler(c, { startup_delay: '150ms' });
    await eventually('the startup run', () => c.count === 1);
    expect(c.calls[0]!.start - t0).toBeGreaterThanOrEqual(145);
    await sleep(400);
    expect(c.count).toBe(1);
  });

  it('runs nothing without a startup delay until something makes a run due', async () => {
    const c = new CountingCollector();
    const s = scheduler(c, { startup_delay: '0s' });
    await sleep(300);
    expect(c.count).toBe(0);
    s.mutated(false); // one mutation of 100: not due
    await sleep(200);
    expect(c.count).toBe(0);
    s.mutated(true); // a deletion (deletion_threshold 0): due, and nothing is scheduled yet -> now
    await eventually('a run after the deletion', () => c.count === 1);
  });

  it('makes a run due after mutation_threshold mutations, and never on mutations with 0', async () => {
    const c = new CountingCollector();
    const s = scheduler(c, { startup_delay: '0s', mutation_threshold: 5 });
    for (let i = 0; i < 4; i++) s.mutated(false);
    await sleep(200);
    expect(c.count).toBe(0);
    s.mutated(false);
    await eventually('a run at the 5th mutation', () => c.count === 1);
    // After a run (pause 0: no backoff), the count starts again.
    for (let i = 0; i < 4; i++) s.mutated(false);
    await sleep(200);
    expect(c.count).toBe(1);
    s.mutated(false);
    await eventually('a run at the next 5th mutation', () => c.count === 2);

    const c0 = new CountingCollector();
    const s0 = scheduler(c0, { startup_delay: '0s', mutation_threshold: 0 });
    for (let i = 0; i < 500; i++) s0.mutated(false);
    await sleep(300);
    expect(c0.count).toBe(0);
  });

  it('holds a due run back by the pause backoff: not before avg pause / pause_threshold', async () => {
    const c = new CountingCollector();
    // pause 30 ms at threshold 0.1: interval = 30 / 0.1 - 30 = 270 ms after the end of a run.
    c.pauseMs = 30;
    const s = scheduler(c, { startup_delay: '0s', pause_threshold: 0.1 });
    await s.scheduleAndWait();
    const end = c.calls[0]!.end;
    s.mutated(true);
    await eventually('the backed-off run', () => c.count === 2);
    expect(c.calls[1]!.start - end).toBeGreaterThanOrEqual(265);
  });

  it('waits out a long backoff for deletions below deletion_threshold, and runs at once when it is reached', async () => {
    const c = new CountingCollector();
    // pause 1 s at 0.02: the next automatic run would be 49 s later.
    c.pauseMs = 1000;
    const s = scheduler(c, { startup_delay: '0s', deletion_threshold: 3 });
    await s.scheduleAndWait();
    s.mutated(true);
    s.mutated(true);
    await sleep(500);
    expect(c.count).toBe(1);
    s.mutated(true);
    await eventually('a run at the 3rd deletion', () => c.count === 2);
  });

  it("counts every mutation while dirty as a deletion (containerd's dirty flag), until the next run", async () => {
    const c = new CountingCollector();
    c.pauseMs = 1000;
    const s = scheduler(c, { startup_delay: '0s', deletion_threshold: 3 });
    await s.scheduleAndWait();
    s.mutated(false);
    s.mutated(false);
    await sleep(300);
    expect(c.count).toBe(1); // clean: mutations only
    s.mutated(true); // dirty from here: 1
    s.mutated(false); // 2
    await sleep(300);
    expect(c.count).toBe(1);
    s.mutated(false); // 3
    await eventually('a run at the 3rd dirty mutation', () => c.count === 2);
  });

  it('scheduleAndWait ignores the backoff and resolves with the report of the run', async () => {
    const c = new CountingCollector();
    c.pauseMs = 1000; // 49 s backoff
    const s = scheduler(c, { startup_delay: '0s' });
    const first = await s.scheduleAndWait();
    expect(first).toBe(c.calls[0]!.report);
    const second = await s.scheduleAndWait();
    expect(second).toBe(c.calls[1]!.report);
    expect(c.count).toBe(2);
  });

  it('applies schedule_delay to a requested run', async () => {
    const c = new CountingCollector();
    const s = scheduler(c, { startup_delay: '0s', schedule_delay: '300ms' });
    const t0 = Date.now();
    await s.scheduleAndWait();
    expect(c.calls[0]!.start - t0).toBeGreaterThanOrEqual(295);
  });

  it('coalesces concurrent scheduleAndWait calls into one run; calls during a run get the next one', async () => {
    const c = new CountingCollector();
    c.durationMs = 300;
    const s = scheduler(c, { startup_delay: '0s' });
    const firstWave = [s.scheduleAndWait(), s.scheduleAndWait(), s.scheduleAndWait()];
    // While the first run is in progress (it takes 300 ms), two more requests.
    await eventually('the first run to start', () => c.started === 1);
    const secondWave = [s.scheduleAndWait(), s.scheduleAndWait()];
    const a = await Promise.all(firstWave);
    const b = await Promise.all(secondWave);
    expect(c.count).toBe(2);
    expect(new Set(a).size).toBe(1);
    expect(new Set(b).size).toBe(1);
    expect(a[0]).toBe(c.calls[0]!.report);
    expect(b[0]).toBe(c.calls[1]!.report);
    // The second run started after the first ended: never two at once.
    expect(c.calls[1]!.start).toBeGreaterThanOrEqual(c.calls[0]!.end);
  });

  it('an automatic run also resolves waiters that were queued before it started', async () => {
    const c = new CountingCollector();
    const s = scheduler(c, { startup_delay: '0s', schedule_delay: '200ms' });
    s.mutated(true); // due now (no run yet, nothing scheduled): scheduled after schedule_delay
    const r = await s.scheduleAndWait();
    expect(c.count).toBe(1);
    expect(r).toBe(c.calls[0]!.report);
  });

  it('fails the waiters of a failed run, keeps what made it due, and retries', async () => {
    const c = new CountingCollector();
    c.fail = new Error('disk on fire');
    const s = scheduler(c, { startup_delay: '0s', pause_threshold: 0 });
    await expect(s.scheduleAndWait()).rejects.toThrow(/garbage collection failed: disk on fire/);
    const failedAt = c.calls[0]!.end;
    // Retried after the interval (1 s with pause_threshold 0) + 1 s, without any new request; still failing.
    await eventually('the first retry', () => c.count === 2, 15_000);
    expect(c.calls[1]!.start - failedAt).toBeGreaterThanOrEqual(1990);
    c.fail = undefined;
    await eventually('the second retry', () => c.count === 3, 15_000);
    expect(s.metrics().runs).toBe(1);
  });

  it('close() lets a running collection finish, fails later waiters, and stops the timers', async () => {
    const c = new CountingCollector();
    c.durationMs = 200;
    const s = scheduler(c, { startup_delay: '0s' });
    const running = s.scheduleAndWait();
    await sleep(50);
    const queued = s.scheduleAndWait();
    await s.close();
    await expect(running).resolves.toBe(c.calls[0]!.report);
    await expect(queued).rejects.toThrow(/closed/);
    await expect(s.scheduleAndWait()).rejects.toThrow(/closed/);
    s.mutated(true);
    await sleep(200);
    expect(c.count).toBe(1);
  });

  it('keeps metrics: runs, pause total and last, removed objects by type and bytes', async () => {
    const reports: GCReport[] = [
      {
        dryRun: false,
        pauseMs: 2,
        elapsedMs: 3,
        removed: [
          { type: 'content', namespace: 'a', id: 'sha256:1', size: 100 },
          { type: 'snapshot', namespace: 'a', snapshotter: 'overlayfs', id: 'k', size: 4096 },
        ],
        expiredLeases: [{ type: 'lease', namespace: 'a', id: 'old' }],
        errors: [],
      },
      { dryRun: false, pauseMs: 5, elapsedMs: 6, removed: [{ type: 'lease', namespace: 'b', id: 'x', size: 0 }], expiredLeases: [{ type: 'lease', namespace: 'b', id: 'x' }], errors: [] },
    ];
    let i = 0;
    const fake: Collector = {
      collect: async () => reports[i++]!,
      why: async () => {
        throw new Error('not used');
      },
      prune: async () => {
        throw new Error('not used');
      },
    };
    const s = scheduler(fake, { startup_delay: '0s' });
    expect(s.metrics()).toMatchObject({ runs: 0, pauseMsTotal: 0, pauseMsLast: 0, removedBytes: 0 });
    expect(s.metrics().lastRunAt).toBeUndefined();
    await s.scheduleAndWait();
    await s.scheduleAndWait();
    const m = s.metrics();
    expect(m).toMatchObject({ runs: 2, pauseMsTotal: 7, pauseMsLast: 5, removedBytes: 4196 });
    // The expired lease "old" counts as a removed lease; "x" is listed in both and counts once.
    expect(m.removedObjects).toEqual({ content: 1, ingest: 0, snapshot: 1, image: 0, lease: 2, container: 0 });
    expect(m.lastRunAt).toBeInstanceOf(Date);
  });

  it('sets a timer for the next lease expiry and asks for a run when it passes', async () => {
    const c = new CountingCollector();
    c.pauseMs = 1000; // 49 s backoff: only the expiry can explain a second run
    let expiry: number | undefined = Date.now() + 400;
    const s = scheduler(c, { startup_delay: '0s' }, { nextExpiry: () => (expiry !== undefined && expiry > Date.now() ? expiry : undefined) });
    await s.scheduleAndWait();
    const at = expiry!;
    await eventually('a run at the expiry', () => c.count === 2);
    expect(c.calls[1]!.start).toBeGreaterThanOrEqual(at);
    // A later expiry set by a write is picked up after the write (mutated re-reads it).
    expiry = Date.now() + 300;
    s.mutated(false);
    await eventually('a run at the new expiry', () => c.count === 3);
    expiry = undefined;
    await sleep(400);
    expect(c.count).toBe(3);
  });
});

// ---------------------------------------------------------------------------------------------------------------
// With a real metadata store and the real collector.

async function openStore(): Promise<{ md: MetadataStore; contentRoot: string }> {
  const d = await tempDir('strata-gc-sched-');
  dirs.push(d);
  const contentRoot = join(d.path, 'content');
  const md = MetadataStore.open(join(d.path, 'meta.db'), await openLocalContentStore(contentRoot));
  stores.push(md);
  return { md, contentRoot };
}

async function writeBlob(md: MetadataStore, namespace: string, data: string, lease?: string): Promise<string> {
  const digest = sha256(data);
  const w = await md.content.bind(lease ? { namespace, lease } : { namespace }).writer({ ref: `ref-${digest}`, expected: digest });
  await w.write(Buffer.from(data));
  await w.commit(Buffer.byteLength(data), digest);
  await w.close();
  return digest;
}

const blobPath = (root: string, digest: string) => join(root, 'blobs', 'sha256', digest.slice('sha256:'.length));

describe('with a real metadata store and collector', () => {
  it('feeds mutations from the stores: writes as mutations, removals as deletions', async () => {
    const { md } = await openStore();
    const seen: boolean[] = [];
    const off = md.onMutation((d) => seen.push(d));
    md.leases.create('ns', 'l1', {});
    md.leases.addResource('ns', 'l1', { type: 'content', id: sha256('x') });
    md.leases.deleteResource('ns', 'l1', { type: 'content', id: sha256('x') });
    const digest = await writeBlob(md, 'ns', 'hello'); // writer (ingest row) + commit
    await md.content.bind({ namespace: 'ns' }).update({ digest, labels: { a: 'b' } }, ['labels.a']);
    const images = md.images.bind({ namespace: 'ns' });
    await images.create({ name: 'img', target: { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest, size: 5 } });
    await images.delete('img');
    await md.content.bind({ namespace: 'ns' }).delete(digest);
    md.leases.delete('ns', 'l1');
    expect(seen).toEqual([false, false, true, false, false, false, false, true, true, true]);
    off();
    md.leases.create('ns', 'l2', {});
    expect(seen).toHaveLength(10);
  });

  it('finds the next lease expiry across namespaces', async () => {
    const { md } = await openStore();
    expect(md.leases.nextExpiry()).toBeUndefined();
    const now = Date.now();
    md.leases.create('a', 'past', { [LABEL_GC_EXPIRE]: new Date(now - 60_000).toISOString() });
    md.leases.create('a', 'later', { [LABEL_GC_EXPIRE]: new Date(now + 120_000).toISOString() });
    md.leases.create('b', 'soon', { [LABEL_GC_EXPIRE]: new Date(now + 60_000).toISOString() });
    md.leases.create('b', 'never', {});
    expect(md.leases.nextExpiry(now)).toBe(now + 60_000);
    expect(md.leases.nextExpiry(now + 90_000)).toBe(now + 120_000);
    expect(md.leases.nextExpiry(now + 200_000)).toBeUndefined();
  });

  it('answers the next lease expiry right after leases are created and deleted, and for an earlier moment', async () => {
    const { md } = await openStore();
    const now = Date.now();
    md.leases.create('a', 'later', { [LABEL_GC_EXPIRE]: new Date(now + 120_000).toISOString() });
    expect(md.leases.nextExpiry(now)).toBe(now + 120_000);
    expect(md.leases.nextExpiry(now + 1000)).toBe(now + 120_000);
    md.leases.create('b', 'soon', { [LABEL_GC_EXPIRE]: new Date(now + 60_000).toISOString() });
    expect(md.leases.nextExpiry(now + 1000)).toBe(now + 60_000);
    md.leases.delete('b', 'soon');
    expect(md.leases.nextExpiry(now + 1000)).toBe(now + 120_000);
    // Asked about a moment before the last answer's: a lease that expires in between counts again.
    md.leases.create('c', 'between', { [LABEL_GC_EXPIRE]: new Date(now + 500).toISOString() });
    expect(md.leases.nextExpiry(now + 1000)).toBe(now + 120_000);
    expect(md.leases.nextExpiry(now)).toBe(now + 500);
    expect(md.leases.nextExpiry(now + 130_000)).toBeUndefined();
  });

  it('collects what a deleted lease held when a synchronous delete waits for the scheduler', async () => {
    const { md, contentRoot } = await openStore();
    const s = scheduler(new MetadataCollector(md), {}, { nextExpiry: () => md.leases.nextExpiry() });
    const off = md.onMutation((d) => s.mutated(d));
    try {
      md.leases.create('default', 'hold', {});
      const digest = await writeBlob(md, 'default', 'held by a lease', 'hold');
      expect(existsSync(blobPath(contentRoot, digest))).toBe(true);
      md.leases.delete('default', 'hold');
      const report = await s.scheduleAndWait();
      expect(report.removed).toContainEqual(expect.objectContaining({ type: 'content', namespace: 'default', id: digest }));
      expect(existsSync(blobPath(contentRoot, digest))).toBe(false);
      await expect(md.content.bind({ namespace: 'default' }).info(digest)).rejects.toThrow(/not found/);
    } finally {
      off();
    }
  });

  it('collects an expired lease on time, with no other activity', async () => {
    const { md, contentRoot } = await openStore();
    // Defaults (startup run after 100 ms, mutation threshold 100): nothing but the expiry can trigger a run
    // after the startup one, since the test makes a handful of writes and no deletion.
    const s = scheduler(new MetadataCollector(md), {}, { nextExpiry: () => md.leases.nextExpiry() });
    const off = md.onMutation((d) => s.mutated(d));
    try {
      const expires = Date.now() + 1500;
      md.leases.create('default', 'short', { [LABEL_GC_EXPIRE]: new Date(expires).toISOString() });
      const digest = await writeBlob(md, 'default', 'only the short lease holds this', 'short');
      const path = blobPath(contentRoot, digest);
      expect(existsSync(path)).toBe(true);
      await sleep(1000);
      expect(existsSync(path)).toBe(true); // not expired yet
      await eventually('the blob of the expired lease to be collected', () => !existsSync(path), 10_000);
      expect(Date.now()).toBeGreaterThanOrEqual(expires);
      expect(md.leases.list('default').map((l) => l.id)).not.toContain('short');
      await expect(md.content.bind({ namespace: 'default' }).info(digest)).rejects.toThrow(/not found/);
      expect(s.metrics().removedObjects.lease).toBeGreaterThanOrEqual(1);
      expect(s.metrics().removedObjects.content).toBeGreaterThanOrEqual(1);
    } finally {
      off();
    }
  });
});
