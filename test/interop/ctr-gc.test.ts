/**
 * The unmodified ctr (containerd 1.6) against stratad for garbage collection: `ctr image import` then
 * `ctr image rm --sync` leaves none of the image's blobs or snapshots (`ctr content ls`, `ctr snapshot ls`, and
 * the blob files on disk); `ctr leases create`, content written under that lease, `ctr leases rm --sync` and
 * the content is gone; without --sync the daemon's own scheduler collects soon after. Also the scheduler's
 * configuration section against the real containerd's `containerd config default`.
 *
 * ctr 1.6 has no flag to ingest under a lease (`ctr content ingest` takes none), so the leased content is
 * written with Strata's client over the same containerd Write API, with the `containerd-lease` header.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'smol-toml';
import { chainIDs } from '../../src/images/manifest.js';
import { parseGoDuration } from '../../src/gc/scheduler.js';
import { ctr, run, tableRows } from '../helpers/ctr.js';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { buildImage, sha256, type BuiltImage } from '../helpers/images.js';
import { STRATAD } from '../helpers/paths.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

let d: StartedDaemon;
let dir: TempDir;
let image: BuiltImage;
let other: BuiltImage;

const NAME = 'docker.io/library/gc-interop:1';
const OTHER = 'docker.io/library/gc-interop-async:1';

/** The first column of every row after the header. */
const firstColumn = (out: string) => tableRows(out).map((r) => r[0]!);

const blobFile = (digest: string) => join(d.root, 'io.containerd.content.v1.content', 'blobs', 'sha256', digest.slice('sha256:'.length));

async function contentLs(namespace: string): Promise<string[]> {
  const r = await ctr(d.address, ['content', 'ls'], { namespace });
  expect(r.code, r.stderr).toBe(0);
  return firstColumn(r.stdout);
}

async function snapshotLs(namespace: string): Promise<string[]> {
  const r = await ctr(d.address, ['snapshot', 'ls'], { namespace });
  expect(r.code, r.stderr).toBe(0);
  return firstColumn(r.stdout);
}

const layer = (name: string, text: string) => ({ entries: [{ path: name, type: 'dir' as const }, { path: `${name}/file`, content: text }] });

beforeAll(async () => {
  dir = await tempDir();
  d = await startDaemon({ gc: true });
  image = await buildImage(dir.path, {
    basename: 'gc-interop',
    name: NAME,
    platforms: [{ layers: [layer('one', 'gc interop first layer'), layer('two', 'gc interop second layer')] }],
  });
  other = await buildImage(dir.path, {
    basename: 'gc-interop-async',
    name: OTHER,
    platforms: [{ layers: [layer('async', 'collected without --sync')] }],
  });
});

afterAll(async () => {
  await stopAll();
  await d?.dir.cleanup();
  await dir?.cleanup();
});

describe('ctr against stratad: garbage collection', () => {
  it('ctr image import, then ctr image rm --sync: no blob and no snapshot of the image is left', async () => {
    const ns = 'ctr-gc-image';
    const imp = await ctr(d.address, ['image', 'import', image.archivePath], { namespace: ns });
    expect(imp.code, imp.stderr).toBe(0);
    const digests = [...image.blobs.keys()];
    const chain = chainIDs(image.manifests[0]!.layers.map((l) => l.diffID));
    expect(await contentLs(ns)).toEqual(expect.arrayContaining(digests));
    expect(await snapshotLs(ns)).toEqual(expect.arrayContaining(chain));
    for (const dg of digests) expect(existsSync(blobFile(dg)), dg).toBe(true);

    const rm = await ctr(d.address, ['image', 'rm', '--sync', NAME], { namespace: ns });
    expect(rm.code, rm.stderr).toBe(0);
    expect(rm.stdout.trim()).toBe(NAME);
    // Synchronous: gone when ctr returns, no polling.
    const left = await contentLs(ns);
    for (const dg of digests) expect(left, dg).not.toContain(dg);
    expect(await snapshotLs(ns)).toEqual([]);
    for (const dg of digests) expect(existsSync(blobFile(dg)), dg).toBe(false);
  });

  it('ctr leases create; content written under it survives a collection; ctr leases rm --sync and it is gone', async () => {
    const ns = 'ctr-gc-lease';
    const created = await ctr(d.address, ['leases', 'create', '--id', 'gc-interop'], { namespace: ns });
    expect(created.code, created.stderr).toBe(0);
    const data = Buffer.from('written under the ctr lease gc-interop');
    const digest = sha256(data);
    const c = d.client(ns, 'gc-interop');
    try {
      await c.writeBlob([data], { ref: 'under-lease', total: data.length, expected: digest });
    } finally {
      c.close();
    }
    expect(await contentLs(ns)).toContain(digest);

    // A collection in between (another lease removed with --sync) keeps it: the lease protects it.
    expect((await ctr(d.address, ['leases', 'create', '--id', 'throwaway'], { namespace: ns })).code).toBe(0);
    const gc = await ctr(d.address, ['leases', 'rm', '--sync', 'throwaway'], { namespace: ns });
    expect(gc.code, gc.stderr).toBe(0);
    expect(await contentLs(ns)).toContain(digest);

    const rm = await ctr(d.address, ['leases', 'rm', '--sync', 'gc-interop'], { namespace: ns });
    expect(rm.code, rm.stderr).toBe(0);
    expect(await contentLs(ns)).not.toContain(digest);
    expect(existsSync(blobFile(digest))).toBe(false);
    const ls = await ctr(d.address, ['leases', 'ls', '-q'], { namespace: ns });
    expect(ls.stdout.trim()).toBe('');
  });

  it('without --sync, the scheduler collects the removed image soon after on its own', async () => {
    const ns = 'ctr-gc-async';
    const imp = await ctr(d.address, ['image', 'import', other.archivePath], { namespace: ns });
    expect(imp.code, imp.stderr).toBe(0);
    const digests = [...other.blobs.keys()];
    expect(await contentLs(ns)).toEqual(expect.arrayContaining(digests));
    const rm = await ctr(d.address, ['image', 'rm', OTHER], { namespace: ns });
    expect(rm.code, rm.stderr).toBe(0);
    const deadline = Date.now() + 20_000;
    for (;;) {
      const left = (await contentLs(ns)).filter((x) => digests.includes(x));
      const snaps = await snapshotLs(ns);
      if (left.length === 0 && snaps.length === 0) break;
      if (Date.now() > deadline) throw new Error(`still there 20 s after ctr image rm: ${left.join(' ')} ${snaps.join(' ')}`);
      await sleep(100);
    }
  });

  it('ctr plugins ls shows the scheduler; its config section matches containerd config default', async () => {
    const ls = await ctr(d.address, ['plugins', 'ls']);
    expect(ls.stdout).toMatch(/^io\.containerd\.gc\.v1\s+scheduler\s+\S+\s+ok\s*$/m);

    const ours = await run(process.execPath, [STRATAD, 'config', 'default']);
    const theirs = await run('containerd', ['config', 'default']);
    expect(ours.code, ours.stderr).toBe(0);
    expect(theirs.code, theirs.stderr).toBe(0);
    const section = (text: string) => (parse(text) as { plugins: Record<string, Record<string, unknown>> }).plugins['io.containerd.gc.v1.scheduler']!;
    const a = section(ours.stdout);
    const b = section(theirs.stdout);
    expect(Object.keys(a).sort()).toEqual(Object.keys(b).sort());
    for (const k of ['pause_threshold', 'deletion_threshold', 'mutation_threshold']) expect(a[k], k).toBe(b[k]);
    // Durations: containerd prints Go's time.Duration String() ("0s"); ours keeps the documented "0ms".
    for (const k of ['schedule_delay', 'startup_delay']) expect(parseGoDuration(String(a[k])), k).toBe(parseGoDuration(String(b[k])));
  });
});
