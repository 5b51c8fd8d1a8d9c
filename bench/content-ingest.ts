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
import { createHash, randomFillSync } from 'node:crypto';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { StrataClient } from '../src/api/clients/strata.js';
import {
  cleanup,
  clientCpuSeconds,
  commandLine,
  cpuSeconds,
  dropCaches,
  env,
  f1,
  fetchVersion,
  formatBytes,
  installCleanupHandlers,
  log,
  machineInfo,
  median,
  MiB,
  mountLoopExt4,
  parseSize,
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

export { parseSize };

installCleanupHandlers();

// ---------------------------------------------------------------------------------------------------------------
// Parameters

const CHUNK = MiB;
const POOL_SIZE = 64 * MiB;
const NAMESPACE = 'bench';
const IMAGE_SIZE = '8G';

const usage = `usage: node dist/bench/content-ingest.js [--size 1GiB] [--rounds 3] [--json] [--daemons strata,containerd] [--keep] [--image-dir DIR]`;

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
  env.clients.add(client);
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
    env.clients.delete(client);
    client.close();
  }
}

// ---------------------------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const args = parseBenchArgs({ size: '1GiB', rounds: '3' }, usage);
  if (!args) return;
  const { values, common } = args;
  const size = parseSize(values.size!);
  const rounds = intOption('rounds', values.rounds!);
  const names = common.daemons;
  env.keepTmp = common.keep;
  if (process.getuid?.() !== 0) throw new Error('must run as root (loop mount, drop_caches)');

  const command = commandLine();
  const started = new Date();
  const { tmpRoot, img, mnt } = benchDirs(common.imageDir);

  const daemons: Daemon[] = [];
  const results: RoundResult[] = [];
  try {
    // 1. A fresh ext4 on a loop device for both roots (inode tables and journal initialised now, not lazily).
    mountLoopExt4(img, mnt, IMAGE_SIZE);

    // 2-3. The daemons.
    if (names.includes('strata')) daemons.push(await startStrata(tmpRoot, mnt));
    if (names.includes('containerd')) daemons.push(await startContainerd(tmpRoot, mnt));
    for (const d of daemons) await fetchVersion(d, NAMESPACE);

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
    reportFailure();
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
  const machine = machineInfo();

  const out = {
    benchmark: 'content-ingest',
    date: started.toISOString(),
    command,
    size,
    rounds,
    chunk: CHUNK,
    namespace: NAMESPACE,
    filesystem: `fresh ${IMAGE_SIZE} ext4 on a loop device backed by ${env.imageFile}`,
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
    process.stderr.write(`content-ingest: ${err instanceof Error ? err.message : String(err)}\n`);
    await cleanup().catch(() => undefined);
    process.exit(1);
  },
);
