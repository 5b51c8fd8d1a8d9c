/**
 * Small OCI image layouts for registry tests: layer tars built in memory (tar-stream, fixed mtimes, so the
 * same files give the same digests), a config, a manifest and the layout's index.json, written to a
 * directory that skopeo can copy from (`oci:<dir>`). Also unpacks an OCI layout archive (such as
 * test/helpers/oci-image.ts's busybox archive) into a directory.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import { makeTar } from './tar.js';

const execFileP = promisify(execFile);

export const MEDIA_LAYER_TAR = 'application/vnd.oci.image.layer.v1.tar';
export const MEDIA_LAYER_GZIP = 'application/vnd.oci.image.layer.v1.tar+gzip';
export const MEDIA_CONFIG = 'application/vnd.oci.image.config.v1+json';
export const MEDIA_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
export const MEDIA_INDEX = 'application/vnd.oci.image.index.v1+json';

export interface LayoutBlob {
  mediaType: string;
  digest: string;
  size: number;
  bytes: Buffer;
}

export interface OciLayout {
  dir: string;
  /** The name of the image in index.json (org.opencontainers.image.ref.name). */
  refName: string;
  manifest: LayoutBlob;
  config: LayoutBlob;
  layers: LayoutBlob[];
  /** Every blob by digest. */
  blobs: Map<string, LayoutBlob>;
}

export const sha256 = (b: Buffer | string): string => 'sha256:' + createHash('sha256').update(b).digest('hex');

const blob = (mediaType: string, bytes: Buffer): LayoutBlob => ({ mediaType, digest: sha256(bytes), size: bytes.length, bytes });

/** A tar of regular files (path → content), mtime 2000-01-01, mode 0644, root-owned, in the given order. */
export async function makeLayerTar(files: Record<string, string | Buffer>): Promise<Buffer> {
  return makeTar(Object.entries(files).map(([name, body]) => ({ name, body, mode: 0o644, type: 'file' })));
}

export interface LayoutSpec {
  /** Layer contents: a tar (uncompressed) or { bytes, mediaType } as is; `gzip: true` compresses tars. */
  layers: Array<Buffer | { bytes: Buffer; mediaType: string }>;
  gzip?: boolean;
  refName?: string;
  /** Extra config fields. */
  config?: Record<string, unknown>;
}

/** Writes an OCI image layout with one image to `dir` (created) and returns its blobs. */
export async function buildOciLayout(dir: string, spec: LayoutSpec): Promise<OciLayout> {
  const refName = spec.refName ?? 'latest';
  const layers: LayoutBlob[] = [];
  const diffIds: string[] = [];
  for (const l of spec.layers) {
    if (Buffer.isBuffer(l)) {
      diffIds.push(sha256(l));
      layers.push(spec.gzip ? blob(MEDIA_LAYER_GZIP, gzipSync(l, { level: 6 })) : blob(MEDIA_LAYER_TAR, l));
    } else {
      diffIds.push(sha256(l.bytes));
      layers.push(blob(l.mediaType, l.bytes));
    }
  }
  const config = blob(
    MEDIA_CONFIG,
    Buffer.from(
      JSON.stringify({
        created: '2000-01-01T00:00:00Z',
        architecture: 'amd64',
        os: 'linux',
        config: { Env: ['PATH=/bin'] },
        rootfs: { type: 'layers', diff_ids: diffIds },
        ...spec.config,
      }),
    ),
  );
  const desc = (b: LayoutBlob) => ({ mediaType: b.mediaType, digest: b.digest, size: b.size });
  const manifest = blob(
    MEDIA_MANIFEST,
    Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MEDIA_MANIFEST, config: desc(config), layers: layers.map(desc) })),
  );
  const blobsDir = join(dir, 'blobs', 'sha256');
  await mkdir(blobsDir, { recursive: true });
  const blobs = new Map<string, LayoutBlob>();
  for (const b of [...layers, config, manifest]) {
    blobs.set(b.digest, b);
    await writeFile(join(blobsDir, b.digest.slice('sha256:'.length)), b.bytes);
  }
  await writeFile(
    join(dir, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MEDIA_INDEX,
      manifests: [{ ...desc(manifest), annotations: { 'org.opencontainers.image.ref.name': refName } }],
    }),
  );
  await writeFile(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  return { dir, refName, manifest, config, layers, blobs };
}

/** Unpacks an OCI layout archive (tar) into `dir` (created). */
export async function extractOciArchive(archive: string, dir: string): Promise<string> {
  await mkdir(dir, { recursive: true });
  await execFileP('tar', ['-x', '-f', archive, '-C', dir]);
  return dir;
}
