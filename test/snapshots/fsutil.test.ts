/**
 * The file-system helpers the backends share: syncFilesystem, which Commit calls so a committed layer
 * survives a power cut, runs syncfs(2) through the built binding and reports a failure by its errno name
 * without the host path; syncLayer skips it for an empty layer on a file system that journals metadata in
 * order.
 */
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { diskUsage, syncFilesystem, syncLayer } from '../../src/snapshots/fsutil.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

let tmp: TempDir;
beforeAll(async () => {
  tmp = await tempDir('strata-fsutil-');
});
afterAll(async () => {
  await tmp.cleanup();
});

describe('syncFilesystem', () => {
  it('uses the syncfs binding that scripts/build-native.sh builds', () => {
    expect(existsSync(join(__dirname, '../../native/bin/strata-syncfs.node'))).toBe(true);
  });

  it('returns once the file system of a directory with fresh writes is synced', async () => {
    await writeFile(join(tmp.path, 'layer-file'), Buffer.alloc(64 * 1024, 7));
    await expect(syncFilesystem(tmp.path)).resolves.toBeUndefined();
    expect((await diskUsage(tmp.path)).inodes).toBeGreaterThanOrEqual(2);
  });

  it('rejects a missing path with ENOENT and does not name the path', async () => {
    const missing = join(tmp.path, 'not-there');
    const err = await syncFilesystem(missing).then(
      () => undefined,
      (e: NodeJS.ErrnoException) => e,
    );
    expect(err?.code).toBe('ENOENT');
    expect(err?.message).not.toContain(tmp.path);
  });
});

describe('syncLayer', () => {
  it('syncs a layer with files and returns for an empty one', async () => {
    const empty = join(tmp.path, 'empty-layer');
    const full = join(tmp.path, 'full-layer');
    await mkdir(empty);
    await mkdir(full);
    await writeFile(join(full, 'f'), 'data');
    await expect(syncLayer(empty, tmp.path)).resolves.toBeUndefined();
    await expect(syncLayer(full, tmp.path)).resolves.toBeUndefined();
  });

  it('rejects a missing layer directory with ENOENT', async () => {
    await expect(syncLayer(join(tmp.path, 'gone'), tmp.path)).rejects.toMatchObject({ code: 'ENOENT' });
  });
});
