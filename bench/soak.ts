/**
 * Soak (issue 14): a real stratad under mixed work from concurrent clients for N minutes, watching whether
 * anything it holds grows without bound. Not a CI test: run by hand (bench/run-soak.sh), figures in
 * bench/RESULTS.md.
 *
 *   node dist/bench/soak.js [--minutes 30] [--warmup 5] [--sample-seconds 60] [--keep] [--image-dir DIR]
 *
 * Must run as root (loop-mounted ext4 for stratad's root, overlay mounts, runc). Setup: a docker-registry on
 * loopback with five images built here (a busybox layer shared by all, four of them with a random data layer
 * of 2-8 MiB on top), stratad on a fresh 4 GiB loop ext4 with its defaults (GC scheduler on), and the busybox
 * image pulled into namespace soak-run. Then these clients run at once, each in a loop:
 *
 *   strata-pull x2   `strata image pull` of a random image into soak-pull (in-daemon pulls)
 *   ctr-pull         `ctr image pull` of a random image into soak-pull (client-side pulls)
 *   delete-gc        every 10 s `strata image rm` of a random image of soak-pull; every third time `strata gc`
 *   run              `strata run --rm busybox echo hi` and `ctr run --rm` alternately (runc tasks), and every
 *                    fifth time a detached `sleep` with `task exec`, `task rm -f`, `container rm`
 *   snapshots        through the API (soak-snap), under a lease made for each round and deleted after it: a
 *                    3-deep chain prepared, mounted, written, committed, a view of its top, all removed; plus a
 *                    256 KiB blob written and deleted
 *
 * Sampled at start (idle), every --sample-seconds under load, and at two quiesced points: "baseline" at the end
 * of the warm-up and "end" after the last minute. At a quiesced point every client is paused between
 * operations, the images of soak-pull are removed, `strata gc` runs, and after 5 s stratad is measured: RSS
 * (VmRSS), its V8 heap in use and external memory (/v1/metrics), open file descriptors (/proc/<pid>/fd), mounts below its root or state (/proc/self/mountinfo), disk
 * use of its root (du), overlay snapshot directories on disk, the objects of every namespace through the API,
 * and `prune --dry-run` (data without records). The work then resumes.
 *
 * It fails (exit 1) if any operation failed, if an operation kind never ran, or if the end is not within
 * these bounds of the baseline (both quiesced, so the same images and no work in flight):
 *   RSS                 end <= baseline + max(64 MiB, 50 %)
 *   JS heap in use      end <= baseline + max(8 MiB, 25 %), each read right after a full GC (asked of V8
 *                       through the inspector, which stratad opens on a loopback port for the soak)
 *   threads             end <= baseline + 4
 *   file descriptors    end <= baseline + 10
 *   mounts              end <= baseline
 *   disk use of root    end <= baseline + max(32 MiB, 10 %)      (SQLite files do not shrink)
 *   snapshot dirs       end <= baseline
 *   processes, task bundles and runc state, container cgroups: end <= baseline
 *   objects             end <= baseline for images, blobs, snapshots, containers, tasks, leases, ingests
 *   orphans             prune --dry-run finds nothing at the end
 * and, over the samples under load after the warm-up (4 or more): the highest RSS of the second half at most
 * 25 % + 32 MiB above the highest of the first half (a steady climb fails it; a spike after warm-up does not).
 * A table and a JSON summary (the last line) go to stdout, progress to stderr.
 */
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync, readFileSync, statfsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { get as httpGet } from 'node:http';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { WebSocket } from 'undici';
import { StrataClient } from '../src/api/clients/strata.js';
import { mountFromPb } from '../src/api/convert.js';
import { withTempMount } from '../src/mount/index.js';
import { run as exec, type RunResult } from '../test/helpers/ctr.js';
import { buildImage, busyboxPlatform, type BuiltImage } from '../test/helpers/images.js';
import { startRegistry, stopAllRegistries, type StartedRegistry } from '../test/helpers/registry.js';
import { cleanupRuntime } from '../test/helpers/runtime.js';
import {
  benchDirs,
  cleanup,
  commandLine,
  env,
  installCleanupHandlers,
  log,
  machineInfo,
  mountLoopExt4,
  repoRoot,
  reportFailure,
  startStrata,
  stopChild,
  table,
  type Daemon,
} from './lib.js';

const USAGE = 'usage: node dist/bench/soak.js [--minutes 30] [--warmup 5] [--sample-seconds 60] [--keep] [--image-dir DIR]';
const MiB = 1 << 20;
const PULL_NS = 'soak-pull';
const RUN_NS = 'soak-run';
const SNAP_NS = 'soak-snap';
const OP_TIMEOUT_MS = 180_000;

// ---------------------------------------------------------------------------------------------------------------
// Operations: counted, timed, failures kept.

interface OpStats {
  ok: number;
  failed: number;
  ms: number[];
}
const ops = new Map<string, OpStats>();
const failures: { at: string; op: string; error: string }[] = [];
let t0 = Date.now();
const elapsed = () => `${((Date.now() - t0) / 60_000).toFixed(2)} min`;

async function op<T>(name: string, fn: () => Promise<T>): Promise<T | undefined> {
  const s = ops.get(name) ?? { ok: 0, failed: 0, ms: [] };
  ops.set(name, s);
  const start = performance.now();
  let timer: NodeJS.Timeout | undefined;
  try {
    const r = await Promise.race([
      fn(),
      new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`timed out after ${OP_TIMEOUT_MS} ms`)), OP_TIMEOUT_MS))),
    ]);
    s.ok++;
    s.ms.push(performance.now() - start);
    return r;
  } catch (err) {
    s.failed++;
    const error = (err instanceof Error ? err.message : String(err)).slice(0, 2000);
    failures.push({ at: elapsed(), op: name, error });
    log(`FAILED ${name} at ${elapsed()}: ${error}`);
    return undefined;
  } finally {
    clearTimeout(timer);
  }
}

function must(r: RunResult, what: string): RunResult {
  if (r.code !== 0) throw new Error(`${what} exited with ${r.code}: ${(r.stderr + r.stdout).trim().slice(-1500)}`);
  return r;
}

// ---------------------------------------------------------------------------------------------------------------
// Clients pause between operations at a quiesced point.

let stopping = false;
let pauseRequested = false;
let resume: Promise<void> = Promise.resolve();
let release: () => void = () => undefined;
const busy = new Set<string>();

/** Called by a worker between operations: waits while paused; false when the soak is over. */
async function between(worker: string): Promise<boolean> {
  busy.delete(worker);
  while (pauseRequested && !stopping) await resume;
  if (stopping) return false;
  busy.add(worker);
  return true;
}

async function pauseAll(): Promise<void> {
  pauseRequested = true;
  resume = new Promise((r) => (release = r));
  while (busy.size > 0) await sleep(100);
}

function resumeAll(): void {
  pauseRequested = false;
  release();
}

// ---------------------------------------------------------------------------------------------------------------
// Measurements.

interface Objects {
  namespaces: number;
  images: number;
  blobs: number;
  snapshots: number;
  containers: number;
  tasks: number;
  leases: number;
  ingests: number;
}

interface Sample {
  minute: number;
  phase: 'start' | 'load' | 'baseline' | 'end';
  rssMiB: number;
  /** V8 heap in use and external memory, from stratad's /v1/metrics; at quiesced points right after a full GC. */
  heapUsedMiB: number;
  externalMiB: number;
  /** Threads of stratad (/proc/<pid>/status): the main thread, libuv's pool, V8's, the differ's workers. */
  threads: number;
  fds: number;
  mounts: number;
  rootDiskMiB: number;
  fsUsedMiB: number;
  snapshotDirs: number;
  /** Processes other than stratad whose command line names the soak's temp dir (task monitors, spares, CLIs). */
  procs: number;
  /** Task bundles and runc state directories of soak-run. */
  bundles: number;
  /** Container cgroups left under /soak-run (memory hierarchy). */
  cgroups: number;
  objects: Objects;
  orphans?: number;
  opsOk: number;
  opsFailed: number;
}

function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

function threads(pid: number): number {
  const m = /Threads:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : NaN;
}

/** GET over TCP (`host:port`) or a unix socket; resolves to the body (or, with `drain`, its length). */
function fetchText(target: { host?: string; port?: number; socketPath?: string }, path: string, drain = false): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = httpGet({ ...target, path, timeout: 120_000 }, (res) => {
      let body = '';
      let n = 0;
      res.on('data', (d: Buffer) => (drain ? (n += d.length) : (body += d.toString())));
      res.on('end', () => (res.statusCode === 200 ? resolve(drain ? String(n) : body) : reject(new Error(`GET ${path}: ${res.statusCode}`))));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${path}: timed out`)));
    req.on('error', reject);
  });
}

function metric(text: string, name: string): number {
  const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(text);
  return m ? Number(m[1]) : NaN;
}

async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  const port = (srv.address() as AddressInfo).port;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

const fds = (pid: number) => readdirSync(`/proc/${pid}/fd`).length;

/** Mount points at or below any of `dirs` (stratad shares our mount namespace). */
function mountsBelow(dirs: string[]): number {
  let n = 0;
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const mp = line.split(' ')[4];
    if (mp && dirs.some((d) => mp === d || mp.startsWith(d + '/'))) n++;
  }
  return n;
}

async function du(dir: string): Promise<number> {
  const r = await exec('du', ['-s', '--block-size=1', dir], { timeoutMs: 120_000 });
  return Number(r.stdout.split(/\s/)[0]) / MiB;
}

function fsUsedMiB(dir: string): number {
  const s = statfsSync(dir);
  return ((s.blocks - s.bfree) * s.bsize) / MiB;
}

function countDir(dir: string): number {
  try {
    return readdirSync(dir).length;
  } catch {
    return 0;
  }
}

function procsNaming(path: string, except: number[]): number {
  let n = 0;
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p) || except.includes(Number(p))) continue;
    try {
      if (readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(path)) n++;
    } catch {
      // gone
    }
  }
  return n;
}

function subdirs(dir: string): number {
  try {
    return readdirSync(dir, { withFileTypes: true }).filter((e) => e.isDirectory()).length;
  } catch {
    return 0;
  }
}

async function objects(c: StrataClient): Promise<Objects> {
  const o: Objects = { namespaces: 0, images: 0, blobs: 0, snapshots: 0, containers: 0, tasks: 0, leases: 0, ingests: 0 };
  const { namespaces } = await c.call(c.namespaces, c.namespaces.list, { filter: '' });
  o.namespaces = namespaces.length;
  for (const ns of namespaces) {
    const n = c.with({ namespace: ns.name });
    try {
      o.images += (await n.call(n.images, n.images.list, { filters: [] })).images.length;
      o.blobs += (await n.collect(n.content.list({ filters: [] }, n.metadata()))).reduce((a, b) => a + b.info.length, 0);
      o.ingests += (await n.call(n.content, n.content.listStatuses, { filters: [] })).statuses.length;
      o.snapshots += (await n.collect(n.snapshots.list({ snapshotter: 'overlayfs', filters: [] }, n.metadata()))).reduce((a, b) => a + b.info.length, 0);
      o.containers += (await n.call(n.containers, n.containers.list, { filters: [] })).containers.length;
      o.tasks += (await n.call(n.tasks, n.tasks.list, { filter: '' })).tasks.length;
      o.leases += (await n.call(n.leases, n.leases.list, { filters: [] })).leases.length;
    } finally {
      n.close();
    }
  }
  return o;
}

// ---------------------------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      minutes: { type: 'string', default: '30' },
      warmup: { type: 'string', default: '5' },
      'sample-seconds': { type: 'string', default: '60' },
      keep: { type: 'boolean', default: false },
      'image-dir': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE + '\n');
    return;
  }
  const minutes = Number(values.minutes);
  const warmup = Number(values.warmup);
  const sampleSeconds = Number(values['sample-seconds']);
  if (!(minutes > 0) || !(warmup > 0) || warmup >= minutes || !(sampleSeconds > 0)) throw new Error(`invalid options\n${USAGE}`);
  env.keepTmp = values.keep === true;

  installCleanupHandlers();
  const { tmpRoot, img, mnt } = benchDirs(values['image-dir']);
  mountLoopExt4(img, mnt, '4G');

  // The images and the registry.
  const base = await busyboxPlatform({ compression: 'gzip' });
  const images: { ref: string; image: BuiltImage }[] = [];
  const reg: StartedRegistry = await startRegistry();
  const busybox = await buildImage(tmpRoot, { basename: 'busybox', platforms: [base] });
  await reg.pushOciLayout(busybox.layoutDir, 'soak/busybox:v1');
  images.push({ ref: `${reg.host}/soak/busybox:v1`, image: busybox });
  for (let i = 1; i <= 4; i++) {
    const image = await buildImage(tmpRoot, {
      basename: `app${i}`,
      platforms: [
        {
          ...base,
          layers: [
            ...base.layers,
            { compression: 'gzip', entries: [{ path: 'data', type: 'dir' }, { path: `data/app${i}`, content: randomBytes(2 * i * MiB) }] },
          ],
        },
      ],
    });
    await reg.pushOciLayout(image.layoutDir, `soak/app${i}:v1`);
    images.push({ ref: `${reg.host}/soak/app${i}:v1`, image });
  }
  log(`registry ${reg.host} with ${images.length} images`);

  // The metrics endpoint (heap figures), and V8's inspector on loopback so that a quiesced point can ask for a
  // full collection (HeapProfiler.collectGarbage) before reading the heap. (A heap snapshot would collect too,
  // but leaves tens of MiB of malloc'd memory in the RSS being watched.)
  const metricsPort = await freePort();
  const inspectPort = await freePort();
  process.env.STRATA_BENCH_STRATAD_NODE_ARGS = `${process.env.STRATA_BENCH_STRATAD_NODE_ARGS ?? ''} --inspect=127.0.0.1:${inspectPort}`;
  const d: Daemon = await startStrata(tmpRoot, mnt, { config: `[metrics]\n  address = "127.0.0.1:${metricsPort}"` });
  const collectGarbage = async () => {
    const targets = JSON.parse(await fetchText({ host: '127.0.0.1', port: inspectPort }, '/json/list')) as { webSocketDebuggerUrl: string }[];
    const ws = new WebSocket(targets[0]!.webSocketDebuggerUrl);
    try {
      await new Promise<void>((resolve, reject) => {
        ws.onerror = () => reject(new Error('inspector connection failed'));
        ws.onopen = () => ws.send(JSON.stringify({ id: 1, method: 'HeapProfiler.collectGarbage' }));
        ws.onmessage = (e) => {
          if ((JSON.parse(String(e.data)) as { id?: number }).id === 1) resolve();
        };
      });
    } finally {
      ws.close();
    }
  };
  const heap = async () => {
    const text = await fetchText({ host: '127.0.0.1', port: metricsPort }, '/v1/metrics');
    return { heapUsedMiB: metric(text, 'nodejs_heap_size_used_bytes') / MiB, externalMiB: metric(text, 'nodejs_external_memory_bytes') / MiB };
  };
  const pid = d.child.proc.pid!;
  const state = join(tmpRoot, 'strata', 'state');
  const strataBin = join(repoRoot, 'bin', 'strata');
  const strata = (ns: string, args: string[]) => exec(process.execPath, [strataBin, '--address', d.socket, '--namespace', ns, ...args], { timeoutMs: OP_TIMEOUT_MS });
  const ctr = (ns: string, args: string[]) => exec('ctr', ['--address', d.socket, '--namespace', ns, ...args], { timeoutMs: OP_TIMEOUT_MS });
  const api = new StrataClient(d.socket, { namespace: 'default' });
  env.clients.add(api);
  const busyboxRef = images[0]!.ref;
  must(await strata(RUN_NS, ['image', 'pull', '--plain-http', '--quiet', busyboxRef]), 'setup pull');

  const samples: Sample[] = [];
  const snapshotsDir = join(d.root, 'io.containerd.snapshotter.v1.overlayfs', 'snapshots');
  const sample = async (phase: Sample['phase'], orphans?: number): Promise<Sample> => {
    const all = [...ops.values()];
    const rss = rssMiB(pid);
    // At a quiesced point, a full collection before reading the heap figures.
    if (phase !== 'load') await collectGarbage();
    const s: Sample = {
      minute: Number(((Date.now() - t0) / 60_000).toFixed(2)),
      phase,
      rssMiB: rss,
      ...(await heap()),
      threads: threads(pid),
      fds: fds(pid),
      mounts: mountsBelow([d.root, state]),
      rootDiskMiB: await du(d.root),
      fsUsedMiB: fsUsedMiB(mnt),
      snapshotDirs: countDir(snapshotsDir),
      procs: procsNaming(tmpRoot, [pid, process.pid]),
      bundles: countDir(join(state, 'io.containerd.runtime.v2.task', RUN_NS)) + countDir(join(state, 'runc', RUN_NS)),
      cgroups: subdirs(join('/sys/fs/cgroup/memory', RUN_NS)),
      objects: await objects(api),
      ...(orphans !== undefined ? { orphans } : {}),
      opsOk: all.reduce((a, o) => a + o.ok, 0),
      opsFailed: all.reduce((a, o) => a + o.failed, 0),
    };
    samples.push(s);
    log(`sample ${phase} @${s.minute} min: rss ${s.rssMiB.toFixed(1)} MiB, heap ${s.heapUsedMiB.toFixed(1)} MiB, external ${s.externalMiB.toFixed(1)} MiB, fds ${s.fds}, mounts ${s.mounts}, root ${s.rootDiskMiB.toFixed(1)} MiB, procs ${s.procs}, bundles ${s.bundles}, cgroups ${s.cgroups}, ` + `objects ${JSON.stringify(s.objects)}, ops ${s.opsOk} ok / ${s.opsFailed} failed`);
    return s;
  };

  /** Pauses every client, removes soak-pull's images, collects, lets stratad settle, measures, resumes. */
  const quiesced = async (phase: 'baseline' | 'end'): Promise<Sample> => {
    log(`quiescing (${phase})`);
    await pauseAll();
    const pull = api.with({ namespace: PULL_NS });
    try {
      const { images: left } = await pull.call(pull.images, pull.images.list, { filters: [] });
      for (const im of left) await op('quiesce-image-rm', async () => must(await strata(PULL_NS, ['image', 'rm', im.name]), 'image rm'));
    } finally {
      pull.close();
    }
    await op('quiesce-gc', async () => must(await strata('default', ['gc']), 'gc'));
    await sleep(5000);
    const pr = await api.call(api.gc, api.gc.prune, { dryRun: true });
    const orphans = pr.blobs.length + pr.ingests.length + pr.snapshots.length + pr.contentWithoutData.length + pr.snapshotsWithoutData.length;
    if (orphans > 0) log(`prune --dry-run (${phase}): ${JSON.stringify(pr)}`);
    const s = await sample(phase, orphans);
    if (phase === 'baseline') resumeAll();
    return s;
  };

  t0 = Date.now();
  await sample('start');
  const deadline = t0 + minutes * 60_000;
  const pick = () => images[Math.floor(Math.random() * images.length)]!;

  // --- the clients ---
  const workers: Promise<void>[] = [];
  const worker = (name: string, body: (i: number) => Promise<void>) =>
    workers.push(
      (async () => {
        for (let i = 0; await between(name); i++) await body(i);
      })(),
    );

  for (const w of ['strata-pull-1', 'strata-pull-2']) {
    worker(w, async () => {
      const { ref, image } = pick();
      await op('strata image pull', async () => {
        const r = must(await strata(PULL_NS, ['image', 'pull', '--plain-http', '--quiet', ref]), 'strata image pull');
        if (r.stdout.trim() !== `${ref} ${image.target.digest}`) throw new Error(`strata image pull printed ${JSON.stringify(r.stdout)}`);
      });
    });
  }
  worker('ctr-pull', async () => {
    await op('ctr image pull', async () => must(await ctr(PULL_NS, ['image', 'pull', '--plain-http', pick().ref]), 'ctr image pull'));
  });
  worker('delete-gc', async (i) => {
    await sleep(10_000);
    if (stopping || pauseRequested) return;
    await op('strata image rm', async () => {
      const r = await strata(PULL_NS, ['image', 'rm', pick().ref]);
      // An image not pulled (or removed) yet is fine.
      if (r.code !== 0 && !/not found/.test(r.stderr)) must(r, 'strata image rm');
    });
    if (i % 3 === 2) await op('strata gc', async () => must(await strata('default', ['gc']), 'strata gc'));
  });
  worker('run', async (i) => {
    const id = `soak-${i}`;
    if (i % 5 === 4) {
      await op('detached task cycle', async () => {
        must(await strata(RUN_NS, ['run', '-d', busyboxRef, id, 'sleep', '300']), 'strata run -d');
        const e = must(await strata(RUN_NS, ['task', 'exec', '--exec-id', 'e1', id, 'echo', 'inside']), 'strata task exec');
        if (e.stdout.trim() !== 'inside') throw new Error(`task exec printed ${JSON.stringify(e.stdout)}`);
        must(await strata(RUN_NS, ['task', 'rm', '-f', id]), 'strata task rm -f');
        must(await strata(RUN_NS, ['container', 'rm', id]), 'strata container rm');
      });
    } else if (i % 2 === 0) {
      await op('strata run --rm', async () => {
        const r = must(await strata(RUN_NS, ['run', '--rm', busyboxRef, id, 'echo', 'hi']), 'strata run --rm');
        if (r.stdout.trim() !== 'hi') throw new Error(`strata run printed ${JSON.stringify(r.stdout)}`);
      });
    } else {
      await op('ctr run --rm', async () => {
        const r = must(await ctr(RUN_NS, ['run', '--rm', busyboxRef, id, 'echo', 'hi']), 'ctr run --rm');
        if (r.stdout.trim() !== 'hi') throw new Error(`ctr run printed ${JSON.stringify(r.stdout)}`);
      });
    }
  });
  const snapNs = api.with({ namespace: SNAP_NS });
  env.clients.add(snapNs);
  worker('snapshots', async (i) => {
    const sn = 'overlayfs';
    // Under a lease of its own, as a client must (containerd's GC, like Strata's, takes snapshots and blobs
    // that nothing references, active ones included); the lease goes at the end, and what it held with it.
    const lease = `soak-lease-${i}`;
    await op('lease create', async () => snapNs.call(snapNs.leases, snapNs.leases.create, { id: lease, labels: {} }));
    const snap = snapNs.with({ namespace: SNAP_NS, lease });
    await op('snapshot chain', async () => {
      let parent = '';
      const names: string[] = [];
      for (let j = 0; j < 3; j++) {
        const key = `active-${i}-${j}`;
        const { mounts } = await snap.call(snap.snapshots, snap.snapshots.prepare, { snapshotter: sn, key, parent, labels: {} });
        await withTempMount(mounts.map(mountFromPb), async (root) => {
          await writeFile(join(root, `file-${j}`), randomBytes(64 * 1024));
        });
        const name = `committed-${i}-${j}`;
        await snap.call(snap.snapshots, snap.snapshots.commit, { snapshotter: sn, name, key, labels: {}, parent: '' });
        names.push(name);
        parent = name;
      }
      const view = `view-${i}`;
      await snap.call(snap.snapshots, snap.snapshots.view, { snapshotter: sn, key: view, parent, labels: {} });
      await snap.call(snap.snapshots, snap.snapshots.remove, { snapshotter: sn, key: view });
      for (const name of names.reverse()) await snap.call(snap.snapshots, snap.snapshots.remove, { snapshotter: sn, key: name });
    });
    await op('blob write+delete', async () => {
      const data = randomBytes(256 * 1024);
      const digest = `sha256:${createHash('sha256').update(data).digest('hex')}`;
      await snap.writeBlob([data], { ref: `soak-blob-${i}`, expected: digest, total: data.length });
      await snap.call(snap.content, snap.content.delete, { digest });
    });
    snap.close();
    await op('lease delete', async () => snapNs.call(snapNs.leases, snapNs.leases.delete, { id: lease, sync: false }));
  });

  // --- sampling ---
  const warmupAt = t0 + warmup * 60_000;
  let baselineDone = false;
  let nextSample = t0 + sampleSeconds * 1000;
  while (Date.now() < deadline) {
    const next = Math.min(nextSample, deadline, baselineDone ? Infinity : warmupAt);
    await sleep(Math.max(0, next - Date.now()));
    if (Date.now() >= deadline) break;
    if (!baselineDone && Date.now() >= warmupAt) {
      await quiesced('baseline');
      baselineDone = true;
      while (nextSample <= Date.now()) nextSample += sampleSeconds * 1000;
      continue;
    }
    if (Date.now() >= nextSample) {
      await sample('load');
      // Samples that fell due during a quiesced point are skipped, not taken late.
      while (nextSample <= Date.now()) nextSample += sampleSeconds * 1000;
    }
  }
  const end = await quiesced('end');
  stopping = true;
  release();
  await Promise.all(workers);

  // --- verdict ---
  const baseline = samples.find((s) => s.phase === 'baseline')!;
  const criteria: { name: string; baseline: number; end: number; limit: number; ok: boolean }[] = [];
  const check = (name: string, b: number, e: number, limit: number) => criteria.push({ name, baseline: b, end: e, limit, ok: e <= limit });
  check('RSS MiB', baseline.rssMiB, end.rssMiB, baseline.rssMiB + Math.max(64, baseline.rssMiB * 0.5));
  check('JS heap used after a full GC, MiB', baseline.heapUsedMiB, end.heapUsedMiB, baseline.heapUsedMiB + Math.max(8, baseline.heapUsedMiB * 0.25));
  check('threads', baseline.threads, end.threads, baseline.threads + 4);
  check('file descriptors', baseline.fds, end.fds, baseline.fds + 10);
  check('mounts below root/state', baseline.mounts, end.mounts, baseline.mounts);
  check('root disk use MiB', baseline.rootDiskMiB, end.rootDiskMiB, baseline.rootDiskMiB + Math.max(32, baseline.rootDiskMiB * 0.1));
  check('overlay snapshot dirs', baseline.snapshotDirs, end.snapshotDirs, baseline.snapshotDirs);
  check('processes naming the soak dir', baseline.procs, end.procs, baseline.procs);
  check('task bundles + runc dirs', baseline.bundles, end.bundles, baseline.bundles);
  check('container cgroups', baseline.cgroups, end.cgroups, baseline.cgroups);
  for (const k of ['images', 'blobs', 'snapshots', 'containers', 'tasks', 'leases', 'ingests'] as const) {
    check(`objects: ${k}`, baseline.objects[k], end.objects[k], baseline.objects[k]);
  }
  check('orphans (prune --dry-run)', baseline.orphans ?? 0, end.orphans ?? 0, 0);
  const load = samples.filter((s) => s.phase === 'load' && s.minute >= warmup);
  if (load.length >= 4) {
    const half = Math.floor(load.length / 2);
    const first = Math.max(...load.slice(0, half).map((s) => s.rssMiB));
    const second = Math.max(...load.slice(half).map((s) => s.rssMiB));
    check('RSS MiB under load: 2nd half max vs 1st half max', first, second, first * 1.25 + 32);
  }
  const kinds = ['strata image pull', 'ctr image pull', 'strata image rm', 'strata gc', 'strata run --rm', 'ctr run --rm', 'detached task cycle', 'snapshot chain', 'blob write+delete'];
  const missing = kinds.filter((k) => (ops.get(k)?.ok ?? 0) === 0);
  const opsFailed = [...ops.values()].reduce((a, o) => a + o.failed, 0);
  const pass = criteria.every((c) => c.ok) && opsFailed === 0 && missing.length === 0;

  // --- report ---
  const fmt = (x: number, digits = 1) => x.toFixed(digits);
  const rows = [
    ['min', 'phase', 'RSS MiB', 'heap MiB', 'ext MiB', 'threads', 'fds', 'mounts', 'root du MiB', 'fs used MiB', 'snap dirs', 'procs', 'bundles', 'cgroups', 'images', 'blobs', 'snapshots', 'containers', 'tasks', 'leases', 'ingests', 'orphans', 'ops ok', 'failed'],
    ...samples.map((s) => [
      fmt(s.minute),
      s.phase,
      fmt(s.rssMiB),
      fmt(s.heapUsedMiB),
      fmt(s.externalMiB),
      String(s.threads),
      String(s.fds),
      String(s.mounts),
      fmt(s.rootDiskMiB),
      fmt(s.fsUsedMiB),
      String(s.snapshotDirs),
      String(s.procs),
      String(s.bundles),
      String(s.cgroups),
      String(s.objects.images),
      String(s.objects.blobs),
      String(s.objects.snapshots),
      String(s.objects.containers),
      String(s.objects.tasks),
      String(s.objects.leases),
      String(s.objects.ingests),
      s.orphans === undefined ? '' : String(s.orphans),
      String(s.opsOk),
      String(s.opsFailed),
    ]),
  ];
  const pct = (xs: number[], p: number) => {
    const s = [...xs].sort((a, b) => a - b);
    return s.length ? s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]! : NaN;
  };
  const opRows = [
    ['operation', 'ok', 'failed', 'p50 ms', 'p90 ms', 'max ms'],
    ...[...ops.entries()].map(([k, o]) => [k, String(o.ok), String(o.failed), fmt(pct(o.ms, 50), 0), fmt(pct(o.ms, 90), 0), fmt(Math.max(...o.ms, 0), 0)]),
  ];
  const critRows = [
    ['criterion', 'baseline', 'end', 'limit', 'ok'],
    ...criteria.map((c) => [c.name, fmt(c.baseline), fmt(c.end), fmt(c.limit), c.ok ? 'yes' : 'NO']),
  ];
  const summary = {
    minutes,
    warmup,
    sampleSeconds,
    pass,
    machine: machineInfo(),
    criteria,
    missingOperations: missing,
    ops: Object.fromEntries([...ops.entries()].map(([k, o]) => [k, { ok: o.ok, failed: o.failed, p50ms: Math.round(pct(o.ms, 50)), p90ms: Math.round(pct(o.ms, 90)) }])),
    failures: failures.slice(0, 50),
    samples,
  };
  process.stdout.write(
    `${commandLine()}\n${JSON.stringify(machineInfo())}\n\n${table(rows)}\n\n${table(opRows)}\n\n${table(critRows)}\n\n` +
      `${pass ? 'PASS' : 'FAIL'}${missing.length ? ` (never ran: ${missing.join(', ')})` : ''}${opsFailed ? ` (${opsFailed} operations failed)` : ''}\n` +
      `${JSON.stringify(summary)}\n`,
  );
  if (!pass) process.exitCode = 1;

  // Tasks outlive stratad by design: none should be left, but make sure before the loop fs goes.
  for (const c of env.clients) c.close();
  env.clients.clear();
  await stopChild(d.child, 15_000);
  await cleanupRuntime({ taskRoot: join(state, 'io.containerd.runtime.v2.task'), runcRoot: join(state, 'runc'), mountsUnder: tmpRoot, cgroupNamespace: RUN_NS });
}

main()
  .catch((err: unknown) => {
    reportFailure();
    log(`failed: ${err instanceof Error ? err.stack : String(err)}`);
    process.exitCode = 1;
  })
  .finally(async () => {
    stopping = true;
    release();
    await stopAllRegistries();
    await cleanup();
  });
