/**
 * What a client learns when a hostile layer fails to apply, through a real stratad's Diff service: the error
 * names the entry (shortened when its name is huge) and what failed, never the daemon's own paths, and stays
 * short (a 100,000-level path once came back as a 4 KB message holding the snapshot's absolute path; with the
 * default limits it is now refused by max_path_length, so a 3,000-level one reaches the file calls).
 */
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { StrataClient } from '../../src/api/clients/strata.js';
import { StrataError } from '../../src/core/errdefs.js';
import { MediaTypeImageLayerGzip } from '../../src/diff/mediatypes.js';
import { sha256 } from '../helpers/data.js';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { makeTar, type TarEntry } from '../helpers/tar.js';


let d: StartedDaemon;
let c: StrataClient;

beforeAll(async () => {
  d = await startDaemon();
  c = d.client();
});
afterAll(async () => {
  c?.close();
  await stopAll();
  await d?.dir.cleanup();
});

let n = 0;
/** Applies a layer of `entries` onto a fresh overlayfs snapshot; returns the error (the snapshot is removed). */
async function applyError(entries: TarEntry[]): Promise<StrataError> {
  const blob = gzipSync(await makeTar(entries));
  const digest = sha256(blob);
  await c.writeBlob([blob], { ref: `up-${digest}`, expected: digest, total: blob.length });
  const key = `hostile-${++n}`;
  const { mounts } = await c.call(c.snapshots, c.snapshots.prepare, { snapshotter: 'overlayfs', key, parent: '', labels: {} });
  try {
    const err = await c
      .call(c.diff, c.diff.apply, { mounts, payloads: {}, diff: { mediaType: MediaTypeImageLayerGzip, digest, size: blob.length, annotations: {} } })
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    expect(err).toBeInstanceOf(StrataError);
    return err as StrataError;
  } finally {
    await c.call(c.snapshots, c.snapshots.remove, { snapshotter: 'overlayfs', key });
  }
}

function expectClean(err: StrataError): void {
  expect(err.message).not.toContain(d.dir.path);
  expect(err.message).not.toContain('/io.containerd.snapshotter');
  expect(err.message.length, err.message).toBeLessThan(400);
}

describe('Apply errors from file system calls', () => {
  it('a 3,000-level path: name too long, invalid argument, no daemon path, short', async () => {
    const err = await applyError([{ name: `${'a/'.repeat(3000)}f`, body: 'x' }]);
    expectClean(err);
    expect(err.kind).toBe('invalid argument');
    expect(err.message).toMatch(/name too long/i);
    expect(err.message).toContain('a/a/a/a');
    expect(err.message).toContain('6001 bytes');
    // The ~2,000 directories it made go with the snapshot's removal (deeper than fs.rm could reach once the
    // snapshot was renamed into the trash). Remove leaves the data to the background, as containerd leaves it to
    // its GC; Cleanup waits for it.
    await c.call(c.snapshots, c.snapshots.cleanup, { snapshotter: 'overlayfs' });
    const root = join(d.root, 'io.containerd.snapshotter.v1.overlayfs');
    expect(await readdir(join(root, 'snapshots'))).toEqual([]);
    expect(await readdir(join(root, 'trash'))).toEqual([]);
  });

  it('a 100,000-level path: refused by max_path_length before anything is created, short', async () => {
    const err = await applyError([{ name: `${'a/'.repeat(100_000)}f`, body: 'x' }]);
    expectClean(err);
    expect(err.kind).toBe('invalid argument');
    expect(err.message).toContain('max_path_length = 16384');
    expect(err.message).toContain('200001 bytes');
  });

  it('a 300-byte component: name too long, named relative to the layer', async () => {
    const long = 'b'.repeat(300);
    const err = await applyError([
      { name: 'dir/', type: 'directory' },
      { name: `dir/${long}`, body: 'x' },
    ]);
    expectClean(err);
    expect(err.kind).toBe('invalid argument');
    expect(err.message).toMatch(/name too long/i);
    expect(err.message).toContain('"dir/bbbb');
    expect(err.message).toContain('ENAMETOOLONG');
  });

  it('a hostile entry with a huge name is reported shortened', async () => {
    const name = `${`${'c'.repeat(200)}/`.repeat(10)}x`;
    const err = await applyError([{ name, type: 'link', linkname: 'missing' }]);
    expectClean(err);
    expect(err.kind).toBe('invalid argument');
    expect(err.message).toContain('does not exist');
    expect(err.message).toContain(`(${name.length} bytes)`);
  });
});
