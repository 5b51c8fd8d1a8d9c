/**
 * The unmodified ctr (Debian's containerd 1.6) driving stratad's snapshotters through `ctr snapshot`, for
 * each of overlayfs, native, btrfs and erofs (btrfs on a loop-mounted btrfs at its plugin root; erofs's view prints
 * `mount -t erofs <layer.erofs> ... -o ro,loop`, which mount(8) runs through a loop device): prepare, mount
 * what `ctr snapshot mounts` prints, commit, prepare and view on a parent, ls, tree, info, usage, label and
 * rm, checked on ctr's printed output as a containerd user sees it.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdir, readFile, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import type { RunResult } from '../helpers/ctr.js';
import { tempDir, type TempDir } from '../helpers/temp.js';
import { ctrAt, exec, mountsUnder, unmountUnder } from '../helpers/containerd.js';

/** ctr's tables (tabwriter, left-aligned): one record per row, keyed by the header's column names. */
function table(out: string): Record<string, string>[] {
  const [header, ...lines] = out.split('\n').filter((l) => l.trim() !== '');
  if (!header) return [];
  const cols = [...header.matchAll(/\S+/g)].map((m) => ({ name: m[0], start: m.index }));
  return lines.map((l) =>
    Object.fromEntries(cols.map((c, i) => [c.name, l.slice(c.start, cols[i + 1]?.start ?? l.length).trim()])),
  );
}

const ok = (r: RunResult, what: string) => expect(r.code, `${what}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`).toBe(0);

/** A loop-mounted btrfs at `at` (image file `image`): the btrfs plugin's root. */
async function mountBtrfs(image: string, at: string): Promise<void> {
  await writeFile(image, '');
  await truncate(image, 256 * 1024 * 1024);
  const mkfs = await exec('mkfs.btrfs', ['-q', '-f', image]);
  if (mkfs.code !== 0) throw new Error(`mkfs.btrfs: ${mkfs.stderr}`);
  await mkdir(at, { recursive: true });
  const m = await exec('mount', ['-o', 'loop', image, at]);
  if (m.code !== 0) throw new Error(`mount -o loop: ${m.stderr}`);
}

for (const snapshotter of ['overlayfs', 'native', 'btrfs', 'erofs'] as const) {
  describe(`ctr snapshot --snapshotter ${snapshotter} against stratad`, () => {
    let dir: TempDir;
    let d: StartedDaemon;
    let target: string;
    const sn = (args: string[]) => ctrAt(d.address, ['snapshot', '--snapshotter', snapshotter, ...args]);

    /** Mounts `key` at the target with the command `ctr snapshot mounts` prints, run by sh. */
    async function mountKey(key: string): Promise<string> {
      const m = await sn(['mounts', target, key]);
      ok(m, `ctr snapshot mounts ${target} ${key}`);
      expect(m.stdout).toMatch(new RegExp(`^mount -t \\S+ \\S+ ${target} -o \\S+\\n?$`));
      const sh = await exec('sh', [], { input: m.stdout });
      ok(sh, `sh <<< ${m.stdout}`);
      return m.stdout;
    }
    async function umount(): Promise<void> {
      ok(await exec('umount', [target]), `umount ${target}`);
    }

    beforeAll(async () => {
      dir = await tempDir(`strata-ctr-${snapshotter}-`);
      target = join(dir.path, 't');
      await mkdir(target);
      if (snapshotter === 'btrfs') {
        await mountBtrfs(join(dir.path, 'btrfs.img'), join(dir.path, 'root', 'io.containerd.snapshotter.v1.btrfs'));
      }
      d = await startDaemon({ dir });
    });

    afterAll(async () => {
      // A failed case may leave the target mounted: unmount it before the daemon goes, then the btrfs.
      if (dir) await unmountUnder(target);
      await d?.stop();
      if (dir) {
        await unmountUnder(dir.path);
        expect(await mountsUnder(dir.path)).toEqual([]);
        await dir.cleanup();
      }
    });

    it('ctr plugins ls shows the snapshotter ok', async () => {
      const r = await ctrAt(d.address, ['plugins', 'ls']);
      ok(r, 'ctr plugins ls');
      const row = table(r.stdout).find((p) => p.TYPE === 'io.containerd.snapshotter.v1' && p.ID === snapshotter);
      expect(row, `${r.stdout}\n${d.logs.slice(-2000)}`).toBeDefined();
      expect(row!.STATUS).toBe('ok');
    });

    it('prepare k1, mount it with the printed command, write a file, commit c1', async () => {
      ok(await sn(['prepare', 'k1']), 'prepare k1');
      await mountKey('k1');
      await writeFile(join(target, 'hello.txt'), `hello from ${snapshotter}\n`);
      await mkdir(join(target, 'dir'));
      await writeFile(join(target, 'dir', 'nested'), 'nested\n');
      await umount();
      ok(await sn(['commit', 'c1', 'k1']), 'commit c1 k1');
      const ls = table((await sn(['ls'])).stdout);
      expect(ls.map((r) => r.KEY)).not.toContain('k1');
      expect(ls).toContainEqual({ KEY: 'c1', PARENT: '', KIND: 'Committed' });
    });

    it('prepare k2 on c1: the file is there and the snapshot is writable', async () => {
      ok(await sn(['prepare', 'k2', 'c1']), 'prepare k2 c1');
      await mountKey('k2');
      expect(await readFile(join(target, 'hello.txt'), 'utf8')).toBe(`hello from ${snapshotter}\n`);
      expect(await readFile(join(target, 'dir', 'nested'), 'utf8')).toBe('nested\n');
      await writeFile(join(target, 'only-in-k2'), 'k2\n');
      await umount();
    });

    it('view v1 on c1: the file is there and writing fails', async () => {
      ok(await sn(['view', 'v1', 'c1']), 'view v1 c1');
      await mountKey('v1');
      try {
        expect(await readFile(join(target, 'hello.txt'), 'utf8')).toBe(`hello from ${snapshotter}\n`);
        // k2's own write is not in c1.
        await expect(readFile(join(target, 'only-in-k2'))).rejects.toThrow(/ENOENT/);
        await expect(writeFile(join(target, 'new-file'), 'x')).rejects.toThrow(/EROFS|read-only/);
        await expect(writeFile(join(target, 'hello.txt'), 'x')).rejects.toThrow(/EROFS|read-only/);
      } finally {
        await umount();
      }
    });

    it('ls shows KEY PARENT KIND', async () => {
      const r = await sn(['ls']);
      ok(r, 'ls');
      expect(r.stdout.split('\n')[0]).toMatch(/^KEY\s+PARENT\s+KIND\s*$/);
      expect(table(r.stdout).sort((a, b) => a.KEY!.localeCompare(b.KEY!))).toEqual([
        { KEY: 'c1', PARENT: '', KIND: 'Committed' },
        { KEY: 'k2', PARENT: 'c1', KIND: 'Active' },
        { KEY: 'v1', PARENT: 'c1', KIND: 'View' },
      ]);
    });

    it('tree shows k2 and v1 under c1', async () => {
      const r = await sn(['tree']);
      ok(r, 'tree');
      const lines = r.stdout.split('\n').filter(Boolean);
      expect(lines[0]).toBe(' c1');
      expect(lines.slice(1).sort()).toEqual(['  \\_ k2', '  \\_ v1']);
    });

    it('info c1 prints JSON with Kind Committed', async () => {
      const r = await sn(['info', 'c1']);
      ok(r, 'info c1');
      const info = JSON.parse(r.stdout) as { Kind: string; Name: string; Parent?: string; Created: string; Updated: string };
      expect(info.Kind).toBe('Committed');
      expect(info.Name).toBe('c1');
      expect(info.Parent ?? '').toBe('');
      expect(Date.parse(info.Created)).toBeGreaterThan(0);
      const k2 = JSON.parse((await sn(['info', 'k2'])).stdout) as { Kind: string; Parent: string };
      expect(k2).toMatchObject({ Kind: 'Active', Parent: 'c1' });
      const v1 = JSON.parse((await sn(['info', 'v1'])).stdout) as { Kind: string; Parent: string };
      expect(v1).toMatchObject({ Kind: 'View', Parent: 'c1' });
    });

    it('usage c1 shows a size and inodes', async () => {
      const r = await sn(['usage', '-b', 'c1']);
      ok(r, 'usage -b c1');
      expect(r.stdout.split('\n')[0]).toMatch(/^KEY\s+SIZE\s+INODES\s*$/);
      const [row] = table(r.stdout);
      expect(row?.KEY).toBe('c1');
      expect(Number(row!.SIZE)).toBeGreaterThan(0);
      expect(Number(row!.INODES)).toBeGreaterThan(0);
      // Human-readable by default.
      const h = table((await sn(['usage', 'c1'])).stdout)[0];
      expect(h?.SIZE).toMatch(/^\d+(\.\d+)? (B|KiB|MiB)$/);
    });

    it('label c1 a=b, then info shows it', async () => {
      const r = await sn(['label', 'c1', 'a=b']);
      ok(r, 'label c1 a=b');
      expect(r.stdout.trim().split(',')).toContain('a=b');
      const info = JSON.parse((await sn(['info', 'c1'])).stdout) as { Labels?: Record<string, string> };
      expect(info.Labels?.a).toBe('b');
      // An empty value removes the label.
      ok(await sn(['label', 'c1', 'a=']), 'label c1 a=');
      const after = JSON.parse((await sn(['info', 'c1'])).stdout) as { Labels?: Record<string, string> };
      expect(after.Labels?.a).toBeUndefined();
    });

    it('rm c1 fails while it has children, works after k2 and v1 are removed', async () => {
      const busy = await sn(['rm', 'c1']);
      expect(busy.code).not.toBe(0);
      expect(busy.stderr).toMatch(/ctr: failed to remove "c1": .*failed precondition/);
      ok(await sn(['rm', 'k2', 'v1']), 'rm k2 v1');
      expect(table((await sn(['ls'])).stdout)).toEqual([{ KEY: 'c1', PARENT: '', KIND: 'Committed' }]);
      ok(await sn(['rm', 'c1']), 'rm c1');
      const ls = await sn(['ls']);
      ok(ls, 'ls');
      expect(table(ls.stdout)).toEqual([]);
      const gone = await sn(['info', 'c1']);
      expect(gone.code).not.toBe(0);
      expect(gone.stderr).toMatch(/not found/);
    });
  });
}

describe('ctr snapshot with an unknown snapshotter', () => {
  let d: StartedDaemon;
  beforeAll(async () => {
    d = await startDaemon();
  });
  afterAll(async () => {
    await stopAll();
    await d?.dir.cleanup();
  });

  it('answers "snapshotter not loaded"', async () => {
    for (const args of [['ls'], ['prepare', 'k'], ['info', 'k']]) {
      const r = await ctrAt(d.address, ['snapshot', '--snapshotter', 'no-such-snapshotter', ...args]);
      expect(r.code, args.join(' ')).not.toBe(0);
      expect(r.stderr).toMatch(/snapshotter not loaded: no-such-snapshotter: invalid argument/);
    }
  });
});
