/**
 * The snapshotter's rebase capability (containerd 2.2: Commit with WithParent, CommitSnapshotRequest.parent):
 * overlayfs commits a snapshot prepared without a parent onto a committed one, the namespaced layer records
 * the new parent, the gRPC service and the proxy client carry it, and backends without the capability refuse.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chown, mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ProxySnapshotter } from '../../src/api/clients/snapshotter.js';
import { MetadataStore } from '../../src/metadata/index.js';
import { openLocalContentStore } from '../../src/content/local.js';
import { withTempMount } from '../../src/mount/index.js';
import { NativeSnapshotter } from '../../src/snapshots/native/index.js';
import { openOverlaySnapshotter } from '../../src/snapshots/overlay/index.js';
import { hasCapability, LABEL_SNAPSHOT_REBASE, SnapshotterCapability, type Snapshotter } from '../../src/snapshots/types.js';
import { kindOf } from '../helpers/errors.js';
import { serveSnapshotter, type ServedBackend } from '../helpers/serve-snapshotter.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

let dir: TempDir;
let overlay: Snapshotter;
let native: Snapshotter;
let md: MetadataStore;
let served: ServedBackend;
let proxy: ProxySnapshotter;

beforeAll(async () => {
  dir = await tempDir();
  overlay = await openOverlaySnapshotter(join(dir.path, 'overlay'));
  native = await NativeSnapshotter.open(join(dir.path, 'native'));
  md = MetadataStore.open(join(dir.path, 'meta.db'), await openLocalContentStore(join(dir.path, 'content')));
  await mkdir(join(dir.path, 'served'));
  served = await serveSnapshotter('overlayfs', join(dir.path, 'served'), join(dir.path, 'sn.sock'));
  // A proxy plugin declares its capabilities in config (the snapshots API cannot ask); the commit's parent
  // travels in CommitSnapshotRequest.parent (field 5, containerd 2.2's).
  proxy = new ProxySnapshotter(served.address, 'served', undefined, [SnapshotterCapability.Rebase]);
}, 60_000);

afterAll(async () => {
  await proxy?.close();
  await served?.stop();
  await overlay?.close();
  await native?.close();
  md?.close();
  await dir?.cleanup();
});

/** A committed base with /base (root owned by 1234:1234), and a parentless active snapshot with /top. */
async function baseAndLoose(sn: Snapshotter, tag: string): Promise<void> {
  await withTempMount(await sn.prepare(`${tag}-base-active`, ''), async (root) => {
    await writeFile(join(root, 'base'), 'base');
    await chown(root, 1234, 1234);
  });
  await sn.commit(`${tag}-base`, `${tag}-base-active`);
  await withTempMount(await sn.prepare(`${tag}-top-active`, '', { labels: { [LABEL_SNAPSHOT_REBASE]: 'true' } }), async (root) => {
    await writeFile(join(root, 'top'), 'top');
  });
}

async function expectRebased(sn: Snapshotter, tag: string): Promise<void> {
  await sn.commit(`${tag}-top`, `${tag}-top-active`, { parent: `${tag}-base` });
  expect((await sn.stat(`${tag}-top`)).parent).toBe(`${tag}-base`);
  const mounts = await sn.view(`${tag}-check`, `${tag}-top`);
  try {
    await withTempMount(mounts, async (root) => {
      expect(await readFile(join(root, 'base'), 'utf8')).toBe('base');
      expect(await readFile(join(root, 'top'), 'utf8')).toBe('top');
      // A child's root belongs to the owner of its parent's root, rebased or not.
      expect((await stat(root)).uid).toBe(1234);
    });
  } finally {
    await sn.remove(`${tag}-check`);
  }
  // The parent now has a child: it cannot go first.
  expect(await kindOf(sn.remove(`${tag}-base`))).toBe('failed precondition');
}

describe('rebase', () => {
  it('overlayfs reports the rebase capability, and native does not', () => {
    expect(overlay.capabilities).toContain(SnapshotterCapability.Rebase);
    expect(hasCapability(native, SnapshotterCapability.Rebase)).toBe(false);
  });

  it('overlayfs gives a snapshot prepared to be rebased an overlay mount, so whiteouts are written as overlay whiteouts', async () => {
    const mounts = await overlay.prepare('loose', '', { labels: { [LABEL_SNAPSHOT_REBASE]: 'true' } });
    expect(mounts).toHaveLength(1);
    expect(mounts[0]!.type).toBe('overlay');
    expect(mounts[0]!.options.some((o) => o.startsWith('upperdir='))).toBe(true);
    expect(mounts[0]!.options.some((o) => o.startsWith('lowerdir='))).toBe(true);
    // Without the label a parentless snapshot is a bind mount, as containerd's.
    expect((await overlay.prepare('plain', ''))[0]!.type).toBe('bind');
    await overlay.remove('loose');
    await overlay.remove('plain');
  });

  it('overlayfs commits a snapshot prepared without a parent onto a committed parent', async () => {
    await baseAndLoose(overlay, 'ov');
    await expectRebased(overlay, 'ov');
  });

  it('the rebase is refused onto a missing or active parent, for a snapshot that has another parent, and by a backend without the capability', async () => {
    await overlay.prepare('r-active-parent', '');
    await overlay.prepare('r-loose', '');
    expect(await kindOf(overlay.commit('r1', 'r-loose', { parent: 'nope' }))).toBe('not found');
    expect(await kindOf(overlay.commit('r1', 'r-loose', { parent: 'r-active-parent' }))).toBe('invalid argument');
    await overlay.prepare('r-child', 'ov-base');
    expect(await kindOf(overlay.commit('r2', 'r-child', { parent: 'ov-top' }))).toBe('failed precondition');
    // Naming the parent it already has is a plain commit.
    await overlay.commit('r2', 'r-child', { parent: 'ov-base' });
    expect((await overlay.stat('r2')).parent).toBe('ov-base');

    await withTempMount(await native.prepare('n-base-active', ''), async (root) => writeFile(join(root, 'f'), 'f'));
    await native.commit('n-base', 'n-base-active');
    await native.prepare('n-loose', '');
    expect(await kindOf(native.commit('n-top', 'n-loose', { parent: 'n-base' }))).toBe('not implemented');
    expect((await native.stat('n-loose')).kind).toBe('active');
  });

  it('the namespaced layer passes the rebase to the backend and records the new parent', async () => {
    const sn = md.addSnapshotter('overlayfs', overlay).bind({ namespace: 'rebase' });
    expect(hasCapability(sn, SnapshotterCapability.Rebase)).toBe(true);
    await baseAndLoose(sn, 'ns');
    expect(await kindOf(sn.commit('ns-x', 'ns-top-active', { parent: 'missing' }))).toBe('not found');
    await expectRebased(sn, 'ns');
    // The backend's record has the parent too.
    const backend: { name: string; parent: string }[] = [];
    await overlay.walk((i) => void backend.push({ name: i.name, parent: i.parent }));
    const top = backend.find((b) => b.name.endsWith('/ns-top'))!;
    expect(top.parent).toMatch(/^rebase\/\d+\/ns-base$/);
    // And a backend without the capability is refused before it is called.
    const plain = md.addSnapshotter('native', native).bind({ namespace: 'rebase' });
    await withTempMount(await plain.prepare('p-base-active', ''), async (root) => writeFile(join(root, 'f'), 'f'));
    await plain.commit('p-base', 'p-base-active');
    await plain.prepare('p-loose', '');
    expect(await kindOf(plain.commit('p-top', 'p-loose', { parent: 'p-base' }))).toBe('not implemented');
  });

  it('the rebase reaches a proxy plugin through CommitSnapshotRequest.parent', async () => {
    await baseAndLoose(proxy, 'px');
    await expectRebased(proxy, 'px');
  });
});
