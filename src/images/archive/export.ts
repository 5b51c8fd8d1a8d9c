/**
 * Exporting images as an OCI image layout archive, as containerd 1.6's archive.Export with ctr's options
 * (`ctr image export`), re-importable by containerd (and by importArchive):
 *
 *   blobs/, blobs/<alg>/, blobs/<alg>/<hex> (mode 0444), index.json, manifest.json, oci-layout
 *
 * sorted by name, as containerd writes them. index.json lists each image's target with the annotations
 * `io.containerd.image.name` = name and `org.opencontainers.image.ref.name` = the name's tag (or @digest).
 * manifest.json is the Docker-compatible list ({Config, RepoTags, Layers} with blobs/ paths and familiar
 * names like "busybox:latest"): for a manifest target, that manifest; for an index, its best match for the
 * platform. `skipDockerManifest` leaves it out.
 *
 * Platforms (ctr's defaults): without `platform(s)`, the host platform exactly (platforms.DefaultStrict());
 * with them, those platforms in that order. An index's manifests for other platforms are left out (with their
 * blobs) unless `allPlatforms`; the index blob itself is exported as it is. Every selected blob must be in the
 * content store: a missing one fails the export (not found). Blob bytes are streamed from the store into the
 * tar with their sizes known up front, and checked against their digest on the way.
 *
 * The output is ended on success and destroyed (without an error of its own: the returned promise carries
 * it) on failure; the caller should write to a temporary file and rename it, as the daemon's transfer service does.
 */
import { once } from 'node:events';
import { createHash } from 'node:crypto';
import type { Writable } from 'node:stream';
import { pack, type Header, type Pack } from 'tar-stream';
import { parseDigest } from '../../content/digest.js';
import type { ContentStore } from '../../content/types.js';
import { failedPrecondition, invalidArgument, notFound } from '../../core/errdefs.js';
import { children, isIndexType, isManifestType, matchingManifests, parseIndex, parseManifest } from '../manifest.js';
import { defaultPlatform, platformMatcherOrdered, platformMatcherStrict, type PlatformMatcher } from '../platforms.js';
import { familiarName } from '../../remotes/reference.js';
import { ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME } from '../types.js';
import { type Descriptor, type Platform } from '../../core/descriptor.js';
import { readBlob } from '../blob.js';
import { descriptorJson, ociReferenceName } from './common.js';

export interface ExportOptions {
  /** One platform (ctr image export --platform). */
  platform?: Platform;
  /** Several platforms, best first (repeated --platform). Overrides `platform`. */
  platforms?: Platform[];
  /** Also export the other platforms' manifests and blobs of an index. */
  allPlatforms?: boolean;
  /** Do not write the Docker-compatible manifest.json. */
  skipDockerManifest?: boolean;
  /** Leave out non-distributable layers (e.g. Windows base layers). */
  skipNonDistributable?: boolean;
}

export interface ExportImage {
  name: string;
  target: Descriptor;
}

interface TarRecord {
  name: string;
  type: 'file' | 'directory';
  mode: number;
  size: number;
  body?: Buffer;
  blob?: Descriptor;
}

interface ExportManifest {
  manifest: Descriptor;
  names: string[];
}

const EPOCH = new Date(0);

function isNonDistributable(mt: string): boolean {
  return mt.startsWith('application/vnd.oci.image.layer.nondistributable.') || mt.startsWith('application/vnd.docker.image.rootfs.foreign.');
}

function addNameAnnotation(name: string, base: Record<string, string> | undefined): Record<string, string> {
  return { ...(base ?? {}), [ANNOTATION_IMAGE_NAME]: name, [ANNOTATION_REF_NAME]: ociReferenceName(name) };
}

function blobPath(digest: string): string {
  const { algorithm, hex } = parseDigest(digest);
  return `blobs/${algorithm}/${hex}`;
}

/** Writes `images` from `content` to `output` as an OCI layout archive: see the file header. */
export async function exportArchive(output: Writable, content: ContentStore, images: ExportImage[], opts: ExportOptions = {}): Promise<void> {
  let records: TarRecord[];
  try {
    records = await collectRecords(content, images, opts);
  } catch (err) {
    output.destroy();
    throw err;
  }
  await writeTar(output, content, records);
}

/** Every tar record of the export, sorted and unique, after checking that every blob is in the store. */
async function collectRecords(content: ContentStore, images: ExportImage[], opts: ExportOptions): Promise<TarRecord[]> {
  const platform: PlatformMatcher = opts.platforms?.length
    ? platformMatcherOrdered(opts.platforms)
    : opts.platform
      ? platformMatcherOrdered([opts.platform])
      : platformMatcherStrict(defaultPlatform());
  const keep = (d: Descriptor) => !(opts.skipNonDistributable && isNonDistributable(d.mediaType));

  const manifests: Descriptor[] = images.map((i) => {
    const { platform: _p, ...t } = i.target;
    return { ...t, annotations: addNameAnnotation(i.name, i.target.annotations) };
  });

  const algorithms = new Set<string>();
  const records: TarRecord[] = [];
  const blobRecord = (d: Descriptor) => {
    if (!keep(d)) return;
    algorithms.add(parseDigest(d.digest).algorithm);
    records.push({ name: blobPath(d.digest), type: 'file', mode: 0o444, size: d.size, blob: d });
  };
  /** The blob and everything below it (containerd's getRecords: Children without platform filtering). */
  const getRecords = async (d: Descriptor): Promise<void> => {
    blobRecord(d);
    if (isManifestType(d.mediaType) || isIndexType(d.mediaType)) {
      for (const c of children(d, await readBlob(content, d))) await getRecords(c);
    }
  };

  const dManifests = new Map<string, ExportManifest>();
  const resolvedIndex = new Map<string, string>();
  for (const desc of manifests) {
    if (isManifestType(desc.mediaType)) {
      let mt = dManifests.get(desc.digest);
      if (!mt) {
        await getRecords(desc);
        mt = { manifest: desc, names: [] };
        dManifests.set(desc.digest, mt);
      }
      const name = desc.annotations?.[ANNOTATION_IMAGE_NAME];
      if (name && !opts.skipDockerManifest) mt.names.push(name);
    } else if (isIndexType(desc.mediaType)) {
      let d = resolvedIndex.get(desc.digest);
      if (d === undefined) {
        d = '';
        blobRecord(desc);
        const index = parseIndex(await readBlob(content, desc));
        for (const m of index.manifests) {
          if (opts.allPlatforms || !m.platform || platform(m.platform)) await getRecords(m);
        }
        if (!opts.skipDockerManifest) {
          const best = matchingManifests(index.manifests, platform)[0];
          if (!best) throw notFound('no manifest found for platform');
          d = best.digest;
          if (!dManifests.has(d)) dManifests.set(d, { manifest: best, names: [] });
        }
        resolvedIndex.set(desc.digest, d);
      }
      const name = desc.annotations?.[ANNOTATION_IMAGE_NAME];
      if (d && name) dManifests.get(d)!.names.push(name);
    } else {
      throw invalidArgument(`only manifests may be exported: ${desc.mediaType}`);
    }
  }

  const json = (name: string, value: unknown, mode: number): TarRecord => {
    const body = Buffer.from(JSON.stringify(value));
    return { name, type: 'file', mode, size: body.length, body };
  };
  records.push(json('oci-layout', { imageLayoutVersion: '1.0.0' }, 0o444));
  records.push(json('index.json', { schemaVersion: 2, manifests: manifests.map(descriptorJson) }, 0o644));

  if (dManifests.size > 0) {
    const mfsts = [];
    for (const m of dManifests.values()) {
      const manifest = parseManifest(await readBlob(content, m.manifest));
      mfsts.push({
        Config: blobPath(manifest.config.digest),
        RepoTags: m.names.length ? m.names.map((n) => familiarName(n)) : null,
        Layers: manifest.layers.map((l) => blobPath(l.digest)),
      });
    }
    records.push(json('manifest.json', mfsts, 0o644));
  }
  if (algorithms.size > 0) {
    records.push({ name: 'blobs/', type: 'directory', mode: 0o755, size: 0 });
    for (const a of algorithms) records.push({ name: `blobs/${a}/`, type: 'directory', mode: 0o755, size: 0 });
  }

  records.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const unique = records.filter((r, i) => i === 0 || records[i - 1]!.name !== r.name);

  // Every blob must be there before a byte is written.
  for (const r of unique) {
    if (!r.blob) continue;
    const info = await content.info(r.blob.digest).catch((err: unknown) => {
      throw notFound(`content ${r.blob!.digest}`, err);
    });
    if (info.size !== r.blob.size) {
      throw failedPrecondition(`blob ${r.blob.digest}: ${info.size} bytes in the store, the descriptor says ${r.blob.size}`);
    }
  }

  return unique;
}

async function writeTar(output: Writable, content: ContentStore, records: TarRecord[]): Promise<void> {
  const p: Pack = pack();
  let outErr: unknown;
  const onOutErr = (err: unknown) => {
    outErr ??= err;
    p.destroy(err instanceof Error ? err : new Error(String(err)));
  };
  output.on('error', onOutErr);
  const pumping = (async () => {
    for await (const chunk of p) {
      if (!output.write(chunk as Uint8Array)) {
        await Promise.race([once(output, 'drain'), once(output, 'close')]);
      }
      if (outErr) throw outErr;
    }
  })();
  pumping.catch(() => undefined);
  try {
    for (const r of records) {
      const header: Header = {
        name: r.name,
        type: r.type,
        mode: r.mode,
        size: r.type === 'file' ? r.size : 0,
        mtime: EPOCH,
        uid: 0,
        gid: 0,
        uname: '',
        gname: '',
        linkname: '',
        devmajor: 0,
        devminor: 0,
      };
      if (r.type === 'directory' || r.body) {
        await new Promise<void>((resolve, reject) => p.entry(header, r.body ?? Buffer.alloc(0), (err) => (err ? reject(err) : resolve())));
        continue;
      }
      const blob = r.blob!;
      let done!: Promise<void>;
      const sink = (() => {
        let s!: ReturnType<Pack['entry']>;
        done = new Promise<void>((resolve, reject) => {
          s = p.entry(header, (err) => (err ? reject(err) : resolve()));
        });
        return s;
      })();
      const { algorithm } = parseDigest(blob.digest);
      const hash = createHash(algorithm);
      let n = 0;
      try {
        for await (const c of await content.read(blob.digest)) {
          const chunk = c as Buffer;
          hash.update(chunk);
          n += chunk.length;
          if (n > blob.size) throw failedPrecondition(`blob ${blob.digest}: more than ${blob.size} bytes`);
          if (!sink.write(chunk)) await Promise.race([once(sink as never, 'drain'), done]);
          if (outErr) throw outErr;
        }
        const got = `${algorithm}:${hash.digest('hex')}`;
        if (n !== blob.size) throw failedPrecondition(`blob ${blob.digest}: ${n} bytes copied, expected ${blob.size}`);
        if (got !== blob.digest) throw failedPrecondition(`unexpected digest ${got} copied for ${blob.digest}`);
      } catch (err) {
        sink.destroy();
        done.catch(() => undefined);
        throw err;
      }
      (sink as unknown as { end(): void }).end();
      await done;
    }
    p.finalize();
    await pumping;
    if (outErr) throw outErr;
  } catch (err) {
    p.destroy();
    output.off('error', onOutErr);
    output.destroy();
    throw outErr ?? err;
  }
  output.off('error', onOutErr);
  output.end();
}
