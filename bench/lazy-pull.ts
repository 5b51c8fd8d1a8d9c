/**
 * Lazy pull benchmark (issue 15): time to the first output of `echo` in an image with a big layer (1 GiB by
 * default) plus a base-OS-like layer (busybox and a few thousand small files), and the registry bytes fetched by
 * then:
 *   - full: `strata image pull` of the plain gzip image into overlayfs, then `strata run --rm IMAGE c echo hi`;
 *   - lazy: `strata image pull --snapshotter stargz` of the same image converted to eStargz (by
 *     `strata image convert --estargz --oci`, untimed), then `strata run --rm --snapshotter stargz ... echo hi`.
 * The time is taken to the run's exit (after `--rm`'s teardown; the comparable figure of earlier results) and to
 * the first byte of its output.
 * Each measurement: a fresh stratad on an empty root (its stargz snapshotter's lazyfs started, as it is at the
 * snapshotter's open), page caches dropped, the clock from the pull's start to the
 * run's exit (its output is its last act), the bytes counted by a proxy in front of Debian's docker-registry on
 * loopback. Rounds alternate the order.
 *
 *   sudo bash bench/run.sh lazy-pull [--size-mib 1024] [--rounds 2] [--json] [--timeline] [--modes full,lazy]
 *
 * --timeline prints, after each lazy measurement, stratad's (debug level) and lazyfs's log lines with their time
 * since the pull's start, and the CLI processes' boundaries: where the time to first output goes.
 *
 * The stargz snapshotter runs with its defaults (prefetch on; background fetch after 5 s, so it does not run
 * before the first output here).
 */
import { randomBytes } from 'node:crypto';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { buildImage, type LayerEntry } from '../test/helpers/images.js';
import { startRegistry, stopAllRegistries } from '../test/helpers/registry.js';
import { startCountingProxy } from '../test/helpers/counting-proxy.js';
import { startDaemon, stopAll, type StartedDaemon } from '../test/helpers/daemon.js';
import { run } from '../test/helpers/ctr.js';
import { STRATA } from '../test/helpers/paths.js';
import { tempDir } from '../test/helpers/temp.js';
import { LazyfsClient } from '../src/snapshots/stargz/client.js';
import { detach, lazyfsMountsUnder } from '../src/snapshots/stargz/mounts.js';
import { silentLogger } from '../src/log/index.js';
import { dropCaches, formatBytes, log, median } from './lib.js';

const arg = (name: string, def: string): string => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] ? process.argv[i + 1]! : def;
};
const SIZE_MIB = Number(arg('size-mib', '1024'));
const ROUNDS = Number(arg('rounds', '2'));
const JSON_OUT = process.argv.includes('--json');
/** Prints, after each lazy measurement, the daemon's and lazyfs's log lines with their time since the pull's start. */
/** Which measurements to take (`--modes lazy` while looking at the lazy path alone; the ratio needs both). */
const MODES = arg('modes', 'full,lazy').split(',');
const TIMELINE = process.argv.includes('--timeline');
const APPLETS = ['sh', 'echo', 'ls', 'cat'];

async function strata(d: StartedDaemon, args: string[]): Promise<string> {
  const r = await run(STRATA, ['--address', d.address, '--namespace', 'bench', ...args], { timeoutMs: 1_800_000 });
  if (r.code !== 0) throw new Error(`strata ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

/** `strata run ...`: its output, when its first byte came (performance.now()), and when it exited. */
function strataRun(d: StartedDaemon, args: string[]): Promise<{ out: string; firstByteAt: number; exitAt: number }> {
  return new Promise((resolve, reject) => {
    const p = spawn(STRATA, ['--address', d.address, '--namespace', 'bench', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    let firstByteAt = 0;
    p.stdout.on('data', (b: Buffer) => {
      if (firstByteAt === 0) firstByteAt = performance.now();
      out += b.toString();
    });
    p.stderr.on('data', (b: Buffer) => (err += b.toString()));
    p.on('error', reject);
    p.on('close', (code) => {
      const exitAt = performance.now();
      if (code !== 0) reject(new Error(`strata ${args.join(' ')}: ${err}`));
      else resolve({ out, firstByteAt: firstByteAt || exitAt, exitAt });
    });
  });
}

async function stopLazyfs(root: string): Promise<void> {
  const c = new LazyfsClient({ root, log: silentLogger });
  await c.shutdown().catch(() => undefined);
  c.close();
  await new Promise((r) => setTimeout(r, 300));
  for (const mp of lazyfsMountsUnder(root)) await detach(mp);
}

function printTimeline(start: number, pulledMs: number, endMs: number, daemonLogs: string, stargzRoot: string): void {
  const rows: { at: number; who: string; line: string }[] = [
    { at: 0, who: 'bench', line: 'strata image pull starts' },
    { at: pulledMs, who: 'bench', line: 'strata image pull exited; strata run starts' },
    { at: endMs, who: 'bench', line: 'strata run exited (output read)' },
  ];
  const add = (who: string, text: string): void => {
    for (const line of text.split('\n')) {
      const m = /"time":"([^"]+)"/.exec(line);
      if (!m) continue;
      const at = Date.parse(m[1]!) - start;
      if (at >= -50 && at <= endMs + 50) rows.push({ at, who, line: line.replace(/"time":"[^"]+",?/, '').slice(0, 220) });
    }
  };
  add('stratad', daemonLogs);
  try {
    add('lazyfs', readFileSync(join(stargzRoot, 'lazyfs.log'), 'utf8'));
  } catch {
    // no lazyfs log
  }
  rows.sort((a, b) => a.at - b.at);
  for (const r of rows) process.stderr.write(`${(r.at / 1000).toFixed(3).padStart(8)}  ${r.who.padEnd(8)} ${r.line}\n`);
}

async function main(): Promise<void> {
  const t = await tempDir('strata-bench-lazy-');
  const registry = await startRegistry();
  const proxy = await startCountingProxy(registry.host);
  try {
    log(`building the image: a base layer and a ${SIZE_MIB} MiB layer`);
    const base: LayerEntry[] = [
      { path: 'bin', type: 'dir' },
      { path: 'bin/busybox', content: await import('node:fs/promises').then((f) => f.readFile('/bin/busybox')), mode: 0o755 },
      ...APPLETS.map((a) => ({ path: `bin/${a}`, type: 'symlink' as const, linkname: 'busybox' })),
      { path: 'usr', type: 'dir' },
      { path: 'usr/share', type: 'dir' },
      ...Array.from({ length: 3000 }, (_, i) => ({ path: `usr/share/f${i}`, content: randomBytes(2048).toString('base64') })),
    ];
    const perFile = 64 << 20;
    const big: LayerEntry[] = [{ path: 'data', type: 'dir' }];
    for (let i = 0; i * perFile < SIZE_MIB << 20; i++) big.push({ path: `data/f${i}`, content: randomBytes(Math.min(perFile, (SIZE_MIB << 20) - i * perFile)) });
    const image = await buildImage(t.path, {
      basename: 'plain',
      platforms: [{ config: { Env: ['PATH=/bin'], Cmd: ['sh'] }, layers: [{ entries: base, compression: 'gzip' }, { entries: big, compression: 'gzip' }] }],
    });
    await registry.pushOciLayout(image.layoutDir, 'bench/plain:v1');
    const plainBytes = [...image.blobs.values()].reduce((n, b) => n + b.length, 0);
    const PLAIN = `${proxy.host}/bench/plain:v1`;
    const ESGZ = `${proxy.host}/bench/esgz:v1`;

    log('converting with strata image convert --estargz --oci (untimed)');
    {
      const d = await startDaemon({ logLevel: 'info' });
      await strata(d, ['image', 'pull', '--skip-unpack', PLAIN]);
      await strata(d, ['image', 'convert', '--estargz', '--oci', PLAIN, ESGZ]);
      await strata(d, ['image', 'push', ESGZ]);
      await stopAll();
      await d.dir.cleanup();
    }

    const results: { mode: string; ms: number; firstMs: number; bytes: number; pullMs: number }[] = [];
    const one = async (mode: 'full' | 'lazy'): Promise<void> => {
      const d = await startDaemon({ logLevel: TIMELINE && mode === 'lazy' ? 'debug' : 'info' });
      const stargzRoot = join(d.root, 'io.containerd.snapshotter.v1.stargz');
      try {
        // The snapshotter starts its lazyfs when it opens (as containerd-stargz-grpc runs beside containerd): a
        // daemon that has been up a while has it running. The clock starts once it is.
        for (let i = 0; i < 200 && !existsSync(join(stargzRoot, 'lazyfs.pid')); i++) await new Promise((r) => setTimeout(r, 50));
        dropCaches();
        const from = proxy.requests.length;
        const t0 = performance.now();
        const sn = mode === 'lazy' ? ['--snapshotter', 'stargz'] : [];
        const ref = mode === 'lazy' ? ESGZ : PLAIN;
        await strata(d, ['image', 'pull', ...sn, ref]);
        const pulled = performance.now() - t0;
        const r = await strataRun(d, ['run', '--rm', ...sn, ref, `c-${mode}`, 'echo', 'hi']);
        const ms = r.exitAt - t0;
        const firstMs = r.firstByteAt - t0;
        if (r.out !== 'hi\n') throw new Error(`unexpected output ${JSON.stringify(r.out)}`);
        const bytes = proxy.requests.slice(from).filter((r) => r.method === 'GET').reduce((n, r) => n + r.bytes, 0);
        results.push({ mode, ms, firstMs, bytes, pullMs: pulled });
        log(`${mode}: run exited after ${(ms / 1000).toFixed(2)} s (first output byte ${(firstMs / 1000).toFixed(2)} s, pull ${(pulled / 1000).toFixed(2)} s), ${formatBytes(bytes)} fetched`);
        if (TIMELINE && mode === 'lazy') printTimeline(performance.timeOrigin + t0, pulled, ms, d.logs, stargzRoot);
      } finally {
        await stopLazyfs(stargzRoot);
        await stopAll();
        await rm(d.dir.path, { recursive: true, force: true });
      }
    };
    for (let r = 0; r < ROUNDS; r++) {
      const order: ('full' | 'lazy')[] = r % 2 === 0 ? ['full', 'lazy'] : ['lazy', 'full'];
      for (const m of order) if (MODES.includes(m)) await one(m);
    }
    const med = (m: string, k: 'ms' | 'firstMs' | 'bytes') => median(results.filter((x) => x.mode === m).map((x) => x[k]));
    const summary = {
      sizeMiB: SIZE_MIB,
      imageBytes: plainBytes,
      rounds: ROUNDS,
      fullMs: med('full', 'ms'),
      lazyMs: med('lazy', 'ms'),
      fullFirstMs: med('full', 'firstMs'),
      lazyFirstMs: med('lazy', 'firstMs'),
      fullBytes: med('full', 'bytes'),
      lazyBytes: med('lazy', 'bytes'),
      results,
    };
    if (JSON_OUT) process.stdout.write(JSON.stringify(summary, null, 2) + '\n');
    else {
      process.stdout.write(`image ${formatBytes(plainBytes)} (gzip), ${ROUNDS} rounds, medians\n`);
      process.stdout.write(`full pull (overlayfs) + run: ${(summary.fullMs / 1000).toFixed(2)} s, ${formatBytes(summary.fullBytes)}\n`);
      process.stdout.write(`lazy pull (stargz) + run:    ${(summary.lazyMs / 1000).toFixed(2)} s, ${formatBytes(summary.lazyBytes)}\n`);
      process.stdout.write(`lazy/full: time ${((summary.lazyMs / summary.fullMs) * 100).toFixed(1)}%, bytes ${((summary.lazyBytes / summary.fullBytes) * 100).toFixed(1)}%\n`);
      process.stdout.write(
        `to the first output byte (not the run's exit): full ${(summary.fullFirstMs / 1000).toFixed(2)} s, lazy ${(summary.lazyFirstMs / 1000).toFixed(2)} s, lazy/full ${((summary.lazyFirstMs / summary.fullFirstMs) * 100).toFixed(1)}%\n`,
      );
    }
  } finally {
    await stopAll();
    await proxy.stop();
    await stopAllRegistries();
    await t.cleanup();
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`);
  process.exit(1);
});
