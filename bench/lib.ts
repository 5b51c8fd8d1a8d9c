/**
 * Shared machinery of the daemon-against-daemon benchmarks (bench/content-ingest.ts, bench/snapshots.ts):
 * a fresh loop-mounted ext4 for both daemons' roots, starting stratad and a real containerd on it, stopping
 * them, cleanup on exit and on SIGINT/SIGTERM/SIGHUP, CPU accounting from /proc, and table printing.
 *
 * Environment hooks (for profiling the daemon; they do not change what is measured):
 *   STRATA_BENCH_CPU_PROF=DIR          run stratad with `node --cpu-prof --cpu-prof-dir DIR` (the profile is
 *                                      written when stratad exits on the benchmark's SIGTERM)
 *   STRATA_BENCH_STRATAD_NODE_ARGS=".." extra node flags for stratad (space separated)
 *   STRATA_BENCH_CONTAINERD=PATH       the containerd binary (default: containerd on PATH)
 *   STRATA_BENCH_TMP=DIR               where the temp dir (image, state, sockets, logs) is created (default: os.tmpdir())
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, openSync, closeSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { cpus, freemem, loadavg, tmpdir, totalmem } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { StrataClient } from '../src/api/clients/strata.js';

export const MiB = 1 << 20;

export type DaemonName = 'strata' | 'containerd';

/** "1GiB", "512MiB", "100MB", "1G" (binary), "4096" (bytes). */
export function parseSize(s: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)(b?)\s*$/i.exec(s);
  if (!m) throw new Error(`invalid size ${s}`);
  const n = Number(m[1]);
  const unit = m[2]!.toLowerCase();
  const binary = m[3] !== '' || (m[4] === '' && unit !== '');
  const pow = { '': 0, k: 1, m: 2, g: 3, t: 4 }[unit]!;
  const v = Math.round(n * (binary ? 1024 : 1000) ** pow);
  if (!Number.isSafeInteger(v) || v <= 0) throw new Error(`invalid size ${s}`);
  return v;
}

export function formatBytes(n: number): string {
  if (n % (1 << 30) === 0) return `${n / (1 << 30)} GiB`;
  if (n % MiB === 0) return `${n / MiB} MiB`;
  return `${n} bytes`;
}

// ---------------------------------------------------------------------------------------------------------------
// Processes, mounts and cleanup

export const log = (msg: string) => process.stderr.write(`[bench] ${msg}\n`);

export interface Child {
  name: string;
  proc: ChildProcess;
  logPath: string;
  exited: Promise<void>;
}

/** What cleanup has to undo; set by the benchmark as it goes. */
export const env: {
  children: Child[];
  /** Open clients, closed first on cleanup so the daemons have no call in flight when asked to stop. */
  clients: Set<StrataClient>;
  mounted: string | undefined;
  tmpRoot: string | undefined;
  /** The loop image, when it is outside tmpRoot (--image-dir). */
  imageFile: string | undefined;
  keepTmp: boolean;
  cleaning: Promise<void> | undefined;
  signalled: number;
} = {
  children: [],
  clients: new Set(),
  mounted: undefined,
  tmpRoot: undefined,
  imageFile: undefined,
  keepTmp: false,
  cleaning: undefined,
  signalled: 0,
};

export function run(cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.error) throw new Error(`${cmd} ${args.join(' ')}: ${r.error.message}`);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited with ${r.status}: ${r.stderr.trim()}`);
}

export function alive(c: Child): boolean {
  return c.proc.exitCode === null && c.proc.signalCode === null;
}

export async function stopChild(c: Child, graceMs: number): Promise<void> {
  if (!alive(c)) return;
  c.proc.kill('SIGTERM');
  const t = await Promise.race([c.exited.then(() => 'exited'), sleep(graceMs).then(() => 'timeout')]);
  if (t === 'timeout' && alive(c)) {
    log(`${c.name} did not stop within ${graceMs} ms: SIGKILL`);
    c.proc.kill('SIGKILL');
    await Promise.race([c.exited, sleep(5000)]);
  }
}

export function unmount(dir: string): void {
  for (let attempt = 0; attempt < 10; attempt++) {
    const r = spawnSync('umount', [dir], { encoding: 'utf8' });
    if (r.status === 0) return;
    spawnSync('sleep', ['0.5']);
  }
  // Last resort: detach lazily so the loop device goes once the last user is gone.
  spawnSync('umount', ['-l', dir]);
}

/** Stops every child, unmounts the loop file system and removes the temp dir. Idempotent. */
export function cleanup(): Promise<void> {
  env.cleaning ??= (async () => {
    for (const c of env.clients) c.close();
    env.clients.clear();
    // stratad gives in-flight calls up to 10 s before cutting them; containerd stops at once.
    await Promise.all(env.children.map((c) => stopChild(c, c.name === 'stratad' ? 15_000 : 5000)));
    if (env.mounted) {
      unmount(env.mounted);
      env.mounted = undefined;
    }
    const { imageFile, tmpRoot } = env;
    if (imageFile && tmpRoot && !imageFile.startsWith(tmpRoot + '/')) rmSync(dirname(imageFile), { recursive: true, force: true });
    if (tmpRoot && !env.keepTmp) {
      rmSync(tmpRoot, { recursive: true, force: true });
    } else if (tmpRoot) {
      log(`kept ${tmpRoot}`);
    }
  })();
  return env.cleaning;
}

/**
 * Installs the last-resort exit hook (kill the children, lazy unmount, remove the temp dir when the async
 * cleanup did not run) and the signal handlers (first signal: clean up and exit; second: exit at once).
 */
export function installCleanupHandlers(): void {
  process.on('exit', () => {
    for (const c of env.children) if (alive(c)) c.proc.kill('SIGKILL');
    if (env.mounted) spawnSync('umount', ['-l', env.mounted]);
    if (!env.cleaning) {
      const { imageFile, tmpRoot } = env;
      if (imageFile && tmpRoot && !imageFile.startsWith(tmpRoot + '/')) rmSync(dirname(imageFile), { recursive: true, force: true });
      if (tmpRoot && !env.keepTmp) rmSync(tmpRoot, { recursive: true, force: true });
    }
  });

  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(sig, () => {
      env.signalled++;
      if (env.signalled > 1) process.exit(130);
      log(`${sig}: cleaning up`);
      cleanup().finally(() => process.exit(sig === 'SIGINT' ? 130 : 143));
    });
  }
}

export function startChild(name: string, cmd: string, args: string[], logPath: string, childEnv?: NodeJS.ProcessEnv): Child {
  const fd = openSync(logPath, 'a');
  const proc = spawn(cmd, args, { stdio: ['ignore', fd, fd], env: childEnv ?? process.env });
  closeSync(fd);
  const exited = new Promise<void>((res) => {
    proc.once('exit', () => res());
    proc.once('error', () => res());
  });
  proc.once('error', (err) => log(`${name}: ${err.message}`));
  const c: Child = { name, proc, logPath, exited };
  env.children.push(c);
  return c;
}

export function canConnect(path: string): Promise<boolean> {
  return new Promise((res) => {
    const s = connect(path);
    s.once('connect', () => {
      s.destroy();
      res(true);
    });
    s.once('error', () => res(false));
  });
}

export function tail(path: string, lines = 60): string {
  try {
    return readFileSync(path, 'utf8').split('\n').slice(-lines).join('\n');
  } catch (err) {
    return `(cannot read ${path}: ${(err as Error).message})`;
  }
}

export async function waitSocket(c: Child, socket: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (!alive(c)) {
      throw new Error(
        `${c.name} exited (code ${c.proc.exitCode}, signal ${c.proc.signalCode}) before serving on ${socket}\n` +
          `log: ${c.logPath}\n--- last lines ---\n${tail(c.logPath)}`,
      );
    }
    if (existsSync(socket) && (await canConnect(socket))) return;
    await sleep(50);
  }
  throw new Error(`${c.name} did not accept connections on ${socket} within ${timeoutMs} ms\nlog: ${c.logPath}\n--- last lines ---\n${tail(c.logPath)}`);
}

/** User + system CPU seconds a process has used so far (from /proc), or NaN if unavailable. */
const CLK_TCK = (() => {
  const r = spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' });
  const n = Number(r.stdout?.trim());
  return Number.isFinite(n) && n > 0 ? n : 100;
})();

export function cpuSeconds(pid: number | undefined): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name (which is in parentheses and may contain spaces): utime is field 14, stime 15.
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / CLK_TCK;
  } catch {
    return NaN;
  }
}

/** CPU seconds all cores have been busy so far, system-wide (from /proc/stat), or NaN. */
export function systemBusySeconds(): number {
  try {
    const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
    // user nice system idle iowait irq softirq steal guest guest_nice: busy = all but idle and iowait (guest is in user).
    const busy = f[0]! + f[1]! + f[2]! + f[5]! + f[6]! + f[7]!;
    return busy / CLK_TCK;
  } catch {
    return NaN;
  }
}

export function clientCpuSeconds(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

export function dropCaches(): boolean {
  try {
    spawnSync('sync');
    writeFileSync('/proc/sys/vm/drop_caches', '3');
    return true;
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The loop file system

/**
 * A fresh ext4 of `size` (truncate syntax, e.g. "8G") in the file `img`, loop-mounted at `mnt` (recorded in
 * env.mounted for cleanup). Inode tables and journal are initialised now rather than lazily, so no ext4lazyinit
 * thread writes in the background while we measure.
 */
export function mountLoopExt4(img: string, mnt: string, size: string): void {
  run('truncate', ['-s', size, img]);
  run('mkfs.ext4', ['-q', '-E', 'lazy_itable_init=0,lazy_journal_init=0', img]);
  run('mount', ['-o', 'loop', img, mnt]);
  env.mounted = mnt;
  log(`mounted ${size} ext4 (loop) at ${mnt}`);
}

// ---------------------------------------------------------------------------------------------------------------
// The daemons

export interface Daemon {
  name: DaemonName;
  child: Child;
  socket: string;
  /** The daemon's root (on the loop file system); plugins live in <root>/<plugin type>.<id>. */
  root: string;
  /** Where committed blobs land, to wait until a deleted blob is really gone (containerd removes it in GC). */
  blobsDir: string;
  version: string;
}

export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

/**
 * stratad on the loop fs. `opts.dir` names its directories (a second stratad beside the first: gobench's
 * --compare metrics); `opts.config` is TOML appended to its config (tables such as [metrics]).
 */
export async function startStrata(tmp: string, mnt: string, opts: { dir?: string; config?: string } = {}): Promise<Daemon> {
  const dir = opts.dir ?? 'strata';
  const root = join(mnt, dir, 'root');
  const state = join(tmp, dir, 'state');
  const socket = join(tmp, dir, 'strata.sock');
  mkdirSync(join(tmp, dir), { recursive: true });
  const config = join(tmp, dir, 'config.toml');
  writeFileSync(config, `version = 2\nroot = "${root}"\nstate = "${state}"\n\n[grpc]\n  address = "${socket}"\n${opts.config ? `\n${opts.config}\n` : ''}`);
  const nodeArgs: string[] = [];
  if (process.env.STRATA_BENCH_CPU_PROF) {
    mkdirSync(process.env.STRATA_BENCH_CPU_PROF, { recursive: true });
    nodeArgs.push('--cpu-prof', '--cpu-prof-dir', resolve(process.env.STRATA_BENCH_CPU_PROF));
  }
  if (process.env.STRATA_BENCH_STRATAD_NODE_ARGS) nodeArgs.push(...process.env.STRATA_BENCH_STRATAD_NODE_ARGS.split(/\s+/).filter(Boolean));
  const args = [...nodeArgs, join(repoRoot, 'bin', 'stratad'), '--config', config, '--log-level', 'warn'];
  log(`starting stratad: ${process.execPath} ${args.join(' ')}`);
  const child = startChild('stratad', process.execPath, args, join(tmp, dir === 'strata' ? 'stratad.log' : `${dir}.log`));
  await waitSocket(child, socket, 30_000);
  return { name: 'strata', child, socket, root, blobsDir: join(root, 'io.containerd.content.v1.content', 'blobs', 'sha256'), version: '' };
}

/** containerd on the loop fs; `logLevel` 'debug' for benchmarks that read its debug log (the GC pause). */
export async function startContainerd(tmp: string, mnt: string, logLevel = 'warn'): Promise<Daemon> {
  const root = join(mnt, 'containerd', 'root');
  const state = join(tmp, 'containerd', 'state');
  const socket = join(tmp, 'containerd', 'containerd.sock');
  mkdirSync(join(tmp, 'containerd'), { recursive: true });
  const config = join(tmp, 'containerd', 'config.toml');
  const disabled = [
    'io.containerd.grpc.v1.cri',
    'io.containerd.snapshotter.v1.aufs',
    'io.containerd.snapshotter.v1.zfs',
    'io.containerd.snapshotter.v1.devmapper',
    'io.containerd.snapshotter.v1.btrfs',
  ];
  writeFileSync(
    config,
    `version = 2\nroot = "${root}"\nstate = "${state}"\ndisabled_plugins = [${disabled.map((d) => `"${d}"`).join(', ')}]\n\n` +
      `[grpc]\n  address = "${socket}"\n\n[ttrpc]\n  address = "${socket}.ttrpc"\n\n[debug]\n  level = "${logLevel}"\n`,
  );
  const bin = process.env.STRATA_BENCH_CONTAINERD ?? 'containerd';
  const args = ['--config', config];
  log(`starting containerd: ${bin} ${args.join(' ')}`);
  const child = startChild('containerd', bin, args, join(tmp, 'containerd.log'));
  try {
    await waitSocket(child, socket, 30_000);
  } catch (err) {
    // The brief: if containerd fails to start, print its whole log.
    log(`containerd failed to start; its log (${child.logPath}):\n${tail(child.logPath, 400)}`);
    throw err;
  }
  return { name: 'containerd', child, socket, root, blobsDir: join(root, 'io.containerd.content.v1.content', 'blobs', 'sha256'), version: '' };
}

/** Asks the daemon for its version (Version service) and records it in d.version. */
export async function fetchVersion(d: Daemon, namespace: string): Promise<void> {
  const c = new StrataClient(d.socket, { namespace });
  try {
    const v = await c.call(c.version, c.version.version, {});
    d.version = `${(v as { version: string }).version} (${(v as { revision: string }).revision})`;
  } finally {
    c.close();
  }
  log(`${d.name} is serving on ${d.socket}: version ${d.version}`);
}

/**
 * On a failed run: points at the daemons' logs, prints the last lines of any daemon that died, and keeps the
 * temp dir (the logs) when one did.
 */
export function reportFailure(): void {
  for (const c of env.children) {
    log(`log of ${c.name}: ${c.logPath}`);
    if (!alive(c) && env.signalled === 0) log(`${c.name} exited (code ${c.proc.exitCode}, signal ${c.proc.signalCode}); last lines:\n${tail(c.logPath)}`);
  }
  if (env.signalled === 0 && !env.cleaning) env.keepTmp ||= env.children.some((c) => !alive(c));
  if (env.keepTmp) log(`keeping ${env.tmpRoot} (logs) because a daemon died`);
}

/** The command line as run, with paths inside the repository made relative to it. */
export function commandLine(): string {
  return `node ${process.argv.slice(1).map((a) => (a.startsWith('/') ? a.replace(repoRoot + '/', '') : a)).join(' ')}`;
}

export function machineInfo() {
  return {
    nproc: cpus().length,
    cpu: cpus()[0]?.model ?? '',
    memTotalMiB: Math.round(totalmem() / MiB),
    memFreeMiB: Math.round(freemem() / MiB),
    loadavg: loadavg(),
    node: process.version,
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Reporting

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export const f1 = (x: number) => x.toFixed(1);

/** Aligned columns: the first left-aligned, the others right-aligned. */
export function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ')).join('\n');
}

// ---------------------------------------------------------------------------------------------------------------
// Command line and working directories, the same for every benchmark.

/** Options every benchmark takes, parsed and checked. */
export interface CommonArgs {
  json: boolean;
  daemons: DaemonName[];
  keep: boolean;
  imageDir: string | undefined;
}

/**
 * Parses the benchmark's own string options (name -> default) plus the common ones (--json, --daemons, --keep,
 * --image-dir, --help). Prints usage and exits 2 on a bad option; returns undefined after printing --help.
 */
export function parseBenchArgs(
  own: Record<string, string>,
  usage: string,
): { values: Record<string, string>; common: CommonArgs } | undefined {
  const options: Record<string, { type: 'string' | 'boolean'; default?: string | boolean; short?: string }> = {
    json: { type: 'boolean', default: false },
    daemons: { type: 'string', default: 'strata,containerd' },
    keep: { type: 'boolean', default: false },
    'image-dir': { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  };
  for (const [name, def] of Object.entries(own)) options[name] = { type: 'string', default: def };
  let values: Record<string, string | boolean | undefined>;
  try {
    values = parseArgs({ args: process.argv.slice(2), options }).values as Record<string, string | boolean | undefined>;
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n${usage}\n`);
    process.exit(2);
  }
  if (values.help) {
    process.stdout.write(usage + '\n');
    return undefined;
  }
  const daemons = String(values.daemons).split(',').map((x) => x.trim()) as DaemonName[];
  for (const n of daemons) if (n !== 'strata' && n !== 'containerd') throw new Error(`unknown daemon ${n}`);
  const mine: Record<string, string> = {};
  for (const name of Object.keys(own)) mine[name] = String(values[name]);
  return {
    values: mine,
    common: { json: values.json === true, daemons, keep: values.keep === true, imageDir: values['image-dir'] as string | undefined },
  };
}

/** A whole number option at least `min`. */
export function intOption(name: string, v: string, min = 1): number {
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < min) throw new Error(`invalid --${name} ${v}`);
  return n;
}

/**
 * The run's temp dir (state, sockets, logs), its loop image path and mount point, registered for cleanup.
 * The image lives in the temp dir unless --image-dir puts it elsewhere (e.g. /dev/shm, to take the VM's disk
 * out of the measurement).
 */
export function benchDirs(imageDir: string | undefined): { tmpRoot: string; img: string; mnt: string } {
  const tmpRoot = mkdtempSync(join(process.env.STRATA_BENCH_TMP ?? tmpdir(), 'strata-bench-'));
  env.tmpRoot = tmpRoot;
  const img = imageDir ? join(mkdtempSync(join(imageDir, 'strata-bench-img-')), 'fs.img') : join(tmpRoot, 'fs.img');
  env.imageFile = img;
  const mnt = join(tmpRoot, 'mnt');
  mkdirSync(mnt);
  log(`temp dir ${tmpRoot}`);
  return { tmpRoot, img, mnt };
}
