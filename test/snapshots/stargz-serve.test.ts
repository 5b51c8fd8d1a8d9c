/**
 * The stargz snapshotter served alone (`stratad serve-snapshotter --snapshotter stargz`) as stratad's proxy
 * plugin: a pull through it lazily provides the layers (the remote-snapshot handshake over gRPC), and a running
 * container keeps reading files it had not read while the serving process is dead (killed with -9), because its
 * lazyfs outlives it; the restarted serve-snapshotter finds the same lazyfs.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { lazyfsMountsUnder } from '../../src/snapshots/stargz/mounts.js';
import { run as runCmd } from '../helpers/ctr.js';
import { startCountingProxy, type CountingProxy } from '../helpers/counting-proxy.js';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { STRATA } from '../helpers/paths.js';
import { startRegistry, stopAllRegistries, type StartedRegistry } from '../helpers/registry.js';
import { serveSnapshotter, type ServedBackend } from '../helpers/serve-snapshotter.js';
import { alive, buildLazyImage, lazyfsPid, stopLazyfs, type LazyImage } from '../helpers/stargz.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

const NS = 'served';

let t: TempDir;
let d: StartedDaemon;
let served: ServedBackend;
let registry: StartedRegistry;
let proxy: CountingProxy;
let lazy: LazyImage;
let REF: string;
let snRoot: string;
let sock: string;

const strata = (args: string[]) => runCmd(STRATA, ['--address', d.address, '--namespace', NS, ...args], { timeoutMs: 120_000 });
async function ok(args: string[]): Promise<string> {
  const r = await strata(args);
  expect(r.code, `strata ${args.join(' ')}: ${r.stderr}`).toBe(0);
  return r.stdout;
}
const dataBytes = () => proxy.requests.filter((r) => r.digest === lazy.layers[1]!.digest && r.method === 'GET').reduce((n, r) => n + r.bytes, 0);

beforeAll(async () => {
  t = await tempDir('strata-stargz-serve-');
  registry = await startRegistry();
  proxy = await startCountingProxy(registry.host);
  lazy = await buildLazyImage(t.path, { estargz: true, files: 6, fileSize: 4 << 20, chunk: 1 << 20 });
  await registry.pushOciLayout(lazy.layoutDir, 'served/app:v1');
  REF = `${proxy.host}/served/app:v1`;
  snRoot = join(t.path, 'sn');
  sock = join(t.path, 'sn.sock');
  await mkdir(snRoot);
  served = await serveSnapshotter('stargz', snRoot, sock);
  d = await startDaemon({
    config: `[proxy_plugins.lazy]\n  type = "snapshot"\n  address = "${sock}"\n[plugins."io.containerd.transfer.v1.images"]\n  remote_snapshotters = ["lazy"]\n`,
  });
}, 180_000);

afterAll(async () => {
  if (d) {
    if (served && served.proc.exitCode === null && served.proc.signalCode === null) {
      for (const id of (await strata(['task', 'ls', '-q'])).stdout.split('\n').filter(Boolean)) await strata(['task', 'rm', '-f', id]);
      for (const id of (await strata(['container', 'ls', '-q'])).stdout.split('\n').filter(Boolean)) await strata(['container', 'rm', id]);
    }
  }
  await stopAll();
  await served?.stop();
  if (snRoot) await stopLazyfs(snRoot);
  await proxy?.stop();
  await stopAllRegistries();
  await d?.dir.cleanup();
  await t?.cleanup();
});

describe('the stargz snapshotter served alone', () => {
  it('provides the layers of a pull lazily through the proxy plugin, and keeps a container reading while it is killed with -9 and restarted', async () => {
    const pull = await strata(['image', 'pull', '--snapshotter', 'lazy', REF]);
    expect(pull.code, pull.stderr).toBe(0);
    for (const l of lazy.layers) expect(pull.stderr).toMatch(new RegExp(`layer ${l.digest}: exists .* remote snapshot`));
    expect(dataBytes()).toBeLessThan(lazy.layers[1]!.size / 8);

    const f = lazy.files[4]!;
    await ok(['run', '-d', '--snapshotter', 'lazy', REF, 'reader', '--', 'sh', '-c', `sleep 3; md5sum ${f.path} > /tmp/out; echo done >> /tmp/out; sleep 1000`]);
    const pid = lazyfsPid(snRoot)!;
    served.proc.kill('SIGKILL');
    await served.stop();
    const before = dataBytes();
    expect(alive(pid)).toBe(true);

    // While nothing serves the snapshotter's API, the container reads a file it never read, through lazyfs.
    let out = '';
    for (let i = 0; i < 100 && !out.endsWith('done\n'); i++) {
      out = (await strata(['task', 'exec', '--exec-id', `x${i}`, 'reader', 'cat', '/tmp/out'])).stdout;
      if (!out.endsWith('done\n')) await new Promise((r) => setTimeout(r, 100));
    }
    expect(out).toBe(`${f.md5}  ${f.path}\ndone\n`);
    expect(dataBytes() - before).toBeGreaterThanOrEqual(4 << 20);

    served = await serveSnapshotter('stargz', snRoot, sock);
    expect(lazyfsPid(snRoot)).toBe(pid);
    expect(served.logs()).toMatch(/"started":false/);
    const g = lazy.files[5]!;
    expect(await ok(['run', '--rm', '--snapshotter', 'lazy', REF, 'second', '--', 'md5sum', g.path])).toBe(`${g.md5}  ${g.path}\n`);
    await ok(['task', 'rm', '-f', 'reader']);
    await ok(['container', 'rm', 'reader']);
    expect(lazyfsMountsUnder(snRoot)).toHaveLength(2);
  });
});
