/**
 * The unmodified ctr (containerd 1.6) against stratad serving devmapper and zfs, in the VM tier: both
 * plugins load (`ctr plugins ls`: ok), `ctr image pull --plain-http --snapshotter X` from a real registry
 * (docker-registry on loopback) unpacks a busybox image into each, and `ctr run --snapshotter X` runs a
 * container (runc) on the rootfs each snapshotter mounts.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run as runCmd, tableRows, type RunResult } from '../helpers/ctr.js';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { buildImage, busyboxPlatform } from '../helpers/images.js';
import { startRegistry, stopAllRegistries, type StartedRegistry } from '../helpers/registry.js';
import { cleanupRuntime, mountsUnder } from '../helpers/runtime.js';
import { tempDir, type TempDir } from '../helpers/temp.js';
import { makeThinPool, requireDeviceMapper, type ThinPool } from './helpers.js';
import { makeZfsPool, requireZfs, type ZfsPool } from './zfs-helpers.js';

const NS = 'vm-ctr';
/** Everything is slow under emulation: minutes, not the host tier's 30 s. */
const CTR_TIMEOUT_MS = 10 * 60_000;

let dir: TempDir;
let thin: ThinPool;
let zpool: ZfsPool;
let reg: StartedRegistry;
let d: StartedDaemon;
let ref: string;

const ctr = (args: string[]) => runCmd('ctr', ['--address', d.address, '--namespace', NS, ...args], { timeoutMs: CTR_TIMEOUT_MS });
const diag = (r: RunResult) => `code ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}\n--- stratad ---\n${d.logs.slice(-4000)}`;

beforeAll(async () => {
  await requireDeviceMapper();
  await requireZfs();
  dir = await tempDir('strata-vm-ctr-');
  thin = await makeThinPool('2G');
  zpool = await makeZfsPool('1G');
  reg = await startRegistry();
  const img = await buildImage(dir.path, { basename: 'busybox', name: 'docker.io/library/busybox:vm', platforms: [await busyboxPlatform({ compression: 'gzip' })] });
  await reg.pushOciLayout(img.layoutDir, 'busybox:latest');
  ref = `${reg.host}/busybox:latest`;
  d = await startDaemon({
    logLevel: 'info',
    config:
      `[plugins."io.containerd.snapshotter.v1.devmapper"]\npool_name = "${thin.name}"\nbase_image_size = "256MB"\n` +
      `[plugins."io.containerd.snapshotter.v1.zfs"]\nroot_path = "${zpool.mountpoint}/root"\n`,
  });
}, CTR_TIMEOUT_MS);

afterAll(async () => {
  try {
    if (d) {
      await stopAll();
      await cleanupRuntime({ taskRoot: join(d.state, 'io.containerd.runtime.v2.task'), runcRoot: join(d.state, 'runc'), mountsUnder: d.dir.path, cgroupNamespace: NS });
    }
    await stopAllRegistries();
  } finally {
    await thin?.remove();
    await zpool?.destroy();
    await d?.dir.cleanup();
    await dir?.cleanup();
  }
}, CTR_TIMEOUT_MS);

describe('ctr against stratad with devmapper and zfs', () => {
  it('ctr plugins ls shows the devmapper and zfs snapshotters ok', async () => {
    const r = await ctr(['plugins', 'ls']);
    expect(r.code, diag(r)).toBe(0);
    const rows = tableRows(r.stdout);
    for (const id of ['devmapper', 'zfs']) {
      const row = rows.find((x) => x[0] === 'io.containerd.snapshotter.v1' && x[1] === id);
      expect(row, `${id} in:\n${r.stdout}`).toBeDefined();
      expect(row!.at(-1), `${id}: ${row!.join(' ')}\n${diag(r)}`).toBe('ok');
    }
  });

  for (const sn of ['devmapper', 'zfs'] as const) {
    it(`ctr image pull --snapshotter ${sn} unpacks busybox into ${sn}, and ctr run --snapshotter ${sn} runs it`, async () => {
      const pull = await ctr(['image', 'pull', '--plain-http', '--snapshotter', sn, ref]);
      expect(pull.code, diag(pull)).toBe(0);
      expect(pull.stdout).toMatch(/unpacking linux\/\w+ sha256:[0-9a-f]{64}\.\.\.\ndone/);
      const snaps = await ctr(['snapshot', '--snapshotter', sn, 'ls']);
      expect(snaps.code, diag(snaps)).toBe(0);
      expect(tableRows(snaps.stdout).map((x) => x.at(-1))).toEqual(['Committed']);

      const r = await ctr(['run', '--rm', '--snapshotter', sn, ref, `${sn}-1`, 'sh', '-c', 'echo hello from $(cat /proc/1/comm); ls /bin; echo written > /tmp/f && cat /tmp/f']);
      expect(r.code, diag(r)).toBe(0);
      const words = r.stdout.split(/\s+/).filter(Boolean);
      expect(words.slice(0, 3)).toEqual(['hello', 'from', 'sh']);
      expect(words).toEqual(expect.arrayContaining(['busybox', 'cat', 'echo', 'ls', 'sh', 'sleep']));
      expect(words.at(-1)).toBe('written');
      // --rm took the container's active snapshot with it: only the committed layer is left.
      const after = await ctr(['snapshot', '--snapshotter', sn, 'ls']);
      expect(tableRows(after.stdout).map((x) => x.at(-1))).toEqual(['Committed']);
      expect(mountsUnder(join(d.state, 'io.containerd.runtime.v2.task'))).toEqual([]);
      // The image goes, and its layer with it once the snapshot is removed by hand (GC is off here).
      expect((await ctr(['image', 'rm', ref])).code).toBe(0);
      const key = tableRows(after.stdout)[0]![0]!;
      const rm = await ctr(['snapshot', '--snapshotter', sn, 'rm', key]);
      expect(rm.code, diag(rm)).toBe(0);
    });
  }
});
