/**
 * The transfer plugin's config under containerd 2.x's names: `[plugins."io.containerd.transfer.v1.local"]` and
 * its `unpack_config`, read by a real stratad (the snapshotter an import unpacks into) and by `stratad config dump`.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parse } from 'smol-toml';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { tempDir, type TempDir } from '../helpers/temp.js';
import { buildImage, hostPlatform } from '../helpers/images.js';
import { listSnapshots } from '../helpers/transfer.js';
import { run } from '../helpers/ctr.js';
import { STRATA, STRATAD } from '../helpers/paths.js';
import { kindOf } from '../helpers/errors.js';
import { unpackConfigSnapshotter } from '../../src/images/transfer.js';
import type { StrataClient } from '../../src/api/clients/strata.js';

const host = hostPlatform();
const hostSpec = [host.os, host.architecture, host.variant].filter(Boolean).join('/');
const other = host.architecture === 's390x' ? 'linux/ppc64le' : 'linux/s390x';

let t: TempDir;
let d: StartedDaemon;
let c: StrataClient;

const SECTION = `[plugins."io.containerd.transfer.v1.local"]
unpack_config = [{ platform = "${other}", snapshotter = "overlayfs" }, { platform = "${hostSpec}", snapshotter = "native" }]
`;

beforeAll(async () => {
  t = await tempDir('strata-transfer-config-');
  d = await startDaemon({ config: SECTION });
  c = d.client('unpack-config');
});

afterAll(async () => {
  c?.close();
  await stopAll();
  await t?.cleanup();
});

describe('unpack_config', () => {
  it("gives the snapshotter of the first entry whose platform the host runs, '' when none does", () => {
    const entries = [
      { platform: other, snapshotter: 'overlayfs' },
      { platform: hostSpec, snapshotter: 'native' },
      { platform: hostSpec, snapshotter: 'btrfs' },
    ];
    expect(unpackConfigSnapshotter(entries, host)).toBe('native');
    expect(unpackConfigSnapshotter([entries[0]], host)).toBe('');
    expect(unpackConfigSnapshotter(undefined, host)).toBe('');
    expect(unpackConfigSnapshotter([], host)).toBe('');
  });

  it('rejects entries containerd would refuse, naming the key', async () => {
    expect(() => unpackConfigSnapshotter('native')).toThrow('transfer config: unpack_config must be a list of tables');
    expect(() => unpackConfigSnapshotter([{ platform: hostSpec }])).toThrow('unpack_config[0].snapshotter must be a snapshotter name');
    expect(() => unpackConfigSnapshotter([{ snapshotter: 'native' }])).toThrow('unpack_config[0].platform undefined is not a platform');
    expect(() => unpackConfigSnapshotter([{ platform: 'linux/*', snapshotter: 'native' }])).toThrow('unpack_config[0].platform "linux/*" is not a platform');
    expect(await kindOf(Promise.resolve().then(() => unpackConfigSnapshotter([3])))).toBe('invalid argument');
  });

  it('makes a real stratad unpack an import into that snapshotter when the request names none', async () => {
    const img = await buildImage(t.path, {
      name: 'docker.io/library/unpack-config:1',
      basename: 'unpack-config',
      platforms: [{ layers: [{ entries: [{ path: 'hello', content: 'from unpack_config' }] }] }],
    });
    const r = await run(process.execPath, [STRATA, '-a', d.address, '-n', 'unpack-config', 'image', 'import', img.archivePath]);
    expect(r.code, r.stderr).toBe(0);
    expect((await listSnapshots(c, 'native')).length).toBeGreaterThan(0);
    expect(await listSnapshots(c, 'overlayfs')).toEqual([]);
  });

  it('is shown by `stratad config dump` under the transfer plugin, next to its defaults', async () => {
    const cfg = join(t.path, 'dump.toml');
    await writeFile(cfg, `version = 3\nroot = "${join(t.path, 'r')}"\nstate = "${join(t.path, 's')}"\n${SECTION}`);
    const r = await run(process.execPath, [STRATAD, '--config', cfg, 'config', 'dump']);
    expect(r.code, r.stderr).toBe(0);
    const dumped = parse(r.stdout) as { plugins: Record<string, Record<string, unknown>> };
    expect(dumped.plugins['io.containerd.transfer.v1.local']).toBeUndefined();
    expect(dumped.plugins['io.containerd.transfer.v1.images']).toMatchObject({
      max_concurrent_downloads: 3,
      unpack_config: [
        { platform: other, snapshotter: 'overlayfs' },
        { platform: hostSpec, snapshotter: 'native' },
      ],
    });
  });
});
