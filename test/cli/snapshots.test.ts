/**
 * `strata snapshot` against a real stratad, for each snapshotter: a 3-deep chain with a sibling built with
 * prepare/commit/view, then ls, tree (and --usage), mounts (run as real mount commands when root), info, label,
 * usage and rm, with ls, tree, mounts, info and usage compared byte for byte with the real ctr on the same daemon.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, type TestContext } from 'vitest';
import { Kind, StatSnapshotResponse, type Info } from '../../src/api/gen/containerd/services/snapshots/v1/snapshots.js';
import { ctrBytes, drawTree, goJson, goTime, mountCommands, rawTimes } from '../../src/cli/snapshots.js';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { ctr, run, tableRows, type RunResult } from '../helpers/ctr.js';
import { STRATA } from '../helpers/paths.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

const SNAPSHOTTER_TYPE = 'io.containerd.snapshotter.v1';
const isRoot = process.getuid?.() === 0;
const haveCtr = spawnSync('ctr', ['--version'], { stdio: 'ignore' }).status === 0;

/** The environment of every subprocess: no CONTAINERD_SNAPSHOTTER unless a test sets one. */
const baseEnv: NodeJS.ProcessEnv = { ...process.env };
delete baseEnv.CONTAINERD_SNAPSHOTTER;

let d: StartedDaemon;
let tmp: TempDir;
/** Snapshotter plugin id → "ok", or its init error. */
const snapshotters = new Map<string, string>();

const strata = (args: string[], env: NodeJS.ProcessEnv = {}): Promise<RunResult> =>
  run(process.execPath, [STRATA, '--address', d.address, ...args], { env: { ...baseEnv, ...env } });

async function ok(args: string[], env: NodeJS.ProcessEnv = {}): Promise<string> {
  const r = await strata(args, env);
  expect(r.stderr, `strata ${args.join(' ')}`).toBe('');
  expect(r.code, `strata ${args.join(' ')}`).toBe(0);
  return r.stdout;
}

/** Unmounts whatever is still mounted under the test's temp directory (deepest first). */
function unmountUnder(dir: string): void {
  const targets = readFileSync('/proc/mounts', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[1]?.replace(/\\040/g, ' '))
    .filter((t): t is string => !!t && t.startsWith(dir));
  for (const t of targets.reverse()) spawnSync('umount', [t]);
}

/** Runs the mount command lines strata printed (each one through sh, as a user would paste them). */
function runMountLines(out: string): void {
  for (const line of out.split('\n').filter(Boolean)) execFileSync('sh', ['-c', line], { stdio: 'pipe' });
}

beforeAll(async () => {
  tmp = await tempDir('strata-snap-cli-');
  d = await startDaemon({ logLevel: 'info' });
  const c = d.client();
  try {
    const { plugins } = await c.call(c.introspection, c.introspection.plugins, { filters: [] });
    for (const p of plugins) if (p.type === SNAPSHOTTER_TYPE) snapshotters.set(p.id, p.initErr ? p.initErr.message : 'ok');
  } finally {
    c.close();
  }
});

afterAll(async () => {
  if (tmp) unmountUnder(tmp.path);
  await stopAll();
  await d?.dir.cleanup();
  await tmp?.cleanup();
});

/**
 * native works anywhere and must be there; overlayfs may be skipped by the daemon (a kernel without overlay,
 * a root on a filesystem it cannot stack on), and then its tests are skipped too.
 */
function need(ctx: TestContext, sn: string): void {
  const status = snapshotters.get(sn);
  if (sn !== 'native' && status?.includes('skip plugin')) ctx.skip(`${sn}: ${status}`);
  expect(status, `snapshotter ${sn} loaded by stratad (${[...snapshotters.keys()].join(', ') || 'none'})`).toBe('ok');
}

describe.each(['native', 'overlayfs'])('strata snapshot --snapshotter %s', (sn) => {
  const ns = `cli-snap-${sn}`;
  // The snapshotter flag both before the command (--flag=value) and after it.
  const snap = (args: string[], env?: NodeJS.ProcessEnv) => strata(['-n', ns, 'snapshot', `--snapshotter=${sn}`, ...args], env);
  const snapOk = (args: string[]) => ok(['-n', ns, 'snapshots', ...args, '--snapshotter', sn]);
  const theirs = async (args: string[]): Promise<string> => {
    const r = await ctr(d.address, ['snapshot', '--snapshotter', sn, ...args], { namespace: ns });
    expect(r.stderr, `ctr snapshot ${args.join(' ')}`).toBe('');
    expect(r.code).toBe(0);
    return r.stdout;
  };
  /** Compares strata's output with ctr's for the same arguments. */
  const sameAsCtr = async (ctx: TestContext, args: string[]): Promise<string> => {
    const ours = await snapOk(args);
    if (!haveCtr) ctx.skip('no ctr');
    expect(ours).toBe(await theirs(args));
    return ours;
  };

  const TREE = [' base', '  \\_ mid', '    \\_ leaf', '    \\_ view', '  \\_ sib', ''].join('\n');

  it('builds a 3-deep chain with a sibling and a view (prepare, commit, view)', async (ctx) => {
    need(ctx, sn);
    expect(await snapOk(['prepare', 'base-a'])).toBe('');
    expect(await snapOk(['commit', 'base', 'base-a'])).toBe('');
    expect(await snapOk(['prepare', 'mid-a', 'base'])).toBe('');
    expect(await snapOk(['commit', 'mid', 'mid-a'])).toBe('');
    expect(await snapOk(['prepare', 'leaf', 'mid'])).toBe('');
    // --target prints the mount commands for that directory, as ctr does.
    const printed = await snapOk(['prepare', '--target', '/mnt/sib', 'sib', 'base']);
    expect(printed).toMatch(/^(mount -t \S+ \S+ \/mnt\/sib -o \S*\n)+$/);
    expect(await snapOk(['view', 'view', 'mid'])).toBe('');
    // --mounts prints them as ctr's JSON.
    const viewed = JSON.parse(await snapOk(['view', '--mounts', 'view-2', 'mid'])) as { Type: string; Source: string }[];
    expect(viewed.length).toBeGreaterThan(0);
    expect(viewed[0]).toHaveProperty('Type');
    expect(await snapOk(['rm', 'view-2'])).toBe('');
  });

  it('lists KEY PARENT KIND exactly as ctr', async (ctx) => {
    need(ctx, sn);
    const out = await sameAsCtr(ctx, ['ls']);
    const rows = out.trimEnd().split('\n').map((l) => l.trim().split(/\s+/));
    expect(rows[0]).toEqual(['KEY', 'PARENT', 'KIND']);
    expect(rows.slice(1).sort()).toEqual([
      ['base', 'Committed'],
      ['leaf', 'mid', 'Active'],
      ['mid', 'base', 'Committed'],
      ['sib', 'base', 'Active'],
      ['view', 'mid', 'View'],
    ]);
    const json = JSON.parse(await snapOk(['ls', '--json'])) as { name: string; parent: string; kind: string; createdAt: string }[];
    expect(json.find((i) => i.name === 'leaf')).toMatchObject({ parent: 'mid', kind: 'active' });
    expect(json.find((i) => i.name === 'view')?.kind).toBe('view');
    expect(Date.parse(json[0]!.createdAt)).toBeGreaterThan(0);
  });

  it('draws the tree exactly as ctr', async (ctx) => {
    need(ctx, sn);
    expect(await sameAsCtr(ctx, ['tree'])).toBe(TREE);
    const json = JSON.parse(await snapOk(['tree', '--json'])) as { name: string; children: { name: string; children: { name: string }[] }[] }[];
    expect(json.map((n) => n.name)).toEqual(['base']);
    expect(json[0]!.children.map((n) => n.name)).toEqual(['mid', 'sib']);
    expect(json[0]!.children[0]!.children.map((n) => n.name)).toEqual(['leaf', 'view']);
  });

  it('tree --usage appends each snapshot\'s size and inodes', async (ctx) => {
    need(ctx, sn);
    const lines = (await snapOk(['tree', '--usage'])).trimEnd().split('\n');
    const plain = TREE.trimEnd().split('\n');
    expect(lines).toHaveLength(plain.length);
    const usage = await snapOk(['usage', '--json']);
    const byKey = new Map((JSON.parse(usage) as { key: string; size: number; inodes: number }[]).map((u) => [u.key, u]));
    lines.forEach((l, i) => {
      const name = plain[i]!.replace(/^.* /, '');
      const u = byKey.get(name)!;
      expect(l).toBe(`${plain[i]} (${ctrBytes(u.size)}, ${u.inodes} inode${u.inodes === 1 ? '' : 's'})`);
    });
    expect(lines[0]).toMatch(/^ base \(\d+\.\d (B|KiB|MiB), \d+ inodes?\)$/);
    const json = JSON.parse(await snapOk(['tree', '--usage', '--json'])) as { usage: { size: number; inodes: number } }[];
    expect(json[0]!.usage).toEqual({ size: byKey.get('base')!.size, inodes: byKey.get('base')!.inodes });
  });

  it('prints mount commands exactly as ctr', async (ctx) => {
    need(ctx, sn);
    for (const key of ['leaf', 'view', 'sib']) {
      const out = await sameAsCtr(ctx, ['mounts', '/tmp/target-dir', key]);
      expect(out).toMatch(/^(mount -t \S+ \S+ \/tmp\/target-dir -o \S*\n)+$/);
    }
    const json = JSON.parse(await snapOk(['mounts', '--json', '/x', 'leaf'])) as { type: string; source: string; options: string[] }[];
    expect(mountCommands('/x', json.map((m) => ({ ...m, target: '' }))).join('\n') + '\n').toBe(await snapOk(['mount', '/x', 'leaf']));
  });

  it.runIf(isRoot)('mount commands work: a file written through an active snapshot is in its commit\'s view', async (ctx) => {
    need(ctx, sn);
    const rw = join(tmp.path, `${sn}-rw`);
    const ro = join(tmp.path, `${sn}-ro`);
    await mkdir(rw);
    await mkdir(ro);
    expect(await snapOk(['prepare', 'work', 'mid'])).toBe('');
    try {
      runMountLines(await snapOk(['mounts', rw, 'work']));
      await writeFile(join(rw, 'hello.txt'), 'written through the snapshot\n');
    } finally {
      unmountUnder(rw);
    }
    // The file is still there after a fresh mount of the same snapshot.
    try {
      runMountLines(await snapOk(['mounts', rw, 'work']));
      expect(await readFile(join(rw, 'hello.txt'), 'utf8')).toBe('written through the snapshot\n');
    } finally {
      unmountUnder(rw);
    }
    const usage = await snapOk(['usage', '-b', 'work']);
    const [, size, inodes] = tableRows(usage)[0]!;
    expect(Number(size)).toBeGreaterThanOrEqual('written through the snapshot\n'.length);
    expect(Number(inodes)).toBeGreaterThanOrEqual(1);

    expect(await snapOk(['commit', 'work-c', 'work'])).toBe('');
    // view --target prints the lines that mount it read-only.
    const lines = await snapOk(['view', '--target', ro, 'work-v', 'work-c']);
    try {
      runMountLines(lines);
      expect(await readFile(join(ro, 'hello.txt'), 'utf8')).toBe('written through the snapshot\n');
      await expect(writeFile(join(ro, 'nope.txt'), 'x')).rejects.toMatchObject({ code: 'EROFS' });
    } finally {
      unmountUnder(ro);
    }
    expect(readFileSync('/proc/mounts', 'utf8')).not.toContain(tmp.path);
    expect(await snapOk(['rm', 'work-v', 'work-c'])).toBe('');
  });

  it('prints info as ctr\'s JSON', async (ctx) => {
    need(ctx, sn);
    const out = await sameAsCtr(ctx, ['info', 'leaf']);
    expect(out).toMatch(/^\{\n {4}"Kind": "Active",\n {4}"Name": "leaf",\n {4}"Parent": "mid",\n {4}"Labels": \{\n/);
    const info = JSON.parse(out) as { Labels: Record<string, string>; Created: string; Updated: string };
    expect(info.Labels['containerd.io/gc.root']).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
    expect(info.Created).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/);
    // A view gets no gc.root label from ctr (nor from strata), and a root snapshot has no Parent.
    expect(JSON.parse(await sameAsCtr(ctx, ['info', 'view']))).not.toHaveProperty('Labels');
    expect(JSON.parse(await sameAsCtr(ctx, ['info', 'base']))).not.toHaveProperty('Parent');
    const json = JSON.parse(await snapOk(['info', '--json', 'leaf'])) as Record<string, unknown>;
    expect(json).toMatchObject({ name: 'leaf', parent: 'mid', kind: 'active' });
    const r = await snap(['info', 'no-such']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^strata: .*no-such.*not found\n$/);
  });

  it('sets, shows and clears labels', async (ctx) => {
    need(ctx, sn);
    const root = await snapOk(['label', 'leaf']);
    expect(root).toMatch(/^containerd\.io\/gc\.root=\S+\n$/);
    const gc = root.trimEnd();
    expect(await snapOk(['label', 'leaf', 'x=1', 'y=2', 'flag'])).toBe(`${gc},flag=true,x=1,y=2\n`);
    expect(await snapOk(['label', 'leaf', 'y=', 'flag='])).toBe(`${gc},x=1\n`);
    expect(await snapOk(['label', 'leaf'])).toBe(`${gc},x=1\n`);
    expect(JSON.parse(await snapOk(['label', '--json', 'leaf']))).toEqual({ 'containerd.io/gc.root': gc.split('=')[1], x: '1' });
    expect((JSON.parse(await snapOk(['info', 'leaf'])) as { Labels: Record<string, string> }).Labels.x).toBe('1');
  });

  it('shows usage of all snapshots or of the given ones, as ctr', async (ctx) => {
    need(ctx, sn);
    const all = await sameAsCtr(ctx, ['usage']);
    const lines = all.trimEnd().split('\n');
    expect(lines[0]!.trim().split(/\s+/)).toEqual(['KEY', 'SIZE', 'INODES']);
    expect(lines.slice(1).map((l) => l.split(' ')[0]).sort()).toEqual(['base', 'leaf', 'mid', 'sib', 'view']);
    for (const l of all.trimEnd().split('\n').slice(1)) expect(l).toMatch(/^\S+\s+\d+\.\d (B|KiB|MiB|GiB)\s+\d+\s*$/);
    const some = await sameAsCtr(ctx, ['usage', '-b', 'mid', 'leaf']);
    expect(some.trimEnd().split('\n').slice(1).map((l) => l.split(/\s+/)[0])).toEqual(['mid', 'leaf']);
    expect(some).toMatch(/^KEY +SIZE +INODES \nmid +\d+ +\d+ +\nleaf +\d+ +\d+ +\n$/);
  });

  it('refuses to remove a parent with children, then removes children before parents', async (ctx) => {
    need(ctx, sn);
    const r = await snap(['rm', 'base']);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/^strata: failed to remove "base": .*with child.*\n$/);
    expect(await snapOk(['ls'])).toMatch(/^base /m);
    expect(await snapOk(['rm', 'view', 'leaf', 'sib'])).toBe('');
    expect(await snapOk(['delete', 'mid', 'base'])).toBe('');
    expect(await snapOk(['ls'])).toBe('KEY PARENT KIND \n');
    expect(await snapOk(['tree'])).toBe('');
  });
});

describe('strata snapshot errors and defaults', () => {
  it('fails on a snapshotter the daemon does not have', async () => {
    const r = await strata(['snapshot', 'ls', '--snapshotter', 'no-such-sn']);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toBe('strata: snapshotter not loaded: no-such-sn: invalid argument\n');
    // From the environment, as ctr.
    const e = await strata(['snapshot', 'prepare', 'k'], { CONTAINERD_SNAPSHOTTER: 'from-env' });
    expect(e.code).toBe(1);
    expect(e.stderr).toContain('snapshotter not loaded: from-env');
    // The flag wins over the environment.
    const f = await strata(['snapshot', 'tree', '--snapshotter', 'from-flag'], { CONTAINERD_SNAPSHOTTER: 'from-env' });
    expect(f.stderr).toContain('snapshotter not loaded: from-flag');
    // Where ctr users write it: between the group and the command.
    const g = await strata(['snapshot', '--snapshotter', 'before-cmd', 'ls']);
    expect(g.stderr).toContain('snapshotter not loaded: before-cmd');
  });

  it('uses the environment\'s snapshotter, else overlayfs', async (ctx) => {
    need(ctx, 'native');
    expect(await ok(['-n', 'cli-snap-env', 'snapshot', 'prepare', 'env-key'], { CONTAINERD_SNAPSHOTTER: 'native' })).toBe('');
    expect(await ok(['-n', 'cli-snap-env', 'snapshot', 'ls', '--snapshotter', 'native'])).toMatch(/^env-key +Active/m);
    expect(await ok(['-n', 'cli-snap-env', 'snapshot', 'rm', 'env-key'], { CONTAINERD_SNAPSHOTTER: 'native' })).toBe('');
    if (snapshotters.get('overlayfs') !== 'ok') return;
    expect(await ok(['-n', 'cli-snap-env', 'snapshot', 'prepare', 'ov-key'])).toBe('');
    expect(await ok(['-n', 'cli-snap-env', 'snapshot', 'ls', '--snapshotter', 'overlayfs'])).toMatch(/^ov-key +Active/m);
    expect(await ok(['-n', 'cli-snap-env', 'snapshot', 'rm', 'ov-key'])).toBe('');
  });

  it('checks its arguments', async () => {
    const cases: [string[], RegExp][] = [
      [['prepare'], /prepare takes <key> \[<parent>\]/],
      [['view', 'a', 'b', 'c'], /view takes <key> \[<parent>\]/],
      [['mounts', '/x'], /mounts takes <target> <key>/],
      [['commit', 'a'], /commit takes <name> <key>/],
      [['info'], /info takes exactly one <key>/],
      [['rm'], /please specify a snapshot key/],
      [['label'], /please specify a snapshot key/],
      [['frobnicate'], /unknown command "snapshots frobnicate"/],
    ];
    for (const [args, re] of cases) {
      const r = await strata(['snapshot', ...args]);
      expect(r.code, args.join(' ')).toBe(1);
      expect(r.stderr).toMatch(/^strata: /);
      expect(r.stderr).toMatch(re);
    }
    expect((await ok(['snapshots'])).split('\n')).toEqual(expect.arrayContaining([expect.stringMatching(/^ {2}tree /)]));
    expect(await ok(['snapshot', 'prepare', '--help'])).toMatch(/--target/);
  });
});

describe('snapshot output helpers', () => {
  const info = (name: string, parent = ''): Info => ({ name, parent, kind: Kind.COMMITTED, labels: {}, createdAt: undefined, updatedAt: undefined });

  it('formats sizes as ctr (base 1024, one decimal, Go\'s half-to-even)', () => {
    expect(ctrBytes(0)).toBe('0.0 B');
    expect(ctrBytes(1023)).toBe('1023.0 B');
    expect(ctrBytes(1024)).toBe('1.0 KiB');
    expect(ctrBytes(4096)).toBe('4.0 KiB');
    expect(ctrBytes(1280)).toBe('1.2 KiB'); // 1.25 exactly: to even
    expect(ctrBytes(1792)).toBe('1.8 KiB'); // 1.75 exactly: to even
    expect(ctrBytes(1536 * 1024)).toBe('1.5 MiB');
    expect(ctrBytes(3 * 1024 ** 3)).toBe('3.0 GiB');
  });

  it('formats times and JSON as Go', () => {
    expect(goTime({ seconds: 1_700_000_000, nanos: 438_524_689 })).toBe('2023-11-14T22:13:20.438524689Z');
    expect(goTime({ seconds: 1_700_000_000, nanos: 120_000_000 })).toBe('2023-11-14T22:13:20.12Z');
    expect(goTime({ seconds: 1_700_000_000, nanos: 0 })).toBe('2023-11-14T22:13:20Z');
    expect(goTime(undefined)).toBe('0001-01-01T00:00:00Z');
    expect(goJson({ a: '<&>' })).toBe('{\n    "a": "\\u003c\\u0026\\u003e"\n}');
    // The nanoseconds come from the wire, not from the millisecond Dates of the decoded message.
    const bytes = StatSnapshotResponse.encode({ info: { ...info('k'), createdAt: new Date(1_700_000_000_123) } }).finish();
    expect(rawTimes(bytes)).toEqual({ created: { seconds: 1_700_000_000, nanos: 123_000_000 } });
  });

  it('draws trees as ctr, whatever order the listing comes in', () => {
    const chain = [info('a'), info('b', 'a'), info('c', 'b'), info('s', 'a')];
    const expected = [' a', '  \\_ b', '    \\_ c', '  \\_ s'];
    expect(drawTree(chain)).toEqual(expected);
    // Children listed before their parents get placeholders that are filled in later.
    expect(drawTree([info('c', 'b'), info('s', 'a'), info('b', 'a'), info('a')])).toEqual([' a', '  \\_ s', '  \\_ b', '    \\_ c']);
    // A parent the listing does not contain (a filtered listing) is shown as a root, as ctr does.
    expect(drawTree([info('c', 'b')])).toEqual([' b', '  \\_ c']);
    expect(drawTree([])).toEqual([]);
  });
});
