/**
 * kill -9 during a collection: a child process (test/gc/fixtures/collect-child.mjs, on the compiled dist/)
 * collects a store full of garbage and is killed with SIGKILL at a random point (right after it starts, or
 * after a random number of removals). After each kill the store is consistent: every content row has its blob,
 * every snapshot row its backend snapshot, every lease resource its lease, every backend snapshot its parent,
 * and what roots keep is intact. A collection afterwards finishes the job: no orphan is left on disk.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { Mount } from '../../src/core/mount.js';
import { REPO } from '../helpers/paths.js';
import { fsckRoot } from '../helpers/fsck.js';
import { tempDir, type TempDir } from '../helpers/temp.js';
import { backendKeys, entries, filesUnder, hasBlob, inconsistencies, openStore, paths, SNAPSHOTTER, startIngest, writeBlob, type Store } from './harness.js';

const CHILD = join(REPO, 'test/gc/fixtures/collect-child.mjs');

let dir: TempDir;
let root: string;

beforeAll(async () => {
  dir = await tempDir('strata-gc-crash-');
  root = join(dir.path, 'store');
});

afterAll(async () => {
  await dir.cleanup();
});

const upperOf = (mounts: Mount[]) => mounts[0]!.options.find((o) => o.startsWith('upperdir='))!.slice('upperdir='.length);

interface Kept {
  blobs: string[];
  snapshots: string[];
}

/** Objects the roots keep: an image (two blobs and a chain through labels) and a lease (an active snapshot, an ingest). */
async function makeKept(s: Store): Promise<Kept> {
  const c = s.content('keep');
  const sn = s.snapshots('keep');
  const m = await sn.prepare('keep-a', '');
  await writeFile(join(m[0]!.source, 'kept'), 'kept data');
  await sn.commit('keep-base', 'keep-a');
  const m2 = await sn.prepare('keep-b', 'keep-base');
  await writeFile(join(upperOf(m2), 'kept-top'), 'kept top');
  await sn.commit('keep-top', 'keep-b');
  const config = await writeBlob(c, 'kept config', { [`containerd.io/gc.ref.snapshot.${SNAPSHOTTER}`]: 'keep-top' });
  const manifest = await writeBlob(c, 'kept manifest', { 'containerd.io/gc.ref.content.config': config });
  await s.images('keep').create({ name: 'keep', target: { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: manifest, size: 13 } });
  s.md.leases.create('keep', 'hold');
  await s.snapshots('keep', 'hold').prepare('held', 'keep-top');
  await startIngest(s.content('keep', 'hold'), 'held-upload', 'half of an upload');
  return { blobs: [config, manifest], snapshots: ['keep-base', 'keep-top', 'held'] };
}

/** Garbage: chains of three snapshots with data, blobs and ingests, all under a lease that is then deleted. */
async function makeGarbage(s: Store, round: number): Promise<number> {
  const lease = `garbage-${round}`;
  s.md.leases.create('junk', lease);
  const c = s.content('junk', lease);
  const sn = s.snapshots('junk', lease);
  let n = 0;
  for (let i = 0; i < 30; i++) {
    const k = `${round}-${i}`;
    const m = await sn.prepare(`a-${k}`, '');
    await writeFile(join(m[0]!.source, 'f'), randomBytes(4096));
    await sn.commit(`base-${k}`, `a-${k}`);
    const m2 = await sn.prepare(`b-${k}`, `base-${k}`);
    await writeFile(join(upperOf(m2), 'g'), randomBytes(2048));
    await sn.commit(`top-${k}`, `b-${k}`);
    await sn.prepare(`active-${k}`, `top-${k}`);
    n += 3;
  }
  for (let i = 0; i < 80; i++) {
    await writeBlob(c, randomBytes(1024 + i));
    n++;
  }
  for (let i = 0; i < 10; i++) {
    await startIngest(c, `upload-${round}-${i}`, randomBytes(512).toString('hex'));
    n++;
  }
  s.md.leases.delete('junk', lease);
  return n;
}

/**
 * Runs the collector child and SIGKILLs it: `afterRemovals` removals into a collection, or `afterMs` after it
 * is ready. Returns how many removals it logged and whether it had finished a whole collection.
 */
async function collectAndKill(kill: { afterRemovals: number } | { afterMs: number }): Promise<{ removals: number; finished: boolean; signal: string | null }> {
  const child = spawn(process.execPath, [CHILD, REPO, root], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<string | null>((resolve) => child.once('exit', (_code, signal) => resolve(signal)));
  let removals = 0;
  let finished = false;
  const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
  for await (const line of createInterface({ input: child.stdout })) {
    if (line === 'ready' && 'afterMs' in kill) setTimeout(() => child.kill('SIGKILL'), kill.afterMs);
    if (line.startsWith('collected')) {
      finished = true;
      child.kill('SIGKILL');
    }
    if (line.includes('"msg":"removed ')) {
      removals++;
      if ('afterRemovals' in kill && removals >= kill.afterRemovals) child.kill('SIGKILL');
    }
  }
  clearTimeout(timer);
  const signal = await exited;
  if (signal !== 'SIGKILL') throw new Error(`collector child ended with ${signal}: ${stderr}`);
  return { removals, finished, signal };
}

async function checkKept(s: Store, kept: Kept): Promise<void> {
  for (const d of kept.blobs) {
    expect(hasBlob(s, d)).toBe(true);
    expect((await s.content('keep').info(d)).digest).toBe(d);
  }
  for (const k of kept.snapshots) expect((await s.snapshots('keep').stat(k)).name).toBe(k);
  expect((await s.content('keep').status('held-upload')).offset).toBe(17);
}

describe('kill -9 during a collection', () => {
  it('leaves a consistent store every time, and the next collection finishes the job', async () => {
    let s = await openStore(root);
    const kept = await makeKept(s);
    const plans: ({ afterRemovals: number } | { afterMs: number })[] = [
      { afterMs: Math.floor(Math.random() * 20) },
      { afterRemovals: 1 },
      { afterRemovals: 2 + Math.floor(Math.random() * 60) },
      { afterRemovals: 60 + Math.floor(Math.random() * 120) },
      { afterRemovals: 2 + Math.floor(Math.random() * 200) },
    ];
    let midway = 0;
    try {
      for (const [round, plan] of plans.entries()) {
        await makeGarbage(s, round);
        await s.close();
        const outcome = await collectAndKill(plan);
        if (!outcome.finished && outcome.removals > 0) midway++;
        const context = `round ${round}, kill ${JSON.stringify(plan)}, ${JSON.stringify(outcome)}`;
        // strata fsck on the killed store (nothing holds it open now): no invariant broken, whatever is left over.
        const checked = await fsckRoot(root);
        expect(checked.violations, context).toEqual([]);
        expect(checked.checked.blobs, context).toBeGreaterThanOrEqual(kept.blobs.length);
        expect(checked.checked.snapshots, context).toBeGreaterThanOrEqual(kept.snapshots.length);
        s = await openStore(root);
        expect(await inconsistencies(s), context).toEqual([]);
        await checkKept(s, kept);
      }
      // At least one kill landed between two removals of one collection (not only before or after it).
      expect(midway).toBeGreaterThan(0);

      // A collection in this process finishes the job.
      const r = await s.collector.collect();
      expect(r.errors).toEqual([]);
      await checkKept(s, kept);
      expect(await s.collector.prune({ dryRun: true })).toEqual({ blobs: [], ingests: [], snapshots: [], contentWithoutData: [], snapshotsWithoutData: [] });
      const p = paths(root);
      expect((await filesUnder(p.blobs)).length).toBe(kept.blobs.length);
      expect(await entries(p.snapshotDirs)).toHaveLength(kept.snapshots.length);
      expect(await entries(join(p.overlay, 'l'))).toHaveLength(kept.snapshots.length);
      expect(await backendKeys(s)).toHaveLength(kept.snapshots.length);
      expect(await entries(p.ingest)).toHaveLength(1); // the held upload
      expect(s.md.db.prepare("SELECT count(*) AS n FROM content WHERE namespace = 'junk'").get()).toEqual({ n: 0 });
    } finally {
      await s.close();
    }
  }, 120_000);
});
