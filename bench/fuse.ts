/**
 * The two FUSE bindings of src/fuse side by side (docs/fuse.md): Strata's N-API binding of libfuse 3's
 * low-level API (`fuse3`, native/fuse3-napi.c) and npm's `fuse-native` (libfuse 2, high-level, path-based).
 * This process serves the mounts (an in-memory LayerSource, so the figures are the binding's cost, not a
 * source's); child processes read through them, as a container would:
 *
 *   read    `dd if=MNT/big of=/dev/null bs=1M` of a 256 MiB file, page caches dropped, fresh mount
 *   stat    `find MNT -printf '%i %m %u %s\n'` over 20,000 files in 200 directories (an lstat each), fresh mount
 *   slow1   one `dd` of a 16 MiB file from a source that answers each read after 2 ms: the request size
 *           (readahead) decides how many round trips a sequential reader waits for
 *   slow    8 `dd` at once, each of its own 16 MiB file, from a source that answers each read after 2 ms (a
 *           disk cache or a registry): how many reads the binding keeps in flight decides the figure
 *
 * Reported per binding: the median wall time over the rounds, MB/s (10^6 bytes) or files/s, the serving
 * process's CPU seconds (user+sys of this process during the phase: the binding's and the handlers' cost),
 * and the event loop's p99 delay during the phase (how long a timer of this process waited at worst, roughly:
 * whether serving leaves the loop free).
 * Bindings alternate order every round.
 *
 * Both bindings get the same readahead (src/fuse raises it after INIT; --readahead 0 keeps the kernel's 128 KiB).
 *
 *   npx tsc -p tsconfig.json && node dist/bench/fuse.js [--rounds 5] [--readahead 1024] [--dir /tmp/strata-bench-fuse]   (as root)
 */
import { spawn } from 'node:child_process';
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { DEFAULT_READAHEAD_KIB, mountReadOnly } from '../src/fuse/index.js';
import type { FuseBinding, LayerNode, LayerSource } from '../src/fuse/types.js';
import { commandLine, dropCaches, f1, machineInfo, median, MiB, table } from './lib.js';

const args = process.argv.slice(2);
const opt = (name: string, dflt: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] !== undefined ? args[i + 1]! : dflt;
};
const rounds = Number(opt('rounds', '5'));
const dir = opt('dir', '/tmp/strata-bench-fuse');
const readAheadKiB = Number(opt('readahead', String(DEFAULT_READAHEAD_KIB)));
const BINDINGS: FuseBinding[] = ['fuse3', 'fuse-native'];

// ---------------------------------------------------------------------------------------------------------------
// The sources

let nextIno = 1;
const node = (type: LayerNode['type'], extra: Partial<LayerNode> = {}): LayerNode => ({
  ino: nextIno++,
  type,
  mode: type === 'dir' ? 0o755 : 0o644,
  uid: 0,
  gid: 0,
  size: 0,
  mtimeMs: 946684800000,
  nlink: type === 'dir' ? 2 : 1,
  xattrs: new Map(),
  ...(type === 'dir' ? { children: new Map() } : {}),
  ...extra,
});

function memorySource(files: Map<LayerNode, Buffer>, root: LayerNode, latencyMs = 0): LayerSource & { inFlight: number; maxInFlight: number } {
  const s = {
    root,
    inFlight: 0,
    maxInFlight: 0,
    async read(n: LayerNode, offset: number, length: number): Promise<Buffer> {
      s.inFlight++;
      s.maxInFlight = Math.max(s.maxInFlight, s.inFlight);
      try {
        if (latencyMs > 0) await new Promise((r) => setTimeout(r, latencyMs));
        return files.get(n)!.subarray(offset, offset + length);
      } finally {
        s.inFlight--;
      }
    },
  };
  return s;
}

function bigFileSource(size: number, latencyMs = 0, count = 1) {
  nextIno = 1;
  const root = node('dir');
  const data = Buffer.allocUnsafe(size);
  for (let i = 0; i < size; i += 4) data.writeUInt32LE((i * 2654435761) >>> 0, i);
  const files = new Map<LayerNode, Buffer>();
  for (let i = 0; i < count; i++) {
    const big = node('reg', { size });
    root.children!.set(i === 0 ? 'big' : `big${i}`, big);
    files.set(big, data);
  }
  return memorySource(files, root, latencyMs);
}

function treeSource(dirs: number, perDir: number) {
  nextIno = 1;
  const root = node('dir');
  const files = new Map<LayerNode, Buffer>();
  const body = Buffer.from('x'.repeat(100));
  for (let d = 0; d < dirs; d++) {
    const dn = node('dir');
    root.children!.set(`d${d}`, dn);
    root.nlink++;
    for (let f = 0; f < perDir; f++) {
      const fn = node('reg', { size: body.length, uid: f % 3, mode: 0o600 + (f % 2) * 0o44 });
      dn.children!.set(`file-${f}.txt`, fn);
      files.set(fn, body);
    }
  }
  return memorySource(files, root);
}

// ---------------------------------------------------------------------------------------------------------------
// Measuring

/** Runs a command to completion while this process keeps serving; its stdout is counted, not kept. */
function runChild(cmd: string, argv: string[]): Promise<{ stdoutBytes: number; stdoutLines: number }> {
  return new Promise((resolve, reject) => {
    const c = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
    let bytes = 0;
    let lines = 0;
    let err = '';
    c.stdout.on('data', (b: Buffer) => {
      bytes += b.length;
      for (const x of b) if (x === 10) lines++;
    });
    c.stderr.on('data', (b: Buffer) => (err += b.toString()));
    c.on('error', reject);
    c.on('close', (code) => (code === 0 ? resolve({ stdoutBytes: bytes, stdoutLines: lines }) : reject(new Error(`${cmd} exited ${code}: ${err}`))));
  });
}

interface Sample {
  seconds: number;
  cpu: number;
  extra: number;
  loopP99Ms: number;
}

async function phase(binding: FuseBinding, source: LayerSource, body: (mnt: string) => Promise<number>): Promise<Sample> {
  const mnt = join(dir, `mnt-${binding}`);
  mkdirSync(mnt, { recursive: true });
  // Before mounting: sync and drop_caches then need nothing of this process (which serves the mount).
  dropCaches();
  const m = await mountReadOnly(mnt, source, { binding, fsName: `bench-${binding}`, readAheadKiB });
  try {
    const h = monitorEventLoopDelay({ resolution: 5 });
    h.enable();
    const cpu0 = process.cpuUsage();
    const t0 = process.hrtime.bigint();
    const extra = await body(mnt);
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    const c = process.cpuUsage(cpu0);
    h.disable();
    return { seconds, cpu: (c.user + c.system) / 1e6, extra, loopP99Ms: h.percentile(99) / 1e6 };
  } finally {
    await m.unmount();
  }
}

const READ_SIZE = 256 * MiB;
const SLOW_SIZE = 16 * MiB;
const SLOW_FILES = 8;
const DIRS = 200;
const PER_DIR = 100;

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('bench/fuse: run as root (allow_other, drop_caches)');
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const big = bigFileSource(READ_SIZE);
  const tree = treeSource(DIRS, PER_DIR);
  const slow = bigFileSource(SLOW_SIZE, 2, SLOW_FILES);
  const results: Record<FuseBinding, { read: Sample[]; stat: Sample[]; slow1: Sample[]; slow: Sample[] }> = {
    fuse3: { read: [], stat: [], slow1: [], slow: [] },
    'fuse-native': { read: [], stat: [], slow1: [], slow: [] },
  };
  const rows: string[][] = [['round', 'binding', 'read s', 'read MB/s', 'cpu s', 'loop p99 ms', 'stat s', 'files/s', 'cpu s', 'loop p99 ms', 'slow1 s', 'slow1 MB/s', 'slow s', 'slow MB/s', 'in flight']];
  for (let r = 1; r <= rounds; r++) {
    const order = r % 2 ? BINDINGS : [...BINDINGS].reverse();
    for (const b of order) {
      const read = await phase(b, big, async (mnt) => {
        await runChild('dd', [`if=${mnt}/big`, 'of=/dev/null', 'bs=1M']);
        return 0;
      });
      const stat = await phase(b, tree, async (mnt) => (await runChild('find', [mnt, '-printf', '%i %m %u %s\n'])).stdoutLines);
      if (stat.extra !== DIRS * PER_DIR + DIRS + 1) throw new Error(`find saw ${stat.extra} entries`);
      const s1 = await phase(b, slow, async (mnt) => {
        await runChild('dd', [`if=${mnt}/big`, 'of=/dev/null', 'bs=1M']);
        return 0;
      });
      slow.maxInFlight = 0;
      const sl = await phase(b, slow, async (mnt) => {
        await Promise.all(Array.from({ length: SLOW_FILES }, (_, i) => runChild('dd', [`if=${mnt}/big${i || ''}`, 'of=/dev/null', 'bs=1M'])));
        return slow.maxInFlight;
      });
      results[b].read.push(read);
      results[b].stat.push(stat);
      results[b].slow1.push(s1);
      results[b].slow.push(sl);
      rows.push([
        String(r),
        b,
        read.seconds.toFixed(3),
        f1(READ_SIZE / 1e6 / read.seconds),
        read.cpu.toFixed(2),
        f1(read.loopP99Ms),
        stat.seconds.toFixed(3),
        String(Math.round(stat.extra / stat.seconds)),
        stat.cpu.toFixed(2),
        f1(stat.loopP99Ms),
        s1.seconds.toFixed(3),
        f1(SLOW_SIZE / 1e6 / s1.seconds),
        sl.seconds.toFixed(3),
        f1((SLOW_SIZE * SLOW_FILES) / 1e6 / sl.seconds),
        String(sl.extra),
      ]);
      process.stderr.write(rows[rows.length - 1]!.join(' ') + '\n');
    }
  }
  const med = (xs: Sample[], f: (s: Sample) => number) => median(xs.map(f));
  const summary: string[][] = [
    ['median', 'read MB/s', 'read cpu s', 'read loop p99 ms', 'find+stat files/s', 'stat cpu s', 'stat loop p99 ms', '1 reader, 2 ms source: MB/s', '8 readers, 2 ms source: MB/s', 'max reads in flight'],
  ];
  for (const b of BINDINGS) {
    const x = results[b];
    summary.push([
      b,
      f1(READ_SIZE / 1e6 / med(x.read, (s) => s.seconds)),
      med(x.read, (s) => s.cpu).toFixed(2),
      f1(med(x.read, (s) => s.loopP99Ms)),
      String(Math.round((DIRS * PER_DIR + DIRS + 1) / med(x.stat, (s) => s.seconds))),
      med(x.stat, (s) => s.cpu).toFixed(2),
      f1(med(x.stat, (s) => s.loopP99Ms)),
      f1(SLOW_SIZE / 1e6 / med(x.slow1, (s) => s.seconds)),
      f1((SLOW_SIZE * SLOW_FILES) / 1e6 / med(x.slow, (s) => s.seconds)),
      String(med(x.slow, (s) => s.extra)),
    ]);
  }
  console.log(`command: ${commandLine()}`);
  console.log(`readahead: ${readAheadKiB || 'kernel default (128)'} KiB`);
  console.log(`machine: ${JSON.stringify(machineInfo())}`);
  console.log(`\n${table(summary)}\n\n${table(rows)}`);
  rmSync(dir, { recursive: true, force: true });
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
