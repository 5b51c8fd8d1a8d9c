/**
 * Concurrent pulls of one multi-layer image against one real stratad, by in-daemon pulls (`strata image
 * pull`: the transfer service), by client-side pulls (the unmodified `ctr image pull`: fetch through the
 * content API with its own ingest refs, unpack through diff Apply on its own extraction snapshots) and by a
 * mix of both, started at the same moment. The registry is a real docker-registry on loopback behind a small
 * proxy that counts blob GETs and relays blob bodies slowly, so every client is running while the big layer
 * downloads. For each mix: every client succeeds; the registry serves each blob once in total; the image is
 * unpacked into one committed snapshot chain with no extraction snapshot, ingest or lease left behind; and
 * the unpacked files are the layers' files.
 *
 * What "shared" means for each kind of client is in docs/images.md ("Concurrent pulls across clients").
 */
import type * as grpc from '@grpc/grpc-js';
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mountFromPb } from '../../src/api/convert.js';
import { SnapshotCommit, SnapshotPrepare } from '../../src/api/gen/containerd/events/snapshot.js';
import type { Envelope } from '../../src/api/gen/containerd/services/events/v1/events.js';
import { Kind } from '../../src/api/gen/containerd/services/snapshots/v1/snapshots.js';
import { chainIDs } from '../../src/images/manifest.js';
import { withTempMount } from '../../src/mount/index.js';
import { run, type RunResult } from '../helpers/ctr.js';
import { goBinary, runGo } from '../helpers/go.js';
import { startCountingProxy, type CountingProxy } from '../helpers/counting-proxy.js';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { buildOciLayout, makeLayerTar, sha256, type OciLayout } from '../helpers/oci-layout.js';
import { STRATA } from '../helpers/paths.js';
import { startRegistry, stopAllRegistries, type StartedRegistry } from '../helpers/registry.js';
import { tempDir, type TempDir } from '../helpers/temp.js';
import { listContent, listSnapshots } from '../helpers/transfer.js';

const NS = 'pulls';
/** Blob bodies relayed at 8 MiB/s: the 16 MiB layer takes about 2 s, long enough for every client to join. */
const RATE = 8 << 20;

let tmp: TempDir;
let reg: StartedRegistry;
let proxy: CountingProxy;
let image: OciLayout;
let diffIDs: string[];
/** Each layer's files, path → content. */
let files: Record<string, Buffer>;

beforeAll(async () => {
  tmp = await tempDir('strata-concurrent-pulls-');
  const layers: Array<Record<string, Buffer>> = [
    { 'base/big': randomBytes(16 << 20) },
    { 'mid/data': randomBytes(4 << 20), 'mid/note': Buffer.from('middle layer\n') },
    { 'top/small': randomBytes(4096) },
  ];
  files = Object.assign({}, ...layers);
  const tars = await Promise.all(layers.map((l) => makeLayerTar(l)));
  diffIDs = tars.map((t) => sha256(t));
  image = await buildOciLayout(join(tmp.path, 'image'), { layers: tars, gzip: true, refName: 'v1' });
  reg = await startRegistry();
  await reg.pushOciLayout(image.dir, 'concurrent/app:v1');
  proxy = await startCountingProxy(reg.host, { blobBytesPerSecond: RATE });
}, 120_000);

afterAll(async () => {
  await stopAll();
  await proxy?.stop();
  await stopAllRegistries();
  await tmp?.cleanup();
});

const strataPull = (d: StartedDaemon, ref: string): Promise<RunResult> =>
  run(STRATA, ['--address', d.address, '--namespace', NS, 'image', 'pull', '--plain-http', '--quiet', ref], { timeoutMs: 120_000 });

const ctrPull = (d: StartedDaemon, ref: string): Promise<RunResult> =>
  run('ctr', ['--address', d.address, '--namespace', NS, 'image', 'pull', '--plain-http', ref], { timeoutMs: 120_000 });

/** containerd's Go client library's Pull with unpack (test/go/.../interop/pull), as nerdctl and k3s pull. */
const goPull = async (d: StartedDaemon, ref: string): Promise<RunResult> => {
  const r = await runGo(await goBinary('pull'), ['-address', d.address, '-namespace', NS, '-ref', ref], { timeoutMs: 120_000 });
  return { code: r.code ?? -1, stdout: r.stdout, stderr: r.stderr } as RunResult;
};

/** The calls of `service`'s `method` the daemon's debug log shows, and those that failed, by gRPC code. */
function calls(d: StartedDaemon, service: string, method: string): { started: number; failed: Record<string, number> } {
  let started = 0;
  const failed: Record<string, number> = {};
  for (const line of d.logs.split('\n')) {
    if (!line.includes(`"${method}"`)) continue;
    let rec: { msg?: string; service?: string; method?: string; code?: number };
    try {
      rec = JSON.parse(line);
    } catch {
      continue;
    }
    if (rec.service !== service || rec.method !== method) continue;
    if (rec.msg === 'call') started++;
    else if (rec.msg === 'call failed') failed[String(rec.code)] = (failed[String(rec.code)] ?? 0) + 1;
  }
  return { started, failed };
}

/** Records the snapshot events of NS from now on (live once this resolves). */
async function recordSnapshotEvents(d: StartedDaemon) {
  const c = d.client(NS);
  const received: Envelope[] = [];
  const call = c.events.subscribe({ filters: [`namespace==${NS}`] }, c.metadata()) as grpc.ClientReadableStream<Envelope>;
  call.on('data', (e: Envelope) => received.push(e));
  call.on('error', () => undefined);
  for (let i = 0; !received.some((e) => e.topic === '/probe'); i++) {
    if (i > 200) throw new Error('event subscription never became live');
    await c.call(c.events, c.events.publish, { topic: '/probe', event: { typeUrl: 'probe', value: Buffer.alloc(0) } });
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    /** Names committed (one entry per commit) and extraction keys prepared. */
    stop() {
      call.cancel();
      c.close();
      const commits = received.filter((e) => e.topic === '/snapshot/commit').map((e) => SnapshotCommit.decode(e.event!.value).name);
      const prepares = received.filter((e) => e.topic === '/snapshot/prepare').map((e) => SnapshotPrepare.decode(e.event!.value).key);
      return { commits, extractions: prepares.filter((k) => k.startsWith('extract-')).length };
    },
  };
}

/**
 * Starts `strataN` strata and `ctrN` ctr pulls of the image at once against a fresh stratad, and checks
 * everything the file comment promises. Returns the daemon's Apply and snapshot Commit counts.
 */
async function pullTogether(strataN: number, ctrN: number, goN = 0) {
  const d = await startDaemon({ logLevel: 'debug' });
  const ref = `${proxy.host}/concurrent/app:v1`;
  const before = proxy.blobGets();
  const events = await recordSnapshotEvents(d);
  const runs = await Promise.all([
    ...Array.from({ length: strataN }, () => strataPull(d, ref).then((r) => ({ who: 'strata', r }))),
    ...Array.from({ length: ctrN }, () => ctrPull(d, ref).then((r) => ({ who: 'ctr', r }))),
    ...Array.from({ length: goN }, () => goPull(d, ref).then((r) => ({ who: 'go', r }))),
  ]);

  // Every client succeeds.
  for (const { who, r } of runs) expect({ who, code: r.code }, r.stderr + r.stdout).toEqual({ who, code: 0 });
  for (const { r } of runs.filter((x) => x.who === 'strata')) expect(r.stdout.trim()).toBe(`${ref} ${image.manifest.digest}`);

  // The registry served each blob (config and layers) once in total; HEADs are not counted.
  const after = proxy.blobGets();
  const wanted = [image.config.digest, ...image.layers.map((l) => l.digest)];
  const served = Object.fromEntries(wanted.map((dg) => [dg, (after.get(dg) ?? 0) - (before.get(dg) ?? 0)]));
  expect(served).toEqual(Object.fromEntries(wanted.map((dg) => [dg, 1])));

  const c = d.client(NS);
  // One copy of each blob, no ingest left.
  expect((await listContent(c)).map((i) => i.digest).sort()).toEqual([image.manifest.digest, ...wanted].sort());
  const { statuses } = await c.call(c.content, c.content.listStatuses, { filters: [] });
  expect(statuses).toEqual([]);

  // Unpacked once: exactly the chain, committed, and no extraction snapshot left active.
  const chain = chainIDs(diffIDs);
  const snaps = (await listSnapshots(c)).map((s) => ({ name: s.name, parent: s.parent, committed: s.kind === Kind.COMMITTED }));
  expect(snaps.sort((a, b) => a.name.localeCompare(b.name))).toEqual(
    chain.map((name, i) => ({ name, parent: i === 0 ? '' : chain[i - 1], committed: true })).sort((a, b) => a.name.localeCompare(b.name)),
  );

  // The image record, and no lease left behind by any client.
  const { image: rec } = await c.call(c.images, c.images.get, { name: ref });
  expect(rec?.target?.digest).toBe(image.manifest.digest);
  const { leases } = await c.call(c.leases, c.leases.list, { filters: [] });
  expect(leases).toEqual([]);

  // The data: a view of the top of the chain holds every layer's files, byte for byte.
  const key = `verify-${Date.now()}`;
  const { mounts } = await c.call(c.snapshots, c.snapshots.view, { snapshotter: 'overlayfs', key, parent: chain.at(-1)!, labels: {} });
  try {
    await withTempMount(mounts.map(mountFromPb), async (root) => {
      for (const [path, want] of Object.entries(files)) {
        const got = await readFile(join(root, path));
        expect(sha256(got), path).toBe(sha256(want));
      }
    });
  } finally {
    await c.call(c.snapshots, c.snapshots.remove, { snapshotter: 'overlayfs', key });
  }

  const { commits, extractions } = events.stop();
  // Each layer committed once, whoever extracted it (the daemon's own commits publish this event too).
  expect(commits.sort()).toEqual([...chain].sort());
  const apply = calls(d, 'diff', 'Apply');
  const commit = calls(d, 'snapshots', 'Commit');
  await d.stop();
  if (process.env.STRATA_TEST_VERBOSE) console.info(`${strataN} strata + ${ctrN} ctr: ${JSON.stringify({ apply, commit, extractions })}`);
  return { apply, commit, extractions };
}

describe('concurrent pulls of one image against one stratad', () => {
  it('four strata image pulls fetch each blob once, all succeed, and extract each layer once in the daemon', async () => {
    const { apply, commit, extractions } = await pullTogether(4, 0);
    // One extraction snapshot per layer in all: the daemon's pulls wait for each other per chainID.
    expect(extractions).toBe(image.layers.length);
    // In-daemon pulls go through no Apply or Commit call: the transfer service unpacks itself, once per layer.
    expect(apply.started).toBe(0);
    expect(commit.started).toBe(0);
  }, 240_000);

  it('four ctr image pulls fetch each blob once, all succeed, and commit each layer once', async () => {
    const { commit } = await pullTogether(0, 4);
    // ctr 1.6's pull unpacks through rootfs.ApplyLayer, which labels nothing and takes ALREADY_EXISTS from
    // Prepare as "try another key": its extractions cannot be shared (docs/images.md). Each layer is still
    // committed once; a ctr that extracted a layer another one had committed first was told ALREADY_EXISTS (6)
    // and dropped its extraction (the snapshot checks above found none left).
    const layers = image.layers.length;
    const refused = commit.failed['6'] ?? 0;
    expect(commit.started - refused).toBe(layers);
    expect(Object.keys(commit.failed).filter((code) => code !== '6')).toEqual([]);
  }, 240_000);

  it('four Go client pulls fetch each blob once, all succeed, and extract and commit each layer once', async () => {
    const { apply, commit, extractions } = await pullTogether(0, 0, 4);
    // The Go client's unpacker labels its extraction with containerd.io/snapshot.ref: a Prepare that finds
    // another client extracting the same layer waits for it and is told ALREADY_EXISTS, which the unpacker
    // takes as "unpacked" (the remote-snapshot handshake), so each layer is extracted and committed once.
    const layers = image.layers.length;
    expect(extractions).toBe(layers);
    expect(apply.started).toBe(layers);
    expect(commit.started).toBe(layers);
    expect(commit.failed).toEqual({});
  }, 240_000);

  it('strata, ctr and Go client pulls mixed fetch each blob once, all succeed, and commit each layer once', async () => {
    const { commit } = await pullTogether(2, 2, 2);
    // Every Commit through the API either landed or was told ALREADY_EXISTS (6, a ctr's duplicate); with the
    // commit events checked above (each layer committed once), nothing was committed twice.
    expect(Object.keys(commit.failed).filter((code) => code !== '6')).toEqual([]);
  }, 240_000);

  it('strata and Go client pulls mixed extract each layer once', async () => {
    const { commit, extractions } = await pullTogether(2, 0, 3);
    expect(extractions).toBe(image.layers.length);
    expect(commit.failed).toEqual({});
  }, 240_000);
});
