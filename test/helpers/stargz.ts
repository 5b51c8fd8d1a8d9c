/**
 * Lazy-pull test images and teardown: an image whose layers are eStargz blobs built by stargz-snapshotter's own
 * Go `estargz` package (what ctr-remote and nerdctl use; test/helpers/estargz.ts goBuild), with the
 * toc.digest and uncompressed-size annotations on each layer as ctr-remote writes them, or the same image
 * with plain gzip layers; written as an OCI layout for registry.pushOciLayout. And the teardown of a stargz
 * root: its lazyfs asked to unmount everything and exit, whatever mounts remain detached.
 */
import { execFile } from 'node:child_process';
import { readFile, mkdir, writeFile, rm } from 'node:fs/promises';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import { goBuild, bytes, sha256 } from './estargz.js';
import { hostPlatform } from './images.js';
import { makeTar, type TarEntry } from './tar.js';
import { LazyfsClient } from '../../src/snapshots/stargz/client.js';
import { lazyfsMountsUnder } from '../../src/snapshots/stargz/mounts.js';
import { silentLogger } from '../../src/log/index.js';

const execFileP = promisify(execFile);

export const APPLETS = ['sh', 'echo', 'ls', 'cat', 'sleep', 'head', 'wc', 'md5sum', 'test', 'true'];

export interface LazyImageLayer {
  digest: string;
  size: number;
  diffID: string;
  tocDigest?: string;
}

export interface LazyImage {
  layoutDir: string;
  manifestDigest: string;
  layers: LazyImageLayer[];
  /** Bytes of every blob of the image (manifest, config, layers). */
  totalBytes: number;
  /** The data files (data/f<i>) and their md5 sums. */
  files: { path: string; md5: string }[];
}

/**
 * The image: a base layer (busybox and its applets, /etc, /tmp; bin/busybox prioritized, so it is in the
 * prefetch span) and a data layer of `files` incompressible files of `fileSize` bytes (data/f0...).
 */
export async function buildLazyImage(dir: string, opts: { estargz: boolean; files?: number; fileSize?: number; chunk?: number }): Promise<LazyImage> {
  const n = opts.files ?? 8;
  const size = opts.fileSize ?? 2 << 20;
  const busybox = await readFile('/bin/busybox');
  const base: TarEntry[] = [
    { name: 'bin/', type: 'directory', mode: 0o755 },
    { name: 'bin/busybox', type: 'file', mode: 0o755, body: busybox },
    ...APPLETS.map((a) => ({ name: `bin/${a}`, type: 'symlink' as const, mode: 0o777, linkname: 'busybox' })),
    { name: 'etc/', type: 'directory', mode: 0o755 },
    { name: 'etc/passwd', type: 'file', mode: 0o644, body: 'root:x:0:0:root:/root:/bin/sh\n' },
    { name: 'etc/group', type: 'file', mode: 0o644, body: 'root:x:0:\n' },
    { name: 'tmp/', type: 'directory', mode: 0o1777 },
  ];
  const files: { path: string; md5: string }[] = [];
  const data: TarEntry[] = [{ name: 'data/', type: 'directory', mode: 0o755 }];
  for (let i = 0; i < n; i++) {
    const body = bytes(size, i + 7);
    data.push({ name: `data/f${i}`, type: 'file', mode: 0o644, body });
    const { createHash } = await import('node:crypto');
    files.push({ path: `/data/f${i}`, md5: createHash('md5').update(body).digest('hex') });
  }
  const tars = [await makeTar(base), await makeTar(data)];
  const layoutDir = join(dir, opts.estargz ? 'estargz-image' : 'gzip-image');
  await rm(layoutDir, { recursive: true, force: true });
  await mkdir(join(layoutDir, 'blobs', 'sha256'), { recursive: true });
  const put = async (b: Buffer): Promise<string> => {
    const d = sha256(b);
    await writeFile(join(layoutDir, 'blobs', 'sha256', d.slice(7)), b);
    return d;
  };
  let total = 0;
  const layers: LazyImageLayer[] = [];
  const layerDescs: Record<string, unknown>[] = [];
  for (const [i, tar] of tars.entries()) {
    if (opts.estargz) {
      const built = await goBuild(dir, tar, { ...(opts.chunk ? { chunk: opts.chunk } : {}), ...(i === 0 ? { prioritized: ['bin/busybox'] } : {}) });
      const digest = await put(built.blob);
      layers.push({ digest, size: built.blob.length, diffID: built.diffID, tocDigest: built.tocDigest });
      layerDescs.push({
        mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip',
        digest,
        size: built.blob.length,
        annotations: {
          'containerd.io/snapshot/stargz/toc.digest': built.tocDigest,
          'io.containers.estargz.uncompressed-size': String(built.size),
        },
      });
      total += built.blob.length;
    } else {
      const blob = gzipSync(tar, { level: 1 });
      const digest = await put(blob);
      layers.push({ digest, size: blob.length, diffID: sha256(tar) });
      layerDescs.push({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest, size: blob.length });
      total += blob.length;
    }
  }
  const platform = hostPlatform();
  const config = Buffer.from(
    JSON.stringify({
      architecture: platform.architecture,
      os: platform.os,
      config: { Env: ['PATH=/bin'], Cmd: ['sh'], WorkingDir: '/' },
      rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffID) },
    }),
  );
  const configDigest = await put(config);
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: configDigest, size: config.length },
      layers: layerDescs,
    }),
  );
  const manifestDigest = await put(manifest);
  total += config.length + manifest.length;
  await writeFile(
    join(layoutDir, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: manifestDigest, size: manifest.length, annotations: { 'org.opencontainers.image.ref.name': 'latest' } }],
    }),
  );
  await writeFile(join(layoutDir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  return { layoutDir, manifestDigest, layers, totalBytes: total, files };
}

/** The pid the root's lazyfs wrote, if its file is there. */
export function lazyfsPid(root: string): number | undefined {
  const p = join(root, 'lazyfs.pid');
  if (!existsSync(p)) return undefined;
  const n = Number(readFileSync(p, 'utf8').trim());
  return Number.isInteger(n) && n > 0 ? n : undefined;
}

export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/**
 * Tears a stargz root down: its lazyfs unmounts everything and exits (asked over the socket; killed if it does
 * not go), then any lazyfs mount left under the root is detached. Overlay mounts of containers on top must be
 * gone first (the runtime's cleanup).
 */
export async function stopLazyfs(root: string): Promise<void> {
  const pid = lazyfsPid(root);
  const c = new LazyfsClient({ root, log: silentLogger });
  await c.shutdown().catch(() => undefined);
  c.close();
  if (pid !== undefined) {
    for (let i = 0; i < 100 && alive(pid); i++) await new Promise((r) => setTimeout(r, 50));
    if (alive(pid)) process.kill(pid, 'SIGKILL');
  }
  for (const mp of lazyfsMountsUnder(root)) await execFileP('umount', ['-l', mp]).catch(() => undefined);
}
