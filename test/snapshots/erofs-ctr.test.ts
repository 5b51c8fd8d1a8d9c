/**
 * The EROFS snapshotter through a real stratad with the unmodified ctr (containerd 1.6): `ctr image pull
 * --snapshotter erofs` from docker-registry on loopback (ctr unpacks client-side: Prepare, Apply through the diff
 * service, Commit, which builds each layer's image), `ctr run --snapshotter erofs` on the overlay over the
 * loop-mounted images, usage as `ctr snapshot usage` prints it, and `ctr image rm --sync` taking the images away;
 * then the same image pulled and run by Strata's own CLI (the daemon's transfer service unpacks).
 */
import { existsSync } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ctr, run, tableRows } from '../helpers/ctr.js';
import { STRATA } from '../helpers/paths.js';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { buildImage, busyboxPlatform } from '../helpers/images.js';
import { startRegistry, stopAllRegistries, type StartedRegistry } from '../helpers/registry.js';
import { cleanupRuntime } from '../helpers/runtime.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

const NS = 'erofs-ctr-test';
let d: StartedDaemon;
let reg: StartedRegistry;
let dir: TempDir;
let ref: string;

const c = (args: string[]) => ctr(d.address, args, { namespace: NS });
const pluginRoot = () => join(d.root, 'io.containerd.snapshotter.v1.erofs');

/** The snapshot directories of the erofs plugin and what each holds. */
async function snapshotDirs(): Promise<Map<string, string[]>> {
  const out = new Map<string, string[]>();
  const base = join(pluginRoot(), 'snapshots');
  for (const id of await readdir(base)) out.set(id, (await readdir(join(base, id))).sort());
  return out;
}

/** Mount points of /proc/self/mountinfo under a directory. */
async function erofsMountsUnder(prefix: string): Promise<string[]> {
  const { readFile } = await import('node:fs/promises');
  const info = await readFile('/proc/self/mountinfo', 'utf8');
  return info
    .split('\n')
    .filter((l) => l.includes(' - erofs '))
    .map((l) => l.split(' ')[4]!)
    .filter((p) => p.startsWith(prefix));
}

beforeAll(async () => {
  dir = await tempDir('strata-erofs-ctr-');
  [d, reg] = await Promise.all([startDaemon({ gc: true }), startRegistry()]);
  const base = await busyboxPlatform({ compression: 'gzip' });
  base.layers.push(
    { compression: 'gzip', entries: [{ path: 'data', type: 'dir' }, { path: 'data/a', content: 'one' }, { path: 'data/b', content: 'two' }, { path: 'data/gone', type: 'dir' }, { path: 'data/gone/x', content: 'x' }] },
    { compression: 'gzip', entries: [{ path: 'data/a', type: 'whiteout' }, { path: 'data/gone', type: 'opaque' }, { path: 'data/c', content: 'three' }] },
  );
  const img = await buildImage(dir.path, { basename: 'erofs', platforms: [base] });
  await reg.pushOciLayout(img.layoutDir, 'erofs-test:1');
  ref = `${reg.host}/erofs-test:1`;
}, 120_000);

afterAll(async () => {
  if (d) {
    await stopAll();
    await cleanupRuntime({
      taskRoot: join(d.state, 'io.containerd.runtime.v2.task'),
      runcRoot: join(d.state, 'runc'),
      mountsUnder: d.dir.path,
      cgroupNamespace: NS,
    });
    await d.dir.cleanup();
  }
  await stopAllRegistries();
  await dir?.cleanup();
});

describe('the erofs snapshotter under ctr 1.6', () => {
  it('ctr plugins ls lists the erofs snapshotter and the erofs differ as ok', async () => {
    const r = await c(['plugins', 'ls']);
    expect(r.code, r.stderr).toBe(0);
    const rows = tableRows(r.stdout);
    expect(rows.find((x) => x[0] === 'io.containerd.snapshotter.v1' && x[1] === 'erofs')?.[3]).toBe('ok');
    expect(rows.find((x) => x[0] === 'io.containerd.differ.v1' && x[1] === 'erofs')?.[3]).toBe('ok');
  });

  it('ctr image pull --snapshotter erofs commits each layer as one EROFS image and no upper files', async () => {
    const pull = await c(['image', 'pull', '--plain-http', '--snapshotter', 'erofs', ref]);
    expect(pull.code, pull.stderr + pull.stdout).toBe(0);
    const ls = await c(['snapshot', '--snapshotter', 'erofs', 'ls']);
    expect(ls.code, ls.stderr).toBe(0);
    const rows = tableRows(ls.stdout);
    expect(rows).toHaveLength(3);
    expect(rows.every((r) => r[r.length - 1] === 'Committed')).toBe(true);
    const dirs = await snapshotDirs();
    expect([...dirs.values()]).toEqual([0, 1, 2].map(() => ['.erofslayer', 'fs', 'layer.erofs']));
    for (const [id] of dirs) {
      const image = join(pluginRoot(), 'snapshots', id, 'layer.erofs');
      // An EROFS superblock at 1024: its magic, little-endian.
      const { readFile } = await import('node:fs/promises');
      expect((await readFile(image)).readUInt32LE(1024)).toBe(0xe0f5e1e2);
    }
  });

  it('ctr snapshot usage reports each committed layer as its image file: its size and one inode', async () => {
    const r = await c(['snapshot', '--snapshotter', 'erofs', 'usage']);
    expect(r.code, r.stderr).toBe(0);
    const rows = tableRows(r.stdout);
    expect(rows).toHaveLength(3);
    expect(rows.every((x) => x[x.length - 1] === '1')).toBe(true);
    const sizes = await Promise.all([...(await snapshotDirs()).keys()].map((id) => stat(join(pluginRoot(), 'snapshots', id, 'layer.erofs'))));
    const busybox = Math.max(...sizes.map((s) => s.blocks * 512));
    // The busybox layer's image holds the binary (about a MiB or more).
    expect(busybox).toBeGreaterThan(500_000);
  });

  it('ctr run --snapshotter erofs sees the layers merged: whiteouts and opaque directories of upper layers hold', async () => {
    const r = await c(['run', '--rm', '--snapshotter', 'erofs', ref, 'e1', 'sh', '-c', 'ls /data; cat /data/b /data/c; echo; ls -A /data/gone | wc -l; echo w > /data/new && cat /data/new']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toBe('b\nc\ngone\ntwothree\n0\nw\n');
    // The container's writes went to its own upper dir, which went with the container.
    expect((await c(['snapshot', '--snapshotter', 'erofs', 'ls'])).stdout).not.toContain('Active');
  });

  it('the snapshotter keeps the lower images mounted read-only, and ctr image rm --sync removes them and their images', async () => {
    const mounted = await erofsMountsUnder(pluginRoot());
    // The run's overlay had the three layers as lowers (the top one's image was mounted by the run's Prepare).
    expect(mounted.length).toBe(3);
    const rm = await c(['image', 'rm', '--sync', ref]);
    expect(rm.code, rm.stderr).toBe(0);
    const ls = await c(['snapshot', '--snapshotter', 'erofs', 'ls']);
    expect(tableRows(ls.stdout)).toEqual([]);
    expect(await erofsMountsUnder(pluginRoot())).toEqual([]);
    // Removal moves each directory away within the call; its deletion follows in the background.
    for (let i = 0; i < 100 && (await readdir(join(pluginRoot(), 'trash'))).length > 0; i++) await new Promise((r) => setTimeout(r, 50));
    expect(await snapshotDirs()).toEqual(new Map());
    expect(await readdir(join(pluginRoot(), 'trash'))).toEqual([]);
    expect(existsSync(join(pluginRoot(), 'metadata.db'))).toBe(true);
  });

  it('strata image pull --snapshotter erofs unpacks in the daemon, and strata run --snapshotter erofs runs on it', async () => {
    const strata = (args: string[]) => run(STRATA, ['--address', d.address, '--namespace', NS, ...args]);
    const pull = await strata(['image', 'pull', '--plain-http', '--snapshotter', 'erofs', ref]);
    expect(pull.code, pull.stderr).toBe(0);
    expect([...(await snapshotDirs()).values()].filter((x) => x.includes('layer.erofs'))).toHaveLength(3);
    const r = await strata(['run', '--rm', '--snapshotter', 'erofs', ref, 'e2', 'sh', '-c', 'ls /data; cat /data/c']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toBe('b\nc\ngone\nthree');
  });
});
