/**
 * Multipart vs single-stream fetch of one big blob (default 1 GiB) from Debian's docker-registry on loopback,
 * through Strata's registry client into a real content store (fetchBlob: the code a daemon pull runs, with
 * the metadata database in front of the local store), so the time covers the download, the writer's hashing
 * and the ingest's commit (fsync, rename, verify).
 *
 *   npx tsc -p tsconfig.json && node dist/bench/multipart.js [--size 1GiB] [--pairs 3] [--part-size 8MiB]
 *                                                          [--parallel 3] [--dir DIR] [--json]
 *                                                          [--connection-limit 40MB]
 *
 * The blob (AES-CTR keystream bytes, incompressible) is pushed once with Strata's pusher. Then, per pair, both
 * modes run one after the other, the order reversed every other pair: each on an empty content store in a
 * fresh directory (removed afterwards), with its own resolver (connections not reused across runs). Multipart:
 * `--part-size` parts (containerd's concurrent_layer_fetch_buffer), `--parallel` in flight (containerd's
 * max_concurrent_downloads, which is also the connection limit in both modes). The registry's copy of the
 * blob stays in the page cache for every run (no cache drop: the machine is shared), so both modes read it
 * from memory on the registry side and write it to disk on ours. Before the pairs: `sync` (the push's dirty
 * pages) and one untimed single-stream fetch.
 *
 * `--connection-limit R` puts a TCP proxy (a child process: this file with `--serve-throttle`) between client
 * and registry that sends at most R bytes/s down each connection: a far registry, where one TCP connection
 * cannot fill the link (window / RTT), which is the case multipart fetch is for. Without it the client talks
 * to the registry directly and one connection on loopback is never the limit.
 */
import { spawnSync } from 'node:child_process';
import { createCipheriv, createHash } from 'node:crypto';
import { createReadStream, createWriteStream, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer, type AddressInfo } from 'node:net';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { openLocalContentStore } from '../src/content/local.js';
import type { Descriptor } from '../src/core/descriptor.js';
import { fetchBlob } from '../src/images/fetch.js';
import { Budget } from '../src/remotes/multipart.js';
import { createResolver } from '../src/remotes/resolver.js';
import { MetadataStore } from '../src/metadata/index.js';
import { cpuSeconds, formatBytes, log, MiB, parseSize, startChild, stopChild, systemBusySeconds, clientCpuSeconds, type Child } from './lib.js';

const { values: args } = parseArgs({
  options: {
    size: { type: 'string', default: '1GiB' },
    pairs: { type: 'string', default: '3' },
    'part-size': { type: 'string', default: '8MiB' },
    parallel: { type: 'string', default: '3' },
    dir: { type: 'string', default: '/var/tmp' },
    json: { type: 'boolean', default: false },
    'connection-limit': { type: 'string' },
    'serve-throttle': { type: 'string' },
  },
});
const SIZE = parseSize(args.size!);
const PAIRS = Number(args.pairs);
const PART = parseSize(args['part-size']!);
const PARALLEL = Number(args.parallel);
const LIMIT = args['connection-limit'] ? parseSize(args['connection-limit']) : 0;

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    s.once('connect', () => (s.destroy(), resolve(true)));
    s.once('error', () => resolve(false));
  });
}

/** The throttling proxy's process: `--serve-throttle PORT,TARGETHOST:PORT,BYTES_PER_S`. */
function serveThrottle(spec: string): void {
  const [port, target, rate] = spec.split(',');
  const [thost, tport] = target!.split(':');
  const perSecond = Number(rate);
  createServer((client) => {
    const up = connect(Number(tport), thost!);
    client.pipe(up);
    // Token bucket per connection, refilled every 10 ms.
    let tokens = perSecond / 100;
    let last = Date.now();
    up.on('data', (chunk: Buffer) => {
      const now = Date.now();
      tokens = Math.min(perSecond / 10, tokens + ((now - last) / 1000) * perSecond);
      last = now;
      tokens -= chunk.length;
      client.write(chunk);
      if (tokens < 0) {
        up.pause();
        setTimeout(() => up.resume(), Math.ceil((-tokens / perSecond) * 1000));
      }
    });
    const close = () => {
      client.destroy();
      up.destroy();
    };
    client.on('error', close).on('close', close);
    up.on('error', close).on('close', close);
  }).listen(Number(port), '127.0.0.1');
}

async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((res) => srv.listen(0, '127.0.0.1', () => res()));
  const port = (srv.address() as AddressInfo).port;
  await new Promise<void>((res) => srv.close(() => res()));
  return port;
}

async function startRegistry(tmp: string): Promise<{ host: string; child: Child }> {
  const host = `127.0.0.1:${await freePort()}`;
  const config = join(tmp, 'registry.yml');
  writeFileSync(
    config,
    ['version: 0.1', 'log:', '  level: warn', '  accesslog:', '    disabled: true', 'storage:', '  filesystem:', `    rootdirectory: ${join(tmp, 'storage')}`,
      '  maintenance:', '    uploadpurging:', '      enabled: false', 'http:', `  addr: ${host}`, '  secret: strata-bench-multipart', ''].join('\n'),
  );
  const child = startChild('docker-registry', '/usr/bin/docker-registry', ['serve', config], join(tmp, 'registry.log'));
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (child.proc.exitCode !== null) throw new Error(`docker-registry exited:\n${readFileSync(child.logPath, 'utf8')}`);
    try {
      const r = await fetch(`http://${host}/v2/`);
      await r.arrayBuffer();
      if (r.status === 200) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error('docker-registry did not answer');
    await sleep(50);
  }
  return { host, child };
}

/** Writes `size` incompressible bytes (an AES-CTR keystream) to `path`; returns the sha256 digest. */
async function makeBlob(path: string, size: number): Promise<string> {
  const cipher = createCipheriv('aes-128-ctr', Buffer.alloc(16, 7), Buffer.alloc(16, 0));
  const h = createHash('sha256');
  const out = createWriteStream(path);
  const zero = Buffer.alloc(4 * MiB);
  for (let left = size; left > 0; left -= zero.length) {
    const c = cipher.update(left >= zero.length ? zero : zero.subarray(0, left));
    h.update(c);
    if (!out.write(c)) await new Promise<void>((r) => out.once('drain', () => r()));
  }
  await new Promise<void>((res, rej) => out.end((err?: Error | null) => (err ? rej(err) : res())));
  return `sha256:${h.digest('hex')}`;
}

let registryPid: number | undefined;

interface Run {
  pair: number;
  pos: number;
  mode: 'multipart' | 'single';
  seconds: number;
  mbps: number;
  cpuSelf: number;
  cpuRegistry: number;
  cpuOther: number;
}

async function main(): Promise<void> {
  const tmp = join(args.dir!, `strata-bench-multipart-${process.pid}`);
  mkdirSync(tmp, { recursive: true });
  const reg = await startRegistry(tmp);
  registryPid = reg.child.proc.pid;
  let throttle: Child | undefined;
  try {
    log(`making a ${formatBytes(SIZE)} blob`);
    const file = join(tmp, 'blob');
    const digest = await makeBlob(file, SIZE);
    const desc: Descriptor = { mediaType: 'application/vnd.oci.image.layer.v1.tar', digest, size: SIZE };
    const pusher = createResolver({ maxConcurrent: 1 });
    log(`pushing it to ${reg.host}`);
    await pusher.pusher(`${reg.host}/bench/big:v1`).push(desc, async () => createReadStream(file));
    await pusher.close();
    rmSync(file);
    let host = reg.host;
    if (LIMIT) {
      const port = await freePort();
      throttle = startChild('throttle', process.execPath, [process.argv[1]!, '--serve-throttle', `${port},${reg.host},${LIMIT}`], join(tmp, 'throttle.log'));
      host = `127.0.0.1:${port}`;
      for (let i = 0; !(await canConnect(port)); i++) {
        if (i > 200) throw new Error('throttling proxy did not start');
        await sleep(25);
      }
      log(`through a proxy sending at most ${(LIMIT / 1e6).toFixed(1)} MB/s per connection`);
    }
    const ref = `${host}/bench/big:v1`;
    // The push leaves a GiB of dirty pages (the registry's copy): write them out, then one untimed fetch, so the
    // first timed run does not pay for the writeback or a cold registry.
    spawnSync('sync');
    await timedFetch(tmp, ref, desc, 'single', 0, 0);

    const runs: Run[] = [];
    for (let pair = 1; pair <= PAIRS; pair++) {
      const order: Run['mode'][] = pair % 2 === 1 ? ['multipart', 'single'] : ['single', 'multipart'];
      for (const [i, mode] of order.entries()) {
        const run = await timedFetch(tmp, ref, desc, mode, pair, i + 1);
        runs.push(run);
        log(`pair ${pair} ${mode}: ${run.seconds.toFixed(2)} s, ${run.mbps.toFixed(1)} MB/s (load ${loadavg()[0]!.toFixed(1)})`);
      }
    }
    report(runs);
  } finally {
    if (throttle) await stopChild(throttle, 5000);
    await stopChild(reg.child, 5000);
    rmSync(tmp, { recursive: true, force: true });
  }
}

async function timedFetch(tmp: string, ref: string, desc: Descriptor, mode: Run['mode'], pair: number, pos: number): Promise<Run> {
  const root = join(tmp, `store-${pair}-${pos}-${mode}`);
  const md = MetadataStore.open(join(root, 'meta.db'), await openLocalContentStore(join(root, 'content')));
  md.namespaces.create('bench');
  const content = md.content.bind({ namespace: 'bench' });
  const resolver = createResolver({
    maxConcurrent: PARALLEL,
    ...(mode === 'multipart' ? { multipart: { partSize: PART, parallelism: PARALLEL, threshold: 64 * MiB, budget: new Budget(PART * PARALLEL) } } : {}),
  });
  const [self0, reg0, sys0] = [clientCpuSeconds(), cpuSeconds(registryPid), systemBusySeconds()];
  const t0 = process.hrtime.bigint();
  await fetchBlob(content, resolver.fetcher(ref), desc, 'layer');
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const [self1, reg1, sys1] = [clientCpuSeconds(), cpuSeconds(registryPid), systemBusySeconds()];
  if ((await content.info(desc.digest)).size !== desc.size) throw new Error('blob not committed');
  await resolver.close();
  md.close();
  rmSync(root, { recursive: true, force: true });
  return {
    pair, pos, mode, seconds, mbps: desc.size / 1e6 / seconds,
    cpuSelf: self1 - self0, cpuRegistry: reg1 - reg0, cpuOther: sys1 - sys0 - (self1 - self0) - (reg1 - reg0),
  };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function report(runs: Run[]): void {
  if (args.json) {
    process.stdout.write(JSON.stringify({ size: SIZE, part: PART, parallel: PARALLEL, runs }, null, 2) + '\n');
    return;
  }
  const lines = [
    `Fetch of a ${formatBytes(SIZE)} blob from docker-registry on loopback${LIMIT ? ` (each connection limited to ${(LIMIT / 1e6).toFixed(1)} MB/s)` : ''} into a content store; parts ${formatBytes(PART)}, ${PARALLEL} in flight; load average now ${loadavg().map((l) => l.toFixed(1)).join(' ')}`,
    'pair  pos  mode        seconds    MB/s   CPU s self / registry / other',
    ...runs.map((r) => `${String(r.pair).padStart(4)}  ${String(r.pos).padStart(3)}  ${r.mode.padEnd(10)} ${r.seconds.toFixed(2).padStart(8)} ${r.mbps.toFixed(1).padStart(7)}   ${r.cpuSelf.toFixed(2)} / ${r.cpuRegistry.toFixed(2)} / ${r.cpuOther.toFixed(2)}`),
  ];
  const med = (m: Run['mode']) => median(runs.filter((r) => r.mode === m).map((r) => r.seconds));
  const [mp, single] = [med('multipart'), med('single')];
  const ratios = [...new Set(runs.map((r) => r.pair))].map((p) => {
    const a = runs.find((r) => r.pair === p && r.mode === 'single')!.seconds;
    const b = runs.find((r) => r.pair === p && r.mode === 'multipart')!.seconds;
    return a / b;
  });
  lines.push(
    `median seconds: multipart ${mp.toFixed(2)} (${(SIZE / 1e6 / mp).toFixed(1)} MB/s), single ${single.toFixed(2)} (${(SIZE / 1e6 / single).toFixed(1)} MB/s); single/multipart ${(single / mp).toFixed(2)}x; per pair ${ratios.map((x) => x.toFixed(2)).join(', ')}`,
  );
  process.stdout.write(lines.join('\n') + '\n');
}

if (args['serve-throttle']) serveThrottle(args['serve-throttle']);
else main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`);
  process.exit(1);
});
