/**
 * `strata run --uidmap/--gidmap` (ctr run's flags, containerd 2.x) against a real stratad and runc: the container
 * runs in a user namespace, its rootfs an overlay over idmapped layers (the overlayfs snapshotter's
 * `remap-ids`), so it sees the image's files owned by its own root while on the host they keep their owners.
 */
import { chmod, readFile, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseOverlayOptions } from '../../src/mount/index.js';
import { run } from '../helpers/ctr.js';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { buildImage, busyboxPlatform, type BuiltImage } from '../helpers/images.js';
import { STRATA } from '../helpers/paths.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

const IMAGE = 'docker.io/library/busybox:idmap';
const NS = 'idmap';

let d: StartedDaemon;
let dir: TempDir;
let busybox: BuiltImage;

const strata = (args: string[]) => run(STRATA, ['--address', d.address, '--namespace', NS, ...args], { timeoutMs: 60_000 });

/** Mount points of this mount namespace under any of the prefixes. */
async function mountsUnder(...prefixes: string[]): Promise<string[]> {
  const info = await readFile('/proc/self/mountinfo', 'utf8');
  return info
    .split('\n')
    .map((l) => l.split(' ')[4] ?? '')
    .filter((p) => prefixes.some((x) => p.startsWith(x)));
}

beforeAll(async () => {
  dir = await tempDir();
  d = await startDaemon();
  // runc sets up the rootfs as the container's root (host uid 100000): every directory above the bundle must be
  // searchable by it. stratad makes its root and state 0711 (as /run is); the test's temporary parent is 0700.
  await chmod(d.dir.path, 0o711);
  busybox = await buildImage(dir.path, { basename: 'busybox', name: IMAGE, platforms: [await busyboxPlatform()] });
  const imp = await strata(['image', 'import', busybox.archivePath]);
  expect(imp.code, imp.stderr).toBe(0);
});

afterAll(async () => {
  if (d) {
    for (const id of (await strata(['task', 'ls', '-q'])).stdout.split('\n').filter(Boolean)) await strata(['task', 'rm', '-f', id]);
    for (const id of (await strata(['container', 'ls', '-q'])).stdout.split('\n').filter(Boolean)) await strata(['container', 'rm', id]);
  }
  await stopAll();
  await d?.dir.cleanup();
  await dir?.cleanup();
});

describe('strata run --uidmap/--gidmap', () => {
  it('overlayfs reports remap-ids (and only-remap-ids) in introspection, probed on this host', async () => {
    const r = await strata(['plugins', 'ls', '-d', 'id==overlayfs']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^Capabilities:\s+rebase,remap-ids,only-remap-ids$/m);
  });

  it('in busybox, id -u prints 0 and stat -c %u /bin prints 0, in a user namespace mapped to 100000', async () => {
    const r = await strata([
      'run',
      '--rm',
      '--uidmap',
      '0:100000:65536',
      '--gidmap',
      '0:100000:65536',
      IMAGE,
      'u1',
      'sh',
      '-c',
      'id -u; id -g; stat -c %u /bin; stat -c %g /bin; cat /proc/self/uid_map; touch /tmp-file && stat -c %u /tmp-file',
    ]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines.slice(0, 4)).toEqual(['0', '0', '0', '0']);
    expect(lines[4]!.trim().split(/\s+/)).toEqual(['0', '100000', '65536']);
    expect(lines[5]).toBe('0');
  });

  it('on the host the image files keep their owners, and what the container writes lands in its upper as the mapped host IDs', async () => {
    const r = await strata(['run', '--uidmap', '0:100000:65536', '--gidmap', '0:200000:65536', IMAGE, 'u2', 'sh', '-c', 'echo x > /written; mkdir /made']);
    expect(r.code, r.stderr).toBe(0);
    const c = d.client(NS);
    try {
      const { mounts } = await c.call(c.snapshots, c.snapshots.mounts, { snapshotter: 'overlayfs', key: 'u2' });
      expect(mounts[0]!.options.slice(0, 2)).toEqual(['uidmap=0:100000:65536', 'gidmap=0:200000:65536']);
      const o = parseOverlayOptions(mounts[0]!.options);
      const owner = async (p: string) => {
        const st = await stat(p);
        return `${st.uid}:${st.gid}`;
      };
      expect(await owner(join(o.upperdir!, 'written'))).toBe('100000:200000');
      expect(await owner(join(o.upperdir!, 'made'))).toBe('100000:200000');
      expect(await owner(o.upperdir!)).toBe('100000:200000');
      // The image's layer on the host: busybox's /bin is root's.
      expect(await owner(join(o.lowerdirs[0]!, 'bin'))).toBe('0:0');
    } finally {
      c.close();
    }
    expect((await strata(['container', 'rm', 'u2'])).code).toBe(0);
  });

  it('leaves nothing mounted once the containers are removed: no rootfs, no temporary idmapped layer', async () => {
    expect(await mountsUnder(d.root, d.state, join(tmpdir(), 'strata-idmap-'))).toEqual([]);
  });

  it('refuses --uidmap without --gidmap, a mapping without the container root, and a snapshotter without remap-ids', async () => {
    const one = await strata(['run', '--rm', '--uidmap', '0:100000:65536', IMAGE, 'u3', 'true']);
    expect(one.code).not.toBe(0);
    expect(one.stderr).toMatch(/--uidmap and --gidmap must be given together/);
    const noRoot = await strata(['run', '--rm', '--uidmap', '1:100000:10', '--gidmap', '1:100000:10', IMAGE, 'u4', 'true']);
    expect(noRoot.code).not.toBe(0);
    expect(noRoot.stderr).toMatch(/mapping entries of 0 are required/);
    // native has no idmapped mounts: refused before anything is created (no recursive-chown fallback).
    const native = await strata(['run', '--rm', '--snapshotter', 'native', '--uidmap', '0:100000:65536', '--gidmap', '0:100000:65536', IMAGE, 'u5', 'true']);
    expect(native.code).not.toBe(0);
    expect(native.stderr).toMatch(/snapshotter "native" does not report remap-ids, and Strata has no recursive-chown fallback/);
    expect((await strata(['container', 'ls', '-q'])).stdout).toBe('');
  });
});
