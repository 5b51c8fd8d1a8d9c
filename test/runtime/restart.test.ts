/**
 * Tasks through a real stratad and its gRPC API, across a `kill -9` of the daemon: the busybox image is
 * imported and unpacked by the daemon (`strata image import`), each container's rootfs is an overlayfs
 * snapshot prepared from the image's chainID, and Tasks.Create is given no rootfs mounts so the task manager
 * takes them from the container's snapshot.
 *
 * After the restart the task manager finds its tasks by their bundles: a running task is still RUNNING with
 * the same pid (Wait and Kill work on it), a task that exited while the daemon was down reports its status,
 * a created task is still there, and a task whose monitor was killed reports STOPPED with 255. Delete leaves
 * no mount and no bundle behind.
 */
import { execFileSync } from 'node:child_process';
import { constants as fsc, existsSync, openSync, readFileSync, readdirSync } from 'node:fs';
import { Socket } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { StrataClient } from '../../src/api/clients/strata.js';
import { Status } from '../../src/api/gen/containerd/types/task/task.js';
import { chainIDs } from '../../src/images/manifest.js';
import { run } from '../helpers/ctr.js';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { kindOf } from '../helpers/errors.js';
import { buildImage, busyboxPlatform, type BuiltImage } from '../helpers/images.js';
import { STRATA } from '../helpers/paths.js';
import { cleanupRuntime, mountsUnder } from '../helpers/runtime.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

const IMAGE = 'docker.io/library/busybox:strata-rt';
const suffix = Math.random().toString(36).slice(2, 8);
let d: StartedDaemon;
let dir: TempDir;
let img: BuiltImage;
let chainID: string;
let baseSpec: Record<string, any>;

const taskRoot = () => join(d.state, 'io.containerd.runtime.v2.task');
const runcRoot = () => join(d.state, 'runc');

let fifoCount = 0;
function fifo(name: string): string {
  const p = join(dir.path, `fifo-${fifoCount++}-${name}`);
  execFileSync('mkfifo', [p]);
  return p;
}

/** The client's end of a stdin FIFO (read-write, so the open never blocks). */
function writeFifo(path: string): Socket {
  return new Socket({ fd: openSync(path, fsc.O_RDWR), readable: false, writable: true });
}

async function createContainer(c: StrataClient, id: string, args: string[]): Promise<void> {
  const key = `rt-${id}`;
  await c.call(c.snapshots, c.snapshots.prepare, { snapshotter: 'overlayfs', key, parent: chainID, labels: {} });
  const spec = structuredClone(baseSpec);
  spec.process.args = args;
  spec.process.terminal = false;
  spec.process.env = ['PATH=/bin'];
  spec.root = { path: 'rootfs', readonly: false };
  // A host-wide name: unique to this run, and a leaf only (runc removes it with the container).
  spec.linux.cgroupsPath = `/strata-rt-${id}-${suffix}`;
  await c.call(c.containers, c.containers.create, {
    container: {
      id,
      labels: {},
      image: IMAGE,
      runtime: { name: 'io.containerd.runc.v2', options: undefined },
      spec: { typeUrl: 'types.containerd.io/opencontainers/runtime-spec/1/Spec', value: Buffer.from(JSON.stringify(spec)) },
      snapshotter: 'overlayfs',
      snapshotKey: key,
      createdAt: undefined,
      updatedAt: undefined,
      extensions: {},
    },
  });
}

const createTask = (c: StrataClient, id: string, io: { stdin?: string; stdout?: string } = {}) =>
  c.call(c.tasks, c.tasks.create, {
    containerId: id,
    rootfs: [],
    stdin: io.stdin ?? '',
    stdout: io.stdout ?? '',
    stderr: '',
    terminal: false,
    checkpoint: undefined,
    options: undefined,
    runtimePath: '',
  });

const get = async (c: StrataClient, id: string) => (await c.call(c.tasks, c.tasks.get, { containerId: id, execId: '' })).process!;
const wait = (c: StrataClient, id: string) => c.call(c.tasks, c.tasks.wait, { containerId: id, execId: '' });
const kill = (c: StrataClient, id: string, signal = 9) => c.call(c.tasks, c.tasks.kill, { containerId: id, execId: '', signal, all: false });
const del = (c: StrataClient, id: string) => c.call(c.tasks, c.tasks.delete, { containerId: id });

beforeAll(async () => {
  dir = await tempDir('strata-rt-restart-');
  img = await buildImage(dir.path, { basename: 'busybox', name: IMAGE, platforms: [await busyboxPlatform({ compression: 'gzip' })] });
  chainID = chainIDs(img.manifests[0]!.layers.map((l) => l.diffID)).at(-1)!;
  const specDir = join(dir.path, 'spec');
  execFileSync('mkdir', ['-p', specDir]);
  execFileSync('runc', ['spec', '--bundle', specDir]);
  baseSpec = JSON.parse(readFileSync(join(specDir, 'config.json'), 'utf8'));
  d = await startDaemon();
  const r = await run(STRATA, ['--address', d.address, 'image', 'import', img.archivePath]);
  expect(r.code, r.stderr).toBe(0);
});

afterAll(async () => {
  if (d) {
    await stopAll();
    await cleanupRuntime({ taskRoot: taskRoot(), runcRoot: runcRoot(), mountsUnder: d.dir.path });
    await d.dir.cleanup();
  }
  await dir?.cleanup();
});

describe('tasks across a daemon crash', () => {
  it('a running task survives kill -9 of stratad; after the restart Get, Wait, Kill and Delete work on it', async () => {
    let c = d.client();
    await createContainer(c, 'long', ['sleep', '60']);
    await createContainer(c, 'reader', ['sh', '-c', 'read x; exit 7']);
    await createContainer(c, 'idle', ['sleep', '60']);

    await createTask(c, 'long');
    const pid = (await c.call(c.tasks, c.tasks.start, { containerId: 'long', execId: '' })).pid;
    const stdin = fifo('stdin');
    const writer = writeFifo(stdin);
    await createTask(c, 'reader', { stdin });
    await c.call(c.tasks, c.tasks.start, { containerId: 'reader', execId: '' });
    await createTask(c, 'idle');
    expect(await get(c, 'long')).toMatchObject({ status: Status.RUNNING, pid });
    const bundle = join(taskRoot(), 'default', 'long');
    expect(mountsUnder(join(bundle, 'rootfs'))).toHaveLength(1);

    await d.kill9();
    // The container and its monitor do not depend on stratad.
    expect(() => process.kill(pid, 0)).not.toThrow();
    // While the daemon is down, "reader" gets its line and exits 7; its monitor records it.
    const w = writer;
    w.end('x\n');
    const readerState = join(taskRoot(), 'default', 'reader', 'state.json');
    for (let i = 0; i < 1000; i++) {
      const s = JSON.parse(readFileSync(readerState, 'utf8')) as { init: { status: string } };
      if (s.init.status === 'stopped') break;
      await sleep(20);
    }

    d = await d.restart();
    c = d.client();
    expect(await get(c, 'long')).toMatchObject({ status: Status.RUNNING, pid });
    expect(await get(c, 'reader')).toMatchObject({ status: Status.STOPPED, exitStatus: 7 });
    expect(await get(c, 'idle')).toMatchObject({ status: Status.CREATED, pid: 0 });
    const listed = (await c.call(c.tasks, c.tasks.list, { filter: '' })).tasks.map((t) => t.containerId).sort();
    expect(listed).toEqual(['idle', 'long', 'reader']);
    expect((await wait(c, 'reader')).exitStatus).toBe(7);

    const waited = wait(c, 'long');
    expect(await kindOf(del(c, 'long'))).toBe('unknown'); // containerd's runc shim: a plain error, UNKNOWN
    await kill(c, 'long');
    expect((await waited).exitStatus).toBe(137);
    expect(await get(c, 'long')).toMatchObject({ status: Status.STOPPED, exitStatus: 137 });

    for (const id of ['long', 'reader', 'idle']) await del(c, id);
    expect(mountsUnder(taskRoot())).toEqual([]);
    expect(readdirSync(join(taskRoot(), 'default'))).toEqual([]);
    expect((await c.call(c.tasks, c.tasks.list, { filter: '' })).tasks).toEqual([]);
    expect(await kindOf(get(c, 'long'))).toBe('not found');
  });

  it('a graceful stop leaves tasks running too; an exec started before the restart can be waited for after it', async () => {
    let c = d.client();
    await createContainer(c, 'calm', ['sleep', '60']);
    await createTask(c, 'calm');
    const pid = (await c.call(c.tasks, c.tasks.start, { containerId: 'calm', execId: '' })).pid;
    const execSpec = { args: ['sleep', '60'], cwd: '/', env: ['PATH=/bin'], user: { uid: 0, gid: 0 } };
    await c.call(c.tasks, c.tasks.exec, {
      containerId: 'calm',
      execId: 'x1',
      stdin: '',
      stdout: '',
      stderr: '',
      terminal: false,
      spec: { typeUrl: 'types.containerd.io/opencontainers/runtime-spec/1/Process', value: Buffer.from(JSON.stringify(execSpec)) },
    });
    const execPid = (await c.call(c.tasks, c.tasks.start, { containerId: 'calm', execId: 'x1' })).pid;
    expect(await d.stop()).toBe(0);
    d = await d.restart();
    c = d.client();
    expect(await get(c, 'calm')).toMatchObject({ status: Status.RUNNING, pid });
    const ex = (await c.call(c.tasks, c.tasks.get, { containerId: 'calm', execId: 'x1' })).process!;
    expect(ex).toMatchObject({ status: Status.RUNNING, pid: execPid, id: 'x1' });
    const execWait = c.call(c.tasks, c.tasks.wait, { containerId: 'calm', execId: 'x1' });
    await c.call(c.tasks, c.tasks.kill, { containerId: 'calm', execId: 'x1', signal: 9, all: false });
    expect((await execWait).exitStatus).toBe(137);
    const waited = wait(c, 'calm');
    await kill(c, 'calm');
    expect((await waited).exitStatus).toBe(137);
    await del(c, 'calm');
    expect(mountsUnder(taskRoot())).toEqual([]);
  });

  it('a task whose monitor is killed reports STOPPED with 255; Delete still cleans everything', async () => {
    const c = d.client();
    await createContainer(c, 'orphan', ['sleep', '60']);
    await createTask(c, 'orphan');
    const pid = (await c.call(c.tasks, c.tasks.start, { containerId: 'orphan', execId: '' })).pid;
    const bundle = join(taskRoot(), 'default', 'orphan');
    const monitor = (JSON.parse(readFileSync(join(bundle, 'monitor.json'), 'utf8')) as { pid: number }).pid;
    const waited = wait(c, 'orphan');
    process.kill(monitor, 'SIGKILL');
    expect(await waited).toMatchObject({ exitStatus: 255 });
    expect(await get(c, 'orphan')).toMatchObject({ status: Status.STOPPED, exitStatus: 255 });
    await del(c, 'orphan');
    // runc delete --force took the container down with it.
    for (let i = 0; i < 500; i++) {
      try {
        process.kill(pid, 0);
      } catch {
        break;
      }
      await sleep(10);
    }
    expect(() => process.kill(pid, 0)).toThrow();
    expect(existsSync(bundle)).toBe(false);
    expect(mountsUnder(bundle)).toEqual([]);
  });

  it('after a crash, a created task whose rootfs is not mounted is an unfinished create: its monitor is ended and its bundle removed', async () => {
    // Create mounts the rootfs while the monitor comes up; a crash in between leaves a monitor and no rootfs.
    let c = d.client();
    await createContainer(c, 'halfway', ['sleep', '60']);
    await createTask(c, 'halfway');
    const bundle = join(taskRoot(), 'default', 'halfway');
    const monitor = (JSON.parse(readFileSync(join(bundle, 'monitor.json'), 'utf8')) as { pid: number }).pid;
    await d.kill9();
    execFileSync('umount', [join(bundle, 'rootfs')]);
    expect(mountsUnder(bundle)).toEqual([]);
    expect(() => process.kill(monitor, 0)).not.toThrow();

    d = await d.restart();
    c = d.client();
    expect(await kindOf(get(c, 'halfway'))).toBe('not found');
    expect(existsSync(bundle)).toBe(false);
    for (let i = 0; i < 500; i++) {
      try {
        process.kill(monitor, 0);
      } catch {
        break;
      }
      await sleep(10);
    }
    expect(() => process.kill(monitor, 0)).toThrow();
    // The container can have a task again.
    await createTask(c, 'halfway');
    expect(await get(c, 'halfway')).toMatchObject({ status: Status.CREATED, pid: 0 });
    expect(mountsUnder(join(bundle, 'rootfs'))).toHaveLength(1);
    await del(c, 'halfway');
    expect(mountsUnder(bundle)).toEqual([]);
  });

  it('Create needs the container record; a second Create is already exists', async () => {
    const c = d.client();
    expect(await kindOf(createTask(c, 'no-such-container'))).toBe('not found');
    await createContainer(c, 'twice', ['sleep', '60']);
    await createTask(c, 'twice');
    expect(await kindOf(createTask(c, 'twice'))).toBe('already exists');
    await del(c, 'twice');
  });
});
