/**
 * The local content store, following containerd's content test suite (content/testsuite) where it applies to a
 * label-less store, plus Strata's layout, lock and crash-consistency rules.
 */
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve, sep } from 'node:path';
import type { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  Digester,
  digestOf,
  openLocalContentStore,
  type ContentWriter,
  type LocalContentStore,
} from '../../src/content/index.js';
import type { ErrorKind } from '../../src/core/errdefs.js';

const EMPTY = 'sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';
const MiB = 1 << 20;

let tmp: string;
let root: string;
let store: LocalContentStore;

beforeEach(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'strata-content-'));
  root = join(tmp, 'io.containerd.content.v1.content');
  store = await openLocalContentStore(root);
});

afterEach(async () => {
  await rm(tmp, { recursive: true, force: true });
});

/** Deterministic pseudo-random bytes (xorshift32), different per seed, like the suite's createContent. */
let seedCounter = 0;
function createContent(size: number, seed = ++seedCounter): { data: Buffer; digest: string } {
  const data = Buffer.allocUnsafe(size);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < size; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    data[i] = x & 0xff;
  }
  return { data, digest: digestOf(data) };
}

async function readAll(r: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of r) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

/** Compares bytes without vitest's deep equality, which walks every index of a large Buffer. */
function expectBytes(actual: Buffer, expected: Uint8Array): void {
  const ok = actual.equals(expected);
  if (!ok) {
    let i = 0;
    while (i < Math.min(actual.length, expected.length) && actual[i] === expected[i]) i++;
    expect.fail(`bytes differ: got ${actual.length} bytes, expected ${expected.length}; first difference at ${i}`);
  }
}

async function rejectsWith(p: Promise<unknown>, kind: ErrorKind, message?: string): Promise<void> {
  let err: unknown;
  try {
    await p;
  } catch (e) {
    err = e;
  }
  expect(err, `expected a '${kind}' error`).toBeDefined();
  expect((err as { kind?: string }).kind, String(err)).toBe(kind);
  if (message !== undefined) expect((err as Error).message).toBe(`${message}: ${kind}`);
}

/** Writes in small pieces like the suite's io.CopyBuffer with a 32-byte buffer. */
async function writeInPieces(w: ContentWriter, data: Uint8Array, piece: number): Promise<void> {
  for (let off = 0; off < data.length; off += piece) await w.write(data.subarray(off, off + piece));
}

async function ingest(ref: string, data: Uint8Array): Promise<string> {
  const w = await store.writer({ ref, total: data.length });
  await w.write(data);
  await w.commit(data.length);
  await w.close();
  return w.digest();
}

/** Every path under `dir`, relative to it. */
async function walk(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    out.push(p);
    if (e.isDirectory()) out.push(...(await walk(p)));
  }
  return out;
}

describe('layout', () => {
  it('creates blobs/ and ingest/ under the root', async () => {
    expect((await stat(join(root, 'blobs'))).isDirectory()).toBe(true);
    expect((await stat(join(root, 'ingest'))).isDirectory()).toBe(true);
    expect(store.root).toBe(resolve(root));
  });

  it('stores blobs at blobs/<alg>/<hex>, read-only', async () => {
    const { data, digest } = createContent(100);
    await ingest('layout', data);
    const p = join(root, 'blobs', 'sha256', digest.slice('sha256:'.length));
    expect(store.blobPath(digest)).toBe(p);
    const st = await stat(p);
    expect(st.mode & 0o777).toBe(0o444);
    expectBytes(await readFile(p), data);
    // the ingest is gone
    expect(await readdir(join(root, 'ingest'))).toEqual([]);
  });

  it('keeps ingests in ingest/<sha256(ref)>/ with ref, data, startedat, updatedat, total, expected', async () => {
    const { data, digest } = createContent(64);
    const w = await store.writer({ ref: 'my-ref', total: 64, expected: digest });
    await w.write(data.subarray(0, 10));
    await w.close();
    const dir = join(root, 'ingest', digestOf('my-ref').slice('sha256:'.length));
    expect((await readdir(dir)).sort()).toEqual(['data', 'expected', 'ref', 'startedat', 'total', 'updatedat']);
    expect(await readFile(join(dir, 'ref'), 'utf8')).toBe('my-ref');
    expect(await readFile(join(dir, 'total'), 'utf8')).toBe('64');
    expect(await readFile(join(dir, 'expected'), 'utf8')).toBe(digest);
    expectBytes(await readFile(join(dir, 'data')), data.subarray(0, 10));
    expect(Number.isNaN(Date.parse(await readFile(join(dir, 'startedat'), 'utf8')))).toBe(false);
  });

  it('reads an ingest written by containerd (Go timestamps, no expected file)', async () => {
    const dir = join(root, 'ingest', digestOf('go-ref').slice('sha256:'.length));
    await mkdir(dir);
    await writeFile(join(dir, 'ref'), 'go-ref');
    await writeFile(join(dir, 'data'), 'hello');
    await writeFile(join(dir, 'startedat'), '2023-01-02T15:04:05.123456789+01:00');
    await writeFile(join(dir, 'updatedat'), '2023-01-02T15:04:06.5Z');
    await writeFile(join(dir, 'total'), '11');
    const st = await store.status('go-ref');
    expect(st).toMatchObject({ ref: 'go-ref', offset: 5, total: 11, expected: '' });
    expect(st.startedAt.toISOString()).toBe('2023-01-02T14:04:05.123Z');
    const w = await store.writer({ ref: 'go-ref' });
    expect(w.offset).toBe(5);
    await w.write(Buffer.from(' world'));
    await w.commit(11, digestOf('hello world'));
    expect((await readAll(await store.read(digestOf('hello world')))).toString()).toBe('hello world');
  });
});

describe('writer (content suite: Writer, UpdateStatus, SmallBlob)', () => {
  it('writes, commits, reads back and reports info for every descriptor combination', async () => {
    const cases = [
      { ref: 'c1', opts: {} as { total?: number; expected?: string } },
      { ref: 'c2', opts: { total: 256 } },
      { ref: 'c3', opts: { expected: 'd' } },
      { ref: 'c4', opts: { total: 256, expected: 'd' } },
    ].map((c) => {
      const content = createContent(256);
      const opts = { ...c.opts };
      if (opts.expected) opts.expected = content.digest;
      return { ...c, opts, ...content };
    });
    const writers = await Promise.all(cases.map((c) => store.writer({ ref: c.ref, ...c.opts })));
    for (const [i, c] of cases.entries()) {
      const w = writers[i]!;
      await writeInPieces(w, c.data, 32);
      expect(w.offset).toBe(256);
      const preCommit = Date.now();
      await w.commit(0, '', { labels: { ignored: 'yes' } });
      const postCommit = Date.now();
      expect(w.digest()).toBe(c.digest);
      const info = await store.info(c.digest);
      expect(info.digest).toBe(c.digest);
      expect(info.size).toBe(256);
      expect(info.createdAt.getTime()).toBeGreaterThanOrEqual(preCommit);
      expect(info.createdAt.getTime()).toBeLessThanOrEqual(postCommit);
      expect(info.updatedAt.getTime()).toBe(info.createdAt.getTime());
      expect('labels' in info).toBe(false);
      expectBytes(await readAll(await store.read(c.digest)), c.data);
      expect(await store.exists(c.digest)).toBe(true);
      await w.close(); // close after commit is a no-op
    }
    expect((await store.list()).map((i) => i.digest)).toEqual(cases.map((c) => c.digest).sort());
    expect(await store.listStatuses()).toEqual([]);
  });

  it('tracks status through writes (UpdateStatus)', async () => {
    const { data, digest } = createContent(256);
    const preStart = Date.now();
    const w = await store.writer({ ref: 'c1', total: 256, expected: digest });
    const postStart = Date.now();
    const check = async (offset: number, d: string, preUpdate: number, postUpdate: number) => {
      const st = await w.status();
      expect(w.digest()).toBe(d);
      expect(st).toMatchObject({ ref: 'c1', offset, total: 256, expected: digest });
      expect(st.startedAt.getTime()).toBeGreaterThanOrEqual(preStart);
      expect(st.startedAt.getTime()).toBeLessThanOrEqual(postStart);
      expect(st.updatedAt.getTime()).toBeGreaterThanOrEqual(preUpdate);
      expect(st.updatedAt.getTime()).toBeLessThanOrEqual(postUpdate);
      const onDisk = await store.status('c1');
      expect(onDisk).toMatchObject({ ref: 'c1', offset, total: 256, expected: digest });
      expect(onDisk.startedAt.getTime()).toBe(st.startedAt.getTime());
    };
    await check(0, EMPTY, preStart, postStart);
    for (const [from, to] of [
      [0, 64],
      [64, 192],
      [192, 256],
    ] as const) {
      const pre = Date.now();
      await w.write(data.subarray(from, to));
      await check(to, digestOf(data.subarray(0, to)), pre, Date.now());
    }
    await w.commit(0, '');
    await expect(store.info(digest)).resolves.toMatchObject({ size: 256 });
  });

  it('reads a blob smaller than the requested size (SmallBlob)', async () => {
    const blob = Buffer.from('foobar');
    const d = digestOf(blob);
    const w = await store.writer({ ref: 'small', total: blob.length, expected: d });
    await w.write(blob);
    await w.commit(blob.length, d);
    await w.close();
    expectBytes(await readAll(await store.read(d, { offset: 0, size: blob.length + 1 })), blob);
  });

  it('commits the empty blob', async () => {
    const w = await store.writer({ ref: 'empty' });
    await w.write(new Uint8Array(0));
    await w.commit(0, EMPTY);
    expect(await store.info(EMPTY)).toMatchObject({ digest: EMPTY, size: 0 });
    expectBytes(await readAll(await store.read(EMPTY)), Buffer.alloc(0));
  });

  it('hashes with the algorithm of the expected digest', async () => {
    const data = Buffer.from('sha512 content');
    const d = digestOf(data, 'sha512');
    const w = await store.writer({ ref: 's512', expected: d });
    await w.write(data);
    expect(w.digest()).toBe(d);
    await w.commit(data.length);
    expect(await store.exists(d)).toBe(true);
    expect(store.blobPath(d)).toBe(join(store.root, 'blobs', 'sha512', d.slice('sha512:'.length)));
    expect((await store.list()).map((i) => i.digest)).toEqual([d]);
  });

  it('re-hashes when commit asks for another algorithm than the writer used', async () => {
    const data = Buffer.from('mixed');
    const w = await store.writer({ ref: 'mixed' });
    await w.write(data);
    await w.commit(0, digestOf(data, 'sha384'));
    expect(w.digest()).toBe(digestOf(data, 'sha384'));
    expect(await store.exists(digestOf(data, 'sha384'))).toBe(true);
  });

  it('serialises writes that are not awaited one by one', async () => {
    const { data, digest } = createContent(10_000);
    const w = await store.writer({ ref: 'burst' });
    const pending: Promise<void>[] = [];
    for (let off = 0; off < data.length; off += 1000) pending.push(w.write(data.subarray(off, off + 1000)));
    pending.push(w.commit(data.length, digest));
    await Promise.all(pending);
    expectBytes(await readAll(await store.read(digest)), data);
  });

  it('hashes a 64 MiB ingest written in 1 MiB chunks', async () => {
    const data = randomBytes(64 * MiB);
    const digest = digestOf(data);
    const w = await store.writer({ ref: 'large', total: data.length, expected: digest });
    for (let off = 0; off < data.length; off += MiB) await w.write(data.subarray(off, off + MiB));
    expect(w.digest()).toBe(digest);
    await w.commit(data.length, digest);
    const r = await store.read(digest);
    const d = new Digester();
    let n = 0;
    for await (const chunk of r) {
      expect((chunk as Buffer).length).toBeLessThanOrEqual(MiB);
      d.update(chunk as Buffer);
      n += (chunk as Buffer).length;
    }
    expect(n).toBe(data.length);
    expect(d.digest()).toBe(digest);
  }, 60_000);

  it('validates its arguments', async () => {
    await rejectsWith(store.writer({ ref: '' }), 'invalid argument', 'ref must not be empty');
    await rejectsWith(store.writer({ ref: 'x', total: -1 }), 'invalid argument');
    await rejectsWith(store.writer({ ref: 'x', expected: 'sha256:nope' }), 'invalid argument');
    const w = await store.writer({ ref: 'x' });
    await w.write(Buffer.from('abc'));
    await rejectsWith(w.truncate(4), 'invalid argument');
    await rejectsWith(w.truncate(-1), 'invalid argument');
    await w.close();
    await rejectsWith(w.write(Buffer.from('more')), 'failed precondition');
    await rejectsWith(w.commit(0), 'failed precondition', 'cannot commit on closed writer');
    await w.close(); // idempotent
    expect((await store.status('x')).offset).toBe(3);
  });
});

describe('truncate', () => {
  it('truncates to zero and rewrites (ResumeTruncate)', async () => {
    const { data, digest } = createContent(500);
    const w = await store.writer({ ref: 't0', total: 500, expected: digest });
    await w.write(Buffer.from('garbage that does not belong'));
    await w.truncate(0);
    expect(w.offset).toBe(0);
    expect(w.digest()).toBe(EMPTY);
    await writeInPieces(w, data, 1024);
    await w.commit(500, digest);
    expectBytes(await readAll(await store.read(digest)), data);
  });

  it('truncates to the middle and re-hashes what stays', async () => {
    const { data, digest } = createContent(3 * MiB + 17);
    const w = await store.writer({ ref: 'tmid' });
    await w.write(data.subarray(0, 2 * MiB + 5));
    await w.write(Buffer.from('wrong tail'));
    await w.truncate(2 * MiB + 5);
    expect(w.digest()).toBe(digestOf(data.subarray(0, 2 * MiB + 5)));
    await w.truncate(MiB + 3);
    expect(w.offset).toBe(MiB + 3);
    expect((await store.status('tmid')).offset).toBe(MiB + 3);
    expect(w.digest()).toBe(digestOf(data.subarray(0, MiB + 3)));
    await w.write(data.subarray(MiB + 3));
    await w.commit(data.length, digest);
    expectBytes(await readAll(await store.read(digest)), data);
  });
});

describe('resume', () => {
  it('continues after close (Resume)', async () => {
    const { data, digest } = createContent(256);
    const preStart = Date.now();
    const w1 = await store.writer({ ref: 'cb', total: 256, expected: digest });
    const postStart = Date.now();
    const preUpdate = Date.now();
    await w1.write(data.subarray(0, 128));
    const postUpdate = Date.now();
    await w1.close();

    const st = await store.status('cb');
    expect(st).toMatchObject({ ref: 'cb', offset: 128, total: 256, expected: digest });
    expect(st.startedAt.getTime()).toBeGreaterThanOrEqual(preStart);
    expect(st.startedAt.getTime()).toBeLessThanOrEqual(postStart);
    expect(st.updatedAt.getTime()).toBeGreaterThanOrEqual(preUpdate);
    expect(st.updatedAt.getTime()).toBeLessThanOrEqual(postUpdate);

    const w2 = await store.writer({ ref: 'cb', total: 256, expected: digest });
    expect(w2.offset).toBe(128);
    expect(w2.digest()).toBe(digestOf(data.subarray(0, 128)));
    const st2 = await w2.status();
    expect(st2).toMatchObject({ ref: 'cb', offset: 128, total: 256, expected: digest });
    expect(st2.startedAt.getTime()).toBe(st.startedAt.getTime());
    expect(st2.updatedAt.getTime()).toBe(st.updatedAt.getTime());

    await w2.write(data.subarray(128));
    expect(w2.digest()).toBe(digest);
    const preCommit = Date.now();
    await w2.commit(0, '');
    const postCommit = Date.now();
    await w2.close();
    const info = await store.info(digest);
    expect(info.size).toBe(256);
    expect(info.createdAt.getTime()).toBeGreaterThanOrEqual(preCommit);
    expect(info.createdAt.getTime()).toBeLessThanOrEqual(postCommit);
  });

  for (const mode of ['discard', 'truncate'] as const) {
    it(`resumes at every truncation point (Resume${mode === 'discard' ? 'Discard' : 'Truncate'})`, async () => {
      for (const size of [500, 5000, 50000]) {
        for (const tp of [0, 0.1, 0.5, 0.9, 1]) {
          const { data, digest } = createContent(size);
          const limit = Math.floor(size * tp);
          const ref = `ref-${size}-${tp}`;
          const w1 = await store.writer({ ref, total: size, expected: digest });
          await w1.write(data.subarray(0, limit));
          await w1.close();
          const w = await store.writer({ ref, total: size, expected: digest });
          expect((await w.status()).offset).toBe(limit);
          if (mode === 'truncate') {
            await w.truncate(0);
            await writeInPieces(w, data, 1024);
          } else {
            await writeInPieces(w, data.subarray(limit), 1024);
          }
          await w.commit(size, digest);
          await w.close();
          expect((await store.info(digest)).size).toBe(size);
        }
      }
    });
  }

  it('resumes in a new store instance on the same root (restart)', async () => {
    const { data, digest } = createContent(3 * MiB + 1);
    const w1 = await store.writer({ ref: 'restart', total: data.length });
    await w1.write(data.subarray(0, 2 * MiB + 7));
    await w1.close();

    const store2 = await openLocalContentStore(root);
    expect(await store2.listStatuses()).toMatchObject([{ ref: 'restart', offset: 2 * MiB + 7, total: data.length }]);
    const w2 = await store2.writer({ ref: 'restart' });
    expect(w2.offset).toBe(2 * MiB + 7);
    expect((await w2.status()).total).toBe(data.length); // the stored total is kept
    expect(w2.digest()).toBe(digestOf(data.subarray(0, 2 * MiB + 7)));
    await w2.write(data.subarray(2 * MiB + 7));
    await w2.commit(data.length, digest);
    expect(await store.exists(digest)).toBe(true);
  });

  it('starts over when the total contradicts the stored one (containerd rule)', async () => {
    const w1 = await store.writer({ ref: 'tot', total: 10 });
    await w1.write(Buffer.from('12345'));
    await w1.close();
    const before = await store.status('tot');
    await new Promise((r) => setTimeout(r, 5));

    const w2 = await store.writer({ ref: 'tot', total: 20 });
    expect(w2.offset).toBe(0);
    expect(w2.digest()).toBe(EMPTY);
    const st = await w2.status();
    expect(st.total).toBe(20);
    expect(st.startedAt.getTime()).toBeGreaterThan(before.startedAt.getTime());
    await w2.close();
    expect(await store.status('tot')).toMatchObject({ offset: 0, total: 20 });
  });

  it('keeps the stored total when none is given, and records one when none was stored', async () => {
    const w1 = await store.writer({ ref: 'keep', total: 10 });
    await w1.write(Buffer.from('123'));
    await w1.close();
    const w2 = await store.writer({ ref: 'keep' });
    expect(w2.offset).toBe(3);
    expect((await w2.status()).total).toBe(10);
    await w2.close();
    const w3 = await store.writer({ ref: 'keep', total: 10 });
    expect(w3.offset).toBe(3);
    await w3.close();

    const v1 = await store.writer({ ref: 'learn' });
    await v1.write(Buffer.from('abc'));
    await v1.close();
    const v2 = await store.writer({ ref: 'learn', total: 6 });
    expect(v2.offset).toBe(3);
    await v2.close();
    expect(await store.status('learn')).toMatchObject({ offset: 3, total: 6 });
  });

  it('starts over when the expected digest contradicts the stored one', async () => {
    const a = createContent(10);
    const b = createContent(10);
    const w1 = await store.writer({ ref: 'exp', expected: a.digest });
    await w1.write(a.data.subarray(0, 4));
    await w1.close();
    const w2 = await store.writer({ ref: 'exp', expected: b.digest });
    expect(w2.offset).toBe(0);
    expect((await w2.status()).expected).toBe(b.digest);
    await w2.write(b.data);
    await w2.commit(10);
    expect(await store.exists(b.digest)).toBe(true);
  });
});

describe('locks', () => {
  it('allows one writer per ref', async () => {
    const w = await store.writer({ ref: 'locked' });
    await rejectsWith(store.writer({ ref: 'locked' }), 'unavailable', 'ref locked locked');
    // a second store instance on the same root in this process is excluded too
    const store2 = await openLocalContentStore(root);
    await rejectsWith(store2.writer({ ref: 'locked' }), 'unavailable');
    // other refs are free
    const other = await store.writer({ ref: 'other' });
    await other.close();
    await w.close();
    const again = await store.writer({ ref: 'locked' });
    await again.close();
  });

  it('waits briefly for a lock that is about to be released', async () => {
    const w = await store.writer({ ref: 'soon' });
    let released = false;
    setTimeout(() => void w.close().then(() => (released = true)), 5);
    const w2 = await store.writer({ ref: 'soon' });
    // The second writer got the ref once the first had let go of it (close releases the lock last), not
    // alongside it: without the lock it would be here before the first writer's close.
    expect(released).toBe(true);
    await w2.close();
  });

  it('an open writer for content that already exists is refused and holds no lock', async () => {
    const { data, digest } = createContent(100);
    await ingest('first', data);
    await rejectsWith(store.writer({ ref: 'second', expected: digest }), 'already exists', `content ${digest}`);
    const w = await store.writer({ ref: 'second' });
    await w.close();
  });

  it('commit releases the lock whatever its outcome (CommitErrorState)', async () => {
    const c1 = createContent(256);
    const d2 = createContent(256).digest;
    await ingest('c1', c1.data);
    const ref = 'c1-commiterror-state';

    // already exists, with and without the digest: the ingest is removed, the lock released without close()
    let w = await store.writer({ ref });
    await w.write(c1.data);
    await rejectsWith(store.writer({ ref }), 'unavailable');
    await rejectsWith(w.commit(c1.data.length, c1.digest), 'already exists', `content ${c1.digest}`);
    await rejectsWith(store.status(ref), 'not found');
    w = await store.writer({ ref });
    await w.write(c1.data);
    await rejectsWith(w.commit(c1.data.length, ''), 'already exists');

    // wrong digest: failed precondition, ingest kept, blob absent
    w = await store.writer({ ref });
    const more = Buffer.concat([c1.data, Buffer.from('more')]);
    await w.write(more);
    await rejectsWith(
      w.commit(more.length, d2),
      'failed precondition',
      `unexpected commit digest ${digestOf(more)}, expected ${d2}`,
    );
    expect(await store.exists(d2)).toBe(false);
    expect(await store.exists(digestOf(more))).toBe(false);
    expect((await store.status(ref)).offset).toBe(more.length);
    await rejectsWith(w.write(Buffer.from('x')), 'failed precondition'); // the writer is finished
    await w.close();

    // wrong size, after resuming: failed precondition, ingest kept
    w = await store.writer({ ref });
    expect(w.offset).toBe(more.length);
    await rejectsWith(store.writer({ ref }), 'unavailable');
    await rejectsWith(
      w.commit(c1.data.length, ''),
      'failed precondition',
      `unexpected commit size ${more.length}, expected ${c1.data.length}`,
    );
    expect((await store.status(ref)).offset).toBe(more.length);

    // not closed, yet the ref is free again (containerd unlocks in Commit)
    w = await store.writer({ ref });
    await w.commit(more.length, '');
    await w.close();
    expect(await store.exists(digestOf(more))).toBe(true);
    await rejectsWith(store.status(ref), 'not found');

    // a new ingest under the same ref works, and is refused at commit since the content exists
    w = await store.writer({ ref });
    expect(w.offset).toBe(0);
    await w.write(c1.data);
    await rejectsWith(w.commit(c1.data.length, c1.digest), 'already exists');
    w = await store.writer({ ref });
    await rejectsWith(store.writer({ ref }), 'unavailable');
    await w.close();
    w = await store.writer({ ref });
    await w.close();
  });

  it('a second commit of the same content under another ref is already exists (CommitExists)', async () => {
    const c1 = createContent(256);
    await ingest('c1', c1.data);
    for (const [i, expected] of [c1.digest, ''].entries()) {
      const ref = `c1-commitexists-${i}`;
      const w = await store.writer({ ref });
      await w.write(c1.data);
      await rejectsWith(w.commit(c1.data.length, expected), 'already exists', `content ${c1.digest}`);
      await w.close();
      await rejectsWith(store.status(ref), 'not found'); // ingest removed
    }
    // committing the same writer twice: the second call finds it finished
    const w = await store.writer({ ref: 'twice' });
    await w.write(Buffer.from('twice'));
    await w.commit(5);
    await rejectsWith(w.commit(5), 'failed precondition');
  });
});

describe('refs', () => {
  const odd = ['../../x', 'a/b/c', '/etc/passwd', '..', '.', 'ref with spaces\nand newline', 'ünïcødé/☃', 'x'.repeat(4096)];

  it('never become paths, and round-trip through status and listStatuses', async () => {
    // put the store deeper so that "../.." would land inside the temp dir
    const deep = join(tmp, 'a', 'b', 'store');
    const s = await openLocalContentStore(deep);
    for (const [i, ref] of odd.entries()) {
      const w = await s.writer({ ref, total: 100 });
      await w.write(Buffer.alloc(i + 1, i));
      await w.close();
      expect(await s.status(ref)).toMatchObject({ ref, offset: i + 1, total: 100 });
    }
    const listed = await s.listStatuses();
    expect(listed.map((st) => st.ref).sort()).toEqual([...odd].sort());
    // nothing outside the store root, apart from its parents and the other store created by beforeEach
    for (const p of await walk(tmp)) {
      const inside = p === deep || p.startsWith(deep + sep) || p.startsWith(root + sep) || p === root;
      const parent = deep.startsWith(p + sep);
      expect(inside || parent, relative(tmp, p)).toBe(true);
    }
    expect(existsSync(join(tmp, 'x'))).toBe(false);
    expect(existsSync(join(tmp, 'a', 'x'))).toBe(false);
    // each lives in a 64-hex directory
    const names = await readdir(join(deep, 'ingest'));
    expect(names.length).toBe(odd.length);
    for (const n of names) expect(n).toMatch(/^[0-9a-f]{64}$/);
    for (const ref of odd) await s.abort(ref);
    expect(await s.listStatuses()).toEqual([]);
  });
});

describe('status, listStatuses and abort', () => {
  it('reports not found for unknown refs', async () => {
    await rejectsWith(store.status('nope'), 'not found', 'ingest ref "nope"');
    await rejectsWith(store.abort('nope'), 'not found', 'ingest ref "nope"');
  });

  it('aborts an ingest, even under an open writer, whose commit then fails as containerd\'s does', async () => {
    const w = await store.writer({ ref: 'ab' });
    await w.write(Buffer.from('partial'));
    expect((await store.status('ab')).offset).toBe(7);
    await store.abort('ab');
    await rejectsWith(store.status('ab'), 'not found');
    // The writer still holds the ref: no second writer while it is open.
    await rejectsWith(store.writer({ ref: 'ab' }), 'unavailable', 'ref ab locked');
    await w.write(Buffer.from(' more'));
    await rejectsWith(w.commit(12), 'unknown', 'failed to commit ingest ref "ab": the ingest was aborted');
    await w.close();
    await rejectsWith(store.status('ab'), 'not found');
    await rejectsWith(store.abort('ab'), 'not found');
    expect(await readdir(join(root, 'ingest'))).toEqual([]);
    const w2 = await store.writer({ ref: 'ab' });
    expect(w2.offset).toBe(0);
    await w2.close();
  });

  it('lists active ingests sorted by ref', async () => {
    const open: ContentWriter[] = [];
    for (const ref of ['b', 'a', 'c']) {
      const w = await store.writer({ ref });
      await w.write(Buffer.from(ref));
      if (ref !== 'c') await w.close(); // an open writer's ingest is listed too
      else open.push(w);
    }
    expect((await store.listStatuses()).map((s) => [s.ref, s.offset])).toEqual([
      ['a', 1],
      ['b', 1],
      ['c', 1],
    ]);
    for (const w of open) await w.close();
  });
});

describe('crash consistency', () => {
  const ingestDir = (ref: string) => join(root, 'ingest', digestOf(ref).slice('sha256:'.length));

  it('skips ingest directories without ref or data, and writer() replaces them', async () => {
    // containerd creates the directory before writing ref: a crash in between leaves this
    await mkdir(ingestDir('half'));
    await writeFile(join(ingestDir('half'), 'data'), 'stale');
    // a commit interrupted after its rename leaves a directory without data
    await mkdir(ingestDir('committed'));
    await writeFile(join(ingestDir('committed'), 'ref'), 'committed');
    // a creation interrupted before its rename, and junk
    await mkdir(join(root, 'ingest', '.tmp-0123'));
    await writeFile(join(root, 'ingest', 'README'), 'not an ingest');

    expect(await store.listStatuses()).toEqual([]);
    await rejectsWith(store.status('half'), 'not found');
    await rejectsWith(store.status('committed'), 'not found');

    const w = await store.writer({ ref: 'half' });
    expect(w.offset).toBe(0);
    await w.write(Buffer.from('fresh'));
    await w.commit(5);
    expect((await readAll(await store.read(digestOf('fresh')))).toString()).toBe('fresh');
  });

  it('opening a store removes leftovers of interrupted commits and aborts', async () => {
    await mkdir(ingestDir('committed'));
    await writeFile(join(ingestDir('committed'), 'ref'), 'committed');
    await mkdir(join(root, 'ingest', '.trash-abc'));
    await writeFile(join(root, 'ingest', '.trash-abc', 'data'), 'x');
    const live = await store.writer({ ref: 'live' });
    await live.close();
    await openLocalContentStore(root);
    expect((await readdir(join(root, 'ingest'))).sort()).toEqual([ingestDir('live').split(sep).pop()]);
  });

  it('resumes an ingest whose data was left read-only by a commit interrupted before its rename', async () => {
    const w = await store.writer({ ref: 'ro' });
    await w.write(Buffer.from('abc'));
    await w.close();
    await chmod(join(ingestDir('ro'), 'data'), 0o444);
    const w2 = await store.writer({ ref: 'ro' });
    expect(w2.offset).toBe(3);
    await w2.write(Buffer.from('def'));
    await w2.commit(6, digestOf('abcdef'));
  });

  it('a killed writer process leaves an ingest that resumes at the length of its data', async () => {
    const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
    const build = join(tmp, 'build');
    // Compile the store (and what it imports) to plain JS for the child; Node 20 cannot run TypeScript.
    const tsc = spawnSync(
      join(repo, 'node_modules', '.bin', 'tsc'),
      [
        '--ignoreConfig',
        '--noCheck',
        '--outDir',
        build,
        '--rootDir',
        repo,
        '--module',
        'nodenext',
        '--moduleResolution',
        'nodenext',
        '--target',
        'es2022',
        '--types',
        'node',
        '--skipLibCheck',
        join(repo, 'src', 'content', 'index.ts'),
      ],
      { cwd: repo, encoding: 'utf8' },
    );
    const entry = join(build, 'src', 'content', 'index.js');
    expect(existsSync(entry), `tsc failed: ${tsc.stdout}${tsc.stderr}`).toBe(true);
    await writeFile(join(build, 'package.json'), '{"type":"module"}');

    const { data, digest } = createContent(16 * MiB);
    const source = join(tmp, 'source.bin');
    await writeFile(source, data);
    const child = join(tmp, 'child.mjs');
    await writeFile(
      child,
      `import { readFileSync } from 'node:fs';
import { openLocalContentStore } from ${JSON.stringify(entry)};
const [root, src, ref] = process.argv.slice(2);
const data = readFileSync(src);
const store = await openLocalContentStore(root);
const w = await store.writer({ ref, total: data.length });
setInterval(() => {}, 1000); // stay alive until killed
for (let off = 0; off < data.length; off += 65536) {
  await w.write(data.subarray(off, off + 65536));
  process.stdout.write(w.offset + '\\n');
  await new Promise((r) => setTimeout(r, 1));
}
process.stdout.write('done\\n');
`,
    );

    const proc = spawn(process.execPath, [child, root, source, 'killed'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let reported = 0;
    let stderr = '';
    proc.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    const exited = new Promise<NodeJS.Signals | null>((res) => proc.on('exit', (_code, sig) => res(sig)));
    await new Promise<void>((res, rej) => {
      let buf = '';
      proc.stdout.on('data', (b: Buffer) => {
        buf += b.toString();
        const lines = buf.split('\n');
        buf = lines.pop()!;
        for (const l of lines) if (/^\d+$/.test(l)) reported = Number(l);
        if (reported >= 4 * MiB) {
          proc.kill('SIGKILL'); // mid-stream: the child is between or inside writes
          res();
        }
      });
      proc.on('exit', () => rej(new Error(`child exited early: ${stderr}`)));
    });
    expect(await exited).toBe('SIGKILL');

    const after = await openLocalContentStore(root);
    const st = await after.status('killed');
    expect(st.total).toBe(data.length);
    expect(st.offset).toBeGreaterThanOrEqual(reported);
    expect(st.offset).toBeLessThan(data.length);
    const w = await after.writer({ ref: 'killed' });
    expect(w.offset).toBe(st.offset);
    expect(w.digest()).toBe(digestOf(data.subarray(0, st.offset)));
    await w.write(data.subarray(st.offset));
    await w.commit(data.length, digest);
    expectBytes(await readAll(await after.read(digest)), data);
  }, 60_000);
});

describe('read', () => {
  it('reads ranges', async () => {
    const { data, digest } = createContent(1000);
    await ingest('r', data);
    expectBytes(await readAll(await store.read(digest, { offset: 100, size: 50 })), data.subarray(100, 150));
    expectBytes(await readAll(await store.read(digest, { offset: 900 })), data.subarray(900));
    expectBytes(await readAll(await store.read(digest, { offset: 900, size: 0 })), data.subarray(900));
    expectBytes(await readAll(await store.read(digest, { offset: 990, size: 100 })), data.subarray(990));
    expectBytes(await readAll(await store.read(digest, { offset: 1000 })), Buffer.alloc(0));
    expectBytes(await readAll(await store.read(digest, { offset: 1000, size: 10 })), Buffer.alloc(0));
    await rejectsWith(store.read(digest, { offset: 1001 }), 'out of range', 'read past object length 1000 bytes');
    await rejectsWith(store.read(digest, { offset: -1 }), 'invalid argument');
    await rejectsWith(store.read(digest, { size: -1 }), 'invalid argument');
    await rejectsWith(store.read(digestOf('absent')), 'not found', `content ${digestOf('absent')}`);
  });

  it('returns the right bytes for back-to-back ranged reads of changing sizes, jumps and interleaved readers (as ReaderAt reads)', async () => {
    const { data, digest } = createContent(3 * MiB + 12_345);
    await ingest('seq', data);
    const range = async (offset: number, size: number) =>
      expectBytes(await readAll(await store.read(digest, { offset, size })), data.subarray(offset, Math.min(offset + size, data.length)));
    // Sequential 1 MiB reads to the end (the last one short), then sequential reads of other sizes.
    for (let off = 0; off < data.length; off += MiB) await range(off, MiB);
    for (let off = 0; off < data.length; off += 300_000) await range(off, 300_000);
    // The size grows and shrinks between sequential reads; a read jumps back; a read starts inside a chunk.
    await range(0, 100_000);
    await range(100_000, 100_000);
    await range(200_000, MiB);
    await range(200_000 + MiB, 4096);
    await range(50, 70);
    await range(120, 2 * MiB);
    await range(120 + 2 * MiB, MiB);
    // Two sequential readers at once, interleaved, and one abandoned after its first chunk.
    await Promise.all([
      (async () => {
        for (let off = 0; off < 2 * MiB; off += 256_000) await range(off, 256_000);
      })(),
      (async () => {
        for (let off = MiB; off < data.length; off += 200_000) await range(off, 200_000);
      })(),
    ]);
    const abandoned = await store.read(digest, { offset: 0, size: 2 * MiB });
    for await (const c of abandoned) {
      expectBytes(c as Buffer, data.subarray(0, (c as Buffer).length));
      break;
    }
    await range(2 * MiB, MiB);
  });

  it('reads in chunks of at most 1 MiB and can be abandoned early', async () => {
    const { data, digest } = createContent(3 * MiB);
    await ingest('chunks', data);
    const r = await store.read(digest);
    for await (const c of r) {
      expect((c as Buffer).length).toBe(MiB);
      break; // destroys the stream, which closes the file
    }
    expect(r.destroyed).toBe(true);
  });
});

describe('info, list, delete', () => {
  it('deletes blobs', async () => {
    const a = createContent(10);
    const b = createContent(20);
    await ingest('a', a.data);
    await ingest('b', b.data);
    expect((await store.list()).map((i) => [i.digest, i.size])).toEqual(
      [
        [a.digest, 10],
        [b.digest, 20],
      ].sort((x, y) => String(x[0]).localeCompare(String(y[0]))),
    );
    await store.delete(a.digest);
    await rejectsWith(store.info(a.digest), 'not found', `content ${a.digest}`);
    await rejectsWith(store.delete(a.digest), 'not found', `content ${a.digest}`);
    expect(await store.exists(a.digest)).toBe(false);
    await rejectsWith(store.read(a.digest), 'not found');
    expect((await store.list()).map((i) => i.digest)).toEqual([b.digest]);
    // deleted content can be written again
    await ingest('a-again', a.data);
    expect(await store.exists(a.digest)).toBe(true);
  });

  it('list ignores files that are not blobs', async () => {
    const a = createContent(10);
    await ingest('a', a.data);
    await mkdir(join(root, 'blobs', 'md5'));
    await writeFile(join(root, 'blobs', 'md5', 'd41d8cd98f00b204e9800998ecf8427e'), '');
    await writeFile(join(root, 'blobs', 'sha256', 'not-a-digest'), '');
    await writeFile(join(root, 'blobs', 'sha256', 'A'.repeat(64)), '');
    await mkdir(join(root, 'blobs', 'sha256', 'b'.repeat(64)));
    await writeFile(join(root, 'blobs', 'stray'), '');
    expect((await store.list()).map((i) => i.digest)).toEqual([a.digest]);
  });

  it('rejects malformed digests everywhere with invalid argument', async () => {
    const bad = ['', 'sha256', 'sha256:abc', 'md5:d41d8cd98f00b204e9800998ecf8427e', `sha256:${'A'.repeat(64)}`, '../../etc/passwd'];
    for (const d of bad) {
      await rejectsWith(store.info(d), 'invalid argument', `invalid digest "${d}"`);
      await rejectsWith(store.exists(d), 'invalid argument');
      await rejectsWith(store.delete(d), 'invalid argument');
      await rejectsWith(store.read(d), 'invalid argument');
      expect(() => store.blobPath(d)).toThrow(/invalid argument/);
      await rejectsWith(store.writer({ ref: 'bad', expected: d || 'x' }), 'invalid argument');
    }
    const w = await store.writer({ ref: 'bad-commit' });
    await w.write(Buffer.from('x'));
    await rejectsWith(w.commit(1, 'sha256:nope'), 'invalid argument');
    expect((await store.status('bad-commit')).offset).toBe(1);
  });
});
