/**
 * The unmodified ctr (containerd 1.6) running containers on stratad: `ctr image import` (unpacked client-side
 * through stratad's content, snapshots and diff services), then `ctr run` creating the container record
 * (containers service), the task (tasks service, Strata's runc monitor), waiting for it and deleting it.
 *
 * Note on `ctr task kill`: its default signal is SIGTERM, and a container's init (pid 1 of its pid namespace)
 * only receives signals it handles; `sleep` handles none, so — with containerd as with Strata — plain
 * `ctr task kill` does not stop `sleep 60`. The detached case kills with SIGKILL; a second container that traps
 * TERM shows the default signal working.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ctr, run, tableRows } from '../helpers/ctr.js';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { buildImage, busyboxPlatform } from '../helpers/images.js';
import { cleanupRuntime, mountsUnder } from '../helpers/runtime.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

const IMAGE = 'docker.io/library/busybox:strata-run';
// ctr's spec puts a container in the cgroup /<namespace>/<id>, a host-wide name: a namespace of this file's own
// keeps its t1, t2... apart from other test files' containers running at the same time.
const NS = 'ctr-run-test';
let d: StartedDaemon;
let dir: TempDir;

const c = (args: string[], input?: string) => ctr(d.address, args, { input, namespace: NS });
const taskRoot = () => join(d.state, 'io.containerd.runtime.v2.task');

/** `ctr task ls` as rows of [TASK, PID, STATUS]. */
async function taskRows(): Promise<string[][]> {
  const r = await c(['task', 'ls']);
  expect(r.code, r.stderr).toBe(0);
  return tableRows(r.stdout);
}

async function waitStatus(id: string, status: string): Promise<void> {
  for (let i = 0; i < 500; i++) {
    if ((await taskRows()).some((r) => r[0] === id && r[2] === status)) return;
    await sleep(20);
  }
  throw new Error(`task ${id} never reached ${status}: ${JSON.stringify(await taskRows())}`);
}

beforeAll(async () => {
  dir = await tempDir('strata-ctr-run-');
  const img = await buildImage(dir.path, { basename: 'busybox', name: IMAGE, platforms: [await busyboxPlatform({ compression: 'gzip' })] });
  d = await startDaemon();
  const r = await c(['image', 'import', img.archivePath]);
  expect(r.code, r.stderr).toBe(0);
});

afterAll(async () => {
  if (d) {
    await stopAll();
    await cleanupRuntime({ taskRoot: taskRoot(), runcRoot: join(d.state, 'runc'), mountsUnder: d.dir.path, cgroupNamespace: NS });
    await d.dir.cleanup();
  }
  await dir?.cleanup();
});

describe('ctr run against stratad', () => {
  it('ctr run --rm IMAGE t1 echo hi prints hi, exits 0 and leaves nothing behind', async () => {
    const r = await c(['run', '--rm', IMAGE, 't1', 'echo', 'hi']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toBe('hi\n');
    expect(await taskRows()).toEqual([]);
    const containers = await c(['container', 'ls', '-q']);
    expect(containers.stdout.trim()).toBe('');
    expect(mountsUnder(taskRoot())).toEqual([]);
  });

  it("ctr run exits with the container's exit code, and feeds it its stdin", async () => {
    expect((await c(['run', '--rm', IMAGE, 't3', 'sh', '-c', 'exit 3'])).code).toBe(3);
    const r = await c(['run', '--rm', IMAGE, 't5', 'sh', '-c', 'cat; echo end'], 'from stdin\n');
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe('from stdin\nend\n');
  });

  it('ctr run -t: a terminal session (ctr itself on a pty from util-linux script), exit code kept', async () => {
    const cmd = ['ctr', '--address', d.address, '--namespace', NS, 'run', '--rm', '-t', IMAGE, 'tty1', 'sh'].map((a) => `'${a}'`).join(' ');
    // The shell reads the line whenever it gets to it; ctr forwards it through the pty.
    const r = await run('script', ['-qec', cmd, '/dev/null'], { input: 'echo typed-$((1+2)); exit 6\n' });
    expect(r.stdout).toContain('typed-3');
    expect(r.code).toBe(6);
    expect(await taskRows()).toEqual([]);
  });

  it('ctr run -d, task ls RUNNING, exec, ps, pause/resume, metrics, kill, task rm, container rm', async () => {
    const r = await c(['run', '-d', IMAGE, 't2', 'sleep', '60']);
    expect(r.code, r.stderr).toBe(0);
    const row = (await taskRows()).find((x) => x[0] === 't2');
    expect(row?.[2]).toBe('RUNNING');
    const pid = row![1]!;

    const ex = await c(['task', 'exec', '--exec-id', 'e1', 't2', 'sh', '-c', 'echo in-exec; exit 4']);
    expect(ex.stdout).toBe('in-exec\n');
    expect(ex.code).toBe(4);
    const ps = await c(['task', 'ps', 't2']);
    expect(ps.code, ps.stderr).toBe(0);
    expect(ps.stdout).toContain(pid);

    expect((await c(['task', 'pause', 't2'])).code).toBe(0);
    expect((await taskRows()).find((x) => x[0] === 't2')?.[2]).toBe('PAUSED');
    expect((await c(['task', 'resume', 't2'])).code).toBe(0);
    expect((await taskRows()).find((x) => x[0] === 't2')?.[2]).toBe('RUNNING');

    const metrics = await c(['task', 'metrics', 't2']);
    expect(metrics.code, metrics.stderr).toBe(0);
    expect(metrics.stdout).toMatch(/pids\.current\s+1/);

    const rmRunning = await c(['task', 'rm', 't2']);
    expect(rmRunning.code).not.toBe(0);
    expect((await c(['task', 'kill', '--signal', 'SIGKILL', 't2'])).code).toBe(0);
    await waitStatus('t2', 'STOPPED');
    const rm = await c(['task', 'rm', 't2']);
    expect(rm.code, rm.stderr).toBe(0);
    const crm = await c(['container', 'rm', 't2']);
    expect(crm.code, crm.stderr).toBe(0);
    expect(await taskRows()).toEqual([]);
    expect(mountsUnder(taskRoot())).toEqual([]);
    expect(existsSync(join(taskRoot(), NS, 't2'))).toBe(false);
  });

  it('ctr task kill (SIGTERM) stops a container that handles TERM', async () => {
    const script = 'trap "exit 0" TERM; echo > /tmp/ready; sleep 60 & wait';
    expect((await c(['run', '-d', IMAGE, 't4', 'sh', '-c', script])).code).toBe(0);
    // The trap is set once the marker shows up in the container's rootfs (a TERM before it would be ignored).
    const marker = join(taskRoot(), NS, 't4', 'rootfs', 'tmp', 'ready');
    for (let i = 0; i < 500 && !existsSync(marker); i++) await sleep(20);
    expect(existsSync(marker)).toBe(true);
    expect((await c(['task', 'kill', 't4'])).code).toBe(0);
    await waitStatus('t4', 'STOPPED');
    expect((await c(['task', 'rm', 't4'])).code).toBe(0);
    expect((await c(['container', 'rm', 't4'])).code).toBe(0);
  });
});
