/**
 * Task benchmark (issue 6): container start latency and a start/stop loop, stratad against containerd 1.6,
 * both driven by the same client (the unmodified `ctr`), in one run.
 *
 *   node dist/bench/tasks.js [--rounds 2] [--runs 15] [--loop 15] [--json] [--daemons strata,containerd] [--keep]
 *
 * Must run as root (loop-mounted ext4 for both roots; runc). The image is a busybox built from the host's
 * busybox-static (test/helpers/oci-image.ts), imported with `ctr image import` into both daemons. Then per round,
 * daemons in alternating order:
 *
 *   1. Start latency, --runs times: `ctr run --rm IMAGE lat-N echo hi`. Timed from spawning ctr to the first
 *      byte of "hi" on its stdout (create + start to first output), and to ctr's exit (including task and
 *      container deletion).
 *   2. Start/stop loop, --loop times: `ctr run -d IMAGE loop-N sleep 60`, then `ctr task rm -f loop-N`
 *      (SIGKILL and delete), then `ctr container rm loop-N`. Reported as cycles per second.
 *
 * containerd runs its tasks through containerd-shim-runc-v2; stratad through its own monitor process and runc.
 */
import { spawn } from 'node:child_process';
import { buildBusyboxArchive } from '../test/helpers/oci-image.js';
import {
  benchDirs,
  cleanup,
  commandLine,
  fetchVersion,
  installCleanupHandlers,
  intOption,
  log,
  machineInfo,
  median,
  mountLoopExt4,
  parseBenchArgs,
  reportFailure,
  startContainerd,
  startStrata,
  table,
  type Daemon,
} from './lib.js';

const USAGE = 'usage: node dist/bench/tasks.js [--rounds 2] [--runs 15] [--loop 15] [--json] [--daemons strata,containerd] [--keep]';
const NS = 'bench';

interface Timed {
  code: number | null;
  firstOutputMs: number;
  exitMs: number;
  stdout: string;
  stderr: string;
}

/** Runs ctr against a daemon, timing the first stdout byte and the exit. */
function ctr(d: Daemon, args: string[]): Promise<Timed> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    let first = -1;
    let stdout = '';
    let stderr = '';
    const p = spawn('ctr', ['-a', d.socket, '-n', NS, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    p.stdout.on('data', (b: Buffer) => {
      if (first < 0) first = performance.now() - t0;
      stdout += b.toString();
    });
    p.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    p.on('error', reject);
    p.on('close', (code) => resolve({ code, firstOutputMs: first, exitMs: performance.now() - t0, stdout, stderr }));
  });
}

async function must(d: Daemon, args: string[]): Promise<Timed> {
  const r = await ctr(d, args);
  if (r.code !== 0) throw new Error(`ctr ${args.join(' ')} against ${d.name} failed (${r.code}): ${r.stderr}${r.stdout}`);
  return r;
}

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};

async function main(): Promise<void> {
  const parsed = parseBenchArgs({ rounds: '2', runs: '15', loop: '15' }, USAGE);
  if (!parsed) return;
  const rounds = intOption('rounds', parsed.values.rounds!);
  const runs = intOption('runs', parsed.values.runs!);
  const loops = intOption('loop', parsed.values.loop!);
  installCleanupHandlers();
  const { tmpRoot, img, mnt } = benchDirs(parsed.common.imageDir);
  mountLoopExt4(img, mnt, '4G');
  const image = await buildBusyboxArchive(tmpRoot);

  const daemons: Daemon[] = [];
  for (const name of parsed.common.daemons) {
    const d = name === 'strata' ? await startStrata(tmpRoot, mnt) : await startContainerd(tmpRoot, mnt);
    await fetchVersion(d, NS);
    await must(d, ['image', 'import', image.archive]);
    // Warm-up: one run each (page cache, JIT, shim binaries).
    await must(d, ['run', '--rm', image.name, 'warm', 'echo', 'hi']);
    daemons.push(d);
  }

  const firstOut = new Map<string, number[]>();
  const exit = new Map<string, number[]>();
  const cycles = new Map<string, number[]>();
  for (const d of daemons) {
    firstOut.set(d.name, []);
    exit.set(d.name, []);
    cycles.set(d.name, []);
  }
  for (let round = 0; round < rounds; round++) {
    const order = round % 2 === 0 ? daemons : [...daemons].reverse();
    for (const d of order) {
      log(`round ${round + 1}: ${d.name}: ${runs} x ctr run --rm ... echo hi`);
      for (let i = 0; i < runs; i++) {
        const r = await must(d, ['run', '--rm', image.name, `lat-${round}-${i}`, 'echo', 'hi']);
        if (r.stdout.trim() !== 'hi') throw new Error(`${d.name}: unexpected output ${JSON.stringify(r.stdout)}`);
        firstOut.get(d.name)!.push(r.firstOutputMs);
        exit.get(d.name)!.push(r.exitMs);
      }
      log(`round ${round + 1}: ${d.name}: ${loops} x run -d / task rm -f / container rm`);
      const t0 = performance.now();
      for (let i = 0; i < loops; i++) {
        const id = `loop-${round}-${i}`;
        await must(d, ['run', '-d', image.name, id, 'sleep', '60']);
        await must(d, ['task', 'rm', '-f', id]);
        await must(d, ['container', 'rm', id]);
      }
      cycles.get(d.name)!.push(loops / ((performance.now() - t0) / 1000));
    }
  }

  const rows: string[][] = [['daemon', 'first output p50 ms', 'p90 ms', 'run --rm exit p50 ms', 'p90 ms', 'start/stop cycles/s (median of rounds)']];
  const summary: Record<string, unknown> = {};
  for (const d of daemons) {
    const f = firstOut.get(d.name)!;
    const e = exit.get(d.name)!;
    const c = cycles.get(d.name)!;
    rows.push([`${d.name} ${d.version}`, pct(f, 50).toFixed(0), pct(f, 90).toFixed(0), pct(e, 50).toFixed(0), pct(e, 90).toFixed(0), median(c).toFixed(2)]);
    summary[d.name] = { firstOutputMs: f, exitMs: e, cyclesPerSecond: c };
  }
  process.stdout.write(`${commandLine()}\n${JSON.stringify(machineInfo())}\n\n${table(rows)}\n`);
  if (parsed.common.json) process.stdout.write(`${JSON.stringify(summary)}\n`);
}

main()
  .catch((err: unknown) => {
    reportFailure();
    log(`failed: ${err instanceof Error ? err.stack : String(err)}`);
    process.exitCode = 1;
  })
  .finally(() => cleanup());

