/**
 * The real containerd (Debian's 1.6) using Strata as a proxy snapshotter plugin: `stratad serve-snapshotter
 * --snapshotter overlayfs` on a socket, named `strata` in containerd's [proxy_plugins]. containerd imports a
 * busybox image built from busybox-static, unpacks its layer into Strata, and runs a container (runc) on
 * the rootfs Strata's mounts describe.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { ctrAt, startContainerd, mountsUnder, unmountUnder, type StartedContainerd } from '../helpers/containerd.js';
import type { RunResult } from '../helpers/ctr.js';
import { buildBusyboxArchive, type BusyboxArchive } from '../helpers/oci-image.js';
import { serveSnapshotter, type ServedBackend } from '../helpers/serve-snapshotter.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

const NS = 'strata-test';

/** ctr's tables (tabwriter, left-aligned): one record per row, keyed by the header's column names. */
function table(out: string): Record<string, string>[] {
  const [header, ...lines] = out.split('\n').filter((l) => l.trim() !== '');
  if (!header) return [];
  const cols = [...header.matchAll(/\S+/g)].map((m) => ({ name: m[0], start: m.index }));
  return lines.map((l) =>
    Object.fromEntries(cols.map((c, i) => [c.name, l.slice(c.start, cols[i + 1]?.start ?? l.length).trim()])),
  );
}

let tmp: TempDir;
let served: ServedBackend;
let c: StartedContainerd;
let image: BusyboxArchive;

const run = (args: string[], namespace = NS) => ctrAt(c.address, args, namespace);
const diag = (r: RunResult) =>
  `stdout: ${r.stdout}\nstderr: ${r.stderr}\n--- containerd ---\n${c.logs().slice(-3000)}\n--- serve-snapshotter ---\n${served.logs().slice(-3000)}`;

beforeAll(async () => {
  tmp = await tempDir('strata-proxy-');
  const snRoot = join(tmp.path, 'sn');
  await mkdir(snRoot);
  image = await buildBusyboxArchive(tmp.path);
  served = await serveSnapshotter('overlayfs', snRoot, join(tmp.path, 'sn.sock'));
  c = await startContainerd({
    config: `[proxy_plugins.strata]\n  type = "snapshot"\n  address = "${served.address}"\n`,
  });
});

afterAll(async () => {
  try {
    if (c && c.proc.exitCode === null) {
      await run(['image', 'rm', '--sync', image?.name ?? '']);
    }
  } finally {
    await c?.stop();
    await c?.dir.cleanup();
    await served?.stop();
    if (tmp) {
      await unmountUnder(tmp.path);
      const left = await mountsUnder(tmp.path);
      await tmp.cleanup();
      expect(left).toEqual([]);
    }
  }
});

describe('containerd with Strata as a proxy snapshotter', () => {
  it('ctr plugins ls shows io.containerd.snapshotter.v1 strata ok', async () => {
    const r = await run(['plugins', 'ls']);
    expect(r.code, diag(r)).toBe(0);
    const row = table(r.stdout).find((p) => p.TYPE === 'io.containerd.snapshotter.v1' && p.ID === 'strata');
    expect(row, diag(r)).toBeDefined();
    expect(row!.STATUS).toBe('ok');
  });

  it('ctr image import --snapshotter strata unpacks the busybox layer into Strata', async () => {
    const r = await run(['image', 'import', '--snapshotter', 'strata', image.archive]);
    expect(r.code, diag(r)).toBe(0);
    expect(r.stdout).toContain(`unpacking ${image.name} (${image.manifestDigest})...done`);
    const images = table((await run(['image', 'ls'])).stdout);
    expect(images).toContainEqual(expect.objectContaining({ REF: image.name, DIGEST: image.manifestDigest }));
  });

  it('ctr snapshot --snapshotter strata ls shows the unpacked layer as Committed', async () => {
    const r = await run(['snapshot', '--snapshotter', 'strata', 'ls']);
    expect(r.code, diag(r)).toBe(0);
    // A single layer: its chain ID is its diff ID, the (uncompressed) layer's digest.
    expect(table(r.stdout)).toEqual([{ KEY: image.layerDigest, PARENT: '', KIND: 'Committed' }]);
    const info = await run(['snapshot', '--snapshotter', 'strata', 'info', image.layerDigest]);
    expect(info.code, diag(info)).toBe(0);
    expect(JSON.parse(info.stdout)).toMatchObject({ Kind: 'Committed', Name: image.layerDigest });
  });

  it('ctr run --rm --snapshotter strata busybox echo hello prints hello', async () => {
    const r = await run(['run', '--rm', '--snapshotter', 'strata', image.name, 't1', 'echo', 'hello']);
    expect(r.code, diag(r)).toBe(0);
    expect(r.stdout).toBe('hello\n');
    // --rm removed the container and its active snapshot: only the layer is left.
    expect((await run(['containers', 'ls', '-q'])).stdout.trim()).toBe('');
    const ls = table((await run(['snapshot', '--snapshotter', 'strata', 'ls'])).stdout);
    expect(ls).toEqual([{ KEY: image.layerDigest, PARENT: '', KIND: 'Committed' }]);
  });

  it('the container sees the image rootfs and writes to its own upper layer', async () => {
    const r = await run([
      'run',
      '--rm',
      '--snapshotter',
      'strata',
      image.name,
      't2',
      'sh',
      '-c',
      'cat /etc/hostname; ls /bin; echo written > /tmp/f && cat /tmp/f',
    ]);
    expect(r.code, diag(r)).toBe(0);
    const lines = r.stdout.split(/\s+/).filter(Boolean);
    expect(lines[0]).toBe('strata-test');
    expect(lines).toEqual(expect.arrayContaining(['busybox', 'cat', 'echo', 'ls', 'sh', 'sleep', 'written']));
  });

  it('ctr image rm --sync lets containerd garbage-collect the layer out of Strata', async () => {
    const r = await run(['image', 'rm', '--sync', image.name]);
    expect(r.code, diag(r)).toBe(0);
    const ls = await run(['snapshot', '--snapshotter', 'strata', 'ls']);
    expect(ls.code, diag(ls)).toBe(0);
    expect(table(ls.stdout)).toEqual([]);
  });
});
