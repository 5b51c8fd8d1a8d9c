/**
 * The unmodified ctr (containerd 1.6) against stratad for images: `ctr image pull --plain-http` from a real
 * docker-registry on loopback (ctr fetches and unpacks client-side through stratad's content, images, leases,
 * snapshots and diff services), `ctr image ls`, `ctr image import`, and `ctr image export` whose archive the
 * real containerd imports again. Also `strata image pull|ls|export|import` and ctr reading what strata wrote.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chainIDs } from '../../src/images/manifest.js';
import { ctr, run, tableRows as rows } from '../helpers/ctr.js';
import { ctrAt, startContainerd, stopAllContainerd, type StartedContainerd } from '../helpers/containerd.js';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { buildImage, busyboxPlatform, type BuiltImage } from '../helpers/images.js';
import { startRegistry, stopAllRegistries, type StartedRegistry } from '../helpers/registry.js';
import { STRATA } from '../helpers/paths.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

let d: StartedDaemon;
let reg: StartedRegistry;
let dir: TempDir;
let busybox: BuiltImage;
let layered: BuiltImage;


const strata = (args: string[], namespace = 'default') => run(STRATA, ['--address', d.address, '--namespace', namespace, ...args]);

beforeAll(async () => {
  dir = await tempDir();
  [d, reg] = await Promise.all([startDaemon(), startRegistry()]);
  busybox = await buildImage(dir.path, { basename: 'busybox', name: 'docker.io/library/busybox:strata', platforms: [await busyboxPlatform({ compression: 'gzip' })] });
  layered = await buildImage(dir.path, {
    basename: 'layered',
    platforms: [
      {
        layers: [
          { entries: [{ path: 'a', type: 'dir' }, { path: 'a/one', content: '1' }, { path: 'a/two', content: '2' }] },
          { entries: [{ path: 'a/one', type: 'whiteout' }, { path: 'a/three', content: '3' }] },
        ],
      },
    ],
  });
  await reg.pushOciLayout(busybox.layoutDir, 'busybox:latest');
  await reg.pushOciLayout(layered.layoutDir, 'layered:latest');
});

afterAll(async () => {
  await stopAll();
  await stopAllContainerd();
  await stopAllRegistries();
  await dir.cleanup();
});

describe('ctr image against stratad', () => {
  it('ctr image pull --plain-http unpacks the chain; ctr snapshot ls and ctr image ls show it', async () => {
    const ref = `${reg.host}/layered:latest`;
    const pull = await ctr(d.address, ['image', 'pull', '--plain-http', ref], { namespace: 'ctr-pull' });
    expect(pull.code, pull.stderr + pull.stdout).toBe(0);
    expect(pull.stdout).toMatch(/unpacking linux\/\w+ sha256:[0-9a-f]{64}\.\.\.\ndone/);

    const chain = chainIDs(layered.manifests[0]!.layers.map((l) => l.diffID));
    const snaps = await ctr(d.address, ['snapshot', 'ls'], { namespace: 'ctr-pull' });
    expect(snaps.code).toBe(0);
    expect(rows(snaps.stdout)).toEqual(
      expect.arrayContaining([
        [chain[0], '', 'Committed'].filter(Boolean),
        [chain[1], chain[0], 'Committed'],
      ]),
    );
    expect(rows(snaps.stdout)).toHaveLength(2);

    const ls = await ctr(d.address, ['image', 'ls'], { namespace: 'ctr-pull' });
    expect(ls.code).toBe(0);
    const row = rows(ls.stdout).find((r) => r[0] === ref)!;
    expect(row.slice(0, 3)).toEqual([ref, layered.target.mediaType, layered.target.digest]);

    const check = await ctr(d.address, ['image', 'check'], { namespace: 'ctr-pull' });
    expect(check.stdout).toMatch(/complete \(\d+\/\d+\)/);
    expect(check.stdout).toMatch(/true\s*$/m);
  });

  it('ctr image import of an OCI archive, then ctr image export re-imported by the real containerd', async () => {
    const imp = await ctr(d.address, ['image', 'import', busybox.archivePath], { namespace: 'ctr-io' });
    expect(imp.code, imp.stderr).toBe(0);
    const ls = await ctr(d.address, ['image', 'ls', '-q'], { namespace: 'ctr-io' });
    expect(ls.stdout.trim().split('\n')).toContain('docker.io/library/busybox:strata');
    const chain = chainIDs(busybox.manifests[0]!.layers.map((l) => l.diffID));
    const snaps = await ctr(d.address, ['snapshot', 'ls'], { namespace: 'ctr-io' });
    expect(rows(snaps.stdout).map((r) => r[0])).toContain(chain.at(-1));

    const out = join(dir.path, 'ctr-export.tar');
    const exp = await ctr(d.address, ['image', 'export', out, 'docker.io/library/busybox:strata'], { namespace: 'ctr-io' });
    expect(exp.code, exp.stderr).toBe(0);
    expect(existsSync(out)).toBe(true);

    const containerd: StartedContainerd = await startContainerd();
    const back = await ctrAt(containerd.address, ['image', 'import', out]);
    expect(back.code, back.stderr).toBe(0);
    const theirs = await ctrAt(containerd.address, ['image', 'ls']);
    const row = rows(theirs.stdout).find((r) => r[0] === 'docker.io/library/busybox:strata')!;
    expect(row[2]).toBe(busybox.target.digest);
    const check = await ctrAt(containerd.address, ['image', 'check']);
    expect(check.stdout).toMatch(/complete/);
  });
});

describe('strata image against stratad', () => {
  it('strata image pull prints the image; ls shows it like ctr does; check says unpacked', async () => {
    const ref = `${reg.host}/busybox:latest`;
    const pull = await strata(['image', 'pull', ref], 'cli');
    expect(pull.code, pull.stderr).toBe(0);
    expect(pull.stdout.trim()).toBe(`${ref} ${busybox.target.digest}`);
    // Not a terminal: progress as plain lines on stderr.
    expect(pull.stderr).toMatch(new RegExp(`layer ${busybox.manifests[0]!.layers[0]!.descriptor.digest}: unpacked`));

    const ours = await strata(['image', 'ls'], 'cli');
    const theirs = await ctr(d.address, ['image', 'ls'], { namespace: 'cli' });
    expect(ours.stdout).toBe(theirs.stdout);

    const check = await strata(['image', 'check'], 'cli');
    expect(rows(check.stdout)[0]!.slice(0, 5)).toEqual([ref, busybox.target.mediaType, busybox.target.digest, 'complete', '(3/3)']);
    expect(check.stdout).toMatch(/true\s*$/m);
  });

  it('strata image export, rm, import round trip; ctr sees the same image', async () => {
    const ref = `${reg.host}/busybox:latest`;
    const out = join(dir.path, 'strata-export.tar');
    expect((await strata(['image', 'export', out, ref], 'cli')).code).toBe(0);
    expect((await strata(['image', 'rm', ref], 'cli')).stdout.trim()).toBe(ref);
    expect((await strata(['image', 'ls', '-q'], 'cli')).stdout.trim()).toBe('');
    const imp = await strata(['image', 'import', out], 'cli');
    expect(imp.code, imp.stderr).toBe(0);
    expect(imp.stdout.trim()).toBe(`${ref} ${busybox.target.digest}`);
    const ls = await ctr(d.address, ['image', 'ls', '-q'], { namespace: 'cli' });
    expect(ls.stdout.trim()).toBe(ref);
  });

  it('errors keep their kind: a missing image, a bad reference', async () => {
    const missing = await strata(['image', 'export', join(dir.path, 'x.tar'), 'nope:latest'], 'cli');
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/not found/);
    expect(existsSync(join(dir.path, 'x.tar'))).toBe(false);
    const bad = await strata(['image', 'pull', 'UPPER/Case::'], 'cli');
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/invalid/);
  });
});
