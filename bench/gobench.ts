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
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, statSync } from 'node:fs';
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
  startContainerd,
  startStrata,
  table,
  type Daemon,
} from './lib.js';

installCleanupHandlers();

const usage = `usage: node dist/bench/gobench.js [--rounds 5] [--ops 300] [--chain-ops 200] [--depth 64] [--size 64MiB]
       [--concurrent-ops 384] [--callers 1,8,64] [--workloads lifecycle,chain,content,small,concurrent]
       [--json] [--daemons strata,containerd] [--keep] [--image-dir DIR]`;

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

function runWorkload(d: Daemon, workload: string, args: string[]): Figures {
  const r = spawnSync(BINARY, ['-address', d.socket, '-workload', workload, ...args], { encoding: 'utf8', maxBuffer: 1 << 20 });
  if (r.status !== 0) throw new Error(`gobench ${workload} against ${d.name} failed (${r.status}): ${r.stderr}`);
  const out = JSON.parse(r.stdout) as Record<string, unknown>;
  const figures: Figures = {};
  for (const [k, v] of Object.entries(out)) if (typeof v === 'number' && /(_per_s|_ms|_mb_s)$/.test(k)) figures[`${workload}.${k}`] = v;
  return figures;
}

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
  env.keepTmp = common.keep;
  if (process.getuid?.() !== 0) throw new Error('must run as root (loop mount)');
  buildGo();

  const started = new Date();
  const { tmpRoot, img, mnt } = benchDirs(common.imageDir);
  const daemons: Daemon[] = [];
  const results: { round: number; daemon: string; figures: Figures }[] = [];
  try {
    mountLoopExt4(img, mnt, '20G');
    if (common.daemons.includes('strata')) daemons.push(await startStrata(tmpRoot, mnt));
    if (common.daemons.includes('containerd')) daemons.push(await startContainerd(tmpRoot, mnt));
    for (let r = 1; r <= rounds; r++) {
      const order = r % 2 === 1 ? daemons : [...daemons].reverse();
      for (const w of workloads) {
        for (const d of order) {
          log(`round ${r}/${rounds} ${w}: ${d.name}; loadavg ${machineInfo().loadavg.map((x) => x.toFixed(2)).join(' ')}`);
          const figures = runWorkload(d, w, perWorkload[w]!);
          let row = results.find((x) => x.round === r && x.daemon === d.name);
          if (!row) results.push((row = { round: r, daemon: d.name, figures: {} }));
          Object.assign(row.figures, figures);
          settle();
        }
      }
    }
  } catch (err) {
    reportFailure();
    throw err;
  } finally {
    await cleanup();
  }

  const keys = [...new Set(results.flatMap((r) => Object.keys(r.figures)))].sort();
  const med = (daemon: string, k: string) => median(results.filter((r) => r.daemon === daemon && r.figures[k] !== undefined).map((r) => r.figures[k]!));
  const rows = keys.map((k) => {
    const s = med('strata', k);
    const c = med('containerd', k);
    // "Strata faster" reads as > 1 whatever the unit: rates strata/containerd, latencies containerd/strata.
    const ratio = k.endsWith('_ms') ? c / s : s / c;
    return [k, s.toFixed(3), c.toFixed(3), Number.isFinite(ratio) ? ratio.toFixed(2) : '-'];
  });
  const lines = [
    `gobench: ${started.toISOString()}; ${commandLine()}`,
    `rounds ${rounds}, medians; ratio > 1 means Strata is faster (rates: strata/containerd, latencies: containerd/strata)`,
    table([['figure', 'strata', 'containerd', 'ratio'], ...rows]),
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
