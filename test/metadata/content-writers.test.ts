/**
 * Two writers of one ref in one namespace, through the metadata store on a real SQLite file and content
 * directory: the second waits for the ref's lock while the first commits.
 */
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openLocalContentStore } from '../../src/content/local.js';
import { StrataError } from '../../src/core/errdefs.js';
import { MetadataStore } from '../../src/metadata/index.js';
import { sha256 } from '../helpers/data.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

let t: TempDir;
let m: MetadataStore;

beforeAll(async () => {
  t = await tempDir();
  m = MetadataStore.open(join(t.path, 'meta.db'), await openLocalContentStore(join(t.path, 'content')));
});
afterAll(async () => {
  m?.close();
  await t?.cleanup();
});

describe('a second writer of a ref the first one commits', () => {
  it('answers ALREADY_EXISTS once the blob is committed, instead of starting the ingest over', async () => {
    const blob = Buffer.from('one blob, two fetchers\n'.repeat(1000));
    const digest = sha256(blob);
    const store = m.content.bind({ namespace: 'w' });
    const first = await store.writer({ ref: 'fetch-x', expected: digest, total: blob.length });
    // The second writer now waits for the ref's lock (the store retries for about a second)...
    const second = store.writer({ ref: 'fetch-x', expected: digest, total: blob.length }).then(
      async (w) => {
        await w.close();
        return 'opened' as const;
      },
      (e: unknown) => e,
    );
    // ...while the first writes and commits.
    await first.write(blob);
    await first.commit(blob.length, digest);
    await first.close();

    const err = await second;
    expect(err).toBeInstanceOf(StrataError);
    expect((err as StrataError).kind).toBe('already exists');
    expect((await store.info(digest)).size).toBe(blob.length);
    // Nothing is left of an ingest: no status, no backend directory.
    expect(await store.listStatuses()).toEqual([]);
    expect(await readdir(join(t.path, 'content', 'ingest'))).toEqual([]);
  });
});
