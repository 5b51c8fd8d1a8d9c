/**
 * Helpers shared by archive import and export: reading tar streams entry by entry, JSON in the byte form
 * containerd (Go's encoding/json over the OCI structs) writes, whole-blob writes on a content store (reads:
 * ../blob.ts), and containerd's reference helpers for archive names.
 */
import { randomBytes } from 'node:crypto';
import type { Readable } from 'node:stream';
import { extract, type Header } from 'tar-stream';
import { digestOf } from '../../content/digest.js';
import type { ContentStore } from '../../content/types.js';
import { invalidArgument, isAlreadyExists, StrataError } from '../../core/errdefs.js';
import type { Descriptor, Platform } from '../../core/descriptor.js';

/** An entry's data as tar-stream (streamx) gives it. */
export interface EntryData extends AsyncIterable<Buffer> {
  resume(): unknown;
}

/**
 * Reads a tar stream entry by entry, calling `onEntry` for each (which must consume or drain the data).
 * tar-stream's streamx streams do not finish reliably under stream.pipeline, so the extractor is fed by hand
 * (the same way src/diff/apply.ts does). Parse errors become 'invalid argument'.
 */
export async function forEachTarEntry(input: Readable, onEntry: (header: Header, data: EntryData) => Promise<void>): Promise<void> {
  const ex = extract();
  let stopped = false;
  let pumpErr: unknown;
  let exErr: unknown;
  ex.on('error', (err: unknown) => {
    exErr ??= err;
  });
  const pump = (async () => {
    for await (const chunk of input as AsyncIterable<Buffer | string>) {
      if (stopped) return;
      const buf = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
      if (!ex.write(buf)) {
        await new Promise<void>((resolve) => {
          const done = () => {
            ex.off('drain', done);
            ex.off('close', done);
            resolve();
          };
          ex.on('drain', done);
          ex.on('close', done);
        });
      }
    }
    (ex as unknown as { end(): void }).end();
  })().catch((err: unknown) => {
    if (stopped) return;
    pumpErr = err;
    ex.destroy(err instanceof Error ? err : new Error(String(err)));
  });
  try {
    for await (const entry of ex) {
      await onEntry(entry.header, entry as unknown as EntryData);
    }
  } catch (err) {
    stopped = true;
    ex.destroy();
    input.destroy();
    await pump;
    throw err instanceof StrataError ? err : wrapTarError(pumpErr ?? exErr ?? err);
  }
  await pump;
  if (pumpErr) throw wrapTarError(pumpErr);
}

function wrapTarError(err: unknown): unknown {
  if (err instanceof Error && /Unexpected end|Invalid tar header|Invalid header|checksum/i.test(err.message)) {
    return invalidArgument(`invalid tar archive: ${err.message}`, err);
  }
  return err;
}

/** Reads an entry whole, refusing more than `limit` bytes. */
export async function readEntry(data: EntryData, limit: number, name: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of data) {
    n += c.length;
    if (n > limit) throw invalidArgument(`${name}: larger than ${limit} bytes`);
    chunks.push(c);
  }
  return Buffer.concat(chunks);
}

/** Drains an entry without keeping it. */
export async function drainEntry(data: EntryData): Promise<void> {
  for await (const _ of data) {
    // discard
  }
}

/**
 * Writes `bytes` as a blob (expected digest and size checked by the store), with optional labels; a blob the
 * namespace already has is fine (its labels are then merged in with labels.<key> paths).
 */
export async function writeBlobBytes(content: ContentStore, bytes: Buffer, labels?: Record<string, string>): Promise<string> {
  const digest = digestOf(bytes);
  const ref = `strata-archive-${randomBytes(6).toString('hex')}-${digest}`;
  let w;
  try {
    w = await content.writer({ ref, total: bytes.length, expected: digest });
  } catch (err) {
    if (!isAlreadyExists(err)) throw err;
    if (labels && Object.keys(labels).length > 0) {
      await content.update({ digest, labels }, Object.keys(labels).map((k) => `labels.${k}`));
    }
    return digest;
  }
  try {
    if (w.offset !== bytes.length) {
      if (w.offset > 0) await w.truncate(0);
      await w.write(bytes);
    }
    await w.commit(bytes.length, digest, labels ? { labels } : {});
  } catch (err) {
    if (!isAlreadyExists(err)) {
      await w.close().catch(() => undefined);
      await content.abort(ref).catch(() => undefined);
      throw err;
    }
  } finally {
    await w.close().catch(() => undefined);
  }
  return digest;
}

function platformJson(p: Platform): Record<string, unknown> {
  const o: Record<string, unknown> = { architecture: p.architecture, os: p.os };
  if (p['os.version']) o['os.version'] = p['os.version'];
  if (p['os.features'] && p['os.features'].length) o['os.features'] = p['os.features'];
  if (p.variant) o['variant'] = p.variant;
  return o;
}

function sortedMap(m: Record<string, string>): Record<string, string> {
  const o: Record<string, string> = {};
  for (const k of Object.keys(m).sort()) o[k] = m[k]!;
  return o;
}

/**
 * A descriptor as Go's encoding/json writes ocispec.Descriptor: mediaType, digest, size, urls, annotations
 * (keys sorted), platform (architecture, os, os.version, os.features, variant); empty fields omitted.
 */
export function descriptorJson(d: Descriptor): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  if (d.mediaType) o['mediaType'] = d.mediaType;
  o['digest'] = d.digest;
  o['size'] = d.size;
  if (d.urls && d.urls.length) o['urls'] = d.urls;
  if (d.annotations && Object.keys(d.annotations).length) o['annotations'] = sortedMap(d.annotations);
  if (d.platform) o['platform'] = platformJson(d.platform);
  return o;
}

/**
 * containerd's ociReferenceName: the "object" of a reference (what follows the locator: the tag, or
 * "@digest"), e.g. "docker.io/library/busybox:latest" → "latest"; the whole name when it does not parse
 * as host/path (e.g. "busybox:latest").
 */
export function ociReferenceName(name: string): string {
  if (name.includes('://')) return name;
  const slash = name.indexOf('/');
  const host = slash < 0 ? name : name.slice(0, slash);
  const path = slash < 0 ? '' : name.slice(slash);
  if (host === '' || host.includes('@')) return name;
  const colon = host.lastIndexOf(':');
  if (colon >= 0 && !/^\d*$/.test(host.slice(colon + 1))) return name;
  const m = /[:@]/.exec(path);
  if (!m) return '';
  const obj = path.slice(m.index);
  return obj.startsWith(':') ? obj.slice(1) : obj;
}

/** The names of an archive entry, cleaned like Go's path.Clean; '..' escapes and absolute names are refused. */
export function cleanEntryName(name: string): string {
  if (name.startsWith('/')) throw invalidArgument(`archive entry ${JSON.stringify(name)}: absolute name`);
  const out: string[] = [];
  for (const c of name.split('/')) {
    if (c === '' || c === '.') continue;
    if (c === '..') {
      if (out.length === 0) throw invalidArgument(`archive entry ${JSON.stringify(name)} climbs out of the archive`);
      out.pop();
      continue;
    }
    if (c.includes('\0')) throw invalidArgument(`archive entry ${JSON.stringify(name)} has a NUL in its name`);
    out.push(c);
  }
  return out.join('/');
}

/** A unique ingest ref for one archive entry. */
export const entryRef = (name: string) => `strata-import-${randomBytes(6).toString('hex')}-${name}`;
