/**
 * GC benchmark: the pause of a garbage collection over a large metadata store, Strata (stratad) against a real
 * containerd, driven by the same client code (StrataClient from src/api/client.ts), in one run.
 *
 *   node dist/bench/gc.js [--blobs 10000] [--snapshots 2000] [--depth 10] [--blob-size 512] [--rounds 3]
 *                         [--concurrency 16] [--settle-ms 1000] [--json] [--daemons strata,containerd] [--keep]
 *                         [--image-dir DIR]
 *
 * Must run as root (it loop-mounts a fresh ext4 for the daemons' roots). For each round and daemon, in a fresh
 * namespace, under one lease:
 *
 *   1. Populate: --blobs small distinct blobs through the content Write API (--concurrency streams at once);
 *      --snapshots committed overlayfs snapshots as chains of --depth (Prepare + Commit, no file writes); then
 *      what keeps half of it, shaped like images: "manifest" blobs whose containerd.io/gc.ref.content.* labels
 *      name 100 kept blobs each and whose containerd.io/gc.ref.snapshot.overlayfs/* labels name the tops of the
 *      kept chains, one "index" blob referencing the manifests, and an image record whose target is the index.
 *   2. Wait until the daemon is quiet (its own automatic collections, triggered by the writes, are over): one
 *      forced collection (a throwaway lease deleted with sync=true), then --settle-ms.
 *   3. Measure: Delete(lease, sync=true). containerd runs its collection synchronously then (ScheduleAndWait),
 *      and so does Strata. Reported: (a) the wall time of that call, (b) the collection's pause: Strata's
 *      pauseMs from the GC service's Metrics (lock time: mark + record sweep), containerd's `d` from its debug
 *      log line `msg="garbage collected" d=...` (gc/scheduler: stats.Elapsed() = the metadata phase under its
 *      write lock, the same span). The benchmark then checks both daemons kept exactly the kept half.
 *   4. A second forced collection with nothing to remove: the steady-state pause (mark over what is left).
 *   5. Cleanup: the image deleted with sync=true (everything goes), settle.
 *
 * containerd runs with `[debug] level = "debug"` here (the only way to read its pause); Strata at warn. The
 * order of the daemons alternates from one round to the next.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { StrataClient } from '../src/api/clients/strata.js';
import { parseGoDuration } from '../src/gc/scheduler.js';
import {
  benchDirs,
  cleanup,
  commandLine,
  cpuSeconds,
  env,
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
  type DaemonName,
} from './lib.js';

installCleanupHandlers();

const IMAGE_SIZE = '4G';
const SNAPSHOTTER = 'overlayfs';
const REFS_PER_MANIFEST = 100;

const usage =
  'usage: node dist/bench/gc.js [--blobs 10000] [--snapshots 2000] [--depth 10] [--blob-size 512] [--rounds 3] ' +
  '[--concurrency 16] [--settle-ms 1000] [--json] [--daemons strata,containerd] [--keep] [--image-dir DIR]';

interface Params {
  blobs: number;
  snapshots: number;
  depth: number;
  blobSize: number;
  concurrency: number;
  settleMs: number;
}

const msSince = (t0: bigint) => Number(process.hrtime.bigint() - t0) / 1e6;
const f1 = (x: number) => x.toFixed(1);
const f2 = (x: number) => x.toFixed(2);

/** The `d` of every `msg="garbage collected"` line of containerd's log after byte `from`, in ms. */
function containerdPauses(logPath: string, from: number): { pauses: number[]; end: number } {
  const text = readFileSync(logPath).subarray(from).toString('utf8');
  const pauses: number[] = [];
  for (const line of text.split('\n')) {
    if (!line.includes('msg="garbage collected"')) continue;
    const m = /\bd="?([0-9.]+(?:ns|us|µs|μs|ms|s|m|h)+[0-9.a-zµμ]*)"?/.exec(line);
    if (m) pauses.push(parseGoDuration(m[1]!));
  }
  return { pauses, end: from + Buffer.byteLength(text) };
}

const logSize = (d: Daemon) => readFileSync(d.child.logPath).length;

/** Runs `n` tasks with at most `limit` in flight. */
async function pool(n: number, limit: number, task: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < n) await task(next++);
  };
  await Promise.all(Array.from({ length: Math.min(limit, n) }, worker));
}

async function forceGc(c: StrataClient): Promise<number> {
  const id = `bench-gc-${randomBytes(4).toString('hex')}`;
  await c.call(c.leases, c.leases.create, { id, labels: {} });
  const t0 = process.hrtime.bigint();
  await c.call(c.leases, c.leases.delete, { id, sync: true });
  return msSince(t0);
}

async function countContent(c: StrataClient): Promise<number> {
  const rs = await c.collect(c.content.list({ filters: [] }, c.metadata()));
  return rs.reduce((a, r) => a + r.info.length, 0);
}

async function countSnapshots(c: StrataClient): Promise<number> {
  const rs = await c.collect(c.snapshots.list({ snapshotter: SNAPSHOTTER, filters: [] }, c.metadata()));
  return rs.reduce((a, r) => a + r.info.length, 0);
}

interface PauseReading {
  /** The collection's pause (lock time), ms. */
  pauseMs: number;
  /** How many collections ran during the call (expected: 1). */
  runs: number;
}

/** Reads the pause of the collection(s) that ran since `mark` (a Metrics response for Strata, a log offset for containerd). */
class PauseProbe {
  private runs0 = 0;
  private logFrom = 0;
  constructor(
    readonly d: Daemon,
    readonly c: StrataClient,
  ) {}
  async mark(): Promise<void> {
    if (this.d.name === 'strata') this.runs0 = (await this.c.call(this.c.gc, this.c.gc.metrics, {})).runs;
    else this.logFrom = logSize(this.d);
  }
  async read(): Promise<PauseReading> {
    if (this.d.name === 'strata') {
      const m = await this.c.call(this.c.gc, this.c.gc.metrics, {});
      return { pauseMs: m.pauseMsLast, runs: m.runs - this.runs0 };
    }
    // containerd writes the line after the collection, before answering; give the log a moment to reach the file.
    for (let i = 0; i < 50; i++) {
      const { pauses } = containerdPauses(this.d.child.logPath, this.logFrom);
      if (pauses.length > 0) return { pauseMs: pauses.at(-1)!, runs: pauses.length };
      await sleep(20);
    }
    return { pauseMs: NaN, runs: 0 };
  }
}

interface RoundResult {
  round: number;
  position: number;
  daemon: DaemonName;
  populateSeconds: number;
  /** Objects in the namespace before the measured delete. */
  before: { content: number; snapshots: number };
  after: { content: number; snapshots: number };
  /** The measured Delete(lease, sync=true). */
  syncDeleteMs: number;
  pauseMs: number;
  runsDuringDelete: number;
  /** Daemon CPU seconds during the delete. */
  daemonCpuS: number;
  /** A forced collection afterwards with nothing to remove. */
  steadySyncMs: number;
  steadyPauseMs: number;
}

async function measure(d: Daemon, p: Params, round: number, position: number): Promise<RoundResult> {
  const ns = `bench-gc-r${round}`;
  const leaseId = `bench-gc-lease-r${round}`;
  const plain = new StrataClient(d.socket, { namespace: ns });
  env.clients.add(plain);
  let leased: StrataClient | undefined;
  try {
    await plain.call(plain.leases, plain.leases.create, { id: leaseId, labels: {} });
    leased = plain.with({ lease: leaseId });
    env.clients.add(leased);
    const lc = leased;

    // 1. Populate.
    const p0 = process.hrtime.bigint();
    const keptBlobs = Math.floor(p.blobs / 2);
    const digests: string[] = new Array<string>(p.blobs);
    const salt = randomBytes(8).toString('hex');
    await pool(p.blobs, p.concurrency, async (i) => {
      const data = Buffer.alloc(p.blobSize, 0x20);
      data.write(`${d.name} ${salt} round ${round} blob ${i}\n`);
      const { digest } = await lc.writeBlob([data], { ref: `bench-${salt}-${i}`, total: data.length });
      digests[i] = digest;
    });
    const chains = Math.ceil(p.snapshots / p.depth);
    const keptChains = Math.floor(chains / 2);
    const tops: string[] = new Array<string>(chains);
    await pool(chains, Math.min(8, p.concurrency), async (j) => {
      let parent = '';
      const depth = Math.min(p.depth, p.snapshots - j * p.depth);
      for (let k = 0; k < depth; k++) {
        const name = `chain-${salt}-${j}-${k}`;
        await lc.call(lc.snapshots, lc.snapshots.prepare, { snapshotter: SNAPSHOTTER, key: `${name}-active`, parent, labels: {} });
        await lc.call(lc.snapshots, lc.snapshots.commit, { parent: '', snapshotter: SNAPSHOTTER, name, key: `${name}-active`, labels: {} });
        parent = name;
      }
      tops[j] = parent;
    });
    // What keeps half: manifests -> kept blobs and kept chain tops; index -> manifests; image -> index.
    const manifests: string[] = [];
    const manifestCount = Math.max(1, Math.ceil(keptBlobs / REFS_PER_MANIFEST));
    for (let m = 0; m < manifestCount; m++) {
      const labels: Record<string, string> = {};
      for (let i = m * REFS_PER_MANIFEST; i < Math.min(keptBlobs, (m + 1) * REFS_PER_MANIFEST); i++) labels[`containerd.io/gc.ref.content.l.${i}`] = digests[i]!;
      for (let j = m; j < keptChains; j += manifestCount) labels[`containerd.io/gc.ref.snapshot.${SNAPSHOTTER}/${j}`] = tops[j]!;
      const body = Buffer.from(JSON.stringify({ manifest: m, salt, refs: Object.keys(labels).length }));
      manifests.push((await lc.writeBlob([body], { ref: `bench-${salt}-manifest-${m}`, total: body.length, labels })).digest);
    }
    const indexLabels: Record<string, string> = {};
    manifests.forEach((m, i) => (indexLabels[`containerd.io/gc.ref.content.m.${i}`] = m));
    const indexBody = Buffer.from(JSON.stringify({ index: salt }));
    const index = (await lc.writeBlob([indexBody], { ref: `bench-${salt}-index`, total: indexBody.length, labels: indexLabels })).digest;
    const imageName = `bench.local/gc:${salt}`;
    await plain.call(plain.images, plain.images.create, {
      image: {
        name: imageName,
        labels: {},
        target: { mediaType: 'application/vnd.oci.image.index.v1+json', digest: index, size: indexBody.length, annotations: {} },
        createdAt: undefined,
        updatedAt: undefined,
      },
    });
    const populateSeconds = msSince(p0) / 1000;
    log(`  populated ${p.blobs} blobs + ${manifestCount + 1} referencing blobs, ${p.snapshots} snapshots (${chains} chains) in ${f1(populateSeconds)} s`);

    // 2. Quiet: the daemon's own collections triggered by the writes are over.
    await forceGc(plain);
    await sleep(p.settleMs);
    const before = { content: await countContent(plain), snapshots: await countSnapshots(plain) };

    // 3. The measured synchronous delete.
    const probe = new PauseProbe(d, plain);
    await probe.mark();
    const cpu0 = cpuSeconds(d.child.proc.pid);
    const t0 = process.hrtime.bigint();
    await plain.call(plain.leases, plain.leases.delete, { id: leaseId, sync: true });
    const syncDeleteMs = msSince(t0);
    const daemonCpuS = cpuSeconds(d.child.proc.pid) - cpu0;
    const reading = await probe.read();
    const after = { content: await countContent(plain), snapshots: await countSnapshots(plain) };
    const expectContent = keptBlobs + manifestCount + 1;
    const expectSnapshots = Math.min(p.snapshots, keptChains * p.depth);
    if (after.content !== expectContent || after.snapshots !== expectSnapshots) {
      log(`warning: ${d.name} kept ${after.content} blobs and ${after.snapshots} snapshots, expected ${expectContent} and ${expectSnapshots}`);
    }
    log(
      `  sync lease delete: ${f1(syncDeleteMs)} ms wall, pause ${f2(reading.pauseMs)} ms (${reading.runs} run(s)); ` +
        `content ${before.content} -> ${after.content}, snapshots ${before.snapshots} -> ${after.snapshots}`,
    );

    // 4. Steady state: a collection with nothing to remove.
    await sleep(p.settleMs);
    await probe.mark();
    const steadySyncMs = await forceGc(plain);
    const steady = await probe.read();
    log(`  steady collection: ${f1(steadySyncMs)} ms wall, pause ${f2(steady.pauseMs)} ms`);

    // 5. Cleanup: everything goes with the image.
    await plain.call(plain.images, plain.images.delete, { name: imageName, sync: true });
    const left = { content: await countContent(plain), snapshots: await countSnapshots(plain) };
    if (left.content !== 0 || left.snapshots !== 0) log(`warning: ${d.name} still has ${left.content} blobs and ${left.snapshots} snapshots after cleanup`);
    await sleep(p.settleMs);

    return {
      round,
      position,
      daemon: d.name,
      populateSeconds,
      before,
      after,
      syncDeleteMs,
      pauseMs: reading.pauseMs,
      runsDuringDelete: reading.runs,
      daemonCpuS,
      steadySyncMs,
      steadyPauseMs: steady.pauseMs,
    };
  } finally {
    if (leased) {
      env.clients.delete(leased);
      leased.close();
    }
    env.clients.delete(plain);
    plain.close();
  }
}

async function main(): Promise<void> {
  const args = parseBenchArgs(
    { blobs: '10000', snapshots: '2000', depth: '10', 'blob-size': '512', rounds: '3', concurrency: '16', 'settle-ms': '1000' },
    usage,
  );
  if (!args) return;
  const { values, common } = args;
  const p: Params = {
    blobs: intOption('blobs', values.blobs!, 2),
    snapshots: intOption('snapshots', values.snapshots!, 2),
    depth: intOption('depth', values.depth!),
    blobSize: intOption('blob-size', values['blob-size']!, 64),
    concurrency: intOption('concurrency', values.concurrency!),
    settleMs: intOption('settle-ms', values['settle-ms']!, 0),
  };
  const rounds = intOption('rounds', values.rounds!);
  const names = common.daemons;

  const command = commandLine();
  const started = new Date();
  const load0 = machineInfo().loadavg;
  const { tmpRoot, img, mnt } = benchDirs(common.imageDir);

  const daemons: Daemon[] = [];
  const results: RoundResult[] = [];
  try {
    mountLoopExt4(img, mnt, IMAGE_SIZE);
    if (names.includes('strata')) daemons.push(await startStrata(tmpRoot, mnt));
    if (names.includes('containerd')) daemons.push(await startContainerd(tmpRoot, mnt, 'debug')); // the GC pause is only in its debug log
    for (const d of daemons) await fetchVersion(d, 'bench');

    for (let r = 1; r <= rounds; r++) {
      const order = r % 2 === 1 ? daemons : [...daemons].reverse();
      for (const [i, d] of order.entries()) {
        log(`round ${r}/${rounds}: ${d.name} (${i + 1}/${order.length}); loadavg ${machineInfo().loadavg.map(f2).join(' ')}`);
        results.push(await measure(d, p, r, i + 1));
      }
    }
  } catch (err) {
    reportFailure();
    throw err;
  } finally {
    await cleanup();
  }

  const med = (name: DaemonName, f: (r: RoundResult) => number) => median(results.filter((r) => r.daemon === name).map(f));
  const metrics: { label: string; get: (r: RoundResult) => number; fmt: (x: number) => string }[] = [
    { label: 'sync lease delete, wall ms', get: (r) => r.syncDeleteMs, fmt: f1 },
    { label: 'GC pause ms (lock time)', get: (r) => r.pauseMs, fmt: f2 },
    { label: 'daemon CPU s during the delete', get: (r) => r.daemonCpuS, fmt: f2 },
    { label: 'steady GC (nothing to remove), wall ms', get: (r) => r.steadySyncMs, fmt: f1 },
    { label: 'steady GC pause ms', get: (r) => r.steadyPauseMs, fmt: f2 },
    { label: 'populate s (info)', get: (r) => r.populateSeconds, fmt: f1 },
  ];
  const summary = Object.fromEntries(daemons.map((d) => [d.name, { version: d.version, ...Object.fromEntries(metrics.map((m) => [m.label, med(d.name, m.get)])) }]));
  const machine = machineInfo();
  const out = {
    benchmark: 'gc',
    date: started.toISOString(),
    command,
    params: { ...p, rounds },
    filesystem: `fresh ${IMAGE_SIZE} ext4 on a loop device backed by ${env.imageFile}`,
    machine: { ...machine, loadavgAtStart: load0 },
    summary,
    results,
  };

  const lines: string[] = [];
  lines.push(
    `GC pause: ${p.blobs} blobs (${p.blobSize} B) + ${p.snapshots} ${SNAPSHOTTER} snapshots (chains of ${p.depth}) under a lease, half kept through ` +
      `image -> index -> manifests -> gc.ref labels; Delete(lease, sync=true) measured; ${rounds} round(s), alternating order`,
  );
  lines.push(`command: ${command}`);
  lines.push(
    `date: ${out.date}; ${machine.nproc} cores (${machine.cpu}), ${machine.memTotalMiB} MiB RAM, node ${machine.node}; ` +
      `loadavg at start ${load0.map(f2).join(' ')}, at end ${machine.loadavg.map(f2).join(' ')}`,
  );
  lines.push(`file system: ${out.filesystem}`);
  lines.push(`daemons: ${daemons.map((d) => `${d.name} ${d.version}`).join('; ')}`);
  lines.push('');
  const head = [`median of ${rounds} round(s)`, ...daemons.map((d) => d.name)];
  const both = daemons.length === 2;
  if (both) head.push('strata/containerd');
  lines.push(
    table([
      head,
      ...metrics.map((m) => {
        const row = [m.label, ...daemons.map((d) => m.fmt(med(d.name, m.get)))];
        if (both) row.push(f2(med('strata', m.get) / med('containerd', m.get)));
        return row;
      }),
    ]),
  );
  lines.push('');
  lines.push('all rounds:');
  lines.push(
    table([
      ['round', 'pos', 'daemon', 'populate s', 'content before/after', 'snapshots before/after', 'delete ms', 'pause ms', 'runs', 'CPU s', 'steady ms', 'steady pause ms'],
      ...results.map((r) => [
        String(r.round),
        String(r.position),
        r.daemon,
        f1(r.populateSeconds),
        `${r.before.content}/${r.after.content}`,
        `${r.before.snapshots}/${r.after.snapshots}`,
        f1(r.syncDeleteMs),
        f2(r.pauseMs),
        String(r.runsDuringDelete),
        f2(r.daemonCpuS),
        f1(r.steadySyncMs),
        f2(r.steadyPauseMs),
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
    process.stderr.write(`gc: ${err instanceof Error ? err.message : String(err)}\n`);
    await cleanup().catch(() => undefined);
    process.exit(1);
  },
);
