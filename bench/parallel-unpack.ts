/**
 * Parallel unpack benchmark: `strata image pull` of one many-layer image (10 layers of mixed sizes, built
 * with the test helpers, served by Debian's docker-registry on loopback) by stratad with
 * max_concurrent_unpacks = 1 (in order) and = N (parallel, overlayfs rebase), and by containerd 1.6 (`ctr image
 * pull`, which unpacks in order), in alternating order each round.
 *
 *   node dist/bench/parallel-unpack.js [--rounds 3] [--warmup 1] [--parallel 2] [--scale 1] [--no-containerd] [--json]
 *                                      [--unpack-only] [--fs loop|tmp] [--skip-unpack] [--only strata]
 *
 * --unpack-only: instead, the unpack alone, in process (the blobs put into a fresh content store first, untimed;
 * then unpackLayers into a fresh overlayfs behind the namespaced layer, timed), in order vs parallel: what the
 * extraction gains without the downloads a pull overlaps it with.
 *
 * --skip-unpack: adds a third stratad contender, the same pull with `--skip-unpack` (downloads only: what the
 * unpack overlaps). --only strata: no containerd; --only downloads: the --skip-unpack pull alone. Each stratad sample also reports the daemon's CPU seconds
 * for the pull (utime + stime of its process, all threads, from /proc: less exposed to the load than wall time).
 *
 * --trace: the stratad pulls are made by this process through the client library (no CLI start) and each prints
 * its timeline: for every layer, when its download ended, its extraction started and ended (ms from the call).
 *
 * STRATA_BENCH_CPU_PROF=DIR: each stratad writes V8 CPU profiles (main thread and apply workers) into DIR
 * (summarise them with bench/cpuprofile-top.ts).
 *
 * --warmup rounds run every contender untimed first (the first pulls after the image is pushed were 3x slower
 * than the rest on a busy machine). stratad runs with --log-level info.
 *
 * Must run as root (overlay mounts, loop mounts, drop_caches). Each measurement: a daemon started on an empty
 * root, page caches dropped, the pull timed from the command's start to its exit (fetch + unpack; the image's
 * blobs come from loopback), the daemon stopped and its root removed.
 *
 * --fs loop (default): each measurement's root (daemon or in-process store) is on a fresh ext4 (with its journal,
 * inode tables initialised at mkfs) loop-mounted for it, as the other daemon benchmarks do. --fs tmp: under
 * $TMPDIR, as before. On this VM / is an ext4 WITHOUT a journal: there ext4 skips, for every new inode, the
 * inodes deleted in the last ~35 s (recently_deleted(), a buffer-cache lookup each), so a measurement right
 * after the previous one's root (17,000 files) was removed spent most of its CPU time in the kernel looking for
 * free inodes (bench/RESULTS.md, "Parallel unpack", the profile).
 *
 * Layers (gzip -6, deterministic text-like content from an AES-CTR keystream in base64): many small files,
 * a few big files, and a mix, about 110 MB uncompressed at --scale 1.
 */
import { createCipheriv } from 'node:crypto';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { buildImage, type LayerEntry, type LayerSpec } from '../test/helpers/images.js';
import { startRegistry, stopAllRegistries } from '../test/helpers/registry.js';
import { startDaemon, stopAll } from '../test/helpers/daemon.js';
import { ctrAt, startContainerd, stopAllContainerd } from '../test/helpers/containerd.js';
import { run } from '../test/helpers/ctr.js';
import { STRATA } from '../test/helpers/paths.js';
import { tempDir } from '../test/helpers/temp.js';
import { dropCaches, median, unmount } from './lib.js';
import type { StrataClient } from '../src/api/clients/strata.js';
import { mkdir, rm } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { loadavg } from 'node:os';
import type { TempDir } from '../test/helpers/temp.js';
import { WalkingDiffer } from '../src/diff/walking.js';
import { unpackLayers } from '../src/images/unpack.js';
import { openStore } from '../test/gc/harness.js';

const arg = (name: string, def: string): string => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] ? process.argv[i + 1]! : def;
};
const ROUNDS = Number(arg('rounds', '3'));
const WARMUP = Number(arg('warmup', '1'));
const PARALLEL = Number(arg('parallel', '2'));
const SCALE = Number(arg('scale', '1'));
const ONLY = arg('only', '');
if (ONLY !== '' && ONLY !== 'strata' && ONLY !== 'downloads') throw new Error('--only must be strata or downloads');
const SKIP_UNPACK = process.argv.includes('--skip-unpack') || ONLY === 'downloads';
const CONTAINERD = !process.argv.includes('--no-containerd') && ONLY === '';
const TRACE = process.argv.includes('--trace');
const JSON_OUT = process.argv.includes('--json');
const UNPACK_ONLY = process.argv.includes('--unpack-only');
const FS = arg('fs', 'loop');
if (FS !== 'loop' && FS !== 'tmp') throw new Error('--fs must be loop or tmp');

/** Text-like bytes: a keystream (AES-256-CTR of zeros, fixed key, per-seed IV) as base64, in lines. */
function bytes(seed: number, size: number): Buffer {
  const iv = Buffer.alloc(16);
  iv.writeUInt32BE(seed, 12);
  const c = createCipheriv('aes-256-ctr', Buffer.alloc(32, 7), iv);
  const raw = c.update(Buffer.alloc(Math.ceil((size * 3) / 4) + 3));
  const b = Buffer.from(raw.toString('base64').slice(0, size));
  for (let i = 76; i < b.length; i += 77) b[i] = 10;
  return b;
}

function files(layer: number, count: number, size: number): LayerEntry[] {
  const out: LayerEntry[] = [{ path: `l${layer}`, type: 'dir' }];
  const dirs = Math.max(1, Math.ceil(count / 100));
  for (let d = 0; d < dirs; d++) out.push({ path: `l${layer}/d${d}`, type: 'dir' });
  for (let f = 0; f < count; f++) out.push({ path: `l${layer}/d${f % dirs}/f${f}`, content: bytes(layer * 1_000_000 + f, size) });
  return out;
}

function big(layer: number, mib: number): LayerEntry[] {
  return [{ path: `l${layer}`, type: 'dir' }, { path: `l${layer}/big`, content: bytes(layer * 1_000_000, Math.round(mib * SCALE * (1 << 20))) }];
}

function layers(): LayerSpec[] {
  const n = (k: number) => Math.max(1, Math.round(k * SCALE));
  return [
    { entries: files(0, n(3000), 4096) },
    { entries: big(1, 32) },
    { entries: files(2, n(2000), 1024) },
    { entries: big(3, 16) },
    { entries: files(4, n(4000), 512) },
    { entries: [...big(5, 8), ...files(50, n(500), 2048)] },
    { entries: big(6, 24) },
    { entries: files(7, n(1500), 8192) },
    { entries: [{ path: 'etc', type: 'dir' }, { path: 'etc/app.conf', content: 'mode = bench\n' }] },
    { entries: files(9, n(2000), 2048) },
  ];
}

interface Sample {
  who: string;
  seconds: number;
  /** 1-minute load average when the measurement ended. */
  load: number;
  /** stratad's CPU seconds (user + system, all threads) during the pull. */
  cpu?: number;
}

/** CPU seconds (utime + stime) of a process so far, from /proc/PID/stat. */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // Fields 14 and 15 of stat(5); f[0] is field 3.
  return (Number(f[11]) + Number(f[12])) / 100;
}

function sh(cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.error?.message ?? r.stderr}`);
}

let loops = 0;
/** Loop mounts still up (unmounted on a failure too). */
const mounted = new Set<string>();
/**
 * A fresh 4 GiB ext4 (journal and inode tables initialised at mkfs, so no lazy-init thread writes meanwhile)
 * loop-mounted under `parent`; cleanup unmounts it and deletes its image. --fs tmp: a plain temp dir.
 */
async function freshDir(parent: string, prefix: string): Promise<TempDir> {
  if (FS === 'tmp') return tempDir(prefix);
  const n = loops++;
  const img = join(parent, `fs-${n}.img`);
  const mnt = join(parent, `fs-${n}`);
  await mkdir(mnt, { recursive: true });
  sh('truncate', ['-s', '4G', img]);
  sh('mkfs.ext4', ['-q', '-E', 'lazy_itable_init=0,lazy_journal_init=0', img]);
  sh('mount', ['-o', 'loop', img, mnt]);
  mounted.add(mnt);
  return {
    path: mnt,
    cleanup: async () => {
      unmount(mnt);
      mounted.delete(mnt);
      await rm(img, { force: true });
      await rm(mnt, { recursive: true, force: true });
    },
  };
}

/** One pull through the client library, its progress timeline printed (--trace). */
async function traced(c: StrataClient, ref: string, skipUnpack: boolean, label: string): Promise<void> {
  const t0 = performance.now();
  const at = new Map<string, number>();
  const order: string[] = [];
  const stream = c.transfer.pull(
    { ref, platforms: [], allPlatforms: false, unpack: !skipUnpack, snapshotter: '', registry: { plainHttp: true, username: '', secret: '', hostsDir: '', maxConcurrent: 0 }, labels: {} },
    c.metadata(),
  );
  for await (const p of stream as AsyncIterable<{ ref: string; kind: string; status: string }>) {
    const key = `${p.kind} ${p.ref.slice(7, 15)} ${p.status}`;
    if (!at.has(key)) {
      at.set(key, performance.now() - t0);
      order.push(key);
    }
  }
  c.close();
  console.error(`trace ${label}: ${order.filter((k) => !k.endsWith(' downloading')).map((k) => `${k} ${at.get(k)!.toFixed(0)}`).join('; ')}`);
}

async function timed(fn: () => Promise<void>): Promise<number> {
  const t = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - t) / 1e9;
}

async function main(): Promise<void> {
  const dir = await tempDir('strata-bench-punpack-');
  const started = Date.now();
  const built = await buildImage(dir.path, { name: 'bench/many:1', platforms: [{ layers: layers() }] });
  const m = built.manifests[0]!;
  const sizes = m.layers.map((l) => ({ compressed: l.blob.length, uncompressed: l.tar.length }));
  let ref = '';
  if (!UNPACK_ONLY) {
    const registry = await startRegistry();
    await registry.pushOciLayout(built.layoutDir, 'bench/many:1');
    ref = `${registry.host}/bench/many:1`;
  }
  if (!JSON_OUT) {
    console.error(`image: ${sizes.length} layers, ${(sizes.reduce((a, s) => a + s.uncompressed, 0) / 1e6).toFixed(1)} MB uncompressed, ` +
      `${(sizes.reduce((a, s) => a + s.compressed, 0) / 1e6).toFixed(1)} MB compressed; built and pushed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  }

  let lastCpu: number | undefined;
  const strata = async (unpacks: number, skipUnpack = false): Promise<number> => {
    const d = await startDaemon({
      dir: await freshDir(dir.path, 'stratad-'),
      logLevel: 'info',
      config: `[plugins."io.containerd.transfer.v1.local"]\nmax_concurrent_unpacks = ${unpacks}\n`,
      // STRATA_BENCH_CPU_PROF=DIR: a V8 CPU profile of each stratad (and its worker threads) in DIR, as bench/lib.ts.
      // (node refuses --cpu-prof in NODE_OPTIONS: a shell that execs node with it, so the pid stays the daemon's.)
      ...(process.env.STRATA_BENCH_CPU_PROF
        ? { exec: ['sh', '-c', `exec "$0" --cpu-prof --cpu-prof-dir='${process.env.STRATA_BENCH_CPU_PROF}' "$@"`] }
        : {}),
    });
    try {
      dropCaches();
      const cpu0 = cpuSeconds(d.proc.pid!);
      const secs = await timed(async () => {
        if (TRACE) return traced(d.client('bench'), ref, skipUnpack, `${skipUnpack ? 'skip-unpack' : `unpacks=${unpacks}`}`);
        const r = await run(process.execPath, [STRATA, '-a', d.address, '-n', 'bench', 'image', 'pull', '--plain-http', ...(skipUnpack ? ['--skip-unpack'] : []), ref], { timeoutMs: 600_000 });
        if (r.code !== 0) throw new Error(`strata pull failed: ${r.stderr}`);
      });
      lastCpu = cpuSeconds(d.proc.pid!) - cpu0;
      return secs;
    } finally {
      await d.stop();
      await d.dir.cleanup().catch(() => undefined);
    }
  };
  const containerd = async (): Promise<number> => {
    const c = await startContainerd({ dir: await freshDir(dir.path, 'containerd-') });
    try {
      dropCaches();
      return await timed(async () => {
        const r = await ctrAt(c.address, ['image', 'pull', '--plain-http', ref], 'bench');
        if (r.code !== 0) throw new Error(`ctr pull failed: ${r.stderr}`);
      });
    } finally {
      await c.stop();
      await c.dir.cleanup().catch(() => undefined);
    }
  };

  let runs = 0;
  const inProcess = async (unpacks: number): Promise<number> => {
    const fsDir = FS === 'loop' ? await freshDir(dir.path, '') : undefined;
    const root = fsDir ? join(fsDir.path, 'root') : join(dir.path, `unpack-${runs++}`);
    const s = await openStore(root);
    try {
      s.md.leases.create('bench', 'l');
      const content = s.content('bench', 'l');
      for (const l of m.layers) {
        const w = await content.writer({ ref: l.descriptor.digest });
        await w.write(l.blob);
        await w.commit(l.blob.length, l.descriptor.digest);
        await w.close();
      }
      dropCaches();
      const differ = new WalkingDiffer({});
      return await timed(async () => {
        const r = await unpackLayers(s.snapshots('bench', 'l'), differ, content, m.layers.map((l) => l.descriptor), m.layers.map((l) => l.diffID), {
          snapshotterName: 'overlayfs',
          maxConcurrentUnpacks: unpacks,
        });
        if (r.extracted !== m.layers.length || r.parallel !== unpacks > 1) throw new Error(`unexpected unpack: ${JSON.stringify(r)}`);
      });
    } finally {
      await s.sn.settled();
      await s.close();
      if (fsDir) await fsDir.cleanup();
      else await rm(root, { recursive: true, force: true });
    }
  };

  const samples: Sample[] = [];
  const contenders: [string, () => Promise<number>][] = UNPACK_ONLY
    ? [
        ['unpack in order (max_concurrent_unpacks = 1)', () => inProcess(1)],
        [`unpack parallel (max_concurrent_unpacks = ${PARALLEL})`, () => inProcess(PARALLEL)],
      ]
    : [
        ...(ONLY === 'downloads' ? [] : ([
          ['stratad in order (max_concurrent_unpacks = 1)', () => strata(1)],
          [`stratad parallel (max_concurrent_unpacks = ${PARALLEL})`, () => strata(PARALLEL)],
        ] as [string, () => Promise<number>][])),
        ...(SKIP_UNPACK ? ([['stratad --skip-unpack (downloads only)', () => strata(1, true)]] as [string, () => Promise<number>][]) : []),
        ...(CONTAINERD ? ([['containerd 1.6 (ctr image pull)', containerd]] as [string, () => Promise<number>][]) : []),
      ];
  for (let w = 0; w < WARMUP; w++) {
    for (const [who, fn] of contenders) {
      const seconds = await fn();
      if (!JSON_OUT) console.error(`warm-up: ${who}: ${seconds.toFixed(2)} s (not counted)`);
    }
  }
  for (let round = 0; round < ROUNDS; round++) {
    const order = round % 2 === 0 ? contenders : [...contenders].reverse();
    for (const [who, fn] of order) {
      lastCpu = undefined;
      const seconds = await fn();
      const load = loadavg()[0]!;
      const cpu = lastCpu as number | undefined;
      samples.push({ who, seconds, load, ...(cpu !== undefined ? { cpu } : {}) });
      if (!JSON_OUT) console.error(`round ${round + 1}: ${who}: ${seconds.toFixed(2)} s (load ${load.toFixed(2)}${cpu !== undefined ? `, stratad ${cpu.toFixed(2)} CPU-s` : ''})`);
    }
  }
  const results = contenders.map(([who]) => {
    const xs = samples.filter((s) => s.who === who).map((s) => s.seconds);
    const loads = samples.filter((s) => s.who === who).map((s) => s.load);
    const cpus = samples.filter((s) => s.who === who && s.cpu !== undefined).map((s) => s.cpu!);
    return { who, median: median(xs), samples: xs, loads, ...(cpus.length ? { cpuMedian: median(cpus), cpu: cpus } : {}) };
  });
  const inOrder = results[0]!.median;
  const out = {
    machine: { nproc: cpus().length, cpu: cpus()[0]?.model ?? '', loadavg: loadavg() },
    fs: FS === 'loop' ? 'fresh 4 GiB ext4 (journal) on a loop device per measurement' : `temp dir under ${dir.path}`,
    image: { layers: sizes.length, sizes },
    rounds: ROUNDS,
    results: results.map((r) => ({ ...r, speedupVsInOrder: inOrder / r.median })),
  };
  if (JSON_OUT) console.log(JSON.stringify(out, null, 2));
  else {
    console.log(`file system: ${out.fs}`);
    console.log('| who | median s | samples s (load at each) | vs in order | stratad CPU-s, median (samples) |');
    console.log('| --- | ---: | --- | ---: | --- |');
    for (const r of out.results) {
      const xs = r.samples.map((x, i) => `${x.toFixed(2)} (${r.loads[i]!.toFixed(1)})`).join(', ');
      const cpu = r.cpu ? `${r.cpuMedian!.toFixed(2)} (${r.cpu.map((c) => c.toFixed(2)).join(', ')})` : '';
      console.log(`| ${r.who} | ${r.median.toFixed(2)} | ${xs} | ${r.speedupVsInOrder.toFixed(2)}x | ${cpu} |`);
    }
    // Ratio of each alternating pair (in order / parallel, same round): less exposed to the load's drift.
    const a = samples.filter((s) => s.who === contenders[0]![0]);
    const b = samples.filter((s) => s.who === contenders[1]?.[0]);
    const ratios = b.length > 0 ? a.map((x, i) => x.seconds / b[i]!.seconds) : [];
    if (ratios.length > 0) console.log(`pairwise in order / parallel, per round: ${ratios.map((r) => r.toFixed(2)).join(', ')}; median ${median(ratios).toFixed(2)}x`);
    console.log(`load average at the end: ${out.machine.loadavg.map((x) => x.toFixed(2)).join(' ')} (nproc ${out.machine.nproc})`);
  }
  await stopAll();
  await stopAllContainerd();
  await stopAllRegistries();
  await dir.cleanup();
}

main().catch(async (err: unknown) => {
  console.error(err);
  await stopAll().catch(() => undefined);
  await stopAllContainerd().catch(() => undefined);
  await stopAllRegistries().catch(() => undefined);
  for (const m of mounted) unmount(m);
  process.exit(1);
});
