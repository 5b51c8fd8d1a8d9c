/**
 * The unmodified ctr (containerd 1.6.20's resolver, client-side) reading the same hosts.toml directories as
 * stratad, against stratad: a mirror in front of a dead registry is used by both; a file with only
 * `server = ...` and no [host] table is ignored by 1.6.20 (its parser wants a `host` tree, logs the error and
 * falls back to the reference's own registry) while Strata honours it, a deliberate difference
 * (docs/registry.md).
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ctr, run } from '../helpers/ctr.js';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { buildOciLayout, makeLayerTar, type OciLayout } from '../helpers/oci-layout.js';
import { STRATA } from '../helpers/paths.js';
import { startRegistry, stopAllRegistries, type StartedRegistry } from '../helpers/registry.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

let d: StartedDaemon;
let reg: StartedRegistry;
let tmp: TempDir;
let image: OciLayout;
let dead: string;

async function hostsDir(name: string, toml: string): Promise<string> {
  const root = join(tmp.path, name);
  await mkdir(join(root, dead.replace(':', '_') + '_'), { recursive: true });
  await writeFile(join(root, dead.replace(':', '_') + '_', 'hosts.toml'), toml);
  return root;
}

beforeAll(async () => {
  tmp = await tempDir('strata-ctr-hosts-');
  image = await buildOciLayout(join(tmp.path, 'image'), { layers: [await makeLayerTar({ h: 'hosts\n' })], refName: 'v1' });
  [d, reg] = await Promise.all([startDaemon(), startRegistry()]);
  await reg.pushOciLayout(image.dir, 'hosts/img:v1');
  const s = createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', () => resolve()));
  dead = `127.0.0.1:${(s.address() as AddressInfo).port}`;
  await new Promise<void>((resolve) => s.close(() => resolve()));
});

afterAll(async () => {
  await stopAll();
  await stopAllRegistries();
  await tmp?.cleanup();
});

describe('hosts.toml read by ctr (containerd 1.6.20) and by stratad', () => {
  it('both pull a dead registry\'s image through a [host] mirror', async () => {
    const root = await hostsDir('mirror', `server = "http://${dead}"\n\n[host."http://${reg.host}"]\n  capabilities = ["pull", "resolve"]\n`);
    const theirs = await ctr(d.address, ['image', 'pull', '--hosts-dir', root, `${dead}/hosts/img:v1`], { namespace: 'ctr-hosts' });
    expect(theirs.code, theirs.stderr).toBe(0);
    const ours = await run(STRATA, ['--address', d.address, '--namespace', 'strata-hosts', 'image', 'pull', '--hosts-dir', root, `${dead}/hosts/img:v1`]);
    expect(ours.code, ours.stderr).toBe(0);
    expect(ours.stdout.trim()).toBe(`${dead}/hosts/img:v1 ${image.manifest.digest}`);
  });

  it('a server-only hosts.toml: ctr 1.6.20 ignores it and fails on the dead registry, Strata pulls from the server', async () => {
    const root = await hostsDir('server-only', `server = "http://${reg.host}"\n`);
    const theirs = await ctr(d.address, ['image', 'pull', '--plain-http', '--hosts-dir', root, `${dead}/hosts/img:v1`], { namespace: 'ctr-server-only' });
    expect(theirs.code).not.toBe(0);
    expect(theirs.stderr).toMatch(/connection refused/);
    expect(theirs.stderr).toContain(dead);
    const ours = await run(STRATA, ['--address', d.address, '--namespace', 'strata-server-only', 'image', 'pull', '--hosts-dir', root, `${dead}/hosts/img:v1`]);
    expect(ours.code, ours.stderr).toBe(0);
  });
});
