/**
 * Idmapped mounts on the overlayfs snapshotter (containerd 2.0's `remap-ids`, #5890) on real mounts: the
 * `containerd.io/snapshot/uidmapping` / `gidmapping` labels become `uidmap=` / `gidmap=` mount options, src/mount
 * mounts the overlay over idmapped clones of the lowers and detaches those, and a detach that fails never
 * removes data (containerd #10704/#10721).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, chmodSync, rmSync } from 'node:fs';
import { chmod, chown, mkdtemp, readdir, readFile, readlink, rmdir, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LABEL_SNAPSHOT_GIDMAPPING, LABEL_SNAPSHOT_UIDMAPPING } from '../../src/core/idmap.js';
import type { Mount } from '../../src/core/mount.js';
import { silentLogger } from '../../src/log/index.js';
import { idmapHelperAvailable, isMountPoint, mountAll, unmount } from '../../src/mount/index.js';
import { checkIdmapSupport, openOverlaySnapshotter } from '../../src/snapshots/overlay/index.js';
import { SnapshotterCapability, type Snapshotter } from '../../src/snapshots/types.js';
import { kindOf } from '../helpers/errors.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

const run = promisify(execFile);

const UIDMAP = '0:100000:65536';
const GIDMAP = '0:200000:65536';
const MAPPED = { [LABEL_SNAPSHOT_UIDMAPPING]: UIDMAP, [LABEL_SNAPSHOT_GIDMAPPING]: GIDMAP };

let tmp: TempDir;
const targets: string[] = [];
const opened: Snapshotter[] = [];
const children: ChildProcess[] = [];

/** Mount points of this process whose path starts with prefix. */
async function mountsUnder(prefix: string): Promise<string[]> {
  const info = await readFile('/proc/self/mountinfo', 'utf8');
  return info
    .split('\n')
    .map((l) => l.split(' ')[4] ?? '')
    .filter((p) => p.startsWith(prefix));
}
// This file asserts that idmapped mounts leave no temporary directory or mount behind. Daemons that other test
// files start meanwhile probe idmapped mounts too (under the system's temporary directory), so this file's own
// temporary directories (src/mount takes them from os.tmpdir()) live in a private TMPDIR.
const privateTmp = mkdtempSync(join(tmpdir(), 'strata-idmaptest-'));
chmodSync(privateTmp, 0o755);
process.env.TMPDIR = privateTmp;
const TEMP_PREFIX = join(tmpdir(), 'strata-idmap-');

beforeAll(async () => {
  tmp = await tempDir('strata-idm-test-');
  // The container's root (host uid 100000) must be able to reach the mount points below.
  await chmod(tmp.path, 0o755);
});

afterAll(async () => {
  for (const c of children) c.kill('SIGKILL');
  for (const t of targets.reverse()) await unmount(t).catch(() => undefined);
  for (const sn of opened) await sn.close().catch(() => undefined);
  for (const p of [...(await mountsUnder(tmp.path)), ...(await mountsUnder(TEMP_PREFIX))].reverse()) {
    await run('umount', ['-l', p]).catch(() => undefined);
  }
  await tmp.cleanup();
  rmSync(privateTmp, { recursive: true, force: true });
});

/**
 * Runs a command in a new user namespace with the given uid_map / gid_map lines ("inside outside count"):
 * `unshare --map-users` needs newuidmap (not installed here), so the maps are written from outside.
 */
async function inUserNS(uidMap: string, gidMap: string, cmd: string[]): Promise<{ stdout: string }> {
  const holder = spawn('unshare', ['--user', 'sleep', '30'], { stdio: 'ignore' });
  children.push(holder);
  try {
    const ours = await readlink('/proc/self/ns/user');
    for (let i = 0; i < 100 && (await readlink(`/proc/${holder.pid}/ns/user`).catch(() => ours)) === ours; i++) {
      await new Promise((r) => setTimeout(r, 20));
    }
    await writeFile(`/proc/${holder.pid}/uid_map`, `${uidMap}\n`);
    await writeFile(`/proc/${holder.pid}/gid_map`, `${gidMap}\n`);
    return await run('nsenter', ['--user', '-t', String(holder.pid), ...cmd]);
  } finally {
    holder.kill('SIGKILL');
  }
}

let n = 0;
async function open(remapIds = true): Promise<{ sn: Snapshotter; root: string }> {
  const root = join(tmp.path, `root-${++n}`);
  const sn = await openOverlaySnapshotter(root, { log: silentLogger, remapIds });
  opened.push(sn);
  return { sn, root };
}

async function target(): Promise<string> {
  const t = await mkdtemp(join(tmp.path, 'mnt-'));
  await chmod(t, 0o755);
  targets.push(t);
  return t;
}

/** A committed layer "base" holding /f (0:0), /user (1000:1000) and /bin (0:0), and its upper directory. */
async function baseLayer(sn: Snapshotter): Promise<string> {
  const mounts = await sn.prepare('base-a', '');
  const dir = mounts[0]!.source;
  await writeFile(join(dir, 'f'), 'from the layer\n');
  await writeFile(join(dir, 'user'), 'u\n');
  await chown(join(dir, 'user'), 1000, 1000);
  await run('mkdir', [join(dir, 'bin')]);
  await sn.commit('base', 'base-a');
  return dir;
}

/** Every file under dir with its owner and content digest: what "data intact" compares. */
async function inventory(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const name of (await readdir(dir, { recursive: true })).sort()) {
    const p = join(dir, name);
    const st = await stat(p);
    out[name] = `${st.uid}:${st.gid}:${st.isFile() ? createHash('sha256').update(await readFile(p)).digest('hex') : 'dir'}`;
  }
  return out;
}

const owner = async (p: string) => {
  const st = await stat(p);
  return `${st.uid}:${st.gid}`;
};

describe('idmapped overlay snapshots', () => {
  it('the helper is built and the probe finds idmapped overlays on this host, so overlayfs reports remap-ids', async () => {
    expect(idmapHelperAvailable()).toBe(true);
    expect(await checkIdmapSupport(join(tmp.path, 'probe'))).toBeUndefined();
    expect(await mountsUnder(TEMP_PREFIX)).toEqual([]);
    const { sn } = await open(true);
    // rebase is reported besides (parallel unpack), outside a user namespace: the test runs as the host's root.
    expect(sn.capabilities).toEqual([SnapshotterCapability.Rebase, SnapshotterCapability.RemapIds, SnapshotterCapability.OnlyRemapIds]);
    const { sn: plain } = await open(false);
    expect(plain.capabilities).toEqual([SnapshotterCapability.Rebase, SnapshotterCapability.OnlyRemapIds]);
  });

  it('a snapshot prepared with the mapping labels returns uidmap= and gidmap= options, and its upper belongs to the mapped root', async () => {
    const { sn } = await open();
    await baseLayer(sn);
    const mounts = await sn.prepare('c1', 'base', { labels: MAPPED });
    expect(mounts).toHaveLength(1);
    expect(mounts[0]!.type).toBe('overlay');
    expect(mounts[0]!.options.slice(0, 2)).toEqual([`uidmap=${UIDMAP}`, `gidmap=${GIDMAP}`]);
    const upper = mounts[0]!.options.find((o) => o.startsWith('upperdir='))!.slice('upperdir='.length);
    expect(await owner(upper)).toBe('100000:200000');
    // Mounts() answers the same, from the stored labels.
    expect(await sn.mounts('c1')).toEqual(mounts);
    // Without the capability the labels still set the root's owner, but the mounts carry no mapping.
    const { sn: plain } = await open(false);
    await baseLayer(plain);
    const pm = await plain.prepare('c1', 'base', { labels: MAPPED });
    expect(pm[0]!.options.some((o) => o.startsWith('uidmap=') || o.startsWith('gidmap='))).toBe(false);
  });

  it('the mounted overlay shows layer files as the host IDs of the mapping, and as their own owners inside the user namespace', async () => {
    const { sn } = await open();
    const layer = await baseLayer(sn);
    const mounts = await sn.prepare('c1', 'base', { labels: MAPPED });
    const t = await target();
    await mountAll(mounts, t);
    expect(await owner(join(t, 'f'))).toBe('100000:200000');
    expect(await owner(join(t, 'user'))).toBe('101000:201000');
    expect(await owner(join(t, 'bin'))).toBe('100000:200000');
    // Inside a user namespace with the same mapping, the container's view: its own root and user 1000.
    const { stdout } = await inUserNS('0 100000 65536', '0 200000 65536', [
      'stat',
      '-c',
      '%u:%g %n',
      join(t, 'f'),
      join(t, 'user'),
      join(t, 'bin'),
    ]);
    expect(stdout.trim().split('\n')).toEqual([`0:0 ${join(t, 'f')}`, `1000:1000 ${join(t, 'user')}`, `0:0 ${join(t, 'bin')}`]);
    // The layer on disk keeps its original owners.
    expect(await owner(join(layer, 'f'))).toBe('0:0');
    expect(await owner(join(layer, 'user'))).toBe('1000:1000');
    // No temporary idmapped lower is left mounted, nor its directory.
    expect(await mountsUnder(TEMP_PREFIX)).toEqual([]);
    expect((await readdir(tmpdir())).filter((d) => d.startsWith('strata-idmap-'))).toEqual([]);
    await unmount(t);
  });

  it('writes through the mount land in the upper with the host IDs, and the layer below is untouched', async () => {
    const { sn } = await open();
    const layer = await baseLayer(sn);
    const before = await inventory(layer);
    const mounts = await sn.prepare('c1', 'base', { labels: MAPPED });
    const upper = mounts[0]!.options.find((o) => o.startsWith('upperdir='))!.slice('upperdir='.length);
    const t = await target();
    await mountAll(mounts, t);
    // The container's root is host uid 100000 / gid 200000.
    await run('setpriv', ['--reuid', '100000', '--regid', '200000', '--clear-groups', 'sh', '-c', `echo more >> ${t}/f && echo new > ${t}/new && mkdir ${t}/bin/sub`]);
    expect(await owner(join(upper, 'new'))).toBe('100000:200000');
    expect(await owner(join(upper, 'f'))).toBe('100000:200000'); // copied up with its mapped owner
    expect(await owner(join(upper, 'bin', 'sub'))).toBe('100000:200000');
    expect(await readFile(join(upper, 'f'), 'utf8')).toBe('from the layer\nmore\n');
    // A user the mapping does not cover cannot write as the container's root.
    await expect(run('setpriv', ['--reuid', '4242', '--regid', '4242', '--clear-groups', 'sh', '-c', `echo x > ${t}/bin/nope`])).rejects.toThrow();
    expect(await inventory(layer)).toEqual(before);
    await unmount(t);
  });

  it('a view over several parents is a read-only overlay of idmapped lowers, and a parentless snapshot an idmapped bind', async () => {
    const { sn } = await open();
    await baseLayer(sn);
    const top = (await sn.prepare('top-a', 'base'))[0]!;
    const topUpper = top.options.find((o) => o.startsWith('upperdir='))!.slice('upperdir='.length);
    await writeFile(join(topUpper, 'g'), 'g\n');
    await sn.commit('top', 'top-a');
    const view = await sn.view('v', 'top', { labels: MAPPED });
    expect(view[0]!.type).toBe('overlay');
    expect(view[0]!.options.some((o) => o.startsWith('upperdir='))).toBe(false);
    const t = await target();
    await mountAll(view, t);
    expect(await owner(join(t, 'g'))).toBe('100000:200000');
    expect(await owner(join(t, 'user'))).toBe('101000:201000');
    await expect(writeFile(join(t, 'x'), 'x')).rejects.toThrow(/EROFS|read-only/i);
    await unmount(t);

    const bind = await sn.prepare('scratch', '', { labels: MAPPED });
    expect(bind[0]!.type).toBe('bind');
    expect(bind[0]!.options).toEqual([`uidmap=${UIDMAP}`, `gidmap=${GIDMAP}`, 'rw', 'rbind']);
    const b = await target();
    await mountAll(bind, b);
    expect(await isMountPoint(b)).toBe(true);
    await writeFile(join(bind[0]!.source, 'on-disk'), 'x');
    expect(await owner(join(b, 'on-disk'))).toBe('100000:200000');
    // Its root is the container's root through the bind (0:0 on disk, which the idmapping shows as mapped).
    expect(await owner(bind[0]!.source)).toBe('0:0');
    expect(await owner(b)).toBe('100000:200000');
    await unmount(b);
    expect(await isMountPoint(b)).toBe(false);
  });

  it('refuses malformed mapping labels and a mapping without the container root, with invalid argument', async () => {
    const { sn } = await open();
    await baseLayer(sn);
    expect(await kindOf(sn.prepare('bad1', 'base', { labels: { [LABEL_SNAPSHOT_UIDMAPPING]: 'x:1:2', [LABEL_SNAPSHOT_GIDMAPPING]: GIDMAP } }))).toBe(
      'invalid argument',
    );
    expect(await kindOf(sn.prepare('bad2', 'base', { labels: { [LABEL_SNAPSHOT_UIDMAPPING]: '1:100000:10', [LABEL_SNAPSHOT_GIDMAPPING]: GIDMAP } }))).toBe(
      'invalid argument',
    );
    expect(await kindOf(sn.stat('bad1'))).toBe('not found');
  });

  it('an overlay that fails to mount over the idmapped lowers detaches them and leaves no temporary directory', async () => {
    const { sn } = await open();
    await baseLayer(sn);
    const mounts = await sn.prepare('c1', 'base', { labels: MAPPED });
    // The kernel refuses an upper directory that does not exist, after the helper attached the lowers.
    const broken = mounts.map((m) => ({ ...m, options: m.options.map((o) => (o.startsWith('upperdir=') ? `${o}-missing` : o)) }));
    const t = await target();
    await expect(mountAll(broken, t)).rejects.toThrow(/mount overlay/);
    expect(await isMountPoint(t)).toBe(false);
    expect(await mountsUnder(TEMP_PREFIX)).toEqual([]);
    expect((await readdir(tmpdir())).filter((d) => d.startsWith('strata-idmap-'))).toEqual([]);
  });

  it('after unmount and remove nothing is left mounted and the snapshot is gone', async () => {
    const { sn, root } = await open();
    await baseLayer(sn);
    const mounts = await sn.prepare('c1', 'base', { labels: MAPPED });
    const t = await target();
    await mountAll(mounts, t);
    await unmount(t);
    await sn.remove('c1');
    await sn.cleanup();
    expect(await mountsUnder(root)).toEqual([]);
    expect(await mountsUnder(t)).toEqual([]);
    expect(await mountsUnder(TEMP_PREFIX)).toEqual([]);
    expect(await kindOf(sn.stat('c1'))).toBe('not found');
  });
});

/** The emptied temporary directories a failed detach left (rmdir: they must be empty by now). */
async function removeEmpty(left: string[]): Promise<void> {
  for (const p of left) {
    await rmdir(p);
    await rmdir(dirname(p));
  }
}

describe('a failed detach of a temporary idmapped lower never removes data (containerd #10704, fixed by #10721)', () => {
  /** Mounts with a detach hook; returns the error, the layer's inventory before, and the base upper. */
  async function failingMount(detachTemp: (dir: string) => Promise<void>) {
    const { sn } = await open();
    const layer = await baseLayer(sn);
    const before = await inventory(layer);
    const mounts: Mount[] = await sn.prepare('c1', 'base', { labels: MAPPED });
    const t = await target();
    const tempsBefore = new Set(await mountsUnder(TEMP_PREFIX));
    const err = await mountAll(mounts, t, { detachTemp }).then(
      () => undefined,
      (e: unknown) => e as Error,
    );
    const left = (await mountsUnder(TEMP_PREFIX)).filter((p) => !tempsBefore.has(p));
    return { err, layer, before, t, left };
  }

  it('a real EBUSY: the plain unmount of a temporary lower fails while a process has its cwd in it; the mount fails, data and mount stay', async () => {
    // The hook only chooses containerd 1.7.x/2.0.0's plain unmount (no MNT_DETACH) and makes the lower busy first:
    // the failure itself is the kernel's.
    let busy: ChildProcess | undefined;
    const { err, layer, before, t, left } = await failingMount(async (dir) => {
      busy = spawn('sleep', ['60'], { cwd: dir, stdio: 'ignore' });
      children.push(busy);
      await new Promise((r) => setTimeout(r, 100));
      await run('umount', [dir]);
    });
    expect(err?.message).toMatch(/could not be detached; they were left in place and nothing was removed/);
    expect(err?.message).not.toContain(tmpdir()); // no host path in the message
    expect(await isMountPoint(t)).toBe(false); // the overlay is not handed out
    expect(left).toHaveLength(1); // the temporary lower: still mounted, still holding the layer
    expect(await readFile(join(left[0]!, 'f'), 'utf8')).toBe('from the layer\n');
    expect(await inventory(layer)).toEqual(before);
    busy!.kill('SIGKILL');
    await new Promise((r) => busy!.once('exit', r));
    for (const p of left) await run('umount', [p]);
    await removeEmpty(left);
    expect(await inventory(layer)).toEqual(before);
  });

  it('a detach that says it succeeded but leaves the mount (fault injected: umount -l does not fail here) is caught by mountinfo: nothing removed', async () => {
    const { err, layer, before, t, left } = await failingMount(async () => undefined);
    expect(err?.message).toMatch(/1 of 1 temporary idmapped lower mount\(s\) could not be detached/);
    expect(await isMountPoint(t)).toBe(false);
    expect(left).toHaveLength(1);
    expect(await inventory(left[0]!)).toEqual(Object.fromEntries(Object.entries(before).map(([k]) => [k, expect.any(String)])));
    expect(await inventory(layer)).toEqual(before);
    // What containerd 2.0 did next (os.RemoveAll of the temporary directory): the clones are read-only
    // (containerd #10955), so even that cannot reach the layer's files.
    // coreutils rm -rf descends into the mount and unlinks children first, as Go's RemoveAll does.
    await expect(run('rm', ['-rf', dirname(left[0]!)])).rejects.toThrow(/Read-only file system/);
    expect(await inventory(layer)).toEqual(before);
    for (const p of left) await run('umount', ['-l', p]);
    await removeEmpty(left);
    expect(await inventory(layer)).toEqual(before);
  });

  it('a detach that throws (fault injected) leaves the data and reports the error', async () => {
    const { err, layer, before, left } = await failingMount(async () => {
      throw Object.assign(new Error('umount: target is busy'), { code: 'EBUSY' });
    });
    expect(err).toBeInstanceOf(Error);
    expect(left).toHaveLength(1);
    expect(await inventory(layer)).toEqual(before);
    for (const p of left) await run('umount', ['-l', p]);
    await removeEmpty(left);
    expect(await inventory(layer)).toEqual(before);
  });
});
