/**
 * The task manager in process, on real runc, real bind mounts and real monitor processes (the compiled
 * dist/src/runtime/monitor.js). Container records come from a stub ContainerLookup (the containers store is
 * exercised by the daemon-level tests in restart.test.ts and the ctr interop); the rootfs is the busybox
 * image's layer (test/helpers/images.ts), extracted once and bind-mounted into each task's bundle.
 *
 * No process (monitor, runc, container) or mount outlives the file: afterAll kills monitors, `runc delete -f`s
 * what runc still knows and unmounts anything under the temp dir.
 */
import { execFileSync } from 'node:child_process';
import { constants as fsc, existsSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { Socket } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Exchange } from '../../src/events/exchange.js';
import type { Envelope } from '../../src/events/types.js';
import { createLogger } from '../../src/log/index.js';
import { TaskManager, type ContainerInfo } from '../../src/runtime/tasks.js';
import { buildImage, busyboxPlatform } from '../helpers/images.js';
import { kindOf } from '../helpers/errors.js';
import { REPO } from '../helpers/paths.js';
import { cleanupRuntime, mountsUnder } from '../helpers/runtime.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

const MONITOR = join(REPO, 'dist/src/runtime/monitor.js');
const NS = 'rt-test';
const suffix = Math.random().toString(36).slice(2, 8);
const tid = (name: string) => `${name}-${suffix}`;

let dir: TempDir;
let rootfsSrc: string;
let baseSpec: Record<string, any>;
let tasks: TaskManager;
let exchange: Exchange;
let stateRoot: string;
let runcRoot: string;
const containers = new Map<string, ContainerInfo>();
const ctx = { namespace: NS };

function specFor(args: string[], extra: (s: Record<string, any>) => void = () => undefined): Buffer {
  const s = structuredClone(baseSpec);
  s.process.args = args;
  s.process.terminal = false;
  s.process.env = ['PATH=/bin'];
  s.root = { path: 'rootfs', readonly: false };
  extra(s);
  return Buffer.from(JSON.stringify(s));
}

function addContainer(id: string, args: string[], extra?: (s: Record<string, any>) => void): void {
  containers.set(id, {
    snapshotter: '',
    snapshotKey: '',
    spec: { typeUrl: 'types.containerd.io/opencontainers/runtime-spec/1/Spec', value: specFor(args, extra) },
    runtime: { name: 'io.containerd.runc.v2' },
  });
}

const bindRootfs = () => [{ type: 'bind', source: rootfsSrc, options: ['rbind', 'rw'] }];

let fifoCount = 0;
/** A FIFO as ctr makes one. */
function fifo(name: string): string {
  const p = join(dir.path, `fifo-${fifoCount++}-${name}`);
  execFileSync('mkfifo', [p]);
  return p;
}

/**
 * Reads a FIFO to EOF, as ctr does (its open waits for a writer; a non-blocking open read through the event
 * loop behaves the same: nothing is read before a writer has come).
 */
function readFifo(path: string): { output: () => string; done: Promise<string> } {
  let out = '';
  const s = new Socket({ fd: openSync(path, fsc.O_RDONLY | fsc.O_NONBLOCK), readable: true, writable: false });
  s.setEncoding('utf8');
  const done = new Promise<string>((resolve, reject) => {
    s.on('data', (d: string) => (out += d));
    s.on('end', () => resolve(out));
    s.on('error', reject);
  });
  return { output: () => out, done };
}

/** The client's end of a stdin FIFO (read-write, so the open never blocks; the process gets EOF from CloseIO). */
function writeFifo(path: string): Socket {
  return new Socket({ fd: openSync(path, fsc.O_RDWR), readable: false, writable: true });
}

function collectEvents(): { envelopes: Envelope[]; topics: (id: string) => string[]; stop: () => void } {
  const sub = exchange.subscribe([`namespace==${NS}`]);
  const envelopes: Envelope[] = [];
  void (async () => {
    for await (const e of sub) envelopes.push(e);
  })();
  return {
    envelopes,
    topics: (id) =>
      envelopes
        .filter((e) => e.event.kind === 'typed' && (e.event.data as { containerId?: string }).containerId === id)
        .map((e) => e.topic),
    stop: () => sub.close(),
  };
}

beforeAll(async () => {
  dir = await tempDir('strata-rt-');
  const img = await buildImage(dir.path, { basename: 'busybox', platforms: [await busyboxPlatform()] });
  rootfsSrc = join(dir.path, 'busybox-rootfs');
  execFileSync('mkdir', ['-p', rootfsSrc]);
  const tarPath = join(dir.path, 'layer.tar');
  writeFileSync(tarPath, img.manifests[0]!.layers[0]!.tar);
  execFileSync('tar', ['-xf', tarPath, '-C', rootfsSrc]);
  const specDir = join(dir.path, 'spec');
  execFileSync('mkdir', ['-p', specDir]);
  execFileSync('runc', ['spec', '--bundle', specDir]);
  baseSpec = JSON.parse(readFileSync(join(specDir, 'config.json'), 'utf8'));
  stateRoot = join(dir.path, 'state', 'io.containerd.runtime.v2.task');
  runcRoot = join(dir.path, 'state', 'runc');
  exchange = new Exchange();
  tasks = new TaskManager({
    root: stateRoot,
    runcRoot,
    monitor: MONITOR,
    containers: async (_ctx, id) => {
      const c = containers.get(id);
      if (!c) throw Object.assign(new Error(`container "${id}"`), {});
      return c;
    },
    events: exchange,
    log: createLogger('error'),
  });
});

afterAll(async () => {
  tasks?.close();
  if (dir) {
    await cleanupRuntime({ taskRoot: stateRoot, runcRoot, mountsUnder: dir.path });
    await dir.cleanup();
  }
});

describe('task lifecycle on runc', () => {
  it('runs echo: output on the stdout FIFO, exit 0, events in order, Delete unmounts and removes the bundle', async () => {
    const id = tid('echo');
    addContainer(id, ['echo', 'hi']);
    const ev = collectEvents();
    const stdout = fifo('stdout');
    const reader = readFifo(stdout);
    const created = await tasks.create(ctx, { containerId: id, rootfs: bindRootfs(), stdin: '', stdout, stderr: '', terminal: false });
    expect(created.pid).toBe(0);
    expect(tasks.get(ctx, id).status).toBe('created');
    const rootfs = join(created.bundle, 'rootfs');
    expect(mountsUnder(rootfs)).toEqual([rootfs]);
    const cfg = JSON.parse(readFileSync(join(created.bundle, 'config.json'), 'utf8'));
    expect(cfg.root.path).toBe('rootfs');

    const waited = tasks.wait(ctx, id);
    const pid = await tasks.start(ctx, id);
    expect(pid).toBeGreaterThan(0);
    const exit = await waited;
    expect(exit.exitStatus).toBe(0);
    expect(exit.exitedAt).toBeInstanceOf(Date);
    expect(await reader.done).toBe('hi\n');
    const got = tasks.get(ctx, id);
    expect(got).toMatchObject({ status: 'stopped', exitStatus: 0, pid, id, containerId: id, stdout });

    const del = await tasks.delete(ctx, id);
    expect(del).toMatchObject({ pid, exitStatus: 0 });
    expect(mountsUnder(created.bundle)).toEqual([]);
    expect(existsSync(created.bundle)).toBe(false);
    expect(await kindOf(Promise.resolve().then(() => tasks.get(ctx, id)))).toBe('not found');
    ev.stop();
    expect(ev.topics(id)).toEqual(['/tasks/create', '/tasks/start', '/tasks/exit', '/tasks/delete']);
    const exitEv = ev.envelopes.find((e) => e.topic === '/tasks/exit')!;
    expect(exitEv.event.kind === 'typed' && exitEv.event.type).toBe('containerd.events.TaskExit');
    expect(exitEv.event.kind === 'typed' && exitEv.event.data).toMatchObject({ containerId: id, id, pid, exitStatus: 0 });
  });

  it("reports sh -c 'exit 3' as 3", async () => {
    const id = tid('exit3');
    addContainer(id, ['sh', '-c', 'exit 3']);
    await tasks.create(ctx, { containerId: id, rootfs: bindRootfs(), stdin: '', stdout: '', stderr: '', terminal: false });
    const waited = tasks.wait(ctx, id);
    await tasks.start(ctx, id);
    expect((await waited).exitStatus).toBe(3);
    expect(tasks.get(ctx, id)).toMatchObject({ status: 'stopped', exitStatus: 3 });
    expect((await tasks.delete(ctx, id)).exitStatus).toBe(3);
  });

  it('kill SIGKILL ends a running task with 137; state checks along the way', async () => {
    const id = tid('kill');
    addContainer(id, ['sleep', '60']);
    await tasks.create(ctx, { containerId: id, rootfs: bindRootfs(), stdin: '', stdout: '', stderr: '', terminal: false });
    expect(await kindOf(tasks.create(ctx, { containerId: id, rootfs: bindRootfs(), stdin: '', stdout: '', stderr: '', terminal: false }))).toBe(
      'already exists',
    );
    const pid = await tasks.start(ctx, id);
    expect(tasks.get(ctx, id)).toMatchObject({ status: 'running', pid });
    expect(tasks.list(ctx).map((t) => t.containerId)).toContain(id);
    // State errors are plain errors in containerd's runc shim: UNKNOWN to its clients.
    expect(await kindOf(tasks.start(ctx, id))).toBe('unknown');
    expect(await kindOf(tasks.delete(ctx, id))).toBe('unknown');
    expect(await kindOf(tasks.resume(ctx, id))).toBe('unknown');
    const pids = await tasks.listPids(ctx, id);
    expect(pids.map((p) => p.pid)).toContain(pid);
    const metrics = await tasks.metrics(ctx, [`id==${id}`]);
    expect(metrics).toHaveLength(1);
    expect(metrics[0]!.stats.pids.current).toBeGreaterThanOrEqual(1n);

    const waited = tasks.wait(ctx, id);
    await tasks.kill(ctx, id, '', 9, false);
    expect((await waited).exitStatus).toBe(137);
    expect(await kindOf(tasks.kill(ctx, id, '', 9, false))).toBe('not found');
    await tasks.delete(ctx, id);
  });

  it('pause and resume change the state', async () => {
    const id = tid('pause');
    addContainer(id, ['sleep', '60']);
    const ev = collectEvents();
    await tasks.create(ctx, { containerId: id, rootfs: bindRootfs(), stdin: '', stdout: '', stderr: '', terminal: false });
    expect(await kindOf(tasks.pause(ctx, id))).toBe('unknown');
    await tasks.start(ctx, id);
    await tasks.pause(ctx, id);
    expect(tasks.get(ctx, id).status).toBe('paused');
    expect(await kindOf(tasks.pause(ctx, id))).toBe('unknown');
    expect(await kindOf(tasks.delete(ctx, id))).toBe('unknown');
    await tasks.resume(ctx, id);
    expect(tasks.get(ctx, id).status).toBe('running');
    const waited = tasks.wait(ctx, id);
    await tasks.kill(ctx, id, '', 9, true);
    expect((await waited).exitStatus).toBe(137);
    await tasks.delete(ctx, id);
    ev.stop();
    expect(ev.topics(id)).toEqual(['/tasks/create', '/tasks/start', '/tasks/paused', '/tasks/resumed', '/tasks/exit', '/tasks/delete']);
  });

  it('exec runs a second process: its output, its exit code, its events', async () => {
    const id = tid('exec');
    addContainer(id, ['sleep', '60']);
    const ev = collectEvents();
    await tasks.create(ctx, { containerId: id, rootfs: bindRootfs(), stdin: '', stdout: '', stderr: '', terminal: false });
    const spec = { args: ['sh', '-c', 'echo from-exec; echo to-stderr >&2; exit 5'], cwd: '/', env: ['PATH=/bin'], user: { uid: 0, gid: 0 } };
    const io = { stdin: '', stdout: fifo('exec-out'), stderr: fifo('exec-err'), terminal: false };
    // Task not started: refused (containerd's shim would exec into runc's created container, which Strata does
    // not make before Start); a state error is UNKNOWN, as the shim's are.
    expect(await kindOf(tasks.exec(ctx, id, 'e1', spec, io))).toBe('unknown');
    await tasks.start(ctx, id);
    const out = readFifo(io.stdout);
    const err = readFifo(io.stderr);
    await tasks.exec(ctx, id, 'e1', spec, io);
    expect(await kindOf(tasks.exec(ctx, id, 'e1', spec, io))).toBe('already exists');
    expect(tasks.get(ctx, id, 'e1')).toMatchObject({ status: 'created', id: 'e1', pid: 0 });
    const waited = tasks.wait(ctx, id, 'e1');
    const execPid = await tasks.start(ctx, id, 'e1');
    expect(execPid).toBeGreaterThan(0);
    expect((await waited).exitStatus).toBe(5);
    expect(await out.done).toBe('from-exec\n');
    expect(await err.done).toBe('to-stderr\n');
    expect(tasks.get(ctx, id, 'e1')).toMatchObject({ status: 'stopped', exitStatus: 5, pid: execPid });
    expect(tasks.get(ctx, id).status).toBe('running');
    const del = await tasks.deleteProcess(ctx, id, 'e1');
    expect(del).toMatchObject({ id: 'e1', exitStatus: 5, pid: execPid });
    expect(await kindOf(Promise.resolve().then(() => tasks.get(ctx, id, 'e1')))).toBe('not found');

    // A long exec shows up in the pids with its exec id; killing it ends it with 137.
    await tasks.exec(ctx, id, 'e2', { ...spec, args: ['sleep', '60'] }, { stdin: '', stdout: '', stderr: '', terminal: false });
    const p2 = await tasks.start(ctx, id, 'e2');
    expect(await tasks.listPids(ctx, id)).toContainEqual({ pid: p2, execId: 'e2' });
    expect(await kindOf(tasks.deleteProcess(ctx, id, 'e2'))).toBe('unknown');
    const w2 = tasks.wait(ctx, id, 'e2');
    await tasks.kill(ctx, id, 'e2', 9, false);
    expect((await w2).exitStatus).toBe(137);

    const w = tasks.wait(ctx, id);
    await tasks.kill(ctx, id, '', 9, false);
    expect((await w).exitStatus).toBe(137);
    await tasks.delete(ctx, id);
    ev.stop();
    const topics = ev.topics(id);
    expect(topics.slice(0, 5)).toEqual(['/tasks/create', '/tasks/start', '/tasks/exec-added', '/tasks/exec-started', '/tasks/exit']);
    const execExit = ev.envelopes.find((e) => e.topic === '/tasks/exit')!;
    expect(execExit.event.kind === 'typed' && execExit.event.data).toMatchObject({ containerId: id, id: 'e1', exitStatus: 5, pid: execPid });
  });

  it('stdin: the process reads what the client writes, and EOF after CloseIO', async () => {
    const id = tid('stdin');
    addContainer(id, ['sh', '-c', 'cat; echo done']);
    const stdin = fifo('stdin');
    const stdout = fifo('stdout');
    const writer = writeFifo(stdin);
    const reader = readFifo(stdout);
    await tasks.create(ctx, { containerId: id, rootfs: bindRootfs(), stdin, stdout, stderr: '', terminal: false });
    const waited = tasks.wait(ctx, id);
    await tasks.start(ctx, id);
    const w = writer;
    await new Promise<void>((resolve) => w.write('abc\n', () => resolve()));
    // ctr closes its end and calls CloseIO once its own stdin reaches EOF; the client keeping its end open
    // shows that CloseIO alone ends the input.
    await tasks.closeIO(ctx, id, '', true);
    expect((await waited).exitStatus).toBe(0);
    expect(await reader.done).toBe('abc\ndone\n');
    w.destroy();
    await tasks.delete(ctx, id);
  });

  it('terminal: the process runs on a tty, its output arrives on the stdout FIFO, its exit code is kept', async () => {
    const id = tid('tty');
    addContainer(id, ['sh', '-c', 'test -t 0 && test -t 1 && echo on-a-tty; exit 2'], (s) => (s.process.terminal = true));
    const stdin = fifo('stdin');
    const stdout = fifo('stdout');
    const writer = writeFifo(stdin);
    const reader = readFifo(stdout);
    await tasks.create(ctx, { containerId: id, rootfs: bindRootfs(), stdin, stdout, stderr: '', terminal: true });
    const waited = tasks.wait(ctx, id);
    await tasks.start(ctx, id);
    await tasks.resizePty(ctx, id, '', 100, 40);
    expect((await waited).exitStatus).toBe(2);
    expect(await reader.done).toContain('on-a-tty');
    writer.destroy();
    await tasks.delete(ctx, id);
  });

  it('a created task can be killed or deleted without ever starting', async () => {
    const id = tid('created');
    addContainer(id, ['sleep', '60']);
    await tasks.create(ctx, { containerId: id, rootfs: bindRootfs(), stdin: '', stdout: '', stderr: '', terminal: false });
    const waited = tasks.wait(ctx, id);
    await tasks.kill(ctx, id, '', 9, false);
    expect((await waited).exitStatus).toBe(137);
    await tasks.delete(ctx, id);

    const id2 = tid('created2');
    addContainer(id2, ['sleep', '60']);
    const c2 = await tasks.create(ctx, { containerId: id2, rootfs: bindRootfs(), stdin: '', stdout: '', stderr: '', terminal: false });
    // containerd's runc shim answers the deletion of a never-started task with status 0 and no exit time.
    expect(await tasks.delete(ctx, id2)).toMatchObject({ exitStatus: 0, exitedAt: undefined });
    expect(existsSync(c2.bundle)).toBe(false);
    expect(mountsUnder(c2.bundle)).toEqual([]);
  });

  it('a command that does not exist fails Start with runc\'s reason; the task can be deleted', async () => {
    const id = tid('nocmd');
    addContainer(id, ['no-such-command']);
    const c = await tasks.create(ctx, { containerId: id, rootfs: bindRootfs(), stdin: '', stdout: '', stderr: '', terminal: false });
    const err = await tasks.start(ctx, id).catch((e: Error) => e);
    expect(String((err as Error).message)).toMatch(/no-such-command/);
    expect(tasks.get(ctx, id).status).toBe('stopped');
    await tasks.delete(ctx, id);
    expect(existsSync(c.bundle)).toBe(false);
  });

  it('errors: unknown task is not found; a container that does not exist fails Create and leaves nothing', async () => {
    expect(await kindOf(Promise.resolve().then(() => tasks.get(ctx, 'nope')))).toBe('not found');
    expect(await kindOf(tasks.kill(ctx, 'nope', '', 9, false))).toBe('not found');
    expect(await kindOf(tasks.delete(ctx, 'nope'))).toBe('not found');
    expect(await kindOf(tasks.wait(ctx, 'nope'))).toBe('not found');
    await expect(tasks.create(ctx, { containerId: 'missing', rootfs: [], stdin: '', stdout: '', stderr: '', terminal: false })).rejects.toThrow();
    expect(existsSync(join(stateRoot, NS, 'missing'))).toBe(false);
  });
});
