/**
 * The real containerd (Debian's 1.6) using Strata's devmapper and zfs snapshotters as proxy plugins, in the
 * VM tier: `stratad serve-snapshotter --snapshotter devmapper` (its pool named in a config file) and
 * `--snapshotter zfs` (its root on a zfs dataset), each on a socket, named `strata-devmapper` and `strata-zfs`
 * in containerd's [proxy_plugins]. containerd pulls a busybox image from a real registry into each and runs
 * a container (runc, through containerd's shim) on the rootfs Strata's mounts describe.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { exec, mountsUnder, startContainerd, unmountUnder, type StartedContainerd } from '../helpers/containerd.js';
import { tableRows, type RunResult } from '../helpers/ctr.js';
import { buildImage, busyboxPlatform } from '../helpers/images.js';
import { startRegistry, stopAllRegistries, type StartedRegistry } from '../helpers/registry.js';
import { serveSnapshotter, type ServedBackend } from '../helpers/serve-snapshotter.js';
import { tempDir, type TempDir } from '../helpers/temp.js';
import { makeThinPool, requireDeviceMapper, type ThinPool } from './helpers.js';
import { makeZfsPool, requireZfs, type ZfsPool } from './zfs-helpers.js';

const NS = 'vm-proxy';
const CTR_TIMEOUT_MS = 10 * 60_000;

let tmp: TempDir;
let thin: ThinPool;
let zpool: ZfsPool;
let reg: StartedRegistry;
const served: Record<string, ServedBackend> = {};
let c: StartedContainerd;
let ref: string;

const ctr = (args: string[]) => exec('ctr', ['--address', c.address, '--namespace', NS, ...args], { timeoutMs: CTR_TIMEOUT_MS });
const diag = (r: RunResult) =>
  `code ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}\n--- containerd ---\n${c.logs().slice(-3000)}\n` +
  Object.entries(served)
    .map(([n, s]) => `--- ${n} ---\n${s.logs().slice(-2000)}`)
    .join('\n');

beforeAll(async () => {
  await requireDeviceMapper();
  await requireZfs();
  tmp = await tempDir('strata-vm-proxy-');
  thin = await makeThinPool('2G');
  zpool = await makeZfsPool('1G');
  reg = await startRegistry();
  const img = await buildImage(tmp.path, { basename: 'busybox', name: 'docker.io/library/busybox:vm', platforms: [await busyboxPlatform({ compression: 'gzip' })] });
  await reg.pushOciLayout(img.layoutDir, 'busybox:latest');
  ref = `${reg.host}/busybox:latest`;
  const dmConfig = join(tmp.path, 'devmapper.toml');
  await writeFile(dmConfig, `version = 2\n[plugins."io.containerd.snapshotter.v1.devmapper"]\npool_name = "${thin.name}"\nbase_image_size = "256MB"\n`);
  served.devmapper = await serveSnapshotter('devmapper', join(tmp.path, 'dm-root'), join(tmp.path, 'dm.sock'), { config: dmConfig });
  served.zfs = await serveSnapshotter('zfs', join(zpool.mountpoint, 'root'), join(tmp.path, 'zfs.sock'));
  c = await startContainerd({
    config:
      `[proxy_plugins.strata-devmapper]\n  type = "snapshot"\n  address = "${served.devmapper.address}"\n` +
      `[proxy_plugins.strata-zfs]\n  type = "snapshot"\n  address = "${served.zfs.address}"\n`,
  });
}, CTR_TIMEOUT_MS);

afterAll(async () => {
  try {
    await c?.stop();
    await c?.dir.cleanup();
    for (const s of Object.values(served)) await s.stop();
    await stopAllRegistries();
  } finally {
    if (tmp) {
      await unmountUnder(tmp.path);
      const left = await mountsUnder(tmp.path);
      await thin?.remove();
      await zpool?.destroy();
      await tmp.cleanup();
      expect(left).toEqual([]);
    }
  }
}, CTR_TIMEOUT_MS);

describe('containerd 1.6 with Strata devmapper and zfs as proxy snapshotters', () => {
  it('ctr plugins ls shows both proxy snapshotters ok', async () => {
    const r = await ctr(['plugins', 'ls']);
    expect(r.code, diag(r)).toBe(0);
    const rows = tableRows(r.stdout);
    for (const id of ['strata-devmapper', 'strata-zfs']) {
      const row = rows.find((x) => x[0] === 'io.containerd.snapshotter.v1' && x[1] === id);
      expect(row, `${id} in:\n${r.stdout}`).toBeDefined();
      expect(row!.at(-1)).toBe('ok');
    }
  });

  for (const backend of ['devmapper', 'zfs'] as const) {
    const sn = `strata-${backend}`;
    it(`containerd pulls busybox into Strata's ${backend} and runs a container on it`, async () => {
      const pull = await ctr(['image', 'pull', '--plain-http', '--snapshotter', sn, ref]);
      expect(pull.code, diag(pull)).toBe(0);
      expect(pull.stdout).toMatch(/unpacking linux\/\w+ sha256:[0-9a-f]{64}\.\.\.\ndone/);
      const snaps = await ctr(['snapshot', '--snapshotter', sn, 'ls']);
      expect(tableRows(snaps.stdout).map((x) => x.at(-1)), diag(snaps)).toEqual(['Committed']);

      const r = await ctr(['run', '--rm', '--snapshotter', sn, ref, `${backend}-1`, 'sh', '-c', 'ls /bin; echo written > /tmp/f && cat /tmp/f']);
      expect(r.code, diag(r)).toBe(0);
      const words = r.stdout.split(/\s+/).filter(Boolean);
      expect(words).toEqual(expect.arrayContaining(['busybox', 'cat', 'echo', 'ls', 'sh', 'sleep']));
      expect(words.at(-1)).toBe('written');
      expect((await ctr(['containers', 'ls', '-q'])).stdout.trim()).toBe('');

      // containerd's GC takes the layer out of Strata once the image is gone.
      const rm = await ctr(['image', 'rm', '--sync', ref]);
      expect(rm.code, diag(rm)).toBe(0);
      const after = await ctr(['snapshot', '--snapshotter', sn, 'ls']);
      expect(after.code, diag(after)).toBe(0);
      expect(tableRows(after.stdout)).toEqual([]);
    });
  }
});
