/**
 * The GC service through a real stratad and the `strata` CLI: `strata gc` (and --dry-run), `strata gc why`,
 * `strata gc metrics`, `strata prune` (and --dry-run), each also with --json; synchronous deletes through the
 * leases and images services; the plugin's configuration and introspection.
 *
 * The fixtures are made with the client (content Write under a lease, labels, an image record, snapshots), in
 * namespaces of their own, so what each test expects to be collected is exactly known.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'smol-toml';
import type { StrataClient } from '../../src/api/clients/strata.js';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { run, type RunResult } from '../helpers/ctr.js';
import { STRATA, STRATAD } from '../helpers/paths.js';

const sha256 = (b: Buffer | string) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const MANIFEST = 'application/vnd.oci.image.manifest.v1+json';

let d: StartedDaemon;

const strata = (args: string[], namespace = 'default'): Promise<RunResult> =>
  run(process.execPath, [STRATA, '--address', d.address, '--namespace', namespace, ...args]);

async function ok(args: string[], namespace = 'default'): Promise<string> {
  const r = await strata(args, namespace);
  expect(r.stderr, `strata ${args.join(' ')}`).toBe('');
  expect(r.code, `strata ${args.join(' ')}`).toBe(0);
  return r.stdout;
}

const blobFile = (digest: string) => join(d.root, 'io.containerd.content.v1.content', 'blobs', 'sha256', digest.slice('sha256:'.length));

async function put(c: StrataClient, data: string, labels: Record<string, string> = {}): Promise<string> {
  const body = Buffer.from(data);
  return (await c.writeBlob([body], { ref: `ref-${sha256(body)}`, total: body.length, expected: sha256(body), labels })).digest;
}

async function createLease(c: StrataClient, id: string): Promise<void> {
  await c.call(c.leases, c.leases.create, { id, labels: {} });
}

async function createImage(c: StrataClient, name: string, digest: string, size: number): Promise<void> {
  await c.call(c.images, c.images.create, {
    image: { name, labels: {}, target: { mediaType: MANIFEST, digest, size, annotations: {} }, createdAt: undefined, updatedAt: undefined },
  });
}

async function hasContent(c: StrataClient, digest: string): Promise<boolean> {
  try {
    await c.call(c.content, c.content.info, { digest });
    return true;
  } catch {
    return false;
  }
}

beforeAll(async () => {
  d = await startDaemon({ gc: true });
});

afterAll(async () => {
  await stopAll();
  await d?.dir.cleanup();
});

describe('strata gc', () => {
  it('--dry-run lists what would go and removes nothing; gc removes it and prints sizes and a summary', async () => {
    const c = d.client('gc-run');
    await createLease(c, 'keep');
    const leased = d.client('gc-run', 'keep');
    const held = await put(leased, 'held by the lease keep');
    const root = await put(c, 'a root by label', { 'containerd.io/gc.root': 'yes' });
    // The daemon's scheduler only runs on its own after deletions or 100 writes since its last run; the tests
    // of this file stay below that between their synchronous deletes, so only the runs they ask for collect.
    const loose = await put(c, 'nothing refers to this blob'); // 27 bytes
    const dry = await strata(['gc', '--dry-run'], 'gc-run');
    expect(dry.stderr).toBe('');
    expect(dry.code).toBe(0);
    expect(dry.stdout).toMatch(new RegExp(`^content\\s+gc-run\\s+${loose}\\s+27B\\s*$`, 'm'));
    expect(dry.stdout).toMatch(/^would remove \d+ objects?, [\d.]+k?B \(dry run\), pause [\d.]+ ms$/m);
    expect(dry.stdout).not.toContain(held);
    expect(dry.stdout).not.toContain(root);
    expect(await hasContent(c, held)).toBe(true);
    expect(await hasContent(c, root)).toBe(true);
    expect(existsSync(blobFile(loose))).toBe(true);

    const loose2 = await put(c, 'another loose blob, 33 bytes long');
    const out = await ok(['gc'], 'gc-run');
    expect(out).toMatch(/^TYPE\s+NAMESPACE\s+ID\s+SIZE$/m);
    expect(out).toMatch(new RegExp(`^content\\s+gc-run\\s+${loose2}\\s+33B\\s*$`, 'm'));
    expect(out).toMatch(/^removed \d+ objects?, [\d.]+k?B freed, pause [\d.]+ ms$/m);
    expect(await hasContent(c, loose)).toBe(false);
    expect(await hasContent(c, loose2)).toBe(false);
    expect(existsSync(blobFile(loose2))).toBe(false);
    expect(await hasContent(c, held)).toBe(true);
    expect(await hasContent(c, root)).toBe(true);

    // Nothing left to collect in this namespace: an empty run still prints its summary.
    const again = await ok(['gc'], 'gc-run');
    expect(again).not.toContain('gc-run');
    expect(again).toMatch(/^removed \d+ objects?, .* freed, pause [\d.]+ ms$/m);
  });

  it('--json reports the removed objects with namespace, id and size', async () => {
    const c = d.client('gc-json');
    const loose = await put(c, 'json loose blob');
    const r = JSON.parse(await ok(['--json', 'gc'], 'gc-json')) as {
      dryRun: boolean;
      pauseMs: number;
      elapsedMs: number;
      removed: { type: string; namespace: string; id: string; size: number }[];
      expiredLeases: unknown[];
      errors: unknown[];
    };
    expect(r.dryRun).toBe(false);
    expect(r.pauseMs).toBeGreaterThanOrEqual(0);
    expect(r.elapsedMs).toBeGreaterThanOrEqual(r.pauseMs);
    expect(r.removed).toContainEqual({ type: 'content', namespace: 'gc-json', id: loose, size: 15 });
    expect(r.errors).toEqual([]);
    const dry = JSON.parse(await ok(['gc', '--dry-run', '--json'], 'gc-json')) as { dryRun: boolean };
    expect(dry.dryRun).toBe(true);
  });

  it('why: the path from the root, one edge per line; a root; "not referenced"', async () => {
    const c = d.client('gc-why');
    const leaf = await put(c, 'a layer, kept through the manifest');
    const manifest = await put(c, 'a manifest', { 'containerd.io/gc.ref.content.l.0': leaf });
    await createImage(c, 'example.com/app:1', manifest, 10);
    const loose = await put(c, 'unreferenced in gc-why');

    const out = await ok(['gc', 'why', 'content', leaf], 'gc-why');
    const lines = out.trim().split('\n');
    expect(lines[0]).toMatch(/^root: image example\.com\/app:1 \(.+\)$/);
    expect(lines[1]).toMatch(new RegExp(`^image example\\.com/app:1 -> content ${manifest} \\(.+\\)$`));
    expect(lines[2]).toBe(`content ${manifest} -> content ${leaf} (containerd.io/gc.ref.content.l.0)`);
    expect(lines).toHaveLength(3);

    const self = await ok(['gc', 'why', 'image', 'example.com/app:1'], 'gc-why');
    expect(self.trim()).toMatch(/^image example\.com\/app:1 is a root \(.+\)$/);

    expect((await ok(['gc', 'why', 'content', loose], 'gc-why')).trim()).toBe('not referenced: would be removed');

    const json = JSON.parse(await ok(['gc', 'why', 'content', leaf, '--json'], 'gc-why')) as {
      reachable: boolean;
      root: string | null;
      path: { from: { type: string; id: string }; to: { type: string; id: string }; reason: string }[];
    };
    expect(json.reachable).toBe(true);
    expect(json.path.map((e) => [e.from.type, e.from.id, e.to.type, e.to.id])).toEqual([
      ['image', 'example.com/app:1', 'content', manifest],
      ['content', manifest, 'content', leaf],
    ]);
    expect(JSON.parse(await ok(['gc', 'why', 'content', loose, '--json'], 'gc-why'))).toMatchObject({ reachable: false, path: [] });

    // Misuse: a usage error, an unknown type, a snapshot without its snapshotter.
    for (const args of [['gc', 'why'], ['gc', 'why', 'content'], ['gc', 'why', 'widget', 'x'], ['gc', 'why', 'snapshot', 'nokey']]) {
      const r = await strata(args, 'gc-why');
      expect(r.code, args.join(' ')).toBe(1);
      expect(r.stderr, args.join(' ')).toMatch(/^strata: /);
    }
  });

  it('why for a snapshot: <snapshotter>/<key>, kept by its lease', async () => {
    const c = d.client('gc-why-sn');
    await createLease(c, 'snaps');
    const leased = d.client('gc-why-sn', 'snaps');
    await leased.call(leased.snapshots, leased.snapshots.prepare, { snapshotter: 'overlayfs', key: 'base-active', parent: '', labels: {} });
    await leased.call(leased.snapshots, leased.snapshots.commit, { parent: '', snapshotter: 'overlayfs', name: 'base', key: 'base-active', labels: {} });
    await leased.call(leased.snapshots, leased.snapshots.prepare, { snapshotter: 'overlayfs', key: 'work', parent: 'base', labels: {} });

    const out = await ok(['gc', 'why', 'snapshot', 'overlayfs/base'], 'gc-why-sn');
    expect(out).toMatch(/^(root: .*lease.*|snapshot overlayfs\/base is a root \(.*lease.*\))$/m);
    const viaFlag = await ok(['gc', 'why', 'snapshot', '--snapshotter', 'overlayfs', 'base'], 'gc-why-sn');
    expect(viaFlag).toBe(out);

    // Without the lease, nothing keeps them; a synchronous lease delete collects them before it returns.
    await c.call(c.leases, c.leases.delete, { id: 'snaps', sync: true });
    const snaps = await c.collect(c.snapshots.list({ snapshotter: 'overlayfs', filters: [] }, c.metadata()));
    expect(snaps.flatMap((r) => r.info.map((i) => i.name))).toEqual([]);
  });

  it('metrics: runs, pauses, removed objects by type and bytes, also as JSON', async () => {
    const c = d.client('gc-metrics');
    await put(c, 'counted once collected');
    await ok(['gc'], 'gc-metrics');
    const out = await ok(['gc', 'metrics']);
    expect(out).toMatch(/^runs\s+[1-9]\d*$/m);
    expect(out).toMatch(/^pause total\s+[\d.]+ ms$/m);
    expect(out).toMatch(/^pause last\s+[\d.]+ ms$/m);
    expect(out).toMatch(/^last run\s+\d{4}-\d\d-\d\dT/m);
    expect(out).toMatch(/^removed content\s+[1-9]\d*$/m);
    expect(out).toMatch(/^removed bytes\s+[\d.]+k?B$/m);
    const m = JSON.parse(await ok(['gc', 'metrics', '--json'])) as {
      runs: number;
      pauseMsTotal: number;
      pauseMsLast: number;
      removedObjects: Record<string, number>;
      removedBytes: number;
      lastRunAt: string | null;
    };
    expect(m.runs).toBeGreaterThanOrEqual(1);
    expect(m.pauseMsTotal).toBeGreaterThanOrEqual(m.pauseMsLast);
    expect(m.removedObjects.content).toBeGreaterThanOrEqual(1);
    expect(m.removedBytes).toBeGreaterThanOrEqual(22);
    expect(Date.parse(m.lastRunAt!)).toBeGreaterThan(Date.now() - 600_000);
    expect((await strata(['gc', 'metrics', 'extra'])).code).toBe(1);
    expect((await strata(['gc', 'frobnicate'])).stderr).toMatch(/unknown command "gc frobnicate"/);
  });
});

describe('synchronous deletes', () => {
  it('leases rm --sync: what the lease held is gone when the command returns', async () => {
    const c = d.client('gc-sync');
    await createLease(c, 'tmp');
    const blob = await put(d.client('gc-sync', 'tmp'), 'only the tmp lease holds this');
    expect(existsSync(blobFile(blob))).toBe(true);
    await ok(['leases', 'rm', '--sync', 'tmp'], 'gc-sync');
    expect(await hasContent(c, blob)).toBe(false);
    expect(existsSync(blobFile(blob))).toBe(false);
  });

  it('image delete with sync: the image content goes with it; a shared blob stays while another image holds it', async () => {
    const c = d.client('gc-sync-img');
    const shared = await put(c, 'a layer two images share');
    const m1 = await put(c, 'manifest one', { 'containerd.io/gc.ref.content.l.0': shared });
    const m2 = await put(c, 'manifest two', { 'containerd.io/gc.ref.content.l.0': shared });
    await createImage(c, 'example.com/one:1', m1, 12);
    await createImage(c, 'example.com/two:1', m2, 12);
    await c.call(c.images, c.images.delete, { name: 'example.com/one:1', sync: true });
    expect(await hasContent(c, m1)).toBe(false);
    expect(await hasContent(c, m2)).toBe(true);
    expect(await hasContent(c, shared)).toBe(true);
    await c.call(c.images, c.images.delete, { name: 'example.com/two:1', sync: true });
    expect(await hasContent(c, m2)).toBe(false);
    expect(await hasContent(c, shared)).toBe(false);
    expect(existsSync(blobFile(shared))).toBe(false);
  });
});

describe('strata prune', () => {
  it('lists a blob file no record knows (--dry-run keeps it), then removes it', async () => {
    const data = 'a blob file nothing records, written behind the daemon'; // 54 bytes
    const digest = sha256(data);
    await mkdir(join(d.root, 'io.containerd.content.v1.content', 'blobs', 'sha256'), { recursive: true });
    await writeFile(blobFile(digest), data);

    const dry = await ok(['prune', '--dry-run']);
    expect(dry).toMatch(/^KIND\s+ID\s+SIZE$/m);
    expect(dry).toMatch(new RegExp(`^blob\\s+${digest}\\s+54B\\s*$`, 'm'));
    expect(dry).toMatch(/^would remove \d+ orphaned items? of data, .* \(dry run\)$/m);
    expect(existsSync(blobFile(digest))).toBe(true);

    const json = JSON.parse(await ok(['prune', '--dry-run', '--json'])) as { dryRun: boolean; blobs: { id: string; size: number }[] };
    expect(json.dryRun).toBe(true);
    expect(json.blobs).toContainEqual(expect.objectContaining({ id: digest, size: 54 }));

    const out = await ok(['prune']);
    expect(out).toMatch(new RegExp(`^blob\\s+${digest}\\s+54B\\s*$`, 'm'));
    expect(out).toMatch(/^removed \d+ orphaned items? of data, .* freed$/m);
    expect(existsSync(blobFile(digest))).toBe(false);

    const after = JSON.parse(await ok(['prune', '--dry-run', '--json'])) as { blobs: { id: string }[] };
    expect(after.blobs.map((b) => b.id)).not.toContain(digest);
    expect((await strata(['prune', 'extra'])).code).toBe(1);
  });
});

describe('the plugin', () => {
  it('stratad config default shows the scheduler section with containerd defaults', async () => {
    const r = await run(process.execPath, [STRATAD, 'config', 'default']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('[plugins."io.containerd.gc.v1.scheduler"]');
    const cfg = parse(r.stdout) as { plugins: Record<string, Record<string, unknown>> };
    expect(cfg.plugins['io.containerd.gc.v1.scheduler']).toEqual({
      pause_threshold: 0.02,
      deletion_threshold: 0,
      mutation_threshold: 100,
      schedule_delay: '0ms',
      startup_delay: '100ms',
    });
  });

  it('is listed by introspection with its settings, and a bad setting fails the plugin (and the GC service)', async () => {
    const c = d.client();
    const { plugins } = await c.call(c.introspection, c.introspection.plugins, { filters: ['type==io.containerd.gc.v1'] });
    expect(plugins.map((p) => [p.id, p.initErr])).toEqual([['scheduler', undefined]]);
    expect(plugins[0]!.exports).toMatchObject({ PauseThreshold: '0.02', DeletionThreshold: '0', MutationThreshold: '100', ScheduleDelay: '0ms' });

    const bad = await startDaemon({ gc: true, config: '[plugins."io.containerd.gc.v1.scheduler"]\nstartup_delay = "soon"\n' });
    try {
      const bc = bad.client();
      const list = (await bc.call(bc.introspection, bc.introspection.plugins, { filters: [] })).plugins;
      const gc = list.find((p) => p.type === 'io.containerd.gc.v1')!;
      expect(gc.initErr?.message).toMatch(/invalid duration "soon"/);
      // Leases still work without GC: a synchronous delete returns without waiting.
      await bc.call(bc.leases, bc.leases.create, { id: 'x', labels: {} });
      await bc.call(bc.leases, bc.leases.delete, { id: 'x', sync: true });
      const r = await run(process.execPath, [STRATA, '--address', bad.address, 'gc']);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/^strata: /);
    } finally {
      await bad.stop();
      await bad.dir.cleanup();
    }
  });
});
