/**
 * Content-ingest benchmark: Strata (stratad) against a real containerd, driven by the same client code
 * (StrataClient from src/api/client.ts), in one run.
 *
 *   node dist/bench/content-ingest.js [--size 1GiB] [--rounds 3] [--json] [--daemons strata,containerd] [--keep] [--image-dir DIR]
 *
 * Must run as root (it loop-mounts a fresh ext4 for the daemons' roots and drops page caches). For each round
 * and daemon it writes one blob of --size bytes of pseudo-random data with containerd's Write protocol
 * (1 MiB WRITE messages, expected digest and total, COMMIT), reads it back fully with Read (verifying the
 * digest), then deletes it. The order of the daemons alternates from one round to the next. Write and read
 * are timed separately.
 *
 * Environment hooks (for profiling the daemon; they do not change what is measured):
 *   STRATA_BENCH_CPU_PROF=DIR          run stratad with `node --cpu-prof --cpu-prof-dir DIR` (the profile is
 *                                      written when stratad exits on the benchmark's SIGTERM)
 *   STRATA_BENCH_STRATAD_NODE_ARGS=".." extra node flags for stratad (space separated)
 *   STRATA_BENCH_CONTAINERD=PATH       the containerd binary (default: containerd on PATH)
 *   STRATA_BENCH_TMP=DIR               where the temp dir (image, state, sockets, logs) is created (default: os.tmpdir())
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash, randomFillSync } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, openSync, closeSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { cpus, freemem, loadavg, tmpdir, totalmem } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { StrataClient } from '../src/api/client.js';

// ---------------------------------------------------------------------------------------------------------------
// Parameters

const MiB = 1 << 20;
const CHUNK = MiB;
const POOL_SIZE = 64 * MiB;
const NAMESPACE = 'bench';
const IMAGE_SIZE = '8G';

type DaemonName = 'strata' | 'containerd';

const usage = `usage: node dist/bench/content-ingest.js [--size 1GiB] [--rounds 3] [--json] [--daemons strata,containerd] [--keep] [--image-dir DIR]`;

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

function formatBytes(n: number): string {
  if (n % (1 << 30) === 0) return `${n / (1 << 30)} GiB`;
  if (n % MiB === 0) return `${n / MiB} MiB`;
  return `${n} bytes`;
}

// ---------------------------------------------------------------------------------------------------------------
// Data: a 64 MiB random pool, cycled through in 1 MiB windows at offsets that depend on the chunk index and a
// per-blob variant, so every blob has its own content (no blob is ever found already present by either daemon)
// and nothing is trivially compressible. Generating a chunk is a subarray: it costs nothing.

function makePool(): Buffer {
  return randomFillSync(Buffer.allocUnsafe(POOL_SIZE));
}

function chunkOffset(variant: number, i: number): number {
  const span = POOL_SIZE - CHUNK + 1;
  // Multiplicative hashing; every term stays below 2^53.
  return ((i + 1) * 2654435761 + variant * 0x9e3779b1 + ((variant * 40503) % 65521) * i) % span;
}

function* blobChunks(pool: Buffer, variant: number, size: number): Generator<Buffer> {
  let i = 0;
  for (let sent = 0; sent < size; sent += CHUNK, i++) {
    const off = chunkOffset(variant, i);
    yield pool.subarray(off, off + Math.min(CHUNK, size - sent));
  }
}

/** The same chunks as an async iterable, as writeBlob takes them. */
async function* blobSource(pool: Buffer, variant: number, size: number): AsyncGenerator<Buffer> {
  yield* blobChunks(pool, variant, size);
}

function digestOfBlob(pool: Buffer, variant: number, size: number): string {
  const h = createHash('sha256');
  for (const c of blobChunks(pool, variant, size)) h.update(c);
  return `sha256:${h.digest('hex')}`;
}

// ---------------------------------------------------------------------------------------------------------------
// Processes, mounts and cleanup

const log = (msg: string) => process.stderr.write(`[bench] ${msg}\n`);

interface Child {
  name: string;
  proc: ChildProcess;
  logPath: string;
  exited: Promise<void>;
}

const children: Child[] = [];
/** Open clients, closed first on cleanup so the daemons have no call in flight when asked to stop. */
const clients = new Set<StrataClient>();
let mounted: string | undefined;
let tmpRoot: string | undefined;
/** The loop image, when it is outside tmpRoot (--image-dir). */
let imageFile: string | undefined;
let keepTmp = false;
let cleaning: Promise<void> | undefined;

function run(cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.error) throw new Error(`${cmd} ${args.join(' ')}: ${r.error.message}`);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited with ${r.status}: ${r.stderr.trim()}`);
}

function alive(c: Child): boolean {
  return c.proc.exitCode === null && c.proc.signalCode === null;
}

async function stopChild(c: Child, graceMs: number): Promise<void> {
  if (!alive(c)) return;
  c.proc.kill('SIGTERM');
  const t = await Promise.race([c.exited.then(() => 'exited'), sleep(graceMs).then(() => 'timeout')]);
  if (t === 'timeout' && alive(c)) {
    log(`${c.name} did not stop within ${graceMs} ms: SIGKILL`);
    c.proc.kill('SIGKILL');
    await Promise.race([c.exited, sleep(5000)]);
  }
}

function unmount(dir: string): void {
  for (let attempt = 0; attempt < 10; attempt++) {
    const r = spawnSync('umount', [dir], { encoding: 'utf8' });
    if (r.status === 0) return;
    spawnSync('sleep', ['0.5']);
  }
  // Last resort: detach lazily so the loop device goes once the last user is gone.
  spawnSync('umount', ['-l', dir]);
}

/** Stops every child, unmounts the loop file system and removes the temp dir. Idempotent. */
function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    for (const c of clients) c.close();
    clients.clear();
    // stratad gives in-flight calls up to 10 s before cutting them; containerd stops at once.
    await Promise.all(children.map((c) => stopChild(c, c.name === 'stratad' ? 15_000 : 5000)));
    if (mounted) {
      unmount(mounted);
      mounted = undefined;
    }
    if (imageFile && tmpRoot && !imageFile.startsWith(tmpRoot + '/')) rmSync(dirname(imageFile), { recursive: true, force: true });
    if (tmpRoot && !keepTmp) {
      rmSync(tmpRoot, { recursive: true, force: true });
    } else if (tmpRoot) {
      log(`kept ${tmpRoot}`);
    }
  })();
  return cleaning;
}

/** Last resort when the process exits without the async cleanup having run. */
process.on('exit', () => {
  for (const c of children) if (alive(c)) c.proc.kill('SIGKILL');
  if (mounted) spawnSync('umount', ['-l', mounted]);
  if (!cleaning) {
    if (imageFile && tmpRoot && !imageFile.startsWith(tmpRoot + '/')) rmSync(dirname(imageFile), { recursive: true, force: true });
    if (tmpRoot && !keepTmp) rmSync(tmpRoot, { recursive: true, force: true });
  }
});

let signalled = 0;
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.on(sig, () => {
    signalled++;
    if (signalled > 1) process.exit(130);
    log(`${sig}: cleaning up`);
    cleanup().finally(() => process.exit(sig === 'SIGINT' ? 130 : 143));
  });
}

function startChild(name: string, cmd: string, args: string[], logPath: string, env?: NodeJS.ProcessEnv): Child {
  const fd = openSync(logPath, 'a');
  const proc = spawn(cmd, args, { stdio: ['ignore', fd, fd], env: env ?? process.env });
  closeSync(fd);
  const exited = new Promise<void>((res) => {
    proc.once('exit', () => res());
    proc.once('error', () => res());
  });
  proc.once('error', (err) => log(`${name}: ${err.message}`));
  const c: Child = { name, proc, logPath, exited };
  children.push(c);
  return c;
}

function canConnect(path: string): Promise<boolean> {
  return new Promise((res) => {
    const s = connect(path);
    s.once('connect', () => {
      s.destroy();
      res(true);
    });
    s.once('error', () => res(false));
  });
}

function tail(path: string, lines = 60): string {
  try {
    return readFileSync(path, 'utf8').split('\n').slice(-lines).join('\n');
  } catch (err) {
    return `(cannot read ${path}: ${(err as Error).message})`;
  }
}

async function waitSocket(c: Child, socket: string, timeoutMs: number): Promise<void> {
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

function cpuSeconds(pid: number | undefined): number {
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
function systemBusySeconds(): number {
  try {
    const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
    // user nice system idle iowait irq softirq steal guest guest_nice: busy = all but idle and iowait (guest is in user).
    const busy = f[0]! + f[1]! + f[2]! + f[5]! + f[6]! + f[7]!;
    return busy / CLK_TCK;
  } catch {
    return NaN;
  }
}

function clientCpuSeconds(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

function dropCaches(): boolean {
  try {
    spawnSync('sync');
    writeFileSync('/proc/sys/vm/drop_caches', '3');
    return true;
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The daemons

interface Daemon {
  name: DaemonName;
  child: Child;
  socket: string;
  /** Where committed blobs land, to wait until a deleted blob is really gone (containerd removes it in GC). */
  blobsDir: string;
  version: string;
}

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

async function startStrata(tmp: string, mnt: string): Promise<Daemon> {
  const root = join(mnt, 'strata', 'root');
  const state = join(tmp, 'strata', 'state');
  const socket = join(tmp, 'strata', 'strata.sock');
  mkdirSync(join(tmp, 'strata'), { recursive: true });
  const config = join(tmp, 'strata', 'config.toml');
  writeFileSync(config, `version = 2\nroot = "${root}"\nstate = "${state}"\n\n[grpc]\n  address = "${socket}"\n`);
  const nodeArgs: string[] = [];
  if (process.env.STRATA_BENCH_CPU_PROF) {
    mkdirSync(process.env.STRATA_BENCH_CPU_PROF, { recursive: true });
    nodeArgs.push('--cpu-prof', '--cpu-prof-dir', resolve(process.env.STRATA_BENCH_CPU_PROF));
  }
  if (process.env.STRATA_BENCH_STRATAD_NODE_ARGS) nodeArgs.push(...process.env.STRATA_BENCH_STRATAD_NODE_ARGS.split(/\s+/).filter(Boolean));
  const args = [...nodeArgs, join(repoRoot, 'bin', 'stratad'), '--config', config, '--log-level', 'warn'];
  log(`starting stratad: ${process.execPath} ${args.join(' ')}`);
  const child = startChild('stratad', process.execPath, args, join(tmp, 'stratad.log'));
  await waitSocket(child, socket, 30_000);
  return { name: 'strata', child, socket, blobsDir: join(root, 'io.containerd.content.v1.content', 'blobs', 'sha256'), version: '' };
}

async function startContainerd(tmp: string, mnt: string): Promise<Daemon> {
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
      `[grpc]\n  address = "${socket}"\n\n[ttrpc]\n  address = "${socket}.ttrpc"\n\n[debug]\n  level = "warn"\n`,
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
  return { name: 'containerd', child, socket, blobsDir: join(root, 'io.containerd.content.v1.content', 'blobs', 'sha256'), version: '' };
}

// ---------------------------------------------------------------------------------------------------------------
// One measurement

interface RoundResult {
  round: number;
  position: number;
  daemon: DaemonName;
  bytes: number;
  digest: string;
  writeSeconds: number;
  readSeconds: number;
  writeMBps: number;
  readMBps: number;
  writeMiBps: number;
  readMiBps: number;
  /** CPU seconds (user + system) the daemon and the client used during each phase. */
  writeDaemonCpu: number;
  readDaemonCpu: number;
  writeClientCpu: number;
  readClientCpu: number;
  /** CPU seconds used by everything else on the machine (other processes, kernel threads) during each phase. */
  writeOtherCpu: number;
  readOtherCpu: number;
  cachesDropped: boolean;
  /** Phase boundaries on the monotonic clock in µs (the clock V8 CPU profiles use), to cut a profile by phase. */
  writeWindowUs: [number, number];
  readWindowUs: [number, number];
}

const seconds = (t0: bigint, t1: bigint) => Number(t1 - t0) / 1e9;

async function measure(
  d: Daemon,
  pool: Buffer,
  variant: number,
  digest: string,
  size: number,
  round: number,
  position: number,
): Promise<RoundResult> {
  const client = new StrataClient(d.socket, { namespace: NAMESPACE });
  clients.add(client);
  try {
    const ref = `bench-${d.name}-r${round}-${process.pid}-${Date.now()}`;

    const pid = d.child.proc.pid;
    const droppedW = dropCaches();
    const wc0 = [cpuSeconds(pid), clientCpuSeconds(), systemBusySeconds()];
    const w0 = process.hrtime.bigint();
    const res = await client.writeBlob(blobSource(pool, variant, size), { ref, expected: digest, total: size });
    const w1 = process.hrtime.bigint();
    const wc1 = [cpuSeconds(pid), clientCpuSeconds(), systemBusySeconds()];
    if (res.digest !== digest) throw new Error(`${d.name}: Write committed ${res.digest}, expected ${digest}`);
    if (res.resumedAt !== 0) throw new Error(`${d.name}: Write resumed at ${res.resumedAt}: the ingest was not fresh`);

    const droppedR = dropCaches();
    const h = createHash('sha256');
    let got = 0;
    const rc0 = [cpuSeconds(pid), clientCpuSeconds(), systemBusySeconds()];
    const r0 = process.hrtime.bigint();
    for await (const chunk of client.readBlob(digest)) {
      h.update(chunk);
      got += chunk.length;
    }
    const r1 = process.hrtime.bigint();
    const rc1 = [cpuSeconds(pid), clientCpuSeconds(), systemBusySeconds()];
    const back = `sha256:${h.digest('hex')}`;
    if (got !== size) throw new Error(`${d.name}: Read returned ${got} bytes, expected ${size}`);
    if (back !== digest) throw new Error(`${d.name}: Read returned content with digest ${back}, expected ${digest}`);

    await client.call(client.content, client.content.delete, { digest });
    // containerd removes the file in its (asynchronous) GC; wait for it so it does not run during the next phase.
    const file = join(d.blobsDir, digest.slice('sha256:'.length));
    const deadline = Date.now() + 30_000;
    while (existsSync(file) && Date.now() < deadline) await sleep(50);
    if (existsSync(file)) log(`warning: ${d.name} still has ${file} 30 s after Delete`);

    const ws = seconds(w0, w1);
    const rs = seconds(r0, r1);
    return {
      round,
      position,
      daemon: d.name,
      bytes: size,
      digest,
      writeSeconds: ws,
      readSeconds: rs,
      writeMBps: size / 1e6 / ws,
      readMBps: size / 1e6 / rs,
      writeMiBps: size / MiB / ws,
      readMiBps: size / MiB / rs,
      writeDaemonCpu: wc1[0]! - wc0[0]!,
      readDaemonCpu: rc1[0]! - rc0[0]!,
      writeClientCpu: wc1[1]! - wc0[1]!,
      readClientCpu: rc1[1]! - rc0[1]!,
      writeOtherCpu: wc1[2]! - wc0[2]! - (wc1[0]! - wc0[0]!) - (wc1[1]! - wc0[1]!),
      readOtherCpu: rc1[2]! - rc0[2]! - (rc1[0]! - rc0[0]!) - (rc1[1]! - rc0[1]!),
      cachesDropped: droppedW && droppedR,
      writeWindowUs: [Number(w0 / 1000n), Number(w1 / 1000n)],
      readWindowUs: [Number(r0 / 1000n), Number(r1 / 1000n)],
    };
  } finally {
    clients.delete(client);
    client.close();
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Reporting

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

const f1 = (x: number) => x.toFixed(1);

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ')).join('\n');
}

// ---------------------------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  let parsed;
  try {
    parsed = parseArgs({
      args: process.argv.slice(2),
      options: {
        size: { type: 'string', default: '1GiB' },
        rounds: { type: 'string', default: '3' },
        json: { type: 'boolean', default: false },
        daemons: { type: 'string', default: 'strata,containerd' },
        keep: { type: 'boolean', default: false },
        'image-dir': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n${usage}\n`);
    process.exit(2);
  }
  const { values } = parsed;
  if (values.help) {
    process.stdout.write(usage + '\n');
    return;
  }
  const size = parseSize(values.size!);
  const rounds = Number(values.rounds);
  if (!Number.isSafeInteger(rounds) || rounds < 1) throw new Error(`invalid --rounds ${values.rounds}`);
  const names = values.daemons!.split(',').map((s) => s.trim()) as DaemonName[];
  for (const n of names) if (n !== 'strata' && n !== 'containerd') throw new Error(`unknown daemon ${n}`);
  keepTmp = values.keep!;
  if (process.getuid?.() !== 0) throw new Error('must run as root (loop mount, drop_caches)');

  const command = `node ${process.argv.slice(1).map((a) => (a.startsWith('/') ? a.replace(repoRoot + '/', '') : a)).join(' ')}`;
  const started = new Date();

  tmpRoot = mkdtempSync(join(process.env.STRATA_BENCH_TMP ?? tmpdir(), 'strata-bench-'));
  // The loop image lives in the temp dir unless --image-dir puts it elsewhere (e.g. /dev/shm, to take the
  // VM's disk out of the measurement).
  const img = values['image-dir'] ? join(mkdtempSync(join(values['image-dir'], 'strata-bench-img-')), 'fs.img') : join(tmpRoot, 'fs.img');
  imageFile = img;
  const mnt = join(tmpRoot, 'mnt');
  mkdirSync(mnt);
  log(`temp dir ${tmpRoot}`);

  const daemons: Daemon[] = [];
  const results: RoundResult[] = [];
  try {
    // 1. A fresh ext4 on a loop device for both roots. Inode tables and journal are initialised now rather than
    // lazily, so no ext4lazyinit thread writes in the background while we measure.
    run('truncate', ['-s', IMAGE_SIZE, img]);
    run('mkfs.ext4', ['-q', '-E', 'lazy_itable_init=0,lazy_journal_init=0', img]);
    run('mount', ['-o', 'loop', img, mnt]);
    mounted = mnt;
    log(`mounted ${IMAGE_SIZE} ext4 (loop) at ${mnt}`);

    // 2-3. The daemons.
    if (names.includes('strata')) daemons.push(await startStrata(tmpRoot, mnt));
    if (names.includes('containerd')) daemons.push(await startContainerd(tmpRoot, mnt));
    for (const d of daemons) {
      const c = new StrataClient(d.socket, { namespace: NAMESPACE });
      try {
        const v = await c.call(c.version, c.version.version, {});
        d.version = `${(v as { version: string }).version} (${(v as { revision: string }).revision})`;
      } finally {
        c.close();
      }
      log(`${d.name} is serving on ${d.socket}: version ${d.version}`);
    }

    // 4. Data.
    const pool = makePool();
    const plan: { round: number; order: Daemon[] }[] = [];
    for (let r = 1; r <= rounds; r++) plan.push({ round: r, order: r % 2 === 1 ? daemons : [...daemons].reverse() });
    const digests = new Map<string, string>();
    const variantOf = (round: number, d: Daemon) => round * 16 + daemons.indexOf(d);
    log(`precomputing the digests of ${plan.length * daemons.length} blobs of ${formatBytes(size)}`);
    for (const p of plan) for (const d of p.order) digests.set(`${p.round}/${d.name}`, digestOfBlob(pool, variantOf(p.round, d), size));

    // 5. Rounds, alternating the order.
    for (const p of plan) {
      for (const [i, d] of p.order.entries()) {
        log(`round ${p.round}/${rounds}: ${d.name} (${i + 1}/${p.order.length})`);
        const res = await measure(d, pool, variantOf(p.round, d), digests.get(`${p.round}/${d.name}`)!, size, p.round, i + 1);
        log(
          `  write ${res.writeSeconds.toFixed(2)} s = ${f1(res.writeMBps)} MB/s, read ${res.readSeconds.toFixed(2)} s = ${f1(res.readMBps)} MB/s`,
        );
        results.push(res);
      }
    }
  } catch (err) {
    for (const c of children) {
      log(`log of ${c.name}: ${c.logPath}`);
      if (!alive(c) && signalled === 0) log(`${c.name} exited (code ${c.proc.exitCode}, signal ${c.proc.signalCode}); last lines:\n${tail(c.logPath)}`);
    }
    if (signalled === 0 && !cleaning) keepTmp ||= children.some((c) => !alive(c));
    if (keepTmp) log(`keeping ${tmpRoot} (logs) because a daemon died`);
    throw err;
  } finally {
    // Stop the daemons (stratad writes its CPU profile on exit), unmount, remove.
    await cleanup();
  }

  // 6. Report.
  const summary = Object.fromEntries(
    daemons.map((d) => {
      const rs = results.filter((r) => r.daemon === d.name);
      return [
        d.name,
        {
          version: d.version,
          writeMBps: median(rs.map((r) => r.writeMBps)),
          readMBps: median(rs.map((r) => r.readMBps)),
          writeMiBps: median(rs.map((r) => r.writeMiBps)),
          readMiBps: median(rs.map((r) => r.readMiBps)),
          writeSeconds: median(rs.map((r) => r.writeSeconds)),
          readSeconds: median(rs.map((r) => r.readSeconds)),
          writeDaemonCpu: median(rs.map((r) => r.writeDaemonCpu)),
          readDaemonCpu: median(rs.map((r) => r.readDaemonCpu)),
        },
      ];
    }),
  ) as Record<DaemonName, { version: string; writeMBps: number; readMBps: number; writeMiBps: number; readMiBps: number; writeSeconds: number; readSeconds: number; writeDaemonCpu: number; readDaemonCpu: number }>;
  const ratio =
    summary.strata && summary.containerd
      ? { write: summary.strata.writeMBps / summary.containerd.writeMBps, read: summary.strata.readMBps / summary.containerd.readMBps }
      : undefined;
  const cachesDropped = results.every((r) => r.cachesDropped);
  const machine = {
    nproc: cpus().length,
    cpu: cpus()[0]?.model ?? '',
    memTotalMiB: Math.round(totalmem() / MiB),
    memFreeMiB: Math.round(freemem() / MiB),
    loadavg: loadavg(),
    node: process.version,
  };

  const out = {
    benchmark: 'content-ingest',
    date: started.toISOString(),
    command,
    size,
    rounds,
    chunk: CHUNK,
    namespace: NAMESPACE,
    filesystem: `fresh ${IMAGE_SIZE} ext4 on a loop device backed by ${imageFile}`,
    cachesDropped,
    machine,
    summary,
    ratio,
    results,
  };

  const lines: string[] = [];
  lines.push(`Content ingest: ${formatBytes(size)} blob, gRPC Write (1 MiB messages, expected digest + total, COMMIT) + Read, ${rounds} round(s), alternating order`);
  lines.push(`command: ${command}`);
  lines.push(`date: ${out.date}; ${machine.nproc} cores (${machine.cpu}), ${machine.memTotalMiB} MiB RAM, node ${machine.node}; loadavg at end ${machine.loadavg.map((x) => x.toFixed(2)).join(' ')}`);
  lines.push(`file system: ${out.filesystem}`);
  lines.push(`daemons: ${daemons.map((d) => `${d.name} ${d.version}`).join('; ')}`);
  lines.push(`page caches dropped before every write and read: ${cachesDropped ? 'yes' : 'NO (could not write /proc/sys/vm/drop_caches)'}`);
  lines.push('');
  const head = ['median', 'write MB/s', 'write MiB/s', 'read MB/s', 'read MiB/s', 'daemon CPU s (write)', 'daemon CPU s (read)'];
  const rows = [
    head,
    ...daemons.map((d) => {
      const m = summary[d.name];
      return [d.name, f1(m.writeMBps), f1(m.writeMiBps), f1(m.readMBps), f1(m.readMiBps), m.writeDaemonCpu.toFixed(2), m.readDaemonCpu.toFixed(2)];
    }),
  ];
  if (ratio) rows.push(['strata/containerd', ratio.write.toFixed(2), ratio.write.toFixed(2), ratio.read.toFixed(2), ratio.read.toFixed(2), '', '']);
  lines.push(table(rows));
  lines.push('');
  lines.push('all rounds (CPU: seconds of CPU used during the phase by the daemon / this client / everything else on the machine,');
  lines.push('i.e. other processes and kernel threads such as the loop device\'s):');
  lines.push(
    table([
      ['round', 'pos', 'daemon', 'write s', 'write MB/s', 'read s', 'read MB/s', 'CPU s daemon/client/other (write)', 'CPU s daemon/client/other (read)'],
      ...results.map((r) => [
        String(r.round),
        String(r.position),
        r.daemon,
        r.writeSeconds.toFixed(3),
        f1(r.writeMBps),
        r.readSeconds.toFixed(3),
        f1(r.readMBps),
        `${r.writeDaemonCpu.toFixed(2)} / ${r.writeClientCpu.toFixed(2)} / ${r.writeOtherCpu.toFixed(2)}`,
        `${r.readDaemonCpu.toFixed(2)} / ${r.readClientCpu.toFixed(2)} / ${r.readOtherCpu.toFixed(2)}`,
      ]),
    ]),
  );
  const text = lines.join('\n') + '\n';
  if (values.json) {
    process.stderr.write(text);
    process.stdout.write(JSON.stringify(out, null, 2) + '\n');
  } else {
    process.stdout.write(text);
  }
}

main().then(
  () => process.exit(0),
  async (err) => {
    process.stderr.write(`content-ingest: ${err instanceof Error ? err.message : String(err)}\n`);
    await cleanup().catch(() => undefined);
    process.exit(1);
  },
);
