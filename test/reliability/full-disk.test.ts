/**
 * Full disks: stratad's root (content store, metadata database, snapshotters) on a small ext4 filesystem on a
 * loop device, filled with a filler file while an ingest, a pull, an unpack, a snapshot commit or a metadata
 * write runs. Each case checks what the client sees (RESOURCE_EXHAUSTED, containerd's errdefs kind for ENOSPC,
 * with no host path in the message), that nothing half-written stays recorded, that the daemon keeps serving
 * meanwhile, and that the same operation succeeds with the right bytes once the filler is deleted.
 *
 * One daemon serves every case, in the order written (each frees what it filled); a case's namespace is its own.
 */
import { createHash, randomBytes } from 'node:crypto';
import { readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { StrataClient } from '../../src/api/clients/strata.js';
import { StrataError } from '../../src/core/errdefs.js';
import { ctr, run } from '../helpers/ctr.js';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { makeLoopFs, type LoopFs } from '../helpers/loopfs.js';
import { tempDir, type TempDir } from '../helpers/temp.js';
import { listContent } from '../helpers/transfer.js';

const MiB = 1 << 20;

let fs: LoopFs;
let d: StartedDaemon;
/** Files the tests feed to clients, off the small filesystem. */
let scratch: TempDir;

beforeAll(async () => {
  scratch = await tempDir('strata-full-disk-');
  fs = await makeLoopFs('ext4', 96 * MiB);
  d = await startDaemon({ dir: { path: fs.path, cleanup: async () => undefined } });
});

afterAll(async () => {
  await stopAll();
  await fs?.cleanup();
  await scratch?.cleanup();
});

const sha256 = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

function* chunks(b: Buffer, size = MiB): Generator<Buffer> {
  for (let i = 0; i < b.length; i += size) yield b.subarray(i, i + size);
}

/** The error a call failed with, as a StrataError (fails the test if the call succeeded). */
async function failure(p: Promise<unknown>): Promise<StrataError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err, 'the call succeeded on a full disk').toBeInstanceOf(StrataError);
  return err as StrataError;
}

/** A full-disk error as the client must see it: RESOURCE_EXHAUSTED, saying so, and naming no host path. */
function expectNoSpace(err: StrataError): void {
  expect(err.kind, err.message).toBe('resource exhausted');
  expect(err.message).toMatch(/no space left on device|disk is full/);
  expect(err.message).not.toContain(fs.path);
  expect(err.message).not.toContain('/tmp/');
}

/** The daemon still answers: its process lives and read calls succeed. */
async function expectServing(c: StrataClient): Promise<void> {
  expect(d.proc.exitCode).toBeNull();
  const v = await c.call(c.version, c.version.version, {});
  expect(v.version).not.toBe('');
  await c.call(c.namespaces, c.namespaces.list, { filter: '' });
}

async function ingests(c: StrataClient) {
  return (await c.call(c.content, c.content.listStatuses, { filters: [] })).statuses;
}

/** Names in the content store's ingest directory that are not ingests (temporary or trash directories). */
async function ingestLeftovers(): Promise<string[]> {
  const names = await readdir(join(d.root, 'io.containerd.content.v1.content', 'ingest'));
  return names.filter((n) => !/^[0-9a-f]{64}$/.test(n));
}

async function readAll(c: StrataClient, digest: string): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const b of c.readBlob(digest)) parts.push(b);
  return Buffer.concat(parts);
}

describe('content ingest on a full disk', () => {
  it('an ingest that runs out of space fails with RESOURCE_EXHAUSTED, records no blob, and resumes to the right blob once space is freed', async () => {
    const c = d.client('ingest');
    const data = randomBytes(24 * MiB);
    const digest = sha256(data);
    await fs.fill(8 * MiB);
    try {
      const err = await failure(c.writeBlob(chunks(data), { ref: 'big', expected: digest, total: data.length }));
      expectNoSpace(err);
      // Nothing recorded under the digest; the ingest stays, short of its total, for a resume.
      expect((await listContent(c)).map((i) => i.digest)).not.toContain(digest);
      const [st] = await ingests(c);
      expect(st?.ref).toBe('big');
      expect(st!.offset).toBeGreaterThan(0);
      expect(st!.offset).toBeLessThan(data.length);
      expect(await ingestLeftovers()).toEqual([]);
      await expectServing(c);
    } finally {
      await fs.free();
    }
    const { digest: got, resumedAt } = await c.writeBlob(chunks(data), { ref: 'big', expected: digest, total: data.length });
    expect(got).toBe(digest);
    expect(resumedAt).toBeGreaterThan(0);
    expect(sha256(await readAll(c, digest))).toBe(digest);
    expect(await ingests(c)).toEqual([]);
    expect(await ingestLeftovers()).toEqual([]);
  });

  it('an ingest left short by a full disk can be aborted while the disk is still full, which gives its space back', async () => {
    const c = d.client('ingest-abort');
    const data = randomBytes(16 * MiB);
    await fs.fill(4 * MiB);
    try {
      expectNoSpace(await failure(c.writeBlob(chunks(data), { ref: 'abort-me', total: data.length })));
      const before = await fs.available();
      await c.call(c.content, c.content.abort, { ref: 'abort-me' });
      expect(await ingests(c)).toEqual([]);
      expect(await fs.available()).toBeGreaterThan(before + 2 * MiB);
      expect(await ingestLeftovers()).toEqual([]);
    } finally {
      await fs.free();
    }
  });

  it('ctr content ingest on a full disk reports the space exhausted without a host path, and succeeds once space is freed', async () => {
    const data = randomBytes(12 * MiB);
    const digest = sha256(data);
    await fs.fill(2 * MiB);
    try {
      const r = await ctr(d.address, ['content', 'ingest', '--expected-digest', digest, 'ctr-big'], { namespace: 'ctr-ingest', input: data });
      expect(r.code).not.toBe(0);
      // ctr 1.6's errdefs know no resource-exhausted kind: it prints the status text and ": unknown" after it.
      expect(r.stderr).toMatch(/no space left on device.*: resource exhausted/);
      expect(r.stderr).not.toContain(fs.path);
    } finally {
      await fs.free();
    }
    // ctr resumes the ingest the full disk left (it seeks its input to the offset: a file, not a pipe).
    const file = join(scratch.path, 'ctr-big');
    await writeFile(file, data);
    const ok = await run('sh', ['-c', `exec ctr --address "$1" --namespace ctr-ingest content ingest --expected-digest "$2" ctr-big < "$3"`, 'sh', d.address, digest, file]);
    expect(ok.stderr).toBe('');
    expect(ok.code).toBe(0);
    const c = d.client('ctr-ingest');
    expect(sha256(await readAll(c, digest))).toBe(digest);
  });
});
