/**
 * Snapshots benchmark: Strata (stratad) against a real containerd, both with their `overlayfs` snapshotter,
 * driven by the same client code (StrataClient from src/api/client.ts), in one run.
 *
 *   node dist/bench/snapshots.js [--ops 500] [--depth 64] [--chain-ops 200] [--rounds 3] [--snapshotter overlayfs]
 *                                [--warmup 20] [--settle-ms 1000] [--json] [--daemons strata,containerd] [--keep]
 *                                [--image-dir DIR]
 *
 * Must run as root (it loop-mounts a fresh ext4 for the daemons' roots). For each round and daemon, in namespace
 * `bench`, under one lease (so containerd's GC does not collect the committed snapshots the benchmark builds on):
 *
 *   1. Lifecycle: a committed base snapshot, then --ops times, sequentially (one client, awaiting every call):
 *      Prepare(key_i, parent = base) -> Mounts(key_i) -> Commit(name_i, key_i) -> Stat(name_i) -> Remove(name_i).
 *      Reported: full cycles/s, and mean/p50/p99 latency of each op.
 *   2. Deep chain: --depth committed layers (each prepared on the previous one and committed, no file writes),
 *      then --chain-ops times: Prepare(top_j, parent = chain top) + Mounts(top_j) (timed together and apart),
 *      then Remove(top_j) (not timed). Reported: p50/p99 (and mean) of Prepare+Mounts.
 *   3. Cleanup: every snapshot removed (leaves first), the lease deleted with sync=true (containerd runs a
 *      synchronous GC for that), then the benchmark polls until the namespace lists no snapshot and the
 *      snapshotter's snapshots/ directory on disk is empty (containerd removes overlay directories in its
 *      asynchronous GC), syncs, and waits --settle-ms more before the next measurement.
 *
 * Before phase 2 the same settling is done for phase 1's leftovers (GC forced with a throwaway lease deleted
 * with sync=true, directory polled down to the base snapshot), so neither daemon is still deleting while the
 * next phase is timed. --warmup cycles of each phase run untimed first (JIT, caches), on both daemons.
 * The order of the daemons alternates from one round to the next.
 *
 * The environment hooks of bench/lib.ts apply (STRATA_BENCH_CPU_PROF=DIR profiles stratad, etc.); --json
 * records the phase windows on the monotonic clock (µs) to cut such a profile with bench/cpuprofile-top.ts.
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { StrataClient } from '../src/api/clients/strata.js';
import type { Mount } from '../src/api/gen/containerd/types/mount.js';
import {
  cleanup,
  clientCpuSeconds,
  commandLine,
  cpuSeconds,
  env,
  fetchVersion,
  installCleanupHandlers,
  log,
  machineInfo,
  median,
  mountLoopExt4,
  reportFailure,
  startContainerd,
  startStrata,
  systemBusySeconds,
  table,
  type Daemon,
  type DaemonName,
  benchDirs,
  intOption,
  parseBenchArgs,
} from './lib.js';

installCleanupHandlers();

const NAMESPACE = 'bench';
const IMAGE_SIZE = '4G';

const usage =
  'usage: node dist/bench/snapshots.js [--ops 500] [--depth 64] [--chain-ops 200] [--rounds 3] [--snapshotter overlayfs] ' +
  '[--warmup 20] [--settle-ms 1000] [--json] [--daemons strata,containerd] [--keep] [--image-dir DIR]';

const LIFECYCLE_OPS = ['prepare', 'mounts', 'commit', 'stat', 'remove'] as const;
type LifecycleOp = (typeof LIFECYCLE_OPS)[number];

// ---------------------------------------------------------------------------------------------------------------
// Statistics

interface Stats {
  n: number;
  meanMs: number;
  p50Ms: number;
  p99Ms: number;
  minMs: number;
  maxMs: number;
}

/** Nearest-rank percentile of sorted values. */
function percentile(sorted: number[], p: number): number {
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i]!;
}

function stats(ms: number[]): Stats {
  const s = [...ms].sort((a, b) => a - b);
  return {
    n: s.length,
    meanMs: s.reduce((a, b) => a + b, 0) / s.length,
    p50Ms: percentile(s, 50),
    p99Ms: percentile(s, 99),
    minMs: s[0]!,
    maxMs: s[s.length - 1]!,
  };
}

const msSince = (t0: bigint) => Number(process.hrtime.bigint() - t0) / 1e6;
const nowUs = () => Number(process.hrtime.bigint() / 1000n);

// ---------------------------------------------------------------------------------------------------------------
// Snapshot calls (the same StrataClient for both daemons)

class Snap {
  constructor(
    readonly c: StrataClient,
    readonly snapshotter: string,
  ) {}

  prepare(key: string, parent: string): Promise<Mount[]> {
    return this.c.call(this.c.snapshots, this.c.snapshots.prepare, { snapshotter: this.snapshotter, key, parent, labels: {} }).then((r) => r.mounts);
  }
  mounts(key: string): Promise<Mount[]> {
    return this.c.call(this.c.snapshots, this.c.snapshots.mounts, { snapshotter: this.snapshotter, key }).then((r) => r.mounts);
  }
  commit(name: string, key: string): Promise<unknown> {
    return this.c.call(this.c.snapshots, this.c.snapshots.commit, { parent: '', snapshotter: this.snapshotter, name, key, labels: {} });
  }
  stat(key: string): Promise<unknown> {
    return this.c.call(this.c.snapshots, this.c.snapshots.stat, { snapshotter: this.snapshotter, key });
  }
  remove(key: string): Promise<unknown> {
    return this.c.call(this.c.snapshots, this.c.snapshots.remove, { snapshotter: this.snapshotter, key });
  }
  async list(): Promise<{ name: string; parent: string }[]> {
    const rs = await this.c.collect(this.c.snapshots.list({ snapshotter: this.snapshotter, filters: [] }, this.c.metadata()));
    return rs.flatMap((r) => r.info.map((i) => ({ name: i.name, parent: i.parent })));
  }
}

/** Number of lower directories in an overlay mount (0 for a bind mount). */
function lowerdirs(mounts: Mount[]): number {
  const o = mounts[0]?.options.find((x) => x.startsWith('lowerdir='));
  return o ? o.slice('lowerdir='.length).split(':').length : 0;
}

async function createLease(c: StrataClient, id: string): Promise<void> {
  await c.call(c.leases, c.leases.create, { id, labels: {} });
}

async function deleteLease(c: StrataClient, id: string, sync: boolean): Promise<void> {
  await c.call(c.leases, c.leases.delete, { id, sync });
}

/** Asks for a synchronous garbage collection: a throwaway lease deleted with sync=true (containerd's ScheduleAndWait). */
async function forceGc(c: StrataClient): Promise<void> {
  const id = `bench-gc-${randomBytes(4).toString('hex')}`;
  await createLease(c, id);
  await deleteLease(c, id, true);
}

/** Removes every snapshot of the namespace, leaves first. */
async function removeAll(s: Snap): Promise<number> {
  let removed = 0;
  for (let pass = 0; pass < 10_000; pass++) {
    const all = await s.list();
    if (all.length === 0) return removed;
    const parents = new Set(all.map((i) => i.parent));
    const leaves = all.filter((i) => !parents.has(i.name));
    if (leaves.length === 0) throw new Error(`cannot remove the remaining snapshots (no leaf among ${all.length})`);
    for (const l of leaves) {
      await s.remove(l.name);
      removed++;
    }
  }
  throw new Error('removeAll: too many passes');
}

/** Entries in the snapshotter's snapshots/ directory on disk (one per snapshot the backend still has). */
function backendEntries(d: Daemon, snapshotter: string): number {
  const dir = join(d.root, `io.containerd.snapshotter.v1.${snapshotter}`, 'snapshots');
  if (!existsSync(dir)) return 0;
  return readdirSync(dir).length;
}

/**
 * Waits until the namespace lists `expected` snapshots and the backend directory holds no more than that, forcing
 * a GC first (containerd deletes overlay directories in GC), then syncs and sleeps settleMs. Returns the seconds
 * it took until the directory was down (before the fixed settle time).
 */
async function settle(d: Daemon, c: StrataClient, s: Snap, snapshotter: string, expected: number, settleMs: number): Promise<number> {
  const t0 = process.hrtime.bigint();
  await forceGc(c);
  const deadline = Date.now() + 120_000;
  let listed = -1;
  let onDisk = -1;
  for (;;) {
    listed = (await s.list()).length;
    onDisk = backendEntries(d, snapshotter);
    if (listed === expected && onDisk <= expected) break;
    if (Date.now() > deadline) {
      log(`warning: ${d.name} still lists ${listed} snapshot(s) and has ${onDisk} director(ies) 120 s after cleanup (expected ${expected})`);
      break;
    }
    await sleep(50);
    // A GC may have been scheduled in the meantime with a delay; ask again now and then.
    if (Math.random() < 0.1) await forceGc(c);
  }
  const waited = msSince(t0) / 1000;
  spawnSync('sync');
  await sleep(settleMs);
  return waited;
}

// ---------------------------------------------------------------------------------------------------------------
// One measurement

interface Cpu {
  daemon: number;
  client: number;
  other: number;
}

interface RoundResult {
  round: number;
  position: number;
  daemon: DaemonName;
  lifecycle: {
    cycles: number;
    seconds: number;
    cyclesPerSec: number;
    ops: Record<LifecycleOp, Stats>;
    cycle: Stats;
    /** CPU seconds during the phase (daemon / this client / rest of the machine). */
    cpu: Cpu;
    windowUs: [number, number];
  };
  chain: {
    depth: number;
    buildSeconds: number;
    /** lowerdir entries in the Mounts of a snapshot prepared on the chain top (sanity check: = depth). */
    lowerdirs: number;
    prepareMounts: Stats;
    prepare: Stats;
    mounts: Stats;
    cpu: Cpu;
    windowUs: [number, number];
  };
  /** Seconds until the daemon had really deleted everything after each phase (before the fixed settle time). */
  settleAfterLifecycle: number;
  settleAfterRound: number;
  removedAtCleanup: number;
}

interface Params {
  ops: number;
  depth: number;
  chainOps: number;
  warmup: number;
  snapshotter: string;
  settleMs: number;
}

function cpuNow(pid: number | undefined): number[] {
  return [cpuSeconds(pid), clientCpuSeconds(), systemBusySeconds()];
}

function cpuDelta(a: number[], b: number[]): Cpu {
  const daemon = b[0]! - a[0]!;
  const client = b[1]! - a[1]!;
  return { daemon, client, other: b[2]! - a[2]! - daemon - client };
}

async function measure(d: Daemon, p: Params, round: number, position: number): Promise<RoundResult> {
  const tag = `r${round}`;
  const leaseId = `bench-${d.name}-${tag}-${process.pid}`;
  const plain = new StrataClient(d.socket, { namespace: NAMESPACE });
  env.clients.add(plain);
  let client: StrataClient | undefined;
  try {
    await createLease(plain, leaseId);
    client = plain.with({ lease: leaseId });
    env.clients.add(client);
    const s = new Snap(client, p.snapshotter);
    const pid = d.child.proc.pid;

    // Base.
    const base = `base-${tag}`;
    await s.prepare(`${base}-active`, '');
    await s.commit(base, `${base}-active`);

    // 1. Lifecycle.
    for (let i = 0; i < p.warmup; i++) {
      await s.prepare(`warm-${tag}-${i}-a`, base);
      await s.mounts(`warm-${tag}-${i}-a`);
      await s.commit(`warm-${tag}-${i}`, `warm-${tag}-${i}-a`);
      await s.stat(`warm-${tag}-${i}`);
      await s.remove(`warm-${tag}-${i}`);
    }
    const lat: Record<LifecycleOp, number[]> = { prepare: [], mounts: [], commit: [], stat: [], remove: [] };
    const cycleMs: number[] = [];
    const c0 = cpuNow(pid);
    const w0 = nowUs();
    const l0 = process.hrtime.bigint();
    for (let i = 0; i < p.ops; i++) {
      const key = `lc-${tag}-${i}-active`;
      const name = `lc-${tag}-${i}`;
      const t0 = process.hrtime.bigint();
      let t = t0;
      await s.prepare(key, base);
      lat.prepare.push(msSince(t));
      t = process.hrtime.bigint();
      await s.mounts(key);
      lat.mounts.push(msSince(t));
      t = process.hrtime.bigint();
      await s.commit(name, key);
      lat.commit.push(msSince(t));
      t = process.hrtime.bigint();
      await s.stat(name);
      lat.stat.push(msSince(t));
      t = process.hrtime.bigint();
      await s.remove(name);
      lat.remove.push(msSince(t));
      cycleMs.push(msSince(t0));
    }
    const lSeconds = msSince(l0) / 1000;
    const w1 = nowUs();
    const c1 = cpuNow(pid);
    const lifecycle: RoundResult['lifecycle'] = {
      cycles: p.ops,
      seconds: lSeconds,
      cyclesPerSec: p.ops / lSeconds,
      ops: Object.fromEntries(LIFECYCLE_OPS.map((o) => [o, stats(lat[o])])) as Record<LifecycleOp, Stats>,
      cycle: stats(cycleMs),
      cpu: cpuDelta(c0, c1),
      windowUs: [w0, w1],
    };
    log(
      `  lifecycle: ${p.ops} cycles in ${lSeconds.toFixed(2)} s = ${lifecycle.cyclesPerSec.toFixed(1)} cycles/s; ` +
        LIFECYCLE_OPS.map((o) => `${o} ${lifecycle.ops[o].meanMs.toFixed(2)}`).join(', ') +
        ' ms mean',
    );

    // Only the base is left; wait until the daemon has really deleted the rest (containerd: GC).
    const settleAfterLifecycle = await settle(d, plain, s, p.snapshotter, 1, p.settleMs);
    log(`  settled after lifecycle in ${settleAfterLifecycle.toFixed(2)} s (+ ${p.settleMs} ms)`);

    // 2. Deep chain.
    const b0 = process.hrtime.bigint();
    let parent = '';
    for (let i = 0; i < p.depth; i++) {
      const name = `chain-${tag}-${i}`;
      await s.prepare(`${name}-active`, parent);
      await s.commit(name, `${name}-active`);
      parent = name;
    }
    const buildSeconds = msSince(b0) / 1000;
    const top = parent;
    let lowers = 0;
    for (let j = 0; j < p.warmup; j++) {
      await s.prepare(`warm-top-${tag}-${j}`, top);
      lowers = lowerdirs(await s.mounts(`warm-top-${tag}-${j}`));
      await s.remove(`warm-top-${tag}-${j}`);
    }
    const pm: number[] = [];
    const pr: number[] = [];
    const mo: number[] = [];
    const cc0 = cpuNow(pid);
    const cw0 = nowUs();
    for (let j = 0; j < p.chainOps; j++) {
      const key = `top-${tag}-${j}`;
      const t0 = process.hrtime.bigint();
      await s.prepare(key, top);
      const tp = msSince(t0);
      const t1 = process.hrtime.bigint();
      const m = await s.mounts(key);
      const tm = msSince(t1);
      pm.push(msSince(t0));
      pr.push(tp);
      mo.push(tm);
      if (j === 0) lowers = lowerdirs(m);
      await s.remove(key);
    }
    const cw1 = nowUs();
    const cc1 = cpuNow(pid);
    if (p.depth > 0 && lowers !== p.depth) log(`warning: ${d.name}: Mounts on the chain top has ${lowers} lowerdirs, expected ${p.depth}`);
    const chain: RoundResult['chain'] = {
      depth: p.depth,
      buildSeconds,
      lowerdirs: lowers,
      prepareMounts: stats(pm),
      prepare: stats(pr),
      mounts: stats(mo),
      cpu: cpuDelta(cc0, cc1),
      windowUs: [cw0, cw1],
    };
    log(
      `  chain: ${p.depth} layers built in ${buildSeconds.toFixed(2)} s; prepare+mounts on top (${lowers} lowerdirs): ` +
        `p50 ${chain.prepareMounts.p50Ms.toFixed(2)} ms, p99 ${chain.prepareMounts.p99Ms.toFixed(2)} ms`,
    );

    // 3. Cleanup: everything, then the lease (sync: containerd collects), then wait until the directories are gone.
    const removedAtCleanup = await removeAll(s);
    await deleteLease(plain, leaseId, true);
    const settleAfterRound = await settle(d, plain, s, p.snapshotter, 0, p.settleMs);
    log(`  cleaned up ${removedAtCleanup} snapshot(s); settled in ${settleAfterRound.toFixed(2)} s (+ ${p.settleMs} ms)`);

    return { round, position, daemon: d.name, lifecycle, chain, settleAfterLifecycle, settleAfterRound, removedAtCleanup };
  } finally {
    if (client) {
      env.clients.delete(client);
      client.close();
    }
    env.clients.delete(plain);
    plain.close();
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Reporting

const f2 = (x: number) => x.toFixed(2);

interface Summary {
  version: string;
  cyclesPerSec: number;
  daemonCpuMsPerCycle: number;
  ops: Record<LifecycleOp, { meanMs: number; p50Ms: number; p99Ms: number }>;
  chainPrepareMounts: { meanMs: number; p50Ms: number; p99Ms: number };
  chainPrepare: { p50Ms: number; p99Ms: number };
  chainMounts: { p50Ms: number; p99Ms: number };
  chainBuildSeconds: number;
  chainDaemonCpuMsPerOp: number;
}

function summarize(version: string, rs: RoundResult[], p: Params): Summary {
  const med = (f: (r: RoundResult) => number) => median(rs.map(f));
  return {
    version,
    cyclesPerSec: med((r) => r.lifecycle.cyclesPerSec),
    daemonCpuMsPerCycle: med((r) => (r.lifecycle.cpu.daemon * 1000) / r.lifecycle.cycles),
    ops: Object.fromEntries(
      LIFECYCLE_OPS.map((o) => [
        o,
        { meanMs: med((r) => r.lifecycle.ops[o].meanMs), p50Ms: med((r) => r.lifecycle.ops[o].p50Ms), p99Ms: med((r) => r.lifecycle.ops[o].p99Ms) },
      ]),
    ) as Summary['ops'],
    chainPrepareMounts: {
      meanMs: med((r) => r.chain.prepareMounts.meanMs),
      p50Ms: med((r) => r.chain.prepareMounts.p50Ms),
      p99Ms: med((r) => r.chain.prepareMounts.p99Ms),
    },
    chainPrepare: { p50Ms: med((r) => r.chain.prepare.p50Ms), p99Ms: med((r) => r.chain.prepare.p99Ms) },
    chainMounts: { p50Ms: med((r) => r.chain.mounts.p50Ms), p99Ms: med((r) => r.chain.mounts.p99Ms) },
    chainBuildSeconds: med((r) => r.chain.buildSeconds),
    chainDaemonCpuMsPerOp: med((r) => (r.chain.cpu.daemon * 1000) / Math.max(1, p.chainOps)),
  };
}

interface Metric {
  label: string;
  get: (s: Summary) => number;
  higherIsBetter: boolean;
  fmt: (x: number) => string;
}

function metrics(p: Params): Metric[] {
  const ms: Metric[] = [
    { label: 'lifecycle cycles/s', get: (s) => s.cyclesPerSec, higherIsBetter: true, fmt: (x) => x.toFixed(1) },
    { label: 'lifecycle daemon CPU ms/cycle', get: (s) => s.daemonCpuMsPerCycle, higherIsBetter: false, fmt: f2 },
  ];
  for (const o of LIFECYCLE_OPS) {
    ms.push({ label: `${o} mean ms`, get: (s) => s.ops[o].meanMs, higherIsBetter: false, fmt: (x) => x.toFixed(3) });
    ms.push({ label: `${o} p50 ms`, get: (s) => s.ops[o].p50Ms, higherIsBetter: false, fmt: (x) => x.toFixed(3) });
    ms.push({ label: `${o} p99 ms`, get: (s) => s.ops[o].p99Ms, higherIsBetter: false, fmt: (x) => x.toFixed(3) });
  }
  ms.push(
    { label: `chain(${p.depth}) prepare+mounts p50 ms`, get: (s) => s.chainPrepareMounts.p50Ms, higherIsBetter: false, fmt: (x) => x.toFixed(3) },
    { label: `chain(${p.depth}) prepare+mounts p99 ms`, get: (s) => s.chainPrepareMounts.p99Ms, higherIsBetter: false, fmt: (x) => x.toFixed(3) },
    { label: `chain(${p.depth}) prepare+mounts mean ms`, get: (s) => s.chainPrepareMounts.meanMs, higherIsBetter: false, fmt: (x) => x.toFixed(3) },
    { label: `chain(${p.depth}) prepare p50 ms`, get: (s) => s.chainPrepare.p50Ms, higherIsBetter: false, fmt: (x) => x.toFixed(3) },
    { label: `chain(${p.depth}) mounts p50 ms`, get: (s) => s.chainMounts.p50Ms, higherIsBetter: false, fmt: (x) => x.toFixed(3) },
    { label: `chain(${p.depth}) daemon CPU ms/op`, get: (s) => s.chainDaemonCpuMsPerOp, higherIsBetter: false, fmt: f2 },
    { label: `chain(${p.depth}) build s (info)`, get: (s) => s.chainBuildSeconds, higherIsBetter: false, fmt: f2 },
  );
  return ms;
}

// ---------------------------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const args = parseBenchArgs(
    { ops: '500', depth: '64', 'chain-ops': '200', rounds: '3', snapshotter: 'overlayfs', warmup: '20', 'settle-ms': '1000' },
    usage,
  );
  if (!args) return;
  const { values, common } = args;
  const p: Params = {
    ops: intOption('ops', values.ops!),
    depth: intOption('depth', values.depth!),
    chainOps: intOption('chain-ops', values['chain-ops']!),
    warmup: intOption('warmup', values.warmup!, 0),
    snapshotter: values.snapshotter!,
    settleMs: intOption('settle-ms', values['settle-ms']!, 0),
  };
  const rounds = intOption('rounds', values.rounds!);
  const names = common.daemons;
  env.keepTmp = common.keep;
  if (process.getuid?.() !== 0) throw new Error('must run as root (loop mount)');

  const command = commandLine();
  const started = new Date();
  const load0 = machineInfo().loadavg;
  const { tmpRoot, img, mnt } = benchDirs(common.imageDir);

  const daemons: Daemon[] = [];
  const results: RoundResult[] = [];
  const loads: number[][] = [];
  try {
    mountLoopExt4(img, mnt, IMAGE_SIZE);
    if (names.includes('strata')) daemons.push(await startStrata(tmpRoot, mnt));
    if (names.includes('containerd')) daemons.push(await startContainerd(tmpRoot, mnt));
    for (const d of daemons) await fetchVersion(d, NAMESPACE);

    for (let r = 1; r <= rounds; r++) {
      const order = r % 2 === 1 ? daemons : [...daemons].reverse();
      for (const [i, d] of order.entries()) {
        log(`round ${r}/${rounds}: ${d.name} (${i + 1}/${order.length}); loadavg ${machineInfo().loadavg.map(f2).join(' ')}`);
        loads.push(machineInfo().loadavg);
        results.push(await measure(d, p, r, i + 1));
      }
    }
  } catch (err) {
    reportFailure();
    throw err;
  } finally {
    await cleanup();
  }

  const summary = Object.fromEntries(daemons.map((d) => [d.name, summarize(d.version, results.filter((r) => r.daemon === d.name), p)])) as Partial<
    Record<DaemonName, Summary>
  >;
  const ms = metrics(p);
  const both = summary.strata && summary.containerd;
  const ratio = both
    ? Object.fromEntries(ms.map((m) => [m.label, m.get(summary.strata!) / m.get(summary.containerd!)]))
    : undefined;
  const machine = machineInfo();

  const out = {
    benchmark: 'snapshots',
    date: started.toISOString(),
    command,
    params: { ...p, rounds },
    namespace: NAMESPACE,
    filesystem: `fresh ${IMAGE_SIZE} ext4 on a loop device backed by ${env.imageFile}`,
    machine: { ...machine, loadavgAtStart: load0, loadavgPerMeasurement: loads },
    summary,
    ratio,
    results,
  };

  const lines: string[] = [];
  lines.push(
    `Snapshots (${p.snapshotter}): lifecycle ${p.ops} x Prepare->Mounts->Commit->Stat->Remove on a committed base; ` +
      `Prepare+Mounts x ${p.chainOps} on a ${p.depth}-deep chain; ${rounds} round(s), alternating order, warmup ${p.warmup}`,
  );
  lines.push(`command: ${command}`);
  lines.push(
    `date: ${out.date}; ${machine.nproc} cores (${machine.cpu}), ${machine.memTotalMiB} MiB RAM, node ${machine.node}; ` +
      `loadavg at start ${load0.map(f2).join(' ')}, at end ${machine.loadavg.map(f2).join(' ')}`,
  );
  lines.push(`file system: ${out.filesystem}`);
  lines.push(`daemons: ${daemons.map((d) => `${d.name} ${d.version}`).join('; ')}`);
  lines.push(`settling: snapshots removed, GC forced (lease delete sync=true), snapshots/ dir polled until empty, sync, +${p.settleMs} ms`);
  lines.push('');
  const head = [`median of ${rounds} round(s)`, ...daemons.map((d) => d.name)];
  if (ratio) head.push('strata/containerd', 'verdict');
  const rows = [head];
  for (const m of ms) {
    const row = [m.label, ...daemons.map((d) => m.fmt(m.get(summary[d.name]!)))];
    if (ratio) {
      const x = ratio[m.label]!;
      const good = m.higherIsBetter ? x >= 1 : x <= 1;
      row.push(x.toFixed(2), m.label.endsWith('(info)') ? '' : good ? (m.higherIsBetter ? 'higher: ok' : 'lower: ok') : m.higherIsBetter ? 'LOWER' : 'HIGHER');
    }
    rows.push(row);
  }
  lines.push(table(rows));
  lines.push('');
  lines.push('all rounds (latencies in ms, mean over the round; CPU: seconds during the lifecycle phase, daemon / client / other):');
  lines.push(
    table([
      ['round', 'pos', 'daemon', 'cycles/s', 'prepare', 'mounts', 'commit', 'stat', 'remove', 'chain P+M p50', 'chain P+M p99', 'lifecycle CPU s d/c/o', 'settle s'],
      ...results.map((r) => [
        String(r.round),
        String(r.position),
        r.daemon,
        r.lifecycle.cyclesPerSec.toFixed(1),
        ...LIFECYCLE_OPS.map((o) => r.lifecycle.ops[o].meanMs.toFixed(3)),
        r.chain.prepareMounts.p50Ms.toFixed(3),
        r.chain.prepareMounts.p99Ms.toFixed(3),
        `${f2(r.lifecycle.cpu.daemon)} / ${f2(r.lifecycle.cpu.client)} / ${f2(r.lifecycle.cpu.other)}`,
        `${f2(r.settleAfterLifecycle)} + ${f2(r.settleAfterRound)}`,
      ]),
    ]),
  );
  const text = lines.join('\n') + '\n';
  if (common.json) {
    process.stderr.write(text);
    process.stdout.write(JSON.stringify(out, null, 2) + '\n');
  } else {
    process.stdout.write(text);
  }
}

main().then(
  () => process.exit(0),
  async (err) => {
    process.stderr.write(`snapshots: ${err instanceof Error ? err.message : String(err)}\n`);
    await cleanup().catch(() => undefined);
    process.exit(1);
  },
);
