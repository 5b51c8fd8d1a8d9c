/**
 * Images converted by Strata work lazily in stargz-snapshotter itself: its snapshotter and FUSE filesystem
 * (Debian's sources, served as a containerd proxy plugin by test/go/gopath/src/strata.test/interop/stargzd),
 * containerd 1.6, `ctr-remote image rpull` of an image Strata converted and pushed, then `ctr run`: the
 * layers are mounted remotely (never downloaded into containerd's content store) and a file of two chunks
 * reads back whole.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run, tableRows } from '../helpers/ctr.js';
import { ctrAt, exec, mountsUnder, startContainerd, stopAllContainerd, unmountUnder, type StartedContainerd } from '../helpers/containerd.js';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { bytes, ctrRemoteBinary, registryManifest, sha256 } from '../helpers/estargz.js';
import { goBinary } from '../helpers/go.js';
import { buildImage, busyboxPlatform } from '../helpers/images.js';
import { STRATA } from '../helpers/paths.js';
import { startRegistry, stopAllRegistries, type StartedRegistry } from '../helpers/registry.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

const NS = 'estargz-stargzd';
const IMAGE = 'docker.io/library/busybox:esgz-stargzd-src';
const CONVERTED = 'docker.io/library/busybox:esgz-stargzd';
const BIG = bytes(5 << 20, 21);

let d: StartedDaemon;
let reg: StartedRegistry;
let ctrd: StartedContainerd;
let dir: TempDir;
let stargzd: ChildProcess | undefined;
let stargzdLog = '';
let stargzRoot = '';

const strata = (args: string[]) => run(STRATA, ['--address', d.address, '--namespace', NS, ...args], { timeoutMs: 180_000 });

beforeAll(async () => {
  dir = await tempDir('strata-esgz-stargzd-');
  stargzRoot = join(dir.path, 'stargzd');
  await mkdir(stargzRoot, { recursive: true });
  const sock = join(dir.path, 'stargzd.sock');
  const bin = await goBinary('stargzd');
  stargzd = spawn(bin, ['-root', stargzRoot, '-address', sock], { stdio: ['ignore', 'pipe', 'pipe'] });
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`stargzd did not start:\n${stargzdLog}`)), 30_000);
    stargzd!.stdout!.on('data', (b: Buffer) => {
      stargzdLog += b.toString();
      if (stargzdLog.includes('READY')) {
        clearTimeout(timer);
        resolve();
      }
    });
    stargzd!.stderr!.on('data', (b: Buffer) => (stargzdLog = (stargzdLog + b.toString()).slice(-20000)));
    stargzd!.on('exit', (code) => reject(new Error(`stargzd exited ${code}:\n${stargzdLog}`)));
  });
  [d, reg, ctrd] = await Promise.all([
    startDaemon(),
    startRegistry(),
    startContainerd({ config: `[proxy_plugins]\n  [proxy_plugins.stargz]\n    type = "snapshot"\n    address = "${sock}"\n` }),
  ]);
  const base = await busyboxPlatform({ compression: 'gzip' });
  const img = await buildImage(dir.path, {
    basename: 'busybox',
    name: IMAGE,
    platforms: [{ ...base, layers: [...base.layers, { compression: 'gzip', entries: [{ path: 'data', type: 'dir' }, { path: 'data/big', content: BIG }, { path: 'data/small', content: 'small\n' }] }] }],
  });
  for (const args of [
    ['image', 'import', '--no-unpack', img.archivePath],
    ['image', 'convert', '--estargz', '--oci', IMAGE, CONVERTED],
    ['image', 'push', `${reg.host}/busybox:esgz`, CONVERTED],
  ]) {
    const r = await strata(args);
    expect(r.code, `strata ${args.join(' ')}: ${r.stderr}`).toBe(0);
  }
}, 300_000);

afterAll(async () => {
  await exec('ctr', ['--address', ctrd?.address ?? '', 'task', 'rm', '-f', 'lazy']).catch(() => undefined);
  await exec('ctr', ['--address', ctrd?.address ?? '', 'container', 'rm', 'lazy']).catch(() => undefined);
  await stopAllContainerd();
  if (stargzd && stargzd.exitCode === null) {
    stargzd.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 500));
    if (stargzd.exitCode === null) stargzd.kill('SIGKILL');
  }
  if (process.env.STARGZD_LOG) (await import('node:fs')).writeFileSync(process.env.STARGZD_LOG, stargzdLog);
  if (stargzRoot) await unmountUnder(stargzRoot);
  await stopAll();
  await stopAllRegistries();
  await d?.dir.cleanup();
  await dir?.cleanup();
});

describe('a Strata-converted image in stargz-snapshotter', () => {
  it('is pulled remotely by ctr-remote rpull and runs lazily: layers mounted over FUSE, never downloaded', async () => {
    const ref = `${reg.host}/busybox:esgz`;
    const ctrRemote = await ctrRemoteBinary();
    const pull = await exec(ctrRemote, ['--address', ctrd.address, 'image', 'rpull', '--plain-http', '--snapshotter', 'stargz', ref], { timeoutMs: 120_000 });
    expect(pull.code, pull.stderr + pull.stdout + stargzdLog.slice(-4000)).toBe(0);

    // Every layer is a remote snapshot of the stargz snapshotter.
    const snaps = tableRows((await ctrAt(ctrd.address, ['snapshot', '--snapshotter', 'stargz', 'ls'])).stdout);
    expect(snaps.length).toBe(2);
    for (const [key] of snaps) {
      const info = JSON.parse((await ctrAt(ctrd.address, ['snapshot', '--snapshotter', 'stargz', 'info', key!])).stdout) as { Labels?: Record<string, string> };
      expect(info.Labels?.['containerd.io/snapshot/remote'], key).toBe('remote snapshot');
    }
    // containerd fetched the manifest and config, not the layers.
    const manifest = await registryManifest(reg.url, 'busybox', 'esgz');
    const content = (await ctrAt(ctrd.address, ['content', 'ls', '-q'])).stdout;
    for (const l of manifest.layers as { digest: string }[]) expect(content).not.toContain(l.digest);
    expect((await mountsUnder(stargzRoot)).length).toBeGreaterThanOrEqual(2); // the FUSE mounts of the layers

    const r = await exec('ctr', ['--address', ctrd.address, 'run', '--rm', '--snapshotter', 'stargz', ref, 'lazy', 'sh', '-c', 'cat /data/small; busybox sha256sum /data/big'], { timeoutMs: 120_000 });
    expect(r.code, r.stderr + stargzdLog.slice(-4000)).toBe(0);
    expect(r.stdout).toBe(`small\n${sha256(BIG).slice(7)}  /data/big\n`);
  });
});
