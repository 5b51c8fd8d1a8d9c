/**
 * eStargz conversion end to end, and interop with stargz-snapshotter's tools both ways:
 *
 *   - `strata image convert --estargz --oci` of a Docker image: OCI media types, each layer annotated with
 *     its TOC digest and uncompressed size, the config's new diff_ids, the `containerd.io/uncompressed`
 *     labels; every layer opened by Strata's reader and by stargz's own Go estargz package (VerifyTOC and
 *     chunk verifiers); the converted image runs with `strata run` on overlayfs (an ordinary unpack);
 *   - pushed to a registry, containerd 1.6 pulls and runs the Strata-converted image (it checks the diff_ids);
 *   - an image converted by `ctr-remote image optimize --no-optimize --oci` against containerd 1.6, pushed to
 *     the registry, is opened by openEstargz through HTTP Range requests with every chunk verified, and
 *     Strata pulls and runs it;
 *   - an index keeps only the platforms asked for; bad requests are refused.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ANNOTATION_TOC_DIGEST, ANNOTATION_UNCOMPRESSED_SIZE, openEstargz, type EstargzLayer } from '../../src/estargz/index.js';
import { ctr, run, tableRows } from '../helpers/ctr.js';
import { ctrAt, exec, startContainerd, stopAllContainerd, type StartedContainerd } from '../helpers/containerd.js';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { bufferReadAt, bytes, ctrRemoteBinary, goVerify, registryBlob, registryManifest, registryReadAt, sha256 } from '../helpers/estargz.js';
import { buildImage, busyboxPlatform, hostPlatform, type BuiltImage } from '../helpers/images.js';
import { STRATA } from '../helpers/paths.js';
import { startRegistry, stopAllRegistries, type StartedRegistry } from '../helpers/registry.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

const NS = 'estargz-convert';
const IMAGE = 'docker.io/library/busybox:esgz-src';
const CONVERTED = 'docker.io/library/busybox:esgz';
const BIG = bytes(5 << 20, 11); // two chunks at 4 MiB

let d: StartedDaemon;
let reg: StartedRegistry;
let ctrd: StartedContainerd;
let dir: TempDir;
let busybox: BuiltImage;

const strata = (args: string[]) => run(STRATA, ['--address', d.address, '--namespace', NS, ...args], { timeoutMs: 180_000 });
async function ok(args: string[]): Promise<string> {
  const r = await strata(args);
  expect(r.code, `strata ${args.join(' ')}: ${r.stderr}`).toBe(0);
  return r.stdout;
}
const blobOnDisk = (digest: string) => readFile(join(d.root, 'io.containerd.content.v1.content', 'blobs', 'sha256', digest.slice(7)));
const json = async (digest: string) => JSON.parse((await blobOnDisk(digest)).toString()) as Record<string, any>;

async function readAll(layer: EstargzLayer, path: string): Promise<Buffer> {
  const parts = [];
  for (const c of layer.chunks(path)) parts.push(await layer.readChunk(c));
  return Buffer.concat(parts);
}

/** Every regular file of the layer read chunk by chunk (each verified by readChunk): path -> sha256. */
async function readEverything(layer: EstargzLayer, dirPath = '', out = new Map<string, string>()): Promise<Map<string, string>> {
  for (const [name, e] of layer.children(dirPath)) {
    const p = dirPath ? `${dirPath}/${name}` : name;
    if (e.type === 'dir') await readEverything(layer, p, out);
    else if (e.type === 'reg') out.set(p, sha256(await readAll(layer, p)));
  }
  return out;
}

beforeAll(async () => {
  dir = await tempDir('strata-esgz-convert-');
  [d, reg, ctrd] = await Promise.all([startDaemon(), startRegistry(), startContainerd()]);
  const base = await busyboxPlatform({ compression: 'gzip', docker: true });
  busybox = await buildImage(dir.path, {
    basename: 'busybox',
    name: IMAGE,
    platforms: [{ ...base, layers: [...base.layers, { compression: 'gzip', entries: [{ path: 'data', type: 'dir' }, { path: 'data/big', content: BIG }, { path: 'data/small', content: 'small\n' }] }] }],
  });
  const imp = await strata(['image', 'import', '--no-unpack', busybox.archivePath]);
  expect(imp.code, imp.stderr).toBe(0);
}, 300_000);

afterAll(async () => {
  if (d) {
    for (const id of (await strata(['task', 'ls', '-q'])).stdout.split('\n').filter(Boolean)) await strata(['task', 'rm', '-f', id]);
    for (const id of (await strata(['container', 'ls', '-q'])).stdout.split('\n').filter(Boolean)) await strata(['container', 'rm', id]);
  }
  await stopAll();
  await stopAllContainerd();
  await stopAllRegistries();
  await d?.dir.cleanup();
  await dir?.cleanup();
});

describe('strata image convert --estargz', () => {
  it('turns a Docker image into OCI eStargz: annotated layers, new diff_ids, uncompressed labels, each layer verified by Strata and by Go', async () => {
    const out = await ok(['image', 'convert', '--estargz', '--oci', IMAGE, CONVERTED]);
    const [name, digest] = out.trim().split(' ');
    expect(name).toBe(CONVERTED);
    const images = tableRows((await ctr(d.address, ['image', 'ls'], { namespace: NS })).stdout);
    expect(images.find((r) => r[0] === CONVERTED)?.slice(1, 3)).toEqual(['application/vnd.oci.image.manifest.v1+json', digest]);

    const manifest = await json(digest!);
    expect(manifest.mediaType).toBe('application/vnd.oci.image.manifest.v1+json');
    expect(manifest.config.mediaType).toBe('application/vnd.oci.image.config.v1+json');
    const config = await json(manifest.config.digest);
    const source = busybox.manifests[0]!;
    expect(config.config).toEqual(source.config.json.config); // everything but the diff_ids is kept
    expect(manifest.layers).toHaveLength(2);
    const contentLs = (await ctr(d.address, ['content', 'ls'], { namespace: NS })).stdout;
    for (const [i, l] of (manifest.layers as Record<string, any>[]).entries()) {
      expect(l.mediaType).toBe('application/vnd.oci.image.layer.v1.tar+gzip');
      expect(l.annotations[ANNOTATION_TOC_DIGEST]).toMatch(/^sha256:[0-9a-f]{64}$/);
      const blob = await blobOnDisk(l.digest);
      expect(sha256(blob)).toBe(l.digest);
      const plain = gunzipSync(blob);
      expect(sha256(plain)).toBe(config.rootfs.diff_ids[i]);
      expect(l.annotations[ANNOTATION_UNCOMPRESSED_SIZE]).toBe(String(plain.length));
      expect(config.rootfs.diff_ids[i]).not.toBe(source.layers[i]!.diffID); // the tar gained the TOC and landmark
      expect(contentLs).toContain(`containerd.io/uncompressed=${config.rootfs.diff_ids[i]}`);

      const layer = await openEstargz(bufferReadAt(blob).readAt, blob.length, { tocDigest: l.annotations[ANNOTATION_TOC_DIGEST] });
      const files = await readEverything(layer);
      const v = await goVerify(dir.path, blob, l.annotations[ANNOTATION_TOC_DIGEST]);
      expect(v.ok, v.output).toBe(true);
      for (const e of v.entries.filter((x) => x.type === 'reg')) expect(files.get(e.name as string), e.name as string).toBe(e.sha256);
      if (i === 1) {
        expect(files.get('data/big')).toBe(sha256(BIG));
        expect(layer.chunks('data/big').map((c) => c.size)).toEqual([4 << 20, 1 << 20]);
      }
    }
    // The manifest references its new config and layers for the garbage collector.
    const row = contentLs.split('\n').find((r) => r.startsWith(digest!))!;
    expect(row).toContain(`containerd.io/gc.ref.content.config=${manifest.config.digest}`);
    expect(row).toContain(`containerd.io/gc.ref.content.l.1=${manifest.layers[1].digest}`);
  });

  it('converting the same image again gives the same digest', async () => {
    const a = (await ok(['image', 'convert', '--estargz', '--oci', '-q', IMAGE, `${CONVERTED}-again`])).trim().split(' ')[1];
    const b = tableRows((await ctr(d.address, ['image', 'ls'], { namespace: NS })).stdout).find((r) => r[0] === CONVERTED)![2];
    expect(a).toBe(b);
  });

  it('the converted image runs with strata run on overlayfs (an ordinary unpack)', async () => {
    const r = await strata(['run', '--rm', CONVERTED, 'esgz-run', 'sh', '-c', 'echo hi; cat /data/small; ls /stargz.index.json']);
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe('hi\nsmall\n/stargz.index.json\n');
    expect(r.code).toBe(0);
  });

  it('pushed to a registry, containerd 1.6 pulls and runs the Strata-converted image', async () => {
    const ref = `${reg.host}/busybox:strata-esgz`;
    await ok(['image', 'push', ref, CONVERTED]);
    const pull = await ctrAt(ctrd.address, ['image', 'pull', '--plain-http', ref]);
    expect(pull.code, pull.stderr + pull.stdout).toBe(0);
    const r = await exec('ctr', ['--address', ctrd.address, 'run', '--rm', ref, 'esgz-ctrd', 'cat', '/data/small'], { timeoutMs: 60_000 });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe('small\n');
    // And the layers, fetched from the registry by Range, open and verify.
    const m = await registryManifest(reg.url, 'busybox', 'strata-esgz');
    for (const l of m.layers as Record<string, any>[]) {
      const { readAt, stats } = registryReadAt(reg.url, 'busybox', l.digest);
      const layer = await openEstargz(readAt, l.size, { tocDigest: l.annotations[ANNOTATION_TOC_DIGEST] });
      expect(stats.requests).toBeLessThanOrEqual(2);
      await readEverything(layer);
    }
  });

  it('reads an image converted by ctr-remote (containerd 1.6) through registry Range requests, every chunk verified, and strata runs it', async () => {
    const ctrRemote = await ctrRemoteBinary();
    await reg.pushOciLayout(busybox.layoutDir, 'busybox:plain');
    const src = `${reg.host}/busybox:plain`;
    const dst = `${reg.host}/busybox:ctr-remote-esgz`;
    const pull = await ctrAt(ctrd.address, ['image', 'pull', '--plain-http', src]);
    expect(pull.code, pull.stderr + pull.stdout).toBe(0);
    const opt = await exec(ctrRemote, ['--address', ctrd.address, 'image', 'optimize', '--no-optimize', '--oci', src, dst], { timeoutMs: 180_000 });
    expect(opt.code, opt.stderr + opt.stdout).toBe(0);
    const push = await ctrAt(ctrd.address, ['image', 'push', '--plain-http', dst]);
    expect(push.code, push.stderr + push.stdout).toBe(0);

    const m = await registryManifest(reg.url, 'busybox', 'ctr-remote-esgz');
    expect(m.layers).toHaveLength(2);
    const seen = new Map<string, string>();
    for (const l of m.layers as Record<string, any>[]) {
      expect(l.annotations[ANNOTATION_TOC_DIGEST]).toMatch(/^sha256:/);
      const { readAt, stats } = registryReadAt(reg.url, 'busybox', l.digest);
      const layer = await openEstargz(readAt, l.size, { tocDigest: l.annotations[ANNOTATION_TOC_DIGEST] });
      expect(stats.requests).toBeLessThanOrEqual(2);
      expect(stats.bytes).toBeLessThan(l.size); // the footer and TOC only
      for (const [p, h] of await readEverything(layer)) seen.set(p, h);
      // The uncompressed size annotation (written by stargz's converter) is the gunzipped blob's size.
      const plain = gunzipSync(await registryBlob(reg.url, 'busybox', l.digest));
      expect(l.annotations[ANNOTATION_UNCOMPRESSED_SIZE]).toBe(String(plain.length));
    }
    expect(seen.get('data/big')).toBe(sha256(BIG));
    expect(seen.get('bin/busybox')).toBe(sha256(await readFile('/bin/busybox')));

    await ok(['image', 'pull', dst]);
    const r = await strata(['run', '--rm', dst, 'ctr-remote-run', 'cat', '/data/small']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe('small\n');
  });

  it('keeps the host platform of an index by default, the named ones with --platform, all with --all-platforms', async () => {
    const host = hostPlatform();
    const other = { os: 'linux', architecture: host.architecture === 's390x' ? 'ppc64le' : 's390x' };
    const layer = (s: string) => ({ compression: 'zstd' as const, entries: [{ path: 'who', content: s }] });
    const multi = await buildImage(dir.path, {
      basename: 'multi',
      name: 'docker.io/library/multi:src',
      platforms: [{ layers: [layer('host')] }, { platform: other, layers: [layer('other')] }],
    });
    await ok(['image', 'import', '--no-unpack', '--all-platforms', multi.archivePath]);
    const platformsOf = async (image: string) => {
      const row = tableRows((await ctr(d.address, ['image', 'ls'], { namespace: NS })).stdout).find((r) => r[0] === image)!;
      const index = await json(row[2]!);
      return (index.manifests as Record<string, any>[]).map((m) => `${m.platform.os}/${m.platform.architecture}`);
    };
    await ok(['image', 'convert', '--estargz', 'docker.io/library/multi:src', 'multi:host']);
    expect(await platformsOf('multi:host')).toEqual([`linux/${host.architecture}`]);
    await ok(['image', 'convert', '--estargz', '--platform', `linux/${other.architecture}`, 'docker.io/library/multi:src', 'multi:other']);
    expect(await platformsOf('multi:other')).toEqual([`linux/${other.architecture}`]);
    await ok(['image', 'convert', '--estargz', '--all-platforms', 'docker.io/library/multi:src', 'multi:all']);
    expect(await platformsOf('multi:all')).toEqual([`linux/${host.architecture}`, `linux/${other.architecture}`]);
    // In place (target = source): converting eStargz layers again drops their TOC and landmark and writes the
    // same ones: the same blobs, so the same index.
    const before = tableRows((await ctr(d.address, ['image', 'ls'], { namespace: NS })).stdout).find((r) => r[0] === 'multi:all')![2];
    const inPlace = (await ok(['image', 'convert', '--estargz', '--all-platforms', 'multi:all', 'multi:all'])).trim().split(' ')[1];
    expect(tableRows((await ctr(d.address, ['image', 'ls'], { namespace: NS })).stdout).find((r) => r[0] === 'multi:all')![2]).toBe(inPlace);
    expect(inPlace).toBe(before);
    // The zstd layers became gzip eStargz.
    const row = tableRows((await ctr(d.address, ['image', 'ls'], { namespace: NS })).stdout).find((r) => r[0] === 'multi:all')!;
    for (const m of (await json(row[2]!)).manifests as Record<string, any>[]) {
      const l = (await json(m.digest)).layers[0];
      expect(l.mediaType).toBe('application/vnd.oci.image.layer.v1.tar+gzip');
      expect(l.annotations[ANNOTATION_TOC_DIGEST]).toMatch(/^sha256:/);
    }
  });

  it('--estargz-record-in puts the recorded paths of each layer before its prefetch landmark', async () => {
    const record = join(dir.path, 'record.json');
    // ctr-remote optimize --record-out's format: one JSON object per line.
    await writeFile(record, ['{"path":"/data/small","manifestDigest":"sha256:x","layerIndex":1}', '{"path":"/bin/busybox"}', '{"path":"/data/small"}', ''].join('\n'));
    const out = await ok(['image', 'convert', '--estargz', '--oci', '--estargz-record-in', record, IMAGE, `${CONVERTED}-prefetch`]);
    const manifest = await json(out.trim().split(' ')[1]!);
    const opened = await Promise.all((manifest.layers as Record<string, any>[]).map(async (l) => {
      const blob = await blobOnDisk(l.digest);
      return openEstargz(bufferReadAt(blob).readAt, blob.length, { tocDigest: l.annotations[ANNOTATION_TOC_DIGEST] });
    }));
    const [base, data] = opened as [EstargzLayer, EstargzLayer];
    expect(base.prefetchSize).toBeGreaterThan(0);
    expect(base.chunks('bin/busybox')[0]!.blobOffset).toBeLessThan(base.prefetchSize);
    expect(base.chunks('etc/passwd')[0]!.blobOffset).toBeGreaterThan(base.prefetchSize);
    expect(data.chunks('data/small')[0]!.blobOffset).toBeLessThan(data.prefetchSize);
    expect(data.chunks('data/big')[0]!.blobOffset).toBeGreaterThan(data.prefetchSize);
    const bad = join(dir.path, 'bad-record.json');
    await writeFile(bad, 'not json\n');
    const r = await strata(['image', 'convert', '--estargz', '--estargz-record-in', bad, IMAGE, 'x']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/line 1 is not JSON/);
  });

  it('refuses a convert without --estargz, and a source that does not exist', async () => {
    const none = await strata(['image', 'convert', IMAGE, 'x']);
    expect(none.code).toBe(1);
    expect(none.stderr).toMatch(/--estargz/);
    const missing = await strata(['image', 'convert', '--estargz', 'docker.io/library/nope:1', 'x']);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/not found/);
  });
});
