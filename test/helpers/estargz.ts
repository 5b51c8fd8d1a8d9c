/**
 * eStargz test helpers: blobs built and verified by stargz-snapshotter's own Go `estargz` package (the
 * interop program test/go/gopath/src/strata.test/interop/estargz), a counting ReadAt over a buffer, a sample
 * layer tar with every entry kind, and a way to rewrite a blob's TOC (for hostile-TOC tests).
 */
import { createHash } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gunzipSync, gzipSync } from 'node:zlib';
import { expect } from 'vitest';
import { footerBytes, parseFooter, type ReadAt, type Toc } from '../../src/estargz/index.js';
import { goBinary, runGo } from './go.js';
import { makeTar, type TarEntry } from './tar.js';

export const sha256 = (b: Buffer | string) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** Deterministic pseudo-random bytes (incompressible enough to make real gzip members). */
export function bytes(n: number, seed = 1): Buffer {
  const b = Buffer.alloc(n);
  let x = seed * 2654435761 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}

/** A layer with every entry kind: dirs (one implicit), files around a chunk size of 1000, links, an xattr. */
export function sampleEntries(): TarEntry[] {
  return [
    { name: 'etc/', type: 'directory', mode: 0o755 },
    { name: 'etc/hostname', body: 'strata\n', mode: 0o644 },
    { name: 'etc/empty', body: '', mode: 0o600, uid: 1000, gid: 1000 },
    { name: 'bin/', type: 'directory', mode: 0o755 },
    { name: 'bin/tool', body: bytes(5000, 7), mode: 0o755 },
    { name: 'bin/exact', body: bytes(1000, 8), mode: 0o755 },
    { name: 'bin/one-more', body: bytes(1001, 9), mode: 0o4755 },
    { name: 'bin/link-to-tool', type: 'link', linkname: 'bin/tool' },
    { name: 'bin/sh', type: 'symlink', linkname: 'tool' },
    { name: 'usr/share/doc/readme', body: 'read me\n'.repeat(300), mode: 0o644, pax: { 'SCHILY.xattr.user.note': 'hello' } },
    { name: 'dev/null', type: 'character-device', devmajor: 1, devminor: 3, mode: 0o666 },
    { name: 'run/fifo', type: 'fifo', mode: 0o644 },
  ];
}

export const sampleTar = () => makeTar(sampleEntries());

/** Regular-file contents of the sample, by path (hard links included). */
export function sampleFiles(): Map<string, Buffer> {
  const m = new Map<string, Buffer>();
  for (const e of sampleEntries()) {
    if ((e.type ?? 'file') === 'file') m.set(e.name, Buffer.isBuffer(e.body) ? e.body : Buffer.from(e.body ?? ''));
  }
  m.set('bin/link-to-tool', m.get('bin/tool')!);
  return m;
}

/** Builds an eStargz blob with Go's estargz.Build (what ctr-remote and nerdctl use). */
export async function goBuild(dir: string, tar: Buffer, opts: { chunk?: number; prioritized?: string[] } = {}) {
  const inPath = join(dir, `in-${Date.now()}-${Math.random()}.tar`);
  const outPath = `${inPath}.esgz`;
  await writeFile(inPath, tar);
  const args = ['build', inPath, outPath];
  if (opts.chunk) args.push('-chunk', String(opts.chunk));
  if (opts.prioritized) args.push('-prioritized', opts.prioritized.join(','));
  const r = await runGo(await goBinary('estargz'), args);
  expect(r.code, r.stdout + r.stderr).toBe(0);
  const meta = JSON.parse(r.stdout) as { tocDigest: string; diffID: string; size: number };
  return { blob: await readFile(outPath), ...meta };
}

/** Opens and verifies a blob with Go's estargz.Open + VerifyTOC + chunk verifiers: its file listing. */
export async function goVerify(dir: string, blob: Buffer, tocDigest: string) {
  const p = join(dir, `verify-${Date.now()}-${Math.random()}.esgz`);
  await writeFile(p, blob);
  const r = await runGo(await goBinary('estargz'), ['verify', p, tocDigest]);
  const lines = r.stdout.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
  return { code: r.code, ok: r.stdout.includes('PASS verify'), output: r.stdout + r.stderr, entries: lines };
}

/** A ReadAt over a buffer that counts its calls and bytes. */
export function bufferReadAt(blob: Buffer) {
  const stats = { calls: 0, bytes: 0 };
  const readAt: ReadAt = async (offset, length) => {
    stats.calls++;
    stats.bytes += length;
    return blob.subarray(offset, offset + length);
  };
  return { readAt, stats };
}

/** The TOC JSON of a blob (gzip eStargz footer), parsed. */
export function tocOf(blob: Buffer): { toc: Toc; tocOffset: number } {
  const { tocOffset } = parseFooter(blob.subarray(blob.length - 51));
  const tar = gunzipSync(blob.subarray(tocOffset, blob.length - 51));
  const size = Number.parseInt(tar.toString('latin1', 124, 136).replace(/\0.*$/, ''), 8);
  return { toc: JSON.parse(tar.toString('utf8', 512, 512 + size)) as Toc, tocOffset };
}

/** The blob with its TOC replaced by `json` (payload kept): for hostile TOCs. Returns the new TOC digest too. */
export async function withToc(blob: Buffer, json: string | Buffer): Promise<{ blob: Buffer; tocDigest: string }> {
  const { tocOffset } = tocOf(blob);
  const body = Buffer.isBuffer(json) ? json : Buffer.from(json);
  const tar = await makeTar([{ name: 'stargz.index.json', body, mode: 0o644 }]);
  const member = gzipSync(tar);
  return { blob: Buffer.concat([blob.subarray(0, tocOffset), member, footerBytes(tocOffset)]), tocDigest: sha256(body) };
}

/**
 * stargz-snapshotter's ctr-remote, built offline from Debian's sources into test/go/bin (once; a lock dir
 * keeps two workers from building it at the same time).
 */
export async function ctrRemoteBinary(): Promise<string> {
  const { existsSync, mkdirSync, renameSync, rmdirSync } = await import('node:fs');
  const { execFile } = await import('node:child_process');
  const { promisify } = await import('node:util');
  const { GO_BIN, goEnv } = await import('./go.js');
  const out = join(GO_BIN, 'ctr-remote');
  if (existsSync(out)) return out;
  mkdirSync(GO_BIN, { recursive: true });
  const lock = join(GO_BIN, '.ctr-remote.lock');
  for (let i = 0; ; i++) {
    try {
      mkdirSync(lock);
      break;
    } catch {
      if (i > 3000) throw new Error('timed out waiting for the ctr-remote build lock');
      await new Promise((r) => setTimeout(r, 200));
      if (existsSync(out)) return out;
    }
  }
  try {
    if (existsSync(out)) return out;
    const tmp = `${out}.tmp-${process.pid}`;
    await promisify(execFile)('go', ['build', '-o', tmp, 'github.com/containerd/stargz-snapshotter/cmd/ctr-remote'], {
      env: goEnv(),
      timeout: 10 * 60_000,
      maxBuffer: 16 << 20,
    });
    renameSync(tmp, out);
    return out;
  } finally {
    rmdirSync(lock);
  }
}

/** A ReadAt over a registry blob by HTTP Range requests, counting them. */
export function registryReadAt(baseUrl: string, repo: string, digest: string) {
  const stats = { requests: 0, bytes: 0 };
  const readAt: ReadAt = async (offset, length) => {
    stats.requests++;
    const res = await fetch(`${baseUrl}/v2/${repo}/blobs/${digest}`, { headers: { Range: `bytes=${offset}-${offset + length - 1}` } });
    if (res.status !== 206) throw new Error(`range request for ${digest}: HTTP ${res.status}`);
    const b = Buffer.from(await res.arrayBuffer());
    stats.bytes += b.length;
    return b;
  };
  return { readAt, stats };
}

/** A manifest (OCI or Docker) from a registry by tag. */
export async function registryManifest(baseUrl: string, repo: string, ref: string): Promise<Record<string, any>> {
  const res = await fetch(`${baseUrl}/v2/${repo}/manifests/${ref}`, {
    headers: {
      Accept: [
        'application/vnd.oci.image.manifest.v1+json',
        'application/vnd.docker.distribution.manifest.v2+json',
        'application/vnd.oci.image.index.v1+json',
        'application/vnd.docker.distribution.manifest.list.v2+json',
      ].join(', '),
    },
  });
  if (!res.ok) throw new Error(`manifest ${repo}:${ref}: HTTP ${res.status}`);
  return (await res.json()) as Record<string, any>;
}

export async function registryBlob(baseUrl: string, repo: string, digest: string): Promise<Buffer> {
  const res = await fetch(`${baseUrl}/v2/${repo}/blobs/${digest}`);
  if (!res.ok) throw new Error(`blob ${digest}: HTTP ${res.status}`);
  return Buffer.from(await res.arrayBuffer());
}
