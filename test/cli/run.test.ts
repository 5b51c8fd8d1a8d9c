/**
 * `strata run` and `strata task` against a real stratad with runc: the busybox test image (imported without
 * unpacking, so run unpacks it), output and exit status passed through, stdin forwarded, --env/--cwd, --rm
 * cleaning up task, container and snapshot, -d with task ls/ps/pause/resume/exec/kill/rm, and ctr seeing
 * the same tasks.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chainIDs } from '../../src/images/manifest.js';
import { ctr, run, tableRows as rows } from '../helpers/ctr.js';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { buildImage, busyboxPlatform, type BuiltImage } from '../helpers/images.js';
import { STRATA } from '../helpers/paths.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

const IMAGE = 'docker.io/library/busybox:strata';
const NS = 'run';

let d: StartedDaemon;
let dir: TempDir;
let busybox: BuiltImage;

const strata = (args: string[], opts: { input?: string } = {}) =>
  run(STRATA, ['--address', d.address, '--namespace', NS, ...args], { input: opts.input, timeoutMs: 60_000 });

async function ok(args: string[], opts: { input?: string } = {}): Promise<string> {
  const r = await strata(args, opts);
  expect(r.code, `strata ${args.join(' ')}: ${r.stderr}`).toBe(0);
  return r.stdout;
}

/** Polls `strata task ls` until the task has the status (a task's state changes asynchronously). */
async function waitStatus(id: string, status: string): Promise<void> {
  for (let i = 0; i < 200; i++) {
    const row = rows(await ok(['task', 'ls'])).find((r) => r[0] === id);
    if (row?.[2] === status) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`task ${id} never reached ${status}`);
}

beforeAll(async () => {
  dir = await tempDir();
  d = await startDaemon();
  busybox = await buildImage(dir.path, { basename: 'busybox', name: IMAGE, platforms: [await busyboxPlatform()] });
  // Imported without unpacking: the first run has to unpack it.
  const imp = await strata(['image', 'import', '--no-unpack', busybox.archivePath]);
  expect(imp.code, imp.stderr).toBe(0);
});

afterAll(async () => {
  // Whatever a failed test left: tasks outlive the daemon (their monitors keep them), so kill and delete
  // them through it, then the containers (and their snapshots), before stopping it.
  if (d) {
    for (const id of (await strata(['task', 'ls', '-q'])).stdout.split('\n').filter(Boolean)) await strata(['task', 'rm', '-f', id]);
    for (const id of (await strata(['container', 'ls', '-q'])).stdout.split('\n').filter(Boolean)) await strata(['container', 'rm', id]);
  }
  await stopAll();
  await d?.dir.cleanup();
  await dir?.cleanup();
});

describe('strata run', () => {
  it('runs echo hi: prints hi, exits 0, unpacks the image first, and --rm leaves nothing behind', async () => {
    const chain = chainIDs(busybox.manifests[0]!.layers.map((l) => l.diffID));
    const r = await strata(['run', '--rm', IMAGE, 'c1', 'echo', 'hi']);
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe('hi\n');
    expect(r.code).toBe(0);
    const snaps = rows((await ctr(d.address, ['snapshot', 'ls'], { namespace: NS })).stdout).map((x) => x[0]);
    expect(snaps).toContain(chain.at(-1)); // unpacked by run
    expect(snaps).not.toContain('c1');
    expect(await ok(['container', 'ls', '-q'])).toBe('');
    expect(await ok(['task', 'ls', '-q'])).toBe('');
  });

  it("exits with the task's exit status; stderr and stdout stay apart", async () => {
    // As with ctr, everything after IMAGE and ID is the command, options included (no `--` needed).
    const r = await strata(['run', '--rm', IMAGE, 'c2', 'sh', '-c', 'exit 3']);
    expect(r.code).toBe(3);
    expect(r.stdout).toBe('');
    const both = await strata(['run', '--rm', IMAGE, 'c3', '--', 'sh', '-c', 'echo out; echo err >&2; exit 1']);
    expect(both.code).toBe(1);
    expect(both.stdout).toBe('out\n');
    expect(both.stderr).toBe('err\n');
  });

  it('forwards stdin, and applies --env and --cwd over the image config', async () => {
    expect(await ok(['run', '--rm', IMAGE, 'c4', 'cat'], { input: 'piped\nlines\n' })).toBe('piped\nlines\n');
    const out = await ok(['run', '--rm', '--env', 'A=1', '--env', 'PATH=/bin', '--cwd', '/tmp', IMAGE, 'c5', '--', 'sh', '-c', 'echo "$A $PATH"; pwd']);
    expect(out).toBe('1 /bin\n/tmp\n');
  });

  it('-t gives the process a terminal (output through the pty)', async () => {
    const r = await strata(['run', '--rm', '-t', IMAGE, 'tty1', '--', 'sh', '-c', 'test -t 0 && test -t 1 && echo "tty $TERM"']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.replace(/\r\n/g, '\n')).toBe('tty xterm\n');
  });

  it('without --rm keeps the container (task deleted), with the spec ctr reads', async () => {
    expect(await ok(['run', '--label', 'who=test', IMAGE, 'kept', 'sleep', '0'])).toBe('');
    expect(rows(await ok(['container', 'ls']))).toEqual([['kept', IMAGE, 'io.containerd.runc.v2']]);
    expect(await ok(['task', 'ls', '-q'])).toBe('');
    const info = JSON.parse((await ctr(d.address, ['container', 'info', 'kept'], { namespace: NS })).stdout);
    expect(info).toMatchObject({
      ID: 'kept',
      Image: IMAGE,
      Snapshotter: 'overlayfs',
      SnapshotKey: 'kept',
      Runtime: { Name: 'io.containerd.runc.v2', Options: { type_url: 'containerd.runc.v1.Options' } },
      Labels: { who: 'test', 'io.containerd.image.config.stop-signal': 'SIGTERM' },
    });
    expect(info.Spec.process.args).toEqual(['sleep', '0']);
    expect(info.Spec.process.env).toEqual(['PATH=/bin']);
    expect(info.Spec.annotations).toEqual({ who: 'test' });
    // The same name again is refused; nothing is left half made.
    const again = await strata(['run', IMAGE, 'kept', 'sleep', '0']);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/already exists/);
    // The container's task can be started again (strata task start waits, like ctr task start).
    expect(await ok(['task', 'start', 'kept'])).toBe('');
    await ok(['container', 'rm', 'kept']);
    expect(await ok(['container', 'ls', '-q'])).toBe('');
  });

  it('fails cleanly for an unknown image', async () => {
    const r = await strata(['run', '--rm', 'nope:1', 'c6', 'sleep', '0']);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe('strata: image "nope:1": not found\n');
    const noId = await strata(['run', IMAGE]);
    expect(noId.stderr).toBe('strata: container id must be provided\n');
  });
});

describe('strata task', () => {
  it('-d detaches; task ls, ps, exec, pause, resume, kill and rm; ctr sees the same task', async () => {
    expect(await ok(['run', '-d', IMAGE, 'bg', 'sleep', '300'])).toBe('');
    await waitStatus('bg', 'RUNNING');
    const ls = await ok(['task', 'ls']);
    expect(ls).toBe((await ctr(d.address, ['task', 'ls'], { namespace: NS })).stdout);
    const [row] = rows(ls);
    expect(row![0]).toBe('bg');
    expect(Number(row![1])).toBeGreaterThan(0);

    const ps = rows(await ok(['task', 'ps', 'bg']));
    expect(ps.map((r) => r[0])).toContain(row![1]);

    expect(await ok(['task', 'exec', '--exec-id', 'e1', 'bg', 'sh', '-c', 'echo inside'])).toBe('inside\n');
    const code = await strata(['task', 'exec', '--exec-id', 'e2', 'bg', '--', 'sh', '-c', 'exit 4']);
    expect(code.code).toBe(4);

    // Metrics: the rows ctr prints for the task's cgroup (values move between the two calls, names do not).
    const metricRows = (out: string) => rows(out.slice(out.indexOf('METRIC')));
    const ours = metricRows(await ok(['task', 'metrics', 'bg']));
    const theirs = await ctr(d.address, ['task', 'metrics', 'bg'], { namespace: NS });
    expect(theirs.code, theirs.stderr).toBe(0);
    expect(ours.map((r) => r[0])).toEqual(metricRows(theirs.stdout).map((r) => r[0]));
    expect(ours.map((r) => r[0])).toContain('pids.current');
    expect(Number(ours.find((r) => r[0] === 'pids.current')![1])).toBeGreaterThanOrEqual(1);
    const json = JSON.parse(await ok(['task', 'metrics', '--format', 'json', 'bg']));
    expect(json.id).toBe('bg');
    expect(json.type).toMatch(/^io\.containerd\.cgroups\.v[12]\.Metrics$/);

    await ok(['task', 'pause', 'bg']);
    await waitStatus('bg', 'PAUSED');
    await ok(['task', 'resume', 'bg']);
    await waitStatus('bg', 'RUNNING');

    // A running task cannot be removed, nor its container.
    const busy = await strata(['task', 'rm', 'bg']);
    expect(busy.code).toBe(1);
    const crm = await strata(['container', 'rm', 'bg']);
    expect(crm.code).toBe(1);
    expect(crm.stderr).toMatch(/cannot delete a non stopped container/);

    await ok(['task', 'kill', '-s', 'KILL', 'bg']);
    await waitStatus('bg', 'STOPPED');
    await ok(['task', 'rm', 'bg']);
    expect(await ok(['task', 'ls', '-q'])).toBe('');
    await ok(['container', 'rm', 'bg']);
  });

  it('task rm -f kills a running task first', async () => {
    expect(await ok(['run', '-d', IMAGE, 'bg2', 'sleep', '300'])).toBe('');
    await waitStatus('bg2', 'RUNNING');
    await ok(['task', 'rm', '-f', 'bg2']);
    expect(await ok(['task', 'ls', '-q'])).toBe('');
    await ok(['container', 'rm', 'bg2']);
  });
});
