/**
 * Per-call speed with the client real users have: containerd 1.6's Go client library (bench/go, built offline
 * in GOPATH mode against Debian's containerd sources) drives Strata and a real containerd, both roots on one
 * fresh loop-mounted ext4, in alternating pairs (round 1: strata then containerd, round 2 the other way...).
 *
 *   node dist/bench/gobench.js [--rounds 5] [--ops 300] [--chain-ops 200] [--depth 64] [--size 64MiB]
 *                              [--concurrent-ops 384] [--callers 1,8,64] [--workloads lifecycle,chain,content,small,concurrent]
 *                              [--json] [--daemons strata,containerd] [--keep] [--image-dir DIR]
 *
 * Workloads (bench/go/src/strata.bench/gobench/main.go): lifecycle (Prepare, Mounts, Commit, Stat, Remove on a
 * committed parent holding busybox), chain (Prepare+Mounts on a 64-deep chain), content (content.WriteBlob,
 * then ReaderAt in 1 MiB ReadAts), small (content Info, snapshot Stat, snapshot List, image List), concurrent
 * (the lifecycle from 1, 8, 64 goroutines). Reported: per round and daemon, then the median over rounds of each
 * figure and the ratio strata/containerd (for times: containerd/strata, so above 1 is always "Strata faster").
 * Each workload also reports the daemon's CPU time over the run (daemon_cpu_ms, from /proc/<pid>/stat).
 *
 * --compare metrics: the cost of the metrics endpoint. Two stratads instead, one plain and one with [metrics]
 * (grpc_histogram on) scraped every second by a separate process, in alternating pairs as above; reported is
 * each figure's overhead in percent (positive: the metrics cost that much).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import {
  benchDirs,
  cleanup,
  commandLine,
  env,
  installCleanupHandlers,
  intOption,
  log,
  machineInfo,
  median,
  mountLoopExt4,
  parseBenchArgs,
  parseSize,
  repoRoot,
  reportFailure,
  startChild,
  startContainerd,
  startStrata,
  table,
  type Daemon,
} from './lib.js';

installCleanupHandlers();

const usage = `usage: node dist/bench/gobench.js [--rounds 5] [--ops 300] [--chain-ops 200] [--depth 64] [--size 64MiB]
       [--concurrent-ops 384] [--callers 1,8,64] [--workloads lifecycle,chain,content,small,concurrent]
       [--json] [--daemons strata,containerd] [--keep] [--image-dir DIR] [--compare containerd|metrics]`;

const GOPATH_DIR = join(repoRoot, 'bench', 'go');
const BINARY = join(repoRoot, 'bench', 'go', 'bin', 'gobench');

/** Builds the Go program when a source is newer than the binary (Go's own cache makes a rebuild seconds). */
function buildGo(): void {
  const src = join(GOPATH_DIR, 'src', 'strata.bench', 'gobench');
  const newest = Math.max(...readdirSync(src).map((f) => statSync(join(src, f)).mtimeMs));
  if (existsSync(BINARY) && statSync(BINARY).mtimeMs >= newest) return;
  mkdirSync(join(GOPATH_DIR, 'bin'), { recursive: true });
  log('building bench/go (containerd 1.6 Go client, GOPATH mode)');
  execFileSync('go', ['build', '-o', BINARY, 'strata.bench/gobench'], {
    stdio: 'inherit',
    env: { ...process.env, GO111MODULE: 'off', GOPROXY: 'off', GOFLAGS: '', GOPATH: `${GOPATH_DIR}:/usr/share/gocode` },
  });
}

type Figures = Record<string, number>;

/** User + system CPU milliseconds a process has used (/proc/<pid>/stat, clock ticks of 10 ms). */
function cpuMs(pid: number | undefined): number {
  if (pid === undefined) return NaN;
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) * 10;
}

function runWorkload(d: Daemon, workload: string, args: string[]): Figures {
  const cpu0 = cpuMs(d.child.proc.pid);
  const r = spawnSync(BINARY, ['-address', d.socket, '-workload', workload, ...args], { encoding: 'utf8', maxBuffer: 1 << 20 });
  const cpu = cpuMs(d.child.proc.pid) - cpu0;
  if (r.status !== 0) throw new Error(`gobench ${workload} against ${d.name} failed (${r.status}): ${r.stderr}`);
  const out = JSON.parse(r.stdout) as Record<string, unknown>;
  const figures: Figures = {};
  for (const [k, v] of Object.entries(out)) if (typeof v === 'number' && /(_per_s|_ms|_mb_s)$/.test(k)) figures[`${workload}.${k}`] = v;
  figures[`${workload}.daemon_cpu_ms`] = cpu;
  return figures;
}

async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((res) => srv.listen(0, '127.0.0.1', res));
  const port = (srv.address() as { port: number }).port;
  await new Promise<void>((res) => srv.close(() => res()));
  return port;
}

/** A Prometheus-like scraper in its own process: GET /v1/metrics every second; counts in `countFile`. */
const SCRAPER = `
const [url, countFile] = process.argv.slice(1);
const fs = require('node:fs');
let ok = 0, failed = 0, bytes = 0;
setInterval(async () => {
  try { const r = await fetch(url); const t = await r.text(); if (r.status === 200) { ok++; bytes = t.length; } else failed++; }
  catch { failed++; }
  fs.writeFileSync(countFile, JSON.stringify({ ok, failed, bytes }));
}, 1000);
`;

/** Lets both daemons finish deferred work (containerd's GC, Strata's removals) before the next measurement. */
function settle(): void {
  spawnSync('sync');
  spawnSync('sleep', ['1']);
}

async function main(): Promise<void> {
  const args = parseBenchArgs(
    {
      rounds: '5',
      ops: '300',
      'chain-ops': '200',
      depth: '64',
      size: '64MiB',
      'concurrent-ops': '384',
      callers: '1,8,64',
      workloads: 'lifecycle,chain,content,small,concurrent',
      compare: 'containerd',
    },
    usage,
  );
  if (!args) return;
  const { values, common } = args;
  const rounds = intOption('rounds', values.rounds!);
  const workloads = values.workloads!.split(',');
  const perWorkload: Record<string, string[]> = {
    lifecycle: ['-ops', values.ops!],
    chain: ['-ops', values['chain-ops']!, '-depth', values.depth!],
    content: ['-size', String(parseSize(values.size!))],
    small: ['-ops', values.ops!],
    concurrent: ['-ops', values['concurrent-ops']!, '-callers', values.callers!],
  };
  for (const w of workloads) if (!perWorkload[w]) throw new Error(`unknown workload ${w}`);
  const compare = values.compare!;
  if (compare !== 'containerd' && compare !== 'metrics') throw new Error(`--compare must be containerd or metrics: ${compare}`);
  // The two columns: strata and containerd, or strata without and with its metrics endpoint.
  const [nameA, nameB] = compare === 'metrics' ? ['strata', 'strata+metrics'] : ['strata', 'containerd'];
  env.keepTmp = common.keep;
  if (process.getuid?.() !== 0) throw new Error('must run as root (loop mount)');
  buildGo();

  const started = new Date();
  const { tmpRoot, img, mnt } = benchDirs(common.imageDir);
  const daemons: { d: Daemon; label: string }[] = [];
  const results: { round: number; daemon: string; figures: Figures }[] = [];
  let scrapes: { ok: number; failed: number; bytes: number } | undefined;
  const countFile = join(tmpRoot, 'scrapes.json');
  try {
    mountLoopExt4(img, mnt, '20G');
    if (compare === 'metrics') {
      const port = await freePort();
      daemons.push({ d: await startStrata(tmpRoot, mnt), label: nameA });
      daemons.push({
        d: await startStrata(tmpRoot, mnt, { dir: 'strata-metrics', config: `[metrics]\n  address = "127.0.0.1:${port}"\n  grpc_histogram = true\n` }),
        label: nameB,
      });
      startChild('scraper', process.execPath, ['-e', SCRAPER, `http://127.0.0.1:${port}/v1/metrics`, countFile], join(tmpRoot, 'scraper.log'));
    } else {
      if (common.daemons.includes('strata')) daemons.push({ d: await startStrata(tmpRoot, mnt), label: nameA });
      if (common.daemons.includes('containerd')) daemons.push({ d: await startContainerd(tmpRoot, mnt), label: nameB });
    }
    for (let r = 1; r <= rounds; r++) {
      const order = r % 2 === 1 ? daemons : [...daemons].reverse();
      for (const w of workloads) {
        for (const { d, label } of order) {
          log(`round ${r}/${rounds} ${w}: ${label}; loadavg ${machineInfo().loadavg.map((x) => x.toFixed(2)).join(' ')}`);
          const figures = runWorkload(d, w, perWorkload[w]!);
          let row = results.find((x) => x.round === r && x.daemon === label);
          if (!row) results.push((row = { round: r, daemon: label, figures: {} }));
          Object.assign(row.figures, figures);
          settle();
        }
      }
    }
    if (compare === 'metrics') scrapes = JSON.parse(readFileSync(countFile, 'utf8')) as typeof scrapes;
  } catch (err) {
    reportFailure();
    throw err;
  } finally {
    await cleanup();
  }

  const keys = [...new Set(results.flatMap((r) => Object.keys(r.figures)))].sort();
  const med = (daemon: string, k: string) => median(results.filter((r) => r.daemon === daemon && r.figures[k] !== undefined).map((r) => r.figures[k]!));
  const rows = keys.map((k) => {
    const s = med(nameA, k);
    const c = med(nameB, k);
    if (compare === 'metrics') {
      // The metrics' cost in percent whatever the unit: rates lost, times (and CPU) added.
      const overhead = k.endsWith('_ms') ? (c - s) / s : (s - c) / s;
      return [k, s.toFixed(3), c.toFixed(3), Number.isFinite(overhead) ? `${(overhead * 100).toFixed(1)}%` : '-'];
    }
    // "Strata faster" reads as > 1 whatever the unit: rates strata/containerd, latencies containerd/strata.
    const ratio = k.endsWith('_ms') ? c / s : s / c;
    return [k, s.toFixed(3), c.toFixed(3), Number.isFinite(ratio) ? ratio.toFixed(2) : '-'];
  });
  const lines = [
    `gobench: ${started.toISOString()}; ${commandLine()}`,
    compare === 'metrics'
      ? `rounds ${rounds}, medians; overhead = what [metrics] scraped every second costs (rates lost, times added); scrapes: ${scrapes?.ok ?? 0} ok, ${scrapes?.failed ?? 0} failed, ${scrapes?.bytes ?? 0} bytes each`
      : `rounds ${rounds}, medians; ratio > 1 means Strata is faster (rates: strata/containerd, latencies: containerd/strata)`,
    table([['figure', nameA, nameB, compare === 'metrics' ? 'overhead' : 'ratio'], ...rows]),
    '',
    'per round:',
    table([['round', 'daemon', ...keys], ...results.map((r) => [String(r.round), r.daemon, ...keys.map((k) => r.figures[k]?.toFixed(3) ?? '-')])]),
  ];
  if (common.json) process.stdout.write(JSON.stringify({ started, rounds, results }, null, 2) + '\n');
  process.stdout.write(lines.join('\n') + '\n');
  void tmpRoot;
}

main().then(
  () => process.exit(0),
  async (err) => {
    process.stderr.write(`gobench: ${err instanceof Error ? err.message : String(err)}\n`);
    await cleanup().catch(() => undefined);
    process.exit(1);
  },
);
