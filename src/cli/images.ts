/**
 * strata image: ls, rm, pull, push, import, export, unpack, convert, check. Listing and checking read through the
 * images and content APIs as ctr does (same columns, same size format); transfers run in the daemon (Strata's
 * transfer service) and stream progress: per-object bars on a terminal, one line per state change elsewhere.
 */
import { readFileSync } from 'node:fs';
import { resolve as resolvePath } from 'node:path';
import type { ClientReadableStream } from '@grpc/grpc-js';
import type { StrataClient } from '../api/clients/strata.js';
import { toStrataError } from '../api/clients/strata.js';
import type { Image as PbImage } from '../api/gen/containerd/services/images/v1/images.js';
import type { Progress, RegistryOptions } from '../api/gen/strata/services/transfer/v1/transfer.js';
import { isNotFound } from '../core/errdefs.js';
import { formatBytes, imagePlatforms, requiredDescriptors } from '../images/inspect.js';
import type { BlobReader } from '../images/blob.js';
import { chainIDs, isConfigType, parseConfig } from '../images/manifest.js';
import { defaultPlatform, formatPlatform } from '../images/platforms.js';
import { credentialsFromDockerConfig } from '../remotes/dockerconfig.js';
import { parseReference } from '../remotes/reference.js';
import type { Descriptor } from '../core/descriptor.js';
import { bool, CliError, str, type Group, type Values } from './command.js';
import { blobReader } from './run.js';
import { isoOrNull, printJson, printLines, table, write } from './output.js';
import { frame } from './progress.js';
import { descriptorFromPb } from '../api/convert.js';

const registryOptions = {
  'plain-http': { type: 'boolean' },
  user: { type: 'string', short: 'u' },
  'hosts-dir': { type: 'string' },
  'max-concurrent-downloads': { type: 'string' },
} as const;

const platformOptions = {
  platform: { type: 'string', multiple: true },
  'all-platforms': { type: 'boolean' },
} as const;

const list = (values: Values, key: string): string[] => {
  const v = (values as Record<string, unknown>)[key];
  return Array.isArray(v) ? (v as string[]) : typeof v === 'string' ? [v] : [];
};

function registry(values: Values, ref: string): RegistryOptions {
  let username = '';
  let secret = '';
  const user = str(values, 'user');
  if (user !== undefined) {
    const i = user.indexOf(':');
    if (i < 0) throw new CliError('--user must be <username>:<password> (reading a password from a terminal is not supported)');
    username = user.slice(0, i);
    secret = user.slice(i + 1);
  } else {
    // As docker and nerdctl do: credentials for the registry host from ~/.docker/config.json.
    const creds = credentialsFromDockerConfig()(parseReference(ref).host);
    if (creds) ({ username, secret } = creds);
  }
  const max = str(values, 'max-concurrent-downloads');
  const hostsDir = str(values, 'hosts-dir');
  return {
    plainHttp: bool(values, 'plain-http'),
    username,
    secret,
    // The daemon reads the directory, from its own working directory: send it an absolute path.
    hostsDir: hostsDir ? resolvePath(hostsDir) : '',
    maxConcurrent: max ? Number.parseInt(max, 10) : 0,
  };
}

/** Shows a transfer's progress and resolves when the stream ends (rejects with the daemon's error). */
/**
 * The paths of a `ctr-remote image optimize --record-out` file (a JSON object per line: {"path": ...,
 * "manifestDigest": ..., "layerIndex": ...}), each once, in order, as nerdctl's --estargz-record-in reads it.
 */
function readRecordFile(path: string): string[] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new CliError(`--estargz-record-in ${path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  const out: string[] = [];
  const seen = new Set<string>();
  for (const [i, line] of text.split('\n').entries()) {
    if (!line.trim()) continue;
    let e: unknown;
    try {
      e = JSON.parse(line);
    } catch {
      throw new CliError(`--estargz-record-in ${path}: line ${i + 1} is not JSON`);
    }
    const p = (e as { path?: unknown } | null)?.path;
    if (typeof p !== 'string') throw new CliError(`--estargz-record-in ${path}: line ${i + 1} has no "path"`);
    if (!seen.has(p)) {
      seen.add(p);
      out.push(p);
    }
  }
  return out;
}

async function follow(stream: ClientReadableStream<Progress>, quiet = false): Promise<Progress[]> {
  const tty = process.stderr.isTTY && !quiet;
  const rows = new Map<string, Progress>();
  const finals: Progress[] = [];
  let drawn = 0;
  let last = 0;
  // Each frame climbs over the previous one and rewrites the table, lines cut to the width (src/cli/progress.ts).
  const draw = (force = false, final = false) => {
    const now = Date.now();
    if (!force && now - last < 100) return;
    last = now;
    const f = frame([...rows.values()].map(bar), drawn, process.stderr.columns ?? 0, process.stderr.rows ?? 0, final);
    process.stderr.write(f.text);
    drawn = f.drawn;
  };
  try {
    for await (const p of stream as AsyncIterable<Progress>) {
      if (p.kind === 'image' || p.kind === 'archive') finals.push(p);
      if (quiet) continue;
      const key = `${p.kind}-${p.ref}`;
      const prev = rows.get(key);
      rows.set(key, p);
      if (tty) draw(prev?.status !== p.status);
      else if (prev?.status !== p.status) process.stderr.write(`${plain(p)}\n`);
    }
  } catch (err) {
    if (tty) draw(true, true);
    throw toStrataError(err);
  }
  if (tty) draw(true, true);
  return finals;
}

const short = (ref: string) => (ref.startsWith('sha256:') ? ref.slice(7, 19) : ref);

function plain(p: Progress): string {
  const size = p.total > 0 ? ` ${formatBytes(p.total)}` : '';
  const detail = p.detail ? ` ${p.detail}` : '';
  return `${p.kind} ${p.ref}: ${p.status}${p.status === 'done' || p.status === 'exists' ? size : ''}${detail}`;
}

function bar(p: Progress): string {
  const label = `${p.kind}-${short(p.ref)}:`.padEnd(24);
  if (p.total > 0 && (p.status === 'downloading' || p.status === 'resuming' || p.status === 'uploading')) {
    const width = 30;
    const filled = Math.min(width, Math.round((p.offset / p.total) * width));
    return `${label} ${p.status.padEnd(12)} |${'+'.repeat(filled)}${'-'.repeat(width - filled)}| ${formatBytes(p.offset)}/${formatBytes(p.total)}`;
  }
  return `${label} ${p.status.padEnd(12)}${p.total > 0 ? ` ${formatBytes(p.total)}` : ''}${p.detail ? ` ${p.detail}` : ''}`;
}


async function listImages(c: StrataClient, filters: string[]): Promise<PbImage[]> {
  return (await c.call(c.images, c.images.list, { filters })).images;
}

/** Whether the image's layers for the host platform are unpacked in `snapshotter` (ctr's IsUnpacked). */
async function isUnpacked(c: StrataClient, read: BlobReader, target: Descriptor, snapshotter: string): Promise<boolean> {
  const { required, complete } = await requiredDescriptors(read, target, defaultPlatform());
  if (!complete) return false;
  const config = required.find((d) => isConfigType(d.mediaType));
  if (!config) return false;
  const ids = parseConfig(await read(config)).rootfs.diff_ids;
  const top = chainIDs(ids).at(-1);
  if (!top) return false;
  try {
    await c.call(c.snapshots, c.snapshots.stat, { snapshotter, key: top });
    return true;
  } catch (err) {
    if (isNotFound(err)) return false;
    throw err;
  }
}

export const images: Group = {
  name: 'images',
  aliases: ['image', 'i'],
  summary: 'manage images',
  commands: [
    {
      name: 'ls',
      aliases: ['list'],
      usage: '[<filter>...]',
      summary: 'list images known to stratad',
      options: { quiet: { type: 'boolean', short: 'q' } },
      async run({ args, values, session }) {
        const c = await session.connect();
        const list = await listImages(c, args);
        if (bool(values, 'quiet')) return printLines(list.map((i) => i.name));
        const read = blobReader(c);
        const host = defaultPlatform();
        const rows: string[][] = [];
        const json: unknown[] = [];
        for (const img of list) {
          const target = descriptorFromPb(img.target);
          let size = 0;
          try {
            size = (await requiredDescriptors(read, target, host)).required.reduce((n, d) => n + d.size, 0);
          } catch (err) {
            process.stderr.write(`strata: failed calculating size for image ${img.name}: ${(err as Error).message}\n`);
          }
          let platforms = '-';
          let specs: string[] = [];
          try {
            specs = [...new Set((await imagePlatforms(read, target)).map(formatPlatform))].sort();
            if (specs.length > 0) platforms = specs.join(',');
          } catch (err) {
            process.stderr.write(`strata: failed resolving platform for image ${img.name}: ${(err as Error).message}\n`);
          }
          const labels = Object.entries(img.labels).map(([k, v]) => `${k}=${v}`).sort();
          rows.push([img.name, target.mediaType, target.digest, formatBytes(size), platforms, labels.length > 0 ? labels.join(',') : '-']);
          json.push({ name: img.name, target, size, platforms: specs, labels: img.labels, createdAt: isoOrNull(img.createdAt), updatedAt: isoOrNull(img.updatedAt) });
        }
        if (session.json) return printJson(json);
        await write(table([['REF', 'TYPE', 'DIGEST', 'SIZE', 'PLATFORMS', 'LABELS'], ...rows], { terminated: true }));
      },
    },
    {
      name: 'rm',
      aliases: ['delete', 'del', 'remove'],
      usage: '<name>...',
      summary: 'remove one or more images by name',
      options: { sync: { type: 'boolean' } },
      async run({ args, values, session }) {
        if (args.length === 0) throw new CliError('at least one image name is required');
        const c = await session.connect();
        let status = 0;
        for (const name of args) {
          try {
            await c.call(c.images, c.images.delete, { name, sync: bool(values, 'sync') });
            process.stdout.write(`${name}\n`);
          } catch (err) {
            if (!isNotFound(err)) throw err;
            process.stderr.write(`strata: image ${name}: not found\n`);
            status = 1;
          }
        }
        return status;
      },
    },
    {
      name: 'pull',
      usage: '<ref>',
      summary: 'fetch an image from a registry and unpack it (in the daemon)',
      options: {
        ...registryOptions,
        ...platformOptions,
        snapshotter: { type: 'string' },
        'skip-unpack': { type: 'boolean' },
        label: { type: 'string', multiple: true },
        quiet: { type: 'boolean', short: 'q' },
      },
      async run({ args, values, session }) {
        const ref = args[0];
        if (!ref || args.length > 1) throw new CliError('pull takes exactly one image reference');
        const c = await session.connect();
        const labels: Record<string, string> = {};
        for (const l of list(values, 'label')) {
          const i = l.indexOf('=');
          labels[i < 0 ? l : l.slice(0, i)] = i < 0 ? '' : l.slice(i + 1);
        }
        const stream = c.transfer.pull(
          {
            ref,
            platforms: list(values, 'platform'),
            allPlatforms: bool(values, 'all-platforms'),
            unpack: !bool(values, 'skip-unpack'),
            snapshotter: str(values, 'snapshotter') ?? process.env.CONTAINERD_SNAPSHOTTER ?? '',
            registry: registry(values, ref),
            labels,
          },
          c.metadata(),
        );
        const finals = await follow(stream, bool(values, 'quiet'));
        const done = finals.find((p) => p.status === 'pulled');
        if (done) process.stdout.write(`${done.ref} ${done.detail}\n`);
      },
    },
    {
      name: 'push',
      usage: '<remote> [<local>]',
      summary: 'push an image to a registry (in the daemon)',
      options: { ...registryOptions, platform: { type: 'string', multiple: true }, quiet: { type: 'boolean', short: 'q' } },
      async run({ args, values, session }) {
        const [ref, local] = args;
        if (!ref || args.length > 2) throw new CliError('push takes a remote reference and optionally a local image name');
        const c = await session.connect();
        const stream = c.transfer.push(
          { ref, image: local ?? '', platforms: list(values, 'platform'), registry: registry(values, ref) },
          c.metadata(),
        );
        const finals = await follow(stream, bool(values, 'quiet'));
        const done = finals.find((p) => p.status === 'pushed');
        if (done) process.stdout.write(`${done.ref} ${done.detail}\n`);
      },
    },
    {
      name: 'import',
      usage: '<archive>',
      summary: 'import an OCI image layout or docker save archive (read by the daemon)',
      options: {
        ...platformOptions,
        'index-name': { type: 'string' },
        'no-unpack': { type: 'boolean' },
        snapshotter: { type: 'string' },
      },
      async run({ args, values, session }) {
        const file = args[0];
        if (!file || args.length > 1) throw new CliError('import takes exactly one archive path');
        const c = await session.connect();
        const stream = c.transfer.import(
          {
            path: resolvePath(file),
            indexName: str(values, 'index-name') ?? '',
            platforms: list(values, 'platform'),
            allPlatforms: bool(values, 'all-platforms'),
            unpack: !bool(values, 'no-unpack'),
            snapshotter: str(values, 'snapshotter') ?? process.env.CONTAINERD_SNAPSHOTTER ?? '',
          },
          c.metadata(),
        );
        const finals = await follow(stream, true);
        for (const p of finals.filter((f) => f.status === 'imported')) process.stdout.write(`${p.ref} ${p.detail}\n`);
      },
    },
    {
      name: 'export',
      usage: '<archive> <image>...',
      summary: 'export images as an OCI image layout archive (written by the daemon)',
      options: { ...platformOptions },
      async run({ args, values, session }) {
        const [file, ...names] = args;
        if (!file || names.length === 0) throw new CliError('export takes an archive path and at least one image name');
        const c = await session.connect();
        const stream = c.transfer.export(
          { path: resolvePath(file), images: names, platforms: list(values, 'platform'), allPlatforms: bool(values, 'all-platforms') },
          c.metadata(),
        );
        await follow(stream, true);
      },
    },
    {
      name: 'unpack',
      usage: '<image>',
      summary: 'unpack a stored image into a snapshotter',
      options: { snapshotter: { type: 'string' }, platform: { type: 'string', multiple: true } },
      async run({ args, values, session }) {
        const name = args[0];
        if (!name || args.length > 1) throw new CliError('unpack takes exactly one image name');
        const c = await session.connect();
        const stream = c.transfer.unpack(
          { image: name, snapshotter: str(values, 'snapshotter') ?? process.env.CONTAINERD_SNAPSHOTTER ?? '', platforms: list(values, 'platform') },
          c.metadata(),
        );
        const finals = await follow(stream, true);
        const done = finals.find((p) => p.status === 'unpacked');
        if (done) process.stdout.write(`${done.ref} ${done.detail}\n`);
      },
    },
    {
      name: 'convert',
      usage: '--estargz [--oci] [--estargz-record-in FILE] <source> <target>',
      summary: 'convert a stored image to eStargz layers as a new image (in the daemon), as nerdctl image convert does',
      options: {
        ...platformOptions,
        estargz: { type: 'boolean' },
        oci: { type: 'boolean' },
        'estargz-chunk-size': { type: 'string' },
        'estargz-compression-level': { type: 'string' },
        'estargz-record-in': { type: 'string' },
        quiet: { type: 'boolean', short: 'q' },
      },
      async run({ args, values, session }) {
        const [source, target] = args;
        if (!source || !target || args.length > 2) throw new CliError('convert takes a source and a target image name');
        if (!bool(values, 'estargz')) throw new CliError('convert: say which conversion: --estargz');
        const int = (key: string, min: number, max: number): number => {
          const v = str(values, key);
          if (v === undefined) return 0;
          const n = Number(v);
          if (!Number.isSafeInteger(n) || n < min || n > max) throw new CliError(`--${key} must be a whole number from ${min} to ${max}`);
          return n;
        };
        const recordIn = str(values, 'estargz-record-in');
        const prioritized = recordIn ? readRecordFile(recordIn) : [];
        const c = await session.connect();
        const stream = c.transfer.convert(
          {
            source,
            target,
            estargz: true,
            oci: bool(values, 'oci'),
            platforms: list(values, 'platform'),
            allPlatforms: bool(values, 'all-platforms'),
            estargzChunkSize: int('estargz-chunk-size', 1, 1 << 30),
            estargzCompressionLevel: int('estargz-compression-level', 1, 9),
            estargzPrioritizedFiles: prioritized,
          },
          c.metadata(),
        );
        const finals = await follow(stream, bool(values, 'quiet'));
        const done = finals.find((p) => p.status === 'converted' && p.kind === 'image');
        if (done) process.stdout.write(`${done.ref} ${done.detail}\n`);
      },
    },
    {
      name: 'check',
      usage: '[<filter>...]',
      summary: 'check that every image has all its content (and whether it is unpacked)',
      options: { quiet: { type: 'boolean', short: 'q' }, snapshotter: { type: 'string' } },
      async run({ args, values, session }) {
        const c = await session.connect();
        const read = blobReader(c);
        const snapshotter = str(values, 'snapshotter') ?? process.env.CONTAINERD_SNAPSHOTTER ?? 'overlayfs';
        const rows: string[][] = [];
        const json: unknown[] = [];
        for (const img of await listImages(c, args)) {
          const target = descriptorFromPb(img.target);
          const { required, complete } = await requiredDescriptors(read, target, defaultPlatform());
          const present: Descriptor[] = [];
          for (const d of required) {
            try {
              await c.call(c.content, c.content.info, { digest: d.digest });
              present.push(d);
            } catch (err) {
              if (!isNotFound(err)) throw err;
            }
          }
          const sum = (ds: Descriptor[]) => ds.reduce((n, d) => n + d.size, 0);
          let status: string;
          let size: string;
          if (complete) {
            status = `${present.length === required.length ? 'complete' : 'incomplete'} (${present.length}/${required.length})`;
            size = `${formatBytes(sum(present))}/${formatBytes(sum(required))}`;
          } else {
            status = `unavailable (${present.length}/?)`;
            size = `${formatBytes(sum(present))}/?`;
          }
          const unpacked = await isUnpacked(c, read, target, snapshotter).catch(() => false);
          const ready = complete && present.length === required.length && unpacked;
          if (bool(values, 'quiet')) {
            if (ready) rows.push([img.name]);
            continue;
          }
          rows.push([img.name, target.mediaType, target.digest, status, size, String(unpacked)]);
          json.push({ name: img.name, target, status, required: required.length, present: present.length, unpacked });
        }
        if (session.json) return printJson(json);
        if (bool(values, 'quiet')) return printLines(rows.map((r) => r[0]!));
        // As ctr: the status column says what is missing; the exit status is 0 unless a check failed.
        await write(table([['REF', 'TYPE', 'DIGEST', 'STATUS', 'SIZE', 'UNPACKED'], ...rows], { terminated: true }));
      },
    },
  ],
};

