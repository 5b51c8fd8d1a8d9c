/**
 * The library form of serve-snapshotter (`strata/serve-snapshotter`, src/daemon/serve-snapshotter.ts): an
 * instance handed in, not a plugin id. A real native snapshotter object served on a socket, driven through
 * Strata's proxy client as containerd would drive it; the socket rules (a live server is not displaced, a
 * stale socket is replaced); stop() drains and closes the instance once.
 */
import { lstat, writeFile } from 'node:fs/promises';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ProxySnapshotter } from '../../src/api/clients/snapshotter.js';
import { serveSnapshotter, type ServedSnapshotter } from '../../src/daemon/serve-snapshotter.js';
import { LABEL_SNAPSHOT_REF, snapshotFilter, snapshotRef, targetExists, type Info } from '../../src/snapshots/index.js';
import { openNativeSnapshotter, type NativeSnapshotter } from '../../src/snapshots/native/index.js';
import { kindOf } from '../helpers/errors.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

let tmp: TempDir;
let native: NativeSnapshotter;
let served: ServedSnapshotter | undefined;
let client: ProxySnapshotter | undefined;

beforeAll(async () => {
  tmp = await tempDir('strata-serve-lib-');
  native = await openNativeSnapshotter(join(tmp.path, 'native'));
});

afterAll(async () => {
  client?.close();
  await served?.stop();
  await tmp?.cleanup();
});

describe('serveSnapshotter(instance) from strata/serve-snapshotter', () => {
  it('serves the object it is given: prepare, commit, walk with filters and errors arrive as containerd codes', async () => {
    let closed = 0;
    const close = native.close.bind(native);
    native.close = async () => {
      closed++;
      await close();
    };
    const address = join(tmp.path, 'sn.sock');
    served = await serveSnapshotter(native, { address });
    expect(served.backend).toBe(native);
    expect((await lstat(address)).mode & 0o777).toBe(0o660);

    client = new ProxySnapshotter(address, 'lib');
    await client.prepare('a', '', { labels: { [LABEL_SNAPSHOT_REF]: 'sha256:aaa'} });
    await client.commit('layer-a', 'a', { labels: { [LABEL_SNAPSHOT_REF]: 'sha256:aaa' } });
    const mounts = await client.prepare('b', 'layer-a');
    expect(mounts[0]!.type).toBe('bind');

    const seen: Info[] = [];
    await client.walk((i) => void seen.push(i), [`labels."${LABEL_SNAPSHOT_REF}"==sha256:aaa`]);
    expect(seen.map((i) => [i.name, i.kind])).toEqual([['layer-a', 'committed']]);

    expect(await kindOf(client.stat('missing'))).toBe('not found');
    expect(await kindOf(client.prepare('b', 'layer-a'))).toBe('already exists');
    expect(await kindOf(client.remove('layer-a'))).toBe('failed precondition');

    // A second server on the same live address is refused; the first keeps serving.
    expect(await kindOf(serveSnapshotter(native, { address }))).toBe('already exists');
    expect((await client.stat('layer-a')).kind).toBe('committed');

    client.close();
    client = undefined;
    const stopping = served.stop();
    expect(served.stop()).toBe(stopping);
    await stopping;
    served = undefined;
    expect(closed).toBe(1);
  });

  it('replaces a stale socket left by a dead server', async () => {
    const address = join(tmp.path, 'stale.sock');
    // A server killed with SIGKILL leaves its socket file behind.
    const dead = spawn(process.execPath, ['-e', "require('net').createServer().listen(process.argv[1], () => console.log('up'))", address], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    await new Promise<void>((r) => dead.stdout!.once('data', () => r()));
    const exited = new Promise((r) => dead.once('exit', r));
    dead.kill('SIGKILL');
    await exited;
    expect((await lstat(address)).isSocket()).toBe(true);

    const other = await openNativeSnapshotter(join(tmp.path, 'native2'));
    served = await serveSnapshotter(other, { address });
    client = new ProxySnapshotter(address, 'lib');
    await client.prepare('x', '');
    expect((await client.stat('x')).kind).toBe('active');
  });

  it('refuses an address that is not a socket', async () => {
    const path = join(tmp.path, 'plain-file');
    await writeFile(path, '');
    const other = await openNativeSnapshotter(join(tmp.path, 'native3'));
    try {
      expect(await kindOf(serveSnapshotter(other, { address: path }))).toBe('failed precondition');
    } finally {
      await other.close();
    }
  });
});

describe('the remote-snapshot helpers of strata/snapshots', () => {
  it('read the ref a prepare asks for, answer ALREADY_EXISTS, and filter Info as containerd does', () => {
    expect(snapshotRef({ labels: { [LABEL_SNAPSHOT_REF]: 'sha256:abc' } })).toBe('sha256:abc');
    expect(snapshotRef({ labels: { [LABEL_SNAPSHOT_REF]: '' } })).toBeUndefined();
    expect(snapshotRef(undefined)).toBeUndefined();
    const err = targetExists('sha256:abc');
    expect(err.kind).toBe('already exists');
    expect(err.message).toBe('target snapshot "sha256:abc": already exists');
    const info = (name: string, parent: string, labels: Record<string, string>): Info => ({
      kind: 'committed',
      name,
      parent,
      labels,
      created: new Date(0),
      updated: new Date(0),
    });
    const match = snapshotFilter([`labels."${LABEL_SNAPSHOT_REF}"==sha256:abc,parent=="p"`]);
    expect(match(info('x', 'p', { [LABEL_SNAPSHOT_REF]: 'sha256:abc' }))).toBe(true);
    expect(match(info('x', 'q', { [LABEL_SNAPSHOT_REF]: 'sha256:abc' }))).toBe(false);
    expect(match(info('x', 'p', {}))).toBe(false);
    expect(snapshotFilter([])(info('x', '', {}))).toBe(true);
    expect(() => snapshotFilter(['labels.=='])).toThrow(/invalid argument|parse/);
  });
});
