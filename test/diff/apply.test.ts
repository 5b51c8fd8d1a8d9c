/**
 * applyTar: a normal layer (files, modes, mtimes, symlinks, hardlinks, fifo, device, long names, PAX xattrs),
 * the diffID, whiteouts in 'delete' and 'overlay' mode (checked through a real overlay mount), and hostile
 * layers that try to write outside the target: each is rejected or lands inside, nothing appears outside.
 */
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { lstat, mkdir, readdir, readFile, readlink, stat, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { promisify } from 'node:util';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { applyTar } from '../../src/diff/apply.js';
import { isInvalidArgument } from '../../src/core/errdefs.js';
import { withTempMount } from '../../src/mount/index.js';
import { tempDir, type TempDir } from '../helpers/temp.js';
import { makeTar, type TarEntry } from '../helpers/tar.js';

const run = promisify(execFile);

async function getxattr(path: string, key: string): Promise<string | null> {
  const { stdout } = await run('python3', [
    '-c',
    'import os,sys\ntry:\n  sys.stdout.write(os.getxattr(sys.argv[1], sys.argv[2], follow_symlinks=False).decode())\nexcept OSError:\n  sys.stdout.write("\\0")',
    path,
    key,
  ]);
  return stdout === '\0' ? null : stdout;
}

async function tree(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (d: string, rel: string) => {
    for (const c of (await readdir(d)).sort()) {
      out.push(rel + c);
      const st = await lstat(join(d, c));
      if (st.isDirectory()) await walk(join(d, c), `${rel}${c}/`);
    }
  };
  await walk(dir, '');
  return out;
}

let tmp: TempDir;
let target: string;
let sentinel: string;

beforeEach(async () => {
  tmp = await tempDir('strata-apply-');
  target = join(tmp.path, 'a', 'b', 'target');
  sentinel = join(tmp.path, 'sentinel');
  await mkdir(target, { recursive: true });
  await mkdir(sentinel);
  await writeFile(join(sentinel, 'keep'), 'keep');
});
afterEach(async () => {
  await tmp.cleanup();
});

const apply = (buf: Buffer, opts?: Parameters<typeof applyTar>[2]) => applyTar(Readable.from([buf]), target, opts);

describe('normal layer', () => {
  it('extracts files, dirs, links, special files and long names with their metadata', async () => {
    const long = `${'d'.repeat(60)}/${'f'.repeat(80)}.txt`;
    const buf = await makeTar([
      { name: 'etc/', type: 'directory', mode: 0o750, mtime: new Date(1_000_000_000_000) },
      { name: 'etc/hosts', body: 'hello\n', mode: 0o640, uid: 1234, gid: 5678, mtime: new Date(1_100_000_000_000) },
      { name: 'bin/tool', body: 'x'.repeat(100_000), mode: 0o4755 },
      { name: 'link', type: 'symlink', linkname: 'etc/hosts' },
      { name: 'abs', type: 'symlink', linkname: '/nowhere' },
      { name: 'hard', type: 'link', linkname: 'etc/hosts' },
      { name: 'fifo', type: 'fifo', mode: 0o600 },
      { name: 'null', type: 'character-device', mode: 0o666, devmajor: 1, devminor: 3 },
      { name: long, body: 'long' },
      { name: 'x', body: 'xa', pax: { 'SCHILY.xattr.user.test': 'value1' } },
      { name: 'etc/hosts2', body: 'first' },
      { name: 'etc/hosts2', body: 'second' },
    ]);
    const res = await apply(buf);
    expect(res.diffID).toBe(`sha256:${createHash('sha256').update(buf).digest('hex')}`);
    expect(res.size).toBe(buf.length);

    const etc = await stat(join(target, 'etc'));
    expect(etc.mode & 0o7777).toBe(0o750);
    expect(etc.mtime.getTime()).toBe(1_000_000_000_000);
    const hosts = await stat(join(target, 'etc/hosts'));
    expect(await readFile(join(target, 'etc/hosts'), 'utf8')).toBe('hello\n');
    expect(hosts.mode & 0o7777).toBe(0o640);
    expect([hosts.uid, hosts.gid]).toEqual([1234, 5678]);
    expect(hosts.mtime.getTime()).toBe(1_100_000_000_000);
    expect(hosts.nlink).toBe(2);
    expect((await stat(join(target, 'hard'))).ino).toBe(hosts.ino);
    const tool = await stat(join(target, 'bin/tool'));
    expect(tool.size).toBe(100_000);
    expect(tool.mode & 0o7777).toBe(0o4755);
    expect(await readlink(join(target, 'link'))).toBe('etc/hosts');
    expect(await readlink(join(target, 'abs'))).toBe('/nowhere');
    expect((await lstat(join(target, 'fifo'))).isFIFO()).toBe(true);
    const dev = await lstat(join(target, 'null'));
    expect(dev.isCharacterDevice()).toBe(true);
    expect(dev.rdev).toBe((1 << 8) | 3);
    expect(await readFile(join(target, long), 'utf8')).toBe('long');
    expect(await readFile(join(target, 'etc/hosts2'), 'utf8')).toBe('second');
    expect(await getxattr(join(target, 'x'), 'user.test')).toBe('value1');
  });

  it('reports the directories a layer implies without entries and no lower layer describes, and only those', async () => {
    const buf = await makeTar([
      { name: 'a/b/f', body: 'f' }, // a and a/b implied
      { name: 'c/', type: 'directory', mode: 0o700 },
      { name: 'c/g', body: 'g' }, // c has its own entry
      { name: 'd/h', body: 'h' },
      { name: 'd/', type: 'directory', mode: 0o711 }, // d implied first, then given an entry
    ]);
    const res = await apply(buf);
    expect(res.implicitDirs.sort()).toEqual(['a', 'a/b']);
  });

  it('hashes every byte read, trailing zeros after the end-of-archive marker included', async () => {
    const buf = Buffer.concat([await makeTar([{ name: 'f', body: 'z' }]), Buffer.alloc(4096)]);
    const res = await apply(buf);
    expect(res).toEqual({ diffID: `sha256:${createHash('sha256').update(buf).digest('hex')}`, size: buf.length, implicitDirs: [] });
  });

  it("moves a chunk's memory to the worker only when told the chunks are its own; a caller's buffers stay intact otherwise", async () => {
    const buf = await makeTar([{ name: 'f', body: 'x'.repeat(3000) }]);
    const copy = Buffer.from(buf);
    // Whole ArrayBuffers (offset 0, full length): the kind of chunk that may be moved.
    const whole = () => {
      const b = Buffer.from(new ArrayBuffer(buf.length));
      buf.copy(b);
      return b;
    };
    const kept = whole();
    const res = await applyTar(Readable.from([kept]), target);
    expect(kept.length).toBe(buf.length);
    expect(kept.equals(copy)).toBe(true);
    expect(res.diffID).toBe(`sha256:${createHash('sha256').update(copy).digest('hex')}`);

    const moved = whole();
    const target2 = join(tmp.path, 'owned');
    await mkdir(target2);
    const res2 = await applyTar(Readable.from([moved]), target2, { ownsChunks: true });
    expect(moved.length).toBe(0); // detached: moved, not copied
    expect(res2.diffID).toBe(res.diffID);
    expect(await readFile(join(target2, 'f'), 'utf8')).toBe('x'.repeat(3000));
  });

  it('keeps the opaque marker when the directory entry comes after it (overlay mode)', async () => {
    await apply(
      await makeTar([
        { name: 'o/.wh..wh..opq', body: '' },
        { name: 'o/', type: 'directory', mode: 0o711 },
      ]),
      { whiteouts: 'overlay' },
    );
    expect(await getxattr(join(target, 'o'), 'trusted.overlay.opaque')).toBe('y');
    expect((await stat(join(target, 'o'))).mode & 0o7777).toBe(0o711);
  });

  it('rejects a truncated stream', async () => {
    const buf = await makeTar([{ name: 'f', body: 'y'.repeat(5000) }]);
    const err = await apply(buf.subarray(0, 2048)).catch((e: unknown) => e);
    expect(isInvalidArgument(err), String(err)).toBe(true);
  });

  it('rejects when the source stream fails', async () => {
    const buf = await makeTar([{ name: 'f', body: 'y'.repeat(5000) }]);
    const src = new Readable({
      read() {
        this.push(buf.subarray(0, 1024));
        this.destroy(new Error('boom'));
      },
    });
    await expect(applyTar(src, target)).rejects.toThrow('boom');
  });
});

async function populateLower(dir: string): Promise<void> {
  await mkdir(join(dir, 'opq/sub'), { recursive: true });
  await writeFile(join(dir, 'opq/old'), 'old');
  await writeFile(join(dir, 'opq/sub/old2'), 'old');
  await writeFile(join(dir, 'gone'), 'gone');
  await writeFile(join(dir, 'stay'), 'stay');
}

const whiteoutLayer = () =>
  makeTar([
    { name: 'opq/', type: 'directory', mode: 0o755 },
    { name: 'opq/new', body: 'new' },
    { name: 'opq/.wh..wh..opq', body: '' },
    { name: '.wh.gone', body: '' },
  ]);

describe('whiteouts', () => {
  it("'delete' mode removes whited-out files and empties opaque directories of older children", async () => {
    await populateLower(target);
    await apply(await whiteoutLayer());
    expect(await tree(target)).toEqual(['opq', 'opq/new', 'stay']);
  });

  it('rejects whiteouts that name something outside their directory', async () => {
    const err = await apply(await makeTar([{ name: 'a/.wh...', body: '' }])).catch((e: unknown) => e);
    expect(isInvalidArgument(err)).toBe(true);
  });

  it("'overlay' mode makes 0/0 char devices and opaque xattrs; an overlay mount shows the result", async () => {
    const lower = join(tmp.path, 'lower');
    const work = join(tmp.path, 'work');
    await mkdir(lower);
    await mkdir(work);
    await populateLower(lower);
    await apply(await whiteoutLayer(), { whiteouts: 'overlay' });
    const wh = await lstat(join(target, 'gone'));
    expect(wh.isCharacterDevice()).toBe(true);
    expect([wh.rdev, wh.uid, wh.gid]).toEqual([0, 0, 0]);
    expect(await getxattr(join(target, 'opq'), 'trusted.overlay.opaque')).toBe('y');
    expect(existsSync(join(target, 'opq/.wh..wh..opq'))).toBe(false);

    const seen = await withTempMount(
      [{ type: 'overlay', source: 'overlay', options: [`lowerdir=${lower}`, `upperdir=${target}`, `workdir=${work}`] }],
      (root) => tree(root),
    );
    expect(seen).toEqual(['opq', 'opq/new', 'stay']);
  });

  it("'overlay' mode with userxattr uses user.overlay.opaque", async () => {
    await apply(await whiteoutLayer(), { whiteouts: 'overlay', userxattr: true });
    expect(await getxattr(join(target, 'opq'), 'user.overlay.opaque')).toBe('y');
  });
});

describe('hostile layers', () => {
  const tag = randomBytes(6).toString('hex');
  const outside = async () => {
    expect(await tree(sentinel)).toEqual(['keep']);
    expect(await readFile(join(sentinel, 'keep'), 'utf8')).toBe('keep');
    expect((await readdir(join(tmp.path))).sort()).toEqual(['a', 'sentinel']);
    expect(await readdir(join(tmp.path, 'a'))).toEqual(['b']);
    expect(await readdir(join(tmp.path, 'a', 'b'))).toEqual(['target']);
    for (const p of [`/tmp/pwned-${tag}`, `/etc/passwd-${tag}`, `/x-${tag}`, `/escape-${tag}`]) expect(existsSync(p)).toBe(false);
  };
  const rejected = async (entries: TarEntry[], what: string) => {
    const err = await apply(await makeTar(entries)).catch((e: unknown) => e);
    expect(isInvalidArgument(err), String(err)).toBe(true);
    expect(String(err)).toContain(what);
    await outside();
  };

  it('cleans ../ names as containerd does (as if under /): they land inside the target', async () => {
    await apply(
      await makeTar([
        { name: `../escape-${tag}`, body: 'one' },
        { name: `a/../../escape2-${tag}`, body: 'two' },
        { name: `../../../../../../../../d-${tag}/../../x-${tag}`, body: 'three' },
        { name: `../../sub/`, type: 'directory' },
        { name: `../../sub/../sub/f`, body: 'four' },
      ]),
    );
    expect(await readFile(join(target, `escape-${tag}`), 'utf8')).toBe('one');
    expect(await readFile(join(target, `escape2-${tag}`), 'utf8')).toBe('two');
    expect(await readFile(join(target, `x-${tag}`), 'utf8')).toBe('three');
    expect(await readFile(join(target, 'sub/f'), 'utf8')).toBe('four');
    expect((await readdir(target)).sort()).toEqual([`escape-${tag}`, `escape2-${tag}`, 'sub', `x-${tag}`].sort());
    await outside();
  });

  it('cleans ../ through a planted symlink without leaving the target', async () => {
    await apply(
      await makeTar([
        { name: 'evil', type: 'symlink', linkname: '../../..' },
        { name: `../evil/../evil/pwned-${tag}`, body: 'x' },
        { name: `evil/../../x-${tag}`, body: 'y' },
      ]),
    );
    expect(await readFile(join(target, `pwned-${tag}`), 'utf8')).toBe('x');
    expect(await readFile(join(target, `x-${tag}`), 'utf8')).toBe('y');
    await outside();
  });

  it('puts absolute names inside the target, as containerd strips the leading slash', async () => {
    await apply(await makeTar([{ name: `/etc/passwd-${tag}`, body: 'x' }]));
    expect(await readFile(join(target, `etc/passwd-${tag}`), 'utf8')).toBe('x');
    await outside();
  });

  it('resolves a symlink to / planted in the layer inside the target', async () => {
    await apply(
      await makeTar([
        { name: 'evil', type: 'symlink', linkname: '/' },
        { name: `evil/tmp/pwned-${tag}`, body: 'x' },
      ]),
    );
    expect(await readFile(join(target, `tmp/pwned-${tag}`), 'utf8')).toBe('x');
    await outside();
  });

  it('resolves a climbing relative symlink inside the target', async () => {
    await apply(
      await makeTar([
        { name: 'd/evil', type: 'symlink', linkname: '../../../../..' },
        { name: `d/evil/x-${tag}`, body: 'x' },
        { name: 'up', type: 'symlink', linkname: `../sentinel` },
        { name: 'up/keep', body: 'overwritten?' },
      ]),
    );
    expect(await readFile(join(target, `x-${tag}`), 'utf8')).toBe('x');
    expect(await readFile(join(target, 'sentinel/keep'), 'utf8')).toBe('overwritten?');
    await outside();
  });

  it('does not write through a symlink already in the target', async () => {
    await symlink(sentinel, join(target, 'out'));
    await symlink('../../../sentinel', join(target, 'rel'));
    await apply(
      await makeTar([
        { name: 'out/keep', body: 'pwned' },
        { name: 'rel/new', body: 'pwned' },
      ]),
    );
    expect(await readFile(join(target, sentinel, 'keep'), 'utf8')).toBe('pwned');
    expect(await readFile(join(target, 'sentinel/new'), 'utf8')).toBe('pwned');
    await outside();
  });

  it('does not write through a final-component symlink: the entry replaces the link', async () => {
    await symlink(join(sentinel, 'keep'), join(target, 'f'));
    await apply(await makeTar([{ name: 'f', body: 'new' }]));
    expect((await lstat(join(target, 'f'))).isFile()).toBe(true);
    await outside();
  });

  it('handles a directory replaced by a symlink, then a write under it', async () => {
    await apply(
      await makeTar([
        { name: 'd/', type: 'directory' },
        { name: 'd/old', body: 'old' },
        { name: 'd', type: 'symlink', linkname: sentinel },
        { name: 'd/keep', body: 'pwned' },
      ]),
    );
    expect(await readlink(join(target, 'd'))).toBe(sentinel);
    expect(await readFile(join(target, sentinel, 'keep'), 'utf8')).toBe('pwned');
    await outside();
  });

  it('rejects hardlinks to host files, climbing hardlinks, and hardlinks through symlinks', async () => {
    await rejected([{ name: 'h', type: 'link', linkname: '/etc/passwd' }], 'does not exist');
    // Cleaned as containerd's hardlinkRootPath does: the target is looked up inside the root, where it is not.
    await rejected([{ name: 'h', type: 'link', linkname: '../../../../etc/passwd' }], 'does not exist');
    await rejected(
      [
        { name: 'l', type: 'symlink', linkname: '/etc' },
        { name: 'h', type: 'link', linkname: 'l/passwd' },
      ],
      'does not exist',
    );
    await symlink(sentinel, join(target, 'pre'));
    await rejected([{ name: 'h2', type: 'link', linkname: 'pre/keep' }], 'does not exist');
    expect((await stat(join(sentinel, 'keep'))).nlink).toBe(1);
  });

  it('a hardlink to a symlink links the symlink itself, not its target', async () => {
    await apply(
      await makeTar([
        { name: 's', type: 'symlink', linkname: join(sentinel, 'keep') },
        { name: 'h', type: 'link', linkname: 's' },
      ]),
    );
    expect((await lstat(join(target, 'h'))).isSymbolicLink()).toBe(true);
    expect((await stat(join(sentinel, 'keep'))).nlink).toBe(1);
    await outside();
  });
});
