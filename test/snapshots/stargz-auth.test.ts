/**
 * The stargz snapshotter against a private registry (Bearer token auth, the in-process token server of
 * test/helpers/registry.ts): its lazyfs reads layers with the credentials of the plugin's docker config file
 * (`docker_config`), and without them the prepare falls back with the reason (the caller then downloads with its
 * own credentials), never mounting a layer it cannot read.
 */
import { createHash } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isAlreadyExists } from '../../src/core/errdefs.js';
import { LABEL_LAZY_FALLBACK, LABEL_SNAPSHOT_REF, LABEL_STARGZ_DIGEST, LABEL_STARGZ_REFERENCE, LABEL_STARGZ_TOC_DIGEST } from '../../src/core/labels.js';
import { withTempMount } from '../../src/mount/index.js';
import { openStargzSnapshotter } from '../../src/snapshots/stargz/index.js';
import { lazyfsMountsUnder } from '../../src/snapshots/stargz/mounts.js';
import { REPO } from '../helpers/paths.js';
import { startRegistry, stopAllRegistries, type StartedRegistry } from '../helpers/registry.js';
import { buildLazyImage, stopLazyfs, type LazyImage } from '../helpers/stargz.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

const LAZYFS = join(REPO, 'dist', 'src', 'snapshots', 'stargz', 'lazyfs-main.js');
const USER = { username: 'lazy', password: 's3cret-pass' };

let t: TempDir;
let registry: StartedRegistry;
let image: LazyImage;
const roots: string[] = [];

beforeAll(async () => {
  t = await tempDir('strata-stargz-auth-');
  registry = await startRegistry({ auth: USER, token: true });
  image = await buildLazyImage(t.path, { estargz: true, files: 2, fileSize: 1 << 20 });
  await registry.pushOciLayout(image.layoutDir, 'private/app:v1');
}, 180_000);

afterAll(async () => {
  for (const r of roots) await stopLazyfs(r);
  await stopAllRegistries();
  await t?.cleanup();
});

function labelsFor(i: number): Record<string, string> {
  const l = image.layers[i]!;
  return {
    [LABEL_SNAPSHOT_REF]: l.diffID,
    [LABEL_STARGZ_REFERENCE]: `${registry.host}/private/app:v1`,
    [LABEL_STARGZ_DIGEST]: l.digest,
    [LABEL_STARGZ_TOC_DIGEST]: l.tocDigest!,
  };
}

describe('the stargz snapshotter and a private registry', () => {
  it('reads the layers lazily with the credentials of its docker config file', async () => {
    const cfg = join(t.path, 'docker-config.json');
    const auth = Buffer.from(`${USER.username}:${USER.password}`).toString('base64');
    await writeFile(cfg, JSON.stringify({ auths: { [registry.host]: { auth } } }));
    const root = join(t.path, 'with-creds');
    roots.push(root);
    const sn = await openStargzSnapshotter(root, { lazyfs: { entry: LAZYFS }, policy: { background: false }, registry: { dockerConfig: cfg } });
    try {
      // The base layer alone (its chainID is its diffID).
      const err = await sn.prepare('x', '', { labels: labelsFor(0) }).then(() => undefined, (e: unknown) => e);
      expect(isAlreadyExists(err)).toBe(true);
      const mounts = await sn.view('v', image.layers[0]!.diffID);
      const md5 = await withTempMount(mounts, async (dir) => createHash('md5').update(await readFile(join(dir, 'bin', 'busybox'))).digest('hex'));
      expect(md5).toBe(createHash('md5').update(await readFile('/bin/busybox')).digest('hex'));
      await sn.remove('v');
      // Anonymous token requests were refused; the authenticated ones were granted.
      expect(registry.tokenRequests.some((r) => r.authenticated && r.user === USER.username)).toBe(true);
    } finally {
      await sn.close();
    }
  });

  it('falls back, saying the registry refused, when it has no credentials for the registry', async () => {
    const root = join(t.path, 'no-creds');
    roots.push(root);
    const sn = await openStargzSnapshotter(root, { lazyfs: { entry: LAZYFS }, policy: { background: false }, registry: { dockerConfig: join(t.path, 'missing.json') } });
    try {
      await sn.prepare('x', '', { labels: labelsFor(0) });
      const why = (await sn.stat('x')).labels[LABEL_LAZY_FALLBACK];
      expect(why).toMatch(/permission denied|unauthorized|401|403/i);
      expect(lazyfsMountsUnder(root)).toEqual([]);
      await sn.remove('x');
    } finally {
      await sn.close();
    }
  });
});
