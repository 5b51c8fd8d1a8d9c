/**
 * docs/snapshotter-authors.md, run: the guide's files (its ```` ```lang file=PATH ```` blocks, the one source of
 * truth) are written out as a package of their own, compiled with TypeScript against Strata's built exports
 * (`strata/snapshots`, `strata/serve-snapshotter`, resolved through package.json `exports` and their .d.ts),
 * and the toy remote snapshotter is served. It is configured with the two bottom layers of a three-layer image
 * (their chain IDs, and files of its own making). Then Strata (`[proxy_plugins.toy]`, `strata image pull
 * --snapshotter toy`) and containerd 1.6 (`[proxy_plugins.toy]`, its Go client's Pull with unpack) each unpack
 * the image from a loopback registry through it: neither downloads the two layers the toy provides (a counting
 * proxy in front of the registry sees no GET of their blobs), the top layer is downloaded and applied on the
 * toy's mounts, and `ctr snapshot ls` lists the chain as the toy's snapshots.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile, readdir, symlink, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mountFromPb } from '../../src/api/convert.js';
import { chainIDs } from '../../src/images/manifest.js';
import { withTempMount } from '../../src/mount/index.js';
import { ctrAt, mountsUnder, startContainerd, stopAllContainerd, unmountUnder, type StartedContainerd } from '../helpers/containerd.js';
import { run, tableRows, type RunResult } from '../helpers/ctr.js';
import { startCountingProxy, type CountingProxy } from '../helpers/counting-proxy.js';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { goBinary, runGo } from '../helpers/go.js';
import { buildOciLayout, makeLayerTar, sha256, type OciLayout } from '../helpers/oci-layout.js';
import { REPO, STRATA } from '../helpers/paths.js';
import { startRegistry, stopAllRegistries } from '../helpers/registry.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

const GUIDE = join(REPO, 'docs', 'snapshotter-authors.md');
const NS = 'toy';
/** `ctr snapshot ls`'s columns (cut where the header's names start: keys may hold spaces). */
const HEADER = ['KEY', 'PARENT', 'KIND'];

/** The guide's files: every fenced block whose info string names a file (```ts file=src/toy.ts). */
function guideFiles(markdown: string): Map<string, string> {
  const files = new Map<string, string>();
  for (const m of markdown.matchAll(/^```\w+ file=(\S+)\n([\s\S]*?)^```$/gm)) files.set(m[1]!, m[2]!);
  return files;
}

/** The image's layers: files that exist only in the registry's blobs, so a view shows which were applied. */
const LAYERS: Array<Record<string, string>> = [
  { 'base/os-release': 'downloaded base\n' },
  { 'mid/data': 'downloaded middle\n' },
  { 'top/app': 'downloaded top\n' },
];
/** What the toy "has" for the two bottom layers: files of its own, different from the blobs'. */
const TOY_LAYERS: Array<Record<string, string>> = [{ 'base/made-by-toy': 'toy base\n' }, { 'mid/made-by-toy': 'toy middle\n' }];

let tmp: TempDir;
let pkg: string;
let image: OciLayout;
let chain: string[];
let proxy: CountingProxy;
let ref: string;
let toy: ChildProcess | undefined;
let toyLogs = '';
let toyAddress: string;
let guide: Map<string, string>;
let compiled: RunResult;

const diag = (r: RunResult, more = '') => `code ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}\n--- toy ---\n${toyLogs.slice(-3000)}\n${more}`;

/** Blob GETs the registry answered so far, per layer (bottom first). */
const layerGets = () => image.layers.map((l) => proxy.blobGets().get(l.digest) ?? 0);

beforeAll(async () => {
  expect(existsSync(join(REPO, 'dist', 'src', 'snapshots', 'index.d.ts')), 'build Strata first: npm run build').toBe(true);
  tmp = await tempDir('strata-toy-remote-');

  // The guide's package, with Strata as its dependency (as `npm install /path/to/strata` would link it).
  guide = guideFiles(await readFile(GUIDE, 'utf8'));
  pkg = join(tmp.path, 'toy-snapshotter');
  for (const [path, text] of guide) {
    await mkdir(dirname(join(pkg, path)), { recursive: true });
    await writeFile(join(pkg, path), text);
  }
  await mkdir(join(pkg, 'node_modules'));
  await symlink(REPO.replace(/\/$/, ''), join(pkg, 'node_modules', 'strata'));
  await symlink(join(REPO, 'node_modules', '@types'), join(pkg, 'node_modules', '@types'));
  compiled = await run(join(REPO, 'node_modules', '.bin', 'tsc'), ['-p', join(pkg, 'tsconfig.json')], { cwd: pkg, timeoutMs: 120_000 });

  // The image, in a registry behind the counting proxy.
  const tars = await Promise.all(LAYERS.map((files) => makeLayerTar(files)));
  chain = chainIDs(tars.map((t) => sha256(t)));
  image = await buildOciLayout(join(tmp.path, 'image'), { layers: tars, gzip: true, refName: 'v1' });
  const reg = await startRegistry();
  await reg.pushOciLayout(image.dir, 'toy/app:v1');
  proxy = await startCountingProxy(reg.host);
  ref = `${proxy.host}/toy/app:v1`;

  // The toy, served as the guide says: node dist/main.js toy.json.
  toyAddress = join(tmp.path, 'toy.sock');
  const config = { root: join(tmp.path, 'toy-root'), address: toyAddress, layers: { [chain[0]!]: TOY_LAYERS[0], [chain[1]!]: TOY_LAYERS[1] } };
  await writeFile(join(tmp.path, 'toy.json'), JSON.stringify(config));
  if (compiled.code !== 0) return; // the first test reports the compiler's output
  toy = spawn(process.execPath, [join(pkg, 'dist', 'main.js'), join(tmp.path, 'toy.json')], { stdio: ['ignore', 'pipe', 'pipe'] });
  toy.stdout!.on('data', (d: Buffer) => (toyLogs += d.toString()));
  toy.stderr!.on('data', (d: Buffer) => (toyLogs += d.toString()));
  const deadline = Date.now() + 30_000;
  while (!toyLogs.includes('serving on')) {
    if (toy.exitCode !== null || Date.now() > deadline) throw new Error(`the toy snapshotter did not start:\n${toyLogs}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}, 180_000);

afterAll(async () => {
  await stopAll();
  await stopAllContainerd();
  if (toy && toy.exitCode === null) {
    const exited = new Promise((r) => toy!.once('exit', r));
    toy.kill('SIGTERM');
    await exited;
  }
  await proxy?.stop();
  await stopAllRegistries();
  if (tmp) {
    await unmountUnder(tmp.path);
    const left = await mountsUnder(tmp.path);
    await tmp.cleanup();
    expect(left).toEqual([]);
  }
}, 120_000);

describe('the toy remote snapshotter of docs/snapshotter-authors.md', () => {
  it('is under 100 lines of TypeScript in the guide, and compiles as a separate package against the built exports', () => {
    expect([...guide.keys()].sort()).toEqual(['package.json', 'src/main.ts', 'src/toy.ts', 'tsconfig.json']);
    const lines = [...guide].filter(([p]) => p.endsWith('.ts')).reduce((n, [, text]) => n + text.split('\n').length - 1, 0);
    expect(lines).toBeLessThan(100);
    expect(compiled.code, diag(compiled)).toBe(0);
    expect(toyLogs).toContain(`toy snapshotter serving on ${toyAddress}`);
  });

  it('is unpacked into by Strata through [proxy_plugins] without downloading the layers it provides', async () => {
    const d: StartedDaemon = await startDaemon({ config: `[proxy_plugins.toy]\n  type = "snapshot"\n  address = "${toyAddress}"\n` });
    try {
      await unpackWithStrata(d);
    } finally {
      await d.stop();
      await d.dir.cleanup();
    }
  }, 180_000);

  it('is unpacked into by containerd 1.6 through [proxy_plugins] without downloading the layers it provides', async () => {
    const containerd: StartedContainerd = await startContainerd({
      config: `[proxy_plugins.toy]\n  type = "snapshot"\n  address = "${toyAddress}"\n`,
    });
    try {
      await unpackWithContainerd(containerd);
    } finally {
      await containerd.stop();
      await containerd.dir.cleanup();
    }
  }, 180_000);

  it('lists its own snapshots on its socket with ctr snapshot ls: each client\'s chain, the provided layers among them', async () => {
    const ls = await ctrAt(toyAddress, ['snapshot', 'ls'], NS);
    expect(ls.code, diag(ls)).toBe(0);
    const rows = tableRows(ls.stdout, HEADER);
    // Two clients (Strata, containerd) each unpacked the three layers under their own keys, and each adopted
    // the snapshots the toy made for its own prepares: two chains of three, no snapshot shared between them.
    const committed = rows.filter(([, , kind]) => kind === 'Committed');
    expect(committed).toHaveLength(6);
    const children = new Map<string, number>();
    for (const [, parent] of committed) if (parent) children.set(parent, (children.get(parent) ?? 0) + 1);
    expect([...children.values()]).toEqual([1, 1, 1, 1]);
    expect(committed.filter(([, parent]) => parent === '')).toHaveLength(2);
    const remote: string[] = [];
    for (const [key] of committed) {
      const info = await ctrAt(toyAddress, ['snapshot', 'info', key!], NS);
      expect(info.code, diag(info)).toBe(0);
      const labels = JSON.parse(info.stdout).Labels ?? {};
      if (labels['containerd.io/snapshot/remote']) remote.push(labels['containerd.io/snapshot.ref']);
    }
    expect(remote.sort()).toEqual([chain[0], chain[0], chain[1], chain[1]].sort());
  });
});

async function unpackWithStrata(d: StartedDaemon): Promise<void> {
  const before = layerGets();
  const pull = await run(STRATA, ['--address', d.address, '--namespace', NS, 'image', 'pull', '--plain-http', '--snapshotter', 'toy', ref], {
    timeoutMs: 120_000,
  });
  expect(pull.code, diag(pull, d.logs.slice(-3000))).toBe(0);
  const after = layerGets();
  // The toy's two layers: never fetched. The top layer: fetched once and applied on the toy's mounts.
  expect(after.map((n, i) => n - before[i]!)).toEqual([0, 0, 1]);

  const ls = await ctrAt(d.address, ['snapshot', '--snapshotter', 'toy', 'ls'], NS);
  expect(ls.code, diag(ls)).toBe(0);
  expect(tableRows(ls.stdout, HEADER).sort()).toEqual(
    [
      [chain[0]!, '', 'Committed'],
      [chain[1]!, chain[0]!, 'Committed'],
      [chain[2]!, chain[1]!, 'Committed'],
    ].sort(),
  );
  const info = await ctrAt(d.address, ['snapshot', '--snapshotter', 'toy', 'info', chain[1]!], NS);
  expect(info.code, diag(info)).toBe(0);
  expect(JSON.parse(info.stdout).Labels).toMatchObject({ 'containerd.io/snapshot.ref': chain[1], 'containerd.io/snapshot/remote': 'remote snapshot' });

  // The unpacked filesystem: the toy's files for its layers, the registry's for the top one.
  const c = d.client(NS);
  try {
    const { mounts } = await c.call(c.snapshots, c.snapshots.view, { snapshotter: 'toy', key: 'verify', parent: chain[2]!, labels: {} });
    const seen = await withTempMount(mounts.map(mountFromPb), async (root) => ({
      base: await readdir(join(root, 'base')),
      mid: await readdir(join(root, 'mid')),
      top: await readFile(join(root, 'top', 'app'), 'utf8'),
      toy: await readFile(join(root, 'mid', 'made-by-toy'), 'utf8'),
    }));
    expect(seen).toEqual({ base: ['made-by-toy'], mid: ['made-by-toy'], top: 'downloaded top\n', toy: 'toy middle\n' });
    await c.call(c.snapshots, c.snapshots.remove, { snapshotter: 'toy', key: 'verify' });
  } finally {
    c.close();
  }
}

async function unpackWithContainerd(containerd: StartedContainerd): Promise<void> {
  const before = layerGets();
  // containerd's Go client library (1.6.20): Pull with unpack, as nerdctl and k3s pull.
  const pulled = await runGo(await goBinary('pull'), ['-address', containerd.address, '-namespace', NS, '-ref', ref, '-snapshotter', 'toy'], {
    timeoutMs: 120_000,
  });
  const r = { code: pulled.code, stdout: pulled.stdout, stderr: pulled.stderr };
  expect(r.code, diag(r, containerd.logs().slice(-3000))).toBe(0);
  expect(r.stdout).toBe('ok 3\n');
  expect(layerGets().map((n, i) => n - before[i]!)).toEqual([0, 0, 1]);

  const ls = await ctrAt(containerd.address, ['snapshot', '--snapshotter', 'toy', 'ls'], NS);
  expect(ls.code, diag(ls)).toBe(0);
  expect(tableRows(ls.stdout, HEADER).sort()).toEqual(
    [
      [chain[0]!, '', 'Committed'],
      [chain[1]!, chain[0]!, 'Committed'],
      [chain[2]!, chain[1]!, 'Committed'],
    ].sort(),
  );
  const info = await ctrAt(containerd.address, ['snapshot', '--snapshotter', 'toy', 'info', chain[0]!], NS);
  expect(info.code, diag(info)).toBe(0);
  expect(JSON.parse(info.stdout).Labels).toMatchObject({ 'containerd.io/snapshot.ref': chain[0], 'containerd.io/snapshot/remote': 'remote snapshot' });
}

