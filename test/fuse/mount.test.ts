/**
 * src/fuse: a tar turned into a LayerSource, mounted with mountReadOnly, read through the kernel by other
 * processes (cat, stat, python's getxattr, overlayfs) and by this one (fs/promises only: a synchronous call
 * would wait on the event loop that serves the mount).
 */
import { execFile, spawn } from 'node:child_process';
import { chmod, lstat, mkdir, open, readFile, readdir, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { fuseUnavailableReason, mountReadOnly, type FuseBinding, type FuseMount } from '../../src/fuse/index.js';
import { isInvalidArgument } from '../../src/core/errdefs.js';
import { detachFuseMountsUnder, fuseMountsUnder, tarLayerSource, type TarLayerSource } from '../helpers/fuse.js';
import { FIXED_MTIME, makeTar } from '../helpers/tar.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

const run = promisify(execFile);

const xattr = async (path: string, name: string): Promise<string> =>
  (await run('python3', ['-c', 'import os,sys; sys.stdout.buffer.write(os.getxattr(sys.argv[1], sys.argv[2], follow_symlinks=False))', path, name])).stdout;

const BIG = Buffer.alloc(3 * 1024 * 1024 + 17);
for (let i = 0; i < BIG.length; i++) BIG[i] = (i * 31 + (i >> 12)) & 0xff;

async function sampleLayer(): Promise<TarLayerSource> {
  return tarLayerSource(
    await makeTar([
      { name: 'etc/', type: 'directory', mode: 0o755 },
      { name: 'etc/passwd', body: 'root:x:0:0:root:/root:/bin/sh\n', mode: 0o644 },
      { name: 'etc/shadow-link', type: 'link', linkname: 'etc/passwd' },
      { name: 'bin/', type: 'directory', mode: 0o755 },
      { name: 'bin/sh', type: 'symlink', linkname: '/bin/busybox' },
      { name: 'bin/su', body: '#!/bin/sh\n', mode: 0o4755 },
      { name: 'tmp/', type: 'directory', mode: 0o1777 },
      { name: 'home/user/', type: 'directory', mode: 0o700, uid: 1000, gid: 1001 },
      { name: 'home/user/notes', body: 'mine', mode: 0o600, uid: 1000, gid: 1001 },
      { name: 'cap', body: 'x', pax: { 'SCHILY.xattr.user.note': 'hello', 'SCHILY.xattr.security.capability': '\x01\x00\x00\x02' } },
      { name: 'dev/', type: 'directory' },
      { name: 'dev/null', type: 'character-device', devmajor: 1, devminor: 3, mode: 0o666 },
      { name: 'dev/sda', type: 'block-device', devmajor: 8, devminor: 0, mode: 0o660, gid: 6 },
      { name: 'dev/pipe', type: 'fifo', mode: 0o600 },
      { name: 'big', body: BIG },
      { name: 'empty', body: '' },
    ]),
  );
}

let dir: TempDir;
let mounts: FuseMount[] = [];
const mountWith = async (binding: FuseBinding, source: TarLayerSource, name = 'mnt'): Promise<string> => {
  const mp = join(dir.path, `${binding}-${name}`);
  await mkdir(mp, { recursive: true });
  mounts.push(await mountReadOnly(mp, source, { fsName: 'strata-test', binding }));
  return mp;
};

beforeAll(async () => {
  dir = await tempDir('strata-fuse-');
  await chmod(dir.path, 0o755); // other users reach the mounts (mkdtemp makes it 0700)
});
afterEach(async () => {
  for (const m of mounts.splice(0)) await m.unmount();
  await detachFuseMountsUnder(dir.path);
});
afterAll(async () => {
  await detachFuseMountsUnder(dir.path);
  expect(await fuseMountsUnder(dir.path)).toEqual([]);
  await dir.cleanup();
});

const BINDINGS: FuseBinding[] = ['fuse3', 'fuse-native'];

describe('mountReadOnly', () => {
  it('is available here: /dev/fuse and the built libfuse 3 binding', () => {
    expect(fuseUnavailableReason()).toBeUndefined();
  });

  it('refuses a mountpoint that is not a directory, without naming the path', async () => {
    const file = join(dir.path, 'a-file');
    await run('touch', [file]);
    const err = (await mountReadOnly(file, await sampleLayer()).catch((e: unknown) => e)) as Error;
    expect(isInvalidArgument(err)).toBe(true);
    expect(err.message).not.toContain(dir.path);
    expect(await fuseMountsUnder(dir.path)).toEqual([]);
  });
});

describe.each(BINDINGS)('with the %s binding', (binding) => {
  const mounted = (source: TarLayerSource, name?: string) => mountWith(binding, source, name);

  describe('a LayerSource mounted read-only over FUSE', () => {
    it('shows the files, their modes, owners, times, symlinks and hard links as the tar has them', async () => {
      const mp = await mounted(await sampleLayer());
      expect((await readdir(mp)).sort()).toEqual(['big', 'bin', 'cap', 'dev', 'empty', 'etc', 'home', 'tmp']);
      expect(await readFile(join(mp, 'etc/passwd'), 'utf8')).toBe('root:x:0:0:root:/root:/bin/sh\n');
      expect((await readFile(join(mp, 'big'))).equals(BIG)).toBe(true);
      expect((await readFile(join(mp, 'empty'))).length).toBe(0);

      const su = await lstat(join(mp, 'bin/su'));
      expect(su.mode).toBe(0o104755);
      expect((await lstat(join(mp, 'tmp'))).mode).toBe(0o41777);
      const home = await lstat(join(mp, 'home/user'));
      expect([home.mode, home.uid, home.gid]).toEqual([0o40700, 1000, 1001]);
      const notes = await lstat(join(mp, 'home/user/notes'));
      expect([notes.mode, notes.uid, notes.gid, notes.size]).toEqual([0o100600, 1000, 1001, 4]);
      expect(notes.mtimeMs).toBe(FIXED_MTIME.getTime());

      expect(await readlink(join(mp, 'bin/sh'))).toBe('/bin/busybox');
      expect((await lstat(join(mp, 'bin/sh'))).isSymbolicLink()).toBe(true);

      const a = await lstat(join(mp, 'etc/passwd'));
      const b = await lstat(join(mp, 'etc/shadow-link'));
      expect(a.ino).toBe(b.ino);
      expect([a.nlink, b.nlink]).toEqual([2, 2]);

      // Another process sees the same (stat(1) through the kernel, not through this process's view).
      expect((await run('stat', ['-c', '%a %u %g %F', join(mp, 'home/user/notes')])).stdout.trim()).toBe('600 1000 1001 regular file');
    });

    it('serves devices, fifos and extended attributes', async () => {
      const mp = await mounted(await sampleLayer());
      const nul = await lstat(join(mp, 'dev/null'));
      expect(nul.isCharacterDevice()).toBe(true);
      expect((await run('stat', ['-c', '%t:%T %a', join(mp, 'dev/null')])).stdout.trim()).toBe('1:3 666');
      const sda = await lstat(join(mp, 'dev/sda'));
      expect(sda.isBlockDevice()).toBe(true);
      expect([sda.gid, sda.mode & 0o777]).toEqual([6, 0o660]);
      expect((await run('stat', ['-c', '%t:%T', join(mp, 'dev/sda')])).stdout.trim()).toBe('8:0');
      expect((await lstat(join(mp, 'dev/pipe'))).isFIFO()).toBe(true);

      expect(await xattr(join(mp, 'cap'), 'user.note')).toBe('hello');
      const names = (await run('python3', ['-c', 'import os,sys; print(sorted(os.listxattr(sys.argv[1])))', join(mp, 'cap')])).stdout;
      expect(names.trim()).toBe("['security.capability', 'user.note']");
      await expect(xattr(join(mp, 'etc/passwd'), 'user.note')).rejects.toThrow(/No data available/);
    });

    it('is read-only, mounted allow_other with the kernel checking permissions', async () => {
      const mp = await mounted(await sampleLayer());
      await expect(run('touch', [join(mp, 'new')])).rejects.toThrow(/Read-only file system/);
      await expect(run('sh', ['-c', `echo x >> ${join(mp, 'etc/passwd')}`])).rejects.toThrow(/Read-only file system/);
      // A user other than the owner cannot read a 0600 file, nor list a 0700 directory (default_permissions),
      // and can read a 0644 one (allow_other: not only the mounting user sees the mount).
      const asNobody = (cmd: string) => run('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', 'sh', '-c', cmd]);
      await expect(asNobody(`cat ${join(mp, 'home/user/notes')}`)).rejects.toThrow(/Permission denied/);
      expect((await asNobody(`cat ${join(mp, 'etc/passwd')}`)).stdout).toContain('root:x:0:0');
      expect((await run('setpriv', ['--reuid=1000', '--regid=1001', '--clear-groups', 'cat', join(mp, 'home/user/notes')])).stdout).toBe('mine');
      const line = (await readFile('/proc/self/mountinfo', 'utf8')).split('\n').find((l) => l.split(' ')[4] === mp)!;
      expect(line).toMatch(/ ro[, ]/);
      expect(line).toMatch(/allow_other/);
      expect(line).toMatch(/default_permissions/);
      expect(line).toContain(' strata-test ');
    });
  });

  describe('many mounts', () => {
    it('serves 16 mounts from one process at once, each its own tree, and unmounts them all', async () => {
      const points: string[] = [];
      for (let i = 0; i < 16; i++) {
        const src = await tarLayerSource(await makeTar([{ name: 'id', body: `layer ${i}\n` }]));
        points.push(await mounted(src, `many-${i}`));
      }
      const { stdout } = await run('cat', points.map((p) => join(p, 'id')));
      expect(stdout).toBe(points.map((_, i) => `layer ${i}\n`).join(''));
      expect((await fuseMountsUnder(dir.path)).filter((p) => p.includes(`${binding}-many-`)).length).toBe(16);
      for (const m of mounts.splice(0)) await m.unmount();
      expect(await fuseMountsUnder(dir.path)).toEqual([]);
    });
  });

  describe('large directories', () => {
    it('lists a directory of 3,000 entries with long names completely, across many readdir replies', async () => {
      const names = Array.from({ length: 3000 }, (_, i) => `entry-${String(i).padStart(5, '0')}-${'n'.repeat(i % 200)}`);
      const mp = await mounted(await tarLayerSource(await makeTar(names.map((name, i) => ({ name: `big-dir/${name}`, body: String(i) })))));
      const listed = (await run('ls', ['-f', join(mp, 'big-dir')], { maxBuffer: 64 << 20 })).stdout.split('\n').filter(Boolean);
      expect(listed.filter((n) => n !== '.' && n !== '..').sort()).toEqual([...names].sort());
      expect(listed.filter((n) => n === '.' || n === '..').sort()).toEqual(['.', '..']);
      // find stats every entry (READDIRPLUS where the binding answers it, else LOOKUP): sizes are right.
      const sizes = (await run('find', [join(mp, 'big-dir'), '-type', 'f', '-printf', '%s\n'], { maxBuffer: 64 << 20 })).stdout.split('\n').filter(Boolean);
      expect(sizes.length).toBe(3000);
      expect(sizes.reduce((t, x) => t + Number(x), 0)).toBe(names.reduce((t, _, i) => t + String(i).length, 0));
    });
  });

  describe('a FUSE layer under overlayfs', () => {
    it('hides what a whiteout names and what an opaque directory covers, as a lowerdir of an overlay mount', async () => {
      const upper = await tarLayerSource(
        await makeTar([
          { name: '.wh.gone', body: '' },
          { name: 'opq/', type: 'directory' },
          { name: 'opq/.wh..wh..opq', body: '' },
          { name: 'opq/new', body: 'new' },
          { name: 'kept/added', body: 'added' },
        ]),
      );
      expect(upper.node('gone')).toMatchObject({ type: 'char', devMajor: 0, devMinor: 0 });
      expect(upper.node('opq')!.xattrs.get('trusted.overlay.opaque')?.toString()).toBe('y');
      const top = await mounted(upper, 'top');
      const base = join(dir.path, `${binding}-base`);
      for (const d of ['opq', 'kept']) await mkdir(join(base, d), { recursive: true });
      await run('sh', ['-c', `echo gone > ${base}/gone; echo old > ${base}/opq/old; echo kept > ${base}/kept/old`]);
      const merged = join(dir.path, `${binding}-merged`);
      await mkdir(merged);
      await run('mount', ['-t', 'overlay', 'overlay', '-o', `ro,lowerdir=${top}:${base}`, merged]);
      try {
        expect((await run('ls', ['-A', merged])).stdout.split('\n').filter(Boolean).sort()).toEqual(['kept', 'opq']);
        expect((await run('ls', ['-A', join(merged, 'opq')])).stdout.trim()).toBe('new');
        expect((await run('ls', ['-A', join(merged, 'kept')])).stdout.split('\n').filter(Boolean).sort()).toEqual(['added', 'old']);
        expect((await run('cat', [join(merged, 'opq/new'), join(merged, 'kept/old')])).stdout).toBe('newkept\n');
      } finally {
        await run('umount', [merged]);
      }
    });
  });

  describe('reads that fail or take long', () => {
    it('answers EIO for a read the source rejects, and keeps serving the others', async () => {
      const source = await sampleLayer();
      const mp = await mounted(source);
      source.intercept = (node) => (node === source.node('etc/passwd') ? Promise.reject(new Error('registry gone')) : undefined);
      await expect(run('cat', [join(mp, 'etc/passwd')])).rejects.toThrow(/Input\/output error/);
      expect((await run('cat', [join(mp, 'home/user/notes')])).stdout).toBe('mine');
      source.intercept = undefined;
      expect((await run('cat', [join(mp, 'etc/passwd')])).stdout).toContain('root:x:0:0');
    });

    // libfuse 3 negotiates requests of up to 1 MiB (FUSE_MAX_PAGES); libfuse 2 (fuse-native) cannot: 128 KiB.
    const largest = binding === 'fuse3' ? 1024 * 1024 : 128 * 1024;
    it(`asks the source for ${largest / 1024} KiB at a time when a reader goes sequentially (the raised readahead)`, async () => {
      const source = await sampleLayer();
      const mp = await mounted(source);
      const lengths: number[] = [];
      source.intercept = (node, offset, length) => {
        if (node === source.node('big')) lengths.push(length);
        return undefined;
      };
      const { stdout } = await run('sh', ['-c', `dd if=${join(mp, 'big')} bs=1M 2>/dev/null | md5sum`]);
      const { createHash } = await import('node:crypto');
      expect(stdout.split(' ')[0]).toBe(createHash('md5').update(BIG).digest('hex'));
      expect(Math.max(...lengths)).toBe(largest);
      expect(lengths.length).toBeLessThan(Math.ceil(BIG.length / largest) * 2);
    });

    it('serves other requests, and keeps the event loop free, while one read waits on a slow source', async () => {
      const source = await sampleLayer();
      const mp = await mounted(source);
      let release!: () => void;
      const gate = new Promise<void>((r) => (release = r));
      let slowCalls = 0;
      source.intercept = (node, offset, length) => {
        if (node !== source.node('big')) return undefined;
        slowCalls++;
        return gate.then(() => BIG.subarray(offset, offset + length));
      };
      const slow = run('md5sum', [join(mp, 'big')]);
      while (slowCalls === 0) await new Promise((r) => setTimeout(r, 10));
      // The slow read holds its request; a listing and another file's read go on meanwhile (this process
      // hears those children exit: its event loop turns).
      expect((await run('cat', [join(mp, 'etc/passwd')])).stdout).toContain('root:x:0:0');
      expect((await run('ls', [join(mp, 'dev')])).stdout.split('\n').filter(Boolean)).toEqual(['null', 'pipe', 'sda']);
      let slowDone = false;
      void slow.then(() => (slowDone = true));
      expect(slowDone).toBe(false);
      release();
      const { createHash } = await import('node:crypto');
      expect((await slow).stdout.split(' ')[0]).toBe(createHash('md5').update(BIG).digest('hex'));
    });
  });

  describe('programs', () => {
    it('runs a static binary from the mount (exec maps its pages through the FUSE page cache)', async () => {
      const busybox = await readFile('/bin/busybox');
      const mp = await mounted(await tarLayerSource(await makeTar([{ name: 'bin/busybox', body: busybox, mode: 0o755 }])));
      // Through sh: Node's spawn waits, on the event loop's thread, for its child's execve to succeed, and an
      // execve of a file on this process's own mount needs that thread to answer the reads (docs/fuse.md).
      const bb = (...args: string[]) => run('sh', ['-c', 'exec "$@"', 'sh', join(mp, 'bin/busybox'), ...args]);
      expect((await bb('echo', 'hello from fuse')).stdout).toBe('hello from fuse\n');
      expect((await bb('sha256sum', join(mp, 'bin/busybox'))).stdout.split(' ')[0]).toBe(
        (await import('node:crypto')).createHash('sha256').update(busybox).digest('hex'),
      );
    });

    it('keeps serving after a reader is killed while its read waits on the source', async () => {
      const source = await sampleLayer();
      const mp = await mounted(source);
      let release!: () => void;
      const gate = new Promise<void>((r) => (release = r));
      let waiting = 0;
      source.intercept = (node, offset, length) => {
        if (node !== source.node('big')) return undefined;
        waiting++;
        return gate.then(() => BIG.subarray(offset, offset + length));
      };
      const reader = spawn('cat', [join(mp, 'big')], { stdio: ['ignore', 'ignore', 'ignore'] });
      const exited = new Promise<NodeJS.Signals | null>((r) => reader.on('exit', (_code, signal) => r(signal)));
      while (waiting === 0) await new Promise((r) => setTimeout(r, 10));
      reader.kill('SIGKILL');
      expect(await exited).toBe('SIGKILL');
      release(); // the answers now go to a request the kernel has given up on
      source.intercept = undefined;
      expect((await run('cat', [join(mp, 'etc/passwd')])).stdout).toContain('root:x:0:0');
      const { createHash } = await import('node:crypto');
      expect((await run('md5sum', [join(mp, 'big')])).stdout.split(' ')[0]).toBe(createHash('md5').update(BIG).digest('hex'));
    });
  });

  describe('unmounting', () => {
    it('detaches the mount while a file is open, and a second unmount does not throw', async () => {
      const source = await sampleLayer();
      const mp = join(dir.path, `${binding}-busy`);
      await mkdir(mp);
      const m = await mountReadOnly(mp, source, { binding });
      const fh = await open(join(mp, 'big'));
      try {
        const buf = Buffer.alloc(10);
        await fh.read(buf, 0, 10, 0);
        expect(buf.equals(BIG.subarray(0, 10))).toBe(true);
        await m.unmount();
        expect(await fuseMountsUnder(mp)).toEqual([]);
        // Detached, not cut off: the open file still reads (a part it had not read before).
        const later = Buffer.alloc(4096);
        const { bytesRead } = await fh.read(later, 0, 4096, 2 * 1024 * 1024);
        expect(bytesRead).toBe(4096);
        expect(later.equals(BIG.subarray(2 * 1024 * 1024, 2 * 1024 * 1024 + 4096))).toBe(true);
      } finally {
        await fh.close();
      }
      await m.unmount();
      expect(await fuseMountsUnder(dir.path)).toEqual([]);
    });

    it('does not throw when the mount was already detached by someone else', async () => {
      const mp = join(dir.path, `${binding}-gone`);
      await mkdir(mp);
      const m = await mountReadOnly(mp, await sampleLayer(), { binding });
      await run('umount', ['-l', mp]);
      await m.unmount();
      expect(await fuseMountsUnder(mp)).toEqual([]);
    });
  });
});
