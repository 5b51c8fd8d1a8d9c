/**
 * Lazy pull end to end: a real stratad with the stargz snapshotter, the loopback registry behind a counting
 * proxy (its log of blob requests, with their Range headers and bytes, is the registry access log here), and
 * runc. An eStargz image (layers built by stargz-snapshotter's own Go estargz package, annotated as ctr-remote
 * does) is pulled with `--snapshotter stargz` and run before it is fetched; a running container keeps reading
 * files it had not read after stratad is killed with -9 and restarted; a plain gzip image falls back, says so in
 * the pull's progress, and runs. Nothing (mount, lazyfs process) is left afterwards.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run as runCmd } from '../helpers/ctr.js';
import { startCountingProxy, type CountingProxy } from '../helpers/counting-proxy.js';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { STRATA } from '../helpers/paths.js';
import { startRegistry, stopAllRegistries, type StartedRegistry } from '../helpers/registry.js';
import { alive, buildLazyImage, lazyfsPid, stopLazyfs, type LazyImage } from '../helpers/stargz.js';
import { lazyfsMountsUnder } from '../../src/snapshots/stargz/mounts.js';
import { tempDir, type TempDir } from '../helpers/temp.js';
import { fsckRoot } from '../helpers/fsck.js';

const NS = 'lazy';
const CONFIG = `[plugins."io.containerd.snapshotter.v1.stargz"]\n  background_fetch = false\n`;

let t: TempDir;
let d: StartedDaemon;
let registry: StartedRegistry;
let proxy: CountingProxy;
let lazy: LazyImage;
let plain: LazyImage;
let LAZY_REF: string;
let PLAIN_REF: string;

const strata = (args: string[], opts: { input?: string; ns?: string } = {}) =>
  runCmd(STRATA, ['--address', d.address, '--namespace', opts.ns ?? NS, ...args], { ...(opts.input ? { input: opts.input } : {}), timeoutMs: 120_000 });

async function ok(args: string[]): Promise<string> {
  const r = await strata(args);
  expect(r.code, `strata ${args.join(' ')}: ${r.stderr}`).toBe(0);
  return r.stdout;
}

/** A pull's progress lines (stderr, one line per status change when not a terminal). */
async function pull(ref: string): Promise<string> {
  const r = await strata(['image', 'pull', '--snapshotter', 'stargz', ref]);
  expect(r.code, r.stderr).toBe(0);
  return r.stderr;
}

const stargzRoot = () => join(d.root, 'io.containerd.snapshotter.v1.stargz');
const gets = (digest: string) => proxy.requests.filter((r) => r.digest === digest && r.method === 'GET');
const bytesOf = (digest: string) => gets(digest).reduce((n, r) => n + r.bytes, 0);
const allBytes = () => proxy.requests.filter((r) => r.method === 'GET').reduce((n, r) => n + r.bytes, 0);

beforeAll(async () => {
  t = await tempDir('strata-lazy-pull-');
  registry = await startRegistry();
  proxy = await startCountingProxy(registry.host);
  lazy = await buildLazyImage(t.path, { estargz: true, files: 8, fileSize: 4 << 20, chunk: 1 << 20 });
  plain = await buildLazyImage(t.path, { estargz: false, files: 2, fileSize: 1 << 20 });
  await registry.pushOciLayout(lazy.layoutDir, 'lazy/app:v1');
  await registry.pushOciLayout(plain.layoutDir, 'lazy/plain:v1');
  LAZY_REF = `${proxy.host}/lazy/app:v1`;
  PLAIN_REF = `${proxy.host}/lazy/plain:v1`;
  d = await startDaemon({ config: CONFIG });
}, 180_000);

let finished = false;

afterAll(async () => {
  // A test that failed with stratad down: up again, so the tasks it left are killed through it.
  if (d && !finished && (d.proc.exitCode !== null || d.proc.signalCode !== null)) d = await d.restart().catch(() => d);
  if (d && !finished) {
    for (const id of (await strata(['task', 'ls', '-q'])).stdout.split('\n').filter(Boolean)) await strata(['task', 'rm', '-f', id]);
    for (const id of (await strata(['container', 'ls', '-q'])).stdout.split('\n').filter(Boolean)) await strata(['container', 'rm', id]);
  }
  const root = d ? stargzRoot() : undefined;
  await stopAll();
  if (root) await stopLazyfs(root);
  await proxy?.stop();
  await stopAllRegistries();
  await d?.dir.cleanup();
  await t?.cleanup();
});

describe('lazy pull with the stargz snapshotter', () => {
  it('pulls an eStargz image without fetching its layers, and runs it after reading a fraction of it with Range requests', async () => {
    const pulled = await pull(LAZY_REF);
    for (const l of lazy.layers) expect(pulled).toMatch(new RegExp(`layer ${l.digest}: exists .* remote snapshot`));
    const data = lazy.layers[1]!;
    // No layer was downloaded whole: every GET of a layer blob is a bounded Range request.
    for (const l of lazy.layers) expect(gets(l.digest).every((r) => r.range !== undefined && /^bytes=\d+-\d+$/.test(r.range))).toBe(true);
    expect(bytesOf(data.digest)).toBeLessThan(data.size / 8);

    const out = await ok(['run', '--rm', '--snapshotter', 'stargz', LAZY_REF, 'first', '--', 'sh', '-c', `echo hello; md5sum ${lazy.files[2]!.path}`]);
    expect(out).toBe(`hello\n${lazy.files[2]!.md5}  ${lazy.files[2]!.path}\n`);
    // What was read by the first output: the image's metadata, the TOCs, busybox and one data file.
    const fetched = allBytes();
    expect(fetched).toBeLessThan(lazy.totalBytes / 2);
    expect(bytesOf(data.digest)).toBeGreaterThanOrEqual(4 << 20);
    expect(bytesOf(data.digest)).toBeLessThan(data.size / 3);
    expect(proxy.requests.some((r) => r.range !== undefined)).toBe(true);
  });

  it('keeps a running container reading files it had not read after stratad is killed with -9 and restarted', async () => {
    const [a, b] = [lazy.files[5]!, lazy.files[6]!];
    // The container waits (while stratad is killed), then reads two files it never read before.
    await ok(['run', '-d', '--snapshotter', 'stargz', LAZY_REF, 'survivor', '--', 'sh', '-c', `sleep 4; md5sum ${a.path} ${b.path} > /tmp/out; echo done >> /tmp/out; sleep 1000`]);
    const pid = lazyfsPid(stargzRoot())!;
    expect(alive(pid)).toBe(true);

    await d.kill9();
    const before = bytesOf(lazy.layers[1]!.digest);
    expect(alive(pid)).toBe(true);
    // Read while stratad is down: served by lazyfs, fetched from the registry now.
    for (let i = 0; i < 300 && bytesOf(lazy.layers[1]!.digest) - before < 8 << 20; i++) await new Promise((r) => setTimeout(r, 50));
    expect(bytesOf(lazy.layers[1]!.digest) - before).toBeGreaterThanOrEqual(8 << 20);
    const result = `${a.md5}  ${a.path}\n${b.md5}  ${b.path}\ndone\n`;

    d = await d.restart();
    expect(lazyfsPid(stargzRoot())).toBe(pid);
    let out = '';
    for (let i = 0; i < 100 && !out.endsWith('done\n'); i++) {
      out = (await strata(['task', 'exec', '--exec-id', `e${i}`, 'survivor', 'cat', '/tmp/out'])).stdout;
      if (!out.endsWith('done\n')) await new Promise((r) => setTimeout(r, 100));
    }
    expect(out).toBe(result);
    await ok(['task', 'rm', '-f', 'survivor']);
    await ok(['container', 'rm', 'survivor']);
    // A new container after the restart reads through the same lazyfs.
    expect(await ok(['run', '--rm', '--snapshotter', 'stargz', LAZY_REF, 'after', '--', 'md5sum', lazy.files[7]!.path])).toBe(`${lazy.files[7]!.md5}  ${lazy.files[7]!.path}\n`);
  });

  it('falls back to a download for a plain gzip image, says so in the progress, and runs it', async () => {
    const pulled = await pull(PLAIN_REF);
    for (const l of plain.layers) expect(pulled).toMatch(new RegExp(`layer ${l.digest}: lazy-fallback .*eStargz`, 'i'));
    for (const l of plain.layers) expect(gets(l.digest).some((r) => r.range === undefined && r.status === 200)).toBe(true);
    expect(await ok(['run', '--rm', '--snapshotter', 'stargz', PLAIN_REF, 'plain', '--', 'md5sum', plain.files[1]!.path])).toBe(`${plain.files[1]!.md5}  ${plain.files[1]!.path}\n`);
  });

  it('pulls lazily and runs an image converted by strata image convert --estargz --oci and pushed', async () => {
    const converted = `${proxy.host}/lazy/converted:v1`;
    const conv = async (ns: string, args: string[]) => {
      const r = await strata(args, { ns });
      expect(r.code, `strata ${args.join(' ')}: ${r.stderr}`).toBe(0);
      return r;
    };
    await conv('conv', ['image', 'pull', '--skip-unpack', PLAIN_REF]);
    await conv('conv', ['image', 'convert', '--estargz', '--oci', PLAIN_REF, converted]);
    await conv('conv', ['image', 'push', converted]);
    const before = proxy.requests.length;
    const pulled = (await conv('conv2', ['image', 'pull', '--snapshotter', 'stargz', converted])).stderr;
    expect(pulled.match(/: exists .* remote snapshot/g)).toHaveLength(plain.layers.length);
    const layerGets = proxy.requests.slice(before).filter((r) => r.method === 'GET' && !plain.layers.some((l) => l.digest === r.digest));
    expect(layerGets.filter((r) => r.range === undefined && r.bytes > 64 << 10)).toEqual([]);
    const f = plain.files[0]!;
    expect((await conv('conv2', ['run', '--rm', '--snapshotter', 'stargz', converted, 'conv', '--', 'md5sum', f.path])).stdout).toBe(`${f.md5}  ${f.path}\n`);
  });

  it('leaves no mount and no lazyfs process once the images are gone and the lazyfs is stopped', async () => {
    await ok(['image', 'rm', LAZY_REF, PLAIN_REF]);
    const root = stargzRoot();
    const pid = lazyfsPid(root)!;
    await d.stop();
    finished = true;
    // With the daemon stopped and lazyfs still serving its remote layers, fsck finds nothing wrong: those
    // mounts are meant to outlive the daemon.
    expect(lazyfsMountsUnder(root).length).toBeGreaterThan(0);
    const report = await fsckRoot(d);
    expect(report.violations).toEqual([]);
    await stopLazyfs(root);
    expect(alive(pid)).toBe(false);
    expect(lazyfsMountsUnder(root)).toEqual([]);
    expect(readFileSync('/proc/self/mountinfo', 'utf8')).not.toContain(root);
  });
});
