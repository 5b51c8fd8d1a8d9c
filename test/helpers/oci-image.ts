/**
 * A tiny OCI image for interop tests, built from the host's statically linked busybox (Debian's
 * busybox-static) with Node and GNU tar only: one uncompressed layer, a config, a manifest, an index and the
 * oci-layout marker, tarred as an OCI image layout archive that `ctr image import` accepts. Every mtime,
 * owner and ordering is fixed so the digests are the same on every run (for a given busybox binary).
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFile, chmod, mkdir, readFile, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { arch } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);

export const BUSYBOX = '/bin/busybox';
export const BUSYBOX_IMAGE = 'docker.io/library/busybox:strata-test';
export const BUSYBOX_REF_NAME = 'strata-test';

const MEDIA = {
  layer: 'application/vnd.oci.image.layer.v1.tar',
  config: 'application/vnd.oci.image.config.v1+json',
  manifest: 'application/vnd.oci.image.manifest.v1+json',
  index: 'application/vnd.oci.image.index.v1+json',
} as const;

/** A fixed timestamp (2000-01-01T00:00:00Z) for every file and for the config's `created`. */
const EPOCH = 946684800;

export interface BusyboxArchive {
  /** Path of the OCI layout archive (`<dir>/busybox.tar`). */
  archive: string;
  /** The image name containerd gives it on import. */
  name: string;
  /** Digests, for assertions. */
  layerDigest: string;
  configDigest: string;
  manifestDigest: string;
}

interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
  platform?: { architecture: string; os: string };
}

function goArch(): string {
  const a = arch();
  switch (a) {
    case 'x64':
      return 'amd64';
    case 'arm64':
      return 'arm64';
    case 'arm':
      return 'arm';
    case 'ia32':
      return '386';
    case 'ppc64':
      return 'ppc64le';
    default:
      return a;
  }
}

const sha256 = (b: Buffer | string) => 'sha256:' + createHash('sha256').update(b).digest('hex');

/** GNU tar of the given entries of `cwd`, deterministic: sorted names, fixed mtime, root-owned. */
async function deterministicTar(cwd: string, out: string, entries: string[]): Promise<void> {
  await execFileP('tar', [
    '--create',
    '--file',
    out,
    '--directory',
    cwd,
    '--format=gnu',
    '--sort=name',
    `--mtime=@${EPOCH}`,
    '--owner=0',
    '--group=0',
    '--numeric-owner',
    '--no-acls',
    '--no-xattrs',
    '--no-selinux',
    ...entries,
  ]);
}

/**
 * Builds `<dir>/busybox.tar` (and a scratch tree under `<dir>/busybox-build`, removed afterwards). The
 * archive's index names the image `docker.io/library/busybox:strata-test`.
 */
export async function buildBusyboxArchive(dir: string): Promise<BusyboxArchive> {
  const work = join(dir, 'busybox-build');
  await rm(work, { recursive: true, force: true });
  const rootfs = join(work, 'rootfs');
  const layout = join(work, 'layout');
  const blobs = join(layout, 'blobs', 'sha256');
  await mkdir(join(rootfs, 'bin'), { recursive: true });
  await mkdir(join(rootfs, 'etc'), { recursive: true });
  await mkdir(join(rootfs, 'tmp'), { recursive: true });
  await mkdir(blobs, { recursive: true });

  // The root filesystem: busybox, its applets as symlinks, and a minimal /etc.
  await copyFile(BUSYBOX, join(rootfs, 'bin', 'busybox'));
  await chmod(join(rootfs, 'bin', 'busybox'), 0o755);
  for (const applet of ['sh', 'echo', 'cat', 'ls', 'sleep']) {
    await symlink('busybox', join(rootfs, 'bin', applet));
  }
  await writeFile(join(rootfs, 'etc', 'passwd'), 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n');
  await writeFile(join(rootfs, 'etc', 'group'), 'root:x:0:\nnogroup:x:65534:\n');
  await writeFile(join(rootfs, 'etc', 'hostname'), 'strata-test\n');
  for (const p of ['etc/passwd', 'etc/group', 'etc/hostname']) await chmod(join(rootfs, p), 0o644);
  for (const p of ['', 'bin', 'etc']) await chmod(join(rootfs, p), 0o755);
  await chmod(join(rootfs, 'tmp'), 0o1777);

  // The layer: an uncompressed tar, so its digest is its diff_id.
  const layerTmp = join(work, 'layer.tar');
  await deterministicTar(rootfs, layerTmp, ['bin', 'etc', 'tmp']);
  const layerBytes = await readFile(layerTmp);
  const layer: Descriptor = { mediaType: MEDIA.layer, digest: sha256(layerBytes), size: layerBytes.length };
  await rename(layerTmp, join(blobs, layer.digest.slice('sha256:'.length)));

  const putJson = async (mediaType: string, value: unknown): Promise<Descriptor> => {
    const bytes = Buffer.from(JSON.stringify(value));
    const digest = sha256(bytes);
    await writeFile(join(blobs, digest.slice('sha256:'.length)), bytes);
    return { mediaType, digest, size: bytes.length };
  };

  const architecture = goArch();
  const created = new Date(EPOCH * 1000).toISOString();
  const config = await putJson(MEDIA.config, {
    created,
    architecture,
    os: 'linux',
    config: { Env: ['PATH=/bin'], Cmd: ['sh'], WorkingDir: '/' },
    rootfs: { type: 'layers', diff_ids: [layer.digest] },
    history: [{ created, created_by: 'strata test: busybox-static', comment: 'buildBusyboxArchive' }],
  });
  const manifest = await putJson(MEDIA.manifest, {
    schemaVersion: 2,
    mediaType: MEDIA.manifest,
    config,
    layers: [layer],
  });
  const index = {
    schemaVersion: 2,
    mediaType: MEDIA.index,
    manifests: [
      {
        ...manifest,
        platform: { architecture, os: 'linux' },
        annotations: {
          'io.containerd.image.name': BUSYBOX_IMAGE,
          'org.opencontainers.image.ref.name': BUSYBOX_REF_NAME,
        },
      },
    ],
  };
  await writeFile(join(layout, 'index.json'), JSON.stringify(index));
  await writeFile(join(layout, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));

  const archive = join(dir, 'busybox.tar');
  await deterministicTar(layout, archive, ['oci-layout', 'index.json', 'blobs']);
  await rm(work, { recursive: true, force: true });
  return {
    archive,
    name: BUSYBOX_IMAGE,
    layerDigest: layer.digest,
    configDigest: config.digest,
    manifestDigest: manifest.digest,
  };
}
